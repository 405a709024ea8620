#!/usr/bin/env bash
# Evaluate an ONNX model with ONNX Runtime on a validation folder.
# Usage: bash scripts/run_eval_onnx.sh ONNX DATASET [DEVICE_TARGET=CPU]
# Output goes to the screen and to eval_onnx.log in the current folder.
set -euo pipefail
if [ $# -lt 2 ] || [ $# -gt 3 ]; then
  echo "Usage: bash $0 ONNX DATASET [DEVICE_TARGET=CPU]" >&2
  exit 1
fi
ONNX=$(realpath -m -- "$1")
DATASET=$(realpath -m -- "$2")
TARGET=${3:-CPU}
LOG="$PWD/eval_onnx.log"
[ -f "$ONNX" ] || { echo "error: ONNX file $ONNX does not exist" >&2; exit 1; }
[ -d "$DATASET" ] || { echo "error: dataset folder $DATASET does not exist" >&2; exit 1; }
case "$TARGET" in GPU|CPU) ;; *) echo "error: DEVICE_TARGET must be GPU or CPU, got $TARGET" >&2; exit 1;; esac

cd "$(dirname "$0")/.."
python eval_onnx.py "$DATASET" --onnx_path "$ONNX" --device_target "$TARGET" 2>&1 | tee "$LOG"

#!/usr/bin/env bash
# Predict the class of an image or of every image of a folder with an ONNX model (ONNX Runtime).
# Usage: bash scripts/run_infer_onnx.sh ONNX DATA OUTPUT [DEVICE_TARGET=CPU]
# DATA is an image or a folder; OUTPUT the JSON file written. Log: infer_onnx.log in the current folder.
set -euo pipefail
if [ $# -lt 3 ] || [ $# -gt 4 ]; then
  echo "Usage: bash $0 ONNX DATA OUTPUT [DEVICE_TARGET=CPU]" >&2
  exit 1
fi
ONNX=$(realpath -m -- "$1")
DATA=$(realpath -m -- "$2")
OUTPUT=$(realpath -m -- "$3")
TARGET=${4:-CPU}
LOG="$PWD/infer_onnx.log"
[ -f "$ONNX" ] || { echo "error: ONNX file $ONNX does not exist" >&2; exit 1; }
[ -e "$DATA" ] || { echo "error: image or folder $DATA does not exist" >&2; exit 1; }
case "$TARGET" in GPU|CPU) ;; *) echo "error: DEVICE_TARGET must be GPU or CPU, got $TARGET" >&2; exit 1;; esac

cd "$(dirname "$0")/.."
python infer_onnx.py "$DATA" --onnx_path "$ONNX" --output "$OUTPUT" --device_target "$TARGET" 2>&1 | tee "$LOG"

#!/usr/bin/env bash
# Evaluate an ONNX model with ONNX Runtime on a validation folder.
# Usage: bash scripts/run_eval_onnx.sh ONNX DATASET [DEVICE_TARGET=CPU]
# Output goes to the screen and to eval_onnx.log in the current folder.
set -euo pipefail
source "$(dirname "$0")/common.sh"
usage_unless 2 3 $# "bash $0 ONNX DATASET [DEVICE_TARGET=CPU]"
ONNX=$(absolute "$1"); need_file "ONNX file" "$ONNX"
DATASET=$(absolute "$2"); need_dir "dataset folder" "$DATASET"
TARGET=${3:-CPU}; need_target "$TARGET"
LOG="$PWD/eval_onnx.log"

cd "$REPO"
python eval_onnx.py "$DATASET" --onnx_path "$ONNX" --device_target "$TARGET" 2>&1 | tee "$LOG"

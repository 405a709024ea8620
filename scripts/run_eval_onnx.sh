#!/usr/bin/env bash
# Evaluate an ONNX model on a validation folder: ONNX Runtime's CUDA provider on GPU, OpenVINO on CPU.
# Usage: bash scripts/run_eval_onnx.sh ONNX DATASET [DEVICE_TARGET=auto]
# DEVICE_TARGET auto: GPU where ONNX Runtime's CUDA provider starts, else CPU (with a note); or GPU, CPU.
# Output goes to the screen and to eval_onnx.log in the current folder.
set -euo pipefail
source "$(dirname "$0")/common.sh"
usage_unless 2 3 $# "bash $0 ONNX DATASET [DEVICE_TARGET=auto]"
ONNX=$(absolute "$1"); need_file "ONNX file" "$ONNX"
DATASET=$(absolute "$2"); need_dir "dataset folder" "$DATASET"
TARGET=${3:-auto}; need_onnx_target "$TARGET"
LOG="$PWD/eval_onnx.log"

cd "$REPO"
python eval_onnx.py "$DATASET" --onnx_path "$ONNX" --device_target "$TARGET" 2>&1 | tee "$LOG"

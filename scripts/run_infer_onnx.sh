#!/usr/bin/env bash
# Predict the class of an image or of every image of a folder with an ONNX model (ONNX Runtime's CUDA
# provider on GPU, OpenVINO on CPU).
# Usage: bash scripts/run_infer_onnx.sh ONNX DATA OUTPUT [DEVICE_TARGET=auto]
# DEVICE_TARGET auto: GPU where ONNX Runtime's CUDA provider starts, else CPU (with a note); or GPU, CPU.
# DATA is an image or a folder; OUTPUT the JSON file written. Log: infer_onnx.log in the current folder.
set -euo pipefail
source "$(dirname "$0")/common.sh"
usage_unless 3 4 $# "bash $0 ONNX DATA OUTPUT [DEVICE_TARGET=auto]"
ONNX=$(absolute "$1"); need_file "ONNX file" "$ONNX"
DATA=$(absolute "$2"); need_path "image or folder" "$DATA"
OUTPUT=$(absolute "$3")
TARGET=${4:-auto}; need_onnx_target "$TARGET"
LOG="$PWD/infer_onnx.log"

cd "$REPO"
python infer_onnx.py "$DATA" --onnx_path "$ONNX" --output "$OUTPUT" --device_target "$TARGET" 2>&1 | tee "$LOG"

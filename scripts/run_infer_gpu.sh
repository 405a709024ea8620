#!/usr/bin/env bash
# Predict the class of an image or of every image of a folder with a checkpoint or MINDIR file.
# Usage: bash scripts/run_infer_gpu.sh CONFIG DATA OUTPUT CKPT_OR_MINDIR [DEVICE_TARGET=GPU]
# DATA is an image or a folder; OUTPUT the JSON file written. Log: infer_gpu.log in the current folder.
set -euo pipefail
source "$(dirname "$0")/common.sh"
usage_unless 4 5 $# "bash $0 CONFIG DATA OUTPUT CKPT_OR_MINDIR [DEVICE_TARGET=GPU]"
CONFIG=$(absolute "$1"); need_file "config file" "$CONFIG"
DATA=$(absolute "$2"); need_path "image or folder" "$DATA"
OUTPUT=$(absolute "$3")
CKPT=$(absolute "$4"); need_file checkpoint "$CKPT"
TARGET=${5:-GPU}; need_target "$TARGET"
LOG="$PWD/infer_gpu.log"

cd "$REPO"
python infer.py --config "$CONFIG" --dataset_path "$DATA" --pred_output "$OUTPUT" --pretrained "$CKPT" \
  --device_target "$TARGET" 2>&1 | tee "$LOG"

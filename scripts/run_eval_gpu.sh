#!/usr/bin/env bash
# Evaluate a checkpoint (train or deploy form) or a MINDIR file on a validation folder.
# Usage: bash scripts/run_eval_gpu.sh CONFIG DATASET CKPT_OR_MINDIR [DEVICE_TARGET=GPU]
# Output goes to the screen and to eval_gpu.log in the current folder.
set -euo pipefail
source "$(dirname "$0")/common.sh"
usage_unless 3 4 $# "bash $0 CONFIG DATASET CKPT_OR_MINDIR [DEVICE_TARGET=GPU]"
CONFIG=$(absolute "$1"); need_file "config file" "$CONFIG"
DATASET=$(absolute "$2"); need_dir "dataset folder" "$DATASET"
CKPT=$(absolute "$3"); need_file checkpoint "$CKPT"
TARGET=${4:-GPU}; need_target "$TARGET"
LOG="$PWD/eval_gpu.log"

cd "$REPO"
python eval.py --config "$CONFIG" --dataset_path "$DATASET" --pretrained "$CKPT" \
  --device_target "$TARGET" 2>&1 | tee "$LOG"

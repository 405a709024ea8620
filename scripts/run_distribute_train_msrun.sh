#!/usr/bin/env bash
# Data-parallel training with msrun (MindSpore's launcher) on DEVICE_NUM GPUs or CPU processes;
# waits for the end. Each rank's output is in msrun_log/worker_<rank>.log in the current folder.
# Usage: bash scripts/run_distribute_train_msrun.sh CONFIG DATASET DEVICE_NUM [DEVICE_TARGET] [PRETRAINED_CKPT]
# DEVICE_TARGET: GPU or CPU (default: the config's device_target). MASTER_PORT (default 8118)
# sets the scheduler's port.
set -euo pipefail
source "$(dirname "$0")/common.sh"
usage_unless 3 5 $# "bash $0 CONFIG DATASET DEVICE_NUM [DEVICE_TARGET] [PRETRAINED_CKPT]"
CONFIG=$(absolute "$1"); need_file "config file" "$CONFIG"
DATASET=$(absolute "$2"); need_dir "dataset folder" "$DATASET"
DEVICE_NUM=$3; need_positive DEVICE_NUM "$DEVICE_NUM"
command -v msrun > /dev/null || fail "msrun not found; activate the environment with MindSpore"
ARGS=(--config "$CONFIG" --data_url "$DATASET" --device_num "$DEVICE_NUM")
if [ $# -ge 4 ] && [ -n "$4" ]; then
  need_target "$4"
  ARGS+=(--device_target "$4")
fi
if [ $# -eq 5 ]; then
  CKPT=$(absolute "$5"); need_file checkpoint "$CKPT"
  ARGS+=(--pretrained "$CKPT")
fi
PORT=${MASTER_PORT:-8118}; need_count MASTER_PORT "$PORT"
LOG_DIR="$PWD/msrun_log"

echo "training on $DEVICE_NUM processes with msrun; logs: $LOG_DIR/worker_<rank>.log"
msrun --worker_num="$DEVICE_NUM" --local_worker_num="$DEVICE_NUM" --master_port="$PORT" --log_dir="$LOG_DIR" \
  --join=True python "$REPO/train.py" "${ARGS[@]}"

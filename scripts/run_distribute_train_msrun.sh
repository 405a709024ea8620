#!/usr/bin/env bash
# Data-parallel training with msrun (MindSpore's launcher) on DEVICE_NUM GPUs or CPU processes;
# waits for the end. Each rank's output is in msrun_log/worker_<rank>.log in the current folder.
# Usage: bash scripts/run_distribute_train_msrun.sh CONFIG DATASET DEVICE_NUM [DEVICE_TARGET] [PRETRAINED_CKPT]
# DEVICE_TARGET: GPU or CPU (default: the config's device_target). MASTER_PORT (default 8118)
# sets the scheduler's port.
set -euo pipefail
if [ $# -lt 3 ] || [ $# -gt 5 ]; then
  echo "Usage: bash $0 CONFIG DATASET DEVICE_NUM [DEVICE_TARGET] [PRETRAINED_CKPT]" >&2
  exit 1
fi
CONFIG=$(realpath -m -- "$1")
DATASET=$(realpath -m -- "$2")
DEVICE_NUM=$3
[ -f "$CONFIG" ] || { echo "error: config file $CONFIG does not exist" >&2; exit 1; }
[ -d "$DATASET" ] || { echo "error: dataset folder $DATASET does not exist" >&2; exit 1; }
[[ "$DEVICE_NUM" =~ ^[1-9][0-9]*$ ]] || { echo "error: DEVICE_NUM must be a positive number, got $DEVICE_NUM" >&2; exit 1; }
command -v msrun > /dev/null || { echo "error: msrun not found; activate the environment with MindSpore" >&2; exit 1; }
ARGS=(--config "$CONFIG" --data_url "$DATASET" --device_num "$DEVICE_NUM")
if [ $# -ge 4 ] && [ -n "$4" ]; then
  case "$4" in GPU|CPU) ;; *) echo "error: DEVICE_TARGET must be GPU or CPU, got $4" >&2; exit 1;; esac
  ARGS+=(--device_target "$4")
fi
if [ $# -eq 5 ]; then
  CKPT=$(realpath -m -- "$5")
  [ -f "$CKPT" ] || { echo "error: checkpoint $CKPT does not exist" >&2; exit 1; }
  ARGS+=(--pretrained "$CKPT")
fi
PORT=${MASTER_PORT:-8118}
[[ "$PORT" =~ ^[0-9]+$ ]] || { echo "error: MASTER_PORT must be a number, got $PORT" >&2; exit 1; }
LOG_DIR="$PWD/msrun_log"
REPO=$(cd "$(dirname "$0")/.." && pwd)

echo "training on $DEVICE_NUM processes with msrun; logs: $LOG_DIR/worker_<rank>.log"
msrun --worker_num="$DEVICE_NUM" --local_worker_num="$DEVICE_NUM" --master_port="$PORT" --log_dir="$LOG_DIR" \
  --join=True python "$REPO/train.py" "${ARGS[@]}"

#!/usr/bin/env bash
# Train on one device, in the background: output in standalone_train.log in the current folder.
# Returns once the run has passed its start-up checks (its "=> run folder" line), or shows the
# error that stopped it with a non-zero status.
# Usage: bash scripts/run_standalone_train_gpu.sh CONFIG DATASET DEVICE_ID [PRETRAINED_CKPT]
# The device (GPU or CPU) is the config's device_target; set DEVICE_TARGET=CPU to override it.
# CONTINUES=RUN_FOLDER resumes that run (--continues).
set -euo pipefail
source "$(dirname "$0")/common.sh"
usage_unless 3 4 $# "bash $0 CONFIG DATASET DEVICE_ID [PRETRAINED_CKPT]"
CONFIG=$(absolute "$1"); need_file "config file" "$CONFIG"
DATASET=$(absolute "$2"); need_dir "dataset folder" "$DATASET"
DEVICE_ID=$3; need_count DEVICE_ID "$DEVICE_ID"
ARGS=(--config "$CONFIG" --data_url "$DATASET" --device_id "$DEVICE_ID" --device_num 1)
add_start_args "${4:-}"
if [ -n "${DEVICE_TARGET:-}" ]; then
  need_target "$DEVICE_TARGET"
  ARGS+=(--device_target "$DEVICE_TARGET")
fi
LOG="$PWD/standalone_train.log"

: > "$LOG"  # an older run's lines must not count as this one's
python "$REPO/train.py" "${ARGS[@]}" >> "$LOG" 2>&1 &
PID=$!
wait_for_start_up "$PID" "$LOG" 1  # its first error line and a non-zero status if it fails to start
echo "training in the background (pid $PID); log: $LOG"

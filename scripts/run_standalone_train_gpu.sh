#!/usr/bin/env bash
# Train on one device, in the background: output in standalone_train.log in the current folder.
# Usage: bash scripts/run_standalone_train_gpu.sh CONFIG DATASET DEVICE_ID [PRETRAINED_CKPT]
# The device (GPU or CPU) is the config's device_target; set DEVICE_TARGET=CPU to override it.
set -euo pipefail
if [ $# -lt 3 ] || [ $# -gt 4 ]; then
  echo "Usage: bash $0 CONFIG DATASET DEVICE_ID [PRETRAINED_CKPT]" >&2
  exit 1
fi
CONFIG=$(realpath -m -- "$1")
DATASET=$(realpath -m -- "$2")
DEVICE_ID=$3
[ -f "$CONFIG" ] || { echo "error: config file $CONFIG does not exist" >&2; exit 1; }
[ -d "$DATASET" ] || { echo "error: dataset folder $DATASET does not exist" >&2; exit 1; }
[[ "$DEVICE_ID" =~ ^[0-9]+$ ]] || { echo "error: DEVICE_ID must be a number, got $DEVICE_ID" >&2; exit 1; }
ARGS=(--config "$CONFIG" --data_url "$DATASET" --device_id "$DEVICE_ID" --device_num 1)
if [ $# -eq 4 ]; then
  CKPT=$(realpath -m -- "$4")
  [ -f "$CKPT" ] || { echo "error: checkpoint $CKPT does not exist" >&2; exit 1; }
  ARGS+=(--pretrained "$CKPT")
fi
if [ -n "${DEVICE_TARGET:-}" ]; then
  case "$DEVICE_TARGET" in GPU|CPU) ;; *) echo "error: DEVICE_TARGET must be GPU or CPU, got $DEVICE_TARGET" >&2; exit 1;; esac
  ARGS+=(--device_target "$DEVICE_TARGET")
fi
LOG="$PWD/standalone_train.log"
REPO=$(cd "$(dirname "$0")/.." && pwd)

python "$REPO/train.py" "${ARGS[@]}" > "$LOG" 2>&1 &
echo "training in the background (pid $!); log: $LOG"

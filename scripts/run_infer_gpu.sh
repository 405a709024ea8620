#!/usr/bin/env bash
# Predict the class of an image or of every image of a folder with a checkpoint or MINDIR file.
# Usage: bash scripts/run_infer_gpu.sh CONFIG DATA OUTPUT CKPT_OR_MINDIR [DEVICE_TARGET=GPU]
# DATA is an image or a folder; OUTPUT the JSON file written. Log: infer_gpu.log in the current folder.
set -euo pipefail
if [ $# -lt 4 ] || [ $# -gt 5 ]; then
  echo "Usage: bash $0 CONFIG DATA OUTPUT CKPT_OR_MINDIR [DEVICE_TARGET=GPU]" >&2
  exit 1
fi
CONFIG=$(realpath -m -- "$1")
DATA=$(realpath -m -- "$2")
OUTPUT=$(realpath -m -- "$3")
CKPT=$(realpath -m -- "$4")
TARGET=${5:-GPU}
LOG="$PWD/infer_gpu.log"
[ -f "$CONFIG" ] || { echo "error: config file $CONFIG does not exist" >&2; exit 1; }
[ -e "$DATA" ] || { echo "error: image or folder $DATA does not exist" >&2; exit 1; }
[ -f "$CKPT" ] || { echo "error: checkpoint $CKPT does not exist" >&2; exit 1; }
case "$TARGET" in GPU|CPU) ;; *) echo "error: DEVICE_TARGET must be GPU or CPU, got $TARGET" >&2; exit 1;; esac

cd "$(dirname "$0")/.."
python infer.py --config "$CONFIG" --dataset_path "$DATA" --pred_output "$OUTPUT" --pretrained "$CKPT" \
  --device_target "$TARGET" 2>&1 | tee "$LOG"

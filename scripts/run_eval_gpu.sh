#!/usr/bin/env bash
# Evaluate a checkpoint (train or deploy form) or a MINDIR file on a validation folder.
# Usage: bash scripts/run_eval_gpu.sh CONFIG DATASET CKPT_OR_MINDIR [DEVICE_TARGET=GPU]
# Output goes to the screen and to eval_gpu.log in the current folder.
set -euo pipefail
if [ $# -lt 3 ] || [ $# -gt 4 ]; then
  echo "Usage: bash $0 CONFIG DATASET CKPT_OR_MINDIR [DEVICE_TARGET=GPU]" >&2
  exit 1
fi
CONFIG=$(realpath -m -- "$1")
DATASET=$(realpath -m -- "$2")
CKPT=$(realpath -m -- "$3")
TARGET=${4:-GPU}
LOG="$PWD/eval_gpu.log"
[ -f "$CONFIG" ] || { echo "error: config file $CONFIG does not exist" >&2; exit 1; }
[ -d "$DATASET" ] || { echo "error: dataset folder $DATASET does not exist" >&2; exit 1; }
[ -f "$CKPT" ] || { echo "error: checkpoint $CKPT does not exist" >&2; exit 1; }
case "$TARGET" in GPU|CPU) ;; *) echo "error: DEVICE_TARGET must be GPU or CPU, got $TARGET" >&2; exit 1;; esac

cd "$(dirname "$0")/.."
python eval.py --config "$CONFIG" --dataset_path "$DATASET" --pretrained "$CKPT" \
  --device_target "$TARGET" 2>&1 | tee "$LOG"

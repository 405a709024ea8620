#!/usr/bin/env bash
# Data-parallel training on DEVICE_NUM GPUs with mpirun and NCCL (as the reference), in the
# background: output in dist_train.log, per-rank logs under log_output/, in the current folder.
# Usage: bash scripts/run_distribute_train_gpu.sh CONFIG DATASET DEVICE_NUM [PRETRAINED_CKPT]
# mpirun + MindSpore needs GPUs; for CPU (or GPU without MPI) use run_distribute_train_msrun.sh.
set -euo pipefail
if [ $# -lt 3 ] || [ $# -gt 4 ]; then
  echo "Usage: bash $0 CONFIG DATASET DEVICE_NUM [PRETRAINED_CKPT]" >&2
  exit 1
fi
CONFIG=$(realpath -m -- "$1")
DATASET=$(realpath -m -- "$2")
DEVICE_NUM=$3
[ -f "$CONFIG" ] || { echo "error: config file $CONFIG does not exist" >&2; exit 1; }
[ -d "$DATASET" ] || { echo "error: dataset folder $DATASET does not exist" >&2; exit 1; }
[[ "$DEVICE_NUM" =~ ^[1-9][0-9]*$ ]] || { echo "error: DEVICE_NUM must be a positive number, got $DEVICE_NUM" >&2; exit 1; }
command -v mpirun > /dev/null || { echo "error: mpirun not found; install Open MPI, or use run_distribute_train_msrun.sh" >&2; exit 1; }
ARGS=(--config "$CONFIG" --data_url "$DATASET" --device_num "$DEVICE_NUM" --device_target GPU)
if [ $# -eq 4 ]; then
  CKPT=$(realpath -m -- "$4")
  [ -f "$CKPT" ] || { echo "error: checkpoint $CKPT does not exist" >&2; exit 1; }
  ARGS+=(--pretrained "$CKPT")
fi
LOG="$PWD/dist_train.log"
REPO=$(cd "$(dirname "$0")/.." && pwd)

mpirun --allow-run-as-root -n "$DEVICE_NUM" --output-filename log_output --merge-stderr-to-stdout \
  python "$REPO/train.py" "${ARGS[@]}" > "$LOG" 2>&1 &
echo "training on $DEVICE_NUM GPUs in the background (pid $!); log: $LOG"

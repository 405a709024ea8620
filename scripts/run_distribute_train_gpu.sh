#!/usr/bin/env bash
# Data-parallel training on DEVICE_NUM GPUs with mpirun and NCCL (as the reference), in the
# background: output in dist_train.log, per-rank logs under log_output/, in the current folder.
# Usage: bash scripts/run_distribute_train_gpu.sh CONFIG DATASET DEVICE_NUM [PRETRAINED_CKPT]
# mpirun + MindSpore needs GPUs; for CPU (or GPU without MPI) use run_distribute_train_msrun.sh.
set -euo pipefail
source "$(dirname "$0")/common.sh"
usage_unless 3 4 $# "bash $0 CONFIG DATASET DEVICE_NUM [PRETRAINED_CKPT]"
CONFIG=$(absolute "$1"); need_file "config file" "$CONFIG"
DATASET=$(absolute "$2"); need_dir "dataset folder" "$DATASET"
DEVICE_NUM=$3; need_positive DEVICE_NUM "$DEVICE_NUM"
command -v mpirun > /dev/null || fail "mpirun not found; install Open MPI, or use run_distribute_train_msrun.sh"
ARGS=(--config "$CONFIG" --data_url "$DATASET" --device_num "$DEVICE_NUM" --device_target GPU)
if [ $# -eq 4 ]; then
  CKPT=$(absolute "$4"); need_file checkpoint "$CKPT"
  ARGS+=(--pretrained "$CKPT")
fi
LOG="$PWD/dist_train.log"

mpirun --allow-run-as-root -n "$DEVICE_NUM" --output-filename log_output --merge-stderr-to-stdout \
  python "$REPO/train.py" "${ARGS[@]}" > "$LOG" 2>&1 &
echo "training on $DEVICE_NUM GPUs in the background (pid $!); log: $LOG"

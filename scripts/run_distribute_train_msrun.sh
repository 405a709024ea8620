#!/usr/bin/env bash
# Data-parallel training with msrun (MindSpore's launcher) on DEVICE_NUM GPUs or CPU processes per
# machine; waits for the end. Each rank's output is in msrun_log/worker_<rank>.log in the current folder.
# Usage: bash scripts/run_distribute_train_msrun.sh CONFIG DATASET DEVICE_NUM [DEVICE_TARGET] [PRETRAINED_CKPT]
# DEVICE_TARGET: GPU or CPU (default: the config's device_target).
# Environment (all optional):
#   MASTER_PORT  the scheduler's port, 1-65535 (default 8118)
#   NODE_NUM     machines in the run (default 1); run this script on each of them with the same
#                arguments and MASTER_ADDR / MASTER_PORT, and its own NODE_RANK
#   NODE_RANK    this machine, 0..NODE_NUM-1 (default 0); machine 0 runs the scheduler and ranks
#                0..DEVICE_NUM-1, machine k ranks k*DEVICE_NUM..(k+1)*DEVICE_NUM-1
#   MASTER_ADDR  address of machine 0 that every machine can reach (one machine: 127.0.0.1; required
#                when NODE_NUM > 1)
#   CONTINUES    a run folder to resume (--continues); the same relative path on every machine
#   DRY_RUN=1    print the msrun command instead of running it
# docs/scale-out.md: what each machine writes where, resuming, a lost worker.
set -euo pipefail
source "$(dirname "$0")/common.sh"
usage_unless 3 5 $# "bash $0 CONFIG DATASET DEVICE_NUM [DEVICE_TARGET] [PRETRAINED_CKPT]"
CONFIG=$(absolute "$1"); need_file "config file" "$CONFIG"
DATASET=$(absolute "$2"); need_dir "dataset folder" "$DATASET"
DEVICE_NUM=$3; need_positive DEVICE_NUM "$DEVICE_NUM"
NODE_NUM=${NODE_NUM:-1}; need_positive NODE_NUM "$NODE_NUM"
NODE_RANK=${NODE_RANK:-0}; need_count NODE_RANK "$NODE_RANK"
(( NODE_RANK < NODE_NUM )) || fail "NODE_RANK must be below NODE_NUM ($NODE_NUM), got $NODE_RANK"
if (( NODE_NUM > 1 )) && [ -z "${MASTER_ADDR:-}" ]; then
  fail "NODE_NUM is $NODE_NUM: set MASTER_ADDR to the address of machine 0 that every machine can reach (the same on every machine)"
fi
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
PORT=${MASTER_PORT:-8118}; need_port MASTER_PORT "$PORT"
WORKER_NUM=$(( DEVICE_NUM * NODE_NUM ))
ARGS=(--config "$CONFIG" --data_url "$DATASET" --device_num "$WORKER_NUM")
if [ $# -ge 4 ] && [ -n "$4" ]; then
  need_target "$4"
  ARGS+=(--device_target "$4")
fi
add_start_args "${5:-}"
LOG_DIR="$PWD/msrun_log"
MSRUN=(msrun --worker_num="$WORKER_NUM" --local_worker_num="$DEVICE_NUM")
if (( NODE_NUM > 1 )); then
  MSRUN+=(--node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR")
fi
MSRUN+=(--master_port="$PORT" --log_dir="$LOG_DIR" --join=True python "$REPO/train.py" "${ARGS[@]}")

print_if_dry_run "${MSRUN[@]}"
command -v msrun > /dev/null || fail "msrun not found; activate the environment with MindSpore"
export MSRUN_NODE_RANK=$NODE_RANK  # train.py's scheduler process serves on machine 0 only
if (( NODE_NUM > 1 )); then
  echo "machine $NODE_RANK of $NODE_NUM: ranks $(( NODE_RANK * DEVICE_NUM ))-$(( (NODE_RANK + 1) * DEVICE_NUM - 1 )) of $WORKER_NUM, scheduler $MASTER_ADDR:$PORT"
fi
echo "training on $DEVICE_NUM processes with msrun; logs: $LOG_DIR/worker_<rank>.log"
"${MSRUN[@]}"

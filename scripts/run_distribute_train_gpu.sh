#!/usr/bin/env bash
# Data-parallel training on DEVICE_NUM GPUs with mpirun and NCCL (as the reference), in the
# background: output in dist_train.log, per-rank logs under log_output/, in the current folder.
# Returns once every rank has passed its start-up checks, or shows the first error line with a
# non-zero status.
# Usage: bash scripts/run_distribute_train_gpu.sh CONFIG DATASET DEVICE_NUM [PRETRAINED_CKPT]
# mpirun + MindSpore needs GPUs; for CPU (or GPU without MPI) use run_distribute_train_msrun.sh.
# Environment (all optional):
#   HOSTFILE   an Open MPI host file, one machine a line ('host1 slots=8'): run on all of them,
#              DEVICE_NUM GPUs each, from this one command (passwordless ssh, the same paths for
#              the code, the Python environment and DATASET on every machine)
#   CONTINUES  a run folder to resume (--continues)
#   DRY_RUN=1  print the mpirun command instead of running it
# docs/scale-out.md: what each machine writes where, resuming, a lost worker.
set -euo pipefail
source "$(dirname "$0")/common.sh"
usage_unless 3 4 $# "bash $0 CONFIG DATASET DEVICE_NUM [PRETRAINED_CKPT]"
CONFIG=$(absolute "$1"); need_file "config file" "$CONFIG"
DATASET=$(absolute "$2"); need_dir "dataset folder" "$DATASET"
DEVICE_NUM=$3; need_positive DEVICE_NUM "$DEVICE_NUM"
MPIRUN=(mpirun --allow-run-as-root)
TOTAL=$DEVICE_NUM
if [ -n "${HOSTFILE:-}" ]; then
  HOSTFILE=$(absolute "$HOSTFILE"); need_file "host file (HOSTFILE)" "$HOSTFILE"
  HOSTS=$(grep -cvE '^[[:space:]]*(#|$)' "$HOSTFILE" || true)
  (( HOSTS > 0 )) || fail "host file $HOSTFILE names no machine; write one 'host slots=$DEVICE_NUM' line per machine"
  TOTAL=$(( DEVICE_NUM * HOSTS ))
  MPIRUN+=(--hostfile "$HOSTFILE" --map-by "ppr:$DEVICE_NUM:node")
  for NAME in PATH LD_LIBRARY_PATH PYTHONPATH; do  # this machine's environment for every rank
    if [ -n "${!NAME:-}" ]; then MPIRUN+=(-x "$NAME"); fi
  done
fi
ARGS=(--config "$CONFIG" --data_url "$DATASET" --device_num "$TOTAL" --device_target GPU)
add_start_args "${4:-}"
LOG="$PWD/dist_train.log"
MPIRUN+=(-n "$TOTAL" --output-filename log_output --merge-stderr-to-stdout python "$REPO/train.py" "${ARGS[@]}")

print_if_dry_run "${MPIRUN[@]}"
command -v mpirun > /dev/null || fail "mpirun not found; install Open MPI, or use run_distribute_train_msrun.sh"
: > "$LOG"  # an older run's lines must not count as this one's
"${MPIRUN[@]}" >> "$LOG" 2>&1 &
PID=$!
wait_for_start_up "$PID" "$LOG" "$TOTAL"  # every rank's start line, or the first error line and a non-zero status
echo "training on $TOTAL GPUs in the background (pid $PID); log: $LOG"

#!/usr/bin/env bash
# The reference's quick-start name for evaluation: the same as run_eval_gpu.sh (same arguments,
# same log, eval_gpu.log in the current folder).
# Usage: bash scripts/run_eval.sh CONFIG DATASET CKPT_OR_MODEL [DEVICE_TARGET=GPU]
exec bash "$(dirname "$0")/run_eval_gpu.sh" "$@"

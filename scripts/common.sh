# Shared argument checks and pieces of the launchers (sourced, not run). Each check prints one line
# on stderr and exits 1, before anything starts.
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage_unless() {  # usage_unless MIN MAX COUNT USAGE...: the argument count is within MIN..MAX
  local min=$1 max=$2 count=$3
  shift 3
  if (( count < min || count > max )); then echo "Usage: $*" >&2; exit 1; fi
}
fail() { echo "error: $*" >&2; exit 1; }
absolute() { realpath -m -- "$1"; }
need_file() { [ -f "$2" ] || fail "$1 $2 does not exist"; }
need_dir() { [ -d "$2" ] || fail "$1 $2 does not exist"; }
need_path() { [ -e "$2" ] || fail "$1 $2 does not exist"; }
need_target() { case "$1" in GPU|CPU) ;; *) fail "DEVICE_TARGET must be GPU or CPU, got $1";; esac; }
need_count() { [[ "$2" =~ ^[0-9]+$ ]] || fail "$1 must be a number, got $2"; }
need_positive() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || fail "$1 must be a positive number, got $2"; }

add_start_args() {  # add_start_args [CKPT]: ARGS += --pretrained CKPT when given, --continues $CONTINUES when set
  if [ -n "${1:-}" ]; then
    CKPT=$(absolute "$1"); need_file checkpoint "$CKPT"
    ARGS+=(--pretrained "$CKPT")
  fi
  if [ -n "${CONTINUES:-}" ]; then
    RUN=$(absolute "$CONTINUES"); need_dir "run folder (CONTINUES)" "$RUN"
    ARGS+=(--continues "$RUN")
  fi
}
print_if_dry_run() {  # print_if_dry_run COMMAND...: with DRY_RUN=1, print the command and exit
  if [ "${DRY_RUN:-0}" = 1 ]; then printf '%q ' "$@"; echo; exit 0; fi
}

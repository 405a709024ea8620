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
need_onnx_target() { case "$1" in auto|GPU|CPU) ;; *) fail "DEVICE_TARGET must be auto, GPU or CPU, got $1";; esac; }
need_count() { [[ "$2" =~ ^[0-9]+$ ]] || fail "$1 must be a number, got $2"; }
need_positive() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || fail "$1 must be a positive number, got $2"; }
need_port() {
  [[ "$2" =~ ^[0-9]{1,5}$ ]] && (( 10#$2 >= 1 && 10#$2 <= 65535 )) || fail "$1 must be a port from 1 to 65535, got $2"
}

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
# train.py prints this line on every rank once its start-up checks passed and the run folder exists.
STARTED_LINE='=> run folder '
started_ranks() { local count; count=$(grep -c "^$STARTED_LINE" "$1" 2>/dev/null) || true; echo "${count:-0}"; }
wait_for_start_up() {  # wait_for_start_up PID LOG RANKS: return once LOG holds the start line of RANKS ranks;
  # if PID ends first, show the run's first error line and exit with its status (1 when it was 0)
  local pid=$1 log=$2 ranks=$3 status=0 line
  until (( $(started_ranks "$log") >= ranks )); do
    if ! kill -0 "$pid" 2> /dev/null; then
      wait "$pid" || status=$?
      if (( $(started_ranks "$log") >= ranks )); then return 0; fi  # it printed the line, then ended
      line=$(grep -m 1 '^error: ' "$log") || line=$(grep -v '^[[:space:]]*$' "$log" | tail -n 1) || true
      [[ "$line" == 'error: '* ]] || line="error: the run ended during its start-up (status $status): $line; see $log"
      echo "$line" >&2
      exit $(( status ? status : 1 ))
    fi
    sleep 0.2
  done
}
print_if_dry_run() {  # print_if_dry_run COMMAND...: with DRY_RUN=1, print the command and exit
  if [ "${DRY_RUN:-0}" = 1 ]; then printf '%q ' "$@"; echo; exit 0; fi
}

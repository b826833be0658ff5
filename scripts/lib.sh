# Shared by the set-up scripts (sourced): `step MESSAGE COMMAND...` runs COMMAND with its output
# appended to $LOG and prints one line; on failure it shows the end of the log and exits.
step() {
  local msg=$1 rc=0
  shift
  printf '%s ... ' "$msg"
  "$@" >>"$LOG" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "FAILED (exit $rc)"
    tail -n 40 "$LOG" >&2
    echo "full log: $LOG" >&2
    exit "$rc"
  fi
  echo ok
}

# Shell functions that scripts/test.sh and scripts/bench-wave.sh share;
# sourced, not run.

# log prints a step, with the seconds since the script started, so that
# a slow run shows which step grew.
log() { printf '== [%ss] %s\n' "$SECONDS" "$*"; }

# start_on_free_port WHAT START_FN runs START_FN PORT on a loopback port
# below the kernel's ephemeral range that $freeport (scripts/freeport,
# built by the caller) has just proven free with a real bind, and prints
# the port. PostgreSQL and MinIO must be told their port before they
# start, so another process may take it in between: their start then
# fails at once and the next free port is tried.
start_on_free_port() {
  local what=$1 start=$2 port=0 try
  for try in 1 2 3 4 5; do
    port=$("$freeport" -after "$port") || return 1
    if "$start" "$port" >&2; then echo "$port"; return 0; fi
    log "$what did not start on 127.0.0.1:$port (try $try of 5); trying the next free port" >&2
  done
  echo "$what did not start on any of 5 free ports" >&2
  return 1
}

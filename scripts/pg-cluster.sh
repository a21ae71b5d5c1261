#!/usr/bin/env bash
# Throwaway PostgreSQL clusters for tests, on loopback only.
#
#   pg-cluster.sh init  DIR       create a cluster in DIR (role "ota", trust auth on loopback)
#   pg-cluster.sh start DIR PORT  start it on 127.0.0.1:PORT, wait until it accepts connections;
#                                 fails at once (non-zero) when the port is taken, so callers retry another
#   pg-cluster.sh stop  DIR       fast shutdown (no-op if not running)
#
# PostgreSQL refuses to run as root, so as root the server runs as the
# "postgres" user (or an "otatest" system user created on the spot).
# Installs PostgreSQL from Debian's packages when initdb is not on the machine.
set -euo pipefail

die() { echo "pg-cluster: $*" >&2; exit 1; }

find_bin() {
  local name=$1 d
  if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return; fi
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/$name" ] && { echo "$d/$name"; return; }
  done
  return 1
}

ensure_postgres() {
  find_bin initdb >/dev/null && return
  [ "$(id -u)" -eq 0 ] || die "initdb not found and not root: install PostgreSQL 15 (apt-get install postgresql-15)"
  echo "pg-cluster: installing PostgreSQL from Debian's packages" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >&2 ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
  find_bin initdb >/dev/null || die "initdb still missing after install"
}

run_user() {
  if [ "$(id -u)" -ne 0 ]; then return; fi
  if id postgres >/dev/null 2>&1; then echo postgres; return; fi
  id otatest >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin otatest
  echo otatest
}

as_pg() {
  local user; user=$(run_user)
  if [ -n "$user" ]; then runuser -u "$user" -- "$@"; else "$@"; fi
}

cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: pg-cluster.sh init|start|stop DIR [PORT]"

case "$cmd" in
init)
  ensure_postgres
  mkdir -p "$dir"
  user=$(run_user)
  [ -n "$user" ] && chown "$user" "$dir"
  chmod 700 "$dir"
  as_pg "$(find_bin initdb)" -D "$dir/data" -U ota -A trust -E UTF8 --locale=C.UTF-8 --no-sync >"$dir/initdb.log" 2>&1 ||
    { cat "$dir/initdb.log" >&2; die "initdb failed"; }
  ;;
start)
  port=${3:-}; [ -n "$port" ] || die "start needs a PORT"
  # A taken port makes the postmaster exit at once ("could not create any
  # TCP/IP sockets"), and pg_ctl -w returns as soon as it has exited.
  as_pg "$(find_bin pg_ctl)" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=200" start >/dev/null ||
    { cat "$dir/server.log" >&2; die "postgres did not start on 127.0.0.1:$port"; }
  ;;
stop)
  [ -f "$dir/data/postmaster.pid" ] || exit 0
  as_pg "$(find_bin pg_ctl)" -D "$dir/data" -m fast -w stop >/dev/null || true
  ;;
*) die "unknown command $cmd" ;;
esac

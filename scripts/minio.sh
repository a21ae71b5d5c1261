#!/usr/bin/env bash
# A real MinIO server for tests, on loopback only.
#
#   minio.sh bin                       print the path of the MinIO binary, building it once if needed
#   minio.sh start DIR PORT USER PASS  start MinIO with data in DIR on 127.0.0.1:PORT, wait until it serves S3;
#                                      fails at once (non-zero) when the port is taken, so callers retry another
#   minio.sh stop DIR                  stop the server started with DIR
#
# The binary is built from the Go module proxy once (about two minutes) into
# $OTA_CACHE_DIR (default ~/.cache/ota-server) and reused from there.
set -euo pipefail

MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
cache=${OTA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ota-server}
bindir="$cache/minio-$MINIO_VERSION"

die() { echo "minio: $*" >&2; exit 1; }

# owns_port PID PORT: PID holds the listening socket on 127.0.0.1:PORT, so
# the answer came from this MinIO and not from a server that took the
# port first.
owns_port() {
  local pid=$1 hex inode
  hex=$(printf '%04X' "$2")
  for inode in $(awk -v p=":$hex" '$2 ~ p"$" && $4 == "0A" {print $10}' /proc/net/tcp); do
    # No "ls | grep -q": with pipefail, ls dying of SIGPIPE after grep's
    # first match would read as no match.
    local fds; fds=$(ls -l "/proc/$pid/fd" 2>/dev/null || true)
    grep -q "socket:\[$inode\]" <<<"$fds" && return 0
  done
  return 1
}

ensure_bin() {
  if [ ! -x "$bindir/minio" ]; then
    echo "minio: building github.com/minio/minio@$MINIO_VERSION into $bindir (once, about two minutes)" >&2
    mkdir -p "$bindir.tmp"
    GOBIN="$bindir.tmp" GOFLAGS=-mod=mod go install "github.com/minio/minio@$MINIO_VERSION" >&2 ||
      die "go install of MinIO failed"
    rm -rf "$bindir" && mv "$bindir.tmp" "$bindir"
  fi
  echo "$bindir/minio"
}

cmd=${1:-}
case "$cmd" in
bin) ensure_bin ;;
start)
  dir=${2:?DIR} port=${3:?PORT} user=${4:?USER} pass=${5:?PASS}
  bin=$(ensure_bin)
  mkdir -p "$dir/data"
  MINIO_ROOT_USER=$user MINIO_ROOT_PASSWORD=$pass MINIO_BROWSER=off MINIO_UPDATE=off \
    "$bin" server --quiet --address "127.0.0.1:$port" "$dir/data" >"$dir/minio.log" 2>&1 &
  pid=$!
  echo "$pid" >"$dir/minio.pid"
  for _ in $(seq 1 150); do
    # MinIO checks its port before anything else and exits when it is
    # taken: that ends the wait within 0.2 s.
    kill -0 "$pid" 2>/dev/null || { cat "$dir/minio.log" >&2; rm -f "$dir/minio.pid"; die "MinIO exited during start on 127.0.0.1:$port"; }
    # /minio/health/live answers 200 while S3 calls still get 503 "Server
    # not initialized yet"; an anonymous ListBuckets answers 403 once they
    # do not.
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/" 2>/dev/null || true)
    if [ "$code" = 403 ] && owns_port "$pid" "$port"; then exit 0; fi
    sleep 0.2
  done
  kill "$pid" 2>/dev/null || true
  rm -f "$dir/minio.pid"
  cat "$dir/minio.log" >&2
  die "MinIO did not serve S3 requests on 127.0.0.1:$port within 30 s"
  ;;
stop)
  dir=${2:?DIR}
  [ -f "$dir/minio.pid" ] || exit 0
  pid=$(cat "$dir/minio.pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$dir/minio.pid"
  ;;
*) die "usage: minio.sh bin | start DIR PORT USER PASS | stop DIR" ;;
esac

#!/usr/bin/env bash
# A real MinIO server for tests, on loopback only.
#
#   minio.sh bin                       print the path of the MinIO binary, building it once if needed
#   minio.sh start DIR PORT USER PASS  start MinIO with data in DIR on 127.0.0.1:PORT, wait until live
#   minio.sh stop DIR                  stop the server started with DIR
#
# The binary is built from the Go module proxy once (about two minutes) into
# $OTA_CACHE_DIR (default ~/.cache/ota-server) and reused from there.
set -euo pipefail

MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
cache=${OTA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ota-server}
bindir="$cache/minio-$MINIO_VERSION"

die() { echo "minio: $*" >&2; exit 1; }

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
  echo $! >"$dir/minio.pid"
  for _ in $(seq 1 150); do
    if curl -fsS -o /dev/null "http://127.0.0.1:$port/minio/health/live" 2>/dev/null; then exit 0; fi
    kill -0 "$(cat "$dir/minio.pid")" 2>/dev/null || { cat "$dir/minio.log" >&2; die "MinIO exited during start"; }
    sleep 0.2
  done
  cat "$dir/minio.log" >&2
  die "MinIO did not become live on 127.0.0.1:$port"
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

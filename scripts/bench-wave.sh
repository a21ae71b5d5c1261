#!/usr/bin/env bash
# The rollout wave benchmark (README, Performance, "The rollout wave"):
#   1. starts a throwaway PostgreSQL cluster on loopback, as scripts/test.sh
#      does (installing PostgreSQL from Debian's packages if it is missing),
#   2. runs BenchmarkWave (cmd/otad) on SQLite, PostgreSQL and two otad
#      replicas on one PostgreSQL,
#   3. stops the cluster, also when the benchmark fails.
# Arguments are passed on to go test after the defaults, so they override
# them: scripts/bench-wave.sh -bench 'Wave/postgres$' -count 3
# The fleet's size and the concurrency come from OTA_BENCH_WAVE_HANDSETS
# (default 20000) and OTA_BENCH_WAVE_CONCURRENCY (default 64).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

. scripts/lib.sh # log, start_on_free_port

work=$(mktemp -d /tmp/ota-bench.XXXXXX)
chmod 755 "$work" # PostgreSQL runs as an unprivileged user and must reach its folder
cleanup() {
  scripts/pg-cluster.sh stop "$work/pg" || true
  rm -rf "$work"
}
trap cleanup EXIT

start_pg() { scripts/pg-cluster.sh start "$work/pg" "$1"; }

freeport="$work/bin/freeport"
go build -o "$freeport" ./scripts/freeport

log "starting PostgreSQL"
scripts/pg-cluster.sh init "$work/pg"
pg_port=$(start_on_free_port PostgreSQL start_pg)
export OTA_TEST_POSTGRES_DSN="postgres://ota@127.0.0.1:$pg_port/postgres?sslmode=disable"

log "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
log "go test -bench Wave (PostgreSQL on 127.0.0.1:$pg_port, ${OTA_BENCH_WAVE_HANDSETS:-20000} handsets)"
go test ./cmd/otad -run '^$' -bench Wave -benchtime 1x -timeout 60m "$@"
log "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

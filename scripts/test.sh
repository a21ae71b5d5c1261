#!/usr/bin/env bash
# Runs every test of the project on a machine with nothing started:
#   1. starts a throwaway PostgreSQL cluster and a real MinIO server on loopback
#      (building MinIO once into ~/.cache/ota-server, installing PostgreSQL
#      from Debian's packages if it is missing),
#   2. runs gofmt, go vet and go test -race with the integration environment
#      set, so the PostgreSQL and MinIO tests run instead of skipping,
#   3. stops what it started, also when tests fail.
# Exits non-zero on any failure, including a service that does not start.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

. scripts/lib.sh # log, start_on_free_port

work=$(mktemp -d /tmp/ota-test.XXXXXX)
chmod 755 "$work" # PostgreSQL runs as an unprivileged user and must reach its folder
cleanup() {
  scripts/minio.sh stop "$work/minio" || true
  scripts/pg-cluster.sh stop "$work/pg" || true
  rm -rf "$work"
}
trap cleanup EXIT

start_pg() { scripts/pg-cluster.sh start "$work/pg" "$1"; }
start_minio() { scripts/minio.sh start "$work/minio" "$1" otatest "$minio_secret"; }

log "checking formatting"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './node_modules/*'))
if [ -n "$unformatted" ]; then echo "gofmt would change: $unformatted" >&2; exit 1; fi

log "go vet"
go vet ./...

freeport="$work/bin/freeport"
go build -o "$freeport" ./scripts/freeport

log "starting PostgreSQL"
scripts/pg-cluster.sh init "$work/pg"
pg_port=$(start_on_free_port PostgreSQL start_pg)

log "starting MinIO"
minio_bin=$(scripts/minio.sh bin)
minio_secret=$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')
minio_port=$(start_on_free_port MinIO start_minio)

log "installing tuf-js (an independent TUF client)"
tufjs=$(scripts/tufjs.sh install)

log "installing Chromium (the dashboard's browser tests)"
chromium_bin=$(scripts/chromium.sh install)

export OTA_TEST_TUFJS="$tufjs"
export OTA_TEST_CHROMIUM="$chromium_bin"
# Screenshots of the dashboard taken by the browser tests are kept here.
export OTA_TEST_ARTIFACTS="$PWD/artifacts"
mkdir -p "$OTA_TEST_ARTIFACTS"
export OTA_TEST_POSTGRES_DSN="postgres://ota@127.0.0.1:$pg_port/postgres?sslmode=disable"
export OTA_TEST_S3_ENDPOINT="http://127.0.0.1:$minio_port"
export OTA_TEST_S3_ACCESS_KEY=otatest
export OTA_TEST_S3_SECRET_KEY="$minio_secret"
# For tests that stop and restart their own servers (readiness under outages).
export OTA_TEST_PG_CLUSTER="$PWD/scripts/pg-cluster.sh"
export OTA_TEST_MINIO_BIN="$minio_bin"

# The race detector leaves out SQLite's engine, modernc.org/sqlite/lib (its C
# sources translated to Go), as it leaves out the C of a cgo driver: the Go
# code around it, the driver and the stores included, is still checked.
# Instrumented, and with the pointer checks -race implies, the engine took
# two thirds of the CPU of a SQLite test, behind its one writer on one core:
# TestFleetEndToEnd/sqlite+filesystem took 86 s instead of 25 s (7 s without
# -race), the server/sqlstore tests 67 s instead of 20 s.
race_gcflags='modernc.org/sqlite/lib=-race=false -d=checkptr=0'

log "go test -race (PostgreSQL on 127.0.0.1:$pg_port, MinIO on 127.0.0.1:$minio_port)"
set +e +o pipefail
go test -race -gcflags="$race_gcflags" -count=1 -timeout 30m -v ./... 2>&1 | tee "$work/go-test.log" | grep -v '^=== \(RUN\|PAUSE\|CONT\)'
status=${PIPESTATUS[0]}
set -e -o pipefail
if [ "$status" -ne 0 ]; then
  echo
  log "FAILURES"
  grep -E '^\s*--- FAIL|^FAIL|panic:' "$work/go-test.log" || true
  exit "$status"
fi

# An integration test that skipped here means the environment above did
# not reach it: that is a failure, not a pass.
if grep -q 'run ./scripts/test.sh' "$work/go-test.log"; then
  log "integration tests skipped although the services are running:"
  grep -B1 'run ./scripts/test.sh' "$work/go-test.log" >&2
  exit 1
fi

log "the README walkthrough, end to end"
scripts/walkthrough.sh 2>&1 | grep -v '^time='

log "fuzzing the parsers of untrusted input (handset bodies, the strict JSON token reader, key files, signatures)"
fuzz() { go test -run '^$' -fuzz "^$1\$" -fuzztime "$3" "$2" 2>&1 | tail -n 3; }
fuzz FuzzHandsetBodies ./server/api 20s
fuzz FuzzValidTokens ./server/api 10s
fuzz FuzzParsePrivateKey ./signing 10s
fuzz FuzzParsePublicKey ./signing 10s
fuzz FuzzVerifySignature ./signing 10s

passed=$(grep -cE '^\s*--- PASS' "$work/go-test.log" || true)
skipped=$(grep -cE '^\s*--- SKIP' "$work/go-test.log" || true)
echo
log "all tests passed"
echo "tests: $passed passed, 0 failed, $skipped skipped"

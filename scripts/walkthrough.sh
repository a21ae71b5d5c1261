#!/usr/bin/env bash
# The README's walkthrough, run for real: otad on embedded defaults, three
# release engineers with their own keys, the root ceremony at 2 of 3, a
# patch uploaded and signed by two of them (one signature alone publishes
# nothing), handsets that verify and install it with go-tuf, tuf-js that
# verifies and downloads it, and the fleet summary. Exits non-zero if any
# step does not do what the README says.
#
#   scripts/walkthrough.sh        (scripts/test.sh runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

work=$(mktemp -d /tmp/ota-walkthrough.XXXXXX)
otad_pid=""
cleanup() {
  [ -n "$otad_pid" ] && kill "$otad_pid" 2>/dev/null && wait "$otad_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
step() { printf '== walkthrough: %s\n' "$*"; }
fail() { echo "walkthrough: FAILED: $*" >&2; [ -f "$work/otad.log" ] && tail -20 "$work/otad.log" >&2; exit 1; }

step "building otad, otactl and handset"
go build -o "$work/bin/" ./cmd/otad ./cmd/otactl ./cmd/handset
export PATH="$work/bin:$PATH"
cd "$work"

step "starting otad on embedded defaults (a port the kernel picks)"
# Port 0: the kernel binds a free port and otad writes it to --addr-file
# once it listens, so no port is guessed.
otad serve --listen 127.0.0.1:0 --addr-file "$work/otad.addr" --log-format text 2>otad.log &
otad_pid=$!
for _ in $(seq 1 300); do
  [ -s "$work/otad.addr" ] && break
  kill -0 "$otad_pid" 2>/dev/null || fail "otad exited during start"
  sleep 0.1
done
addr=$(cat "$work/otad.addr" 2>/dev/null) || fail "otad wrote no --addr-file within 30s"
curl -fs "http://$addr/readyz" >/dev/null || fail "otad on $addr is not ready"
echo "   otad serves on $addr"

export OTACTL_SERVER="http://$addr"
OTACTL_TOKEN=$(otad token create --name release-team --role release-engineer)
export OTACTL_TOKEN
export OTACTL_KEY_PASSPHRASE="walkthrough only: use a real passphrase"

step "three engineers generate keys"
for e in alice bob carol; do otactl key generate --out "$e.key" >/dev/null; done

step "root ceremony at 2 of 3"
otactl repo init --root-key alice.key.pub --root-key bob.key.pub --root-key carol.key.pub --root-threshold 2 \
  --targets-key alice.key.pub --targets-key bob.key.pub --targets-key carol.key.pub --targets-threshold 2 >/dev/null
otactl repo sign --key alice.key --yes >/dev/null
# Output is captured before grep: with pipefail, "cmd | grep -q" fails
# when grep exits at the first match and cmd then dies of SIGPIPE.
out=$(otactl repo sign --key bob.key --yes)
grep -q "is published" <<<"$out" || fail "the ceremony did not publish at 2 of 3"
curl -fs "$OTACTL_SERVER/tuf/1.root.json" -o root.json || fail "root v1 is not served"

step "a release engineer uploads the patch"
head -c 3000000 /dev/urandom >update.zip
otactl release create update.zip --name cloudmsg/CM-2026-001/update.zip --patch-id CM-2026-001 \
  --model PX-7 --build-min 7.0.0 --build-max 7.4.9 --messaging-default opt-in --number-encryption on 2>/dev/null >release.txt
id=$(grep -o 'd-[0-9a-f]\{18\}' release.txt | head -1)
[ -n "$id" ] || fail "release create printed no draft id"

step "one signature publishes nothing"
otactl release sign "$id" --key alice.key --yes >/dev/null
out=$(otactl status)
grep -q "published targets: 0" <<<"$out" || fail "a release signed by one engineer of two was published"
handset --server "$OTACTL_SERVER" --count 1 --model PX-7 --build 7.2.0 --root root.json --poll-scale 0.0001 \
  --timeout 3s --progress 0 --erase >one-sig.txt 2>&1 && fail "a handset installed a release signed by one engineer"
grep -q "installed    0" one-sig.txt || fail "handset output after one signature: $(cat one-sig.txt)"

step "the second signature publishes it"
out=$(otactl release sign "$id" --key bob.key --yes)
grep -q "is published" <<<"$out" || fail "2 of 2 signatures did not publish"

step "1000 handsets verify it with go-tuf, install it (5% fail on purpose) and report"
handset --server "$OTACTL_SERVER" --count 1000 --concurrency 32 --model PX-7 --build 7.2.0 --root root.json \
  --poll-scale 0.0001 --fail-rate 0.05 --fail-codes E_DISK_FULL,E_BATTERY_LOW --timeout 3m --progress 0 --json \
  >handsets.json 2>handsets.err || fail "handsets: $(cat handsets.json handsets.err)"
num() { grep -o "\"$1\":[0-9]*" "$2" | head -1 | cut -d: -f2; }
installed=$(num installed handsets.json)
failed=$(num failed handsets.json)
[ "$((installed + failed))" -eq 1000 ] && [ "$(num compliant handsets.json)" -eq "$installed" ] ||
  fail "handsets: $(cat handsets.json)"
echo "   $installed installed and compliant, $failed failed"

step "tuf-js verifies and downloads the same patch"
verify=$(cd - >/dev/null && scripts/tufjs.sh install)
node "$verify" --metadata-url "$OTACTL_SERVER/tuf/" --targets-url "$OTACTL_SERVER/targets/" --root root.json \
  --target cloudmsg/CM-2026-001/update.zip --out tufjs.zip --cache tufjs-cache >/dev/null || fail "tuf-js refused the patch"
cmp -s tufjs.zip update.zip || fail "tuf-js downloaded other bytes"

step "the fleet summary"
curl -fs -H "Authorization: Bearer $OTACTL_TOKEN" "$OTACTL_SERVER/api/v1/admin/fleet/summary" >summary.json
grep -q "\"enrolled\":1000,\"active\":1000,\"patched\":$installed,\"compliant\":$installed," summary.json ||
  fail "summary disagrees with the handsets ($installed installed): $(cat summary.json)"
for code in E_DISK_FULL E_BATTERY_LOW; do
  want=$(grep -o "\"$code\":[0-9]*" handsets.json | head -1 | cut -d: -f2)
  grep -q "\"error_code\":\"$code\",\"count\":${want:-0}}" summary.json ||
    fail "summary counts $code differently from the handsets ($want): $(cat summary.json)"
done
cat summary.json; echo
step "passed"

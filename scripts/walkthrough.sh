#!/usr/bin/env bash
# The README's walkthrough, run for real: otad on embedded defaults, three
# release engineers with their own keys, the root ceremony at 2 of 3, a
# patch uploaded and signed by two of them (one signature alone publishes
# nothing), 1000 handsets offered nothing while the patch is only
# published, a rollout at 10% that offers it to its cohort alone, advanced
# to 100% so that the rest verify and install it with go-tuf, tuf-js that
# verifies and downloads it, and the fleet summary. Exits non-zero if any
# step does not do what the README says.
#
#   scripts/walkthrough.sh        (scripts/test.sh runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

work=$(mktemp -d /tmp/ota-walkthrough.XXXXXX)
otad_pid=""
fleet_pid=""
cleanup() {
  [ -n "$fleet_pid" ] && kill "$fleet_pid" 2>/dev/null && wait "$fleet_pid" 2>/dev/null
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
# A second person, who approves widening past 50% (four eyes).
LEAD_TOKEN=$(otad token create --name release-lead --role operator)
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
target=cloudmsg/CM-2026-001/update.zip
otactl release create update.zip --name "$target" --patch-id CM-2026-001 --model PX-7 --build-min 7.0.0 \
  --build-max 7.4.9 --installs-build 7.5.0 --messaging-default opt-in --number-encryption on 2>/dev/null >release.txt
id=$(grep -o 'd-[0-9a-f]\{18\}' release.txt | head -1)
[ -n "$id" ] || fail "release create printed no draft id"

step "one signature publishes nothing"
otactl release sign "$id" --key alice.key --yes >/dev/null
out=$(otactl status)
grep -q "published targets: 0" <<<"$out" || fail "a release signed by one engineer of two was published"
otactl rollout create --release "$target" --stages 100 >one-sig.txt 2>&1 &&
  fail "a rollout of a release signed by one engineer was created"
grep -q "is not a published target" one-sig.txt || fail "rollout create after one signature: $(cat one-sig.txt)"

step "the second signature publishes it"
out=$(otactl release sign "$id" --key bob.key --yes)
grep -q "is published" <<<"$out" || fail "2 of 2 signatures did not publish"

num() { grep -o "\"$1\":[0-9]*" "$2" | head -1 | cut -d: -f2; }
# metric NAME LABEL... prints the sum of otad's metric NAME over the
# series that carry every LABEL (such as reason="not_in_cohort").
metric() {
  local name=$1
  shift
  curl -fs "$OTACTL_SERVER/metrics" | awk -v name="$name" -v labels="$*" '
    index($1, name "{") == 1 || $1 == name {
      n = split(labels, want, " "); ok = 1
      for (i = 1; i <= n; i++) if (index($1, want[i]) == 0) ok = 0
      if (ok) sum += $2
    }
    END { printf "%d\n", sum }'
}
summary() { curl -fs -H "Authorization: Bearer $OTACTL_TOKEN" "$OTACTL_SERVER/api/v1/admin/fleet/summary"; }
# until SECONDS WHAT CONDITION... waits for the shell CONDITION to hold.
until_true() {
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until eval "$*"; do
    kill -0 "$fleet_pid" 2>/dev/null || fail "the handsets exited while waiting for $what: $(cat handsets.json handsets.err)"
    [ "$SECONDS" -lt "$deadline" ] || fail "no $what within $1 s"
    sleep 0.5
  done
}

step "publishing is not deploying: 1000 handsets check in and are offered nothing"
# One fleet of 1000 handsets, one hour ahead of UTC (rollout windows are
# in handset-local hours), runs from here to the end: they verify with
# go-tuf, install (5% fail on purpose) and report whatever they are
# offered. --poll-scale 0.001 turns the server's hourly poll into 3.6 s.
handset --server "$OTACTL_SERVER" --count 1000 --concurrency 32 --model PX-7 --build 7.2.0 --root root.json \
  --utc-offset-minutes 60 --poll-scale 0.001 --fail-rate 0.05 --fail-codes E_DISK_FULL,E_BATTERY_LOW \
  --timeout 3m --progress 0 --json >handsets.json 2>handsets.err &
fleet_pid=$!
checkins() { metric otad_http_requests_total 'route="/api/v1/checkin"' 'code="200"'; }
until_true 60 "1000 check-ins" '[ "$(checkins)" -ge 1000 ]'
summary >idle.json
grep -q '"enrolled":1000,"active":1000,"patched":0,' idle.json || fail "summary with no rollout: $(cat idle.json)"
[ "$(metric otad_rollout_offers_total)" -eq 0 ] || fail "offers with no rollout"
# One check-in by hand shows the answer: no offer, and why.
enroll=$(curl -fs -H 'Content-Type: application/json' -d '{"model":"PX-7","build":"7.2.0","channel":"stable"}' \
  "$OTACTL_SERVER/api/v1/devices") || fail "enrollment by hand"
probe=$(grep -o '"token":"[^"]*"' <<<"$enroll" | cut -d'"' -f4)
answer=$(curl -fs -H "Authorization: Bearer $probe" -H 'Content-Type: application/json' \
  -d '{"build":"7.2.0","model":"PX-7","channel":"stable","installed_patches":[],"cloud_messaging":"auto_enabled","number_encryption":false,"utc_offset_minutes":60}' \
  "$OTACTL_SERVER/api/v1/checkin") || fail "check-in by hand"
grep -q '"offer":null' <<<"$answer" && grep -q '"no_offer":"not_selected"' <<<"$answer" ||
  fail "check-in with no rollout answered $answer, want no offer and not_selected"
curl -fs -X DELETE -H "Authorization: Bearer $probe" "$OTACTL_SERVER/api/v1/devices/self" || fail "erasing the probe"
echo "   $(checkins) check-ins, none offered anything: $answer"

step "a rollout at 10%: only its cohort is offered the patch"
# The failure limit is 20%, not the default 5%: 5% of installs fail on
# purpose, and the default would halt the rollout on a bad minute.
out=$(otactl rollout create --release "$target" --stages 10,100 --max-failure-rate 20% \
  --reason "privacy patch: first 10% of PX-7") || fail "rollout create: $out"
grep -q "running, stage 1 of 2 (10%)" <<<"$out" || fail "rollout create: $out"
ro=$(grep -o 'ro-[0-9a-f]\{12\}' <<<"$out" | head -1)
[ -n "$ro" ] || fail "rollout create printed no rollout id: $out"
started=$SECONDS
echo "   created rollout $ro"
offers() { metric otad_rollout_offers_total "rollout=\"$ro\"" 'kind="first"'; }
results() { metric otad_rollout_reports_total "rollout=\"$ro\"" 'state="installed"'; }
failures() { metric otad_rollout_reports_total "rollout=\"$ro\"" 'state="failed"'; }
outside() { metric otad_rollout_refusals_total 'reason="not_in_cohort"'; }
# Every handset polls within 4 s (3.6 s ± 10%); after that the cohort has
# been offered the patch, and the stage is done once each of them has
# reported a result and each handset outside it has been refused.
until_true 60 "results from the 10% cohort" \
  '[ $((SECONDS - started)) -ge 5 ] && [ "$(offers)" -gt 0 ] &&
   [ "$(($(results) + $(failures)))" -eq "$(offers)" ] && [ "$(outside)" -ge $((1000 - $(offers))) ]'
cohort=$(offers)
# 10% of 1000 is 100; a cohort is a hash of the device id, so about 100
# (50 to 150 is five standard deviations either side).
[ "$cohort" -ge 50 ] && [ "$cohort" -le 150 ] || fail "a 10% cohort of 1000 handsets is $cohort"
summary >stage1.json
grep -q "\"enrolled\":1000,\"active\":1000,\"patched\":$(results)," stage1.json ||
  fail "summary at 10% ($(results) installed): $(cat stage1.json)"
echo "   $cohort handsets in the cohort offered it ($(results) installed, $(failures) failed), $(outside) check-ins told not_in_cohort"

step "advance to 100%: the rest are offered it, install it and report"
out=$(otactl rollout advance "$ro" --reason "10% healthy: widen to every PX-7") || fail "rollout advance: $out"
grep -q "waits for a second person's approval" <<<"$out" || fail "rollout advance past 50% did not wait for four eyes: $out"
approval=$(grep -o 'ap-[0-9a-f]*' <<<"$out" | head -1)
[ -n "$approval" ] || fail "rollout advance printed no approval id: $out"
out=$(otactl rollout approve "$ro" "$approval" --reason "I agree: widen" 2>&1) &&
  fail "the requester approved their own widening: $out"
out=$(OTACTL_TOKEN=$LEAD_TOKEN otactl rollout approve "$ro" "$approval" --reason "10% clean: agreed") ||
  fail "rollout approve by a second person: $out"
grep -q "running, stage 2 of 2 (100%)" <<<"$out" || fail "rollout approve: $out"
echo "   widening to 100% waited for release-lead's approval ($approval)"
wait "$fleet_pid" || fail "handsets: $(cat handsets.json handsets.err)"
fleet_pid=""
installed=$(num installed handsets.json)
failed=$(num failed handsets.json)
[ "$((installed + failed))" -eq 1000 ] && [ "$(num compliant handsets.json)" -eq "$installed" ] ||
  fail "handsets: $(cat handsets.json)"
[ "$(offers)" -eq 1000 ] || fail "otad made $(offers) first offers over both stages, want 1000"
echo "   $installed installed and compliant, $failed failed"
report=$(curl -fs -H "Authorization: Bearer $OTACTL_TOKEN" "$OTACTL_SERVER/api/v1/admin/rollouts/$ro/report") ||
  fail "rollout report"
grep -q "\"installed\":$installed," <<<"$report" && grep -q '"offered":1000,' <<<"$report" ||
  fail "the rollout report disagrees with the handsets ($installed installed of 1000 offered): $report"
echo "   rollout report: $(grep -o '"offered":[0-9]*,"pending":[0-9]*,"downloading":[0-9]*,"installed":[0-9]*,"failed":[0-9]*' <<<"$report" | head -1)"
out=$(otactl rollout events "$ro")
for why in "privacy patch: first 10% of PX-7" "10% healthy: widen to every PX-7" "10% clean: agreed"; do
  grep -q "$why" <<<"$out" || fail "the audit log of $ro lacks \"$why\": $out"
done

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

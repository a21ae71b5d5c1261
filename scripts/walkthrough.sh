#!/usr/bin/env bash
# Runs the README's walkthrough as written: the fenced block between
# <!-- walkthrough --> and <!-- /walkthrough --> in README.md, in a fresh
# copy of this working tree (the files git tracks or would track, as a
# fresh clone of it would have them), with bash -euo pipefail. So the
# README cannot drift from what is tested: there is one source.
#
# The block runs unchanged but for one thing: a command whose line ends
# in "# prints: TEXT" has its output (stdout and stderr) shown and then
# checked to contain TEXT; "..." in TEXT separates pieces that must each
# appear. Afterwards a few cross-checks compare the handsets' summary
# with the server's. Exits non-zero when a command of the block fails, a
# "# prints:" does not hold, a cross-check fails, or the whole run takes
# longer than $WALKTHROUGH_TIMEOUT (default 15m). Then it starts the
# demo as "Try it: the demo" says (on a free port) and checks the lines
# the README shows it printing.
#
#   scripts/walkthrough.sh        (scripts/test.sh runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
src=$PWD

work=$(mktemp -d /tmp/ota-walkthrough.XXXXXX)
runner=""
cleanup() {
  # The block ends by stopping otad; after a failure half-way, whatever
  # it left running (otad, the handsets) is in its process group.
  [ -n "$runner" ] && kill -- "-$runner" 2>/dev/null
  [ -n "$runner" ] && wait "$runner" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
step() { printf '== walkthrough: %s\n' "$*"; }
fail() {
  echo "walkthrough: FAILED: $*" >&2
  [ -f "$work/repo/otad.log" ] && tail -20 "$work/repo/otad.log" >&2
  exit 1
}

step "copying the working tree to $work/repo"
mkdir -p "$work/repo"
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$work/repo" 2>/dev/null ||
  git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
    [ -e "$f" ] && cp --parents "$f" "$work/repo/"
  done
# tuf-js's node_modules are not in git; reuse an installed copy rather
# than download it again (scripts/tufjs.sh installs it when missing).
if [ -d scripts/tufjs/node_modules ]; then cp -a scripts/tufjs/node_modules "$work/repo/scripts/tufjs/"; fi

step "extracting the block from README.md"
# Joins continued lines ("\" at the end) into one command, and turns a
# command ending in "# prints: TEXT" into
#   { COMMAND
#   } >out 2>&1; cat out; __expect N        (TEXT saved as expect.N)
awk -v dir="$work" '
  /^<!-- walkthrough -->$/ { inside = 1; next }
  /^<!-- \/walkthrough -->$/ { inside = 0; done = 1; next }
  !inside { next }
  /^```/ { fence++; next }
  {
    cmd = cmd $0 "\n"
    if ($0 ~ /\\$/) next
    if (cmd != "\n") {
      # Shown before it runs, as a reader would type it.
      shown = cmd; sub(/\n$/, "", shown); gsub(/\x27/, "\x27\\\x27\x27", shown)
      printf "printf \x27%%s\\n\x27 \x27%s\x27\n", (shown ~ /^#/ ? "" : "$ ") shown
    }
    n = index(cmd, "# prints: ")
    if (n > 0) {
      k++
      text = substr(cmd, n + 10); sub(/\n$/, "", text)
      print text > (dir "/expect." k); close(dir "/expect." k)
      body = substr(cmd, 1, n - 1); sub(/[ \t]+$/, "", body)
      printf "{ %s\n} >\"$__out\" 2>&1; cat \"$__out\"; __expect %d\n", body, k
    } else {
      printf "%s", cmd
    }
    cmd = ""
    lines++
  }
  END {
    if (!done || fence != 2 || lines < 10) { print "no walkthrough block in README.md" > "/dev/stderr"; exit 1 }
  }
' README.md >"$work/block.sh" || fail "README.md has no walkthrough block between the markers"
{
  echo 'set -euo pipefail'
  echo "__out=$work/out"
  # __expect N: every "..."-separated piece of expect.N is in the output.
  cat <<'EOF'
__expect() {
  local text piece
  text=$(cat "${__out%/out}/expect.$1")
  while [ -n "$text" ]; do
    piece=${text%%...*}
    [ "$piece" = "$text" ] && text="" || text=${text#*...}
    piece=$(sed 's/^ *//; s/ *$//' <<<"$piece")
    [ -z "$piece" ] && continue
    if ! grep -qF -- "$piece" "$__out"; then
      echo "walkthrough: FAILED: the output above lacks \"$piece\" (README: # prints: $(cat "${__out%/out}/expect.$1"))" >&2
      exit 1
    fi
  done
}
EOF
  cat "$work/block.sh"
} >"$work/walkthrough-run.sh"

step "running it in $work/repo"
cd "$work/repo"
# Its own process group (setsid), so that cleanup stops what it started;
# its output is kept in run.log for the checks below, and shown as it goes.
: >"$work/run.log"
setsid timeout "${WALKTHROUGH_TIMEOUT:-15m}" bash -euo pipefail "$work/walkthrough-run.sh" >>"$work/run.log" 2>&1 &
runner=$!
tail -n +1 --pid="$runner" -f "$work/run.log"
status=0
wait "$runner" || status=$?
runner=""
[ "$status" -eq 0 ] || fail "a command of the README's walkthrough failed or timed out (exit $status; see above)"

step "cross-checks: the handsets' summary against the server's"
field() { grep -m1 -o "^$1 *[0-9]*" handsets.txt | grep -o '[0-9]*$'; }
installed=$(field installed) failed=$(field failed)
[ -n "$installed" ] && [ -n "$failed" ] || fail "handsets.txt has no installed/failed lines: $(cat handsets.txt)"
[ "$((installed + failed))" -eq 1000 ] || fail "handsets: $installed installed + $failed failed is not 1000"
grep -q "^no offer .*not_selected [1-9]" handsets.txt || fail "handsets.txt counts no not_selected answers: $(cat handsets.txt)"
grep -q "^handset: no_offer: not_selected " "$work/run.log" ||
  fail "the handsets never printed \"handset: no_offer: not_selected\", which the README promises"
# The rollout's report as the block printed it last: every handset offered,
# and the same installs and failures as the handsets counted.
# (confirmed, between them, follows the handsets' next check-ins.)
grep -Eq "\"offered\":1000,\"pending\":0,\"downloading\":0,\"installed\":$installed,(\"confirmed\":[0-9]+,)?\"failed\":$failed," "$work/run.log" ||
  fail "the rollout report does not show 1000 offered, $installed installed and $failed failed as the handsets do"
echo "   handsets: $installed installed, $failed failed, as the rollout report says"
step "the README's demo (on a free port): the lines it says the demo prints"
# README "Try it: the demo" shows the first lines of "go run ./cmd/otad
# demo"; the built binary runs here with --listen 127.0.0.1:0 instead of
# 8080, and each sample line's text up to its first URL or number must
# start a line of what it prints.
sample=$(awk '/Then it prints, within a few seconds:/ { f = 1; next } f && /^    / { print; next } f && NF { exit }' "$src/README.md")
[ -n "$sample" ] || fail "README.md shows no sample of what the demo prints"
bin/otad demo --listen 127.0.0.1:0 --addr-file "$work/demo.addr" --handsets 60 >"$work/demo.out" 2>"$work/demo.log" &
demo=$!
for _ in $(seq 1 600); do grep -q '^Next:' "$work/demo.out" 2>/dev/null && break; sleep 0.1; done
cat "$work/demo.out"
while IFS= read -r line; do
  want=$(sed -E 's/^ +//; s/(http|[0-9]).*//' <<<"$line")
  grep -q -- "^$want" "$work/demo.out" || { kill "$demo"; fail "the demo did not print a line starting \"$want\" (README: $line)"; }
done <<<"$sample"
addr=$(cat "$work/demo.addr")
grep -qF "otad demo is running: http://$addr" "$work/demo.out" || { kill "$demo"; fail "the demo's URL is not the address it bound ($addr)"; }
curl -sf "http://$addr/readyz" >/dev/null || { kill "$demo"; fail "the demo at $addr is not ready"; }
kill -TERM "$demo"
wait "$demo" || fail "otad demo did not stop cleanly (exit $?); its log: $(tail -5 "$work/demo.log")"
echo "   the demo printed what the README shows and stopped cleanly"
step "passed"

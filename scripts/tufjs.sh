#!/usr/bin/env bash
# tuf-js, a TUF client written independently of go-tuf, for the tests that
# check the repository with more than the library that builds it.
#
#   tufjs.sh install   install the pinned tuf-js (npm ci of scripts/tufjs, from
#                      its package-lock.json) unless already installed from the
#                      same lockfile; print the path of verify.mjs on stdout
#   tufjs.sh path      print the path of verify.mjs
#
# Needs node >= 20.17 and npm. Runs without a terminal (CI=true, no stdin);
# progress goes to stderr. A second install with an unchanged lockfile
# returns at once.
set -euo pipefail

dir="$(cd "$(dirname "$0")/tufjs" && pwd)"
stamp="$dir/node_modules/.ota-lock-sha256"

die() { echo "tufjs: $*" >&2; exit 1; }

check_node() {
  command -v node >/dev/null || die "node is not installed (need node >= 20.17 for tuf-js 5; apt-get install nodejs npm)"
  command -v npm >/dev/null || die "npm is not installed (apt-get install npm)"
  node -e '
    const [maj, min] = process.versions.node.split(".").map(Number);
    if (maj < 20 || (maj === 20 && min < 17)) {
      console.error(`tufjs: node ${process.versions.node} is too old; tuf-js 5 needs ^20.17 or >= 22.9`);
      process.exit(1);
    }' || exit 1
}

install() {
  check_node
  local want have=""
  want=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
  [ -f "$stamp" ] && have=$(cat "$stamp")
  if [ "$have" != "$want" ] || [ ! -f "$dir/node_modules/tuf-js/package.json" ]; then
    echo "tufjs: npm ci in $dir" >&2
    (cd "$dir" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error </dev/null >&2) ||
      die "npm ci failed in $dir"
    echo "$want" >"$stamp"
  fi
  # Prove the module loads, so a broken install fails here, not in a test.
  (cd "$dir" && node --input-type=module -e 'await import("tuf-js")' </dev/null) ||
    die "tuf-js does not load from $dir/node_modules"
  echo "$dir/verify.mjs"
}

case "${1:-}" in
install) install ;;
path) echo "$dir/verify.mjs" ;;
*) die "usage: tufjs.sh install | path" ;;
esac

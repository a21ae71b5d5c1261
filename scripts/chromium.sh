#!/usr/bin/env bash
# Headless Chromium for the dashboard's browser tests (chromedp drives it).
#
#   chromium.sh install   install Debian's chromium with apt-get when it is
#                         missing; print the path of the binary on stdout
#
# Runs without a terminal (CI=true, no stdin); apt's output goes to stderr.
# Needs root or passwordless sudo when Chromium is missing.
set -euo pipefail

die() { echo "chromium: $*" >&2; exit 1; }

find_chromium() {
  local c
  for c in chromium chromium-browser; do
    if command -v "$c" >/dev/null; then command -v "$c"; return 0; fi
  done
  return 1
}

case "${1:-}" in
  install)
    if bin=$(find_chromium); then echo "$bin"; exit 0; fi
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
      command -v sudo >/dev/null || die "chromium is missing and this is not root; install it: apt-get install chromium"
      sudo="sudo -n"
    fi
    echo "chromium: installing Debian's chromium with apt-get (once)" >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! $sudo apt-get install -y --no-install-recommends chromium >&2; then
      $sudo apt-get update >&2 || die "apt-get update failed; install chromium by hand"
      $sudo apt-get install -y --no-install-recommends chromium >&2 || die "apt-get install chromium failed"
    fi
    find_chromium || die "apt-get installed chromium but no chromium binary is on PATH"
    ;;
  *)
    echo "usage: chromium.sh install" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# Prepares a machine for the JavaScript client's tests (make js): Debian's
# redis-server, which the tests start on free ports, and Debian's Chromium,
# which the browser test drives headless (no browser download works on an
# air-gapped runner; playwright-core is pointed at /usr/bin/chromium, or at
# $CHROMIUM). As root on a Debian-like machine it installs what is missing
# (chromium takes about two minutes). Progress goes to stderr.
#
# Without root it only says what is missing: on a developer's machine the
# browser test is then skipped, and under CI=true it fails.
set -euo pipefail
say() { echo "browser-env: $*" >&2; }

missing() {
  need=()
  command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
  [ -x "${CHROMIUM:-/usr/bin/chromium}" ] || need+=(chromium)
  [ ${#need[@]} -gt 0 ]
}
if missing && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  say "installing ${need[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
fi
if missing; then
  say "missing: ${need[*]} (apt-get install -y ${need[*]})"
  [ "${CI:-}" != true ] || exit 1
fi
command -v npm >/dev/null 2>&1 || { say "npm is missing: the JavaScript tests need Node.js 18 or later"; exit 1; }

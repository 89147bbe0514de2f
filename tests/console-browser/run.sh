#!/usr/bin/env bash
# The web console in a real browser: Debian's chromium (installed with apt-get if missing),
# driven by playwright-core, against a pushbox built from this repo, with a pusher-js client.
# Saves a screenshot to artifacts/console.png at the repository root.
#
#   tests/console-browser/run.sh              # install what is missing, cargo build, run
#   SKIP_BUILD=1 tests/console-browser/run.sh # use the existing target/debug/pushbox
#   PUSHBOX_BIN=/path/to/pushbox ...          # test another binary
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$HERE"

if [ ! -x /usr/bin/chromium ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "== apt-get install chromium"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "== npm ci (tests/console-browser)"
  npm ci --no-audit --no-fund --loglevel=error
fi
if [ -z "${PUSHBOX_BIN:-}" ]; then
  if [ -z "${SKIP_BUILD:-}" ]; then
    (cd "$ROOT" && cargo build --quiet --bin pushbox)
  fi
  export PUSHBOX_BIN="$ROOT/target/debug/pushbox"
fi
[ -x "$PUSHBOX_BIN" ] || { echo "no pushbox binary at $PUSHBOX_BIN"; exit 1; }
mkdir -p "$ROOT/artifacts"
export ARTIFACTS="$ROOT/artifacts"
exec node --test --test-concurrency=1 --test-timeout=120000 console.test.mjs

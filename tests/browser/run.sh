#!/usr/bin/env bash
# Browser check of the HTTP fallback: Debian's chromium (installed with apt-get when missing),
# driven by playwright-core, loads a Laravel Echo page against a pushbox built from this tree.
# Screenshots land in artifacts/ at the repository root.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

if [ ! -x "${CHROMIUM_PATH:-/usr/bin/chromium}" ]; then
  echo "chromium missing: installing Debian's package" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi

if [ -z "${PUSHBOX_BIN:-}" ]; then
  (cd "$repo" && cargo build --quiet)
fi

cd "$here"
if [ ! -d node_modules/playwright-core ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  # playwright-core never downloads a browser: it drives the system chromium.
  npm ci --no-audit --no-fund --silent
fi
mkdir -p "$repo/artifacts"
exec node --test --test-concurrency=1 test/

#!/usr/bin/env bash
# Real-client suite: official pusher-js / laravel-echo / pusher (Node SDK) and pusher (PyPI)
# against a live pushbox built from this repo. Each test file starts its own server.
#
#   tests/clients/run.sh                # install deps if missing, cargo build, run everything
#   SKIP_BUILD=1 tests/clients/run.sh   # use the existing target/debug/pushbox
#   tests/clients/run.sh node|python    # only one side
#   PUSHBOX_BIN=/path/to/pushbox ...    # test another binary
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
WHAT="${1:-all}"
cd "$HERE"

log() { printf '\n== %s\n' "$*"; }

# --- dependencies -----------------------------------------------------------------------------
if [ "$WHAT" != python ]; then
  if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    log "npm ci"
    npm ci --no-audit --no-fund || { echo "npm ci failed"; exit 1; }
  fi
fi
PY="$HERE/.venv/bin/python"
if [ "$WHAT" != node ]; then
  STAMP="$HERE/.venv/.requirements.sha"
  WANT="$(sha256sum requirements.txt | cut -d' ' -f1)"
  if [ ! -x "$PY" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    log "pip install -r requirements.txt (venv tests/clients/.venv)"
    python3 -m venv "$HERE/.venv" || { echo "python3 -m venv failed"; exit 1; }
    "$PY" -m pip install --quiet --disable-pip-version-check -r requirements.txt || { echo "pip install failed"; exit 1; }
    echo "$WANT" > "$STAMP"
  fi
fi

# --- server -----------------------------------------------------------------------------------
if [ -z "${PUSHBOX_BIN:-}" ]; then
  if [ -z "${SKIP_BUILD:-}" ]; then
    log "cargo build (in $ROOT)"
    (cd "$ROOT" && cargo build --bin pushbox) || { echo "cargo build failed"; exit 1; }
  fi
  export PUSHBOX_BIN="$ROOT/target/debug/pushbox"
fi
[ -x "$PUSHBOX_BIN" ] || { echo "no pushbox binary at $PUSHBOX_BIN"; exit 1; }

# --- tests ------------------------------------------------------------------------------------
rc=0
if [ "$WHAT" != python ]; then
  log "node --test (pusher-js 8, laravel-echo 2, pusher 5)"
  node --test --test-concurrency=1 --test-timeout=120000 test/*.test.mjs || rc=1
fi
if [ "$WHAT" != node ]; then
  log "pytest (pusher 3.x)"
  "$PY" -m pytest -q || rc=1
fi
exit $rc

#!/usr/bin/env bash
# The Autobahn|Testsuite against pushbox's own WebSocket code: kosoku (PyPI, installed into
# tests/autobahn/.venv) drives sections 1–7, 9 and 10 against `examples/autobahn_echo.rs`, the
# real handshake, read and write steps with an echo in place of the Pusher session (cargo
# feature `autobahn-echo`, never in a release build). Section 9 runs with the real 64 KiB
# limit: the cases above it must end in a 1009 close (see summary.py). A few seconds to run.
#
#   tests/autobahn/run.sh                # install kosoku if missing, build, run, judge
#   AUTOBAHN_CASES='7.*' tests/autobahn/run.sh   # only some cases
# The HTML/JSON report is left in target/autobahn/.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="$ROOT/target/autobahn"
log() { printf '\n== %s\n' "$*"; }

PY="$HERE/.venv/bin/python"
STAMP="$HERE/.venv/.requirements.sha"
WANT="$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1)"
if [ ! -x "$PY" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  log "pip install -r requirements.txt (venv tests/autobahn/.venv)"
  python3 -m venv "$HERE/.venv" || { echo "python3 -m venv failed"; exit 1; }
  "$PY" -m pip install --quiet --disable-pip-version-check -r "$HERE/requirements.txt" \
    || { echo "pip install failed"; exit 1; }
  echo "$WANT" > "$STAMP"
fi

log "cargo build --features autobahn-echo --example autobahn_echo"
(cd "$ROOT" && cargo build --quiet --features autobahn-echo --example autobahn_echo) \
  || { echo "cargo build failed"; exit 1; }

PORT="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$ROOT/target/debug/examples/autobahn_echo" "127.0.0.1:$PORT" &
ECHO_PID=$!
trap 'kill "$ECHO_PID" 2>/dev/null; wait "$ECHO_PID" 2>/dev/null' EXIT
for _ in $(seq 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.1
done

read -r -a CASES <<< "${AUTOBAHN_CASES:-1.* 2.* 3.* 4.* 5.* 6.* 7.* 9.* 10.*}"
INCLUDE=()
for c in "${CASES[@]}"; do INCLUDE+=(-i "$c"); done
rm -rf "$OUT"
log "kosoku ${CASES[*]} against ws://127.0.0.1:$PORT/"
# kosoku's own exit status counts the expected 1009 closes as failures; summary.py judges.
timeout 900 "$HERE/.venv/bin/kosoku" "127.0.0.1:$PORT" "${INCLUDE[@]}" -p 2 -o "$OUT" \
  > "$OUT.log" 2>&1
rc=$?
[ "$rc" -eq 124 ] && { echo "kosoku timed out"; tail -20 "$OUT.log"; exit 1; }
[ -f "$OUT/index.json" ] || { echo "kosoku wrote no report (exit $rc)"; tail -20 "$OUT.log"; exit 1; }
"$PY" "$HERE/summary.py" "$OUT/index.json"

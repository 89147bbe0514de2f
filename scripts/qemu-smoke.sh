#!/usr/bin/env bash
# CI smoke test of the shipped ARM binary: build the static aarch64-unknown-linux-musl release
# binary, run it under Debian's qemu-aarch64-static with TLS on 127.0.0.1, and have real clients
# use it: pusher-js (node build, wss) subscribes to a channel and receives an event that the
# official `pusher` Node SDK publishes through the signed HTTP API (https). Both trust only the
# certificate the binary made itself (`pushbox cert self-signed`), via NODE_EXTRA_CA_CERTS.
#
#   scripts/qemu-smoke.sh
#
# Environment: CARGO_TARGET_DIR (default /tmp/pushbox-static-target, so the static build does
# not lock the normal target dir), PUSHBOX_BIN (skip the build and test this binary),
# SMOKE_TIMEOUT (seconds for the client part, default 60), KEEP=1 (keep the temp dir).
# Loopback only; every wait is bounded; the server is stopped (SIGTERM, then SIGKILL) on exit.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
TARGET=aarch64-unknown-linux-musl
SMOKE_TIMEOUT=${SMOKE_TIMEOUT:-60}
T0=$(date +%s.%N)
elapsed() { python3 -c "import time; print(f'{time.time() - $T0:.1f}')" 2>/dev/null || echo "?"; }
say() { printf '==> [%6ss] %s\n' "$(elapsed)" "$*" >&2; }
die() { printf 'qemu-smoke: FAIL: %s\n' "$*" >&2; exit 1; }

# --- tools ---------------------------------------------------------------------------------
command -v node >/dev/null || die "node is not installed (the client side uses Node >= 20)"
[ -d tests/clients/node_modules/pusher-js ] && [ -d tests/clients/node_modules/pusher ] ||
    die "tests/clients/node_modules lacks pusher-js/pusher: run (cd tests/clients && npm ci) first"
QEMU=$(command -v qemu-aarch64-static || true)
if [ -z "$QEMU" ]; then
    [ "$(id -u)" -eq 0 ] || die "qemu-aarch64-static is missing and not root: apt-get install qemu-user-static"
    say "apt-get install qemu-user-static"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-user-static >/dev/null
    QEMU=$(command -v qemu-aarch64-static) || die "qemu-aarch64-static still missing"
fi

# --- 1. the binary -------------------------------------------------------------------------
if [ -n "${PUSHBOX_BIN:-}" ]; then
    BIN=$PUSHBOX_BIN
else
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/pushbox-static-target}
    say "building $TARGET (release) with scripts/build-static.sh"
    scripts/build-static.sh "$TARGET" >&2 || die "static build failed"
    BIN=$CARGO_TARGET_DIR/$TARGET/release/pushbox
fi
[ -f "$BIN" ] || die "no binary at $BIN"
info=$(file -b "$BIN")
printf 'binary: %s\n  size: %s bytes (%s KiB)\n  file: %s\n' "$BIN" "$(stat -c %s "$BIN")" "$(( $(stat -c %s "$BIN") / 1024 ))" "$info"
grep -q 'ARM aarch64' <<<"$info" || die "$BIN is not an aarch64 binary"
grep -q 'statically linked' <<<"$info" || die "$BIN is not statically linked"
run() { "$QEMU" "$BIN" "$@"; }
say "$(run version) under $("$QEMU" --version | head -n1)"

# --- 2. temp config, state dir, certificate, app -------------------------------------------
TMP=$(mktemp -d /tmp/pushbox-qemu-smoke.XXXXXX)
PID=
cleanup() {
    local rc=$?
    if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
        kill -TERM "$PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$PID" 2>/dev/null && { echo "qemu-smoke: server ignored SIGTERM for 5 s; SIGKILL" >&2; kill -KILL "$PID" 2>/dev/null || true; }
        wait "$PID" 2>/dev/null || true
    fi
    if [ "$rc" -ne 0 ] && [ -f "$TMP/server.log" ]; then
        echo "---- server log (last 40 lines) ----" >&2; tail -n 40 "$TMP/server.log" >&2
    fi
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $TMP" >&2; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT INT TERM

# Two free loopback ports (bound and released by the kernel's choice).
read -r TLS_PORT PLAIN_PORT < <(python3 -c '
import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')

CERT_SRC=pushbox
if run cert self-signed --host localhost --ip 127.0.0.1 --out "$TMP" >"$TMP/cert.log" 2>&1; then
    :
else
    # Fallback for a tree whose binary has no `cert self-signed` yet.
    CERT_SRC=openssl
    say "pushbox cert self-signed failed ($(head -c 200 "$TMP/cert.log")); using openssl"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
        -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$TMP/pushbox.key" -out "$TMP/pushbox.crt" 2>/dev/null ||
        die "cannot make a certificate"
fi
[ -s "$TMP/pushbox.crt" ] && [ -s "$TMP/pushbox.key" ] || die "no certificate in $TMP"

APP_ID=smoke-$$
APP_KEY=$(head -c 10 /dev/urandom | od -An -tx1 | tr -d ' \n')
APP_SECRET=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
cat >"$TMP/pushbox.toml" <<EOF
state_dir = "$TMP/state"

[server]
host = "127.0.0.1"
port = $PLAIN_PORT

[tls]
cert = "$TMP/pushbox.crt"
key = "$TMP/pushbox.key"
host = "127.0.0.1"
port = $TLS_PORT

[[apps]]
id = "$APP_ID"
key = "$APP_KEY"
secret = "$APP_SECRET"
EOF
say "certificate by $CERT_SRC; TLS 127.0.0.1:$TLS_PORT, plain 127.0.0.1:$PLAIN_PORT, state $TMP/state"

# --- 3. serve under qemu-user ----------------------------------------------------------------
# Direct qemu invocation (no binfmt_misc needed); $PID is qemu, which is the emulated process.
env -u LISTEN_FDS -u LISTEN_PID -u LISTEN_FDNAMES -u NOTIFY_SOCKET -u WATCHDOG_USEC \
    RUST_LOG=info "$QEMU" "$BIN" serve --config "$TMP/pushbox.toml" >"$TMP/server.log" 2>&1 </dev/null &
PID=$!
ready=0
for _ in $(seq 150); do   # 15 s
    if ! kill -0 "$PID" 2>/dev/null; then
        wait "$PID" && st=0 || st=$?
        PID=
        die "server exited early with status $st"
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$TLS_PORT") 2>/dev/null; then ready=1; break; fi
    sleep 0.1
done
[ "$ready" = 1 ] || die "server did not listen on 127.0.0.1:$TLS_PORT within 15 s"
say "server listening (pid $PID)"

# --- 4. real clients over TLS ------------------------------------------------------------------
# The certificate must really be checked: without the CA the handshake has to be refused.
if node -e '
const s = require("tls").connect({ host: "127.0.0.1", port: +process.argv[1], timeout: 5000 }, () => process.exit(0));
s.on("error", (e) => { console.log(e.code); process.exit(3); });
s.on("timeout", () => process.exit(4));' "$TLS_PORT" >"$TMP/untrusted.log" 2>&1; then
    die "a client that does not trust the test certificate completed a TLS handshake"
fi
say "untrusted client refused as expected ($(head -n1 "$TMP/untrusted.log"))"
NODE_EXTRA_CA_CERTS="$TMP/pushbox.crt" PB_HOST=127.0.0.1 PB_TLS_PORT="$TLS_PORT" PB_PLAIN_PORT="$PLAIN_PORT" \
    PB_APP_ID="$APP_ID" PB_APP_KEY="$APP_KEY" PB_APP_SECRET="$APP_SECRET" PB_TIMEOUT_MS=$((SMOKE_TIMEOUT * 1000)) \
    timeout $((SMOKE_TIMEOUT + 10)) node --no-deprecation tests/qemu/subscribe_publish.mjs ||
    die "pusher-js did not receive the event published through the HTTP API (see above)"

# --- 5. graceful stop ----------------------------------------------------------------------
kill -TERM "$PID"
status=
for _ in $(seq 100); do   # 10 s
    if ! kill -0 "$PID" 2>/dev/null; then wait "$PID" && status=0 || status=$?; break; fi
    sleep 0.1
done
[ -n "$status" ] || die "server still running 10 s after SIGTERM"
PID=
[ "$status" = 0 ] || die "server exited with status $status after SIGTERM"
say "server stopped cleanly on SIGTERM"
echo "qemu-smoke: PASS ($TARGET under qemu-user, TLS, pusher-js + pusher SDK) in $(elapsed) s"

#!/usr/bin/env bash
# Soak: pushbox under a long, ordinary-but-rough day, to show it does not leak. For DURATION
# seconds (default 3600) benches/soak/driver.mjs ramps WebSocket clients up to CONNS and churns
# them, joins and leaves presence channels, publishes through the pusher Node SDK, and runs a
# webhook receiver that answers 500 and 200 in turns (FLIP_SECS each), so the webhook queue
# fails and recovers all along. Every SAMPLE_EVERY seconds the server's RSS and open file
# descriptors are sampled from /proc; at the end it prints the drift:
#
#   RSS drift = median RSS over the last WINDOW seconds of load ÷ median over the WINDOW seconds
#               after WARMUP, − 1        (goal: ≤ 5 %); also printed for RSS's anonymous part
#               alone (heap and stacks: file-backed RSS is code paged in as new paths run)
#   fds       = open descriptors once every client has left, against the idle server's before
#               the load (goal: back to baseline)
#
#   benches/soak.sh                          # one hour
#   DURATION=900 benches/soak.sh             # fifteen minutes (WARMUP defaults to a fifth)
#   CONNS=2000 PUBLISH_PER_SEC=50 DURATION=600 benches/soak.sh
#
# Environment: DURATION, WARMUP (default DURATION/5, at least RAMP+60), WINDOW (default 120),
# SAMPLE_EVERY (10), CONNS (1000), RAMP (60), CHURN_PER_SEC (10), PUBLISH_PER_SEC (20),
# PRESENCE_SHARE (0.2), FLIP_SECS (30), PORT (6500; the receiver takes PORT+1), PUSHBOX_BIN
# (default: target/release/pushbox, built if missing), SERVER_CPU (pin the server with taskset),
# OUT_DIR (target/soak), CLIENTS_DIR (tests/clients: its node_modules has ws and pusher; npm ci
# there if missing). Needs node, curl and python3.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

DURATION=${DURATION:-3600}
RAMP=${RAMP:-60}
WARMUP=${WARMUP:-$(( DURATION / 5 > RAMP + 60 ? DURATION / 5 : RAMP + 60 ))}
WINDOW=${WINDOW:-120}
SAMPLE_EVERY=${SAMPLE_EVERY:-10}
PORT=${PORT:-6500}
HOOK_PORT=$((PORT + 1))
OUT_DIR=${OUT_DIR:-$ROOT/target/soak}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT_DIR"
CSV="$OUT_DIR/$STAMP.csv"
WORK=$(mktemp -d /tmp/pushbox-soak.XXXXXX)
SPID=""
DPID=""

cleanup() {
    for p in $DPID $SPID; do kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log() { echo "[soak $(date -u +%H:%M:%S)] $*" >&2; }

if [ "$WARMUP" -ge "$DURATION" ]; then
    echo "WARMUP ($WARMUP s) must be shorter than DURATION ($DURATION s)" >&2
    exit 2
fi

PUSHBOX_BIN=${PUSHBOX_BIN:-$ROOT/target/release/pushbox}
if [ ! -x "$PUSHBOX_BIN" ]; then
    log "building the release binary"
    cargo build --release --bin pushbox
fi
CLIENTS_DIR=${CLIENTS_DIR:-$ROOT/tests/clients}
if [ ! -d "$CLIENTS_DIR/node_modules/ws" ] || [ ! -d "$CLIENTS_DIR/node_modules/pusher" ]; then
    log "installing $CLIENTS_DIR's node modules"
    (cd "$CLIENTS_DIR" && npm ci --no-audit --no-fund)
fi

cat > "$WORK/pushbox.toml" <<TOML
state_dir = "$WORK/state"
[server]
host = "127.0.0.1"
port = $PORT
max_connections_per_ip = 0
[webhooks]
backoff_initial_ms = 500
backoff_max_ms = 10000
[[apps]]
id = "soak"
key = "soak-key"
secret = "soak-secret-0123456789abcdef"
max_connections = 20000
webhook_url = "http://127.0.0.1:$HOOK_PORT/hook"
TOML

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
PIN=()
[ -n "${SERVER_CPU:-}" ] && PIN=(taskset -c "$SERVER_CPU")
PUSHBOX_LOG=warn "${PIN[@]}" "$PUSHBOX_BIN" serve --config "$WORK/pushbox.toml" 2> "$OUT_DIR/$STAMP.server.log" &
SPID=$!
for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$PORT/up" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fsS "http://127.0.0.1:$PORT/up" >/dev/null || { log "pushbox did not start"; cat "$OUT_DIR/$STAMP.server.log"; exit 1; }

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$SPID/status"; }
# RSS and its anonymous part (the heap, stacks): file-backed pages are the binary's and libc's
# code, paged in as new code paths run, which is no leak.
rss_anon_kb() { awk '/^VmRSS/ {r=$2} /^RssAnon/ {a=$2} END {print r "," a}' "/proc/$SPID/status"; }
fds() { ls "/proc/$SPID/fd" | wc -l; }
fd_kinds() { ls -l "/proc/$SPID/fd" | awk 'NR>1 {sub(/:.*/, "", $NF); sub(/^\/.*/, "file", $NF); k[$NF]++} END {for (x in k) printf "%s=%d ", x, k[x]}'; }

sleep 2
BASE_FDS=$(fds)
BASE_KINDS=$(fd_kinds)
BASE_RSS=$(rss_kb)
log "pushbox pid $SPID ($PUSHBOX_BIN): idle RSS ${BASE_RSS} KiB, ${BASE_FDS} fds ($BASE_KINDS)"
log "load for ${DURATION}s: CONNS=${CONNS:-1000} RAMP=$RAMP CHURN_PER_SEC=${CHURN_PER_SEC:-10} PUBLISH_PER_SEC=${PUBLISH_PER_SEC:-20} warm-up ${WARMUP}s, window ${WINDOW}s; samples in $CSV"

CLIENTS_DIR="$CLIENTS_DIR" PORT=$PORT HOOK_PORT=$HOOK_PORT DURATION=$DURATION RAMP=$RAMP \
    KEY=soak-key SECRET=soak-secret-0123456789abcdef APP_ID=soak \
    node benches/soak/driver.mjs > "$OUT_DIR/$STAMP.driver.log" 2>&1 &
DPID=$!

echo "t,rss_kb,anon_kb,fds" > "$CSV"
T0=$SECONDS
while kill -0 "$DPID" 2>/dev/null; do
    kill -0 "$SPID" 2>/dev/null || { log "pushbox died"; tail -20 "$OUT_DIR/$STAMP.server.log"; exit 1; }
    echo "$((SECONDS - T0)),$(rss_anon_kb),$(fds)" >> "$CSV"
    sleep "$SAMPLE_EVERY"
done
wait "$DPID" || { log "the driver failed"; tail -20 "$OUT_DIR/$STAMP.driver.log"; exit 1; }
DPID=""
sleep 5
END_FDS=$(fds)
END_KINDS=$(fd_kinds)
END_RSS=$(rss_kb)
tail -3 "$OUT_DIR/$STAMP.driver.log" >&2
METRICS=$(curl -fsS "http://127.0.0.1:$PORT/metrics" || true)
kill -TERM "$SPID"; wait "$SPID" || true; SPID=""

python3 - "$CSV" "$WARMUP" "$WINDOW" "$DURATION" "$BASE_FDS" "$END_FDS" "$BASE_RSS" "$END_RSS" <<'PY'
import csv, statistics, sys
path, warmup, window, duration, base_fds, end_fds, base_rss, end_rss = sys.argv[1:]
warmup, window, duration = int(warmup), int(window), int(duration)
rows = [(int(r["t"]), int(r["rss_kb"]), int(r["anon_kb"]), int(r["fds"])) for r in csv.DictReader(open(path))]
after = [r for r in rows if warmup <= r[0] < warmup + window]
last = [r for r in rows if duration - window <= r[0] < duration]
if not after or not last:
    sys.exit("not enough samples: lengthen DURATION or shorten WARMUP/WINDOW")
def drift(col):
    a = statistics.median(r[col] for r in after)
    b = statistics.median(r[col] for r in last)
    return a, b, (b - a) / a * 100
a, b, d = drift(1)
aa, ab, ad = drift(2)
print(f"samples: {len(rows)}; RSS idle {base_rss} KiB, after warm-up (median of {len(after)}) {a:.0f} KiB, "
      f"last {window}s of load (median of {len(last)}) {b:.0f} KiB, peak {max(r[1] for r in rows)} KiB, "
      f"after the load {end_rss} KiB")
print(f"RSS drift after warm-up: {d:+.2f} % (goal ≤ 5 %): {'ok' if d <= 5 else 'OVER'}")
print(f"  of which anonymous (heap, stacks): {aa:.0f} → {ab:.0f} KiB, {ad:+.2f} %; the rest is code paged in")
print(f"fds: idle {base_fds}, peak {max(r[3] for r in rows)}, after every client left {end_fds}: "
      f"{'back to baseline' if int(end_fds) <= int(base_fds) else 'NOT back to baseline'}")
PY
log "fd kinds idle: $BASE_KINDS"
log "fd kinds after: $END_KINDS"
echo "$METRICS" | grep -E '^pushbox_(refusals_total|webhook|connections|spool_bytes)' | grep -v ' 0$' >&2 || true

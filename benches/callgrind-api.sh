#!/usr/bin/env bash
# User-space instructions per HTTP API publish, counted by valgrind's callgrind: pushbox and the
# minimal responder (ref-http). Unlike CPU-seconds, an instruction count does not move with the
# hypervisor's steal time, so a change to the API path can be judged on a noisy box.
#
#   benches/callgrind-api.sh                       # builds what is missing, prints one table
#   PUSHBOX_BIN=target/prof/release/pushbox benches/callgrind-api.sh   # a symbolised build:
#       callgrind_annotate --inclusive=yes target/bench-callgrind/pushbox.out.* then shows where
#
# Method: the server runs under `valgrind --tool=callgrind` (unpinned); `pbload api` warms it up
# for WARMUP seconds, the counters are zeroed (`callgrind_control -z`), pbload runs DURATION
# seconds with CONC connections (100-byte payloads, signed requests), the counters are dumped,
# and the instruction total is divided by the 2xx answers. Kernel work (the socket syscalls)
# is not counted: callgrind sees user space only. Valgrind's CPU has no SHA extensions, so
# ring's SHA-256 runs its AVX code here and the signature check weighs more than on the box.
set -euo pipefail
cd "$(dirname "$0")/.."

WARMUP=${WARMUP:-3}
DURATION=${DURATION:-8}
CONC=${CONC:-4}
PORT=${PORT:-7100}
OUT=${OUT:-target/bench-callgrind}
PBLOAD=${PBLOAD_BIN:-target/pbload/release/pbload}
command -v valgrind >/dev/null || { echo "valgrind is missing: apt-get install valgrind" >&2; exit 2; }
command -v jq >/dev/null || { echo "jq is missing: apt-get install jq" >&2; exit 2; }
if [ -z "${PUSHBOX_BIN:-}" ]; then
    cargo build --release --bin pushbox
    PUSHBOX_BIN=target/release/pushbox
fi
[ -x "$PBLOAD" ] || cargo build --release --manifest-path ../shared/tools/pbload/Cargo.toml --target-dir target/pbload
cargo build --release --manifest-path benches/reference/Cargo.toml --target-dir target/bench-ref
REF_HTTP=target/bench-ref/release/ref-http

mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/pushbox-callgrind.XXXXXX)
SPID=""
cleanup() {
    if [ -n "$SPID" ] && kill -0 "$SPID" 2>/dev/null; then kill -KILL "$SPID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

cat >"$WORK/pushbox.toml" <<TOML
state_dir = "$WORK/state"
[server]
host = "127.0.0.1"
port = $PORT
[spool]
durability = "memory"
[[apps]]
id = "app-id"
key = "app-key"
secret = "app-secret"
TOML

# measure NAME CMD... : prints "NAME requests instructions per_request"
measure() {
    local name=$1; shift
    rm -f "$OUT/$name.out".*
    PUSHBOX_LOG=warn RUST_LOG=warn REVERB_SERVER_PORT=$PORT \
        valgrind --tool=callgrind --callgrind-out-file="$OUT/$name.out.%p" "$@" >"$WORK/$name.log" 2>&1 &
    SPID=$!
    local i up=0
    for i in $(seq 1 150); do
        if curl -s -o /dev/null "http://127.0.0.1:$PORT/up"; then up=1; break; fi
        sleep 0.2
    done
    [ $up = 1 ] || { echo "$name did not start under valgrind:" >&2; cat "$WORK/$name.log" >&2; exit 1; }
    local api="--api http://127.0.0.1:$PORT --app-id app-id --key app-key --secret app-secret --conc $CONC --payload 100"
    # shellcheck disable=SC2086
    "$PBLOAD" api $api --duration "$WARMUP" >/dev/null 2>&1 || true
    callgrind_control -z "$SPID" >/dev/null 2>&1
    # shellcheck disable=SC2086
    "$PBLOAD" api $api --duration "$DURATION" 2>/dev/null | tail -n1 >"$WORK/$name.json" || true
    callgrind_control -d "$SPID" >/dev/null 2>&1
    sleep 1
    kill -TERM "$SPID" 2>/dev/null || true
    wait "$SPID" 2>/dev/null || true
    SPID=""
    local n ir f
    n=$(jq '[.status | to_entries[] | select(.key | startswith("2")) | .value] | add // 0' "$WORK/$name.json")
    f=$(ls -t "$OUT/$name.out".*.1 2>/dev/null | head -n1)
    [ -n "$f" ] || { echo "$name: no callgrind dump" >&2; exit 1; }
    ir=$(awk '/^summary:/ {print $2; exit}' "$f")
    [ "$n" -gt 0 ] || { echo "$name: no 2xx answers" >&2; exit 1; }
    echo "$name $n $ir $((ir / n))"
    PORT=$((PORT + 1))
    sed -i "s/^port = .*/port = $PORT/" "$WORK/pushbox.toml"
}

PB=$(measure pushbox "$PUSHBOX_BIN" serve --config "$WORK/pushbox.toml")
REF=$(measure ref-http "$REF_HTTP" --port "$PORT")
echo "| server | 2xx counted | instructions | instructions / request |"
echo "|---|---|---|---|"
for l in "$PB" "$REF"; do
    read -r name n ir per <<<"$l"
    echo "| $name | $n | $ir | $per |"
done
read -r _ _ _ pbper <<<"$PB"
read -r _ _ _ refper <<<"$REF"
echo
echo "pushbox / ref-http: $(awk -v a="$pbper" -v b="$refper" 'BEGIN {printf "%.1f", a / b}')× the user-space instructions per request ($PUSHBOX_BIN; CONC=$CONC, DURATION=$DURATION s; kernel work not counted)"

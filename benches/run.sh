#!/usr/bin/env bash
# pushbox performance budget (issue 8): runs each scenario against pushbox and its reference,
# back to back, RUNS times, and prints one table of medians and ratios.
#
#   benches/run.sh                 # every scenario, RUNS=3
#   benches/run.sh quick           # smaller sizes, RUNS=1 (fast iteration)
#   benches/run.sh idle fanout     # only these scenarios (idle fanout burst api churn)
#   benches/run.sh quick fanout    # combinable
#   RUNS=5 PUSHBOX_BIN=/tmp/pushbox benches/run.sh
#
# Environment: RUNS, PUSHBOX_BIN (skip the slow LTO build and benchmark this binary),
# PBLOAD_BIN, PORT_BASE (default 6400), SERVER_CPU (1), CLIENT_CPU (0), OUT_DIR,
# DURABILITY (pushbox's [spool] durability: memory, the default, or fsync), COALESCE_MS
# (pushbox's opt-in [server] coalesce_ms, default 0: measure what the window buys),
# CHURN_CYCLES (default 100000; 20000 quick) and CHURN_MAX_SLICES (12): a longer churn,
# RESUME (pushbox's [resume] enabled: true, the default, or false: what resume costs).
# Raw pbload JSON lines (one per run, tagged with .bench) go to target/bench-results/*.jsonl.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

QUICK=0
SCEN=()
for a in "$@"; do
    case $a in
        quick) QUICK=1 ;;
        all) ;;
        idle|fanout|burst|api|churn) SCEN+=("$a") ;;
        -h|--help) sed -n 2,15p "$0"; exit 0 ;;
        *) echo "unknown argument: $a (quick, idle, fanout, burst, api, churn)" >&2; exit 2 ;;
    esac
done
[ ${#SCEN[@]} -eq 0 ] && SCEN=(idle fanout burst api churn)
if [ $QUICK = 1 ]; then RUNS=${RUNS:-1}; else RUNS=${RUNS:-3}; fi

SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
PORT=${PORT_BASE:-6400}
OUT_DIR=${OUT_DIR:-$ROOT/target/bench-results}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT_DIR/logs"
SUFFIX=""; [ $QUICK = 1 ] && SUFFIX=-quick
JSONL="$OUT_DIR/$STAMP$SUFFIX.jsonl"
WORK=$(mktemp -d /tmp/pushbox-bench.XXXXXX)
SPID=""

cleanup() {
    if [ -n "$SPID" ] && kill -0 "$SPID" 2>/dev/null; then kill -KILL "$SPID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "[bench $(date +%H:%M:%S)] $*" >&2; }

# ------------------------------------------------------------------ build

if [ -n "${PUSHBOX_BIN:-}" ]; then
    PB_SRC=$PUSHBOX_BIN
    PB_COMMIT=${PUSHBOX_COMMIT:-unknown}
else
    log "building pushbox (release, LTO: slow)"
    cargo build --release --bin pushbox
    PB_SRC=$ROOT/target/release/pushbox
    PB_COMMIT=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo -dirty)
fi
# Benchmark a private copy: the binary in target/ may be rebuilt while this runs.
PB_BIN=$WORK/pushbox
cp "$PB_SRC" "$PB_BIN"

PBLOAD=${PBLOAD_BIN:-$ROOT/target/pbload/release/pbload}
if [ ! -x "$PBLOAD" ]; then
    log "building pbload"
    cargo build --release --manifest-path ../shared/tools/pbload/Cargo.toml --target-dir target/pbload
fi
log "building the references"
cargo build --release --manifest-path benches/reference/Cargo.toml --target-dir target/bench-ref
REF_WS=$ROOT/target/bench-ref/release/ref-writeloop
REF_HTTP=$ROOT/target/bench-ref/release/ref-http

cat >"$WORK/pushbox.toml" <<TOML
state_dir = "$WORK/state"
[server]
host = "127.0.0.1"
port = 6400
activity_timeout = 120
coalesce_ms = ${COALESCE_MS:-0}
# pbload opens every connection from 127.0.0.1, and the references have no per-address limit:
# off here (0), so both serve the same 10k-18k clients (the default, 1,000, refused half of idle-2k).
max_connections_per_ip = 0
[spool]
durability = "${DURABILITY:-memory}"
[resume]
enabled = ${RESUME:-true}
[[apps]]
id = "app-id"
key = "app-key"
secret = "app-secret"
max_connections = 19500
TOML

# ------------------------------------------------------------------ server lifecycle

# start_server KIND: pushbox | writeloop | http. Fresh process, fresh port, pinned, max open files.
start_server() {
    local kind=$1 lf
    PORT=$((PORT + 1))
    lf="$OUT_DIR/logs/$STAMP-$kind-$PORT.log"
    case $kind in
        pushbox)
            rm -rf "$WORK/state"
            ( ulimit -n "$(ulimit -Hn)"
              unset REVERB_APP_ID REVERB_APP_KEY REVERB_APP_SECRET PUSHER_APP_ID PUSHER_APP_KEY PUSHER_APP_SECRET PUSHBOX_WEBHOOK_URL
              export PUSHBOX_LOG=warn RUST_LOG=warn REVERB_SERVER_PORT=$PORT REVERB_SERVER_HOST=127.0.0.1
              exec taskset -c "$SERVER_CPU" "$PB_BIN" serve --config "$WORK/pushbox.toml" ) >"$lf" 2>&1 &
            ;;
        writeloop) ( ulimit -n "$(ulimit -Hn)"; RUST_LOG=warn exec taskset -c "$SERVER_CPU" "$REF_WS" --port "$PORT" ) >"$lf" 2>&1 & ;;
        http) ( ulimit -n "$(ulimit -Hn)"; RUST_LOG=warn exec taskset -c "$SERVER_CPU" "$REF_HTTP" --port "$PORT" ) >"$lf" 2>&1 & ;;
    esac
    SPID=$!
    local i
    for i in $(seq 1 200); do
        if ! kill -0 "$SPID" 2>/dev/null; then log "$kind exited at start:"; cat "$lf" >&2; exit 1; fi
        case $kind in
            pushbox) curl -sf "http://127.0.0.1:$PORT/up" >/dev/null 2>&1 && break ;;
            *) grep -q listening "$lf" && break ;;
        esac
        sleep 0.1
    done
    sleep 0.5   # let the allocator and runtime settle before pbload's "before" sample
}

stop_server() {
    [ -z "$SPID" ] && return
    kill -TERM "$SPID" 2>/dev/null || true
    local i
    for i in $(seq 1 100); do kill -0 "$SPID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SPID" 2>/dev/null || true
    wait "$SPID" 2>/dev/null || true
    SPID=""
    sleep 1     # sockets in TIME_WAIT are per port, and each start uses a new port
}

# The machine's CPU ticks (all CPUs) from /proc/stat, printed as "total steal".
cpu_ticks() { awk '/^cpu /{t=0; for(i=2;i<=NF;i++) t+=$i; print t, $9; exit}' /proc/stat; }

# pbload SCENARIO SERVER RUN SUBCOMMAND ARGS... : one pbload run against $SPID, JSON appended.
# Also records the hypervisor's steal time over the run (% of all CPU ticks): on a shared VM
# that is what the ratios follow, and a run under heavy steal is worth repeating.
pbload() {
    local scen=$1 srv=$2 run=$3; shift 3
    local out="$WORK/pbload.out" load t0 t1 steal
    load=$(cut -d' ' -f1 /proc/loadavg)
    log "$scen run $run: $srv: pbload $*"
    t0=$(cpu_ticks)
    taskset -c "$CLIENT_CPU" "$PBLOAD" "$@" --server-pid "$SPID" >"$out" 2>"$out.err" || true
    t1=$(cpu_ticks)
    steal=$(echo "$t0 $t1" | awk '{d=$3-$1; printf "%.1f", (d > 0 ? 100 * ($4 - $2) / d : 0)}')
    cat "$out" >>"$OUT_DIR/logs/$STAMP-pbload.txt"
    local last
    last=$(tail -n1 "$out")
    if ! echo "$last" | jq -e . >/dev/null 2>&1; then
        last='{"ok":false,"error":"no JSON from pbload"}'
        tail -n5 "$out.err" >&2
    fi
    LAST_JSON=$(echo "$last" | jq -c --arg s "$scen" --arg v "$srv" --argjson r "$run" \
        --arg c "$PB_COMMIT" --arg l "$load" --arg t "$(date -u +%FT%TZ)" --arg st "$steal" \
        '. + {bench: {scenario: $s, server: $v, run: $r, pushbox_commit: $c, loadavg1: ($l|tonumber), steal_pct: ($st|tonumber), at: $t}}')
    echo "$LAST_JSON" >>"$JSONL"
    echo "$last" | jq -r '"  -> ok=\(.ok) " + ([.server.rss_per_conn_kb, .deliveries_per_s, .loss_pct, .latency.p99_us, .server.deliveries_per_cpu_s, .server.ok_per_cpu_s, .cycles, .server.rss_delta_kb, .client_util] | map(tostring) | join(" "))' >&2 || true
}

# ------------------------------------------------------------------ scenarios

WS() { echo "ws://127.0.0.1:$PORT/app/app-key"; }
API() { echo "--api http://127.0.0.1:$PORT --app-id app-id --key app-key --secret app-secret"; }

scen_idle() { # name srv run conns ips
    local name=$1 srv=$2 run=$3 n=$4 ips=$5
    start_server "$srv"
    pbload "$name" "$srv" "$run" idle --url "$(WS)" --conns "$n" --channels 100 --hold 10 \
        --source-ips "$ips" --ramp-timeout 120
    stop_server
}

scen_fanout() { # name srv run subs rate payload duration
    local name=$1 srv=$2 run=$3
    start_server "$srv"
    # shellcheck disable=SC2046
    pbload "$name" "$srv" "$run" fanout --url "$(WS)" $(API) --subs "$4" --channels 1 --rate "$5" \
        --payload "$6" --duration "$7" --drain 5 --ramp-timeout 120
    stop_server
}

scen_api() { # name srv run duration
    local name=$1 srv=$2 run=$3
    start_server "$srv"
    # shellcheck disable=SC2046
    pbload "$name" "$srv" "$run" api $(API) --conc 32 --duration "$4" --payload 100
    stop_server
}

# Churn: a short warm-up (allocator pools, runtime), then connect/subscribe/close cycles in
# 10 s slices until CYCLES are done (at most CHURN_MAX_SLICES, default 12); growth = RSS after
# the last slice's settle − RSS after the warm-up. Each slice's settled RSS is in the JSONL too.
scen_churn() { # name srv run cycles
    local name=$1 srv=$2 run=$3 target=$4 total=0 i first="" lastj=""
    local ips=127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6,127.0.0.7,127.0.0.8
    start_server "$srv"
    pbload "$name-warmup" "$srv" "$run" churn --url "$(WS)" --conns 50 --duration 3 --settle 2 --source-ips "$ips"
    for i in $(seq 1 "${CHURN_MAX_SLICES:-12}"); do
        pbload "$name-slice" "$srv" "$run" churn --url "$(WS)" --conns 50 --duration 10 --settle 3 --source-ips "$ips"
        [ -z "$first" ] && first=$LAST_JSON
        lastj=$LAST_JSON
        total=$((total + $(echo "$LAST_JSON" | jq '.cycles // 0')))
        [ "$total" -ge "$target" ] && break
    done
    jq -nc --argjson f "$first" --argjson l "$lastj" --argjson t "$total" --arg s "$name" --arg v "$srv" \
        --argjson r "$run" --arg c "$PB_COMMIT" \
        '{cmd: "churn-total", ok: true, cycles: $t, rss_start_kb: $f.server.before.rss_kb,
          rss_end_kb: $l.server.settled.rss_kb, rss_growth_kb: ($l.server.settled.rss_kb - $f.server.before.rss_kb),
          failed_last_slice: $l.failed, bench: {scenario: $s, server: $v, run: $r, pushbox_commit: $c}}' >>"$JSONL"
    stop_server
}

# pair NAME REFKIND FUNCTION ARGS...: pushbox and the reference back to back; the order
# alternates between runs so neither always gets the quieter minute.
pair() {
    local name=$1 ref=$2 fn=$3 run; shift 3
    for run in $(seq 1 "$RUNS"); do
        if [ $((run % 2)) = 1 ]; then
            $fn "$name" pushbox "$run" "$@"; $fn "$name" "$ref" "$run" "$@"
        else
            $fn "$name" "$ref" "$run" "$@"; $fn "$name" pushbox "$run" "$@"
        fi
    done
}

{
    echo "{\"cmd\":\"meta\",\"bench\":{\"scenario\":\"meta\"},\"stamp\":\"$STAMP\",\"quick\":$QUICK,\"runs\":$RUNS,\"pushbox_commit\":\"$PB_COMMIT\",\"pushbox_bin\":\"$PB_SRC\",\"durability\":\"${DURABILITY:-memory}\",\"coalesce_ms\":${COALESCE_MS:-0},\"resume\":${RESUME:-true},\"nproc\":$(nproc),\"loadavg_start\":\"$(cut -d' ' -f1-3 /proc/loadavg)\",\"scenarios\":\"${SCEN[*]}\"}"
} >>"$JSONL"
log "results: $JSONL (pushbox $PB_COMMIT, RUNS=$RUNS, quick=$QUICK, load $(cut -d' ' -f1-3 /proc/loadavg))"
ps -eo pcpu,pid,comm --sort=-pcpu | head -8 >"$OUT_DIR/logs/$STAMP-top-start.txt"

for s in "${SCEN[@]}"; do
    case $s in
        idle)
            if [ $QUICK = 1 ]; then
                pair idle-2k writeloop scen_idle 2000 127.0.0.1
            else
                pair idle-10k writeloop scen_idle 10000 127.0.0.1,127.0.0.2
                pair idle-18k writeloop scen_idle 18000 127.0.0.1,127.0.0.2,127.0.0.3
            fi ;;
        fanout)
            if [ $QUICK = 1 ]; then
                pair fanout-1kx50 writeloop scen_fanout 1000 50 100 5
                pair fanout-2kx10 writeloop scen_fanout 2000 10 200 5
            else
                pair fanout-1kx50 writeloop scen_fanout 1000 50 100 10
                pair fanout-10kx10 writeloop scen_fanout 10000 10 200 10
            fi ;;
        burst)
            pair burst-1kx200 writeloop scen_fanout 1000 200 100 $([ $QUICK = 1 ] && echo 5 || echo 10) ;;
        api)
            pair api http scen_api $([ $QUICK = 1 ] && echo 5 || echo 10) ;;
        churn)
            pair churn writeloop scen_churn "${CHURN_CYCLES:-$([ $QUICK = 1 ] && echo 20000 || echo 100000)}" ;;
    esac
done

echo "{\"cmd\":\"meta-end\",\"bench\":{\"scenario\":\"meta\"},\"loadavg_end\":\"$(cut -d' ' -f1-3 /proc/loadavg)\"}" >>"$JSONL"
ps -eo pcpu,pid,comm --sort=-pcpu | head -8 >"$OUT_DIR/logs/$STAMP-top-end.txt"
python3 "$ROOT/benches/summarize.py" "$JSONL" | tee "${JSONL%.jsonl}.md"

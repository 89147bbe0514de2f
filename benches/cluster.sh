#!/usr/bin/env bash
# pushbox as a cluster (issue 21, "Performance"): what the Redis/Valkey bus costs, measured against
# the single box at the same load. Every process runs on loopback (pbload refuses anything else):
# a private redis-server (or valkey-server) on 127.0.0.1:6391 with the settings the README asks for
# (appendonly yes, everysec, noeviction), and 1, 2 or 3 pushbox nodes on 127.0.0.1:65xx with their
# own state directories. Servers are pinned to SERVER_CPU (default 1), the load to CLIENT_CPU (0).
#
#   benches/cluster.sh                # every scenario once
#   benches/cluster.sh fanout latency # some (fanout latency presence memory)
#   ENGINE=valkey RUNS=2 PUSHBOX_BIN=target/release/pushbox benches/cluster.sh
#   FANOUT_NODES="1 3" LATENCY_AT="single other" PRESENCE_NODES=1 SUBS=1000 RATE=50 DURATION=10
#
# Scenarios:
#   fanout   SUBS (1000) subscribers on bench-0, RATE (50) events/s for DURATION (10) s published
#            on node A. Single box: pbload fanout on it. Cluster of N: pbload fanout on A holds
#            SUBS/N subscribers, `pbload idle` holds SUBS/N on each other node. Deliveries = sum of
#            pushbox_messages_out_total over the nodes; CPU = utime+stime of every node from
#            /proc over the whole run (the idle ramps, fanout's ramp, publish and drain: the same
#            work for the single box, which is measured the same way). Redis' CPU is reported apart.
#   latency  50 subscribers, 100 events/s for 10 s: publish → deliver p50/p99 on the single box,
#            on the publishing node (same node) and on another node (other node).
#   presence join/leave cycles/s (30 workers, raw WebSockets, subscribe → succeeded → unsubscribe)
#            on the single box and spread over a 3-node cluster.
#   rings    resume's rings on a node with no client: RSS and kept events/bytes, resume on and off.
#   memory   Redis used_memory before/after 2,000 subscribed connections and 1,000 presence
#            members over the cluster (INFO memory), per connection and per member.
# Raw lines go to target/bench-results/cluster-<stamp>.jsonl; a summary table at the end.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
SCEN=("$@"); [ ${#SCEN[@]} -eq 0 ] && SCEN=(fanout latency presence memory)
ENGINE=${ENGINE:-redis}
RUNS=${RUNS:-1}
SUBS=${SUBS:-1000}; RATE=${RATE:-50}; DURATION=${DURATION:-10}
SERVER_CPU=${SERVER_CPU:-1}; CLIENT_CPU=${CLIENT_CPU:-0}
OUT_DIR=${OUT_DIR:-$ROOT/target/bench-results}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT_DIR"
JSONL="$OUT_DIR/cluster-$STAMP.jsonl"
WORK=$(mktemp -d /tmp/pushbox-cluster-bench.XXXXXX)
PIDS=()
RPORT=6391
log() { echo "[cluster-bench $(date +%H:%M:%S)] $*" >&2; }

cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ binaries
if [ -n "${PUSHBOX_BIN:-}" ]; then PB_SRC=$PUSHBOX_BIN; else
    log "building pushbox (release)"; cargo build --release --quiet --bin pushbox; PB_SRC=$ROOT/target/release/pushbox
fi
PB_BIN=$WORK/pushbox; cp "$PB_SRC" "$PB_BIN"
PB_COMMIT=${PUSHBOX_COMMIT:-$(git rev-parse --short HEAD)}
PBLOAD=${PBLOAD_BIN:-$ROOT/target/pbload/release/pbload}
if [ ! -x "$PBLOAD" ]; then
    log "building pbload"
    cargo build --release --quiet --manifest-path ../shared/tools/pbload/Cargo.toml --target-dir target/pbload
fi
case $ENGINE in
    redis) RBIN=$(command -v redis-server) || { echo "redis-server missing: scripts/setup.sh"; exit 1; } ;;
    valkey) RBIN=$(tests/cluster/valkey-path.sh) || { echo "valkey-server missing: scripts/setup.sh"; exit 1; } ;;
    *) echo "ENGINE must be redis or valkey"; exit 2 ;;
esac
KEY=bench-key; SECRET=bench-secret; APP=bench-app

# ------------------------------------------------------------------ processes
RPID=""
redis_start() {
    rm -rf "$WORK/redis"; mkdir -p "$WORK/redis"
    taskset -c "$SERVER_CPU" "$RBIN" --port $RPORT --bind 127.0.0.1 --dir "$WORK/redis" --save '' \
        --appendonly yes --appendfsync everysec --maxmemory-policy noeviction \
        --logfile "$WORK/redis/log" &
    RPID=$!; PIDS+=("$RPID")
    local i; for i in $(seq 50); do [ "$(rcli PING)" = PONG ] && return; sleep 0.1; done
    echo "redis did not start"; exit 1
}
rcli() { redis-cli -h 127.0.0.1 -p $RPORT "$@" 2>/dev/null | tr -d '\r'; } # redis-tools, with redis-server
redis_mem() { rcli INFO memory | awk -F: '$1=="used_memory"{print $2; exit}'; }
redis_stop() { [ -n "$RPID" ] && kill -KILL "$RPID" 2>/dev/null; wait "$RPID" 2>/dev/null || true; RPID=""; }

NODE_PIDS=(); NODE_PORTS=()
# nodes_start N CLUSTER(0|1): fresh state, fresh Redis keys (a new prefix per start)
nodes_start() {
    local n=$1 cl=$2 i port prefix="b$RANDOM"
    NODE_PIDS=(); NODE_PORTS=()
    for i in $(seq 1 "$n"); do
        port=$((6500 + RANDOM % 400))
        mkdir -p "$WORK/n$i"; rm -rf "$WORK/n$i/state"
        {
            echo "state_dir = \"$WORK/n$i/state\""
            echo "[server]"; echo "host = \"127.0.0.1\""; echo "port = $port"; echo "activity_timeout = 120"
            echo "max_connections_per_ip = 0"
            echo "[spool]"; echo "durability = \"${DURABILITY:-memory}\""
            echo "[resume]"; echo "enabled = ${RESUME:-true}"
            if [ "$cl" = 1 ]; then
                echo "[cluster]"; echo "redis_url = \"redis://127.0.0.1:$RPORT\""; echo "key_prefix = \"$prefix\""
                echo "node_name = \"n$i\""
            fi
            echo "[[apps]]"; echo "id = \"$APP\""; echo "key = \"$KEY\""; echo "secret = \"$SECRET\""
            echo "max_connections = 19500"; echo "max_presence_members = 5000"
        } >"$WORK/n$i/pushbox.toml"
        ( ulimit -n "$(ulimit -Hn)"
          unset REVERB_APP_ID REVERB_APP_KEY REVERB_APP_SECRET PUSHER_APP_ID PUSHER_APP_KEY PUSHER_APP_SECRET PUSHBOX_WEBHOOK_URL PUSHBOX_REDIS_URL
          PUSHBOX_LOG=warn RUST_LOG=warn exec taskset -c "$SERVER_CPU" "$PB_BIN" serve --config "$WORK/n$i/pushbox.toml" ) \
            >"$WORK/n$i/log" 2>&1 &
        NODE_PIDS+=($!); PIDS+=($!); NODE_PORTS+=("$port")
        local k; for k in $(seq 100); do curl -sf "http://127.0.0.1:$port/up" >/dev/null && break; sleep 0.1; done
        curl -sf "http://127.0.0.1:$port/up" >/dev/null || { echo "node $i did not start:"; cat "$WORK/n$i/log"; exit 1; }
    done
    sleep 0.5
}
nodes_stop() {
    local p; for p in "${NODE_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${NODE_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    NODE_PIDS=(); sleep 1
}
cpu_of() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; } # ticks
nodes_cpu() { local s=0 p; for p in "${NODE_PIDS[@]}"; do s=$((s + $(cpu_of "$p"))); done; echo "$s"; }
msgs_out() { local s=0 port v; for port in "${NODE_PORTS[@]}"; do
    v=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^pushbox_messages_out_total/{s+=$NF} END{print s+0}'); s=$((s + v)); done; echo "$s"; }
TCK=$(getconf CLK_TCK)
WS() { echo "ws://127.0.0.1:${NODE_PORTS[$1]}/app/$KEY"; }
API() { echo "--api http://127.0.0.1:${NODE_PORTS[$1]} --app-id $APP --key $KEY --secret $SECRET"; }
emit() { echo "$1" | jq -c --arg e "$ENGINE" --arg c "$PB_COMMIT" --arg l "$(cut -d' ' -f1 /proc/loadavg)" '. + {engine: $e, commit: $c, loadavg1: ($l|tonumber)}' | tee -a "$JSONL" >&2; }

# ------------------------------------------------------------------ scenarios
# fanout N: N=1 single box (no [cluster]), else N nodes on the bus.
fanout() {
    local n=$1 cl=1 per i c0 c1 m0 m1 r0 r1 out idle=()
    [ "$n" = 1 ] && cl=0
    nodes_start "$n" "$cl"
    per=$((SUBS / n))
    c0=$(nodes_cpu); m0=$(msgs_out); r0=$(cpu_of "$RPID")
    for i in $(seq 1 $((n - 1))); do
        taskset -c "$CLIENT_CPU" "$PBLOAD" idle --url "$(WS "$i")" --conns "$per" --channels 1 \
            --hold $((DURATION + 25)) >"$WORK/idle$i.out" 2>&1 &
        idle+=($!); PIDS+=($!)
    done
    sleep 3
    # shellcheck disable=SC2046
    out=$(taskset -c "$CLIENT_CPU" "$PBLOAD" fanout --url "$(WS 0)" $(API 0) --subs "$per" --channels 1 \
        --rate "$RATE" --payload 100 --duration "$DURATION" --drain 5 --server-pid "${NODE_PIDS[0]}" 2>/dev/null | tail -n1)
    c1=$(nodes_cpu); m1=$(msgs_out); r1=$(cpu_of "$RPID")
    for i in "${idle[@]}"; do kill -TERM "$i" 2>/dev/null || true; wait "$i" 2>/dev/null || true; done
    emit "$(echo "$out" | jq -c --argjson n "$n" --argjson cpu "$(( c1 - c0 ))" --argjson tck "$TCK" \
        --argjson msgs "$(( m1 - m0 ))" --argjson rcpu "$(( r1 - r0 ))" --argjson subs "$SUBS" \
        '{scenario: "fanout", nodes: $n, subs: $subs, rate: .rate, duration_s: .duration_s, published_ok,
          fanout_received: .received, fanout_expected: .expected_deliveries, loss_pct,
          deliveries: $msgs, nodes_cpu_s: ($cpu / $tck), redis_cpu_s: (if $n > 1 then $rcpu / $tck else 0 end),
          deliveries_per_node_cpu_s: (if $cpu > 0 then ($msgs / ($cpu / $tck)) | round else null end),
          e2e_p50_ms: (.latency.p50_us / 1000), e2e_p99_ms: (.latency.p99_us / 1000)}')"
    nodes_stop
}

# latency MODE: single | same | other
latency() {
    local mode=$1 n=2 url=1 out
    case $mode in single) nodes_start 1 0; url=0 ;; same) nodes_start 2 1; url=0 ;; other) nodes_start 2 1; url=1 ;; esac
    # shellcheck disable=SC2046
    out=$(taskset -c "$CLIENT_CPU" "$PBLOAD" fanout --url "$(WS "$url")" $(API 0) --subs 50 --channels 1 \
        --rate 100 --payload 100 --duration 10 --drain 3 --server-pid "${NODE_PIDS[0]}" 2>/dev/null | tail -n1)
    emit "$(echo "$out" | jq -c --arg m "$mode" '{scenario: "latency", where: $m, received, expected: .expected_deliveries,
        p50_ms: (.latency.p50_us / 1000), p90_ms: (.latency.p90_us / 1000), p99_ms: (.latency.p99_us / 1000),
        max_ms: (.latency.max_us / 1000), publish_p50_ms: (.publish_latency.p50_us / 1000)}')"
    nodes_stop
    : "$n"
}

presence() { # N nodes (1 = single box)
    local n=$1 cl=1 urls="" i c0 c1 r0 r1 out
    [ "$n" = 1 ] && cl=0
    nodes_start "$n" "$cl"
    for i in $(seq 0 $((n - 1))); do urls+="${urls:+,}$(WS "$i")"; done
    c0=$(nodes_cpu); r0=$(cpu_of "$RPID")
    out=$(taskset -c "$CLIENT_CPU" node benches/cluster-presence.mjs rate --urls "$urls" --secret "$SECRET" --workers 30 --duration 10)
    c1=$(nodes_cpu); r1=$(cpu_of "$RPID")
    # Redis' CPU counts for the cluster: its scripts are the presence work. The single box does
    # not use Redis (its Redis CPU is 0 by construction).
    emit "$(echo "$out" | jq -c --argjson n "$n" --argjson cpu "$(( c1 - c0 ))" --argjson tck "$TCK" \
        --argjson rcpu "$(( r1 - r0 ))" \
        '{scenario: "presence", nodes: $n, cycles, per_s: (.per_s | round), p50_ms, p99_ms, client_cpu_s,
          nodes_cpu_s: ($cpu / $tck), redis_cpu_s: (if $n > 1 then $rcpu / $tck else 0 end),
          cycles_per_server_cpu_s: (if $cpu > 0 then (.cycles / (($cpu + (if $n > 1 then $rcpu else 0 end)) / $tck)) | round else null end)}')"
    nodes_stop
}

memory() {
    local m0 m1 m2 urls out pid
    nodes_start 3 1
    urls="$(WS 0),$(WS 1),$(WS 2)"
    m0=$(redis_mem)
    taskset -c "$CLIENT_CPU" "$PBLOAD" idle --url "$(WS 0)" --conns 2000 --channels 10 --hold 8 >"$WORK/mem-idle.out" 2>&1 &
    pid=$!; PIDS+=($pid)
    sleep 6; m1=$(redis_mem); wait "$pid" || true
    sleep 2; m0b=$(redis_mem)
    taskset -c "$CLIENT_CPU" node benches/cluster-presence.mjs hold --urls "$urls" --secret "$SECRET" --members 1000 --hold 6 \
        >"$WORK/mem-pres.out" 2>"$WORK/mem-pres.err" &
    pid=$!; PIDS+=($pid)
    local k; for k in $(seq 300); do grep -q joined "$WORK/mem-pres.err" 2>/dev/null && break; sleep 0.1; done
    sleep 1; m2=$(redis_mem); wait "$pid" || true
    emit "$(jq -nc --argjson a "$m0" --argjson b "$m1" --argjson c "$m0b" --argjson d "$m2" \
        '{scenario: "redis-memory", used_before: $a, used_2000_conns: $b, bytes_per_conn: (($b - $a) / 2000),
          used_before_presence: $c, used_1000_members: $d, bytes_per_member: (($d - $c) / 1000)}')"
    nodes_stop
}

# rings: what resume's rings cost a node that holds no client at all (node 2 of 2): RSS and the
# kept events/bytes after RING_EVENTS (20,000) events over RING_CHANNELS (1,000) channels of
# RING_PAYLOAD (200) bytes published on node 1, with [resume] on and off.
rings() {
    local on out rss0 rss1 kept bytes
    for on in true false; do
        RESUME=$on nodes_start 2 1
        rss0=$(awk '/^VmRSS/{print $2}' "/proc/${NODE_PIDS[1]}/status")
        out=$(taskset -c "$CLIENT_CPU" node benches/cluster-rings.mjs --api "http://127.0.0.1:${NODE_PORTS[0]}" \
            --app-id "$APP" --key "$KEY" --secret "$SECRET" --events "${RING_EVENTS:-20000}" \
            --channels "${RING_CHANNELS:-1000}" --payload "${RING_PAYLOAD:-200}")
        sleep 2
        rss1=$(awk '/^VmRSS/{print $2}' "/proc/${NODE_PIDS[1]}/status")
        kept=$(curl -s "http://127.0.0.1:${NODE_PORTS[1]}/metrics" | awk '/^pushbox_resume_kept_events/{s+=$NF} END{print s+0}')
        bytes=$(curl -s "http://127.0.0.1:${NODE_PORTS[1]}/metrics" | awk '/^pushbox_resume_kept_bytes/{s+=$NF} END{print s+0}')
        emit "$(echo "$out" | jq -c --argjson on "$on" --argjson a "$rss0" --argjson b "$rss1" --argjson k "$kept" --argjson kb "$bytes" \
            '{scenario: "rings", resume: $on, events, channels, payload, publish_s: .seconds, failed,
              rss_before_kib: $a, rss_after_kib: $b, rss_growth_kib: ($b - $a), kept_events: $k, kept_bytes: $kb}')"
        nodes_stop
    done
}

log "engine $ENGINE ($("$RBIN" --version | head -1)), pushbox $PB_COMMIT, load $(cut -d' ' -f1-3 /proc/loadavg); results $JSONL"
redis_start
for run in $(seq 1 "$RUNS"); do
    for s in "${SCEN[@]}"; do
        case $s in
            fanout) for n in ${FANOUT_NODES:-1 2 3}; do fanout "$n"; done ;;
            latency) for m in ${LATENCY_AT:-single same other}; do latency "$m"; done ;;
            presence) for n in ${PRESENCE_NODES:-1 3}; do presence "$n"; done ;;
            memory) memory ;;
            rings) rings ;;
            *) echo "unknown scenario $s (fanout latency presence memory rings)"; exit 2 ;;
        esac
    done
done
redis_stop
log "done: $JSONL"
jq -r 'select(.scenario=="fanout") | "fanout nodes=\(.nodes): \(.deliveries) deliveries, \(.nodes_cpu_s) node CPU-s, \(.deliveries_per_node_cpu_s)/CPU-s, redis \(.redis_cpu_s) s, loss \(.loss_pct)%"' "$JSONL"
jq -r 'select(.scenario=="latency") | "latency \(.where): p50 \(.p50_ms) ms p99 \(.p99_ms) ms (\(.received)/\(.expected))"' "$JSONL"
jq -r 'select(.scenario=="presence") | "presence nodes=\(.nodes): \(.per_s) cycles/s p50 \(.p50_ms) ms p99 \(.p99_ms) ms; \(.cycles_per_server_cpu_s) cycles per server CPU-s (nodes \(.nodes_cpu_s) s, redis \(.redis_cpu_s) s, client \(.client_cpu_s) s)"' "$JSONL"
jq -r 'select(.scenario=="rings") | "rings resume=\(.resume): node 2 RSS +\(.rss_growth_kib) KiB, kept \(.kept_events) events / \(.kept_bytes) bytes (\(.events) events over \(.channels) channels, \(.failed) failed)"' "$JSONL"
jq -r 'select(.scenario=="redis-memory") | "redis memory: \(.bytes_per_conn) B/connection, \(.bytes_per_member) B/presence member"' "$JSONL"

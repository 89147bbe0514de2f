#!/usr/bin/env bash
# Durable publish: events/s and bytes written to disk per accepted event, with
# `durability = "fsync"` (the default) vs `"memory"`, for 100-byte and 1 KB payloads.
#
#   benches/durable-publish.sh            # RUNS=3 DURATION=8 CONC=32; medians printed as a table
#   RUNS=5 DURATION=10 STATE_ROOT=/var/lib/pushbox-bench benches/durable-publish.sh
#
# Each run: a fresh state directory on the disk under test (STATE_ROOT, default a new dir in
# /var/tmp: NOT a tmpfs), a release `pushbox serve` pinned to core 1 (no webhooks, log at warn),
# `pbload api` pinned to core 0: CONC keep-alive connections, one signed POST /apps/{id}/events
# in flight on each, for DURATION seconds. Measured per run:
#   * accepted events (2xx) and events/s, publish latency p50/p99   (pbload)
#   * write_bytes of the server process from /proc/PID/io (bytes it caused to be written to the
#     block layer: data pages, counted each time a clean page is dirtied again; the ext4
#     journal and metadata writes done by kernel threads are NOT included)
#   * the event log's growth (sum of its segment files) and the whole device's sectors written
#     from /sys/block/$DEV/stat (includes the journal, but also anything else on the machine)
#   * fdatasync / pwrite64 calls of the server (perf stat on the syscall tracepoints)
# Output: one JSON line per run in $OUT (default target/bench-durable/results.jsonl), then a
# Markdown table of the medians on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
DURATION=${DURATION:-8}
CONC=${CONC:-32}
PAYLOADS=${PAYLOADS:-"100 1000"}
MODES=${MODES:-"fsync memory"}
BIN=${PUSHBOX_BIN:-target/release/pushbox}
PBLOAD=${PBLOAD:-target/pbload/release/pbload}
OUT=${OUT:-target/bench-durable/results.jsonl}
STATE_ROOT=${STATE_ROOT:-$(mktemp -d /var/tmp/pushbox-bench.XXXXXX)}

[ -x "$BIN" ] || cargo build --release
[ -x "$PBLOAD" ] || cargo build --release --manifest-path ../shared/tools/pbload/Cargo.toml --target-dir target/pbload
mkdir -p "$(dirname "$OUT")" "$STATE_ROOT"
# A private copy: another build replacing target/release/pushbox mid-run must not matter.
cp "$BIN" "$STATE_ROOT/pushbox"; BIN=$STATE_ROOT/pushbox
: > "$OUT"
ulimit -n 20000 2>/dev/null || true

DEV=$(basename "$(df --output=source "$STATE_ROOT" | tail -1)")
DEV_STAT=/sys/block/$DEV/stat
[ -r "$DEV_STAT" ] || DEV_STAT=""
PERF=""
if command -v perf >/dev/null && perf stat -e syscalls:sys_enter_fdatasync -- true >/dev/null 2>&1; then
  PERF=perf
fi

echo "# $(date -u +%FT%TZ) $(uname -r), nproc $(nproc), state on $(df -h --output=source,fstype,size "$STATE_ROOT" | tail -1 | tr -s ' ')" >&2

sectors() { [ -n "$DEV_STAT" ] && awk '{print $7}' "$DEV_STAT" || echo 0; }
wbytes() { awk '/^write_bytes/{print $2}' "/proc/$1/io"; }
seg_bytes() { find "$1" -name '*.seg' -printf '%s\n' 2>/dev/null | awk '{s+=$1} END {print s+0}'; }

for payload in $PAYLOADS; do
  for mode in $MODES; do
    for run in $(seq 1 "$RUNS"); do
      dir=$STATE_ROOT/$mode-$payload-$run
      PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
      rm -rf "$dir"; mkdir -p "$dir"
      cat > "$dir/pushbox.toml" <<EOF
[server]
host = "127.0.0.1"
port = $PORT
[spool]
durability = "$mode"
[[apps]]
id = "app-id"
key = "app-key"
secret = "app-secret"
EOF
      PUSHBOX_STATE_DIR=$dir/state PUSHBOX_LOG=warn taskset -c 1 "$BIN" serve --config "$dir/pushbox.toml" 2> "$dir/stderr.log" &
      pid=$!
      for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/up" >/dev/null && break; sleep 0.05; done
      kill -0 $pid 2>/dev/null || { echo "pushbox did not start:" >&2; cat "$dir/stderr.log" >&2; exit 1; }
      sync; sleep 0.5
      load=$(cut -d' ' -f1 /proc/loadavg)
      seg0=$(seg_bytes "$dir/state/events"); wb0=$(wbytes $pid); sec0=$(sectors)
      if [ -n "$PERF" ]; then
        perf stat -x, -o "$dir/perf.csv" -e syscalls:sys_enter_fdatasync,syscalls:sys_enter_pwrite64 \
          -p $pid -- sleep $((DURATION + 1)) 2>/dev/null &
        perf_pid=$!
      fi
      taskset -c 0 "$PBLOAD" api --api "http://127.0.0.1:$PORT" --app-id app-id --key app-key \
        --secret app-secret --conc "$CONC" --duration "$DURATION" --payload "$payload" \
        --server-pid $pid > "$dir/pbload.txt" 2> "$dir/pbload.err"
      [ -n "$PERF" ] && wait $perf_pid || true
      wb1=$(wbytes $pid)
      # memory durability: what the kernel writes back later is part of the cost too; let it land.
      sync; sleep 1; sync
      sec1=$(sectors); wb2=$(wbytes $pid)
      seg1=$(seg_bytes "$dir/state/events")
      kill -TERM $pid; wait $pid || true
      python3 - "$dir" "$mode" "$payload" "$run" "$wb0" "$wb1" "$wb2" "$seg0" "$seg1" "$sec0" "$sec1" "$DURATION" "$load" >> "$OUT" <<'PY'
import json, sys, os
d, mode, payload, run, wb0, wb1, wb2, seg0, seg1, sec0, sec1, dur, load = sys.argv[1:]
pb = json.loads(open(os.path.join(d, "pbload.txt")).read().strip().splitlines()[-1])
ok = pb["status"].get("200", 0)
perf = {}
p = os.path.join(d, "perf.csv")
if os.path.exists(p):
    for line in open(p):
        f = line.strip().split(",")
        if len(f) > 2 and f[0].isdigit():
            perf[f[2].split(":")[-1]] = int(f[0])
fs = perf.get("sys_enter_fdatasync")
r = {
    "mode": mode, "payload": int(payload), "run": int(run), "accepted": ok,
    "events_per_s": pb["ok_per_s"], "p50_ms": pb["latency"]["p50_us"] / 1000,
    "p99_ms": pb["latency"]["p99_us"] / 1000, "server_cpu_s": pb["server"]["cpu_s"],
    "write_bytes": int(wb1) - int(wb0), "write_bytes_after_sync": int(wb2) - int(wb0),
    "log_bytes": int(seg1) - int(seg0), "device_bytes": (int(sec1) - int(sec0)) * 512,
    "fdatasyncs": fs, "pwrites": perf.get("sys_enter_pwrite64"), "loadavg_before": float(load),
}
r["write_bytes_per_event"] = r["write_bytes_after_sync"] / ok if ok else None
r["log_bytes_per_event"] = r["log_bytes"] / ok if ok else None
r["device_bytes_per_event"] = r["device_bytes"] / ok if ok else None
r["fdatasyncs_per_s"] = fs / float(dur) if fs is not None else None
r["events_per_fdatasync"] = ok / fs if fs else None
print(json.dumps(r))
PY
      tail -1 "$OUT" >&2
    done
  done
done

python3 - "$OUT" <<'PY'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
groups = {}
for r in rows:
    groups.setdefault((r["payload"], r["mode"]), []).append(r)
def med(rs, k, fmt="{:.0f}"):
    v = [r[k] for r in rs if r.get(k) is not None]
    return fmt.format(statistics.median(v)) if v else "–"
print("| payload | durability | runs | events/s | p50 ms | p99 ms | server CPU s | disk write_bytes/event | log bytes/event | device bytes/event | fdatasync/s | events/fdatasync |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for (payload, mode), rs in sorted(groups.items()):
    print(f"| {payload} B | {mode} | {len(rs)} | {med(rs,'events_per_s')} | {med(rs,'p50_ms','{:.2f}')} | {med(rs,'p99_ms','{:.2f}')} | "
          f"{med(rs,'server_cpu_s','{:.2f}')} | {med(rs,'write_bytes_per_event')} | {med(rs,'log_bytes_per_event')} | "
          f"{med(rs,'device_bytes_per_event')} | {med(rs,'fdatasyncs_per_s')} | {med(rs,'events_per_fdatasync','{:.1f}')} |")
PY

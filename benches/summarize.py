#!/usr/bin/env python3
"""Summarise benches/run.sh JSON lines into one Markdown table (medians, back-to-back ratios).

usage: benches/summarize.py target/bench-results/STAMP.jsonl [more.jsonl ...]
"""
import json
import statistics
import sys
from collections import defaultdict

rows = []
for path in sys.argv[1:]:
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))

meta = [r for r in rows if r.get("cmd") == "meta"]
# by[scenario][server][run] = json
by = defaultdict(lambda: defaultdict(dict))
slices = defaultdict(lambda: defaultdict(list))  # churn slices: several per (server, run)
loads = []
steals = defaultdict(list)  # server -> steal % of each of its runs
for r in rows:
    b = r.get("bench", {})
    if b.get("scenario") in (None, "meta"):
        continue
    by[b["scenario"]][b["server"]][b["run"]] = r
    slices[b["scenario"]][b["server"]].append(r)
    if "loadavg1" in b:
        loads.append(b["loadavg1"])
    if "steal_pct" in b:
        steals[b["server"]].append(b["steal_pct"])


def g(d, *path):
    for p in path:
        if d is None:
            return None
        d = d.get(p)
    return d


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, unit=""):
    if x is None:
        return "—"
    if isinstance(x, (int, float)) and abs(x) >= 10000:
        return f"{x/1000:.1f}k{unit}"
    if isinstance(x, float):
        return f"{x:.2f}{unit}"
    return f"{x}{unit}"


out = []
out.append("| scenario | metric | pushbox | reference | ratio | budget | result | runs |")
out.append("|---|---|---|---|---|---|---|---|")
notes = []


def row(scen, metric, getter, budget_txt, check, ratio_kind="pb/ref", better=None):
    srv = by.get(scen)
    if not srv:
        return
    ref = [k for k in srv if k != "pushbox"]
    ref = ref[0] if ref else None
    pb_runs = srv.get("pushbox", {})
    ref_runs = srv.get(ref, {}) if ref else {}
    pbv = {k: getter(v) for k, v in pb_runs.items()}
    rfv = {k: getter(v) for k, v in ref_runs.items()}
    ratios = [pbv[k] / rfv[k] for k in pbv if k in rfv and pbv[k] is not None and rfv[k] not in (None, 0)]
    pbm, rfm, rm = med(pbv.values()), med(rfv.values()), med(ratios)
    ok = check(pbm, rm) if check else None
    res = "—" if ok is None else ("PASS" if ok else "FAIL")
    rtxt = "—" if rm is None else f"{rm:.2f}×"
    if len(ratios) > 1:
        rtxt += f" ({min(ratios):.2f}–{max(ratios):.2f})"
    out.append(f"| {scen} | {metric} | {fmt(pbm)} | {fmt(rfm)} ({ref}) | {rtxt} | {budget_txt} | {res} | {len(pbv)} |")


def ok_all(scen, srv="pushbox"):
    return by.get(scen, {}).get(srv, {})


for scen in sorted(by, key=lambda s: ["idle", "fanout", "burst", "api", "churn"].index(s.split("-")[0]) if s.split("-")[0] in ["idle", "fanout", "burst", "api", "churn"] else 9):
    kind = scen.split("-")[0]
    if kind == "idle":
        row(scen, "RSS KiB / idle subscribed conn", lambda r: g(r, "server", "rss_per_conn_kb"),
            "≤ 3 KiB", lambda pb, r: pb is not None and pb <= 3.0)
        for srv, runs in by[scen].items():
            for k, r in runs.items():
                if r.get("connected") != r.get("conns") or r.get("dropped"):
                    notes.append(f"{scen} {srv} run {k}: connected {r.get('connected')}/{r.get('conns')}, dropped {r.get('dropped')}, errors {r.get('errors')}")
    elif kind in ("fanout", "burst"):
        row(scen, "deliveries / server CPU-s", lambda r: g(r, "server", "deliveries_per_cpu_s"),
            "≥ 0.9×", lambda pb, r: r is not None and r >= 0.9)
        row(scen, "loss %", lambda r: r.get("loss_pct"), "0" if kind == "fanout" else "(info)",
            (lambda pb, r: pb is not None and pb == 0) if kind == "fanout" else None)
        row(scen, "p99 publish→deliver ms", lambda r: (g(r, "latency", "p99_us") or 0) / 1000 if g(r, "latency", "p99_us") is not None else None,
            "≤ 1.1×" if kind == "fanout" else "(info)", (lambda pb, r: r is not None and r <= 1.1) if kind == "fanout" else None)
        row(scen, "server CPU s", lambda r: g(r, "server", "cpu_s"), "(info)", None)
        for srv, runs in by[scen].items():
            for k, r in runs.items():
                cu = r.get("client_util")
                if cu is not None and cu > 0.8:
                    notes.append(f"{scen} {srv} run {k}: pbload client_util {cu} (> 0.8: the client may be the limit)")
                if r.get("subs_dropped") or r.get("subs_failed") or r.get("publish_backlog_skipped"):
                    notes.append(f"{scen} {srv} run {k}: subs_dropped {r.get('subs_dropped')}, subs_failed {r.get('subs_failed')}, publish_backlog_skipped {r.get('publish_backlog_skipped')}, status {r.get('publish_status')}")
    elif kind == "api":
        row(scen, "2xx / server CPU-s", lambda r: g(r, "server", "ok_per_cpu_s"), "≥ 0.5×", lambda pb, r: r is not None and r >= 0.5)
        row(scen, "2xx / s", lambda r: r.get("ok_per_s"), "(info)", None)
        for srv, runs in by[scen].items():
            for k, r in runs.items():
                if r.get("status") and set(r["status"]) != {"200"}:
                    notes.append(f"{scen} {srv} run {k}: status {r['status']}")
    elif scen.startswith("churn") and not scen.endswith(("-warmup", "-slice")):
        row(scen, "cycles", lambda r: r.get("cycles"), "≥ 100k", None)
        row(scen, "RSS growth KiB (after warm-up)", lambda r: r.get("rss_growth_kb"), "≤ 512 KiB",
            lambda pb, r: pb is not None and pb <= 512)
        for srv, sl in slices.get(scen + "-slice", {}).items():
            cu = sum(r.get("close_unanswered") or 0 for r in sl)
            fl = sum(r.get("failed") or 0 for r in sl)
            if cu or fl:
                cyc = sum(r.get("cycles") or 0 for r in sl)
                notes.append(f"{scen} {srv}: {cu} of {cyc} WebSocket closes unanswered, {fl} cycles failed")

print("\n".join(out))
print()
if loads:
    print(f"load average (1 min) at the start of each pbload run: min {min(loads):.2f}, median {statistics.median(loads):.2f}, max {max(loads):.2f}")
for srv, st in sorted(steals.items()):
    heavy = sum(1 for x in st if x > 10)
    print(f"hypervisor steal during {srv}'s runs (% of all CPU ticks): median {statistics.median(st):.1f}, max {max(st):.1f}"
          + (f"; {heavy} of {len(st)} runs above 10 % (ratios from those are noise-dominated)" if heavy else ""))
for m in meta:
    print(f"pushbox {m.get('pushbox_commit')} ({m.get('pushbox_bin')}, durability {m.get('durability', 'memory')}, coalesce_ms {m.get('coalesce_ms', 0)}, resume {m.get('resume', True)}); RUNS={m.get('runs')} quick={m.get('quick')}; stamp {m.get('stamp')}")
print("ratio = median of per-run pushbox/reference ratios (range in brackets); pushbox and reference ran back to back in each run.")
for n in notes:
    print(f"- note: {n}")

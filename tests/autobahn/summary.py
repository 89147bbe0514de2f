"""Judges a kosoku report (index.json) for pushbox's echo endpoint and prints the summary.

A case passes when both its behaviour and its closing behaviour are OK, NON-STRICT or
INFORMATIONAL. Section 9 runs with pushbox's real size limit (64 KiB for a default app), so its
cases whose message is larger are expected to end with pushbox closing 1009 (message too big)
before buffering the message; they pass as LIMIT-1009 only if that is exactly what happened.
"""
import collections
import fnmatch
import json
import sys

ALLOWED = {"OK", "NON-STRICT", "INFORMATIONAL"}
# Messages over 64 KiB: 256 KiB–16 MiB single frames (9.1.2–9.1.6, 9.2.2–9.2.6), 4 MiB
# fragmented messages (9.3, 9.4), 1 MiB messages sent in chops (9.5, 9.6).
OVER_LIMIT = ["9.1.[2-6]", "9.2.[2-6]", "9.3.*", "9.4.*", "9.5.*", "9.6.*"]


def case_key(case_id):
    return [int(p) for p in case_id.split(".")]


def main(index_path):
    with open(index_path) as f:
        index = json.load(f)
    counts = collections.Counter()
    failed = []
    for agent_cases in index.values():
        for case_id, r in sorted(agent_cases.items(), key=lambda kv: case_key(kv[0])):
            over = any(fnmatch.fnmatch(case_id, g) for g in OVER_LIMIT)
            if over:
                if r.get("remoteCloseCode") == 1009:
                    counts["LIMIT-1009"] += 1
                else:
                    failed.append(f"{case_id}: expected a 1009 close, got {r}")
                continue
            behaviours = (r["behavior"], r["behaviorClose"])
            if all(b in ALLOWED for b in behaviours):
                # The weaker of the two is what the case counts as.
                for status in ("INFORMATIONAL", "NON-STRICT", "OK"):
                    if status in behaviours:
                        counts[status] += 1
                        break
            else:
                failed.append(f"{case_id}: behavior={behaviours[0]} close={behaviours[1]}")
                counts["FAILED"] += 1
    total = sum(counts.values()) + sum(1 for f in failed if "expected a 1009" in f)
    print(f"autobahn: {total} cases: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for f in failed:
        print("  FAILED", f)
    return 1 if failed or total == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

#!/usr/bin/env bash
# Reconnect storm (issue 20, "Performance"): 1,000 pusher-js clients resuming at once with 100
# missed events each. Measures the time until every client is live again and pushbox's peak RSS,
# with resume on and off. Needs root (a network namespace, like tests/resume).
#
#   benches/resume-storm/run.sh                      # release binary (built if missing), N=1000, E=100
#   PUSHBOX_BIN=/path/pushbox benches/resume-storm/run.sh
#   STORM_N=200 STORM_EVENTS=50 STORM_MODES=on benches/resume-storm/run.sh
#
# Prints one JSON line per mode and a summary; bounded: 90 s to connect, 180 s for the storm.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
[ "$(id -u)" = 0 ] || { echo "resume-storm needs root (ip netns)" >&2; exit 1; }

# shellcheck source=tests/resume/netns.sh
. "$repo/tests/resume/netns.sh"
trap 'resume_netns_down' EXIT
trap 'exit 130' INT TERM
rc=0
resume_netns_up || rc=$?
[ "$rc" = 0 ] || exit 1

if [ -z "${PUSHBOX_BIN:-}" ]; then
  (cd "$repo" && cargo build --release --quiet --bin pushbox)
  export PUSHBOX_BIN="$repo/target/release/pushbox"
fi
[ -d "$repo/tests/clients/node_modules/pusher-js" ] || (cd "$repo/tests/clients" && npm ci --no-audit --no-fund --silent)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
export RUST_LOG=${RUST_LOG:-warn}
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(uname -r); binary: $PUSHBOX_BIN" >&2
node "$here/storm.mjs"

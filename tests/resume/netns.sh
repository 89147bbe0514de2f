# shellcheck shell=bash
# Sourced by tests/resume/run.sh and benches/resume-storm/run.sh: a network namespace for the
# clients and a veth pair to it, so a test can cut the link the way Wi-Fi drops (the kernel stops
# carrying packets; nothing in between ACKs on the client's behalf, which a userland proxy would).
#
#   root namespace: pushbox on $RESUME_SERVER_IP (the host end, $RESUME_HOST_IF)
#   $RESUME_NETNS:  the clients on $RESUME_CLIENT_IP (the namespace end, $RESUME_NS_IF)
#   cut:  ip netns exec $RESUME_NETNS ip link set $RESUME_NS_IF down   (heal: up)
#
# Names carry the shell's pid so two runs (or another helper's namespace `pj`) never clash, and
# the /24 is the first of 10.80.0-9.0 that no interface of this machine already uses.
# resume_netns_up returns 3 (with a message) when the kernel refuses `ip netns add` (no root, or
# a container without CAP_SYS_ADMIN): the caller skips, it does not fail.

resume_netns_up() {
  local tag=$$
  RESUME_NETNS=${RESUME_NETNS:-pj-rt$tag}
  RESUME_HOST_IF=rth$tag
  RESUME_NS_IF=rtc$tag
  local used i net=""
  used=$(ip -4 -o addr show 2>/dev/null | awk '{print $4}')
  for i in 0 1 2 3 4 5 6 7 8 9; do
    if ! grep -q "^10\.80\.$i\." <<<"$used"; then net=10.80.$i; break; fi
  done
  if [ -z "$net" ]; then
    echo "netns: 10.80.0.0/24 … 10.80.9.0/24 are all in use on this machine" >&2
    return 1
  fi
  RESUME_SERVER_IP=$net.1
  RESUME_CLIENT_IP=$net.2
  if ! ip netns add "$RESUME_NETNS" 2>/tmp/resume-netns-err.$tag; then
    echo "SKIPPED: 'ip netns add' was refused ($(cat /tmp/resume-netns-err.$tag)); these tests need root with CAP_SYS_ADMIN and CAP_NET_ADMIN" >&2
    rm -f /tmp/resume-netns-err.$tag
    return 3
  fi
  rm -f /tmp/resume-netns-err.$tag
  RESUME_NETNS_CREATED=1
  ip link add "$RESUME_HOST_IF" type veth peer name "$RESUME_NS_IF" || return 1
  ip link set "$RESUME_NS_IF" netns "$RESUME_NETNS" || return 1
  ip addr add "$RESUME_SERVER_IP/24" dev "$RESUME_HOST_IF" || return 1
  ip link set "$RESUME_HOST_IF" up || return 1
  ip netns exec "$RESUME_NETNS" ip addr add "$RESUME_CLIENT_IP/24" dev "$RESUME_NS_IF" || return 1
  ip netns exec "$RESUME_NETNS" ip link set "$RESUME_NS_IF" up || return 1
  # The auth endpoint and the browser's page server live on the namespace's own loopback.
  ip netns exec "$RESUME_NETNS" ip link set lo up || return 1
  export RESUME_NETNS RESUME_HOST_IF RESUME_NS_IF RESUME_SERVER_IP RESUME_CLIENT_IP
  # The first packets after `ip link set up` can be lost to duplicate-address and carrier
  # settling; wait (bounded) until the client end reaches the host end.
  local said
  for _ in $(seq 1 50); do
    # No ping on this machine: a TCP connect to a closed port that is refused (RST) proves the
    # path works both ways.
    said=$(ip netns exec "$RESUME_NETNS" timeout 1 bash -c "exec 3<>/dev/tcp/$RESUME_SERVER_IP/9" 2>&1 || true)
    if [[ $said == *refused* ]]; then
      echo "netns: $RESUME_NETNS ($RESUME_CLIENT_IP, $RESUME_NS_IF) <-> root ($RESUME_SERVER_IP, $RESUME_HOST_IF)" >&2
      return 0
    fi
    sleep 0.1
  done
  echo "netns: $RESUME_CLIENT_IP cannot reach $RESUME_SERVER_IP after 5 s" >&2
  return 1
}

resume_netns_down() {
  if [ "${RESUME_NETNS_CREATED:-0}" = 1 ]; then
    # Deleting the namespace destroys its veth end, and with it the host end.
    ip netns del "$RESUME_NETNS" 2>/dev/null || true
    ip link del "$RESUME_HOST_IF" 2>/dev/null || true
    RESUME_NETNS_CREATED=0
  fi
}

#!/usr/bin/env bash
# Check the systemd units in systemd/ without systemd running as PID 1.
#
#   scripts/check-systemd.sh
#
# 1. `systemd-analyze verify` on pushbox.socket + pushbox.service. verify exits 0 on misspelled
#    keys and unknown syscall groups (it only prints "Unknown key …, ignoring"), so ANY output
#    fails the check. A deliberately misspelled copy is verified first to prove the gate bites.
#    ExecStart= must name an existing executable, so the units are checked as temp copies with
#    /usr/bin/pushbox rewritten to a stub; nothing is installed on the host.
# 2. systemd-sysusers and systemd-tmpfiles apply the snippets to an empty temp root.
# 3. `systemd-analyze security --offline=true`: prints the exposure score and fails if it is
#    above MAX_EXPOSURE (default 2.0, on the 0–10 scale systemd prints). Note that
#    `--threshold=` uses a 0–100 scale (exposure × 10): 2.0 is --threshold=20.
#
# Installs the `systemd` package with apt-get if systemd-analyze is missing (NO_INSTALL=1: don't).
set -euo pipefail

cd "$(dirname "$0")/.."
UNITS=systemd
MAX_EXPOSURE=${MAX_EXPOSURE:-2.0}

die() { printf 'check-systemd: FAIL: %s\n' "$*" >&2; exit 1; }
ok() { printf 'check-systemd: ok: %s\n' "$*"; }

if ! command -v systemd-analyze >/dev/null || ! command -v systemd-sysusers >/dev/null; then
    [ "${NO_INSTALL:-0}" = 1 ] && die "systemd-analyze not found (NO_INSTALL=1)"
    SUDO=()
    [ "$(id -u)" -eq 0 ] || SUDO=(sudo)
    echo "check-systemd: installing systemd tooling (apt-get install systemd)" >&2
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi
echo "check-systemd: $(systemd-analyze --version | head -n1)"

tmp=$(mktemp -d /tmp/pushbox-check-systemd.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# Temp copies, ExecStart pointed at a stub (verify requires the binary to exist and be executable).
printf '#!/bin/sh\nexit 0\n' >"$tmp/pushbox-stub"
chmod 755 "$tmp/pushbox-stub"
cp "$UNITS/pushbox.socket" "$tmp/"
sed "s#/usr/bin/pushbox\\b#$tmp/pushbox-stub#g" "$UNITS/pushbox.service" >"$tmp/pushbox.service"
grep -q "^ExecStart=$tmp/pushbox-stub serve " "$tmp/pushbox.service" ||
    die "pushbox.service has no 'ExecStart=/usr/bin/pushbox serve …' line"

verify() { (cd "$tmp" && systemd-analyze verify --man=no "$@" 2>&1); }

# --- 0. the gate must bite: a misspelled key has to produce output ----------------------------
mkdir "$tmp/canary"
sed 's/^ProtectSystem=/ProtectSytem=/' "$tmp/pushbox.service" >"$tmp/canary/pushbox.service"
cp "$tmp/pushbox.socket" "$tmp/canary/"
canary=$(cd "$tmp/canary" && systemd-analyze verify --man=no ./pushbox.socket ./pushbox.service 2>&1 || true)
grep -q "Unknown key" <<<"$canary" ||
    die "systemd-analyze verify did not report a misspelled key; this check cannot be trusted here"

# --- 1. verify --------------------------------------------------------------------------------
rc=0
out=$(verify ./pushbox.socket ./pushbox.service) || rc=$?
if [ "$rc" -ne 0 ] || [ -n "$out" ]; then
    printf '%s\n' "$out" | sed "s#$tmp/##g" >&2
    die "systemd-analyze verify (rc $rc): every line above is a problem (unknown keys are only warnings to systemd)"
fi
ok "systemd-analyze verify pushbox.socket pushbox.service: no output"

# --- 2. sysusers / tmpfiles into an empty root ------------------------------------------------
root="$tmp/root"
mkdir -p "$root/etc"
out=$(systemd-sysusers --root="$root" - <"$UNITS/pushbox.sysusers.conf" 2>&1) || die "systemd-sysusers: $out"
grep -q '^pushbox:x:[0-9]*:[0-9]*:.*:/var/lib/pushbox:' "$root/etc/passwd" ||
    die "pushbox.sysusers.conf did not create the pushbox user: $out"
out=$(systemd-tmpfiles --root="$root" --create - <"$UNITS/pushbox.tmpfiles.conf" 2>&1) ||
    die "systemd-tmpfiles: $out"
[ -z "$out" ] || die "systemd-tmpfiles printed warnings: $out"
uid=$(awk -F: '$1=="pushbox"{print $3}' "$root/etc/passwd")
[ "$(stat -c '%u %a' "$root/var/lib/pushbox")" = "$uid 750" ] ||
    die "/var/lib/pushbox is not 0750 pushbox: $(stat -c '%u %a' "$root/var/lib/pushbox")"
[ -d "$root/etc/pushbox" ] || die "tmpfiles did not create /etc/pushbox"
ok "sysusers creates user pushbox (uid $uid in an empty root); tmpfiles creates /etc/pushbox and /var/lib/pushbox"

# --- 3. exposure ------------------------------------------------------------------------------
rc=0
sec=$(cd "$tmp" && systemd-analyze security --offline=true ./pushbox.service 2>&1) || rc=$?
score=$(sed -n 's/.*Overall exposure level for pushbox\.service: \([0-9.]*\).*/\1/p' <<<"$sec")
[ "$rc" -eq 0 ] && [ -n "$score" ] || { printf '%s\n' "$sec" >&2; die "systemd-analyze security failed (rc $rc)"; }
grep '✗' <<<"$sec" | sed 's/^/    /' || true
if awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s + 0 > m + 0) }'; then
    die "exposure $score is above $MAX_EXPOSURE"
fi
ok "offline exposure score: $score (limit $MAX_EXPOSURE)"

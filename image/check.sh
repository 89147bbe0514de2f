#!/usr/bin/env bash
# Boot check of the appliance image (slow: ~1 min; not part of every CI run, see image/README.md).
#
#   image/check.sh [IMAGE]          # default image/out/pushbox-arm64.img (build it with image/build.sh)
#
# Boots the flashable image exactly as a board would (UEFI firmware QEMU_EFI.fd -> systemd-boot
# on the ESP -> kernel -> systemd) in qemu-system-aarch64 (TCG, cortex-a72, 2 vCPUs), with the
# disk in snapshot mode (the image file is never modified) and user-mode networking restricted
# to the guest (restrict=on) plus two port forwards on 127.0.0.1: TLS :443 and plain :8080.
#
# On first boot the box generates its app keys and certificate and prints them on the serial
# console (pushbox-firstboot). This script reads them from the console log, trusts exactly that
# certificate (NODE_EXTRA_CA_CERTS), and runs tests/qemu/subscribe_publish.mjs: pusher-js
# subscribes over wss through the forward and receives an event the pusher Node SDK publishes
# over https. Then it checks the image file itself still holds no keys.
#
# REBOOT=1 also checks a second boot: the check boots a writable copy of the image, kills qemu
# (a power cut) after the first client run, boots again and requires the same app and
# certificate to work, with nothing regenerated.
#
# Environment: BOOT_TIMEOUT (s, default 300), SMP (default 2), MEM (MiB, default 1024),
# KEEP=1 (keep the console log and temp dir), EFI_FW (default /usr/share/qemu-efi-aarch64/QEMU_EFI.fd).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
IMG=${1:-$HERE/out/pushbox-arm64.img}
BOOT_TIMEOUT=${BOOT_TIMEOUT:-300}
SMP=${SMP:-2}
MEM=${MEM:-1024}
EFI_FW=${EFI_FW:-/usr/share/qemu-efi-aarch64/QEMU_EFI.fd}
T0=$(date +%s.%N)
elapsed() { python3 -c "import time; print(f'{time.time() - $T0:.1f}')"; }
say() { printf '==> [%6ss] %s\n' "$(elapsed)" "$*" >&2; }
die() { printf 'image/check.sh: FAIL: %s\n' "$*" >&2; exit 1; }

[ -f "$IMG" ] || die "no image at $IMG (build it: sudo image/build.sh)"
# --- host packages (only when missing) -------------------------------------------------------
missing=()
[ -x /usr/bin/qemu-system-aarch64 ] || missing+=(qemu-system-arm)
[ -f "$EFI_FW" ] || missing+=(qemu-efi-aarch64)
command -v debugfs >/dev/null || missing+=(e2fsprogs)
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}; install them (apt-get install ${missing[*]})"
    say "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v node >/dev/null || die "node (>= 20) is needed for the client"
[ -d "$REPO/tests/clients/node_modules/pusher-js" ] || die "run (cd tests/clients && npm ci) first"

TMP=$(mktemp -d /tmp/pushbox-image-check.XXXXXX)
QPID=
cleanup() {
    local rc=$?
    if [ -n "$QPID" ] && kill -0 "$QPID" 2>/dev/null; then
        kill -TERM "$QPID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$QPID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$QPID" 2>/dev/null || true
        wait "$QPID" 2>/dev/null || true
    fi
    local log=$TMP/console.log
    [ -f "$TMP/console2.log" ] && log=$TMP/console2.log
    if [ "$rc" -ne 0 ] && [ -f "$log" ]; then
        echo "---- serial console $(basename "$log") (last 60 lines) ----" >&2
        tr -d '\r' <"$log" | tail -n 60 >&2
        [ -s "$TMP/qemu.out" ] && { echo "---- qemu ----" >&2; tail -n 20 "$TMP/qemu.out" >&2; }
    fi
    if [ "${KEEP:-0}" = 1 ] || [ "$rc" -ne 0 ]; then echo "console log and files kept in $TMP" >&2; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT INT TERM

read -r TLS_PORT PLAIN_PORT < <(python3 -c '
import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')

# --- boot -------------------------------------------------------------------------------------
sum_before=$(sha256sum "$IMG" | cut -d' ' -f1)
DISK=$IMG; SNAP=on
if [ "${REBOOT:-0}" = 1 ]; then
    # A writable copy, so a second boot sees what the first one wrote.
    DISK=$TMP/disk.img; SNAP=off
    cp --sparse=always "$IMG" "$DISK"
fi
boot() {   # boot LOGFILE
    say "booting $(basename "$DISK") (UEFI, TCG cortex-a72 x$SMP, ${MEM} MiB); 127.0.0.1:$TLS_PORT -> :443, 127.0.0.1:$PLAIN_PORT -> :8080"
    qemu-system-aarch64 -M virt -cpu cortex-a72 -smp "$SMP" -m "$MEM" -accel tcg,thread=multi \
        -bios "$EFI_FW" \
        -drive if=none,file="$DISK",format=raw,id=hd0,snapshot=$SNAP -device virtio-blk-pci,drive=hd0,bootindex=0 \
        -netdev "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:$TLS_PORT-:443,hostfwd=tcp:127.0.0.1:$PLAIN_PORT-:8080" \
        -device virtio-net-pci,netdev=n0,romfile= \
        -display none -monitor none -serial "file:$1" -no-reboot \
        </dev/null >"$TMP/qemu.out" 2>&1 &
    QPID=$!
}
stop_qemu() {   # SIGTERM to qemu: for the guest, a power cut
    kill -TERM "$QPID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$QPID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$QPID" 2>/dev/null || true
    wait "$QPID" 2>/dev/null || true
    QPID=
}
client() {   # client TIMEOUT_S
    NODE_EXTRA_CA_CERTS="$TMP/box.crt" PB_HOST=127.0.0.1 PB_TLS_PORT="$TLS_PORT" PB_PLAIN_PORT="$PLAIN_PORT" \
        PB_APP_ID="$APP_ID" PB_APP_KEY="$APP_KEY" PB_APP_SECRET="$APP_SECRET" PB_TIMEOUT_MS=$(( $1 * 1000 )) \
        timeout $(( $1 + 15 )) node --no-deprecation "$REPO/tests/qemu/subscribe_publish.mjs"
}
boot "$TMP/console.log"

# --- first boot output on the serial console ----------------------------------------------------
marker='pushbox-firstboot: Clients must trust'
end_cert='pushbox-firstboot: -----END CERTIFICATE-----'
deadline=$(( $(date +%s) + BOOT_TIMEOUT ))
t_kernel= t_firstboot=
while :; do
    if ! kill -0 "$QPID" 2>/dev/null; then
        wait "$QPID" && st=0 || st=$?
        QPID=
        die "qemu exited (status $st): $(tail -n 5 "$TMP/qemu.out")"
    fi
    if [ -z "$t_kernel" ] && grep -qa 'Booting Linux' "$TMP/console.log" 2>/dev/null; then
        t_kernel=$(elapsed); say "kernel started (firmware + systemd-boot done)"
    fi
    if grep -qa "$end_cert" "$TMP/console.log" 2>/dev/null && grep -qa "$marker" "$TMP/console.log"; then
        t_firstboot=$(elapsed); break
    fi
    grep -qa 'Kernel panic' "$TMP/console.log" 2>/dev/null && die "kernel panic"
    [ "$(date +%s)" -lt "$deadline" ] || die "no first-boot output on the console within ${BOOT_TIMEOUT} s"
    sleep 1
done
say "first boot printed the app and the certificate"

# Lines the first-boot script printed, without the prefix (and without CRs).
tr -d '\r' <"$TMP/console.log" | sed -n 's/^.*pushbox-firstboot: //p' >"$TMP/firstboot.txt"
sed -n '/^-----BEGIN CERTIFICATE-----$/,/^-----END CERTIFICATE-----$/p' "$TMP/firstboot.txt" >"$TMP/box.crt"
val() { sed -n "s/^$1=\"\{0,1\}\([^\"]*\)\"\{0,1\}$/\1/p" "$TMP/firstboot.txt" | head -n1; }
APP_ID=$(val REVERB_APP_ID); APP_KEY=$(val REVERB_APP_KEY); APP_SECRET=$(val REVERB_APP_SECRET); BOX_HOST=$(val REVERB_HOST)
[ -n "$APP_ID" ] && [ -n "$APP_KEY" ] && [ -n "$APP_SECRET" ] || die "could not read REVERB_APP_ID/KEY/SECRET from the console"
openssl x509 -in "$TMP/box.crt" -noout >/dev/null 2>&1 || die "the certificate on the console does not parse"
echo "first boot on the console:"
sed -e '/^-----BEGIN CERTIFICATE-----$/,/^-----END CERTIFICATE-----$/d' -e '/^REVERB_APP_SECRET=/d' "$TMP/firstboot.txt" | sed 's/^/  | /'
echo "  | REVERB_APP_SECRET=<${#APP_SECRET} characters>"
openssl x509 -in "$TMP/box.crt" -noout -subject -ext subjectAltName -fingerprint -sha256 2>/dev/null | sed 's/^/  cert: /'
openssl x509 -in "$TMP/box.crt" -noout -ext subjectAltName | grep -q "DNS:$BOX_HOST" ||
    die "the certificate does not name the box's host name $BOX_HOST"

# --- the client through the port forward --------------------------------------------------------
left=$(( deadline - $(date +%s) )); [ "$left" -gt 30 ] || left=30
client "$left" || die "the client could not subscribe and receive an event from the booted box"
t_served=$(elapsed)

stop_qemu

# --- optional: power cut, second boot keeps the same app and certificate -------------------------
if [ "${REBOOT:-0}" = 1 ]; then
    say "power cut (qemu killed); second boot from the same disk"
    t_second=$(date +%s)
    boot "$TMP/console2.log"
    client "$BOOT_TIMEOUT" || die "second boot: the first boot's app and certificate no longer work"
    stop_qemu
    if grep -qa 'pushbox-firstboot: generated' "$TMP/console2.log"; then
        die "second boot generated new keys or a new certificate"
    fi
    say "second boot served the same app and certificate after $(( $(date +%s) - t_second )) s; nothing regenerated"
fi

# --- prove the image itself stayed clean ------------------------------------------------------------
sum_after=$(sha256sum "$IMG" | cut -d' ' -f1)
[ "$sum_before" = "$sum_after" ] || die "the image file changed during the check (snapshot mode should prevent that)"
root_off=$(( $(sfdisk -J "$IMG" | python3 -c 'import json,sys; print(json.load(sys.stdin)["partitiontable"]["partitions"][1]["start"])') * 512 ))
etc=$(debugfs -R 'ls /etc/pushbox' "$IMG?offset=$root_off" 2>/dev/null | tr -s ' \n' '\n' | grep -vE '^([0-9]+|\([0-9]+\)|\.|\.\.|)$' | tr '\n' ' ')
grep -q 'pushbox.toml' <<<"$etc" || die "cannot list /etc/pushbox in the image: $etc"
if grep -qE 'pushbox\.(key|crt)' <<<"$etc"; then die "the image holds key material: /etc/pushbox = $etc"; fi
debugfs -R 'cat /etc/pushbox/pushbox.toml' "$IMG?offset=$root_off" 2>/dev/null | grep -q '^\[\[apps\]\]' &&
    die "the image's pushbox.toml holds an app"
say "image file unchanged; its /etc/pushbox holds only: ${etc}"

boot_line=$(tr -d '\r' <"$TMP/console.log" | grep -a -m1 -o 'Startup finished.*' || true)
echo "image/check.sh: PASS"
echo "  kernel start ${t_kernel:-?} s, first-boot keys on console ${t_firstboot} s, event received ${t_served} s (from qemu start)"
if [ -n "$boot_line" ]; then echo "  guest: $boot_line"; fi

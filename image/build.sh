#!/usr/bin/env bash
# Build the flashable pushbox appliance image for 64-bit ARM boards (UEFI: U-Boot's bootefi,
# EDK2/Tianocore, or qemu's QEMU_EFI.fd), without docker, loop devices or mounts of the image.
#
#   image/build.sh [--base-only] [--binary PATH]
#
# Output: image/out/pushbox-arm64.img (raw GPT disk: ESP with systemd-boot + kernel + initrd,
# ext4 root), plus pushbox-arm64.img.zst and pushbox-arm64.img.bmap when the tools are present.
#
# Stages (see image/README.md):
#   1. base rootfs: debootstrap Debian bookworm arm64 (minbase + systemd + kernel + systemd-boot)
#      from the host's Debian mirror. Cached in $WORK/base-<hash>/ (hash of suite, mirror and the
#      package list); later builds skip it.
#   2. pushbox: the static aarch64 binary (scripts/build-static.sh unless --binary/PUSHBOX_BIN),
#      the units from systemd/, image/rootfs/ (config, first-boot unit and script, network),
#      units enabled and the pushbox user created offline. No keys and no certificate: the
#      first boot makes them (pushbox-firstboot.service).
#   3. pack: sfdisk + mkfs.fat/mtools + mkfs.ext4 -d, at offsets inside the image file.
#
# Environment: WORK (scratch, default /var/tmp/pushbox-image), OUT (default image/out),
# MIRROR (default: the host's apt mirror), SUITE (default bookworm), IMAGE_SIZE_MIB (default 1024),
# PUSHBOX_BIN (a prebuilt static aarch64 binary), CARGO_TARGET_DIR (for the binary build,
# default /tmp/pushbox-static-target). Needs root (debootstrap, chroot, binfmt_misc).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
WORK=${WORK:-/var/tmp/pushbox-image}
OUT=${OUT:-$HERE/out}
SUITE=${SUITE:-bookworm}
IMAGE_SIZE_MIB=${IMAGE_SIZE_MIB:-1024}
ESP_MIB=128
BASE_ONLY=0
PRINT_BASE=0
BIN=${PUSHBOX_BIN:-}

while [ $# -gt 0 ]; do
    case "$1" in
        --base-only) BASE_ONLY=1 ;;
        --print-base) PRINT_BASE=1 ;;
        --binary) BIN=$2; shift ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "image/build.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

T0=$(date +%s)
say() { printf '==> [%4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*" >&2; }
die() { printf 'image/build.sh: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, chroot and binfmt_misc need it)"

# --- host packages (only when missing) ---------------------------------------------------------
declare -A NEED=(
    [/usr/sbin/debootstrap]=debootstrap
    [/usr/sbin/sfdisk]=fdisk
    [/usr/sbin/mkfs.fat]=dosfstools
    [/usr/bin/mcopy]=mtools
    [/usr/sbin/mkfs.ext4]=e2fsprogs
    [/usr/bin/qemu-aarch64-static]=qemu-user-static
    [/usr/bin/zstd]=zstd
    [/usr/bin/systemd-analyze]=systemd
    [/usr/share/keyrings/debian-archive-keyring.gpg]=debian-archive-keyring
)
missing=()
for f in "${!NEED[@]}"; do [ -e "$f" ] || missing+=("${NEED[$f]}"); done
if [ ${#missing[@]} -gt 0 ]; then
    say "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# bmaptool is optional (only for the .bmap file)
if ! command -v bmaptool >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends bmap-tools >/dev/null 2>&1 || true
fi

# --- the Debian mirror this machine's apt uses -------------------------------------------------
host_mirror() {
    local f u
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        # one-line format "deb URL suite ..." or deb822 "URIs: URL"
        u=$(sed -nE 's/^[[:space:]]*deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([a-z]+:\/\/[^[:space:]]+\/debian\/?)[[:space:]].*/\2/p;
                     s/^[[:space:]]*URIs:[[:space:]]*([a-z]+:\/\/[^[:space:]]+\/debian\/?)[[:space:]]*$/\1/p' "$f" | head -n1)
        [ -n "$u" ] && { echo "${u%/}"; return; }
    done
    echo "http://deb.debian.org/debian"
}
MIRROR=${MIRROR:-$(host_mirror)}

# --- binfmt_misc: the debootstrap second stage runs arm64 binaries in a chroot -----------------
binfmt() {
    [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
        [ -f /usr/lib/binfmt.d/qemu-aarch64.conf ] || die "qemu-user-static has no /usr/lib/binfmt.d/qemu-aarch64.conf"
        cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register
    fi
    grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 || die "binfmt qemu-aarch64 is not enabled"
}

# --- stage 1: base rootfs (cached) -------------------------------------------------------------
# The initrd must hold the root device's drivers. MODULES=most (initramfs-tools' default) took
# well over 20 min under qemu-user here (several emulated processes per module), so the
# default is an explicit list: virtio (qemu, clouds), the SD/eMMC, NVMe, USB and SATA host
# drivers of common boards, ext4. INITRD_MODULES=most for everything (slow, but covers any board).
INITRD_MODULES=${INITRD_MODULES:-list}
# Loaded at every boot (cheap): virtio for qemu, ext4 for the root.
FORCED_MODULES="virtio_pci virtio_mmio virtio_blk virtio_scsi virtio_net ext4 crc32c_generic"
# Only put into the initrd; udev loads the ones whose hardware is present.
BOARD_MODULES="mmc_block sdhci sdhci-pltfm sdhci-of-arasan sdhci-of-dwcmshc sdhci-of-esdhc sdhci-esdhc-imx sdhci-iproc
sdhci-tegra sdhci-msm sdhci-xenon-driver dw_mmc dw_mmc-pltfm dw_mmc-rockchip dw_mmc-exynos dw_mmc-k3 dw_mmc-hi3798cv200
meson-gx-mmc meson-mx-sdio sunxi-mmc bcm2835 mtk-sd renesas_sdhi_internal_dmac
nvme usb-storage uas xhci-plat-hcd xhci-pci ehci-platform ohci-platform dwc3 dwc3-of-simple dwc2
ahci ahci_platform sd_mod phy-rockchip-inno-usb2 phy-rockchip-naneng-combphy"
PACKAGES=systemd,systemd-sysv,udev,dbus,iproute2,kmod,initramfs-tools,zstd,systemd-resolved,systemd-timesyncd,ca-certificates,netbase
# procps: /bin/kill for ExecReload= in pushbox.service (and ps/top for the operator).
# e2fsprogs: fsck of the root file system at boot (systemd-fsck-root; root is mounted ro first).
LATE_PACKAGES="linux-image-arm64 systemd-boot-efi procps e2fsprogs"
BASE_KEY=$(printf '%s\n' "v1" "$SUITE" "$MIRROR" "$PACKAGES" "$LATE_PACKAGES" "$INITRD_MODULES" "$FORCED_MODULES" "$BOARD_MODULES" | sha256sum | cut -c1-12)
BASE=$WORK/base-$BASE_KEY
# the debootstrap part alone (resumable work dir)
DEBOOTSTRAP_KEY=$(printf '%s\n' "v1" "$SUITE" "$MIRROR" "$PACKAGES" | sha256sum | cut -c1-12)
[ "$PRINT_BASE" = 1 ] && { echo "$BASE"; exit 0; }
mkdir -p "$WORK"

MOUNTED=()
cleanup() {
    local m
    for m in "${MOUNTED[@]}"; do umount -l "$m" 2>/dev/null || true; done
}
trap cleanup EXIT

build_base() {
    local tmp=$WORK/debootstrap-$DEBOOTSTRAP_KEY
    binfmt
    # Resume after a failure in the kernel step: the debootstrap stages take minutes.
    local regen=
    if [ -f "$tmp/.pushbox-debootstrap-done" ]; then
        say "debootstrap already done in $tmp (resuming)"
        # the kernel may already be installed: make sure the initrd has this configuration
        regen=" && update-initramfs -u -k all"
    else
    rm -rf "$tmp"
    say "debootstrap $SUITE arm64 from $MIRROR (first stage)"
    debootstrap --arch=arm64 --foreign --variant=minbase --include="$PACKAGES" \
        "$SUITE" "$tmp" "$MIRROR" >"$WORK/debootstrap1.log" 2>&1 ||
        { tail -20 "$WORK/debootstrap1.log" >&2; die "debootstrap first stage failed (log: $WORK/debootstrap1.log)"; }
    # Keep docs, man pages and translations out of the image (also for later apt-get installs).
    mkdir -p "$tmp/etc/dpkg/dpkg.cfg.d"
    cat >"$tmp/etc/dpkg/dpkg.cfg.d/01-pushbox-nodoc" <<'EOF'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
path-exclude=/usr/share/lintian/*
EOF
    say "debootstrap second stage (arm64 under qemu-user; a few minutes)"
    chroot "$tmp" /debootstrap/debootstrap --second-stage >"$WORK/debootstrap2.log" 2>&1 ||
        { tail -20 "$WORK/debootstrap2.log" >&2; die "debootstrap second stage failed (log: $WORK/debootstrap2.log)"; }
    touch "$tmp/.pushbox-debootstrap-done"
    fi

    say "kernel and systemd-boot: apt-get install $LATE_PACKAGES"
    { echo "# pushbox image: loaded by the initrd at every boot (image/build.sh)"
      printf '%s\n' $FORCED_MODULES; } >"$tmp/etc/initramfs-tools/modules"
    { printf '#!/bin/sh\n# pushbox image: storage drivers of common boards, in the initrd but loaded only\n'
      printf '# when udev finds their hardware (the modules file would load them all, slowly).\n'
      printf 'case "$1" in prereqs) exit 0 ;; esac\n. /usr/share/initramfs-tools/hook-functions\n'
      printf 'for m in %s; do manual_add_modules "$m"; done\n' "$(echo $BOARD_MODULES)"
    } >"$tmp/etc/initramfs-tools/hooks/pushbox-board-modules"
    chmod 0755 "$tmp/etc/initramfs-tools/hooks/pushbox-board-modules"
    sed -i -e "s/^MODULES=.*/MODULES=$INITRD_MODULES/" -e 's/^COMPRESS=.*/COMPRESS=zstd/' "$tmp/etc/initramfs-tools/initramfs.conf"
    rm -rf "$tmp"/var/tmp/mkinitramfs* "$tmp"/boot/initrd.img-*.new
    printf 'deb %s %s main\ndeb %s %s-updates main\n' "$MIRROR" "$SUITE" "$MIRROR" "$SUITE" >"$tmp/etc/apt/sources.list"
    # systemd-resolved made etc/resolv.conf a symlink into /run: use the host's resolver meanwhile.
    rm -f "$tmp/etc/resolv.conf"
    cp -L /etc/resolv.conf "$tmp/etc/resolv.conf"
    printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"; chmod 755 "$tmp/usr/sbin/policy-rc.d"
    mount -t proc proc "$tmp/proc"; MOUNTED+=("$tmp/proc")
    # (dpkg --configure -a finishes a kernel install that was interrupted before)
    chroot "$tmp" sh -c "dpkg --configure -a >/dev/null 2>&1; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $LATE_PACKAGES$regen" \
        >"$WORK/apt-late.log" 2>&1 ||
        { umount -l "$tmp/proc"; tail -20 "$WORK/apt-late.log" >&2; die "kernel install failed (log: $WORK/apt-late.log)"; }
    umount -l "$tmp/proc"
    rm -f "$tmp/usr/sbin/policy-rc.d" "$tmp/etc/resolv.conf" "$tmp/.pushbox-debootstrap-done"
    ln -s ../run/systemd/resolve/stub-resolv.conf "$tmp/etc/resolv.conf"
    rm -rf "$tmp"/var/cache/apt/*.bin "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/* \
        "$tmp"/usr/share/doc/*/changelog* "$tmp"/var/log/*.log "$tmp"/var/log/apt/*
    ls "$tmp"/boot/vmlinuz-* >/dev/null 2>&1 || die "no kernel in the base rootfs"
    ls "$tmp"/boot/initrd.img-* >/dev/null 2>&1 || die "no initrd in the base rootfs"
    rm -rf "$BASE"; mv "$tmp" "$BASE"; touch "$BASE/.pushbox-base-complete"
}

if [ -f "$BASE/.pushbox-base-complete" ]; then
    say "base rootfs cached: $BASE"
else
    build_base
    say "base rootfs ready: $BASE ($(du -sh "$BASE" | cut -f1))"
fi
[ "$BASE_ONLY" = 1 ] && exit 0

# --- stage 2: pushbox into a copy of the base --------------------------------------------------
if [ -z "$BIN" ]; then
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/pushbox-static-target}
    say "building the static aarch64 binary (scripts/build-static.sh)"
    "$REPO/scripts/build-static.sh" aarch64-unknown-linux-musl >&2
    BIN=$CARGO_TARGET_DIR/aarch64-unknown-linux-musl/release/pushbox
fi
[ -f "$BIN" ] || die "no pushbox binary at $BIN"
file -b "$BIN" | grep -q 'ARM aarch64.*statically linked' || die "$BIN is not a static aarch64 binary: $(file -b "$BIN")"

ROOT=$WORK/rootfs
say "staging rootfs $ROOT"
rm -rf "$ROOT"
cp -a "$BASE" "$ROOT"
rm -f "$ROOT/.pushbox-base-complete"

install -m 0755 "$BIN" "$ROOT/usr/bin/pushbox"
install -m 0644 "$REPO/systemd/pushbox.service" "$REPO/systemd/pushbox.socket" "$ROOT/usr/lib/systemd/system/"
install -D -m 0644 "$REPO/systemd/pushbox.sysusers.conf" "$ROOT/usr/lib/sysusers.d/pushbox.conf"
install -D -m 0644 "$REPO/systemd/pushbox.tmpfiles.conf" "$ROOT/usr/lib/tmpfiles.d/pushbox.conf"
# image/rootfs: config, first-boot unit and script, network, drop-ins
cp -a --no-preserve=ownership "$HERE/rootfs/." "$ROOT/"
chmod 0755 "$ROOT/usr/lib/pushbox/firstboot"

ROOT_UUID=$(cat /proc/sys/kernel/random/uuid)
KVER=$(basename "$(ls -1 "$ROOT"/boot/vmlinuz-* | sort -V | tail -n1)"); KVER=${KVER#vmlinuz-}

echo pushbox >"$ROOT/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tpushbox\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$ROOT/etc/hosts"
cat >"$ROOT/etc/fstab" <<EOF
# pushbox appliance. Everything the running box changes is under /var (state: /var/lib/pushbox);
# /etc/pushbox is written once, on first boot. /tmp is RAM.
PARTUUID=$ROOT_UUID  /     ext4   defaults,noatime,errors=remount-ro  0 1
tmpfs                /tmp  tmpfs  mode=1777,nosuid,nodev,size=64M     0 0
EOF
# systemd's first boot: a fresh machine-id per box, generated at boot (never baked in).
: >"$ROOT/etc/machine-id"
rm -f "$ROOT/var/lib/dbus/machine-id"
ln -sf /etc/machine-id "$ROOT/var/lib/dbus/machine-id"
ln -sf ../run/systemd/resolve/stub-resolv.conf "$ROOT/etc/resolv.conf"
# No root password and no login service on the network: the box is managed through its
# config and the serial console (see image/README.md). Root login on the console stays locked.

# The pushbox user and directories, as systemd-sysusers/-tmpfiles would create them at boot.
systemd-sysusers --root="$ROOT" >/dev/null
systemd-tmpfiles --root="$ROOT" --create pushbox.conf >/dev/null 2>&1 || true
[ -z "$(ls -A "$ROOT/etc/pushbox" | grep -vx 'pushbox.toml')" ] ||
    die "/etc/pushbox in the image holds more than pushbox.toml: $(ls "$ROOT/etc/pushbox")"
pb_gid=$(awk -F: '$1=="pushbox"{print $3}' "$ROOT/etc/group")
[ -n "$pb_gid" ] || die "systemd-sysusers did not create the pushbox group"
chown "root:$pb_gid" "$ROOT/etc/pushbox"; chmod 0755 "$ROOT/etc/pushbox"
chown "root:$pb_gid" "$ROOT/etc/pushbox/pushbox.toml"; chmod 0640 "$ROOT/etc/pushbox/pushbox.toml"

say "enabling units"
systemctl --root="$ROOT" enable systemd-networkd.service systemd-resolved.service \
    pushbox.socket pushbox.service pushbox-firstboot.service >/dev/null 2>&1
for t in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer dpkg-db-backup.timer \
    e2scrub_reap.service; do
    systemctl --root="$ROOT" mask "$t" >/dev/null 2>&1 || true
done
systemctl --root="$ROOT" set-default multi-user.target >/dev/null 2>&1

out=$(systemd-analyze verify --root="$ROOT" pushbox.service pushbox.socket pushbox-firstboot.service 2>&1 || true)
[ -z "$out" ] || die "systemd-analyze verify in the image: $out"

# Fail if a key, certificate or app secret slipped into the image.
leak=$(find "$ROOT/etc/pushbox" "$ROOT/var/lib/pushbox" -type f \( -name '*.key' -o -name '*.crt' -o -name '*.pem' \) 2>/dev/null || true)
[ -z "$leak" ] || die "key material in the image: $leak"
! grep -q '^\[\[apps\]\]' "$ROOT/etc/pushbox/pushbox.toml" || die "an app is baked into /etc/pushbox/pushbox.toml"

# --- stage 3: pack the GPT image --------------------------------------------------------------
mkdir -p "$OUT"
IMG=$OUT/pushbox-arm64.img
rm -f "$IMG" "$IMG.zst" "$IMG.bmap"
say "packing $IMG (${IMAGE_SIZE_MIB} MiB, kernel $KVER, root PARTUUID $ROOT_UUID)"
truncate -s "${IMAGE_SIZE_MIB}M" "$IMG"
sfdisk -q "$IMG" <<EOF
label: gpt
start=2048, size=${ESP_MIB}MiB, type=uefi, name=ESP
type=B921B045-1DF0-41C3-AF44-4C6F280D3FAE, uuid=$ROOT_UUID, name=pushbox-root
EOF
read -r ESP_START ESP_SECT < <(sfdisk -J "$IMG" | python3 -c 'import json,sys; p=json.load(sys.stdin)["partitiontable"]["partitions"][0]; print(p["start"], p["size"])')
read -r ROOT_START ROOT_SECT < <(sfdisk -J "$IMG" | python3 -c 'import json,sys; p=json.load(sys.stdin)["partitiontable"]["partitions"][1]; print(p["start"], p["size"])')

# ESP: systemd-boot, kernel, initrd, loader entry
mkfs.fat -F 32 -s 1 -n ESP --offset="$ESP_START" "$IMG" $((ESP_SECT / 2)) >/dev/null 2>&1
export MTOOLS_SKIP_CHECK=1
E="$IMG@@$((ESP_START * 512))"
mmd -i "$E" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries
mcopy -i "$E" "$ROOT/usr/lib/systemd/boot/efi/systemd-bootaa64.efi" ::/EFI/BOOT/BOOTAA64.EFI
mcopy -i "$E" "$ROOT/boot/vmlinuz-$KVER" ::/vmlinuz
mcopy -i "$E" "$ROOT/boot/initrd.img-$KVER" ::/initrd.img
tmpd=$(mktemp -d); trap 'cleanup; rm -rf "$tmpd"' EXIT
printf 'default pushbox.conf\ntimeout 0\neditor no\n' >"$tmpd/loader.conf"
# The last console= is /dev/console (first-boot messages go there): ttyAMA0 is the PL011 serial
# port of qemu's virt machine and many boards; add yours in loader/entries/pushbox.conf.
cat >"$tmpd/pushbox.conf" <<EOF
title   pushbox
linux   /vmlinuz
initrd  /initrd.img
options root=PARTUUID=$ROOT_UUID ro rootwait console=tty1 console=ttyAMA0 systemd.show_status=1 panic=10
EOF
mcopy -i "$E" "$tmpd/loader.conf" ::/loader/loader.conf
mcopy -i "$E" "$tmpd/pushbox.conf" ::/loader/entries/pushbox.conf

# root: ext4 filled from the staging directory (mkfs.ext4 -d keeps owners and modes)
mkfs.ext4 -q -F -L pushbox-root -U random -d "$ROOT" -E offset=$((ROOT_START * 512)) "$IMG" $((ROOT_SECT / 2))k
e2fsck -fn "$IMG?offset=$((ROOT_START * 512))" >/dev/null 2>&1 || die "e2fsck found problems in the root filesystem"

printf '%s\n' "$KVER" >"$OUT/kernel-version"
printf '%s\n' "$ROOT_UUID" >"$OUT/root-partuuid"
if command -v bmaptool >/dev/null; then bmaptool create -o "$IMG.bmap" "$IMG" 2>/dev/null || true; fi
if [ "${NO_ZSTD:-0}" != 1 ]; then zstd -q -T2 -10 -f "$IMG" -o "$IMG.zst"; fi

say "done"
printf 'image:     %s (%s MiB, %s allocated)\n' "$IMG" "$IMAGE_SIZE_MIB" "$(du -h "$IMG" | cut -f1)"
[ -f "$IMG.zst" ] && printf 'zstd:      %s (%s)\n' "$IMG.zst" "$(du -h "$IMG.zst" | cut -f1)"
[ -f "$IMG.bmap" ] && printf 'bmap:      %s\n' "$IMG.bmap"
printf 'kernel:    %s\nrootfs:    %s\npushbox:   %s bytes, %s\n' "$KVER" "$(du -sh "$ROOT" | cut -f1)" \
    "$(stat -c %s "$ROOT/usr/bin/pushbox")" "$(file -b "$ROOT/usr/bin/pushbox")"
sfdisk -l "$IMG" | sed -n '/^Device/,$p'

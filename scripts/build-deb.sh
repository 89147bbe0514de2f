#!/usr/bin/env bash
# Build the Debian packages of pushbox from the static release binaries, with dpkg-deb only.
#
#   scripts/build-deb.sh [TARGET|ARCH ...]
#
# TARGET (or Debian ARCH) defaults to all three:
#   x86_64-unknown-linux-musl      -> amd64
#   aarch64-unknown-linux-musl     -> arm64
#   armv7-unknown-linux-gnueabihf  -> armhf  (glibc with +crt-static, see scripts/build-static.sh)
#
# Output: target/deb/pushbox_<version>_<arch>.deb, version = Cargo.toml's version + "-" +
# DEB_REVISION. Each binary is built by scripts/build-static.sh (which also installs the cross
# tools and rustup targets, and refuses a binary that is not static); a target that fails to build
# is reported and the others are still packaged, then the script exits 1.
#
# Package contents (packaging/deb/ holds the package-only files; units and the first-boot script
# are the ones in systemd/ and image/rootfs/, shared with the appliance image):
#   /usr/bin/pushbox
#   /usr/lib/systemd/system/{pushbox.service,pushbox.socket,pushbox-firstboot.service}
#   /usr/lib/systemd/system/pushbox.service.d/10-firstboot.conf
#   /usr/lib/sysusers.d/pushbox.conf, /usr/lib/tmpfiles.d/pushbox.conf
#   /usr/lib/pushbox/firstboot           (keys + certificate on first start; never in the package)
#   /etc/pushbox/pushbox.toml            (conffile, no app and no key in it)
#   /usr/share/doc/pushbox/{copyright,changelog.Debian.gz,README.Debian}, /usr/share/man/man1/pushbox.1.gz
#   /usr/share/lintian/overrides/pushbox
#
# Environment: CARGO_TARGET_DIR (where the static build goes, default /tmp/pushbox-static-target,
# shared with scripts/qemu-smoke.sh), SKIP_BUILD=1 (package the binaries already in
# CARGO_TARGET_DIR), OUT (default target/deb), DEB_REVISION (default 1), DEB_MAINTAINER,
# SOURCE_DATE_EPOCH (default: the last commit's time; makes the .deb reproducible), LINTIAN=1
# (run lintian on each package and fail on errors).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PKG=$ROOT/packaging/deb
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/pushbox-static-target}
OUT=${OUT:-$ROOT/target/deb}
DEB_REVISION=${DEB_REVISION:-1}
DEB_MAINTAINER=${DEB_MAINTAINER:-pushbox maintainers <pushbox-maintainers@users.noreply.github.com>}

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'build-deb: error: %s\n' "$*" >&2; exit 1; }

case "${1:-}" in -h|--help) sed -n '2,31p' "$0"; exit 0 ;; esac

arch_of() {
    case "$1" in
        x86_64-unknown-linux-musl) echo amd64 ;;
        aarch64-unknown-linux-musl) echo arm64 ;;
        armv7-unknown-linux-gnueabihf) echo armhf ;;
        *) return 1 ;;
    esac
}
TARGETS=()
for a in "$@"; do
    case "$a" in
        amd64) TARGETS+=(x86_64-unknown-linux-musl) ;;
        arm64) TARGETS+=(aarch64-unknown-linux-musl) ;;
        armhf) TARGETS+=(armv7-unknown-linux-gnueabihf) ;;
        *) arch_of "$a" >/dev/null || die "unknown target $a (one of: x86_64-unknown-linux-musl aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf, or amd64 arm64 armhf)"
           TARGETS+=("$a") ;;
    esac
done
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf)

for tool in dpkg-deb gzip sed cargo; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done

UPSTREAM_VERSION=$(grep -m1 '^version = ' Cargo.toml | sed 's/^version = "\([^"]*\)".*/\1/')
[ -n "$UPSTREAM_VERSION" ] || die "no version in Cargo.toml"
VERSION=$UPSTREAM_VERSION-$DEB_REVISION
COMMIT=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
DIRTY=""
git diff --quiet HEAD -- 2>/dev/null || DIRTY=" + local changes"
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
FIRST_YEAR=$(git log --max-parents=0 --format=%ad --date=format:%Y 2>/dev/null | sort | sed -n 1p)
LAST_YEAR=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y)
YEARS=${FIRST_YEAR:-$LAST_YEAR}
[ "$YEARS" = "$LAST_YEAR" ] || YEARS=$YEARS-$LAST_YEAR

# --- 1. the static binaries ----------------------------------------------------------------------
# One build-static.sh run per target, so one target that cannot build here does not stop the
# others (host build-dependencies are compiled once and reused from CARGO_TARGET_DIR).
built=()
failed=()
for t in "${TARGETS[@]}"; do
    if [ "${SKIP_BUILD:-0}" = 1 ]; then
        say "SKIP_BUILD=1: using $CARGO_TARGET_DIR/$t/release/pushbox"
    else
        say "building $t (release) with scripts/build-static.sh, CARGO_TARGET_DIR=$CARGO_TARGET_DIR"
        if ! scripts/build-static.sh "$t" >&2; then
            failed+=("$t (static build failed, see above)")
            continue
        fi
    fi
    [ -f "$CARGO_TARGET_DIR/$t/release/pushbox" ] || { failed+=("$t (no binary at $CARGO_TARGET_DIR/$t/release/pushbox)"); continue; }
    built+=("$t")
done

# --- 2. one package per binary -------------------------------------------------------------------
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/pushbox-build-deb.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# The crates inside the binary, for the copyright file (from Cargo.lock, no network).
crate_list() {
    cargo tree --locked --offline -e normal,no-proc-macro --target "$1" --prefix none -f '{p}: {l}' 2>/dev/null |
        sed -e 's/ (\*)$//' -e 's/ (\/[^)]*)//' | grep -v '^pushbox ' | sort -u |
        sed 's/^/ /'
}

copyright() {
    local t=$1 libc
    case "$t" in
        *musl*) libc="musl libc (MIT), from the Rust toolchain's self-contained $t target" ;;
        *gnueabihf) libc="the GNU C library (LGPL-2.1+, /usr/share/common-licenses/LGPL-2.1), statically linked from Debian's libc6-dev-armhf-cross (source package cross-toolchain-base, named in Built-Using); its source is in the Debian archive" ;;
    esac
    cat <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: pushbox
Comment: /usr/bin/pushbox is one statically linked binary. Besides pushbox's own code it
 contains $libc,
 and these Rust crates from crates.io, each under the license(s) named (SPDX expressions as the
 crates declare them; Apache-2.0 is in /usr/share/common-licenses/Apache-2.0):
 .
$(crate_list "$t")

Files: *
Copyright: $YEARS pushbox contributors
License: MIT
 Permission is hereby granted, free of charge, to any person obtaining a copy of this software
 and associated documentation files (the "Software"), to deal in the Software without
 restriction, including without limitation the rights to use, copy, modify, merge, publish,
 distribute, sublicense, and/or sell copies of the Software, and to permit persons to whom the
 Software is furnished to do so, subject to the following conditions:
 .
 The above copyright notice and this permission notice shall be included in all copies or
 substantial portions of the Software.
 .
 THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING
 BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
 NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM,
 DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
 OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
EOF
}

changelog() {
    cat <<EOF
pushbox ($VERSION) unstable; urgency=medium

  * Built by scripts/build-deb.sh from git commit $COMMIT$DIRTY,
    static $1 release binary.

 -- $DEB_MAINTAINER  $(date -u -R -d "@$SOURCE_DATE_EPOCH")
EOF
}

package() {
    local t=$1 arch bin root deb size built_using=""
    arch=$(arch_of "$t")
    bin=$CARGO_TARGET_DIR/$t/release/pushbox
    root=$WORK/$arch
    deb=$OUT/pushbox_${VERSION}_$arch.deb
    case "$t" in
        armv7-unknown-linux-gnueabihf)
            built_using=$(dpkg-query -W -f='${source:Package} (= ${source:Version})' libc6-dev-armhf-cross 2>/dev/null) ||
                die "libc6-dev-armhf-cross is not installed (scripts/build-static.sh installs it)" ;;
    esac

    install -D -m 0755 "$bin" "$root/usr/bin/pushbox"
    install -D -m 0644 -t "$root/usr/lib/systemd/system" systemd/pushbox.service systemd/pushbox.socket \
        image/rootfs/usr/lib/systemd/system/pushbox-firstboot.service
    install -D -m 0644 image/rootfs/usr/lib/systemd/system/pushbox.service.d/10-firstboot.conf \
        "$root/usr/lib/systemd/system/pushbox.service.d/10-firstboot.conf"
    install -D -m 0644 systemd/pushbox.sysusers.conf "$root/usr/lib/sysusers.d/pushbox.conf"
    install -D -m 0644 systemd/pushbox.tmpfiles.conf "$root/usr/lib/tmpfiles.d/pushbox.conf"
    install -D -m 0755 image/rootfs/usr/lib/pushbox/firstboot "$root/usr/lib/pushbox/firstboot"
    # The conffile: 0644 as shipped (nothing secret in it); postinst's tmpfiles makes it 0640
    # root:pushbox before the first start appends the app's keys.
    install -D -m 0644 "$PKG/pushbox.toml" "$root/etc/pushbox/pushbox.toml"
    if grep -qE '^\[\[apps\]\]|^[[:space:]]*secret[[:space:]]*=' "$root/etc/pushbox/pushbox.toml"; then
        die "packaging/deb/pushbox.toml has an app or a secret in it: keys are made on the machine, never shipped"
    fi
    install -d -m 0755 "$root/usr/share/doc/pushbox" "$root/usr/share/man/man1" "$root/usr/share/lintian/overrides"
    copyright "$t" >"$root/usr/share/doc/pushbox/copyright"
    changelog "$t" | gzip -9n >"$root/usr/share/doc/pushbox/changelog.Debian.gz"
    install -m 0644 "$PKG/README.Debian" "$root/usr/share/doc/pushbox/README.Debian"
    gzip -9n <"$PKG/pushbox.1" >"$root/usr/share/man/man1/pushbox.1.gz"
    install -m 0644 "$PKG/lintian-overrides" "$root/usr/share/lintian/overrides/pushbox"

    install -d -m 0755 "$root/DEBIAN"
    install -m 0755 "$PKG/postinst" "$PKG/prerm" "$PKG/postrm" "$root/DEBIAN/"
    echo /etc/pushbox/pushbox.toml >"$root/DEBIAN/conffiles"
    size=$(du -k -s --exclude=DEBIAN "$root" | cut -f1)
    {
        echo "Package: pushbox"
        echo "Version: $VERSION"
        echo "Architecture: $arch"
        echo "Maintainer: $DEB_MAINTAINER"
        echo "Installed-Size: $size"
        # postinst makes the pushbox user with systemd-sysusers, or adduser where there is no systemd.
        echo "Depends: adduser"
        echo "Recommends: iproute2"
        [ -n "$built_using" ] && echo "Built-Using: $built_using"
        echo "Section: net"
        echo "Priority: optional"
        cat <<'EOF'
Description: Pusher-compatible real-time server (WebSocket, HTTP API, webhooks)
 pushbox speaks the Pusher Channels protocol (WebSocket, plus pusher-js's HTTP
 streaming/polling fallback), the signed Pusher HTTP API and webhooks,
 terminates TLS itself, and keeps a durable job queue and event log on local
 disk. Laravel's reverb/pusher broadcaster and Laravel Echo work against it
 unchanged.
 .
 One static binary with hardened systemd units (socket activation, watchdog).
 On first start it makes an app (id, key, secret) and a self-signed
 certificate for this machine in /etc/pushbox; nothing secret is shipped.
EOF
    } >"$root/DEBIAN/control"
    (cd "$root" && find . -path ./DEBIAN -prune -o -type f -print | sed 's#^\./##' | LC_ALL=C sort |
        xargs md5sum) >"$root/DEBIAN/md5sums"
    find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

    dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
    say "built $deb ($(stat -c %s "$deb") bytes)"
    debs+=("$deb")
}

debs=()
for t in "${built[@]}"; do
    package "$t"
done

# --- 3. lintian (optional here; scripts/test-deb.sh always runs it) ----------------------------
if [ "${LINTIAN:-0}" = 1 ] && [ ${#debs[@]} -gt 0 ]; then
    command -v lintian >/dev/null || die "LINTIAN=1 but lintian is not installed (apt-get install lintian)"
    for d in "${debs[@]}"; do
        say "lintian $d"
        lintian --fail-on error --info "$d" >&2 || failed+=("$(basename "$d") (lintian errors)")
    done
fi

for d in "${debs[@]}"; do echo "$d"; done
if [ ${#failed[@]} -gt 0 ]; then
    printf 'build-deb: FAILED for:\n' >&2
    printf '  %s\n' "${failed[@]}" >&2
    [ ${#debs[@]} -gt 0 ] && printf 'built: %s\n' "${debs[*]}" >&2
    exit 1
fi
say "${#debs[@]} package(s) in $OUT"

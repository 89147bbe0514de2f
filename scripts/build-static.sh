#!/usr/bin/env bash
# Build statically linked pushbox release binaries, docker-free, on Debian 12.
#
#   scripts/build-static.sh [--setup-only] [TARGET...]
#
# TARGET defaults to all three shipped targets:
#   aarch64-unknown-linux-musl      (the appliance; gcc-aarch64-linux-gnu links it, ring's C too)
#   x86_64-unknown-linux-musl       (static-pie; musl-gcc compiles ring)
#   armv7-unknown-linux-gnueabihf   (glibc with +crt-static; see docs in .cargo/config.toml)
#
# Installs what is missing (apt-get: cross gcc, musl-tools, qemu-user-static, file; rustup
# targets), builds `cargo build --release` for all targets in one cargo invocation, prints each
# binary's path, size and `file` output, and exits non-zero if any binary is not static
# (has a PT_INTERP program header, or a dynamic section that needs shared libraries).
#
# Environment: BIN (binary name, default pushbox), PROFILE (cargo profile, default release),
# CARGO (default cargo), NO_INSTALL=1 (never call apt-get/rustup; fail if something is missing).
set -euo pipefail

cd "$(dirname "$0")/.."

BIN=${BIN:-pushbox}
PROFILE=${PROFILE:-release}
CARGO=${CARGO:-cargo}
SETUP_ONLY=0
TARGETS=()
for arg in "$@"; do
    case "$arg" in
        --setup-only) SETUP_ONLY=1 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        -*) echo "build-static: unknown option $arg" >&2; exit 2 ;;
        *) TARGETS+=("$arg") ;;
    esac
done
if [ ${#TARGETS[@]} -eq 0 ]; then
    TARGETS=(aarch64-unknown-linux-musl x86_64-unknown-linux-musl armv7-unknown-linux-gnueabihf)
fi

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'build-static: error: %s\n' "$*" >&2; exit 1; }

# --- 1. host packages --------------------------------------------------------------------------
# "command or file that proves it is installed" -> Debian package
declare -A NEED=()
need() { NEED["$1"]="$2"; }
need /usr/bin/file file
need /usr/bin/readelf binutils
for t in "${TARGETS[@]}"; do
    case "$t" in
        aarch64-unknown-linux-musl)
            need /usr/bin/aarch64-linux-gnu-gcc gcc-aarch64-linux-gnu
            need /usr/aarch64-linux-gnu/include/stdio.h libc6-dev-arm64-cross
            need /usr/bin/qemu-aarch64-static qemu-user-static ;;
        armv7-unknown-linux-gnueabihf)
            need /usr/bin/arm-linux-gnueabihf-gcc gcc-arm-linux-gnueabihf
            need /usr/arm-linux-gnueabihf/include/stdio.h libc6-dev-armhf-cross
            need /usr/bin/qemu-arm-static qemu-user-static ;;
        x86_64-unknown-linux-musl)
            need /usr/bin/musl-gcc musl-tools ;;
        *) die "unsupported target $t (supported: aarch64-unknown-linux-musl x86_64-unknown-linux-musl armv7-unknown-linux-gnueabihf)" ;;
    esac
done
missing=()
for f in "${!NEED[@]}"; do
    [ -e "$f" ] || missing+=("${NEED[$f]}")
done
if [ ${#missing[@]} -gt 0 ]; then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    [ "${NO_INSTALL:-0}" = 1 ] && die "missing packages (NO_INSTALL=1): ${missing[*]}"
    command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get; install them by hand"
    SUDO=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || die "need root (or sudo) to apt-get install ${missing[*]}"
        SUDO=(sudo)
    fi
    say "apt-get install ${missing[*]}"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    say "host packages present"
fi

# --- 2. rust targets ---------------------------------------------------------------------------
command -v rustup >/dev/null || die "rustup not found; install Rust with rustup (https://rustup.rs)"
installed=$(rustup target list --installed)
add=()
for t in "${TARGETS[@]}"; do
    grep -qx "$t" <<<"$installed" || add+=("$t")
done
if [ ${#add[@]} -gt 0 ]; then
    [ "${NO_INSTALL:-0}" = 1 ] && die "missing rust targets (NO_INSTALL=1): ${add[*]}"
    say "rustup target add ${add[*]}"
    rustup target add "${add[@]}"
fi
[ "$SETUP_ONLY" = 1 ] && { say "setup done"; exit 0; }

# --- 3. build (one invocation: host build-dependencies are compiled once) ----------------------
args=()
for t in "${TARGETS[@]}"; do args+=(--target "$t"); done
say "$CARGO build --profile $PROFILE ${args[*]}"
start=$(date +%s)
"$CARGO" build --profile "$PROFILE" --bin "$BIN" "${args[@]}"
say "built in $(( $(date +%s) - start )) s"

# --- 4. check ----------------------------------------------------------------------------------
target_dir=$("$CARGO" metadata --format-version 1 --no-deps 2>/dev/null |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
target_dir=${target_dir:-target}
profile_dir=$PROFILE
[ "$PROFILE" = dev ] && profile_dir=debug
fail=0
for t in "${TARGETS[@]}"; do
    bin="$target_dir/$t/$profile_dir/$BIN"
    [ -f "$bin" ] || { echo "MISSING  $bin"; fail=1; continue; }
    size=$(stat -c %s "$bin")
    phdrs=$(readelf -lW "$bin")
    verdict=static
    if grep -qE '^[[:space:]]*INTERP[[:space:]]' <<<"$phdrs"; then
        verdict="DYNAMIC (has a program interpreter)"
    elif readelf -dW "$bin" 2>/dev/null | grep -q '(NEEDED)'; then
        verdict="DYNAMIC (needs shared libraries)"
    elif grep -qE '^[[:space:]]*DYNAMIC[[:space:]]' <<<"$phdrs"; then
        # static-pie: a dynamic section for self-relocation only, no interpreter, no NEEDED
        verdict="static-pie"
    fi
    printf '%s\n  size:  %s bytes (%s KiB)\n  file:  %s\n  check: %s\n' \
        "$bin" "$size" "$((size / 1024))" "$(file -b "$bin")" "$verdict"
    case "$verdict" in static|static-pie) ;; *) fail=1 ;; esac
done
[ "$fail" = 0 ] || die "some binaries are missing or not statically linked"
say "all ${#TARGETS[@]} binaries are statically linked"

#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian 12 machine (idempotent, quiet when done):
# Debian packages (cross compilers, musl, qemu-user, chromium, systemd tools, lintian), the rustup
# targets and components, the Node packages of the client suites and the Python SDK venv.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

need_pkgs=()
want() { dpkg -s "$1" >/dev/null 2>&1 || need_pkgs+=("$1"); }
for p in gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-arm-linux-gnueabihf libc6-dev-armhf-cross \
         musl-tools qemu-user-static chromium systemd file binutils lintian; do
  want "$p"
done
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  echo "== apt-get install ${need_pkgs[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

installed_targets="$(rustup target list --installed 2>/dev/null || true)"
for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf; do
  grep -qx "$t" <<<"$installed_targets" || rustup target add "$t"
done
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt

for d in tests/clients tests/browser; do
  if [ -f "$ROOT/$d/package-lock.json" ]; then
    if [ ! -d "$ROOT/$d/node_modules" ] || [ "$ROOT/$d/package-lock.json" -nt "$ROOT/$d/node_modules/.package-lock.json" ]; then
      echo "== npm ci ($d)"
      (cd "$ROOT/$d" && npm ci --no-audit --no-fund --loglevel=error)
    fi
  fi
done

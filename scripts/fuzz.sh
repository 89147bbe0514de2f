#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz, libFuzzer) of every target in fuzz/: the WebSocket frame
# decoder, the Pusher message parser and session, the xhr_send body, the HTTP API's signature
# and query parsing, the requests behind a valid signature, and spool recovery.
#
#   scripts/fuzz.sh                  every target for FUZZ_SECS (default 60) seconds
#   FUZZ_SECS=600 scripts/fuzz.sh spool   one target for ten minutes
#
# Each target starts from the corpus it built before (target/fuzz-corpus/<target>) and the seeds
# in tests/fuzz/corpus/<target>/ if present. Any crash fails the run, naming the input libFuzzer
# saved (artifacts/fuzz/<target>/) and the command that replays it.
#
# Needs a nightly toolchain and cargo-fuzz (scripts/setup.sh installs both). Without them it
# prints SKIPPED and exits 0, unless FUZZ_REQUIRED=1.
#
# Disk: the instrumented build (~1 GB: ASan and coverage over tokio, rustls, redis) goes to
# target/fuzz and is removed afterwards unless FUZZ_KEEP_BUILD=1 (a CI disk is tight: stop 25's
# CI ran out of space). Measured cold cost: see the README's "Fuzzing" section.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT/fuzz"
SECS="${FUZZ_SECS:-60}"
# A dated nightly, not "nightly": a new nightly can break the instrumented build of the day, and
# CI must not fail (or pass) for that. Raise it on purpose, as with any dependency.
TC="${FUZZ_TOOLCHAIN:-nightly-2026-10-30}"
BUILD="$ROOT/target/fuzz"
CORPUS="$ROOT/target/fuzz-corpus"
ART="$ROOT/artifacts/fuzz"

skip() {
  if [ "${FUZZ_REQUIRED:-0}" = 1 ]; then echo "FAILED: $1 (FUZZ_REQUIRED=1)"; exit 1; fi
  echo "SKIPPED: $1 (scripts/setup.sh installs it)"; exit 0
}
rustup run "$TC" rustc --version >/dev/null 2>&1 || skip "no $TC Rust toolchain"
command -v cargo-fuzz >/dev/null 2>&1 || skip "cargo-fuzz is not installed"

cleanup() { [ "${FUZZ_KEEP_BUILD:-0}" = 1 ] || rm -rf "$BUILD"; }
trap cleanup EXIT

targets=("$@")
[ "${#targets[@]}" -gt 0 ] || mapfile -t targets < <(cargo "+$TC" fuzz list)
t0=$SECONDS
echo "== cargo +$TC fuzz build (${targets[*]})"
if ! cargo "+$TC" fuzz build --target-dir "$BUILD" >"$ROOT/target/fuzz-build.log" 2>&1; then
  tail -30 "$ROOT/target/fuzz-build.log"; echo "FAILED: the fuzz targets do not build"; exit 1
fi
echo "   built in $((SECONDS - t0)) s"

failed=()
for t in "${targets[@]}"; do
  mkdir -p "$CORPUS/$t" "$ART/$t"
  seeds=()
  [ -d "$ROOT/tests/fuzz/corpus/$t" ] && seeds=("$ROOT/tests/fuzz/corpus/$t")
  log="$ROOT/target/fuzz-$t.log"
  # -timeout: an input that takes 25 s is a hang, reported like a crash.
  cargo "+$TC" fuzz run --target-dir "$BUILD" "$t" "$CORPUS/$t" "${seeds[@]}" -- \
    -max_total_time="$SECS" -timeout=25 -print_final_stats=1 -artifact_prefix="$ART/$t/" \
    >"$log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
  if [ "$rc" -eq 0 ]; then
    echo "   $t: ok, ${execs:-?} inputs in ${SECS} s (${rate:-?}/s), ${cov:-cov: ?}"
  else
    artifact=$(sed -n 's/.*Test unit written to //p' "$log" | tail -1)
    grep -m1 -E "panicked at|ERROR: AddressSanitizer|ERROR: libFuzzer" -A2 "$log" | sed 's/^/     /'
    echo "   $t: FAILED (exit $rc): input saved to ${artifact:-? (see $log)}"
    [ -n "$artifact" ] && echo "     replay: (cd fuzz && cargo +$TC fuzz run $t $artifact)"
    failed+=("$t")
  fi
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "FAILED: fuzz targets crashed: ${failed[*]} (logs: target/fuzz-<target>.log)"
  exit 1
fi
echo "all ${#targets[@]} fuzz targets ran ${SECS} s without a crash ($((SECONDS - t0)) s in all)"

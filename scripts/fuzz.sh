#!/usr/bin/env bash
# Fuzzing (docs/FUZZING.md): builds every target in fuzz/ with cargo-fuzz (libFuzzer) and
# runs each for SECONDS_PER_TARGET seconds, one after the other; prints each target's
# executions and time from libFuzzer's final stats; exits non-zero if any target crashed
# (a panic, a failed property, a timeout), keeping the input in fuzz/artifacts/TARGET/.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]      # default 30: what CI runs
#   FUZZ_TARGETS="postback config" scripts/fuzz.sh 600
#
# New inputs the fuzzer finds go to fuzz/target/corpus/TARGET (not committed); the
# committed seeds in fuzz/corpus/TARGET are read, never written.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET="${1:-30}"
case "$SECONDS_PER_TARGET" in '' | *[!0-9]*) echo "usage: $0 [SECONDS_PER_TARGET]" >&2; exit 2 ;; esac

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

# Why each flag (docs/FUZZING.md has the measurements):
#   --sanitizer none     the code under test is safe Rust; AddressSanitizer would find
#                        nothing more and halves the executions per second;
#   --debug-assertions   overflow checks on: an overflow in the host's arithmetic is a crash;
#   --codegen-units 16   cargo-fuzz's default of 1 makes the first build of wasmtime and
#                        the rest of the host's tree several times longer on two cores.
# RUSTC_BOOTSTRAP=1: cargo-fuzz is made for nightly. With `--sanitizer none` the flags it
# passes are stable ones, but it only adds the nightly `-Zsanitizer=...` and
# `-Zunstable-options` when asked for a sanitizer, and decides that by asking rustc whether
# it is nightly; setting RUSTC_BOOTSTRAP makes `--sanitizer address` (a manual run) work on
# the stable toolchain too. It changes nothing else in the build.
export RUSTC_BOOTSTRAP=1
FLAGS=(--sanitizer none --debug-assertions --codegen-units 16)

cd fuzz
echo "== build"
build_started=$(date +%s)
nice -n 10 cargo fuzz build "${FLAGS[@]}"
echo "built in $(($(date +%s) - build_started)) s"

targets="${FUZZ_TARGETS:-$(cargo fuzz list)}"
mkdir -p target/fuzz-logs
failed=()
summary=()
for t in $targets; do
  echo "== $t: ${SECONDS_PER_TARGET} s"
  work="target/corpus/$t"
  mkdir -p "$work" "artifacts/$t" "corpus/$t"
  log="target/fuzz-logs/$t.log"
  args=(-max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 -timeout=20 -rss_limit_mb=2048)
  [ -f "dict/$t.dict" ] && args+=(-dict="dict/$t.dict")
  started=$(date +%s)
  status=0
  # -artifact_prefix is cargo-fuzz's (fuzz/artifacts/TARGET/); the first corpus directory
  # is the one libFuzzer writes to.
  nice -n 10 cargo fuzz run "${FLAGS[@]}" "$t" "$work" "corpus/$t" -- "${args[@]}" >"$log" 2>&1 || status=$?
  elapsed=$(($(date +%s) - started))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
  [ -n "$execs" ] || execs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -n1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)
  secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n1)
  corpus=$(find "$work" -type f | wc -l)
  if [ "$status" -eq 0 ]; then
    result=ok
  else
    result="CRASH (exit $status)"
    failed+=("$t")
    grep -E "panicked at|ERROR: libFuzzer|Test unit written" "$log" | head -n 4 || true
    grep -A2 "panicked at" "$log" | sed -n '2,3p' || true
    artifact=$(sed -n 's|.*Test unit written to .*/\(artifacts/.*\)$|\1|p' "$log" | tail -n1)
    echo "   log: fuzz/$log"
    echo "   reproduce: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run ${FLAGS[*]} $t ${artifact:-artifacts/$t/<file>}"
  fi
  line=$(printf '%-18s %12s execs %5s s %7s exec/s  %6s corpus  %s' \
    "$t" "${execs:-?}" "${secs:-$elapsed}" "${rate:-?}" "$corpus" "$result")
  echo "$line"
  summary+=("$line")
done

echo "== summary (${SECONDS_PER_TARGET} s per target)"
printf '%s\n' "${summary[@]}" | tee target/fuzz-logs/summary.txt
if [ "${#failed[@]}" -gt 0 ]; then
  echo "crashed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi

#!/usr/bin/env bash
# The larger reliability runs recorded in docs/RELIABILITY.md, one command:
#   scripts/reliability.sh            crash loop (40 kills per backend) + replicas (60 s)
#   scripts/reliability.sh soak       the soak benchmark (SOAK_MINUTES, default 30)
#   scripts/reliability.sh props      the money model's property tests, 10,000 sequences
#                                     per backend (PROPTEST_CASES; CI runs 1,000)
#   scripts/reliability.sh backtest   a backtest job over 100,000 conversions per backend
#                                     (CASHBACKD_BACKTEST_CONVERSIONS; CI runs 3,000)
# The CI sizes are the tests' defaults (scripts/test.sh runs them).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-plugins.sh
case "${1:-crash}" in
  crash)
    export CASHBACKD_CHAOS_CYCLES="${CASHBACKD_CHAOS_CYCLES:-40}"
    export CASHBACKD_REPLICA_SECONDS="${CASHBACKD_REPLICA_SECONDS:-60}"
    export CASHBACKD_CRASH_CYCLES="${CASHBACKD_CRASH_CYCLES:-40}"
    export CASHBACK_SDK_QUIET=1
    cargo test --workspace --test it --locked -- chaos:: crash:: --nocapture --test-threads 1
    ;;
  props)
    export PROPTEST_CASES="${PROPTEST_CASES:-10000}"
    export CASHBACK_SDK_QUIET=1
    cargo test --workspace --test it --locked -- ledger_props:: --nocapture
    ;;
  backtest)
    export CASHBACKD_BACKTEST_CONVERSIONS="${CASHBACKD_BACKTEST_CONVERSIONS:-100000}"
    export CASHBACK_SDK_QUIET=1
    cargo test --workspace --test it --locked -- backtests:: --nocapture
    ;;
  soak)
    SOAK_MINUTES="${SOAK_MINUTES:-30}" cargo bench --workspace --bench soak --locked
    ;;
  *)
    echo "usage: scripts/reliability.sh [crash|soak|props|backtest]" >&2
    exit 2
    ;;
esac

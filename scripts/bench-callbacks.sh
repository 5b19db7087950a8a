#!/usr/bin/env bash
# Partner callbacks delivered per second by the delivery worker vs a bare reqwest loop to
# the same local sink, in the same run, on SQLite and PostgreSQL; writes the figures into
# docs/PERFORMANCE.md between <!-- callbacks:begin --> and <!-- callbacks:end --> (appending
# the section if the markers are missing; the rest of the file is left alone).
#
#   scripts/bench-callbacks.sh
#   BENCH_CALLBACKS=20000 BENCH_ROUNDS=5 scripts/bench-callbacks.sh
#
# Settings (environment): BENCH_CALLBACKS (5000 per round), BENCH_ROUNDS (3),
# BENCH_CONCURRENCY (32), BENCH_DIR (target/bench-callbacks), BENCH_BIN (a built
# cashbackd-load: no build), CASHBACKD_TEST_POSTGRES
# (an admin URL; a fresh database per run, dropped at exit), BENCH_SKIP_POSTGRES=1.
set -euo pipefail
cd "$(dirname "$0")/.."

n=${BENCH_CALLBACKS:-5000}
rounds=${BENCH_ROUNDS:-3}
concurrency=${BENCH_CONCURRENCY:-32}
dir=${BENCH_DIR:-target/bench-callbacks}
admin=${CASHBACKD_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/test}
doc=docs/PERFORMANCE.md
target_ratio=0.5

if [[ -n ${BENCH_BIN:-} ]]; then
    bin=$BENCH_BIN # a binary built already (the same sources), e.g. while the tree is mid-edit
else
    echo "== building cashbackd-load (release)" >&2
    cargo build --release -p cashbackd --bin cashbackd-load >&2
    bin=${CARGO_TARGET_DIR:-target}/release/cashbackd-load
fi

mkdir -p "$dir"
pg_db=
cleanup() {
    rm -f "$dir"/bench.db "$dir"/bench.db-wal "$dir"/bench.db-shm
    if [[ -n $pg_db ]]; then psql "$admin" -qAtc "DROP DATABASE IF EXISTS \"$pg_db\" WITH (FORCE)" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

rows=()
verdicts=()
# BACKEND URL: runs the rounds; adds a table row (medians and ranges).
measure() {
    local out worker bare ratio
    out=$("$bin" --database-url "$2" --callbacks "$n" --rounds "$rounds" --concurrency "$concurrency" \
        --plugin-store "$dir/plugins")
    echo "$out" | sed 's/^/   /' >&2
    worker=$(sed -n 's/.*"worker_per_sec":\([0-9.]*\).*/\1/p' <<<"$out" | sort -g | awk '{ v[NR] = $1 } END { printf "%.0f", v[int((NR + 1) / 2)] }')
    bare=$(sed -n 's/.*"bare_per_sec":\([0-9.]*\).*/\1/p' <<<"$out" | sort -g | awk '{ v[NR] = $1 } END { printf "%.0f", v[int((NR + 1) / 2)] }')
    ratio=$(sed -n 's/.*"ratio":\([0-9.]*\).*/\1/p' <<<"$out" | sort -g | awk '{ v[NR] = $1 } END { printf "%.2f", v[int((NR + 1) / 2)] }')
    local lo hi
    lo=$(sed -n 's/.*"ratio":\([0-9.]*\).*/\1/p' <<<"$out" | sort -g | head -1)
    hi=$(sed -n 's/.*"ratio":\([0-9.]*\).*/\1/p' <<<"$out" | sort -g | tail -1)
    local window_mean window_p99
    window_mean=$(sed -n 's/.*"unrecorded_mean_ms":\([0-9.]*\).*/\1/p' <<<"$out" | sort -g | awk '{ v[NR] = $1 } END { printf "%.1f", v[int((NR + 1) / 2)] }')
    window_p99=$(sed -n 's/.*"unrecorded_p99_ms":\([0-9.]*\).*/\1/p' <<<"$out" | sort -g | awk '{ v[NR] = $1 } END { printf "%g", v[int((NR + 1) / 2)] }')
    rows+=("$(printf '| %s | %s/s | %s/s | %s (%.2f–%.2f) | %s ms / ≤ %s ms |' "$1" "$worker" "$bare" "$ratio" "$lo" "$hi" "$window_mean" "$window_p99")")
    verdicts+=("$1 $(awk -v r="$ratio" -v t="$target_ratio" 'BEGIN { print (r + 0 >= t ? "met" : "MISSED") }') (${ratio})")
    # The isolation run: the healthy endpoints' latency alone and beside the bad ones.
    local iso
    iso=$(grep '"mode":"isolation"' <<<"$out" || true)
    field() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p" <<<"$iso"; }
    if [[ -n $iso ]]; then
        iso_rows+=("$(printf '| %s | %s ms | %s ms | %s ms | %s ms | %s |' "$1" "$(field alone_p50_ms)" "$(field alone_p99_ms)" \
            "$(field beside_bad_p50_ms)" "$(field beside_bad_p99_ms)" "$(field p99_ratio)")")
        iso_verdicts+=("$1 $(awk -v r="$(field p99_ratio)" 'BEGIN { print (r + 0 <= 2 ? "met" : "MISSED") }') ($(field p99_ratio))")
        iso_n=$(field healthy_deliveries)
    fi
}
iso_rows=()
iso_verdicts=()
iso_n=?

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
rm -f "$dir"/bench.db*
echo "== SQLite" >&2
measure "SQLite (WAL, synchronous=FULL)" "sqlite://$dir/bench.db"
pg_facts="PostgreSQL not measured"
if [[ ${BENCH_SKIP_POSTGRES:-} != 1 ]] && psql "$admin" -qAtc "SELECT 1" >/dev/null 2>&1; then
    pg_db="cbbench_cb_$$"
    psql "$admin" -qAtc "CREATE DATABASE \"$pg_db\"" >/dev/null
    pg_facts="PostgreSQL $(psql "$admin" -qAtc "SHOW server_version") on the same machine over TCP"
    echo "== $pg_facts" >&2
    measure "PostgreSQL" "${admin%/*}/$pg_db"
fi
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
section=$(cat <<EOF
<!-- callbacks:begin (written by \`scripts/bench-callbacks.sh\`) -->
Last run: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores (${cpu:-unknown CPU}), $(rustc --version | cut -d' ' -f1-2), release build;
\`cashbackd-load --callbacks $n --rounds $rounds --concurrency $concurrency\`: per round, $n changes in the outbox
(not timed), then the same number of GET requests to the same local sink by a bare reqwest loop and by the
delivery worker, both with $concurrency requests in flight; median over the rounds (range of the ratio); ${pg_facts}.
Load average (1, 5, 15 min) before the run: ${load_before}; after it: ${load_after}.

| backend | delivery worker (claim, render, sign, send, record) | bare reqwest loop | ratio | answer to committed record (at-least-once window): mean / p99 bucket |
|---|---|---|---|---|
$(printf '%s\n' "${rows[@]}")

Target of the issue: the worker ≥ 50 % of the bare loop: $(IFS=';'; echo "${verdicts[*]}" | sed 's/;/; /g').

Isolation, same run: ${iso_n} deliveries to five healthy endpoints (a fifth each, all due at once),
from the start of the worker to their arrival at the sink, alone and then beside an endpoint that
never answers (10 s timeout) and one that answers 500, each with as many deliveries; the worker's
default limits (32 in flight, 8 per endpoint).

| backend | healthy p50 alone | healthy p99 alone | p50 beside the bad ones | p99 beside the bad ones | p99 ratio |
|---|---|---|---|---|---|
$(printf '%s\n' "${iso_rows[@]}")

Target of the issue: the healthy p99 beside the bad endpoints within 2× of alone: $(IFS=';'; echo "${iso_verdicts[*]}" | sed 's/;/; /g').
<!-- callbacks:end -->
EOF
)

if grep -q '<!-- callbacks:begin' "$doc" && grep -q '<!-- callbacks:end -->' "$doc"; then
    SECTION="$section" awk '
        /<!-- callbacks:begin/ { print ENVIRON["SECTION"]; skip = 1; next }
        /<!-- callbacks:end -->/ { skip = 0; next }
        !skip { print }
    ' "$doc" >"$doc.tmp"
    mv "$doc.tmp" "$doc"
else
    {
        printf '\n## Partner callbacks: delivery worker vs a bare HTTP loop\n\n'
        printf 'Script: `scripts/bench-callbacks.sh` (builds `cashbackd-load` in release and rewrites the\n'
        printf 'figures below). The worker does everything a real delivery does: claims due deliveries\n'
        printf 'with a lease, loads each change with its click and merchant, renders the URL template\n'
        printf '(six macros, each encoded once), appends a static parameter and the HMAC signature,\n'
        printf 'sends, reads the capped answer, and records every attempt and outcome in one transaction\n'
        printf 'per pass. The baseline sends requests of the same shape to the same sink and records nothing.\n\n'
        printf '%s\n' "$section"
    } >>"$doc"
fi
echo "== wrote the callbacks section of $doc" >&2

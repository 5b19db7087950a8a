#!/usr/bin/env bash
# Ledger write throughput, one commit per posting vs group commit, on SQLite and
# PostgreSQL in the same run; writes the figures into docs/PERFORMANCE.md between
# <!-- ledger-commit:begin --> and <!-- ledger-commit:end --> (appending the section if
# the markers are missing; the rest of the file is left alone).
#
#   scripts/bench-ledger.sh                 # 5 s per mode, 64 concurrent writers
#   BENCH_SECONDS=10 scripts/bench-ledger.sh
#   BENCH_WRITES=20000 scripts/bench-ledger.sh   # a fixed number of writes per mode instead
#
# Each round runs both modes, one after the other, each on a fresh database; the table
# gives the median over the rounds and the range.
#
# Settings (environment): BENCH_SECONDS (5), BENCH_WRITES (unset), BENCH_ROUNDS (3),
# BENCH_CONCURRENCY (64),
# BENCH_BATCH (256), BENCH_DIR (target/bench-ledger: the SQLite files live here, on the
# project's disk and not in a tmpfs /tmp, so that fsync costs what it costs),
# CASHBACKD_TEST_POSTGRES (postgres://postgres@127.0.0.1:5432/test: an admin URL; the
# script creates a fresh database per run and drops them all at exit), BENCH_SKIP_POSTGRES=1.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${BENCH_SECONDS:-5}
rounds=${BENCH_ROUNDS:-3}
writes=${BENCH_WRITES:-}
concurrency=${BENCH_CONCURRENCY:-64}
batch=${BENCH_BATCH:-256}
dir=${BENCH_DIR:-target/bench-ledger}
admin=${CASHBACKD_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/test}
doc=docs/PERFORMANCE.md
target_ratio=20

echo "== building cashbackd-load (release)" >&2
cargo build --release -p cashbackd --bin cashbackd-load >&2
bin=${CARGO_TARGET_DIR:-target}/release/cashbackd-load

mkdir -p "$dir"
rm -f "$dir/created-databases"
cleanup() {
    rm -f "$dir"/bench-*.db "$dir"/bench-*.db-wal "$dir"/bench-*.db-shm
    if [[ -f $dir/created-databases ]]; then
        while read -r db; do
            psql "$admin" -qAtc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
        done <"$dir/created-databases"
        rm -f "$dir/created-databases"
    fi
}
trap cleanup EXIT

if [[ -n $writes ]]; then
    limit=(--writes "$writes")
    limit_text="$writes writes per mode"
else
    limit=(--seconds "$seconds")
    limit_text="${seconds} s per mode"
fi

# One run: prints the load binary's writes per second.
run() { # URL MAX_BATCH
    local json
    json=$("$bin" --database-url "$1" --concurrency "$concurrency" --max-batch "$2" \
        --prefix "bench-$2" "${limit[@]}" --plugin-store "$dir/plugins")
    echo "   $json" >&2
    sed -n 's/.*"writes_per_sec":\([0-9.]*\).*/\1/p' <<<"$json"
}
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
spread() { printf '%s\n' "$@" | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.0f–%.0f", lo, hi }'; }

rows=()
sqlite_ratio=
# BACKEND NEW_URL_COMMAND: runs the rounds, alternating the modes, a fresh database each.
measure() {
    local backend=$1 new_url=$2 round url one=() group=() m1 mg ratio
    for round in $(seq "$rounds"); do
        for mode in 1 "$batch"; do
            url=$($new_url "$mode" "$round")
            echo "   round $round, max-batch $mode" >&2
            if [[ $mode == 1 ]]; then one+=("$(run "$url" "$mode")"); else group+=("$(run "$url" "$mode")"); fi
        done
    done
    m1=$(median "${one[@]}")
    mg=$(median "${group[@]}")
    ratio=$(awk -v a="$mg" -v b="$m1" 'BEGIN { printf "%.1f", (b > 0 ? a / b : 0) }')
    rows+=("$(printf '| %s | %.0f writes/s (%s) | %.0f writes/s (%s) | %s× |' \
        "$backend" "$m1" "$(spread "${one[@]}")" "$mg" "$(spread "${group[@]}")" "$ratio")")
    echo "   $backend: one commit per posting $m1/s, group commit $mg/s (medians): ${ratio}×" >&2
    if [[ $backend == SQLite* ]]; then sqlite_ratio=$ratio; fi
}

sqlite_url() { # MODE ROUND
    rm -f "$dir/bench-$1-$2.db" "$dir/bench-$1-$2.db-wal" "$dir/bench-$1-$2.db-shm"
    echo "sqlite://$dir/bench-$1-$2.db"
}
postgres_url() { # MODE ROUND
    local db="cbbench_$$_$1_$2"
    psql "$admin" -qAtc "CREATE DATABASE \"$db\"" >/dev/null
    echo "$db" >>"$dir/created-databases"
    echo "${admin%/*}/$db"
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
echo "== SQLite ($dir, $(df -T "$dir" | awk 'NR == 2 { print $2 }'))" >&2
measure "SQLite (WAL, synchronous=FULL)" sqlite_url

pg_facts="PostgreSQL not measured"
if [[ ${BENCH_SKIP_POSTGRES:-} == 1 ]]; then
    echo "== PostgreSQL skipped (BENCH_SKIP_POSTGRES=1)" >&2
elif ! psql "$admin" -qAtc "SELECT 1" >/dev/null 2>&1; then
    echo "== PostgreSQL skipped: $admin does not answer" >&2
    pg_facts="PostgreSQL not measured: no server answered"
else
    pg_facts="$(psql "$admin" -qAtc "SELECT 'PostgreSQL ' || current_setting('server_version') || \
        ' on the same machine over TCP (fsync=' || current_setting('fsync') || ', synchronous_commit=' || \
        current_setting('synchronous_commit') || ', wal_sync_method=' || current_setting('wal_sync_method') || \
        ', commit_delay=' || current_setting('commit_delay') || ')'")"
    echo "== $pg_facts" >&2
    measure "PostgreSQL" postgres_url
fi
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

verdict=$(awk -v r="$sqlite_ratio" -v t="$target_ratio" 'BEGIN { print (r + 0 >= t ? "met" : "MISSED") }')
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
section=$(cat <<EOF
<!-- ledger-commit:begin (written by \`scripts/bench-ledger.sh\`) -->
Last run: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores (${cpu:-unknown CPU}), $(free -g | awk '/^Mem:/ { print $2 }') GiB,
$(rustc --version | cut -d' ' -f1-2), release build; \`cashbackd-load\` with $concurrency concurrent writers,
$limit_text, $rounds rounds alternating the modes, a fresh database per run: median (range) per mode;
SQLite file on $(df -T "$dir" | awk 'NR == 2 { print $2 }'); ${pg_facts}.
Load average (1, 5, 15 min) before the run: ${load_before}; after it: ${load_after} (the run itself adds about 1).

| backend | one commit per posting (max-batch 1) | group commit (max-batch $batch) | ratio |
|---|---|---|---|
$(printf '%s\n' "${rows[@]}")

Target of the issue: group commit ≥ ${target_ratio}× one commit per posting on SQLite: **${verdict}** (${sqlite_ratio}×).
<!-- ledger-commit:end -->
EOF
)

if grep -q '<!-- ledger-commit:begin' "$doc" && grep -q '<!-- ledger-commit:end -->' "$doc"; then
    SECTION="$section" awk '
        /<!-- ledger-commit:begin/ { print ENVIRON["SECTION"]; skip = 1; next }
        /<!-- ledger-commit:end -->/ { skip = 0; next }
        !skip { print }
    ' "$doc" >"$doc.tmp"
    mv "$doc.tmp" "$doc"
else
    {
        printf '\n## Ledger writes: group commit\n\n'
        printf 'Script: `scripts/bench-ledger.sh` (builds `cashbackd-load` in release and rewrites the\n'
        printf 'figures below). Each run posts manual adjustments (one balanced ledger transaction of\n'
        printf 'two entries, journaled, idempotent by key) through `Service::adjust`, which answers only\n'
        printf 'after the commit; *one commit per posting* is the writer with `max_batch = 1`, *group\n'
        printf 'commit* the default writer, which applies every waiting posting in one transaction.\n\n'
        printf '%s\n' "$section"
    } >>"$doc"
fi
echo "== wrote the ledger-commit section of $doc (SQLite target ${verdict}: ${sqlite_ratio}×)" >&2

#!/usr/bin/env bash
# A large report file through `cashbackd import`, measured (issue 14 point 5; not in CI):
#   scripts/import-bench.sh                 1,000,000 rows into a fresh SQLite database
#   IMPORT_ROWS=100000 scripts/import-bench.sh
# Every row is a new conversion of a known click (csv-report adapter, flat-rate rule, a
# ledger posting), as in `cargo bench --bench ingest`: IMPORT_SHOPPERS users (default
# 1,000) click a tracked link once each through a short-lived `cashbackd serve`, and the
# report gives each of them an equal share of the orders. The import then runs under
# `/usr/bin/time -v`: the script prints rows/s and the peak RSS, and a second import of the
# same file (all duplicates). Last, the same file a third time through the admin API
# (`POST /api/v1/networks/net/imports` to a `cashbackd serve`, all duplicates): the
# server's peak RSS (VmHWM) before and after, which shows whether it held the upload.
#
# CASHBACKD (default target/debug/cashbackd: say which build you measured) and
# IMPORT_PLUGINS (default target/plugins/wasm32-wasip2) choose the binary and the
# components, so an older build can be measured the same way as a baseline. The work
# directory (database, file, logs) is kept and printed; IMPORT_DIR chooses it.
# IMPORT_DATABASE_URL measures on another database (an empty one, say a PostgreSQL
# database just created) instead of a fresh SQLite file in the work directory.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${CASHBACKD:-target/debug/cashbackd}"
PLUGINS="${IMPORT_PLUGINS:-target/plugins/wasm32-wasip2}"
ROWS="${IMPORT_ROWS:-1000000}"
SHOPPERS="${IMPORT_SHOPPERS:-1000}"
DIR="${IMPORT_DIR:-$(mktemp -d /tmp/import-bench.XXXXXX)}"
mkdir -p "$DIR"
[ -x "$BIN" ] || { echo "no $BIN: build it first" >&2; exit 1; }
[ -f "$PLUGINS/csv_report.wasm" ] || { echo "no $PLUGINS/csv_report.wasm: run scripts/build-plugins.sh" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "/usr/bin/time is needed (Debian: apt-get install time)" >&2; exit 1; }

DB="${IMPORT_DATABASE_URL:-sqlite://$DIR/cashbackd.db}"
STORE="$DIR/plugin-store"
cbd() { "$BIN" --database-url "$DB" --plugin-store "$STORE" "$@"; }

cbd migrate >/dev/null
cbd merchant add shop --name Shop --reward-delay-days 0 \
  --rule "$PLUGINS/flat_rate.wasm" --rule-config '{"rate_bps": 800}' >/dev/null
cbd network add net --name Net --adapter "$PLUGINS/csv_report.wasm" --auth none --config \
  '{"columns": {"transaction_id": "tx", "click_id": "click", "amount": "sale", "commission": "comm",
    "state": "status", "event_time": "date", "line_sku": "sku"},
    "states": {"pending": "PENDING"}, "default_currency": "EUR"}' >/dev/null
cbd link add sale --merchant shop --network net --url 'https://shop.example/?ref={click_id}' >/dev/null

# The shoppers' clicks, through the public click URL of a live server.
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
# start_serve LOG [ENV=VALUE...]: `serve` on $PORT in the background (SERVE is its pid),
# once it answers. The binary itself, not the `cbd` function: `$!` of a function is the
# subshell's, and killing that left the server running beside the import.
start_serve() {
  local log=$1
  shift
  env CASHBACKD_INGRESS_RATE_LIMIT=false "$@" "$BIN" --database-url "$DB" --plugin-store "$STORE" \
    serve --listen "127.0.0.1:$PORT" 2>"$log" &
  SERVE=$!
  trap 'kill "$SERVE" 2>/dev/null || true' EXIT
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
    sleep 0.2
  done
}
start_serve "$DIR/serve.log"
: >"$DIR/clicks.txt"
for u in $(seq 1 "$SHOPPERS"); do
  curl -s -o /dev/null -w '%{redirect_url}\n' "http://127.0.0.1:$PORT/c/sale?user=shopper-$u" \
    | sed -n 's/.*ref=\([^&]*\).*/\1/p' >>"$DIR/clicks.txt"
done
kill "$SERVE"; wait "$SERVE" 2>/dev/null || true
trap - EXIT
[ "$(wc -l <"$DIR/clicks.txt")" -eq "$SHOPPERS" ] || { echo "clicks missing: see $DIR/serve.log" >&2; exit 1; }

python3 - "$DIR/clicks.txt" "$ROWS" "$DIR/report.csv" <<'EOF'
import sys
clicks = open(sys.argv[1]).read().split()
rows, out = int(sys.argv[2]), open(sys.argv[3], "w")
out.write("tx,click,sale,comm,status,date,sku\n")
for k in range(rows):
    out.write(f"T{k},{clicks[k % len(clicks)]},100.00,8.00,pending,2026-01-01,sku-{k % 7}\n")
EOF

measure() { # $1: label
  /usr/bin/time -v "$BIN" --database-url "$DB" --plugin-store "$STORE" import --network net "$DIR/report.csv" \
    >"$DIR/$1.out" 2>"$DIR/$1.time" || { cat "$DIR/$1.out" "$DIR/$1.time" >&2; exit 1; }
  python3 - "$1" "$ROWS" "$DIR/$1.out" "$DIR/$1.time" <<'EOF'
import sys
label, rows, out, time = sys.argv[1], int(sys.argv[2]), open(sys.argv[3]).read(), open(sys.argv[4]).read()
def field(name):
    return next(l.split(": ", 1)[1].strip() for l in time.splitlines() if l.strip().startswith(name))
wall = field("Elapsed (wall clock) time")
secs = 0.0
for part in wall.split(":"):
    secs = secs * 60 + float(part)
rss_mib = int(field("Maximum resident set size")) / 1024
summary = out.splitlines()[0] if out else "(no output)"
print(f"{label}: {rows} rows in {secs:.1f} s = {rows / secs:.0f} rows/s; peak RSS {rss_mib:.0f} MiB; {summary}")
EOF
}
echo "binary: $BIN (modified $(date -u -r "$BIN" +%FT%TZ)); database: ${DB%%:*}; work directory: $DIR"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
measure new-rows
measure again

# Through the admin API: the server's peak RSS once it is up, and after the upload.
TOKEN="$(cbd token create bench --scope write 2>/dev/null)"
SIZE="$(stat -c %s "$DIR/report.csv")"
start_serve "$DIR/serve-upload.log" CASHBACKD_HTTP_MAX_IMPORT_BYTES="$((SIZE + 1))"
hwm() { awk '/VmHWM/ {printf "%.0f MiB", $2 / 1024}' "/proc/$SERVE/status"; }
BEFORE="$(hwm)"
START="$(date +%s.%N)"
curl -sS -o "$DIR/upload.json" -w '%{http_code}' -H "Authorization: Bearer $TOKEN" -H 'Content-Type: text/csv' \
  --data-binary @"$DIR/report.csv" "http://127.0.0.1:$PORT/api/v1/networks/net/imports?name=report.csv" >"$DIR/upload.status"
END="$(date +%s.%N)"
echo "upload: $ROWS rows ($SIZE bytes) in $(python3 -c "print(f'{$END - $START:.1f}')") s, HTTP $(cat "$DIR/upload.status"); \
server peak RSS $BEFORE once up, $(hwm) after; $(head -c 200 "$DIR/upload.json")"
kill "$SERVE"; wait "$SERVE" 2>/dev/null || true
trap - EXIT
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

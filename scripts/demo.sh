#!/usr/bin/env bash
# Builds the plugins it uses and runs `cashbackd demo`: cashbackd on a fresh SQLite file
# (.cashbackd/demo.db) with merchants, networks, a tracked link, clicks and postbacks sent
# through its own HTTP server, orders imported from a network's API and from a report file
# (the Delays page), and a partner receiving callbacks (the Deliveries page); it keeps
# serving on 127.0.0.1:8080 until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/build-plugins.sh flat-rate rate-table generic-s2s json-api csv-report
exec cargo run --locked -q -p cashbackd -- demo "$@"

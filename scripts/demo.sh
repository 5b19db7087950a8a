#!/usr/bin/env bash
# Builds the plugins it uses and runs `cashbackd demo`: cashbackd on a fresh SQLite file
# (.cashbackd/demo.db) with a merchant, a network, a tracked link, and clicks and postbacks
# sent through its own HTTP server; it keeps serving on 127.0.0.1:8080 until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/build-plugins.sh flat-rate generic-s2s
exec cargo run --locked -q -p cashbackd -- demo "$@"

#!/usr/bin/env bash
# Builds the plugins and runs `cashbackd demo`: the first-party rule plugin evaluating
# sample orders inside the sandbox.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/build-plugins.sh flat-rate
exec cargo run --locked -q -p cashbackd -- demo "$@"

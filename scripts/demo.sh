#!/usr/bin/env bash
# Builds p2pcall and runs its demo: an in-process relay and two peers on loopback that
# register, see each other, signal, connect end to end (relay path, then direct), ping and
# stream data. Extra arguments go to `p2pcall demo` (e.g. --json, --bytes N).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo run --release --locked -q -p p2pcall -- demo "$@"

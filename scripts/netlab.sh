#!/usr/bin/env bash
# The NAT lab measurement (minutes; needs root): every NAT pair at 0 and 50 ms RTT, and 20
# tries of cone x symmetric. Prints a markdown table. The quick lab checks run in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
cargo build --bin p2pcall
cargo test -p p2pcall-netlab --test lab -- --ignored --nocapture measure_table

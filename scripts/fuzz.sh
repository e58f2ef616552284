#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS (default 5). For a long session:
#   scripts/fuzz.sh 600
# cargo-fuzz needs unstable rustc flags (sanitizers); RUSTC_BOOTSTRAP lets the stable
# toolchain accept them, since no nightly toolchain can be installed on our machines.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-5}"
export RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/../target}/fuzz"
cargo fuzz build
for t in $(cargo fuzz list); do
  out=$(cargo fuzz run "$t" -- -max_total_time="$secs" 2>&1) || { echo "$out" | tail -40; echo "fuzz target $t FAILED"; exit 1; }
  echo "fuzz $t: $(echo "$out" | grep -E '^Done' | tail -1)"
done

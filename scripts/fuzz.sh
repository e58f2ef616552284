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
# Targets run side by side, one per core (each fuzzer is single-threaded).
jobs="${CARGO_BUILD_JOBS:-$(nproc)}"
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
fail=0
run_batch() {
  for t in "$@"; do
    cargo fuzz run "$t" -- -max_total_time="$secs" >"$logs/$t" 2>&1 &
    pids+=("$!:$t")
  done
  for p in "${pids[@]}"; do
    t=${p#*:}
    if wait "${p%%:*}"; then
      echo "fuzz $t: $(grep -E '^Done' "$logs/$t" | tail -1)"
    else
      tail -40 "$logs/$t"; echo "fuzz target $t FAILED"; fail=1
    fi
  done
  pids=()
}
pids=()
batch=()
for t in $(cargo fuzz list); do
  batch+=("$t")
  if ((${#batch[@]} >= jobs)); then run_batch "${batch[@]}"; batch=(); fi
done
if ((${#batch[@]})); then run_batch "${batch[@]}"; fi
exit "$fail"

#!/usr/bin/env bash
# Everything CI runs: setup, formatting, lints, a short fuzz run of every wire-format
# decoder, and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}" CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
scripts/fuzz.sh "${FUZZ_SECONDS:-5}"
cargo nextest run --workspace --locked --profile ci

#!/usr/bin/env bash
# Everything CI runs: setup, formatting, lints, a short fuzz run of every wire-format
# decoder, and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}" CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
cargo fmt --all -- --check
scripts/module-cycles.py
scripts/long-functions.py

# Clippy, as `cargo clippy --workspace --all-targets -- -D warnings`, in the one build the tests
# need. `cargo clippy` is `cargo check` with clippy-driver as the workspace's rustc wrapper; run
# under `cargo build` the same driver reports the same lints and also generates the code, so the
# dependencies are compiled once instead of twice (a check build, then the real one): on 2
# cores that saves about 5 minutes. The tests below build with the same wrapper, so they reuse
# this build. P2PCALL_CLIPPY=check runs the plain `cargo clippy` first instead.
if [ "${P2PCALL_CLIPPY:-build}" = check ]; then
  cargo clippy --workspace --all-targets --locked -- -D warnings
fi
export RUSTC_WORKSPACE_WRAPPER=clippy-driver CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
cargo build --workspace --all-targets --locked

# The fuzz targets live in their own workspace with sanitizer flags: plain rustc there.
env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS scripts/fuzz.sh "${FUZZ_SECONDS:-5}"
cargo nextest run --workspace --locked --profile ci

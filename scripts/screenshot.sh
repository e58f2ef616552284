#!/usr/bin/env bash
# Renders the desktop app's main window during a call under Xvfb with software GL and saves
# it: scripts/screenshot.sh [OUT.png [--invite]]  (default: target/p2pcall-call.png; --invite:
# the invitation window with our ticket and its QR code)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
out="${1:-target/p2pcall-call.png}"
display=":$((90 + RANDOM % 100))"
Xvfb "$display" -screen 0 1280x900x24 -nolisten tcp &
xvfb=$!
trap 'kill $xvfb 2>/dev/null || true' EXIT
sleep 1
DISPLAY="$display" LIBGL_ALWAYS_SOFTWARE=1 WAYLAND_DISPLAY= \
  cargo run --locked -q -p p2pcall-app --example screenshot -- "$out" "${@:2}"

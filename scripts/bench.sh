#!/usr/bin/env bash
# Benchmarks (not part of CI). Each prints its figures beside a baseline measured in the
# same run.
#   scripts/bench.sh relay-forward    [--pairs N] [--secs S]
#   scripts/bench.sh relay-capacity   [--peers N] [--subscribers S] [--park]
#   scripts/bench.sh cluster-presence [--peers N] [--relays R] [--changes N]  (nats-server)
#   scripts/bench.sh daemon           [--peers N] [--calls N] [--changes N]
#   scripts/bench.sh video-feed       [--width W] [--height H]
#   scripts/bench.sh group-call       (a call of four, and a fourth joining a call of three)
#   scripts/bench.sh renamer          [--subscribers N] [--secs S]
#   scripts/bench.sh probe-flood
#   scripts/bench.sh p2p-throughput   [--mib N]
#   scripts/bench.sh codec-speed      [--frames N]
#   scripts/bench.sh file-transfer    [--large-mib N] [--small N] [--small-kib N] [--dir D]
#   scripts/bench.sh screen           [--secs S] [--fps F] [--kbps K]  (Xvfb 1080p60)
#   scripts/bench.sh call-quality     (root: NAT lab; CALL_SECS=30 per condition)
#   scripts/bench.sh rate-steps       (root: NAT lab; tbf steps 1 -> 2.5 -> 0.6 -> 1 Mbit/s)
#   scripts/bench.sh webrtc-compare   (root: NAT lab; the same steps, RFC 8867 5.1's 40/20/20/20 s,
#                                      a Chromium WebRTC call then ours, side by side; ~4 min;
#                                      installs chromium and ffmpeg: scripts/setup.sh --bench)
#   scripts/bench.sh rate-seeds       (virtual clock: RFC 8867 5.1 runs over SEEDS=6 seeds)
#   scripts/bench.sh reconnect        (root: SOAK_RECONNECTS=1000 one-shot commands against a
#                                      listener on a multi-homed host; failures, connect p50/p99)
#   scripts/bench.sh resume           (root: NAT lab; RESUME_MIB=1024 interrupted 5 ways and
#                                      resumed, direct and relayed; bytes sent again)
#   scripts/bench.sh all
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked -q -p p2pcall -p p2pcall-bench
# Many concurrent QUIC sessions from one process need more than the default 1024 fds only
# if sockets are per session; raise the soft limit anyway when allowed.
ulimit -n 65536 2>/dev/null || true
bench=target/release/p2pcall-bench
if [ "${1:-}" = call-quality ]; then
  exec cargo test --release --locked -q -p p2pcall-netlab --test call_quality -- --ignored --nocapture
fi
if [ "${1:-}" = rate-steps ]; then
  exec cargo test --release --locked -q -p p2pcall-netlab --test rate_steps -- --ignored --nocapture
fi
if [ "${1:-}" = webrtc-compare ]; then
  scripts/setup.sh --bench
  exec cargo test --release --locked -q -p p2pcall-netlab --test webrtc_compare -- --ignored --nocapture
fi
if [ "${1:-}" = reconnect ]; then
  exec cargo test --release --locked -q -p p2pcall-netlab --test reconnect -- --ignored --nocapture
fi
if [ "${1:-}" = resume ]; then
  exec cargo test --release --locked -q -p p2pcall-netlab --test resume -- --ignored --nocapture
fi
if [ "${1:-}" = rate-seeds ]; then
  exec cargo test --release --locked -q -p p2pcall-sim --test rate_adaptation -- --ignored --nocapture rfc8867_5_1_over_seeds
fi
if [ "${1:-all}" = all ]; then
  "$bench" relay-forward
  "$bench" relay-capacity
  "$bench" cluster-presence
  "$bench" daemon
  "$bench" video-feed
  "$bench" group-call
  "$bench" renamer
  "$bench" probe-flood
  "$bench" p2p-throughput
  "$bench" file-transfer
  "$bench" codec-speed
  "$bench" screen
  cargo test --release --locked -q -p p2pcall-netlab --test call_quality -- --ignored --nocapture
  cargo test --release --locked -q -p p2pcall-netlab --test rate_steps -- --ignored --nocapture
  cargo test --release --locked -q -p p2pcall-netlab --test reconnect -- --ignored --nocapture
  cargo test --release --locked -q -p p2pcall-netlab --test resume -- --ignored --nocapture
else
  exec "$bench" "$@"
fi

#!/usr/bin/env bash
# Installs what building and testing p2pcall needs on Debian/Ubuntu, and only what is missing.
# Idempotent: a second run installs nothing.
#   scripts/setup.sh         build dependencies (for `cargo build` / the demo)
#   scripts/setup.sh --dev   also the test tools (cargo-nextest, cargo-fuzz)
#   scripts/setup.sh --bench what --dev installs, and the benchmarks' peers (Chromium, ffmpeg)
set -euo pipefail

# Debian packages, with the reason each is needed.
APT_PACKAGES=(
  gcc        # ring (TLS crypto) compiles C and assembly
  libc6-dev  # headers for the same
  g++        # openh264 (H264 codec) is C++, built from source by the openh264 crate
  nasm       # openh264's assembly: ~3x faster encoding (1080p real time needs it)
  cmake      # the opus crate builds its own static libopus with cmake
  libasound2-dev  # cpal (microphone and speaker) talks to ALSA
  libclang-dev    # v4l (cameras) generates its V4L2 bindings with bindgen
  xvfb            # the screen-sharing tests (crates/screen) start their own virtual X server
  pkg-config      # finds libwayland-client for the next one
  libwayland-dev  # the desktop app's window (winit) on Wayland, and its screen-reader support
  mold            # fast linker (scripts/link-cc): the test binaries and the app link in seconds
)

# The NAT lab (crates/netlab, run by the tests as root): namespaces, NAT routers, impairments.
LAB_PACKAGES=(
  iproute2   # ip netns, veth, tc tbf
  nftables   # NAT routers (masquerade, masquerade random)
  iptables   # NFQUEUE target for the lab's userspace delayer
  conntrack  # shows NAT mappings when a lab test fails
)
dev=""
if [ "${1:-}" = "--dev" ] || [ "${1:-}" = "--bench" ]; then
  dev=1
fi
if [ -n "$dev" ]; then
  APT_PACKAGES+=(python3)  # scripts/module-cycles.py: no import cycle inside any crate
  APT_PACKAGES+=(nats-server)  # the relay cluster tests start their own NATS servers
  if [ "$(id -u)" = 0 ]; then
    APT_PACKAGES+=("${LAB_PACKAGES[@]}")
  else
    echo "setup: not root, so the NAT lab packages are not installed and the lab tests will skip"
  fi
fi
if [ "${1:-}" = "--bench" ]; then
  # scripts/bench.sh webrtc-compare (crates/netlab/tests/webrtc_compare.rs):
  APT_PACKAGES+=(chromium)  # the WebRTC call measured beside ours, headless in the lab
  APT_PACKAGES+=(ffmpeg)    # makes the y4m clip both calls send as their camera
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: Rust is not installed. Install it from https://rustup.rs, then run this again." >&2
  exit 1
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  cmd=(apt-get install -y -qq --no-install-recommends "${missing[@]}")
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive "${cmd[@]}"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    echo "setup: installing ${missing[*]} (sudo)"
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive "${cmd[@]}"
  else
    echo "error: missing system packages: ${missing[*]}" >&2
    echo "run: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi

if [ -n "$dev" ]; then
  command -v cargo-nextest >/dev/null 2>&1 || cargo install cargo-nextest --locked
  command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
fi

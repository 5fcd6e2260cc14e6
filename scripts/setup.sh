#!/usr/bin/env bash
# Installs everything polydev needs on a Debian 12 host and builds it:
#   1. Debian packages (QEMU, mmdebstrap, the kernel source and its build
#      tools, PostgreSQL for the tests, iproute2, e2fsprogs),
#   2. the system account QEMU drops to once it has opened a VM's files
#      (`polydev-vmm`: no home, no login shell),
#   3. the `polydev`, `polydev-agent` and `polydev-streamer` binaries (cargo,
#      release profile),
#   4. the guest kernel (5-15 minutes on 2 cores the first time, then cached),
#   5. the golden images: minimal (under 2 minutes the first time), cli and
#      browser (3-5 minutes each the first time: Debian packages, Chromium and
#      the three CLIs from the npm registry), then cached.
# Kernel and images are cached under $POLYDEV_CACHE_DIR (default
# /var/cache/polydev). Run as root. Safe to run again: every step is skipped
# or cached when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  qemu-system-x86 mmdebstrap debian-archive-keyring e2fsprogs iproute2 nftables
  linux-source-6.1 build-essential bc bison flex libelf-dev libssl-dev cpio xz-utils kmod
  postgresql ca-certificates
  # The screen streamer (VP8, linked statically) and its tests' X server.
  libvpx-dev xvfb
  # The live view: noVNC served by the controller; Chromium and Node.js for
  # the browser tests (playwright-core drives Debian's Chromium).
  novnc chromium nodejs
  # The runs test: a TLS face for the model stand-in.
  socat
  # `polydev bench --api`: the load generator.
  wrk
)

step() { printf '\n==> %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: run as root (VMs need network namespaces, TAP devices and mmdebstrap)" >&2
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
# npm: Debian's package, unless the installed Node.js brings its own.
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ "${#missing[@]}" -gt 0 ]; then
  step "installing Debian packages: ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  step "Debian packages already installed"
fi

if id -u polydev-vmm >/dev/null 2>&1; then
  step "account polydev-vmm already exists"
else
  step "creating the account QEMU runs as: polydev-vmm"
  useradd --system --no-create-home --shell /usr/sbin/nologin polydev-vmm
fi

step "building polydev, polydev-agent and polydev-streamer (cargo, release)"
cargo build --release -p polydev -p polydev-agent -p polydev-stream

step "guest kernel"
./target/release/polydev kernel build >/dev/null

for flavour in minimal cli browser; do
  step "$flavour guest image"
  ./target/release/polydev image build "$flavour" >/dev/null
done

step "setup done: ./target/release/polydev doctor"
./target/release/polydev doctor || true

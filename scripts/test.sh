#!/bin/bash
# Runs rqemu's whole test suite on a fresh Debian machine: installs what the tests need (as root:
# the reference QEMU 10.0.2 and SeaBIOS through install-reference-qemu.sh, and the Debian
# packages below), then `cargo test --workspace --release`, then (without arguments) every fuzz
# target for a minute (scripts/fuzz.sh 1; RQEMU_FUZZ_MINUTES sets the minutes, 0 skips). Extra
# arguments go to cargo test.
# qemu-iotests, QEMU's own suite, is fetched into a cache on first use (scripts/fetch-iotests.sh).
#
# Tests that need KVM or the reference QEMU skip with a reason when those are missing;
# RQEMU_REQUIRE_KVM=1 / RQEMU_REQUIRE_QEMU=1 (set by .ci/run) make them fail instead.
set -euo pipefail
cd "$(dirname "$0")/.."

# ---- Debian packages the tests need (besides QEMU and SeaBIOS). Add yours here, one per line,
# ---- with the tests that use them.
PACKAGES=(
  nasm        # assembles the test guests (tests/machine_*.rs, tests/*_guest.rs)
  fio         # the guest and block benchmarks' load
  python3     # qemu-iotests' harness (tests/iotests.rs)
  xz-utils    # unpacks the qemu-iotests source (scripts/fetch-iotests.sh)
  bzip2       # unpacks the suite's sample images (vhdx/parallels tests, scripts/fuzz.sh seeds)
  cryptsetup  # LUKS interop: cryptsetup reads our images, we read its
  nbdkit      # NBD interop: another NBD server
  libnbd-bin  # NBD interop: nbdinfo, nbdcopy and nbdfuse (bookworm has no separate nbdfuse)
  gnutls-bin  # NBD over TLS: certtool makes the test certificates
  busybox-static # the Linux NBD guest's initramfs (scripts/linux-client/, tests/nbd_linux_client.rs)
  e2fsprogs   #   its mke2fs and e2fsck
  nbd-client  #   the guest kernel's NBD client, set up by nbd-client
  ceph-mon    # rbd tests: the single-node cluster scripts/ceph-micro.sh starts (tests/ceph/)
  ceph-osd    #   its memstore OSD
  ceph-common #   the rbd and ceph command-line tools
  librbd1     #   loaded at run time by the rbd protocol driver
)

missing_prerequisites() {
  qemu-img --version 2>/dev/null | grep -q ' version 10\.0\.' || return 0
  command -v qemu-system-x86_64 >/dev/null || return 0
  [ -f /usr/share/seabios/bios-256k.bin ] || return 0
  dpkg-query -W -f='${Status}\n' qemu-block-extra 2>/dev/null | grep -q '^install ok installed' || return 0
  local p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' || return 0
  done
  return 1
}

if missing_prerequisites; then
  if [ "$(id -u)" = 0 ]; then
    echo "test.sh: installing the reference QEMU, SeaBIOS and: ${PACKAGES[*]}"
    ./scripts/install-reference-qemu.sh "${PACKAGES[@]}"
  else
    echo "test.sh: prerequisites missing and not root, cannot install them; tests needing them will skip"
  fi
fi

cargo test --workspace --release "$@"

# ---- Fuzzing (issue 17): every cargo-fuzz target in fuzz/ for RQEMU_FUZZ_MINUTES minutes
# ---- (default 1; 0 skips), one after another over one build (scripts/fuzz.sh). Only with the
# ---- whole suite (no arguments). The crash-state explorer's sample is tests/crash_explore.rs.
FUZZ_MINUTES=${RQEMU_FUZZ_MINUTES:-1}
if [ $# -gt 0 ]; then
  echo "test.sh: fuzzing skipped: a partial run (arguments: $*)"
  exit 0
fi
if [ "$FUZZ_MINUTES" = 0 ]; then
  echo "test.sh: fuzzing skipped: RQEMU_FUZZ_MINUTES=0"
  exit 0
fi
if ! cargo +nightly --version >/dev/null 2>&1; then
  if command -v rustup >/dev/null; then
    echo "test.sh: installing the nightly toolchain for cargo-fuzz"
    rustup toolchain install nightly --profile minimal || true
  fi
fi
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "test.sh: fuzzing skipped: no nightly toolchain (cargo-fuzz needs one) and none could be installed"
  exit 0
fi
if ! command -v cargo-fuzz >/dev/null; then
  echo "test.sh: installing cargo-fuzz"
  cargo install cargo-fuzz --locked || {
    echo "test.sh: fuzzing skipped: cargo-fuzz could not be installed"
    exit 0
  }
fi
# A finding (exit 1) or a target that does not build (exit 2) fails the run.
./scripts/fuzz.sh "$FUZZ_MINUTES"

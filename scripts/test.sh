#!/bin/bash
# Runs rqemu's whole test suite on a fresh Debian machine: installs what the tests need
# (the reference QEMU 10.0.2 and SeaBIOS through the shared script, nasm for the test guests),
# then `cargo test --workspace --release`. Extra arguments go to cargo test.
#
# Tests that need KVM or the reference QEMU skip with a reason when those are missing;
# RQEMU_REQUIRE_KVM=1 / RQEMU_REQUIRE_QEMU=1 (set by .ci/run) make them fail instead.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${RQEMU_SHARED:-$(pwd)/../shared}

have_reference() {
  command -v qemu-system-x86_64 >/dev/null && command -v nasm >/dev/null && command -v fio >/dev/null &&
    qemu-img --version 2>/dev/null | grep -q 'version 10\.' &&
    [ -f /usr/share/seabios/bios-256k.bin ]
}

if ! have_reference; then
  if [ "$(id -u)" = 0 ] && [ -x "$SHARED/tools/install-reference-qemu.sh" ]; then
    echo "test.sh: installing the reference QEMU, SeaBIOS, nasm and fio"
    "$SHARED/tools/install-reference-qemu.sh" nasm fio
  else
    echo "test.sh: reference QEMU/nasm/fio missing and cannot install them (need root and $SHARED); tests needing them will skip"
  fi
fi

export RQEMU_SHARED="$SHARED"
exec cargo test --workspace --release "$@"

#!/bin/bash
# Runs qemu-iotests (QEMU 10.0.2's conformance suite, fetched by fetch-iotests.sh) against a
# qemu-img / qemu-io compatible pair of programs.
#
#   scripts/iotests.sh [-FORMAT] [-PROTOCOL] [--img P] [--io P] [--nbd P] [--system P]
#                      [--tools-only] [TEST...]
#
# -FORMAT: -raw (the suite's default), -qcow2, or any other format the suite knows; -PROTOCOL: -file
# (default), -nbd, ... The programs default to the reference QEMU in /usr/bin; --img/--io/--nbd/
# --system put others in their place (e.g. target/release/rqemu-img). --tools-only hides every
# system emulator and storage daemon, so tests that need one fail or skip. No TEST: the whole
# suite. Environment: IOTESTS_JOBS (the suite's -j, default the number of CPUs), IOTESTS_WORK
# (scratch space, default /var/tmp/qemu-iotests-work; a failing test leaves its diff as
# scratch/<fmt>-<proto>-<test>/<test>.out.bad), IOTESTS_CACHE (see fetch-iotests.sh).
# Output: the suite's own report, ending in "Passed all N iotests" or "Failures: ...".
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
IMG=/usr/bin/qemu-img IO=/usr/bin/qemu-io NBD=/usr/bin/qemu-nbd
SYSTEM=/usr/bin/qemu-system-x86_64 DAEMON=/usr/bin/qemu-storage-daemon
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --img) IMG=$(readlink -f "$2"); shift ;;
    --io) IO=$(readlink -f "$2"); shift ;;
    --nbd) NBD=$(readlink -f "$2"); shift ;;
    --system) SYSTEM=$(readlink -f "$2"); shift ;;
    --tools-only) SYSTEM=none DAEMON=none ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) ARGS+=("$1") ;;
  esac
  shift
done
SUITE=$("$HERE/fetch-iotests.sh")
WORK=${IOTESTS_WORK:-/var/tmp/qemu-iotests-work}
mkdir -p "$WORK/bin" "$WORK/scratch" "$WORK/sock"

# The harness calls GNU sed by the name gsed.
ln -sf "$(command -v sed)" "$WORK/bin/gsed"
# The harness asks the system emulator for its machine types even for tools-only tests: without
# one, a stand-in that names the default PC machine lets those run (and the others fail).
if [ ! -x "$SYSTEM" ]; then
  SYSTEM=$WORK/bin/no-system-emulator
  printf '#!/bin/sh\necho "Supported machines are:"\necho "pc  Standard PC (default)"\n' > "$SYSTEM"
  chmod +x "$SYSTEM"
fi
[ -x "$DAEMON" ] || DAEMON=$SYSTEM
[ -x "$NBD" ] || NBD=$SYSTEM

export PATH="$WORK/bin:$PATH"
export QEMU_PROG=$SYSTEM QEMU_IMG_PROG=$IMG QEMU_IO_PROG=$IO QEMU_NBD_PROG=$NBD QSD_PROG=$DAEMON
export TEST_DIR=$WORK/scratch SOCK_DIR=$WORK/sock
cd "$SUITE"
exec python3 ./check -j "${IOTESTS_JOBS:-$(nproc)}" "${ARGS[@]}"

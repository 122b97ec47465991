#!/usr/bin/env bash
# virtio-blk benchmark: the same guest I/O loop under rqemu and under QEMU, in one run.
#
# The guest is fixtures/guests/virtio-test.asm assembled with -DBENCH=N: SeaBIOS boots it from
# the virtio disk, it initialises the device itself and then issues N reads of 4 KiB in
# batches of 32 in flight (kick, poll the used ring in memory, read the ISR), walking through
# the first 64 MiB of the disk, and checks every status. It prints "BENCH START" and
# "BENCH END" on COM1; the time between the two lines as this script sees them is the figure
# (boot and firmware are left out). Both emulators get the same image, RAM, drive options and
# device (`-device virtio-blk-pci,drive=d0` + TRANSPORT); runs alternate between them so
# both see the same background load; the script prints the medians and the ratio ours/QEMU.
#
# Usage: scripts/bench-virtio.sh [RUNS [N [FORMAT]]]   (defaults 5, 65536, raw)
# env: RQEMU=path, QEMU=path, DRIVE_OPTS=",aio=io_uring" (appended to both -drive options),
#      TRANSPORT=",disable-modern=on" (default; ",disable-legacy=on" for the modern interface)
set -euo pipefail

RUNS=${1:-5}
N=${2:-65536}
FORMAT=${3:-raw}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RQEMU=${RQEMU:-${CARGO_TARGET_DIR:-$ROOT/target}/release/rqemu}
QEMU=${QEMU:-/usr/bin/qemu-system-x86_64}
DRIVE_OPTS=${DRIVE_OPTS:-}
TRANSPORT=${TRANSPORT:-,disable-modern=on}

for f in "$RQEMU" "$QEMU"; do
    [ -x "$f" ] || { echo "bench-virtio: missing $f (build with: cargo build --release)" >&2; exit 1; }
done
command -v nasm >/dev/null || { echo "bench-virtio: nasm is needed" >&2; exit 1; }
[ -w /dev/kvm ] || { echo "bench-virtio: /dev/kvm is not usable" >&2; exit 1; }
[ $((N % 32)) -eq 0 ] && [ "$N" -gt 0 ] || { echo "bench-virtio: N must be a multiple of 32" >&2; exit 1; }

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

nasm -f bin -DBENCH="$N" -o "$TMP/guest.bin" "$ROOT/fixtures/guests/virtio-test.asm"
# 64 MiB of data (not holes, so reads copy real page-cache pages), the program in front.
head -c $((64 << 20)) /dev/urandom > "$TMP/disk.raw"
dd if="$TMP/guest.bin" of="$TMP/disk.raw" conv=notrunc status=none
IMAGE=$TMP/disk.raw
if [ "$FORMAT" != raw ]; then
    qemu-img convert -f raw -O "$FORMAT" "$TMP/disk.raw" "$TMP/disk.$FORMAT"
    IMAGE=$TMP/disk.$FORMAT
fi

ARGS=(-m 128 -nographic -no-reboot -net none
      -drive "file=$IMAGE,format=$FORMAT,if=none,id=d0$DRIVE_OPTS"
      -device "virtio-blk-pci,drive=d0$TRANSPORT")

# One run: prints the seconds between the guest's BENCH START and BENCH END lines, and the
# CPU seconds the emulator spent in that time outside the vCPU (every thread but the busiest,
# which is the vCPU spinning on the used ring): what its device model and I/O cost.
one_run() {
    python3 - "$@" <<'EOF'
import os, subprocess, sys, time
p = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                     stderr=subprocess.DEVNULL)
tick = os.sysconf("SC_CLK_TCK")
def cpu():
    per_thread = {}
    for t in os.listdir(f"/proc/{p.pid}/task"):
        try:
            f = open(f"/proc/{p.pid}/task/{t}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        per_thread[t] = (int(f[11]) + int(f[12])) / tick
    return per_thread
start = end = None
failed = False
for line in p.stdout:
    if b"BENCH START" in line:
        start, cpu0 = time.monotonic(), cpu()
    elif b"BENCH END" in line:
        end, cpu1 = time.monotonic(), cpu()
    elif b"FAIL" in line:
        failed = True
p.wait()
if start is None or end is None or failed:
    sys.exit(f"bench-virtio: {sys.argv[1]} did not complete the loop")
used = sorted(c - cpu0.get(t, 0) for t, c in cpu1.items())
print(f"{end - start:.6f} {sum(used[:-1]):.3f}")
EOF
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

for _ in $(seq "$RUNS"); do
    one_run "$RQEMU" "${ARGS[@]}" >> "$TMP/rqemu.out"
    one_run "$QEMU" -M pc -enable-kvm "${ARGS[@]}" >> "$TMP/qemu.out"
done
for e in rqemu qemu; do
    cut -d' ' -f1 "$TMP/$e.out" > "$TMP/$e.t"
    cut -d' ' -f2 "$TMP/$e.out" > "$TMP/$e.cpu"
done

rq=$(median < "$TMP/rqemu.t")
qm=$(median < "$TMP/qemu.t")
rqc=$(median < "$TMP/rqemu.cpu")
qmc=$(median < "$TMP/qemu.cpu")
echo "virtio-blk guest loop: $N x 4 KiB reads, depth 32, $FORMAT image, drive opts '${DRIVE_OPTS}'," \
     "device opts '${TRANSPORT}'"
printf '%-8s %10.3f s %12.0f IOPS   runs: %s\n' rqemu "$rq" "$(echo "$N / $rq" | bc -l)" "$(tr '\n' ' ' < "$TMP/rqemu.t")"
printf '%-8s %10.3f s %12.0f IOPS   runs: %s\n' qemu "$qm" "$(echo "$N / $qm" | bc -l)" "$(tr '\n' ' ' < "$TMP/qemu.t")"
printf 'ratio ours/QEMU (time): %.3f\n' "$(echo "$rq / $qm" | bc -l)"
printf 'CPU outside the vCPU during the loop (medians): rqemu %.3f s (%.2f us/request), QEMU %.3f s (%.2f us/request), ratio %.3f\n' \
    "$rqc" "$(echo "$rqc * 1000000 / $N" | bc -l)" "$qmc" "$(echo "$qmc * 1000000 / $N" | bc -l)" \
    "$(echo "$rqc / $qmc" | bc -l)"
echo "(median of $RUNS interleaved runs each; $("$QEMU" --version | head -1))"

#!/usr/bin/env bash
# IDE PIO throughput benchmark: rqemu vs QEMU on the same raw image, in one run.
#
# The guest (fixtures/guests/ide-bench.asm, booted by SeaBIOS from the disk) reads MIB MiB
# with READ MULTIPLE EXT (128 sectors per command, 16 per DRQ block, `rep insw`), polling
# status with interrupts masked, and prints the TSC ticks the reads took. The ticks exclude
# boot and firmware, so the figure is the device path alone: port exits, the data port, the
# request to the block layer and its completion. Runs alternate between the emulators so that
# both see the same background load; the script prints the median ticks, MiB/s (from the
# host TSC frequency) and the ratio ours/QEMU (below 1.0: rqemu is faster).
#
#   QEMU: qemu-system-x86_64 -M pc -enable-kvm -nographic -no-reboot -m 64
#   rqemu: the same options (-M pc -enable-kvm are accepted and change nothing)
#
# Usage: scripts/bench-ide.sh [RUNS] [MIB]   (default 5 runs, 64 MiB)
#        (env: RQEMU=path, QEMU=path, BIOS=path, CACHE=writeback|none|..., AIO=threads|...)
set -euo pipefail

RUNS=${1:-5}
MIB=${2:-64}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RQEMU=${RQEMU:-${CARGO_TARGET_DIR:-$ROOT/target}/release/rqemu}
QEMU=${QEMU:-/usr/bin/qemu-system-x86_64}
BIOS=${BIOS:-/usr/share/seabios/bios-256k.bin}
DRIVE_OPTS=format=raw,if=ide,index=0,cache=${CACHE:-writeback},aio=${AIO:-threads}

for f in "$RQEMU" "$QEMU" "$BIOS"; do
    [ -e "$f" ] || { echo "bench-ide: missing $f (build with: cargo build --release)" >&2; exit 1; }
done
command -v nasm >/dev/null || { echo "bench-ide: nasm is missing" >&2; exit 1; }
[ -w /dev/kvm ] || { echo "bench-ide: /dev/kvm is not usable" >&2; exit 1; }

TMP=$(mktemp -d /var/tmp/bench-ide.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
nasm -f bin -w+all -I"$ROOT/fixtures/guests/" -DBENCH_MIB="$MIB" \
    -o "$TMP/bench.bin" "$ROOT/fixtures/guests/ide-bench.asm"
# A fully allocated image, so that both read real data from the page cache, not holes.
head -c $(((MIB + 1) << 20)) /dev/urandom > "$TMP/bench.raw"
dd if="$TMP/bench.bin" of="$TMP/bench.raw" conv=notrunc status=none

COMMON=(-M pc -enable-kvm -nographic -no-reboot -m 64 -bios "$BIOS"
    -drive "file=$TMP/bench.raw,$DRIVE_OPTS")

# One run: prints the guest's TSC ticks (decimal) and the wall seconds of the whole process.
one_run() {
    local start end out line
    start=$(date +%s.%N)
    out=$(timeout 300 "$@" "${COMMON[@]}" </dev/null 2>&1 | tr -d '\r')
    end=$(date +%s.%N)
    if ! grep -q "PASS ide-bench" <<<"$out"; then
        echo "bench-ide: no PASS from $1:" >&2
        tail -5 <<<"$out" >&2
        return 1
    fi
    line=$(grep -o 'tsc=0x[0-9A-Fa-f]*' <<<"$out" | head -1)
    echo "$((16#${line#tsc=0x})) $(echo "$end - $start" | bc -l)"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

for i in $(seq "$RUNS"); do
    for name in rqemu qemu; do
        case $name in
            rqemu) cmd=("$RQEMU") ;;
            qemu) cmd=("$QEMU") ;;
        esac
        read -r ticks wall < <(one_run "${cmd[@]}") || exit 1
        echo "$ticks" >> "$TMP/$name.t"
        echo "$wall" >> "$TMP/$name.w"
        printf 'run %d %-6s %14d ticks %8.3f s wall\n' "$i" "$name" "$ticks" "$wall"
    done
done

# The guest's TSC runs at the host's rate under KVM.
TSC_HZ=$(awk '/^cpu MHz/ {printf "%.0f\n", $4 * 1000000; exit}' /proc/cpuinfo)
row() {
    local t w
    t=$(median < "$TMP/$1.t")
    w=$(median < "$TMP/$1.w")
    printf '%-6s %14.0f ticks %10.1f MiB/s %8.3f s wall\n' "$1" "$t" \
        "$(echo "$MIB / ($t / $TSC_HZ)" | bc -l)" "$w"
}
echo "PIO read of $MIB MiB (READ MULTIPLE EXT, 16 sectors per DRQ block), median of $RUNS runs:"
row rqemu
row qemu
printf 'ratio rqemu/qemu (time): %.3f\n' \
    "$(echo "$(median < "$TMP/rqemu.t") / $(median < "$TMP/qemu.t")" | bc -l)"
echo "($("$QEMU" --version | head -1); drive $DRIVE_OPTS; TSC $((${TSC_HZ%.*} / 1000000)) MHz)"

#!/usr/bin/env bash
# Boot benchmark: SeaBIOS with no disk, rqemu vs QEMU, side by side.
#
# For each emulator it measures (median of RUNS runs):
#   - wall time from process start to SeaBIOS's "No bootable device" line on the serial console;
#   - peak RSS of the whole run (/usr/bin/time -v, "Maximum resident set size").
# and prints the ratios ours/QEMU. Both get the same BIOS, RAM, -nographic -no-reboot and
# -boot reboot-timeout=0 (so SeaBIOS reboots at once and -no-reboot ends the run). QEMU also
# gets -net none: its default NIC's iPXE ROM would otherwise try a network boot first.
#
# Usage: scripts/bench-boot.sh [RUNS]   (env: RQEMU=path, QEMU=path, BIOS=path)
set -euo pipefail

RUNS=${1:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RQEMU=${RQEMU:-${CARGO_TARGET_DIR:-$ROOT/target}/release/rqemu}
QEMU=${QEMU:-/usr/bin/qemu-system-x86_64}
BIOS=${BIOS:-/usr/share/seabios/bios-256k.bin}
COMMON=(-m 128 -nographic -no-reboot -bios "$BIOS" -boot reboot-timeout=0)

for f in "$RQEMU" "$QEMU" /usr/bin/time "$BIOS"; do
    [ -e "$f" ] || { echo "bench-boot: missing $f (build with: cargo build --release)" >&2; exit 1; }
done
[ -w /dev/kvm ] || { echo "bench-boot: /dev/kvm is not usable" >&2; exit 1; }

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# One run: prints "<seconds to the line> <peak RSS KiB>".
one_run() {
    local start line_at rss
    start=$(date +%s.%N)
    /usr/bin/time -v -o "$TMP/time" timeout 120 "$@" </dev/null 2>/dev/null |
        while IFS= read -r line; do
            if [[ $line == *"No bootable device"* && ! -e $TMP/seen ]]; then
                date +%s.%N > "$TMP/seen"
            fi
        done
    [ -e "$TMP/seen" ] || { echo "bench-boot: no 'No bootable device' from $1" >&2; exit 1; }
    line_at=$(cat "$TMP/seen"); rm -f "$TMP/seen"
    rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$TMP/time")
    echo "$(echo "$line_at - $start" | bc -l) $rss"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

measure() {
    local name=$1; shift
    : > "$TMP/$name.t"; : > "$TMP/$name.r"
    for _ in $(seq "$RUNS"); do
        read -r t r < <(one_run "$@")
        echo "$t" >> "$TMP/$name.t"; echo "$r" >> "$TMP/$name.r"
    done
    echo "$(median < "$TMP/$name.t") $(median < "$TMP/$name.r")"
}

read -r ours_t ours_r < <(measure rqemu "$RQEMU" "${COMMON[@]}")
read -r qemu_t qemu_r < <(measure qemu "$QEMU" -M pc -enable-kvm -net none "${COMMON[@]}")

printf '%-8s %22s %16s\n' "" "to 'No bootable device'" "peak RSS"
printf '%-8s %20.3f s %12d KiB\n' rqemu "$ours_t" "$ours_r"
printf '%-8s %20.3f s %12d KiB\n' qemu "$qemu_t" "$qemu_r"
printf '%-8s %22.2f %16.2f\n' ours/qemu "$(echo "$ours_t / $qemu_t" | bc -l)" "$(echo "$ours_r / $qemu_r" | bc -l)"
echo "(median of $RUNS runs each; $("$QEMU" --version | head -1))"

#!/usr/bin/env bash
# Boot benchmark: SeaBIOS with no disk, rqemu vs QEMU, side by side.
#
# For each emulator it measures (median of RUNS runs):
#   - wall time from process start to SeaBIOS's "No bootable device" line on the serial console;
#   - peak RSS of the whole run (/usr/bin/time -v, "Maximum resident set size").
# and prints the ratios ours/QEMU. All get the same BIOS, RAM, -nographic -no-reboot and
# -boot reboot-timeout=0 (so SeaBIOS reboots at once and -no-reboot ends the run). QEMU runs
# in two configurations:
#   qemu      -M pc -enable-kvm -net none: the default pc board (VGA, IDE CD-ROM, floppy),
#             minus the NIC whose iPXE ROM would first try a network boot;
#   qemu-nd   the same with -nodefaults -serial stdio: no VGA, CD-ROM or floppy drive, which is
#             closest to what rqemu has today (SeaBIOS probes fewer devices).
#
# Usage: scripts/bench-boot.sh [RUNS]  (default 5)   (env: RQEMU=path, QEMU=path, BIOS=path)
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
    [ -e "$TMP/seen" ] || { echo "bench-boot: no 'No bootable device' from $1" >&2; return; }
    line_at=$(cat "$TMP/seen"); rm -f "$TMP/seen"
    rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$TMP/time")
    echo "$(echo "$line_at - $start" | bc -l) $rss"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

QEMU_PC=(-M pc -enable-kvm -net none)
QEMU_ND=(-M pc -enable-kvm -nodefaults -serial stdio)

# Runs alternate between the emulators so that all see the same background load.
for _ in $(seq "$RUNS"); do
    for name in rqemu qemu qemu-nd; do
        case $name in
            rqemu) cmd=("$RQEMU") ;;
            qemu) cmd=("$QEMU" "${QEMU_PC[@]}") ;;
            qemu-nd) cmd=("$QEMU" "${QEMU_ND[@]}") ;;
        esac
        read -r t r < <(one_run "${cmd[@]}" "${COMMON[@]}")
        [ -n "${r:-}" ] || exit 1
        echo "$t" >> "$TMP/$name.t"; echo "$r" >> "$TMP/$name.r"
    done
done

row() { printf '%-13s %20.3f s %12d KiB\n' "$1" "$(median < "$TMP/$1.t")" "$(median < "$TMP/$1.r")"; }
ratio() {
    local t r
    t=$(echo "$(median < "$TMP/rqemu.t") / $(median < "$TMP/$1.t")" | bc -l)
    r=$(echo "$(median < "$TMP/rqemu.r") / $(median < "$TMP/$1.r")" | bc -l)
    printf '%-13s %22.2f %16.2f\n' "rqemu/$1" "$t" "$r"
}
printf '%-13s %22s %16s\n' "" "to 'No bootable device'" "peak RSS"
row rqemu; row qemu; row qemu-nd
ratio qemu; ratio qemu-nd
echo "(median of $RUNS runs each; $("$QEMU" --version | head -1))"

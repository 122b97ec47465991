#!/usr/bin/env bash
# CD-ROM boot benchmark: the ISO test guest (fixtures/guests/cdrom-test.asm), rqemu vs QEMU.
#
# For each emulator (median of RUNS runs, interleaved so both see the same load):
#   - wall time from process start to the guest's first "PASS" line (SeaBIOS has found the
#     ATAPI drive, read the El Torito catalog and loaded the boot image);
#   - wall time to the process's exit: the guest ran its ATAPI tests and powered the machine
#     off through ACPI (S5), which ends both emulators;
#   - peak RSS (/usr/bin/time -v).
# Both get the same ISO, BIOS, RAM and `-nographic -no-reboot -net none -cdrom`; QEMU also
# `-M pc -enable-kvm`. The ISO comes from the test suite's builder (tests/cdrom_guest.rs,
# which writes it to RQEMU_KEEP_ISO).
#
# Usage: scripts/bench-cdrom.sh [RUNS]  (default 5)   (env: RQEMU=path, QEMU=path, BIOS=path)
set -euo pipefail

RUNS=${1:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RQEMU=${RQEMU:-${CARGO_TARGET_DIR:-$ROOT/target}/release/rqemu}
QEMU=${QEMU:-/usr/bin/qemu-system-x86_64}
BIOS=${BIOS:-/usr/share/seabios/bios-256k.bin}

for f in "$RQEMU" "$QEMU" /usr/bin/time "$BIOS"; do
    [ -e "$f" ] || { echo "bench-cdrom: missing $f (build with: cargo build --release)" >&2; exit 1; }
done
[ -w /dev/kvm ] || { echo "bench-cdrom: /dev/kvm is not usable" >&2; exit 1; }

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
(cd "$ROOT" && RQEMU_KEEP_ISO="$TMP/test.iso" cargo test -q --release --test cdrom_guest \
    cdrom_guest_passes_and_powers_off_under_rqemu >/dev/null)
[ -s "$TMP/test.iso" ] || { echo "bench-cdrom: the test did not write the ISO" >&2; exit 1; }
COMMON=(-m 128 -nographic -no-reboot -net none -bios "$BIOS" -cdrom "$TMP/test.iso")

# One run: prints "<seconds to the first PASS> <seconds to exit> <peak RSS KiB>".
one_run() {
    local start pass_at end rss
    start=$(date +%s.%N)
    /usr/bin/time -v -o "$TMP/time" timeout 120 "$@" </dev/null 2>/dev/null |
        while IFS= read -r line; do
            if [[ $line == *"PASS "* && ! -e $TMP/seen ]]; then
                date +%s.%N > "$TMP/seen"
            fi
        done
    end=$(date +%s.%N)
    [ -e "$TMP/seen" ] || { echo "bench-cdrom: no PASS line from $1" >&2; return; }
    pass_at=$(cat "$TMP/seen"); rm -f "$TMP/seen"
    rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$TMP/time")
    echo "$(echo "$pass_at - $start" | bc -l) $(echo "$end - $start" | bc -l) $rss"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

for _ in $(seq "$RUNS"); do
    for name in rqemu qemu; do
        case $name in
            rqemu) cmd=("$RQEMU") ;;
            qemu) cmd=("$QEMU" -M pc -enable-kvm) ;;
        esac
        read -r p e r < <(one_run "${cmd[@]}" "${COMMON[@]}")
        [ -n "${r:-}" ] || exit 1
        echo "$p" >> "$TMP/$name.p"; echo "$e" >> "$TMP/$name.e"; echo "$r" >> "$TMP/$name.r"
    done
done

row() {
    printf '%-12s %14.3f s %14.3f s %12d KiB\n' "$1" "$(median < "$TMP/$1.p")" \
        "$(median < "$TMP/$1.e")" "$(median < "$TMP/$1.r")"
}
ratio() {
    local q
    q() { echo "$(median < "$TMP/rqemu.$1") / $(median < "$TMP/qemu.$1")" | bc -l; }
    printf '%-12s %16.2f %16.2f %16.2f\n' "rqemu/qemu" "$(q p)" "$(q e)" "$(q r)"
}
printf '%-12s %16s %16s %16s\n' "" "to first PASS" "to power-off" "peak RSS"
row rqemu; row qemu; ratio
echo "(median of $RUNS runs each; $("$QEMU" --version | head -1))"

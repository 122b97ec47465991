#!/bin/bash
# Image-format convert benchmark (issue #15): rqemu-img next to qemu-img on the same images,
# run alternately.
#
#   scripts/bench-convert.sh [RQEMU_IMG [QEMU_IMG]]
#
# Cases: convert of the 1 GiB "mixed data" raw image (data, written zeroes, holes; see
# scripts/bench-lib.sh) into each of vmdk, vhdx, vpc, vdi and qed, and out of each of them
# back into raw (sources made by qemu-img from the same raw image). Both tools run with
# their defaults otherwise (-m 8 parallel requests, -S 4k zero detection).
#
# Defaults: $CARGO_TARGET_DIR/release/rqemu-img (or target/release/rqemu-img) and
# /usr/bin/qemu-img. Env: BENCH_DIR (where the images go; must support O_DIRECT with
# CONVERT_CACHE=none, default /var/tmp), REPEAT (runs per case and tool, best kept; default
# 3), CONVERT_CACHE (the -t/-T mode, default none), FORMATS (default "vmdk vhdx vpc vdi qed").
# Output: one row per case: best wall-clock seconds, the CPU seconds (user + system) of that
# run, throughput, and the ratio QEMU's time / ours (> 1: ours faster).
set -euo pipefail
. "$(dirname "$0")/bench-lib.sh"
bench_tools bench-convert.sh "$@"
FORMATS=${FORMATS:-vmdk vhdx vpc vdi qed}
P=$DIR/rqemu-bench-convert-$$
MIXED=$P-mixed.raw # the source of every "into" case
OUT=$P-out         # convert target

trap 'rm -f "$P"-*' EXIT

mixed_image "$MIXED"
# The sources of the "out of" cases, one per format, written by QEMU.
for fmt in $FORMATS; do
  "$QEMU" convert -f raw -O "$fmt" "$MIXED" "$P-src.$fmt"
done

convert() {
  local tool=$1
  shift
  rm -f "$OUT"
  r=$(timed "$tool" convert -t "$CONVERT_CACHE" -T "$CONVERT_CACHE" "$@" "$OUT")
}
convert_into() { convert "$1" -f raw -O "$2" "$MIXED"; }
convert_out_of() { convert "$1" -f "$2" -O raw "$P-src.$2"; }

header
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for fmt in $FORMATS; do
  row "convert raw->$fmt (1 GiB mixed)" $((1 << 30)) convert_into "$fmt"
  row "convert $fmt->raw" $((1 << 30)) convert_out_of "$fmt"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

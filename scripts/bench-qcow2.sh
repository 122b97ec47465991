#!/bin/bash
# qcow2 benchmark: rqemu-img next to qemu-img on the same images, run alternately.
#
#   scripts/bench-qcow2.sh [RQEMU_IMG [QEMU_IMG]]
#
# Cases (issue #3):
#   bench -f qcow2, 4 KiB reads of a fully written 1 GiB image, and 64 KiB allocating writes
#   into a fresh empty 1 GiB image (a new one for every run); depth 32, -t none, -i threads
#   and -i io_uring;
#   convert of a 1 GiB "mixed data" raw image: raw->qcow2, qcow2->raw, raw->qcow2 -c.
#
# The mixed image: see scripts/bench-lib.sh.
#
# Defaults: $CARGO_TARGET_DIR/release/rqemu-img (or target/release/rqemu-img) and
# /usr/bin/qemu-img. Env: BENCH_DIR (where the images go; must support O_DIRECT, default
# /var/tmp), REPEAT (runs per case and tool, best kept; default 3), READS (4 KiB reads per
# read case, default 75000), WRITES (64 KiB writes per write case, default 16384 = 1 GiB),
# CONVERT_CACHE (the -t/-T mode of the convert cases, default none).
# Output: one row per case: best wall-clock seconds, the CPU seconds (user + system) of that
# run, throughput, and the ratio ours/QEMU in throughput (QEMU's time / ours; > 1: faster).
set -euo pipefail
. "$(dirname "$0")/bench-lib.sh"
bench_tools bench-qcow2.sh "$@"
READS=${READS:-75000}
WRITES=${WRITES:-16384}
P=$DIR/rqemu-bench-qcow2-$$
FULL=$P-full.qcow2    # fully written, for reads
EMPTY=$P-empty.qcow2  # recreated before every allocating-write run
MIXED=$P-mixed.raw    # the convert source
MIXEDQ=$P-mixed.qcow2 # the same data as qcow2 (made by qemu-img), for qcow2->raw
OUT=$P-out            # convert target

trap 'rm -f "$FULL" "$EMPTY" "$MIXED" "$MIXEDQ" "$OUT"' EXIT

# The fully written image: every cluster allocated, with non-zero data.
"$QEMU" create -q -f qcow2 "$FULL" 1G
"$QEMU" bench -f qcow2 -t none -w -d 32 -s 64k -c 16384 --pattern 0x5a "$FULL" >/dev/null

mixed_image "$MIXED"
"$QEMU" convert -f raw -O qcow2 "$MIXED" "$MIXEDQ"

# bench_run TOOL IMAGE ARGS...: "wall cpu", wall being what bench reports for the I/O.
bench_run() {
  local tool=$1 img=$2 out wall
  shift 2
  local TIMEFORMAT='%U %S' cpu
  cpu=$( { time "$tool" bench "$@" "$img" >"$P.log" 2>&1; } 2>&1 ) ||
    { echo "bench-qcow2.sh: $tool bench $* failed" >&2; cat "$P.log" >&2; exit 1; }
  wall=$(sed -n 's/^Run completed in \([0-9.]*\) seconds\./\1/p' "$P.log")
  rm -f "$P.log"
  [ -n "$wall" ] || { echo "bench-qcow2.sh: $tool bench $* printed no time" >&2; exit 1; }
  awk -v w="$wall" '{ printf "%s %.3f\n", w, $1 + $2 }' <<<"$cpu"
}

# One run of each case for TOOL: bench_read/bench_write AIO, convert_* (these set $r).
bench_read() { r=$(bench_run "$1" "$FULL" -f qcow2 -t none -i "$2" -d 32 -s 4k -c "$READS"); }
bench_write() {
  "$QEMU" create -q -f qcow2 "$EMPTY" 1G
  r=$(bench_run "$1" "$EMPTY" -f qcow2 -t none -i "$2" -d 32 -w -s 64k -c "$WRITES")
}
convert() {
  local tool=$1
  shift
  rm -f "$OUT"
  r=$(timed "$tool" convert -t "$CONVERT_CACHE" -T "$CONVERT_CACHE" "$@" "$OUT")
}
convert_raw_qcow2() { convert "$1" -f raw -O qcow2 "$MIXED"; }
convert_qcow2_raw() { convert "$1" -f qcow2 -O raw "$MIXEDQ"; }
convert_raw_qcow2_c() { convert "$1" -f raw -O qcow2 -c "$MIXED"; }

header
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
row "read 4k d32 -t none -i threads" $((READS * 4096)) bench_read threads
row "read 4k d32 -t none -i io_uring" $((READS * 4096)) bench_read io_uring
row "alloc write 64k d32 -i threads" $((WRITES * 65536)) bench_write threads
row "alloc write 64k d32 -i io_uring" $((WRITES * 65536)) bench_write io_uring
row "convert raw->qcow2 (1 GiB mixed)" $((1 << 30)) convert_raw_qcow2
row "convert qcow2->raw" $((1 << 30)) convert_qcow2_raw
row "convert raw->qcow2 -c" $((1 << 30)) convert_raw_qcow2_c
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

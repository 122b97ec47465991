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
# The mixed image is made deterministically, 1 MiB chunk by chunk, chunk i by i % 8:
#   0, 1  random bytes (a fixed-seed PRNG: incompressible)
#   2     zeroes, written (allocated in the raw file, zero when read)
#   3, 4  holes (never written)
#   5, 6  text: numbered lines of prose (compresses about 5:1 with zlib)
#   7     4 KiB blocks alternating random / zero
# so about 31% random, 25% text, 12.5% written zeroes and 25% holes.
#
# Defaults: $CARGO_TARGET_DIR/release/rqemu-img (or target/release/rqemu-img) and
# /usr/bin/qemu-img. Env: BENCH_DIR (where the images go; must support O_DIRECT, default
# /var/tmp), REPEAT (runs per case and tool, best kept; default 3), READS (4 KiB reads per
# read case, default 75000), WRITES (64 KiB writes per write case, default 16384 = 1 GiB),
# CONVERT_CACHE (the -t/-T mode of the convert cases, default none).
# Output: one row per case: best wall-clock seconds, the CPU seconds (user + system) of that
# run, throughput, and the ratio ours/QEMU in throughput (QEMU's time / ours; > 1: faster).
set -euo pipefail

OURS=${1:-${CARGO_TARGET_DIR:-target}/release/rqemu-img}
QEMU=${2:-/usr/bin/qemu-img}
DIR=${BENCH_DIR:-/var/tmp}
REPEAT=${REPEAT:-3}
READS=${READS:-75000}
WRITES=${WRITES:-16384}
CONVERT_CACHE=${CONVERT_CACHE:-none}
P=$DIR/rqemu-bench-qcow2-$$
FULL=$P-full.qcow2    # fully written, for reads
EMPTY=$P-empty.qcow2  # recreated before every allocating-write run
MIXED=$P-mixed.raw    # the convert source
MIXEDQ=$P-mixed.qcow2 # the same data as qcow2 (made by qemu-img), for qcow2->raw
OUT=$P-out            # convert target

[ -x "$OURS" ] || { echo "bench-qcow2.sh: $OURS not built (cargo build --release)" >&2; exit 2; }
[ -x "$QEMU" ] || { echo "bench-qcow2.sh: $QEMU missing" >&2; exit 2; }
trap 'rm -f "$FULL" "$EMPTY" "$MIXED" "$MIXEDQ" "$OUT"' EXIT

# The fully written image: every cluster allocated, with non-zero data.
"$QEMU" create -q -f qcow2 "$FULL" 1G
"$QEMU" bench -f qcow2 -t none -w -d 32 -s 64k -c 16384 --pattern 0x5a "$FULL" >/dev/null

python3 - "$MIXED" <<'EOF'
import os, random, sys
MiB = 1 << 20
rng = random.Random(20240601)
words = ("the quick brown fox jumps over the lazy dog while a block driver maps guest "
         "clusters to host offsets and counts references to them").split()
with open(sys.argv[1], "wb") as f:
    f.truncate(1024 * MiB)
    for i in range(1024):
        kind = i % 8
        if kind in (0, 1):
            chunk = rng.randbytes(MiB)
        elif kind == 2:
            chunk = bytes(MiB)
        elif kind in (3, 4):
            continue
        elif kind in (5, 6):
            text, n = [], 0
            while n < MiB:
                line = "%08d %s\n" % (i * 100000 + len(text),
                                      " ".join(rng.choice(words) for _ in range(10)))
                text.append(line)
                n += len(line)
            chunk = "".join(text).encode()[:MiB]
        else:
            chunk = b"".join(rng.randbytes(4096) if b % 2 == 0 else bytes(4096)
                             for b in range(256))
        os.pwrite(f.fileno(), chunk, i * MiB)
EOF
"$QEMU" convert -f raw -O qcow2 "$MIXED" "$MIXEDQ"

# timed CMD...: "wall cpu" seconds of one run (cpu: user + system of all its threads).
timed() {
  local TIMEFORMAT='%R %U %S' t
  t=$( { time "$@" >/dev/null 2>&1; } 2>&1 ) || { echo "bench-qcow2.sh: $* failed" >&2; exit 1; }
  awk '{ printf "%s %.3f\n", $1, $2 + $3 }' <<<"$t"
}

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

printf '%-34s %8s %8s %8s %8s %10s %10s %7s\n' \
  case ours_s qemu_s ours_cpu qemu_cpu ours_MiBs qemu_MiBs ratio
# row NAME BYTES FN [ARG]: REPEAT alternating runs of ours and QEMU, the best wall time of
# each (with its CPU time); BYTES is what the case moves, for MiB/s.
row() {
  local name=$1 bytes=$2 fn=$3 arg=${4:-} ours="" qemu="" r
  for _ in $(seq "$REPEAT"); do
    "$fn" "$OURS" $arg
    if [ -z "$ours" ] || awk -v a="${r% *}" -v b="${ours% *}" 'BEGIN{exit !(a<b)}'; then ours=$r; fi
    "$fn" "$QEMU" $arg
    if [ -z "$qemu" ] || awk -v a="${r% *}" -v b="${qemu% *}" 'BEGIN{exit !(a<b)}'; then qemu=$r; fi
  done
  awk -v n="$name" -v b="$bytes" -v o="$ours" -v q="$qemu" 'BEGIN{
    split(o, O, " "); split(q, Q, " ");
    printf "%-34s %8.3f %8.3f %8.3f %8.3f %10.1f %10.1f %7.2f\n",
      n, O[1], Q[1], O[2], Q[2], b/O[1]/1048576, b/Q[1]/1048576, Q[1]/O[1] }'
}

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
row "read 4k d32 -t none -i threads" $((READS * 4096)) bench_read threads
row "read 4k d32 -t none -i io_uring" $((READS * 4096)) bench_read io_uring
row "alloc write 64k d32 -i threads" $((WRITES * 65536)) bench_write threads
row "alloc write 64k d32 -i io_uring" $((WRITES * 65536)) bench_write io_uring
row "convert raw->qcow2 (1 GiB mixed)" $((1 << 30)) convert_raw_qcow2
row "convert qcow2->raw" $((1 << 30)) convert_qcow2_raw
row "convert raw->qcow2 -c" $((1 << 30)) convert_raw_qcow2_c
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

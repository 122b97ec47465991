#!/bin/bash
# Shared pieces of the benchmarks, sourced by them. The image benchmarks (bench-qcow2.sh,
# bench-convert.sh) start with bench_tools and use the deterministic 1 GiB "mixed data" image,
# timing one command, and one result row that runs ours and QEMU's tool alternately; the ones
# that drive several of our programs (bench-nbd.sh, bench-luks.sh) start with bench_scratch
# and summarise their alternating runs with summary.
#
# The mixed image is made 1 MiB chunk by chunk, chunk i by i % 8:
#   0, 1  random bytes (a fixed-seed PRNG: incompressible)
#   2     zeroes, written (allocated in the raw file, zero when read)
#   3, 4  holes (never written)
#   5, 6  text: numbered lines of prose (compresses about 5:1 with zlib)
#   7     4 KiB blocks alternating random / zero
# so about 31% random, 25% text, 12.5% written zeroes and 25% holes.

# bench_tools NAME [RQEMU_IMG [QEMU_IMG]]: sets BENCH_NAME, OURS and QEMU (the script's
# arguments, with their defaults), DIR, REPEAT and CONVERT_CACHE (from BENCH_DIR, REPEAT and
# CONVERT_CACHE), and checks that both tools are there.
bench_tools() {
  BENCH_NAME=$1
  OURS=${2:-${CARGO_TARGET_DIR:-target}/release/rqemu-img}
  QEMU=${3:-/usr/bin/qemu-img}
  DIR=${BENCH_DIR:-/var/tmp}
  REPEAT=${REPEAT:-3}
  CONVERT_CACHE=${CONVERT_CACHE:-none}
  [ -x "$OURS" ] || { echo "$BENCH_NAME: $OURS not built (cargo build --release)" >&2; exit 2; }
  [ -x "$QEMU" ] || { echo "$BENCH_NAME: $QEMU missing" >&2; exit 2; }
}

# mixed_image FILE: writes the 1 GiB mixed raw image.
mixed_image() {
  python3 - "$1" <<'PYEOF'
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
PYEOF
}

# timed CMD...: "wall cpu" seconds of one run (cpu: user + system of all its threads).
timed() {
  local TIMEFORMAT='%R %U %S' t
  t=$( { time "$@" >/dev/null 2>&1; } 2>&1 ) || { echo "$BENCH_NAME: $* failed" >&2; exit 1; }
  awk '{ printf "%s %.3f\n", $1, $2 + $3 }' <<<"$t"
}

# header: the column titles of row's output.
header() {
  printf '%-34s %8s %8s %8s %8s %10s %10s %7s\n' \
    case ours_s qemu_s ours_cpu qemu_cpu ours_MiBs qemu_MiBs ratio
}

# row NAME BYTES FN [ARG]: REPEAT alternating runs of FN with ours and QEMU's tool (FN sets
# $r to "wall cpu"), the best wall time of each (with its CPU time); BYTES is what the case
# moves, for MiB/s. Prints the ratio QEMU's time / ours (> 1: ours faster).
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

# bench_scratch NAME [BIN_DIR]: sets BENCH_NAME, BIN (where rqemu's programs are: BIN_DIR, else
# $CARGO_TARGET_DIR/release or target/release), DIR (a fresh scratch directory under
# BENCH_DIR, default /var/tmp; the caller removes it), REPEAT and the workload sizes READS
# (4 KiB reads) and WRITES (64 KiB writes).
bench_scratch() {
  BENCH_NAME=$1
  BIN=${2:-${CARGO_TARGET_DIR:-target}/release}
  DIR=$(mktemp -d "${BENCH_DIR:-/var/tmp}/rqemu-bench-$BENCH_NAME.XXXXXX")
  REPEAT=${REPEAT:-3}
  READS=${READS:-40000}
  WRITES=${WRITES:-8192}
}

# summary FILE: "BEST_WALL MEDIAN_CPU" of the "WALL CPU" lines in FILE. Wall times on a
# shared machine only get worse with load, so the best is kept; CPU seconds are steadier,
# so the median.
summary() {
  local best med
  best=$(cut -d' ' -f1 "$1" | sort -g | head -1)
  med=$(cut -d' ' -f2 "$1" | sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
  echo "$best $med"
}

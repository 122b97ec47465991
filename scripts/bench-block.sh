#!/bin/bash
# Block-layer benchmark: `rqemu-img bench` next to `qemu-img bench` on the same 1 GiB raw
# file, plus fio (io_uring) as the bare-kernel ceiling for the io_uring case.
#
#   scripts/bench-block.sh [RQEMU_IMG [QEMU_IMG]]
#
# Defaults: $CARGO_TARGET_DIR/release/rqemu-img (or target/release/rqemu-img) and
# /usr/bin/qemu-img. Env: BENCH_DIR (where the 1 GiB file goes; must support O_DIRECT,
# default /var/tmp), REPEAT (runs per case, best kept; default 3), READS (requests per read
# case, default 75000), WRITES (64 KiB writes per write case, default 16384 = 1 GiB).
# Output: one table row per case with time, IOPS, MiB/s for both tools and ours/QEMU.
set -euo pipefail

OURS=${1:-${CARGO_TARGET_DIR:-target}/release/rqemu-img}
QEMU=${2:-/usr/bin/qemu-img}
DIR=${BENCH_DIR:-/var/tmp}
REPEAT=${REPEAT:-3}
READS=${READS:-75000}
WRITES=${WRITES:-16384}
IMG=$DIR/rqemu-bench-$$.raw

[ -x "$OURS" ] || { echo "bench-block.sh: $OURS not built (cargo build --release)" >&2; exit 2; }
[ -x "$QEMU" ] || { echo "bench-block.sh: $QEMU missing" >&2; exit 2; }
trap 'rm -f "$IMG"' EXIT

# Real data blocks, so reads measure I/O and not holes.
dd if=/dev/zero of="$IMG" bs=1M count=1024 oflag=direct status=none

# best_time TOOL ARGS...: the shortest "Run completed in X seconds" of $REPEAT runs.
best_time() {
  local tool=$1 best="" t
  shift
  for _ in $(seq "$REPEAT"); do
    t=$("$tool" bench "$@" "$IMG" | sed -n 's/^Run completed in \([0-9.]*\) seconds\./\1/p')
    [ -n "$t" ] || { echo "bench-block.sh: $tool bench $* failed" >&2; exit 1; }
    if [ -z "$best" ] || awk -v a="$t" -v b="$best" 'BEGIN{exit !(a<b)}'; then best=$t; fi
  done
  echo "$best"
}

printf '%-34s %9s %9s %10s %10s %9s %9s %7s\n' case ours_s qemu_s ours_iops qemu_iops ours_MiBs qemu_MiBs ratio
row() {
  local name=$1 count=$2 bs=$3
  shift 3
  local ours qemu
  ours=$(best_time "$OURS" "$@")
  qemu=$(best_time "$QEMU" "$@")
  awk -v n="$name" -v c="$count" -v bs="$bs" -v o="$ours" -v q="$qemu" 'BEGIN{
    printf "%-34s %9.3f %9.3f %10.0f %10.0f %9.1f %9.1f %7.2f\n",
      n, o, q, c/o, c/q, c*bs/o/1048576, c*bs/q/1048576, q/o }'
}

row "read 4k d32 -t none -i threads" "$READS" 4096 \
  -f raw -t none -i threads -d 32 -s 4k -c "$READS"
row "read 4k d32 -t none -i io_uring" "$READS" 4096 \
  -f raw -t none -i io_uring -d 32 -s 4k -c "$READS"
row "write 64k d32 -t none -i threads" "$WRITES" 65536 \
  -f raw -t none -i threads -d 32 -w -s 64k -c "$WRITES"
row "write 64k d32 -t none -i io_uring" "$WRITES" 65536 \
  -f raw -t none -i io_uring -d 32 -w -s 64k -c "$WRITES"

if command -v fio >/dev/null; then
  fio_iops() {
    fio --name=ceiling --filename="$IMG" --ioengine=io_uring --direct=1 --iodepth=32 \
      --size=1G --output-format=json "$@" |
      python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; d=j["read"] if j["read"]["io_bytes"] else j["write"]; print(d["iops"], d["bw_bytes"]/1048576)'
  }
  echo
  printf '%-34s %10s %9s\n' "fio io_uring (same file)" iops MiBs
  read -r iops mibs < <(fio_iops --rw=read --bs=4k --io_size=$((READS * 4096)))
  printf '%-34s %10.0f %9.1f\n' "read 4k d32 direct" "$iops" "$mibs"
  read -r iops mibs < <(fio_iops --rw=write --bs=64k --io_size=$((WRITES * 65536)))
  printf '%-34s %10.0f %9.1f\n' "write 64k d32 direct" "$iops" "$mibs"
fi

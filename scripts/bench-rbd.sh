#!/bin/bash
# rbd benchmark: `rqemu-img bench` next to `qemu-img bench` on one rbd image of a
# throw-away single-node cluster (scripts/ceph-micro.sh, memstore OSD), and `convert` of a
# 1 GiB qcow2 into rbd by each tool.
#
#   scripts/bench-rbd.sh [RQEMU_IMG [QEMU_IMG]]
#
# Defaults: $CARGO_TARGET_DIR/release/rqemu-img (or target/release/rqemu-img) and
# /usr/bin/qemu-img (with qemu-block-extra's rbd driver). Env: REPEAT (runs per case and
# tool, the tools alternating, the median kept; default 7), READS (4 KiB reads per read case,
# default 20000), WRITES (64 KiB writes, default 4096 = 256 MiB). Output: one row per case,
# both tools' seconds and QEMU's/ours (ratio > 1: rqemu is faster).
set -euo pipefail

OURS=${1:-${CARGO_TARGET_DIR:-target}/release/rqemu-img}
QEMU=${2:-/usr/bin/qemu-img}
REPEAT=${REPEAT:-7}
READS=${READS:-20000}
WRITES=${WRITES:-4096}
HERE=$(cd "$(dirname "$0")" && pwd)
DIR=$(mktemp -d /var/tmp/rqemu-bench-rbd.XXXXXX)

[ -x "$OURS" ] || { echo "bench-rbd.sh: $OURS not built (cargo build --release)" >&2; exit 2; }
"$QEMU" --help | grep -q ' rbd ' || { echo "bench-rbd.sh: $QEMU has no rbd driver" >&2; exit 2; }
cleanup() { "$HERE/ceph-micro.sh" stop "$DIR/ceph" || true; rm -rf "$DIR"; }
trap cleanup EXIT

# 1 GiB qcow2 + 256 MiB bench image + the converted copies fit in 3 GiB of OSD memory.
CEPH_MICRO_MEM_BYTES=$((3 << 30)) "$HERE/ceph-micro.sh" start "$DIR/ceph" 2>/dev/null
CONF=$DIR/ceph/ceph.conf
img() { echo "rbd:rbd/$1:conf=$CONF"; }

# The bench image holds real data, so reads go to objects rather than holes.
"$QEMU" create -q -f raw "$(img bench)" 256M
"$QEMU" bench -q -f raw -w -d 32 -s 1M -c 256 "$(img bench)" >/dev/null

# bench_time TOOL ARGS...: seconds of one `bench` run ("Run completed in X seconds").
bench_time() {
    local tool=$1 t
    shift
    t=$("$tool" bench "$@" | sed -n 's/^Run completed in \([0-9.]*\) seconds\./\1/p')
    [ -n "$t" ] || { echo "bench-rbd.sh: $tool bench $* failed" >&2; exit 1; }
    echo "$t"
}

# convert_time TOOL: seconds to convert the 1 GiB qcow2 into a new rbd image.
convert_time() {
    local tool=$1 s e
    rbd -c "$CONF" rm --no-progress conv 2>/dev/null || true
    s=$(date +%s.%N)
    "$tool" convert -f qcow2 -O raw "$DIR/src.qcow2" "$(img conv)"
    e=$(date +%s.%N)
    rbd -c "$CONF" rm --no-progress conv 2>/dev/null || true
    awk -v s="$s" -v e="$e" 'BEGIN{printf "%.3f", e-s}'
}

# median: the middle one of the numbers on stdin (the lower middle for an even count).
median() { sort -g | awk '{v[NR]=$1} END {print v[int((NR + 1) / 2)]}'; }

# pair NAME FN ARGS...: $REPEAT rounds of FN for each tool, the tools alternating (which
# goes first alternates too), so that load drifting on a shared machine hits both alike;
# prints the row with each tool's median time.
pair() {
    local name=$1 fn=$2 o="" q="" i
    shift 2
    for i in $(seq "$REPEAT"); do
        for tool in $([ $((i % 2)) = 1 ] && echo "$OURS $QEMU" || echo "$QEMU $OURS"); do
            if [ "$tool" = "$OURS" ]; then
                o+="$("$fn" "$tool" "$@") "
            else
                q+="$("$fn" "$tool" "$@") "
            fi
        done
    done
    # shellcheck disable=SC2086 # the lists are split into one time per line on purpose
    row "$name" "$(printf '%s\n' $o | median)" "$(printf '%s\n' $q | median)"
}

printf '%-30s %9s %9s %7s\n' case ours_s qemu_s ratio
row() {
    awk -v n="$1" -v o="$2" -v q="$3" 'BEGIN{printf "%-30s %9.3f %9.3f %7.2f\n", n, o, q, q/o}'
}
pair "bench read 4k d32" bench_time -f raw -d 32 -s 4k -c "$READS" "$(img bench)"
pair "bench write 64k d32" bench_time -f raw -d 32 -w -s 64k -c "$WRITES" "$(img bench)"

# A 1 GiB qcow2 with 3/4 of its clusters written (the rest reads as zeroes).
"$QEMU" create -q -f qcow2 "$DIR/src.qcow2" 1G
qemu-io -f qcow2 -c 'write -P 0x5a 0 768M' "$DIR/src.qcow2" >/dev/null
pair "convert 1G qcow2 -> rbd" convert_time

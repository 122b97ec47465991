#!/bin/bash
# NBD benchmark: `rqemu-nbd` next to `qemu-nbd` serving the same 1 GiB raw and qcow2 images
# to QEMU's client (`qemu-img bench` on nbd+unix) and to `nbdcopy`, then our client
# (`rqemu-img bench` on nbd+unix) next to QEMU's client against `qemu-nbd`.
#
#   scripts/bench-nbd.sh [RQEMU_BIN_DIR]
#
# RQEMU_BIN_DIR holds rqemu-nbd and rqemu-img (default $CARGO_TARGET_DIR/release or
# target/release); QEMU's are qemu-nbd and qemu-img from PATH. Env: BENCH_DIR (default
# /var/tmp), REPEAT (runs per tool and case, default 3), READS (4 KiB reads per read case,
# default 40000), WRITES (64 KiB writes per write case, default 8192 = 512 MiB).
#
# The machine this runs on may be shared, so the two tools alternate run by run (rqemu,
# QEMU, rqemu, QEMU...) and each case reports the best wall time of each and the median CPU
# seconds (user + system) the measured side used: the server for the server cases, the
# client for the client cases. CPU time is much less disturbed by other load than wall time.
# Ratio = QEMU / rqemu (> 1: rqemu is faster or cheaper). Both servers run with the same
# options (`-t -e 8`, writeback cache, the kernel's default aio); each run starts a fresh
# server on the same image file, so both tools see the same page-cache state.
set -euo pipefail

. "$(dirname "$0")/bench-lib.sh"
bench_scratch nbd "${1:-}"
OURS_NBD=$BIN/rqemu-nbd
OURS_IMG=$BIN/rqemu-img
SOCK=$DIR/nbd.sock
URI="nbd+unix:///?socket=$SOCK"
SERVER=""

for t in "$OURS_NBD" "$OURS_IMG"; do
    [ -x "$t" ] || { echo "bench-nbd.sh: $t not built (cargo build --release)" >&2; exit 2; }
done
for t in qemu-nbd qemu-img nbdcopy nbdinfo; do
    command -v "$t" >/dev/null || { echo "bench-nbd.sh: $t missing" >&2; exit 2; }
done
cleanup() { stop_server; rm -rf "$DIR"; }
trap cleanup EXIT

# cpu_ticks PID: user + system clock ticks the process has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)

# start_server NBD FMT IMAGE: serves IMAGE with NBD (rqemu-nbd or qemu-nbd) on $SOCK.
start_server() {
    rm -f "$SOCK"
    "$1" -f "$2" -t -e 8 -x '' -k "$SOCK" "$3" &
    SERVER=$!
    for _ in $(seq 100); do
        nbdinfo --size "$URI" >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "bench-nbd.sh: $1 did not start" >&2
    exit 1
}

stop_server() {
    if [ -n "$SERVER" ]; then
        kill "$SERVER" 2>/dev/null || true
        wait "$SERVER" 2>/dev/null || true
        SERVER=""
    fi
}

# measure KIND CMD...: runs CMD once and prints "WALL CPU". KIND=server takes CPU from
# the running server, KIND=client from CMD itself. WALL is `bench`'s "Run completed in"
# when CMD prints it, else the elapsed time of CMD.
measure() {
    local kind=$1 out t0 t1 s0 s1 wall cpu
    shift
    [ "$kind" = server ] && t0=$(cpu_ticks "$SERVER")
    s0=$(date +%s.%N)
    out=$(/usr/bin/time -f 'CPU %U %S' "$@" 2>&1) || {
        echo "bench-nbd.sh: $* failed: $out" >&2
        exit 1
    }
    s1=$(date +%s.%N)
    wall=$(sed -n 's/^Run completed in \([0-9.]*\) seconds\./\1/p' <<<"$out")
    [ -n "$wall" ] || wall=$(awk -v a="$s0" -v b="$s1" 'BEGIN{printf "%.3f", b-a}')
    if [ "$kind" = server ]; then
        t1=$(cpu_ticks "$SERVER")
        cpu=$(awk -v a="$t0" -v b="$t1" -v t="$TICK" 'BEGIN{printf "%.2f", (b-a)/t}')
    else
        cpu=$(awk '/^CPU/{printf "%.2f", $2 + $3}' <<<"$out")
    fi
    echo "$wall $cpu"
}

printf '%-38s %8s %8s %6s %8s %8s %6s\n' case ours_s qemu_s ratio ours_cpu qemu_cpu ratio
row() {
    local name=$1 o q
    o=$(summary "$DIR/ours")
    q=$(summary "$DIR/qemu")
    awk -v n="$name" -v o="$o" -v q="$q" 'BEGIN{
        split(o, a, " "); split(q, b, " ");
        printf "%-38s %8.3f %8.3f %6.2f %8.2f %8.2f %6.2f\n",
            n, a[1], b[1], b[1]/a[1], a[2], b[2], (a[2] > 0 ? b[2]/a[2] : 0) }'
}

# server_case NAME FMT IMAGE CMD...: CMD (a client run against $URI) with rqemu-nbd and with
# qemu-nbd serving IMAGE, alternating, REPEAT times each.
server_case() {
    local name=$1 fmt=$2 image=$3 side nbd
    shift 3
    : >"$DIR/ours"
    : >"$DIR/qemu"
    for _ in $(seq "$REPEAT"); do
        for side in ours qemu; do
            if [ $side = ours ]; then nbd=$OURS_NBD; else nbd=qemu-nbd; fi
            start_server "$nbd" "$fmt" "$image"
            measure server "$@" >>"$DIR/$side"
            stop_server
        done
    done
    row "$name"
}

# client_case NAME ARGS...: `rqemu-img bench ARGS $URI` and `qemu-img bench ARGS $URI`
# against one qemu-nbd serving the raw image, alternating, REPEAT times each.
client_case() {
    local name=$1 side
    shift
    : >"$DIR/ours"
    : >"$DIR/qemu"
    start_server qemu-nbd raw "$DIR/img.raw"
    for _ in $(seq "$REPEAT"); do
        measure client "$OURS_IMG" bench "$@" "$URI" >>"$DIR/ours"
        measure client qemu-img bench "$@" "$URI" >>"$DIR/qemu"
    done
    stop_server
    row "$name"
}

# 1 GiB of random bytes, and the same data as a fully allocated qcow2: reads hit data, not
# holes, and nbdcopy copies every byte.
dd if=/dev/urandom of="$DIR/img.raw" bs=1M count=1024 status=none
qemu-img convert -f raw -O qcow2 "$DIR/img.raw" "$DIR/img.qcow2"

RD=(-f raw -d 32 -s 4k -c "$READS")
WR=(-f raw -d 32 -w -s 64k -c "$WRITES")
echo "# QEMU's client (qemu-img bench) against rqemu-nbd (ours) vs qemu-nbd (qemu); cpu = server's"
for fmt in raw qcow2; do
    server_case "$fmt: read 4k d32" $fmt "$DIR/img.$fmt" qemu-img bench "${RD[@]}" "$URI"
    server_case "$fmt: write 64k d32" $fmt "$DIR/img.$fmt" qemu-img bench "${WR[@]}" "$URI"
done
echo "# nbdcopy of the 1 GiB export to null: out of rqemu-nbd vs qemu-nbd; cpu = server's"
for fmt in raw qcow2; do
    server_case "$fmt: nbdcopy 1 GiB" $fmt "$DIR/img.$fmt" nbdcopy "$URI" null:
done
echo "# rqemu-img bench (ours) vs qemu-img bench (qemu) against qemu-nbd (raw); cpu = client's"
client_case "client: read 4k d32" "${RD[@]}"
client_case "client: write 64k d32" "${WR[@]}"

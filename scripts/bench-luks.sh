#!/bin/bash
# Encryption benchmark: rqemu's tools next to QEMU's on a LUKS image and a qcow2 image with
# LUKS encryption: 4 KiB reads and 64 KiB writes at depth 32 with aio=threads and io_uring,
# `convert -O qcow2 -o encrypt.format=luks` of a 1 GiB raw image, and the cipher alone
# (decrypting 1 GiB into a null-co target).
#
#   scripts/bench-luks.sh [RQEMU_BIN_DIR]
#
# RQEMU_BIN_DIR holds rqemu-img and rqemu-io (default $CARGO_TARGET_DIR/release or
# target/release); QEMU's are qemu-img and qemu-io from PATH. Env: BENCH_DIR (default
# /var/tmp), REPEAT (runs per tool and case, default 3), READS (4 KiB reads, default 40000),
# WRITES (64 KiB writes, default 8192 = 512 MiB).
#
# `qemu-img bench` takes no --object, so it cannot be given the key of an encrypted image;
# the I/O cases therefore run through qemu-io and rqemu-io with the same command script on
# stdin: batches of 32 `aio_read`/`aio_write` followed by `aio_flush` (depth 32, each batch
# drained, sequential offsets as `bench` uses). Images are opened with cache.direct=on and
# the given file.aio, as `bench -t none -i AIO`; their key slots use iter-time=10 so that
# opening costs milliseconds, not the default 2 s of PBKDF2. The same scripts on the
# unencrypted raw source show what the harness itself (parsing 40,000 commands) costs each
# tool.
#
# The machine this runs on may be shared, so the tools alternate run by run (rqemu, QEMU,
# rqemu, QEMU...) and each case reports the best wall time of each and the median CPU
# seconds (user + system) of the tool's process, which other load disturbs much less than
# wall time. Ratio = QEMU / rqemu (> 1: rqemu is faster or cheaper). MiB/s columns are the
# data each case moves through the cipher per wall second (best run).
set -euo pipefail

. "$(dirname "$0")/bench-lib.sh"
bench_scratch luks "${1:-}"
OURS_IMG=$BIN/rqemu-img
OURS_IO=$BIN/rqemu-io
SECRET=(--object secret,id=sec0,data=rqemu-bench)
GIB=$((1 << 30))

for t in "$OURS_IMG" "$OURS_IO"; do
    [ -x "$t" ] || { echo "bench-luks.sh: $t not built (cargo build --release)" >&2; exit 2; }
done
for t in qemu-img qemu-io; do
    command -v "$t" >/dev/null || { echo "bench-luks.sh: $t missing" >&2; exit 2; }
done
trap 'rm -rf "$DIR"' EXIT

# measure CMD...: runs CMD (stdin from $INPUT, else /dev/null) and prints "WALL CPU".
INPUT=/dev/null
measure() {
    local out s0 s1
    s0=$(date +%s.%N)
    out=$(/usr/bin/time -f 'CPU %U %S' "$@" <"$INPUT" 2>&1 >"$DIR/out") || {
        echo "bench-luks.sh: $* failed: $out $(tail -3 "$DIR/out")" >&2
        exit 1
    }
    s1=$(date +%s.%N)
    if grep -qi 'error\|fail' "$DIR/out"; then
        echo "bench-luks.sh: $* reported: $(grep -i -m3 'error\|fail' "$DIR/out")" >&2
        exit 1
    fi
    awk -v a="$s0" -v b="$s1" -v c="$out" 'BEGIN{split(c, f, " "); printf "%.3f %.2f\n", b-a, f[2]+f[3]}'
}

printf '%-36s %8s %8s %6s %8s %8s %6s %9s %9s\n' \
    case ours_s qemu_s ratio ours_cpu qemu_cpu ratio ours_MiBs qemu_MiBs
# row NAME BYTES: the summary of both tools' runs.
row() {
    local o q
    o=$(summary "$DIR/ours")
    q=$(summary "$DIR/qemu")
    awk -v n="$1" -v bytes="$2" -v o="$o" -v q="$q" 'BEGIN{
        split(o, a, " "); split(q, b, " ");
        printf "%-36s %8.3f %8.3f %6.2f %8.2f %8.2f %6.2f %9.1f %9.1f\n",
            n, a[1], b[1], b[1]/a[1], a[2], b[2], (a[2] > 0 ? b[2]/a[2] : 0),
            bytes/a[1]/1048576, bytes/b[1]/1048576 }'
}

# alternate NAME BYTES PREP OURS... -- QEMU...: runs PREP (a function, may be :) before
# every run, then each tool's command, alternating, REPEAT times each.
alternate() {
    local name=$1 bytes=$2 prep=$3 ours=() qemu=() side
    shift 3
    while [ "$1" != -- ]; do ours+=("$1"); shift; done
    shift
    qemu=("$@")
    : >"$DIR/ours"
    : >"$DIR/qemu"
    for _ in $(seq "$REPEAT"); do
        for side in ours qemu; do
            $prep
            if [ $side = ours ]; then
                measure "${ours[@]}" >>"$DIR/ours"
            else
                measure "${qemu[@]}" >>"$DIR/qemu"
            fi
        done
    done
    row "$name" "$bytes"
}

# script OP COUNT SIZE: a qemu-io command script of COUNT OPs (read or write) of SIZE
# bytes at sequential offsets, 32 in flight, drained every 32.
script() {
    awk -v op="$1" -v n="$2" -v s="$3" 'BEGIN{
        pat = (op == "write") ? "-P 0xa5 " : "";
        for (i = 0; i < n; i++) {
            printf "aio_%s -q %s%d %d\n", op, pat, i * s, s;
            if (i % 32 == 31 || i == n - 1) print "aio_flush";
        }
    }'
}

# 1 GiB of random bytes, and the same data in a LUKS image and an encrypted qcow2.
dd if=/dev/urandom of="$DIR/src.raw" bs=1M count=1024 status=none
qemu-img convert "${SECRET[@]}" -f raw -O luks -o key-secret=sec0,iter-time=10 \
    "$DIR/src.raw" "$DIR/img.luks"
qemu-img convert "${SECRET[@]}" -f raw -O qcow2 \
    -o encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10 \
    "$DIR/src.raw" "$DIR/img.qcow2"
script read "$READS" 4096 >"$DIR/read.cmds"
script write "$WRITES" 65536 >"$DIR/write.cmds"

opts() { # opts FMT AIO: --image-opts string for the benchmark image
    if [ "$1" = raw ]; then
        echo "driver=raw,cache.direct=on,file.driver=file,file.filename=$DIR/src.raw,file.aio=$2"
    elif [ "$1" = luks ]; then
        echo "driver=luks,key-secret=sec0,cache.direct=on,file.driver=file,file.filename=$DIR/img.luks,file.aio=$2"
    else
        echo "driver=qcow2,encrypt.key-secret=sec0,cache.direct=on,file.driver=file,file.filename=$DIR/img.qcow2,file.aio=$2"
    fi
}

echo "# rqemu-io (ours) vs qemu-io (qemu), depth 32, cache.direct=on; cpu = the tool's"
echo "# (raw: the same scripts on the unencrypted source, the harness's own cost)"
for fmt in raw luks qcow2; do
    for aio in threads io_uring; do
        INPUT=$DIR/read.cmds
        alternate "$fmt: read 4k d32 $aio" $((READS * 4096)) : \
            "$OURS_IO" "${SECRET[@]}" --image-opts "$(opts $fmt $aio)" -- \
            qemu-io "${SECRET[@]}" --image-opts "$(opts $fmt $aio)"
        INPUT=$DIR/write.cmds
        alternate "$fmt: write 64k d32 $aio" $((WRITES * 65536)) : \
            "$OURS_IO" "${SECRET[@]}" --image-opts "$(opts $fmt $aio)" -- \
            qemu-io "${SECRET[@]}" --image-opts "$(opts $fmt $aio)"
    done
done
INPUT=/dev/null

echo "# rqemu-img (ours) vs qemu-img (qemu); cpu = the tool's"
rm_dst() { rm -f "$DIR/dst.qcow2"; }
CONV=(convert "${SECRET[@]}" -f raw -O qcow2
    -o encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10
    "$DIR/src.raw" "$DIR/dst.qcow2")
alternate "convert 1G raw -> qcow2+luks" $GIB rm_dst \
    "$OURS_IMG" "${CONV[@]}" -- qemu-img "${CONV[@]}"
# The cipher alone: decrypt the whole LUKS image into null-co (no write, reads from the
# page cache), so the time is AES-XTS plus copying.
DEC=(convert "${SECRET[@]}" --image-opts "driver=luks,key-secret=sec0,file.filename=$DIR/img.luks"
    -n --target-image-opts "driver=null-co,size=$GIB")
alternate "decrypt 1G luks -> null-co" $GIB : "$OURS_IMG" "${DEC[@]}" -- qemu-img "${DEC[@]}"

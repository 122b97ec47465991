#!/bin/bash
# Runs every cargo-fuzz target in fuzz/ for MINUTES minutes each (default 1: the CI-sized
# run), seeding the image targets with images QEMU's qemu-img made and qemu-iotests'
# sample images, and prints one line per target: executions, coverage, corpus, findings.
#
#   scripts/fuzz.sh [MINUTES] [TARGET...]
#
# Needs the nightly toolchain (cargo-fuzz is installed if missing). A finding leaves its
# input in fuzz/artifacts/TARGET/ and makes the script exit 1; turn it into a regression
# test in the ordinary suite (tests/fuzz_findings.rs) before fixing it.
set -u
cd "$(dirname "$0")/../fuzz"
MINUTES=${1:-1}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=(qcow2 vdi vpc qed dmg cloop bochs luks options ata nbd virtio_blk)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked || exit 2
cargo +nightly fuzz build || exit 2

QEMU_IMG=${QEMU_IMG:-/usr/bin/qemu-img}
QEMU_IO=${QEMU_IO:-/usr/bin/qemu-io}
SAMPLES=${SAMPLES:-/var/tmp/qemu-iotests-src/qemu-10.0.2/tests/qemu-iotests/sample_images}

# seed TARGET FORMAT NAME [create -o options] [qemu-io commands...]: one image QEMU made.
seed() {
    local target=$1 fmt=$2 name=$3 opts=$4
    shift 4
    local out=corpus/$target/$name
    [ -e "$out" ] && return
    [ -x "$QEMU_IMG" ] || return
    "$QEMU_IMG" create -q -f "$fmt" ${opts:+-o "$opts"} "$out" 1M >/dev/null || return
    for c in "$@"; do "$QEMU_IO" -f "$fmt" -c "$c" "$out" >/dev/null; done
}

seeds() {
    mkdir -p "${TARGETS[@]/#/corpus/}"
    local w=("write -P 1 0 4k" "write -P 2 600k 70k" "write -z 64k 64k")
    seed qcow2 qcow2 v2 compat=0.10,cluster_size=512 "${w[@]}"
    seed qcow2 qcow2 v3 cluster_size=4096 "${w[@]}" "discard 0 4k"
    seed qcow2 qcow2 lazy cluster_size=4096,lazy_refcounts=on "${w[@]}"
    seed qcow2 qcow2 extl2 cluster_size=16384,extended_l2=on "write -P 3 1k 1k"
    seed qcow2 qcow2 refcount1 cluster_size=512,refcount_bits=1 "${w[@]}"
    seed qcow2 qcow2 compressed cluster_size=4096 "write -c -P 4 0 4k" "write -c -P 5 8k 4k"
    seed qcow2 qcow2 snapshot cluster_size=4096 "write -P 6 0 8k"
    [ -e corpus/qcow2/snapshot ] && "$QEMU_IMG" snapshot -c s corpus/qcow2/snapshot 2>/dev/null
    seed vdi vdi dynamic "" "${w[@]}"
    seed vdi vdi static static=on "write -P 1 0 4k"
    seed vpc vpc dynamic "" "${w[@]}"
    seed vpc vpc fixed subformat=fixed "write -P 1 0 4k"
    seed qed qed plain cluster_size=4096 "${w[@]}"
    if [ -x "$QEMU_IMG" ] && [ ! -e corpus/luks/header ]; then
        "$QEMU_IMG" create -q --object secret,id=s,data=pw -f luks \
            -o key-secret=s,iter-time=10 /tmp/rqemu-fuzz-seed.luks 1M &&
            head -c 8192 /tmp/rqemu-fuzz-seed.luks >corpus/luks/header
        rm -f /tmp/rqemu-fuzz-seed.luks
    fi
    for s in simple-dmg.dmg:dmg simple-pattern.cloop:cloop empty.bochs:bochs; do
        [ -e "$SAMPLES/${s%%:*}.bz2" ] && [ ! -e "corpus/${s##*:}/${s%%:*}" ] &&
            bunzip2 -c "$SAMPLES/${s%%:*}.bz2" >"corpus/${s##*:}/${s%%:*}"
    done
    printf 'driver=qcow2,file.filename=a.img,cache.direct=on' >corpus/options/keyval
    printf 'json:{"driver":"qcow2","file":{"driver":"file","filename":"a"},"size":"1M"}' \
        >corpus/options/json
}
seeds

status=0
printf '%-11s %12s %8s %8s %8s %s\n' target executions cov ft corpus findings
for t in "${TARGETS[@]}"; do
    log=${TMPDIR:-/tmp}/rqemu-fuzz-$t.log
    before=$(ls artifacts/$t 2>/dev/null | wc -l)
    cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time=$((MINUTES * 60)) \
        -max_len=262144 -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 >"$log" 2>&1
    after=$(ls artifacts/$t 2>/dev/null | wc -l)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    last=$(grep -E '^#[0-9]+' "$log" | tail -1)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$last")
    printf '%-11s %12s %8s %8s %8s %s\n' "$t" "${execs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" \
        "$((after - before)) (log: $log)"
    [ "$after" -gt "$before" ] && status=1
done
exit $status

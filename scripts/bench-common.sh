# Shared by scripts/bench-nbd.sh and scripts/bench-luks.sh (sourced, after `set -euo
# pipefail` and with BENCH_NAME set): where rqemu's binaries are ($1, else
# $CARGO_TARGET_DIR/release or target/release), a scratch directory, the workload sizes,
# and the summary of runs that alternate between the two tools.
BIN=${1:-${CARGO_TARGET_DIR:-target}/release}
DIR=$(mktemp -d "${BENCH_DIR:-/var/tmp}/rqemu-bench-$BENCH_NAME.XXXXXX")
REPEAT=${REPEAT:-3}
READS=${READS:-40000}
WRITES=${WRITES:-8192}

# summary FILE: "BEST_WALL MEDIAN_CPU" of the "WALL CPU" lines in FILE. Wall times on a
# shared machine only get worse with load, so the best is kept; CPU seconds are steadier,
# so the median.
summary() {
    local best med
    best=$(cut -d' ' -f1 "$1" | sort -g | head -1)
    med=$(cut -d' ' -f2 "$1" | sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
    echo "$best $med"
}

#!/bin/bash
# Census of qemu-iotests for one format: the reference QEMU's programs and ours run the same
# tests; prints the tests the reference passes and ours does not, then the totals.
#
#   scripts/iotests-census.sh -FORMAT [-PROTOCOL] [--tools-only] [--img P] [--io P] [--nbd P]
#                             [--system P] [TEST...]
#   e.g. scripts/iotests-census.sh -qcow2 --tools-only \
#            --img target/release/rqemu-img --io target/release/rqemu-io
#
# --img/--io/--nbd/--system name our programs; the reference always runs QEMU's own. Results
# go to CENSUS_DIR (default /var/tmp/iotests-census): <tag>-ref.txt and <tag>-ours.txt list
# "TEST pass|fail|notrun", <tag>-*.log keep the suite's reports, and work-<tag>-ours/scratch/
# the diffs of our failures. CENSUS_REUSE_REF=1 keeps an earlier reference result (it does
# not change). Tests the reference fails on this host do not count. A whole format takes
# 5-15 minutes on 2 CPUs.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${CENSUS_DIR:-/var/tmp/iotests-census}
SUITE_ARGS=() OURS=() TAG=""
while [ $# -gt 0 ]; do
  case "$1" in
    --img|--io|--nbd|--system) OURS+=("$1" "$(readlink -f "$2")"); shift ;;
    --tools-only) SUITE_ARGS+=("$1"); TOOLS=-tools ;;
    -file) SUITE_ARGS+=("$1") ;; # the default protocol: not part of the tag
    -*) SUITE_ARGS+=("$1"); TAG=$TAG${TAG:+-}${1#-} ;;
    *) SUITE_ARGS+=("$1") ;;
  esac
  shift
done
[ -n "$TAG" ] || { sed -n '5,8p' "$0" >&2; exit 2; }
TAG=$TAG${TOOLS:-}
mkdir -p "$OUT"

# census WHO [PROGRAM OPTIONS...]: runs the suite, then keeps one "TEST verdict" line per test.
census() {
  local who=$1; shift
  IOTESTS_WORK="$OUT/work-$TAG-$who" "$HERE/iotests.sh" "${SUITE_ARGS[@]}" "$@" \
    > "$OUT/$TAG-$who.log" 2>&1
  # The report's verdict lines, "TEST  pass|fail|not run  [start] [end] ...", not the diffs'.
  # With -j the suite writes several records on one line, so a record is looked for at
  # every field of a line; diff lines (starting with a space, + or -) are skipped.
  awk '/^[[:alnum:]]/ { for (i = 1; i < NF; i++) {
         if (($(i+1) == "pass" || $(i+1) == "fail") && $(i+2) ~ /^\[/) print $i, $(i+1)
         if ($(i+1) == "not" && $(i+2) == "run" && $(i+3) ~ /^\[/) print $i, "notrun" } }' \
    "$OUT/$TAG-$who.log" | sort -u > "$OUT/$TAG-$who.txt"
}
[ "${CENSUS_REUSE_REF:-0}" = 1 ] && [ -s "$OUT/$TAG-ref.txt" ] || census ref
census ours "${OURS[@]}"

# A test ours never reported a verdict for counts as "none", not as absent.
verdicts=$(join -a 1 -e none -o 0,1.2,2.2 "$OUT/$TAG-ref.txt" "$OUT/$TAG-ours.txt")
missing=$(awk '$2 == "pass" && $3 != "pass" { printf "%s ", $1 }' <<< "$verdicts")
reference=$(grep -c ' pass$' "$OUT/$TAG-ref.txt")
both=$(awk '$2 == "pass" && $3 == "pass"' <<< "$verdicts" | wc -l)
echo "reference passes, ours does not: ${missing:-none}"
echo "$TAG: ours pass $both of the $reference tests the reference passes (diffs: $OUT/work-$TAG-ours/scratch/)"

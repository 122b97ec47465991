#!/bin/bash
# exercise.sh: the exercises of docs/exercises/ (see its README.md).
#
#   scripts/exercise.sh list             the exercises and their grading commands
#   scripts/exercise.sh start N          apply exercise N's removal patch (files must be clean)
#   scripts/exercise.sh check N          run exercise N's grading tests
#   scripts/exercise.sh solution N       restore the files the patch touched (git checkout)
#   scripts/exercise.sh verify [N...]    for CI: in a copy of the tree, each patch applies and
#                                        makes its grading tests fail (default: all)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=$root/docs/exercises

usage() { sed -n '2,/^set/{/^set/d;s/^# \{0,1\}//;p}' "$0"; exit 2; }

# The patch of exercise $1 (1 or 01 both work).
patch_of() {
    local n
    n=$(printf '%02d' "$((10#$1))" 2>/dev/null) || { echo "bad exercise number '$1'" >&2; exit 2; }
    local found=("$dir/$n"-*.patch)
    [ -f "${found[0]}" ] || { echo "no exercise $n in docs/exercises" >&2; exit 2; }
    echo "${found[0]}"
}

# The grading command: the first line of the exercise's text, "Grading: `COMMAND`".
grading_of() {
    local text=${1%.patch}.md
    sed -n '1s/^Grading: `\(.*\)`$/\1/p' "$text"
}

# The files a patch touches.
files_of() {
    sed -n 's|^+++ b/||p' "$1"
}

cmd=${1:-}
[ -n "$cmd" ] || usage
shift
case $cmd in
    list)
        for p in "$dir"/[0-9][0-9]-*.patch; do
            printf '%-22s %s\n' "$(basename "${p%.patch}")" "$(grading_of "$p")"
        done
        ;;
    start)
        [ $# -eq 1 ] || usage
        p=$(patch_of "$1")
        cd "$root"
        if ! git diff --quiet HEAD -- $(files_of "$p"); then
            echo "exercise.sh: $(files_of "$p" | tr '\n' ' ')has local changes; commit or stash them first" >&2
            exit 1
        fi
        git apply "$p"
        echo "Exercise $(basename "${p%.patch}") started: read ${p%.patch}.md"
        echo "Check your solution with: scripts/exercise.sh check $1"
        ;;
    check)
        [ $# -eq 1 ] || usage
        p=$(patch_of "$1")
        cd "$root"
        eval "$(grading_of "$p")"
        ;;
    solution)
        [ $# -eq 1 ] || usage
        p=$(patch_of "$1")
        cd "$root"
        git checkout HEAD -- $(files_of "$p")
        ;;
    verify)
        cd "$root"
        if [ $# -eq 0 ]; then
            set -- $(ls "$dir" | sed -n 's/^\([0-9][0-9]\)-.*\.patch$/\1/p')
        fi
        # A copy of the tracked tree (as committed plus local changes), sharing the target dir
        # so that dependencies are built once.
        copy=$(mktemp -d)
        trap 'rm -rf "$copy"' EXIT
        git ls-files -z | xargs -0 cp --parents -t "$copy"
        export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
        failed=0
        for n in "$@"; do
            p=$(patch_of "$n")
            name=$(basename "${p%.patch}")
            if ! (cd "$copy" && git apply "$p" 2>/dev/null); then
                echo "FAIL $name: the patch no longer applies"
                failed=1
                continue
            fi
            rc=0
            (cd "$copy" && timeout 1200 bash -c "$(grading_of "$p")") > "$copy/grading.log" 2>&1 || rc=$?
            if [ $rc -eq 0 ]; then
                echo "FAIL $name: the grading tests pass with the piece removed"
                failed=1
            elif [ $rc -eq 124 ]; then
                echo "FAIL $name: the grading tests hang with the piece removed"
                failed=1
            elif grep -q '^error\[E[0-9]*\]:\|^error: could not compile' "$copy/grading.log"; then
                echo "FAIL $name: the tree does not build with the patch applied"
                grep -m5 -A5 '^error' "$copy/grading.log"
                failed=1
            else
                echo "ok   $name: its grading tests fail without the solution"
            fi
            (cd "$copy" && git apply -R "$p")
        done
        exit $failed
        ;;
    *) usage ;;
esac

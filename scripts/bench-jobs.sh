#!/usr/bin/env bash
# Block-job benchmark: mirror, stream, commit and backup of a 1 GiB image, rqemu vs QEMU,
# driven by the same QMP commands in one run.
#
# Each run starts the emulator with no guest and a QMP socket (rqemu: `-M none -accel qtest`;
# QEMU: `-M none`, since Debian's build lacks the qtest accelerator), adds the images with
# blockdev-add (not timed), then times from the job command to BLOCK_JOB_COMPLETED:
#   mirror  blockdev-mirror sync=full of the data image into an empty qcow2; at
#           BLOCK_JOB_READY, block-job-complete (the pivot is in the time)
#   stream  block-stream of the data image into an empty overlay on it
#   commit  block-commit of the data image (the middle of base <- data <- top) into an
#           empty base
#   backup  blockdev-backup sync=full of the data image into an empty qcow2
# The data image is a qcow2 of 1 GiB of random bytes (every cluster allocated), made once;
# the targets are made afresh before each run. Runs alternate between the emulators, so both
# see the same background load and page-cache state; the script prints every time, the
# medians and the ratio QEMU/ours (>= 1.0: ours is as fast or faster).
#
# Usage: scripts/bench-jobs.sh [RUNS [JOBS...]]   (defaults 3, mirror stream commit backup)
# env: RQEMU=path, QEMU=path, QEMU_IMG=path (the image tool; default qemu-img),
#      SIZE=1G (the image size), DIR=directory for the images (default a mktemp -d)
set -euo pipefail

RUNS=${1:-3}
shift || true
JOBS=("$@")
[ ${#JOBS[@]} -gt 0 ] || JOBS=(mirror stream commit backup)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RQEMU=${RQEMU:-${CARGO_TARGET_DIR:-$ROOT/target}/release/rqemu}
QEMU=${QEMU:-/usr/bin/qemu-system-x86_64}
QEMU_IMG=${QEMU_IMG:-qemu-img}
SIZE=${SIZE:-1G}

for f in "$RQEMU" "$QEMU"; do
    [ -x "$f" ] || { echo "bench-jobs: missing $f (build with: cargo build --release --bin rqemu)" >&2; exit 1; }
done
command -v python3 >/dev/null || { echo "bench-jobs: python3 is needed" >&2; exit 1; }
for j in "${JOBS[@]}"; do
    case $j in mirror|stream|commit|backup) ;; *) echo "bench-jobs: unknown job $j" >&2; exit 1;; esac
done

TMP=${DIR:-$(mktemp -d)}
mkdir -p "$TMP"
trap 'rm -rf "$TMP"/bench-*' EXIT

bytes=$(numfmt --from=iec "$SIZE")
echo "bench-jobs: making the $SIZE data image in $TMP" >&2
head -c "$bytes" /dev/urandom > "$TMP/bench-data.raw"
"$QEMU_IMG" convert -f raw -O qcow2 "$TMP/bench-data.raw" "$TMP/bench-data.qcow2"
rm "$TMP/bench-data.raw"

# The QMP side: a plain JSON-over-socket client (no dependency on QEMU's python package).
cat > "$TMP/bench-driver.py" <<'EOF'
import json, socket, sys, time

sock_path, job, d = sys.argv[1], sys.argv[2], sys.argv[3]
for _ in range(500):
    try:
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock_path)
        break
    except OSError:
        time.sleep(0.02)
else:
    sys.exit("cannot connect to " + sock_path)
f = s.makefile("rw")
events = []

def recv():
    msg = json.loads(f.readline())
    return msg

def cmd(name, args=None):
    f.write(json.dumps({"execute": name, "arguments": args or {}}) + "\n")
    f.flush()
    while True:
        msg = recv()
        if "event" in msg:
            events.append(msg)
        elif "error" in msg:
            sys.exit(f"{name}: {msg['error']['desc']}")
        else:
            return msg["return"]

def event(name):
    while True:
        for e in events:
            if e["event"] == name:
                events.remove(e)
                return e
            if e["event"] in ("BLOCK_JOB_ERROR", "BLOCK_JOB_CANCELLED"):
                sys.exit(f"job failed: {e}")
        events.append(recv())

def qcow2(node, path, backing=None):
    opts = {"driver": "qcow2", "node-name": node,
            "file": {"driver": "file", "filename": path}}
    if backing is not None:
        opts["backing"] = backing
    cmd("blockdev-add", opts)

recv()
cmd("qmp_capabilities")
if job in ("mirror", "backup"):
    qcow2("src", d + "/bench-data.qcow2")
    qcow2("tgt", d + "/bench-target.qcow2")
elif job == "stream":
    qcow2("top", d + "/bench-top.qcow2")
else:
    # base <- data <- top with the chain given here, so the data image's header stays as it
    # is; the base is read-write, as a commit's base must be.
    base = {"driver": "qcow2", "node-name": "base", "read-only": False,
            "file": {"driver": "file", "filename": d + "/bench-base.qcow2"}}
    data = {"driver": "qcow2", "node-name": "data", "backing": base,
            "file": {"driver": "file", "filename": d + "/bench-data.qcow2"}}
    qcow2("top", d + "/bench-top.qcow2", data)
start = time.monotonic()
if job == "mirror":
    cmd("blockdev-mirror", {"job-id": "j", "device": "src", "target": "tgt", "sync": "full"})
    event("BLOCK_JOB_READY")
    cmd("block-job-complete", {"device": "j"})
elif job == "backup":
    cmd("blockdev-backup", {"job-id": "j", "device": "src", "target": "tgt", "sync": "full"})
elif job == "stream":
    cmd("block-stream", {"job-id": "j", "device": "top"})
else:
    cmd("block-commit", {"job-id": "j", "device": "top", "top-node": "data",
                         "base-node": "base"})
done = event("BLOCK_JOB_COMPLETED")
elapsed = time.monotonic() - start
if "error" in done["data"]:
    sys.exit("job failed: " + done["data"]["error"])
if done["data"]["offset"] != done["data"]["len"]:
    sys.exit(f"job incomplete: {done}")
cmd("quit")
print(f"{elapsed:.3f}")
EOF

# Fresh targets for one run of JOB.
prepare() {
    rm -f "$TMP"/bench-target.qcow2 "$TMP"/bench-top.qcow2 "$TMP"/bench-base.qcow2
    case $1 in
    mirror|backup) "$QEMU_IMG" create -q -f qcow2 "$TMP/bench-target.qcow2" "$SIZE" ;;
    stream) "$QEMU_IMG" create -q -f qcow2 -F qcow2 -b "$TMP/bench-data.qcow2" "$TMP/bench-top.qcow2" ;;
    commit)
        "$QEMU_IMG" create -q -f qcow2 "$TMP/bench-base.qcow2" "$SIZE"
        "$QEMU_IMG" create -q -f qcow2 "$TMP/bench-top.qcow2" "$SIZE" ;;
    esac
}

# One timed run: prints the seconds.
run() { # emulator job
    local emu=$1 job=$2 sock=$TMP/bench-qmp.sock pid t
    prepare "$job"
    rm -f "$sock"
    if [ "$emu" = rqemu ]; then
        "$RQEMU" -nodefaults -display none -M none -accel qtest \
            -qmp "unix:$sock,server=on,wait=off" </dev/null >"$TMP/bench-emu.log" 2>&1 &
    else
        "$QEMU" -nodefaults -display none -M none \
            -qmp "unix:$sock,server=on,wait=off" </dev/null >"$TMP/bench-emu.log" 2>&1 &
    fi
    pid=$!
    if ! t=$(python3 "$TMP/bench-driver.py" "$sock" "$job" "$TMP"); then
        kill "$pid" 2>/dev/null || true
        cat "$TMP/bench-emu.log" >&2
        echo "bench-jobs: $emu $job failed" >&2
        exit 1
    fi
    wait "$pid"
    echo "$t"
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

echo "job     rqemu runs (s)          QEMU runs (s)           rqemu med  QEMU med  QEMU/rqemu"
for job in "${JOBS[@]}"; do
    ours=() theirs=()
    for ((i = 0; i < RUNS; i++)); do
        # Alternate which goes first, so neither always meets the warmer page cache.
        if ((i % 2 == 0)); then
            ours+=("$(run rqemu "$job")"); theirs+=("$(run qemu "$job")")
        else
            theirs+=("$(run qemu "$job")"); ours+=("$(run rqemu "$job")")
        fi
    done
    m_ours=$(printf '%s\n' "${ours[@]}" | median)
    m_theirs=$(printf '%s\n' "${theirs[@]}" | median)
    ratio=$(awk -v a="$m_theirs" -v b="$m_ours" 'BEGIN {printf "%.2f", a / b}')
    printf '%-7s %-23s %-23s %-10s %-9s %s\n' "$job" "${ours[*]}" "${theirs[*]}" "$m_ours" "$m_theirs" "$ratio"
done

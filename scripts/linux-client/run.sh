#!/bin/bash
# Boots the NBD file-system test's Linux guest under qemu-system-x86_64 (TCG) on one disk and
# prints its result line. Build the guest first with build.sh.
#
#   scripts/linux-client/run.sh GUESTDIR virtio|ide DRIVE [full|write|verify [TOKEN]]
#       DRIVE is a -drive spec without if=, e.g. file=nbd://127.0.0.1:10809,format=raw or
#       file=nbd+unix:///?socket=/tmp/s.sock,format=raw: QEMU's NBD client serves the guest's
#       virtio-blk or IDE disk.
#   scripts/linux-client/run.sh GUESTDIR nbd HOST:PORT[/EXPORT] [full|write|verify [TOKEN]]
#       the guest kernel's own NBD client connects over user-mode networking (a HOST of
#       127.0.0.1 or localhost is the host's loopback, which the guest reaches as 10.0.2.2).
#
# Env: FILES (2000), LIMIT (seconds, 600), LOG (serial log file; default GUESTDIR/last.log).
# Exit status: 0 PASS, 1 FAIL, 2 no result line (crash or time limit), 3 bad usage.
set -u
GUEST=${1:-} KIND=${2:-} DISK=${3:-} STEP=${4:-full} TOKEN=${5:-}
[ -n "$GUEST" ] && [ -n "$DISK" ] || { sed -n '4,11p' "$0" >&2; exit 3; }
LOG=${LOG:-$GUEST/last.log}
CMDLINE="console=ttyS0 quiet panic=-1 rq.dev=$KIND rq.step=$STEP rq.files=${FILES:-2000}"
[ -n "$TOKEN" ] && CMDLINE+=" rq.expect=$TOKEN"
ARGS=(-machine pc -accel tcg -m 512 -nodefaults -no-reboot -display none -serial stdio
      -kernel "$GUEST/vmlinuz" -initrd "$GUEST/initrd.gz")
case "$KIND" in
  virtio|ide) ARGS+=(-drive "$DISK,if=$KIND") ;;
  nbd)
    SERVER=${DISK%%/*}
    EXPORT=${DISK#"$SERVER"}; EXPORT=${EXPORT#/}
    case "$SERVER" in 127.0.0.1:*|localhost:*) SERVER=10.0.2.2:${SERVER#*:} ;; esac
    CMDLINE+=" rq.server=$SERVER"
    [ -n "$EXPORT" ] && CMDLINE+=" rq.export=$EXPORT"
    ARGS+=(-netdev user,id=net0 -device virtio-net-pci,netdev=net0) ;;
  *) echo "run.sh: the disk kind is virtio, ide or nbd" >&2; exit 3 ;;
esac
ARGS+=(-append "$CMDLINE")
START=$SECONDS
timeout -k 5 "${LIMIT:-600}" qemu-system-x86_64 "${ARGS[@]}" </dev/null >"$LOG" 2>&1
LINE=$(tr -d '\r' <"$LOG" | grep -a '^RQEMU-LINUX: ' | tail -n1)
echo "run.sh: $KIND $STEP, $((SECONDS - START)) s, serial log $LOG"
echo "${LINE:-RQEMU-LINUX: no result line}"
case "$LINE" in
  "RQEMU-LINUX: PASS"*) exit 0 ;;
  "RQEMU-LINUX: FAIL"*) tr -d '\r' <"$LOG" | grep -a '^guest' | tail -n 30; exit 1 ;;
  *) tail -n 30 "$LOG"; exit 2 ;;
esac

#!/bin/sh
# trace-request.sh: one request's journey through the layers, from a trace in the log format
# (`PID[/THREAD]@SECONDS.MICROS:event args`, what `-trace ...,file=FILE,thread=on` writes).
#
#   scripts/trace-request.sh [-s START_EVENT] [-n N] TRACE_FILE
#
# It starts at the N-th (default 1st) START_EVENT line (default: the first device or
# BlockBackend request event: ide_sector_write/read, virtio_blk_handle_*, blk_co_p*) and
# follows the trace in time order until the request is over: the completion callback
# (blk_aio_complete) and the device's completion events right after it (the status, the
# interrupt: ide_bus_set_irq, virtio_notify, virtio_notify_irqfd; none when the guest polls,
# as SeaBIOS does), or, without a device, the completion callback or the start of the next request of the same kind (rqemu-io
# has no completion event: its request ends when the next begins). Register-level events (ide_ioport_*, ide_data_*, kvm_run_exit,
# pci_cfg_*) are left out. Each step shows its time, the thread it ran on (with thread=on),
# and the layer; the summary charges the time between two steps to the layer of the first
# one: that is where the request was until the next layer saw it.
#
# It follows time, not request ids: on a trace with several requests in flight, steps of
# other requests interleave. The test guests issue one request at a time.
#
# Example (see docs/WALKTHROUGH.md):
#   rqemu-io -f qcow2 -T 'blk_*,bdrv_*,qcow2_*,thread_pool_*,file=t.log,thread=on' \
#            -c 'write 0 4k' disk.qcow2
#   scripts/trace-request.sh -s blk_co_pwritev t.log

set -eu

start=""
nth=1
while getopts s:n:h opt; do
    case $opt in
        s) start=$OPTARG ;;
        n) nth=$OPTARG ;;
        *) sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
if [ $# -ne 1 ]; then
    echo "usage: $0 [-s START_EVENT] [-n N] TRACE_FILE" >&2
    exit 2
fi
case $nth in ''|*[!0-9]*) echo "$0: -n expects a number" >&2; exit 2 ;; esac
[ -r "$1" ] || { echo "$0: cannot read $1" >&2; exit 2; }

awk -v start="$start" -v nth="$nth" '
function layer(ev, args,   bs) {
    if (ev ~ /^ide_sector_/) return "IDE, then the hop to the loop"
    if (ev ~ /^ide_/) return "IDE device (hw/ide)"
    if (ev ~ /^virtio_blk_/ || ev == "virtio_queue_notify") return "virtio-blk device"
    if (ev ~ /^virtio_/) return "virtio transport/irq"
    if (ev ~ /^blk_aio_complete/) return "completion BH -> device callback"
    if (ev ~ /^blk_/) return "BlockBackend"
    if (ev ~ /^bdrv_/) {
        bs = args; sub(/^bs /, "", bs); sub(/ .*/, "", bs)
        return "block/io [" ((bs in fmt) ? fmt[bs] : "node " bs) "]"
    }
    if (ev ~ /^qcow2_/) return "qcow2 driver"
    if (ev == "thread_pool_submit_aio") return "worker thread (system call)"
    if (ev == "thread_pool_complete_aio") return "worker -> main loop (completion BH)"
    if (ev ~ /^luring_/) return "io_uring"
    return "other"
}
function noise(ev) {
    return ev ~ /^(ide_ioport_|ide_data_|ide_status_read|ide_ctrl_write|kvm_run_exit|pci_cfg_)/
}
function is_start(ev) {
    if (start != "") return ev == start
    return ev ~ /^(ide_sector_(read|write)|virtio_blk_handle_|blk_co_p)/
}
function kind(ev) {
    if (ev ~ /^ide_sector_/) return "ide"
    if (ev ~ /^virtio_blk_handle_/) return "virtio"
    if (ev ~ /^blk_co_p/) return "blk"
    return ""
}
function is_end(ev, args) {
    if (ev == "ide_bus_set_irq") return args ~ /level 1$/
    return ev == "virtio_notify_irqfd"
}
{
    # PID[/THREAD]@SECONDS.MICROS:event args
    if (!match($0, /^[0-9]+(\/[^@]*)?@[0-9]+\.[0-9]+:[a-z_0-9]+/)) next
    head = substr($0, 1, index($0, ":") - 1)
    rest = substr($0, index($0, ":") + 1)
    ev = rest; sub(/ .*/, "", ev)
    args = substr(rest, length(ev) + 2)
    thread = "-"
    if (index(head, "/")) { thread = substr(head, index(head, "/") + 1); sub(/@.*/, "", thread) }
    ts = substr(head, index(head, "@") + 1)
    split(ts, p, ".")
    us = p[1] * 1000000 + p[2]
    if (ev == "bdrv_open_common") {
        bs = args; sub(/^bs /, "", bs); sub(/ .*/, "", bs)
        f = args; sub(/.*format_name "/, "", f); sub(/".*/, "", f)
        fmt[bs] = f
        next
    }
    if (!following) {
        if (!is_start(ev) || ++seen < nth) next
        following = 1
        device = ev ~ /^(ide_|virtio_)/
        t0 = us
        printf "request: %s %s (line %d)\n\n", ev, args, NR
        printf "%9s %8s  %-16s %-36s %s\n", "t(us)", "+(us)", "thread", "layer", "event"
        first_kind = kind(ev)
    } else if (noise(ev)) {
        next
    } else if (kind(ev) == first_kind) {
        ended_by_next = 1
        exit
    } else if (after_callback && ev !~ /^(ide_bus_set_irq|virtio_blk_req_complete|virtio_notify|virtio_pci_intx)/) {
        done = 1
        exit
    }
    if (n > 0) {
        spent[last_layer] += us - prev
        if (!(last_layer in order_seen)) { order_seen[last_layer] = 1; order[++norder] = last_layer }
    }
    l = layer(ev, args)
    printf "%9.0f %8.0f  %-16s %-36s %s %s\n", us - t0, n ? us - prev : 0, thread, l, ev, args
    n++; prev = us; last_layer = l
    if (is_end(ev, args)) { done = 1; exit }
    if (ev == "blk_aio_complete") after_callback = 1
}
END {
    if (!following) { print "no request start found" > "/dev/stderr"; exit 1 }
    if (ended_by_next) print "(the next request begins)"
    else if (!done) print "(the trace ends before the request completes)"
    printf "\ntime per layer (us), charged to the layer a step leaves:\n"
    for (i = 1; i <= norder; i++) printf "  %-36s %9.0f\n", order[i], spent[order[i]]
    printf "  %-36s %9.0f\n", "total", prev - t0
}
' "$1"

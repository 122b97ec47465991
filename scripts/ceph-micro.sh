#!/bin/bash
# ceph-micro.sh: a throw-away one-node Ceph cluster for the rbd tests and benchmarks.
#
#   scripts/ceph-micro.sh start DIR   one monitor + one memstore OSD on 127.0.0.1, cephx,
#                                     pool "rbd"; writes DIR/ceph.conf and DIR/keyring
#   scripts/ceph-micro.sh stop DIR    stops exactly the daemons started in DIR
#
# Needs Debian's ceph-mon, ceph-osd and ceph-common (Ceph 16); clients need librbd1.
# Everything lives under DIR: no systemd, no /etc/ceph, no root. The OSD keeps objects in
# RAM (memstore, CEPH_MICRO_MEM_BYTES, default 1 GiB), so keep images small. Pitfalls:
# a pool of size 1 needs "mon allow pool size one"; without a mgr the cluster reports
# HEALTH_WARN but serves I/O; "rbd pool init" doubles as the wait for active PGs.
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
action=$1
mkdir -p "$2"
dir=$(cd "$2" && pwd)
conf=$dir/ceph.conf
wait_s=${CEPH_MICRO_TIMEOUT:-60}

# A daemon is ours when its command line names our configuration file.
is_ours() { [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF -- "$conf"; }

stop_daemon() {     # stop_daemon PIDFILE: TERM, wait up to 10 s, then KILL
    local pidfile=$1 pid i
    [ -e "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if is_ours "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 100); do is_ours "$pid" || break; sleep 0.1; done
        if is_ours "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    fi
    rm -f "$pidfile"
}

do_stop() {
    stop_daemon "$dir/run/osd.0.pid"
    stop_daemon "$dir/run/mon.a.pid"
}

pick_port() {       # an even port P with P and P+1 free on 127.0.0.1
    python3 -c '
import random, socket
for _ in range(500):
    p = random.randrange(20000, 60000, 2)
    try:
        for q in (p, p + 1):
            with socket.socket() as s: s.bind(("127.0.0.1", q))
    except OSError:
        continue
    print(p); break'
}

retry() {           # retry CMD...: until it succeeds or the timeout passes
    local deadline=$((SECONDS + wait_s))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || { echo "ceph-micro: timed out: $*" >&2; return 1; }
        sleep 0.2
    done
}

do_start() {
    [ ! -e "$conf" ] || { echo "ceph-micro: $conf exists (stop and remove $dir first)" >&2; exit 1; }
    mkdir -p "$dir"/{mon,osd,run,log}
    local fsid port mons
    fsid=$(cat /proc/sys/kernel/random/uuid)
    port=${CEPH_MICRO_PORT:-$(pick_port)}
    mons="[v2:127.0.0.1:$port,v1:127.0.0.1:$((port + 1))]"
    cat >"$conf" <<EOF
[global]
fsid = $fsid
mon host = $mons
public addr = 127.0.0.1
public network = 127.0.0.0/8
cluster network = 127.0.0.0/8
keyring = $dir/keyring
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
run dir = $dir/run
pid file = $dir/run/\$type.\$id.pid
admin socket = $dir/run/\$name.\$pid.asok
log file = $dir/log/\$name.log
log to stderr = false
err to stderr = true
client mount timeout = 30
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0

[mon]
admin socket = $dir/run/\$name.asok
mon data = $dir/mon
mon cluster log file = $dir/log/cluster.log
paxos propose interval = 0.05
paxos min wait = 0.01

[osd]
admin socket = $dir/run/\$name.asok
osd data = $dir/osd
osd objectstore = memstore
memstore device bytes = ${CEPH_MICRO_MEM_BYTES:-1073741824}
osd crush update on start = false
osd class update on start = false
osd class load list = *
osd class default list = *
osd max object name len = 256
osd max object namespace len = 64
EOF
    trap 'echo "ceph-micro: start failed, stopping" >&2; do_stop' ERR
    local keyring=$dir/keyring
    ceph-authtool --create-keyring "$keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
    ceph-authtool "$keyring" --gen-key -n client.admin --cap mon 'allow *' \
        --cap osd 'allow *' --cap mgr 'allow *' >/dev/null
    ceph-authtool "$keyring" --gen-key -n osd.0 --cap mon 'allow profile osd' \
        --cap osd 'allow *' >/dev/null
    monmaptool --create --fsid "$fsid" --addv a "$mons" "$dir/monmap" >/dev/null
    ceph-mon -c "$conf" -i a --mkfs --monmap "$dir/monmap" --keyring "$keyring"
    ceph-mon -c "$conf" -i a
    retry ceph -c "$conf" --connect-timeout 5 mon stat
    local uuid id
    uuid=$(cat /proc/sys/kernel/random/uuid)
    id=$(ceph -c "$conf" osd new "$uuid")
    [ "$id" = 0 ] || { echo "ceph-micro: got osd.$id, expected osd.0" >&2; exit 1; }
    ceph -c "$conf" osd crush add osd.0 1 root=default >/dev/null 2>&1
    ceph -c "$conf" osd pool create rbd 8 8 >/dev/null 2>&1
    ceph-osd -c "$conf" -i 0 --mkfs --osd-uuid "$uuid" >"$dir/log/osd-mkfs.log" 2>&1
    ceph-osd -c "$conf" -i 0
    # Returns once the pool's placement groups are active, i.e. I/O can start.
    timeout "$wait_s" rbd -c "$conf" pool init rbd
    echo "ceph-micro: cluster up in $dir (mon $mons)" >&2
}

case $action in
    start) do_start ;;
    stop) do_stop ;;
    *) usage ;;
esac

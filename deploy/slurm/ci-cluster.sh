#!/usr/bin/env bash
# A throwaway single-node Slurm cluster on loopback, for tests and CI (not for production).
#
#   ci-cluster.sh start DIR   write DIR/slurm.conf, start slurmctld + slurmd, wait until the node is idle
#   ci-cluster.sh stop DIR    cancel its jobs, stop both daemons (by their pid files), wait for them to exit
#
# After `start`, use the cluster with:  export SLURM_CONF=DIR/slurm.conf
# Needs Debian's slurm-wlm (apt-get install -y slurm-wlm) and root: slurmd launches jobs as their user.
# No munge: auth/none and cred/none are safe only because every daemon listens on 127.0.0.1.
#
# Environment: SLURM_CI_CTLD_PORT / SLURM_CI_SLURMD_PORT (default 16817 / 16818, away from the
# standard 6817/6818 so a real Slurm on the machine is not disturbed), SLURM_CI_CPUS (default: nproc).
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
action=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd)
conf=$dir/slurm.conf

write_conf() {
    local host cpus
    host=$(hostname -s)
    cpus=${SLURM_CI_CPUS:-$(nproc)}
    mkdir -p "$dir/state" "$dir/spool" "$dir/log"
    cat > "$conf" <<EOF
ClusterName=octbatch-ci
SlurmctldHost=${host}(127.0.0.1)
SlurmctldPort=${SLURM_CI_CTLD_PORT:-16817}
SlurmdPort=${SLURM_CI_SLURMD_PORT:-16818}
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# Finished jobs stay visible to scontrol for 5 minutes (there is no accounting database).
MinJobAge=300
NodeName=${host} NodeAddr=127.0.0.1 NodeHostname=${host} CPUs=${cpus} State=UNKNOWN
PartitionName=ci Nodes=${host} Default=YES MaxTime=INFINITE State=UP
EOF
}

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
    if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null; then
        echo "slurmctld/slurmd not found: apt-get install -y slurm-wlm" >&2
        exit 1
    fi
    write_conf
    export SLURM_CONF=$conf
    # -i: ignore state left by an earlier cluster in the same folder.
    slurmctld -f "$conf" -i
    slurmd -f "$conf"
    for _ in $(seq 1 100); do
        if sinfo -h -N -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
            echo "export SLURM_CONF=$conf"
            return 0
        fi
        sleep 0.2
    done
    echo "the node did not become idle in 20 s; logs in $dir/log" >&2
    tail -n 20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
    stop
    exit 1
}

stop() {
    export SLURM_CONF=$conf
    if alive "$dir/slurmctld.pid"; then
        scancel --full --quiet --partition=ci 2>/dev/null || true
    fi
    for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do
        alive "$pidfile" && kill -TERM "$(cat "$pidfile")" 2>/dev/null || true
    done
    for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do
        for _ in $(seq 1 50); do alive "$pidfile" || break; sleep 0.1; done
        if alive "$pidfile"; then kill -KILL "$(cat "$pidfile")" 2>/dev/null || true; fi
    done
}

case $action in
    start) start ;;
    stop) stop ;;
    *) usage ;;
esac

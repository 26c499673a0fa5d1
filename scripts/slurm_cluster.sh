#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the cluster tests (tests/e2e/test_slurm.py) and for
# trying `python train.py -m hydra/launcher=slurm ...` without a real cluster.
#
#   bash scripts/slurm_cluster.sh          # install slurm-wlm + munge when missing, start, wait for the node
#   bash scripts/slurm_cluster.sh stop     # stop slurmd, slurmctld and munged
#   bash scripts/slurm_cluster.sh status   # one line: is the node up
#
# Idempotent: a second start with everything running only prints the status line. Needs root (apt-get,
# daemons under /etc, /var). The node is the local host name, CPUs = nproc, RealMemory from `free`;
# JobRequeue=1 so `scontrol requeue JOBID` (what a preempting cluster does) puts a running job back.
# No systemd: the daemons are started directly (they fork to the background themselves).
set -euo pipefail

NODE=$(hostname -s)
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
LOG_DIR=/var/log/slurm
WAIT_S=${SLURM_CLUSTER_WAIT_S:-60}

log() { echo "slurm_cluster: $*" >&2; }

status_line() {
    # scontrol ping answers at once when slurmctld is down (sinfo retries for ~10 s)
    if command -v sinfo >/dev/null 2>&1 && scontrol ping >/dev/null 2>&1 && timeout 10 sinfo -h -o '%T' -n "$NODE" 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'; then
        echo "slurm_cluster: up: node $NODE $(sinfo -h -o '%T, %c CPUs, %m MB' -n "$NODE"), partition $(sinfo -h -o '%P' | head -1)"
        return 0
    fi
    echo "slurm_cluster: down"
    return 1
}

kill_pidfile() {  # name pidfile: end the daemon a pid file names and wait (15 s at most) until it is gone
    local name=$1 pidfile=$2 pid
    [[ -f $pidfile ]] || return 0
    pid=$(cat "$pidfile")
    if kill "$pid" 2>/dev/null; then
        for _ in $(seq 75); do
            # gone, or a zombie its parent has not reaped yet
            [[ $(ps -o stat= -p "$pid" 2>/dev/null) == Z* || -z $(ps -o stat= -p "$pid" 2>/dev/null) ]] && break
            sleep 0.2
        done
        log "stopped $name"
    fi
    rm -f "$pidfile"
}

stop() {
    # only the daemons this script starts, by the pid files they write
    kill_pidfile slurmd /run/slurmd.pid
    kill_pidfile slurmctld /run/slurmctld.pid
    kill_pidfile munged /run/munge/munged.pid
    echo "slurm_cluster: stopped"
}

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sbatch >/dev/null; then
        return
    fi
    log "installing slurm-wlm and munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # --no-install-recommends: the daemons and clients, without MySQL, docs or X
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

write_conf() {
    local cpus mem_mb
    cpus=$(nproc)
    mem_mb=$(free -m | awk '/^Mem:/ {print $2}')
    mem_mb=$((mem_mb * 95 / 100))  # under what slurmd measures, so the node is never drained for "Low RealMemory"
    mkdir -p "$CONF_DIR" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd
    cat >"$CONF.new" <<EOF
# written by scripts/slurm_cluster.sh: a one-node cluster on $NODE
ClusterName=local
SlurmctldHost=$NODE
SlurmUser=root
AuthType=auth/munge
# a requeued job waits cred_expire seconds before it starts again (120 by default): 10 for the tests
AuthInfo=cred_expire=10
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# look at pending (e.g. requeued) jobs every 2 s, not every 60/30 s
SchedulerParameters=sched_interval=2,bf_interval=2
MpiDefault=none
JobRequeue=1
ReturnToService=2
# the tests preempt jobs; a short kill wait keeps a requeue quick
KillWait=10
MinJobAge=300
SlurmdTimeout=60
InactiveLimit=0
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    if [[ -f $CONF ]] && cmp -s "$CONF" "$CONF.new"; then
        rm "$CONF.new"
    else
        mv "$CONF.new" "$CONF"
        log "wrote $CONF ($cpus CPUs, $mem_mb MB)"
        CONF_CHANGED=1
    fi
    # no cgroup.conf: with proctrack/linuxproc and task/none nothing uses cgroups (22.05 has no
    # CgroupPlugin=disabled; slurmd refuses to start with it)
}

start_munge() {
    if [[ ! -s /etc/munge/munge.key ]]; then
        mkdir -p /etc/munge
        mungekey -c -f -k /etc/munge/munge.key
        log "created /etc/munge/munge.key"
    fi
    chown munge:munge /etc/munge/munge.key 2>/dev/null || true
    chmod 0400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return
    fi
    runuser -u munge -- munged 2>/dev/null || munged --force
    for _ in $(seq 20); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return
        sleep 0.25
    done
    log "munged did not start"; exit 1
}

start_daemon() {  # name: start it unless its pid file names a live process
    local name=$1 pidfile=/run/$1.pid
    if [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        return
    fi
    "$name"
    log "started $name"
}

start() {
    install
    write_conf
    start_munge
    if [[ ${CONF_CHANGED:-0} == 1 ]]; then  # running daemons read the old file: restart them
        log "restarting the slurm daemons for the new configuration"
        kill_pidfile slurmd /run/slurmd.pid
        kill_pidfile slurmctld /run/slurmctld.pid
    fi
    start_daemon slurmctld
    start_daemon slurmd
    local deadline=$((SECONDS + WAIT_S))
    until status_line >/dev/null; do
        if ((SECONDS > deadline)); then
            log "the node is not idle after ${WAIT_S}s: $(sinfo -h -N -o '%N %T %E' 2>&1 || true)"
            log "logs: $LOG_DIR/slurmctld.log $LOG_DIR/slurmd.log"
            exit 1
        fi
        # a node left down or drained by an earlier stop comes back
        scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
        sleep 1
    done
    status_line
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    status) status_line ;;
    *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac

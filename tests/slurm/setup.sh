#!/usr/bin/env bash
# tests/slurm/setup.sh [install|start|stop|status] -- the one-node Slurm cluster the tests use.
#
#   install  apt packages if missing (as root), then start       (what ./dev.sh test runs)
#   start    write the config, start munged, slurmctld and slurmd without systemd,
#            wait until the node is idle and a probe job completes
#   stop     stop the three daemons (only the pids in their pid files)
#   status   exit 0 if the cluster answers and the node is usable
#
# Idempotent: with the daemons healthy and the config unchanged, start is a no-op
# apart from the checks. The cluster is named after `hostname -s`, has partitions
# small (default), gpu and manycore on that one node, two fake GPUs (gres on
# /dev/null and /dev/zero) and declares 8 CPUs and 64 GiB whatever the machine
# has (SlurmdParameters=config_overrides): tiers are scheduled, not enforced
# (TaskPlugin=task/none), so the tests can run every tier on a 2-core machine.
#
# Env: SLURM_START_TIMEOUT (seconds, default 60).
set -euo pipefail

ACTION=${1:-start}
CONF_DIR=/etc/slurm
HOST=$(hostname -s)
RUN=/run/slurm
LOG=/var/log/slurm
CTLD_PID=$RUN/slurmctld.pid
SLURMD_PID=$RUN/slurmd.pid
MUNGE_PID=/run/munge/munged.pid
TIMEOUT=${SLURM_START_TIMEOUT:-60}
PACKAGES=(munge slurmctld slurmd slurm-client)

log() { printf '\033[1;34m[slurm]\033[0m %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    local f
    for f in $LOG/slurmctld.log $LOG/slurmd.log /var/log/munge/munged.log; do
        [ -s "$f" ] && { echo "---- last lines of $f" >&2; tail -n 20 "$f" >&2; }
    done
    exit 1
}

need_root() {
    [ "$(id -u)" = 0 ] || die "$ACTION needs root (it installs packages and starts munged, slurmctld and slurmd)"
}

# alive PIDFILE COMM: the pid in PIDFILE runs, is not a zombie, and is COMM
alive() {
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] &&
        ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null
}

install_packages() {
    local missing=() p rc=0 added='' aptlog=/tmp/ds-compute-slurm-apt.log prc=/usr/sbin/policy-rc.d
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-cache show slurmd >/dev/null 2>&1 || apt-get update -qq >"$aptlog" 2>&1
    # keep the packages' maintainer scripts from starting daemons (we start our own)
    [ -e $prc ] || { printf '#!/bin/sh\nexit 101\n' >$prc; chmod +x $prc; added=1; }
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$aptlog" 2>&1 || rc=$?
    [ -z "$added" ] || rm -f $prc
    [ $rc = 0 ] || { cat "$aptlog" >&2; die "apt-get install failed"; }
}

setup_dirs() {
    id slurm >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin slurm
    install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
    install -d -o munge -g munge -m 0755 /run/munge
    if [ ! -s /etc/munge/munge.key ]; then
        log "creating the munge key"
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    install -d -o slurm -g slurm -m 0755 "$RUN" "$LOG" /var/spool/slurmctld /var/spool/slurmd
    install -d -m 0755 "$CONF_DIR"
}

CHANGED=0
# put NEW DEST: install NEW as DEST if it differs; remember that something changed
put() {
    cmp -s "$1" "$2" || { install -m 0644 "$1" "$2"; CHANGED=1; }
    rm -f "$1"
}

write_config() {
    local tmp
    tmp=$(mktemp)
    cat >"$tmp" <<CONF
# Written by jupyter-ds-compute tests/slurm/setup.sh: a one-node test cluster.
ClusterName=$(echo "$HOST" | tr 'A-Z' 'a-z' | tr -c 'a-z0-9\n' '-' | cut -c1-40)
SlurmctldHost=$HOST(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
SlurmUser=slurm
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=256
GresTypes=gpu
# the node declares more than the machine has; slurmd must not drain it for that
SlurmdParameters=config_overrides
ReturnToService=2
# schedule at once after each submit; a job waiting for GPUs must not reserve the node
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,bf_min_age_reserve=86400
KillWait=2
InactiveLimit=0
# ended jobs stay visible to squeue this long (the hub reads why they ended)
MinJobAge=300
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=8 Boards=1 SocketsPerBoard=1 CoresPerSocket=8 ThreadsPerCore=1 RealMemory=65536 Gres=gpu:2 State=UNKNOWN
PartitionName=small    Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:8
PartitionName=gpu      Nodes=$HOST MaxTime=INFINITE State=UP OverSubscribe=FORCE:8
PartitionName=manycore Nodes=$HOST MaxTime=INFINITE State=UP OverSubscribe=FORCE:8
CONF
    put "$tmp" "$CONF_DIR/slurm.conf"
    # two fake GPUs: Slurm wants one distinct device file per GPU
    tmp=$(mktemp)
    printf 'NodeName=%s Name=gpu File=%s\n' "$HOST" /dev/null "$HOST" /dev/zero >"$tmp"
    put "$tmp" "$CONF_DIR/gres.conf"
}

# launch PIDFILE COMM CMD...: start CMD unless COMM already runs; wait for its pid file
launch() {
    local pf=$1 comm=$2
    shift 2
    alive "$pf" "$comm" && return 0
    log "starting $comm"
    "$@" || die "$comm failed to start"
    for _ in $(seq 100); do
        alive "$pf" "$comm" && return 0
        sleep 0.1
    done
    die "$comm did not come up (no live pid in $pf)"
}

# stop_one PIDFILE COMM: TERM the pid in PIDFILE (KILL after 10 s)
stop_one() {
    local pid
    alive "$1" "$2" || { rm -f "$1"; return 0; }
    pid=$(cat "$1")
    kill "$pid"
    for _ in $(seq 100); do
        alive "$1" "$2" || break
        sleep 0.1
    done
    if alive "$1" "$2"; then
        log "$2 ($pid) did not exit, sending KILL"
        kill -9 "$pid"
    fi
    rm -f "$1"
    log "stopped $2 ($pid)"
}

node_state() { sinfo -h -n "$HOST" -o %t 2>/dev/null | head -n1 | tr -d '*~#'; }

healthy() {
    alive "$MUNGE_PID" munged && alive "$CTLD_PID" slurmctld && alive "$SLURMD_PID" slurmd || return 1
    case $(node_state) in idle | mix | alloc) return 0 ;; esac
    return 1
}

do_stop() {
    stop_one "$SLURMD_PID" slurmd
    stop_one "$CTLD_PID" slurmctld
    stop_one "$MUNGE_PID" munged
}

probe_job() {
    local id st=''
    id=$(sbatch --parsable -J ds-compute-probe -p small -D /tmp -o /dev/null --wrap true) || die "sbatch failed"
    for _ in $(seq $((TIMEOUT * 10))); do
        st=$(scontrol show job -o "$id" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2) || true
        case $st in
            COMPLETED) return 0 ;;
            FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | BOOT_FAIL) die "probe job $id ended $st" ;;
        esac
        sleep 0.1
    done
    die "probe job $id did not complete in ${TIMEOUT}s (state: '${st:-none}')"
}

do_start() {
    need_root
    command -v slurmctld >/dev/null || die "Slurm is not installed: run '$0 install' (as root)"
    setup_dirs
    write_config
    if [ $CHANGED = 0 ] && healthy; then
        log "slurm already up on $HOST (node $(node_state))"
        return 0
    fi
    if [ $CHANGED = 1 ] && alive "$CTLD_PID" slurmctld; then
        log "config changed: restarting the daemons"
        do_stop
    fi
    launch "$MUNGE_PID" munged runuser -u munge -- /usr/sbin/munged
    munge -n | unmunge >/dev/null || die "munge self-test failed"
    launch "$CTLD_PID" slurmctld /usr/sbin/slurmctld
    launch "$SLURMD_PID" slurmd /usr/sbin/slurmd
    local state=''
    for _ in $(seq $((TIMEOUT * 5))); do
        state=$(node_state) || true
        case $state in idle | mix | alloc) break ;; esac
        # a node left down by an earlier run comes back on request
        case $state in down | drain | drng) scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;; esac
        alive "$CTLD_PID" slurmctld || die "slurmctld died"
        alive "$SLURMD_PID" slurmd || die "slurmd died"
        sleep 0.2
    done
    case $state in idle | mix | alloc) ;; *) die "node $HOST not usable after ${TIMEOUT}s (state '${state:-none}')" ;; esac
    probe_job
    log "slurm up on $HOST: partitions $(sinfo -h -o %P | tr '\n' ' ')"
}

do_status() {
    if healthy; then
        sinfo
        return 0
    fi
    echo "slurm is not running (or node $HOST is not usable)" >&2
    return 1
}

case $ACTION in
    install)
        if [ "$(id -u)" != 0 ]; then
            # ./dev.sh test as a normal user: nothing to do; the Slurm tests skip themselves
            log "not root: Slurm not installed or started (tests/test_slurm.py will be skipped)"
            exit 0
        fi
        install_packages
        do_start
        ;;
    start) do_start ;;
    stop) need_root; do_stop ;;
    status) do_status ;;
    *)
        echo "usage: $0 [install|start|stop|status]" >&2
        exit 2
        ;;
esac

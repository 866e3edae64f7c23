#!/usr/bin/env bash
# A throwaway single-node SLURM cluster on this machine, for the cluster tests
# (tests/cluster/test_slurm.py, `make test-slurm`).
#
#   tests/cluster/slurm_cluster.sh up      install (if missing), configure, start, wait until idle
#   tests/cluster/slurm_cluster.sh down    cancel its jobs, stop the daemons, remove its slurm.conf
#   tests/cluster/slurm_cluster.sh status  show what runs
#
# Needs root. Uses Debian's slurm-wlm and munge (installed with apt-get when
# missing). The node is `localhost` with this machine's CPUs and memory, in one
# partition; there is no accounting database (`sacct` does not work, so the
# Snakemake profile queries job states with `squeue`, which keeps finished jobs for
# MinJobAge seconds). Both subcommands are idempotent.
#
# Environment: RANDLABELS_SLURM_DIR (state, spool and logs; default
# /var/spool/randlabels-slurm), RANDLABELS_SLURM_PARTITION (default `test`).
# It writes /etc/slurm/slurm.conf, so that every SLURM command finds the cluster,
# and refuses to replace a slurm.conf it did not write. `down` removes it again: a
# slurm.conf naming a controller that does not run makes `scontrol` wait 9 s, and
# Snakemake's SLURM plugin calls it whenever Snakemake starts.
set -euo pipefail

DIR=${RANDLABELS_SLURM_DIR:-/var/spool/randlabels-slurm}
PARTITION=${RANDLABELS_SLURM_PARTITION:-test}
CONF=/etc/slurm/slurm.conf
MARKER="# Written by randlabels tests/cluster/slurm_cluster.sh: a throwaway test cluster."
MUNGE_KEY=/etc/munge/munge.key
MUNGE_PID=/run/munge/munged.pid

say() { echo "slurm_cluster: $*" >&2; }
die() { say "error: $*"; exit 1; }

require_root() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages, writes $CONF and starts munged, slurmctld and slurmd); try: sudo $0 ${1:-up}"
}

# pid from a pid file, if that process is alive.
alive_pid() {
    local file=$1 pid
    [ -s "$file" ] || return 1
    pid=$(cat "$file")
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

install_packages() {
    local missing=()
    command -v munged >/dev/null || missing+=(munge)
    for tool in slurmctld slurmd sbatch squeue sinfo; do
        command -v "$tool" >/dev/null || { missing+=(slurm-wlm); break; }
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    # Debian's packages try to start the daemons through the init system; in a
    # container that fails harmlessly, and we start them ourselves below.
    local log
    log=$(mktemp /tmp/randlabels-slurm-apt.XXXXXX)
    if ! apt-get install -y -q --no-install-recommends slurm-wlm munge >"$log" 2>&1; then
        apt-get update -q >>"$log" 2>&1 || true
        if ! apt-get install -y -q --no-install-recommends slurm-wlm munge >>"$log" 2>&1; then
            tail -n 20 "$log" >&2
            die "apt-get install slurm-wlm munge failed (full output: $log)"
        fi
    fi
    rm -f "$log"
}

start_munge() {
    if [ ! -s "$MUNGE_KEY" ]; then
        say "creating a munge key"
        install -d -o munge -g munge -m 0700 /etc/munge
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile="$MUNGE_KEY"
        else
            dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
        fi
        chown munge:munge "$MUNGE_KEY"
        chmod 0400 "$MUNGE_KEY"
    fi
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
    if ! alive_pid "$MUNGE_PID" >/dev/null; then
        say "starting munged"
        runuser -u munge -- /usr/sbin/munged --pid-file="$MUNGE_PID" \
            || die "munged did not start (see /var/log/munge/munged.log)"
    fi
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "munge does not work: 'munge -n | unmunge' fails (see /var/log/munge/munged.log)"
}

write_config() {
    local cpus mem new
    cpus=$(getconf _NPROCESSORS_ONLN)
    mem=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
    if [ -e "$CONF" ] && ! grep -qxF "$MARKER" "$CONF"; then
        die "$CONF exists and was not written by this script; refusing to replace a real cluster's configuration"
    fi
    install -d -m 0755 "$DIR" "$DIR/ctld" "$DIR/d" "$DIR/log" /etc/slurm
    new=$(cat <<EOF
$MARKER
# tests/cluster/slurm_cluster.sh down stops the cluster and removes this file.
ClusterName=randlabels
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
# No cgroups: track processes through /proc, bind no CPUs.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# CPUs and memory are both consumable: a job's --mem and --cpus-per-task count.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
# No accounting database: sacct is unavailable, squeue answers for finished jobs
# for MinJobAge seconds (the Snakemake plugin needs well over 120 s).
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=3600
ReturnToService=2
KillWait=30
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/d
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
)
    if [ -e "$CONF" ] && [ "$(cat "$CONF")" = "$new" ]; then
        return 1  # unchanged
    fi
    printf '%s\n' "$new" >"$CONF"
    say "wrote $CONF (node localhost: $cpus CPUs, $mem MB; partition $PARTITION)"
    return 0
}

stop_daemon() {
    local name=$1 file=$2 pid
    pid=$(alive_pid "$file") || return 0
    say "stopping $name ($pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
}

node_state() {
    sinfo --noheader --nodes=localhost --format=%T 2>/dev/null | head -n 1
}

show_logs() {
    for log in "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log"; do
        [ -e "$log" ] && { say "last lines of $log:"; tail -n 20 "$log" >&2; }
    done
}

up() {
    require_root up
    install_packages
    start_munge
    if write_config; then
        # New or changed configuration: restart whatever runs with an old one.
        stop_daemon slurmd "$DIR/slurmd.pid"
        stop_daemon slurmctld "$DIR/slurmctld.pid"
    fi
    if ! alive_pid "$DIR/slurmctld.pid" >/dev/null; then
        say "starting slurmctld"
        # -c: start with an empty job queue (this cluster keeps nothing between runs).
        slurmctld -c || { show_logs; die "slurmctld did not start"; }
    fi
    if ! alive_pid "$DIR/slurmd.pid" >/dev/null; then
        say "starting slurmd"
        slurmd -N localhost || { show_logs; die "slurmd did not start"; }
    fi
    local state=""
    for i in $(seq 120); do
        state=$(node_state)
        case $state in
            idle|mixed|allocated) say "node localhost is $state, partition $PARTITION is up"; return 0 ;;
            down*|drain*|fail*) [ $((i % 10)) -eq 0 ] && scontrol update NodeName=localhost State=RESUME 2>/dev/null || true ;;
        esac
        sleep 0.5
    done
    show_logs
    die "node localhost did not become idle within 60 s (state: '${state:-unknown}')"
}

down() {
    require_root down
    if alive_pid "$DIR/slurmctld.pid" >/dev/null; then
        # Cancel what still runs: slurmstepd and the job's processes outlive slurmd.
        local jobs
        jobs=$(squeue --noheader --format=%i 2>/dev/null || true)
        if [ -n "$jobs" ]; then
            say "cancelling jobs $(echo $jobs)"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            for _ in $(seq 60); do
                [ -z "$(squeue --noheader --states=PENDING,RUNNING,COMPLETING --format=%i 2>/dev/null)" ] && break
                sleep 0.5
            done
        fi
    fi
    stop_daemon slurmd "$DIR/slurmd.pid"
    stop_daemon slurmctld "$DIR/slurmctld.pid"
    stop_daemon munged "$MUNGE_PID"
    if [ -e "$CONF" ] && grep -qxF "$MARKER" "$CONF"; then
        rm -f "$CONF"
    fi
    say "stopped"
}

status() {
    for pair in "munged:$MUNGE_PID" "slurmctld:$DIR/slurmctld.pid" "slurmd:$DIR/slurmd.pid"; do
        if pid=$(alive_pid "${pair#*:}"); then echo "${pair%%:*}: running ($pid)"; else echo "${pair%%:*}: stopped"; fi
    done
    if alive_pid "$DIR/slurmctld.pid" >/dev/null; then
        sinfo
        squeue
    fi
}

case ${1:-} in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac

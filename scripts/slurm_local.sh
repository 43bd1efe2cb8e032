#!/usr/bin/env bash
# A one-node SLURM cluster on this machine (slurmctld + slurmd on localhost, CPU-only), for the
# tests of the slurm launcher (tests/test_slurm.py) and for trying `run_table.py --launcher slurm`
# without a cluster. Everything it writes (config, munge key, state, logs) lives in DIR; it uses
# free ports and its own munge socket, so it never touches a system SLURM or munge.
#
#   bash scripts/slurm_local.sh start DIR   # installs Debian's slurm-wlm and munge when missing
#                                           # (root + apt-get), starts munged, slurmctld, slurmd
#   export SLURM_CONF=DIR/slurm.conf        # sbatch, squeue, scontrol ... now talk to it
#   bash scripts/slurm_local.sh stop DIR    # cancels its jobs, stops the daemons it started
#
# `start` exits non-zero with one line on stderr when it cannot install or start the cluster.
set -uo pipefail

die() { echo "error: slurm_local.sh: $*" >&2; exit 1; }

install_if_missing() {
  local missing=0 p
  for p in munged slurmctld slurmd sbatch; do command -v "$p" >/dev/null 2>&1 || missing=1; done
  [ "$missing" = 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "slurm-wlm and munge are not installed and this is not root: sudo apt-get install slurm-wlm munge"
  command -v apt-get >/dev/null 2>&1 || die "slurm-wlm and munge are not installed and there is no apt-get: install SLURM and munge"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -q && apt-get install -y -q --no-install-recommends slurm-wlm munge; } > "$DIR/apt.log" 2>&1 \
    || die "apt-get install slurm-wlm munge failed: $(tail -n 1 "$DIR/apt.log")"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

write_config() {
  local host cpus mem
  host=$(hostname -s)
  cpus=$(getconf _NPROCESSORS_ONLN)   # not nproc: it answers OMP_NUM_THREADS (1 in the test suite), not the machine
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))   # MB; half the machine
  cat > "$DIR/slurm.conf" <<EOF
ClusterName=ltsamlocal
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
# No cgroups (containers): track processes by parent, no CPU binding, so that a job computes
# exactly as the same command run outside SLURM (the tests compare the two bit for bit).
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
KillWait=5
MinJobAge=600
InactiveLimit=0
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
  mkdir -p "$DIR/munge" && chmod 700 "$DIR/munge"
  head -c 1024 /dev/urandom > "$DIR/munge/munge.key" && chmod 400 "$DIR/munge/munge.key"
  munged --force --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed" \
    > "$DIR/munge/start.log" 2>&1 || die "munged did not start: $(tail -n 1 "$DIR/munge/start.log")"
}

wait_for() {   # wait_for SECONDS COMMAND...: until the command succeeds
  local deadline=$(( $(date +%s) + $1 )); shift
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

node_idle() { sinfo -h -o %t | grep -qx idle; }

start() {
  mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log" || die "cannot write in $DIR"
  install_if_missing
  write_config
  export SLURM_CONF="$DIR/slurm.conf"
  start_munge
  slurmctld -f "$SLURM_CONF" -i > "$DIR/log/slurmctld.out" 2>&1 || die "slurmctld did not start: see $DIR/log/slurmctld.log"
  slurmd -f "$SLURM_CONF" -N "$(hostname -s)" > "$DIR/log/slurmd.out" 2>&1 || die "slurmd did not start: see $DIR/log/slurmd.log"
  wait_for 60 node_idle || die "the node did not come up within 60 s: see $DIR/log/slurmctld.log and slurmd.log"
  echo "export SLURM_CONF=$SLURM_CONF"
}

stop_pid() {   # stop_pid PIDFILE: SIGTERM the daemon it names, SIGKILL after 10 s
  local pid
  [ -f "$1" ] || return 0
  pid=$(cat "$1")
  kill "$pid" 2>/dev/null || return 0
  wait_for 10 bash -c "! kill -0 $pid" || kill -9 "$pid" 2>/dev/null
}

stop() {
  export SLURM_CONF="$DIR/slurm.conf"
  if [ -f "$DIR/slurmctld.pid" ]; then   # jobs first: their processes belong to slurmd's job steps
    scancel --quiet --user="$(id -un)" 2>/dev/null
    wait_for 30 bash -c '[ -z "$(squeue -h -t PD,R,CG,S,RQ -o %i 2>/dev/null)" ]'
  fi
  stop_pid "$DIR/slurmd.pid"
  stop_pid "$DIR/slurmctld.pid"
  stop_pid "$DIR/munge/munged.pid"
  return 0
}

[ $# = 2 ] || die "usage: bash scripts/slurm_local.sh start|stop DIR"
DIR=$(mkdir -p "$2" && cd "$2" && pwd) || die "cannot create $2"
case "$1" in
  start) start ;;
  stop) stop ;;
  *) die "unknown command $1; give start or stop" ;;
esac

#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for tests and for trying the sbatch scripts.
#
#   slurm/local-cluster.sh up   [DIR]   install slurm-wlm + munge (Debian) if absent, start munged,
#                                       slurmctld and slurmd; prints `export SLURM_CONF=DIR/slurm.conf`
#   slurm/local-cluster.sh down [DIR]   cancel every job, then stop the daemons it started
#   slurm/local-cluster.sh status [DIR] sinfo + squeue
#
# DIR (default /tmp/textclf-slurm) holds slurm.conf, state, spool, logs and pid files. Needs root
# (the daemons run as root, munged as munge) and no systemd. One node called localhost with this
# machine's CPUs and memory, one partition "debug". Ports: SLURMCTLD_PORT (6817) and SLURMD_PORT (6818),
# so a second cluster (e.g. the tests') can run beside one already up.
set -euo pipefail

CMD=${1:-up}
DIR=${2:-${TEXTCLF_SLURM_DIR:-/tmp/textclf-slurm}}
mkdir -p "$DIR"; DIR=$(cd "$DIR" && pwd)
export SLURM_CONF=$DIR/slurm.conf

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then return; fi
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "local-cluster: slurm-wlm/munge are not installed and this is not a root Debian machine" >&2; exit 3
  fi
  echo "local-cluster: installing slurm-wlm and munge (Debian packages)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

start_munge() {
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
  fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge; chmod 755 /run/munge
  if ! munge_ok; then
    # munged refuses to run as root ("Logfile is insecure"): run it as munge
    runuser -u munge -- /usr/sbin/munged
    touch "$DIR/munged.ours"
    for _ in $(seq 50); do munge_ok && return; sleep 0.1; done
    echo "local-cluster: munged did not start (see /var/log/munge/munged.log)" >&2; exit 1
  fi
}

write_conf() {
  local cpus mem
  cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # OpenMP settings (the tests set OMP_NUM_THREADS=1) must not shrink the node
  # RealMemory above what slurmd detects makes the node "inval": take slurmd -C minus 1 GiB
  mem=$(( $(slurmd -C | grep -oP 'RealMemory=\K[0-9]+') - 1024 ))
  mkdir -p "$DIR/state" "$DIR/spool"
  cat > "$DIR/slurm.conf" <<EOF
ClusterName=textclf
SlurmctldHost=localhost
SlurmctldPort=${SLURMCTLD_PORT:-6817}
SlurmdPort=${SLURMD_PORT:-6818}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
EnforcePartLimits=ALL
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
NodeName=localhost CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

up() {
  install_packages
  start_munge
  if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid"; then
    echo "export SLURM_CONF=$SLURM_CONF"; return
  fi
  write_conf
  slurmctld
  slurmd -N localhost
  for _ in $(seq 150); do
    if [ "$(sinfo -h -o %T 2>/dev/null)" = idle ]; then echo "export SLURM_CONF=$SLURM_CONF"; return; fi
    sleep 0.2
  done
  echo "local-cluster: the node did not become idle; see $DIR/slurmctld.log and $DIR/slurmd.log" >&2
  sinfo -R >&2 || true
  exit 1
}

stop_pid() {
  local f=$1 p st
  [ -s "$f" ] || return 0
  p=$(cat "$f")
  kill "$p" 2>/dev/null || return 0
  for _ in $(seq 100); do
    st=$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null) || return 0
    { [ -z "$st" ] || [ "$st" = Z ]; } && return 0
    sleep 0.1
  done
  echo "local-cluster: pid $p ($f) did not stop" >&2
}

down() {
  if [ -f "$SLURM_CONF" ] && alive "$DIR/slurmctld.pid"; then
    # killing slurmd does not kill running jobs: cancel them first and wait until they are gone
    local jobs
    jobs=$(squeue -h -o %i 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      for _ in $(seq 100); do squeue -h 2>/dev/null | grep -q . || break; sleep 0.2; done
    fi
  fi
  stop_pid "$DIR/slurmd.pid"
  stop_pid "$DIR/slurmctld.pid"
  if [ -e "$DIR/munged.ours" ]; then stop_pid /run/munge/munged.pid; rm -f "$DIR/munged.ours"; fi
}

case "$CMD" in
  up) up ;;
  down) down ;;
  status) sinfo; squeue ;;
  *) echo "usage: $0 up|down|status [DIR]" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Start a private single-node SLURM (munged, slurmctld, slurmd) for the SLURM integration test.
#
#   tests/slurm/start_slurm.sh DIR        start; prints "export SLURM_CONF=DIR/slurm.conf"
#   tests/slurm/start_slurm.sh DIR stop   stop the daemons started in DIR
#
# Needs Debian's slurm-wlm and munge (apt-get install -y slurm-wlm munge) and root (slurmd runs jobs as
# their submitting user). Nothing system-wide is changed: config, state, sockets, pids and logs all live in
# DIR, ports are picked free, the munge key is generated in DIR. No GPUs are configured (GRES-less): the
# jobs it runs are rehearsals. Accounting is off, so sacct fails and kohyawan falls back to scontrol.
set -euo pipefail
dir="$(mkdir -p "$1" && cd "$1" && pwd)"
action="${2:-start}"

stop() {
    for name in slurmd slurmctld munged; do
        if [[ -f "$dir/$name.pid" ]]; then
            kill "$(cat "$dir/$name.pid")" 2>/dev/null || true
        fi
    done
    sleep 1
    for name in slurmd slurmctld munged; do
        if [[ -f "$dir/$name.pid" ]]; then
            kill -9 "$(cat "$dir/$name.pid")" 2>/dev/null || true
            rm -f "$dir/$name.pid"
        fi
    done
}
if [[ "$action" == stop ]]; then stop; exit 0; fi

for tool in munged slurmctld slurmd sbatch; do
    command -v "$tool" >/dev/null || { echo "start_slurm: $tool not found (apt-get install -y slurm-wlm munge)" >&2; exit 3; }
done
[[ "$(id -u)" == 0 ]] || { echo "start_slurm: needs root (slurmd)" >&2; exit 3; }

mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
chmod 700 "$dir/munge"
[[ -f "$dir/munge/munge.key" ]] || { dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none; chmod 400 "$dir/munge/munge.key"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
ctld_port="$(free_port)"; d_port="$(free_port)"
host="$(hostname -s)"
cpus="$(nproc)"
mem_mb="$(awk '/MemTotal/ {print int($2/1024/2)}' /proc/meminfo)"

cat > "$dir/slurm.conf" <<CONF
ClusterName=kohyawan-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
SlurmctldPort=$ctld_port
SlurmdPort=$d_port
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=3600
SlurmdTimeout=60
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
export SLURM_CONF="$dir/slurm.conf"

munged --force --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
    --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munge/seed"
slurmctld -f "$dir/slurm.conf"
slurmd -f "$dir/slurm.conf"
for _ in $(seq 1 60); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
        echo "export SLURM_CONF=$dir/slurm.conf"
        exit 0
    fi
    sleep 0.5
done
echo "start_slurm: the node did not become idle; see $dir/slurmctld.log and $dir/slurmd.log" >&2
sinfo >&2 || true
tail -5 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
exit 1

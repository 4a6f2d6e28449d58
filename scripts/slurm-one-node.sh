#!/usr/bin/env bash
# The workflow on a real SLURM scheduler: bring up a one-node cluster on this machine from
# Debian's packages (slurm-wlm, munge, and the accounting the executor plugin queries through
# sacct: slurmdbd with a local MariaDB; every daemon on localhost only), run the smoke DAG
# through workflows/profiles/slurm (its marked values filled in for this cluster) and locally,
# and check that every rollout row equals the local run's in every column but the timing one and
# that every trained weights file has the local run's SHA-256 (CPU training is deterministic).
#
#   bash scripts/slurm-one-node.sh [WORK_DIR]     # root or sudo; ~30 min on 2 cores
#
# Not part of CI. Needs ./.venv (bash scripts/install.sh). Writes WORK_DIR/{local,slurm}
# (default /tmp/slurm-one-node) and WORK_DIR/report.json (both wall times and the check).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$(mkdir -p "${1:-/tmp/slurm-one-node}" && cd "${1:-/tmp/slurm-one-node}" && pwd)"
PY="$REPO/.venv/bin/python"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
CLUSTER=harness
ACCOUNT=harness
PARTITION=debug
HOST="$(hostname -s)"
DBPASS="harness-local-only"
say() { echo "== $(date +%H:%M:%S) $*"; }
die() { echo "error: $*" >&2; exit 1; }
[ -x "$PY" ] || die "$PY is missing: run bash scripts/install.sh first"

say "packages: slurm-wlm, slurmdbd, munge, mariadb-server (Debian), the SLURM executor plugin (PyPI)"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    slurm-wlm slurmdbd munge mariadb-server > "$WORK/apt.log"
"$PY" -m pip install -q -c "$REPO/constraints/lock.txt" -e "$REPO[cluster]"

say "munge (authentication between the daemons and the commands)"
[ -s /etc/munge/munge.key ] || $SUDO mungekey --create
$SUDO service munge start > /dev/null || true
munge -n | unmunge > /dev/null || die "munge does not work (see /var/log/munge/munged.log)"

say "MariaDB on localhost, the accounting database"
$SUDO service mariadb start > /dev/null || true
for _ in $(seq 30); do $SUDO mariadb-admin ping > /dev/null 2>&1 && break; sleep 1; done
$SUDO mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
  CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"

say "slurmdbd and slurm.conf: one node ($HOST), partition $PARTITION, accounting through slurmdbd"
$SUDO mkdir -p /etc/slurm /var/log/slurm /var/spool/slurmctld /var/spool/slurmd
$SUDO chown slurm:slurm /var/log/slurm /var/spool/slurmctld /var/spool/slurmd
$SUDO tee /etc/slurm/slurmdbd.conf > /dev/null <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=slurm
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DBPASS
StorageLoc=slurm_acct_db
CONF
$SUDO chown slurm:slurm /etc/slurm/slurmdbd.conf
$SUDO chmod 600 /etc/slurm/slurmdbd.conf
# the node as slurmd sees it, with 2 GB left to the system
NODE="$(slurmd -C | head -1)"
MEM="$(echo "$NODE" | sed -E 's/.*RealMemory=([0-9]+).*/\1/')"
NODE="$(echo "$NODE" | sed -E "s/RealMemory=[0-9]+/RealMemory=$((MEM - 2048))/")"
$SUDO tee /etc/slurm/slurm.conf > /dev/null <<CONF
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
$NODE NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
$SUDO service slurmdbd start > /dev/null || true
for _ in $(seq 30); do sacctmgr -n list cluster > /dev/null 2>&1 && break; sleep 1; done
sacctmgr -i add cluster "$CLUSTER" > /dev/null 2>&1 || true
sacctmgr -i add account "$ACCOUNT" Description=par-harness Organization=par-harness > /dev/null 2>&1 || true
sacctmgr -i add user "$(id -un)" Account="$ACCOUNT" DefaultAccount="$ACCOUNT" > /dev/null 2>&1 || true
$SUDO service slurmctld start > /dev/null || true
$SUDO service slurmd start > /dev/null || true
for _ in $(seq 60); do sinfo -h -o %T 2>/dev/null | grep -qx idle && break; sleep 1; done
sinfo -h -o %T | grep -qx idle || die "the node did not come up: $(sinfo 2>&1); see /var/log/slurm/"
JOB="$(sbatch --parsable -p "$PARTITION" -A "$ACCOUNT" -N1 -o /dev/null --wrap true)" || die "sbatch cannot submit to $PARTITION"
for _ in $(seq 60); do sacct -X -n -j "$JOB" -o State 2>/dev/null | grep -q COMPLETED && break; sleep 1; done
sacct -X -n -j "$JOB" -o State | grep -q COMPLETED || die "sacct does not see job $JOB finish (slurmdbd?)"
say "cluster up: $(sinfo -h -o '%P %D %c cpus %m MB %T')"

# the profile as a user fills it in, plus quicker status checks for jobs of seconds
mkdir -p "$WORK/profile"
sed -e "s/\"<PARTITION>\"/$PARTITION/" -e "s/\"<GPU_PARTITION>\"/$PARTITION/" -e "s/\"<ACCOUNT>\"/$ACCOUNT/" \
    "$REPO/workflows/profiles/slurm/config.yaml" > "$WORK/profile/config.yaml"
grep -q "<" "$WORK/profile/config.yaml" && die "a marked value is left in $WORK/profile/config.yaml"
printf 'slurm-init-seconds-before-status-checks: 5\nseconds-between-status-checks: 5\n' >> "$WORK/profile/config.yaml"

export HF_HUB_OFFLINE=1
run_dag() {  # $1: folder, rest: extra snakemake arguments; prints the wall seconds
    rm -rf "$1" && mkdir -p "$1"
    local start=$SECONDS
    (cd "$1" && "$PY" -m snakemake -s "$REPO/Snakefile" -d "$1" "${@:2}" --config scale=smoke > "$1/snakemake.log" 2>&1) \
        || die "the DAG in $1 failed; see $1/snakemake.log"
    echo $((SECONDS - start))
}
say "the smoke DAG through SLURM ($WORK/slurm)"
SLURM_SECONDS=$(run_dag "$WORK/slurm" --profile "$WORK/profile")
say "done in ${SLURM_SECONDS}s; $(sacct -X -n -S today -o JobID | wc -l) SLURM jobs on record today"
say "the smoke DAG locally ($WORK/local)"
LOCAL_SECONDS=$(run_dag "$WORK/local" --cores 2)
say "done in ${LOCAL_SECONDS}s"
say "comparing the two runs"
"$PY" "$REPO/scripts/compare_runs.py" "$WORK/local" "$WORK/slurm" --out "$WORK/report.json" \
    --meta slurm_seconds="$SLURM_SECONDS" local_seconds="$LOCAL_SECONDS" \
    slurm_version="$(sinfo -V)" jobs_in_sacct="$(sacct -X -n -S today -o JobID | wc -l)"

#!/bin/bash
# kohyawan 0.1.0: SLURM job array for batch clients.batch, one array task per job.
# Each task runs `kohyawan run` for its job; the run folders are on shared storage and the batch driver
# (kohyawan batch --slurm) merges their results and exports finished jobs.
#SBATCH --job-name=kohyawan-clients.batch
#SBATCH --array=0,2-3%2
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
#SBATCH --time=24:00:00
#SBATCH --partition=gpu
#SBATCH --account=studio
#SBATCH --gres=gpu:1
#SBATCH --constraint=a100
# SIGTERM 120 s before the time limit: kohyawan run stops cleanly with its state saved, and the next
# `kohyawan batch --slurm` resumes it.
#SBATCH --signal=B:TERM@120
set -eo pipefail
module load cuda/12.4
source /venv/bin/activate
case "${SLURM_ARRAY_TASK_ID:?not running as a SLURM array task}" in
  0)  # brand-x/sarah
    exec /venv/bin/python -m kohyawan run --profile character --dataset /data/sarah --runs-dir /shared/runs --name brand-x__sarah --json --set 'optimizer_type="AdamW8bit"'
    ;;
  2)  # brand-x/tom
    export HF_HOME='/shared/hf cache'
    exec /venv/bin/python -m kohyawan run --dataset '/data/client'"'"'s "set" $(touch pwned) `x`
line2 é' --name brand-x__tom
    ;;
  3)  # brand-y/ana
    exec /venv/bin/python -m kohyawan runs resume /shared/runs/brand-y__ana --json
    ;;
  *)
    echo "kohyawan: array task $SLURM_ARRAY_TASK_ID has no job in this script" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# Example: one Optuna study, many SLURM array tasks as workers, PostgreSQL as the shared store.
#
#   1. create the study once (from a login node):   hpo-astro run --config studies/paper-random.toml \
#        --storage "$HPO_STORAGE" --n-trials 100 --workers 1 --max-epochs 1 ... (or let the first task do it)
#   2. submit:                                        sbatch --array=0-15 scripts/slurm_array.sh
#
# Every task joins the same study with `hpo-astro worker`; the store coordinates them. Preempted or killed tasks
# lose nothing: SIGTERM checkpoints and re-queues the running trial at once, a node that vanishes stops its
# heartbeat and its trial is re-queued by another worker after the grace period; the retry resumes from the last
# checkpointed epoch. Resubmitting the array (or any task) resumes the study up to its exact budget.
#
#SBATCH --job-name=hpo-astro
#SBATCH --cpus-per-task=4
#SBATCH --mem=8G
#SBATCH --time=04:00:00
#SBATCH --signal=TERM@120          # preemption notice: SIGTERM two minutes before the kill
#SBATCH --requeue
set -euo pipefail

: "${HPO_STORAGE:=postgresql+psycopg://hpo@db-host/hpo}"   # or journal:/shared/fs/optuna.log, grpc://proxy:13000
: "${HPO_STUDY:=paper-random}"
: "${HPO_ARTIFACTS:=/shared/fs/hpo-astro-artifacts}"         # must be visible from every node

exec hpo-astro worker --study "$HPO_STUDY" --storage "$HPO_STORAGE" --artifacts "$HPO_ARTIFACTS" \
    --threads "${SLURM_CPUS_PER_TASK:-1}"

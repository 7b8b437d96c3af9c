#!/bin/bash
# A λ sweep on a Slurm cluster: the grid of identity and segmentation
# weights and α (3 × 2 × 2 = 12 runs) split over 4 array tasks, each
# training and measuring its block of runs on one GPU, then one job that
# merges the shard folders (no GPU needed):
#
#   jid=$(sbatch --parsable examples/recipes/experiments/sweep-slurm.sh)
#   sbatch --dependency=afterok:$jid --wrap \
#       "lsd-tui merge --output runs/sweep-gray-hair runs/sweep-gray-hair/shard-*"
#
# Signals, requeueing and exit status work as in generalize-slurm.sh: a
# SIGTERM before the time limit checkpoints the run being trained, the task
# is requeued, and the same command reuses the finished runs and resumes
# the stopped one.
#
# Outside Slurm the script runs one shard; SHARDS, RECIPE, OUT, DEVICE and
# LSD_TUI override the defaults, and extra arguments go to `lsd-tui sweep`:
#   SHARDS=1 DEVICE=cpu bash sweep-slurm.sh --models demo --steps 5
#
#SBATCH --job-name=lsd-sweep
#SBATCH --array=0-3
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=4
#SBATCH --time=04:00:00
#SBATCH --signal=B:TERM@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/sweep-%A_%a.out
set -uo pipefail
N=${SHARDS:-4}
TASK=${SLURM_ARRAY_TASK_ID:-0}

# In the background, so that this shell can pass signals on.
"${LSD_TUI:-lsd-tui}" sweep "${RECIPE:-examples/recipes/experiments/ablation-gray-hair.yaml}" \
    --set identity.weight=0.1,0.5,1 --set segmentation.weight=0,0.1 --set alpha=2,3 \
    --shard "${TASK}/${N}" \
    --output "${OUT:-runs/sweep-gray-hair}/shard-${TASK}" \
    --device "${DEVICE:-cuda:0}" "$@" &
pid=$!
for sig in TERM INT HUP; do
    # shellcheck disable=SC2064  # expand $sig now
    trap "kill -$sig $pid 2>/dev/null" "$sig"
done
while :; do
    wait "$pid"
    status=$?
    kill -0 "$pid" 2>/dev/null || break
done
if [ "$status" -eq 143 ] && [ -n "${SLURM_JOB_ID:-}" ]; then
    echo "sweep: stopped by SIGTERM with a checkpoint; requeueing job ${SLURM_JOB_ID}"
    scontrol requeue "${SLURM_JOB_ID}"
fi
exit "$status"

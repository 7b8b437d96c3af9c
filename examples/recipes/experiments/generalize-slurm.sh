#!/bin/bash
# Report Fig. 8 on a Slurm cluster: 8 array tasks, each training and
# measuring one block of the 40 training seeds on one GPU, then one job that
# merges the shard folders (no GPU needed).
#
#   jid=$(sbatch --parsable examples/recipes/experiments/generalize-slurm.sh)
#   sbatch --dependency=afterok:$jid --wrap \
#       "lsd-tui merge --out runs/generalize-fig8 runs/generalize-fig8/shard-*"
#
#SBATCH --job-name=lsd-generalize
#SBATCH --array=0-7
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=4
#SBATCH --time=04:00:00
#SBATCH --output=logs/generalize-%A_%a.out
set -euo pipefail
N=8
lsd-tui generalize \
    --recipe examples/recipes/experiments/generalize-gray-hair.yaml \
    --train-seeds 1..41 --test-seeds 1000..1100 --alphas 1,2,3,4 \
    --shard "${SLURM_ARRAY_TASK_ID}/${N}" \
    --out "runs/generalize-fig8/shard-${SLURM_ARRAY_TASK_ID}" \
    --device cuda:0

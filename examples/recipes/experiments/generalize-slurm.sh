#!/bin/bash
# Report Fig. 8 on a Slurm cluster: 8 array tasks, each training and
# measuring one block of the 40 training seeds on one GPU, then one job that
# merges the shard folders (no GPU needed).
#
#   jid=$(sbatch --parsable examples/recipes/experiments/generalize-slurm.sh)
#   sbatch --dependency=afterok:$jid --wrap \
#       "lsd-tui merge --output runs/generalize-fig8 runs/generalize-fig8/shard-*"
#
# Time limits, scancel and preemption: Slurm sends SIGTERM, then SIGKILL
# after KillWait (30 s by default). `--signal=B:TERM@300` below sends the
# SIGTERM to this script 5 minutes before the time limit instead; the
# script passes it on to lsd-tui, which stops the direction it is training
# with a checkpoint and its outputs and exits with 143 (128 + SIGTERM). The
# task is then requeued: the same command reuses the finished directions
# and resumes the stopped one. The exit status is lsd-tui's: 0 only when
# every direction of the shard is trained and measured.
#
# Outside Slurm (a test, a workstation) the same script runs one shard;
# SHARDS, RECIPE, TRAIN_SEEDS, TEST_SEEDS, OUT, DEVICE and LSD_TUI override the
# defaults, and extra arguments go to `lsd-tui generalize`, e.g.
#   SHARDS=1 DEVICE=cpu bash generalize-slurm.sh --models demo --steps 5
#
#SBATCH --job-name=lsd-generalize
#SBATCH --array=0-7
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=4
#SBATCH --time=04:00:00
#SBATCH --signal=B:TERM@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/generalize-%A_%a.out
set -uo pipefail
N=${SHARDS:-8}
TASK=${SLURM_ARRAY_TASK_ID:-0}

# In the background, so that this shell can pass signals on: bash runs a
# trap only once its foreground command has ended.
"${LSD_TUI:-lsd-tui}" generalize \
    --recipe "${RECIPE:-examples/recipes/experiments/generalize-gray-hair.yaml}" \
    --train-seeds "${TRAIN_SEEDS:-1..41}" --test-seeds "${TEST_SEEDS:-1000..1100}" --alphas 1,2,3,4 \
    --shard "${TASK}/${N}" \
    --output "${OUT:-runs/generalize-fig8}/shard-${TASK}" \
    --device "${DEVICE:-cuda:0}" "$@" &
pid=$!
for sig in TERM INT HUP; do
    # shellcheck disable=SC2064  # expand $sig now
    trap "kill -$sig $pid 2>/dev/null" "$sig"
done
while :; do
    wait "$pid"
    status=$?
    # A trap ends `wait` early; wait again until lsd-tui has saved and exited.
    kill -0 "$pid" 2>/dev/null || break
done
if [ "$status" -eq 143 ] && [ -n "${SLURM_JOB_ID:-}" ]; then
    echo "generalize: stopped by SIGTERM with a checkpoint; requeueing job ${SLURM_JOB_ID}"
    scontrol requeue "${SLURM_JOB_ID}"
fi
exit "$status"

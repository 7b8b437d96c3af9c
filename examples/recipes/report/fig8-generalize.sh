#!/bin/sh
# Report Fig. 8: train the 20 local directions of fig8-generalize.yaml (one
# per training seed) and measure ΔCLIP for α = 0..9 on each direction's own
# image and on 50 unseen images.
#
# Sources: albertaillet/CLIPLSD notebooks/experiment3.ipynb: `seeds =
# list(range(1, 21))` → --train-seeds 1..21; α = 0..9 in its ΔCLIP plot →
# --alphas 1..9 (0 is always measured); 50 evaluation images
# (`np.random.randint(0, 10000, (50,))` after `np.random.seed(1)`; this
# sampler is not reproduced, so 50 other unseen seeds are used).
#
# Demo networks, a few steps: LSD_TUI=target/debug/lsd-tui \
#   sh fig8-generalize.sh --models demo --steps 4 (TRAIN_SEEDS=1..3 TEST_SEEDS=100..104)
set -e
here=$(dirname "$0")
"${LSD_TUI:-lsd-tui}" generalize \
    --recipe "${RECIPE:-$here/fig8-generalize.yaml}" \
    --train-seeds "${TRAIN_SEEDS:-1..21}" \
    --test-seeds "${TEST_SEEDS:-10000..10050}" \
    --alphas 1,2,3,4,5,6,7,8,9 \
    --device "${DEVICE:-cuda:0}" \
    --output "${OUT:-runs/report-fig8}" "$@"

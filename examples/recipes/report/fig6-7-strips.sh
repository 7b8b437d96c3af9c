#!/bin/sh
# Report Figs. 6–7: train the local direction of fig6-7-local-direction.yaml,
# then draw one strip per image — its own (seed 1) and another (seed 2) —
# for α = −5 … 5; α = 0, the original, is the middle column.
#
# Demo networks, a few steps: use a copy of the recipe with `steps: 4` and
# `models` left out (RECIPE=that copy DEVICE=cpu).
set -e
here=$(dirname "$0")
out="${OUT:-runs/report-fig6-7}"
"${LSD_TUI:-lsd-tui}" run "${RECIPE:-$here/fig6-7-local-direction.yaml}" \
    --headless --output "$out" --device "${DEVICE:-cuda:0}" "$@"
"${LSD_TUI:-lsd-tui}" apply "$out/direction.safetensors" \
    --seeds "${SEEDS:-1,2}" \
    --alphas=-5,-4,-3,-2,-1,0,1,2,3,4,5 \
    --device "${DEVICE:-cuda:0}" \
    --output "$out/strips.png"

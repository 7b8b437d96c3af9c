#!/bin/sh
# Report Figs. 9–11: the four rows (CLIP; + ID λ 1.0; + Seg λ 0.1; all) of
# fig9-ablation.yaml on one image, edits both ways with the original in the
# middle.
#
# Demo networks, a few steps: LSD_TUI=target/debug/lsd-tui \
#   sh fig9-ablation.sh --models demo --steps 4 (DEVICE=cpu)
set -e
here=$(dirname "$0")
"${LSD_TUI:-lsd-tui}" ablation \
    --recipe "${RECIPE:-$here/fig9-ablation.yaml}" \
    --alphas=-1,-0.5,0,0.5,1 \
    --device "${DEVICE:-cuda:0}" \
    --output "${OUT:-runs/report-fig9}" "$@"

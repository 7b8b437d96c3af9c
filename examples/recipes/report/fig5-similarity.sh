#!/bin/sh
# Report Fig. 5: CLIP similarity of the report's six prompts to ten generated
# faces, the colour scale fixed at [0.1, 0.3].
#
# Sources (albertaillet/CLIPLSD):
# - notebooks/experiment1.ipynb, `get_similarity`: `plt.imshow(similarity,
#   vmin=0.1, vmax=0.3)` → --scale 0.1,0.3; normalised CLIP embeddings of
#   each image against each prompt → what `lsd-tui similarity` measures.
# - the prompts: "a photo of a person with " + {a hat, glasses, a beard,
#   blue eyes, curly hair}, and "a photo of a baby" (the report's list).
# - utils/stylegan2_utils.py, `StyleGAN2SampleGenerator(truncation_psi=0.7)`
#   → --truncation 0.7.
# - z: NumPy's `RandomState(seed).randn` → --seed-rng numpy. The notebook
#   draws its ten faces as ten rows of ONE stream (`generate_batch(seed=2,
#   batch_size=10)`, i.e. `RandomState(2).randn(10, 512)`); here each seed is
#   its own stream, so seed 2 is the notebook's first face and the others
#   differ. CLIP's own preprocessing (PIL bicubic resize of the saved image)
#   is replaced by the differentiable resize + mean/std of `similarity`.
#
# Real networks: `lsd-tui weights fetch stylegan2-ffhq-1024 clip-vit-b32`;
# GENERATOR=demo CLIP=demo DEVICE=cpu for the demo networks.
set -e
"${LSD_TUI:-lsd-tui}" similarity \
    --prompts "a photo of a person with a hat" \
              "a photo of a person with glasses" \
              "a photo of a person with a beard" \
              "a photo of a person with blue eyes" \
              "a photo of a person with curly hair" \
              "a photo of a baby" \
    --seeds "${SEEDS:-2..12}" \
    --seed-rng numpy \
    --scale 0.1,0.3 \
    --generator "${GENERATOR:-stylegan2-ffhq-1024}" \
    --clip "${CLIP:-clip-vit-b32}" \
    --truncation 0.7 \
    --device "${DEVICE:-cuda:0}" \
    --output "${OUT:-runs/report-fig5}" "$@"

#!/bin/sh
# Report Fig. 5: CLIP similarity of prompts × generated images.
# `similarity` needs no training, so it takes flags instead of a recipe.
#
# Real networks (`lsd-tui weights fetch stylegan2-ffhq-1024 clip-vit-b32`);
# pass `--generator demo --clip demo` (the default) for the demo networks.
set -e
lsd-tui similarity \
    --prompts "a photo of a person with gray hair" \
              "a photo of a person with blonde hair" \
              "a photo of a person wearing a hat" \
              "a photo of a person" \
    --seeds 0..10 \
    --generator "${GENERATOR:-stylegan2-ffhq-1024}" \
    --clip "${CLIP:-clip-vit-b32}" \
    --truncation 0.7 \
    --device "${DEVICE:-cuda:0}" \
    --output runs/similarity-fig5 "$@"

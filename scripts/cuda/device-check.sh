#!/usr/bin/env bash
# Every GPU check in one run, for a GPU machine (run from the repository
# root, with dist/cuda/ from scripts/cuda/build.sh):
#   1. the fixture cases of the four networks on cuda:0 (forward and backward);
#   2. each built-in plugin loaded on cuda:0 (fingerprint, smoke test);
#   3. the generator and training-step benchmarks at 1024², batch 1 and 4.
# Output: one log; the benchmark JSON lines at the end. Results go to $OUT
# when set (the device machine's return folder), else dist/cuda/results/.
set -uo pipefail
cd "$(dirname "$0")/../.."
bin=dist/cuda/lsd-tui
out=${OUT:-dist/cuda/results}
mkdir -p "$out"

# CUDA 13 libraries: a system toolkit, or the ones a PyTorch cu130 venv ships.
if [[ -z "${LD_LIBRARY_PATH:-}" ]]; then
    lib=$(find / -name libcublas.so.13 -path '*nvidia*' 2>/dev/null | head -n1)
    [[ -n "$lib" ]] && export LD_LIBRARY_PATH=$(dirname "$lib")
fi
# A persistent JIT cache makes the second launch cheap.
export CUDA_CACHE_PATH=${CUDA_CACHE_PATH:-$HOME/.cache/lsd-tui/cuda-jit} CUDA_CACHE_MAXSIZE=4294967296
export LSD_PLUGIN_PATH=dist/cuda

status=0
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
    for m in stylegan2 clip arcface bisenet; do
        echo "== check-fixture $m cuda:0"
        "$bin" check-fixture "$m" "tests/fixtures/$m" --device cuda:0 || status=1
    done
    for p in dist/cuda/liblsd_plugin_*.so; do
        echo "== plugins check $p"
        "$bin" plugins check "$p" --device cuda:0 || status=1
    done
    echo "== bench"
    "$bin" bench generator --size 1024 --batch 1 --device cuda:0 --profile || status=1
    for b in 1 4; do
        "$bin" bench step --size 1024 --batch "$b" --device cuda:0 --profile || status=1
    done
} 2>&1 | tee "$out/device-check.log"
exit $status

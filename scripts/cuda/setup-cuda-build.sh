#!/usr/bin/env bash
# Installs the CUDA 13.0 build toolchain this project needs from PyPI wheels
# (no GPU, driver or NVIDIA apt repository required): nvcc, the cuBLAS,
# cuRAND, NVRTC and runtime link libraries, and cuDNN 9, laid out as a CUDA
# root in $CUDA_PIP_ROOT (default /opt/cuda-pip).
#
#   bash scripts/cuda/setup-cuda-build.sh          # install (as root), idempotent
#   eval "$(bash scripts/cuda/setup-cuda-build.sh --env)"
#
# The toolkit part is a general recipe kept outside the repository; point
# CUDA_PIP_RECIPE at it (default: the workplace's shared copy). This script
# adds cuDNN on top.
#
# Environment: CUDA_PIP_ROOT, CUDA_PIP_RECIPE, CUDNN_VERSION (PyPI
# `nvidia-cudnn-cu13` pin, default 9.21.1.3, the version of cudarc's cuDNN bindings; every cuDNN 9 has the soname
# libcudnn.so.9, and at run time the GPU machine's own copy is used), plus
# the recipe's own (CUDA_TOOLKIT_VERSION, CUDA_COMPUTE_CAP, PYTHON).
set -euo pipefail

root=${CUDA_PIP_ROOT:-/opt/cuda-pip}
recipe=${CUDA_PIP_RECIPE:-/work/shared/gpu/setup-cuda-build.sh}
cudnn_version=${CUDNN_VERSION:-9.21.1.3}
export CUDA_PIP_ROOT=$root

if [[ "${1:-}" == "--env" ]]; then
    exec bash "$recipe" --env
fi
[[ -f "$recipe" ]] || { echo "no toolkit recipe at $recipe: set CUDA_PIP_RECIPE" >&2; exit 1; }

# 1. nvcc, headers and the CUDA 13.0 libraries.
bash "$recipe" >/dev/null

# 2. cuDNN 9 into the same venv, linked into the CUDA root like the rest.
"$root/.venv/bin/python" -m pip install -q --disable-pip-version-check "nvidia-cudnn-cu13==$cudnn_version"
site=$("$root/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cudnn=""
for d in "$site/nvidia/cudnn" "$site/nvidia/cu13"; do
    if compgen -G "$d/lib/libcudnn.so.9*" >/dev/null; then
        cudnn=$d
        break
    fi
done
[[ -n "$cudnn" ]] || { echo "libcudnn.so.9 not found under $site/nvidia" >&2; exit 1; }

# include/ is a link into the toolkit wheel; the cuDNN headers go next to
# cuda.h there (they are only read by the compiler, never shipped).
for h in "$cudnn"/include/cudnn*.h; do
    ln -sfn "$h" "$root/include/$(basename "$h")"
done
for f in "$cudnn"/lib/libcudnn*.so.9; do
    base=$(basename "$f")
    ln -sfn "$f" "$root/lib64/$base"
    ln -sfn "$f" "$root/lib64/${base%%.so.*}.so"
done
echo "cuDNN $cudnn_version linked into $root (from $cudnn)" >&2
bash "$recipe" --env

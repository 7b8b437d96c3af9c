#!/usr/bin/env bash
# Builds the CUDA binary and the built-in plugins into dist/cuda/, ready to
# copy to a GPU machine.
#
# On a machine WITH a normal CUDA toolkit (nvcc on PATH, CUDA_ROOT set):
#     scripts/cuda/build.sh
# On a machine WITHOUT a GPU or toolkit, first install CUDA 13.0 from PyPI
# wheels into /opt/cuda-pip (see ../shared/gpu/README.md in the project
# workplace, or any equivalent recipe), then:
#     LSD_CUDA_PIP=1 scripts/cuda/build.sh
#
# Environment: CUDA_COMPUTE_CAP (default 90, H100/H200), CARGO_PROFILE
# (default dist: release + fat LTO, one small self-contained binary).
set -euo pipefail
cd "$(dirname "$0")/../.."

if [[ "${LSD_CUDA_PIP:-0}" == 1 ]]; then
    root=${CUDA_PIP_ROOT:-/opt/cuda-pip}
    [[ -x "$root/bin/nvcc" ]] || { echo "no nvcc in $root/bin: install the CUDA 13.0 wheels first" >&2; exit 1; }
    export CUDA_ROOT="$root" CUDA_HOME="$root" CUDA_PATH="$root" NVCC="$root/bin/nvcc"
    export PATH="$root/bin:$PATH" CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}
fi
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CUDAFORGE_THREADS=${CUDAFORGE_THREADS:-$(nproc)}
profile=${CARGO_PROFILE:-dist}

# The binary and the plugins must be built with the same features: the plugin
# fingerprint includes them, and the host refuses a CPU plugin in a CUDA build.
cargo build --profile "$profile" --features cuda \
    -p lsd-tui -p lsd-plugin-clip -p lsd-plugin-identity -p lsd-plugin-segmentation

out=dist/cuda
rm -rf "$out" && mkdir -p "$out"
cp "target/$profile/lsd-tui" "$out/"
cp target/"$profile"/liblsd_plugin_*.so "$out/"
cp scripts/cuda/device-check.sh "$out/"
ls -la "$out"
echo "built $out; on the GPU machine: $out/device-check.sh"

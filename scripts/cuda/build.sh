#!/usr/bin/env bash
# Builds the CUDA binary and the built-in plugins into dist/cuda/, and the
# tarball dist/lsd-tui-cuda.tar.xz of everything a GPU machine needs (see
# scripts/cuda/README.md).
#
# On a machine WITH a normal CUDA toolkit and cuDNN (nvcc on PATH, CUDA_ROOT
# set):
#     scripts/cuda/build.sh
# On a machine WITHOUT a GPU or toolkit, from CUDA 13.0 + cuDNN 9 PyPI
# wheels in /opt/cuda-pip (installed by scripts/cuda/setup-cuda-build.sh
# when missing; that needs root once):
#     LSD_CUDA_PIP=1 scripts/cuda/build.sh
#
# Environment: CUDA_COMPUTE_CAP (default 90, H100/H200), CARGO_PROFILE
# (default dist: release + fat LTO, one small self-contained binary; its own
# target folder, target/dist).
set -euo pipefail
cd "$(dirname "$0")/../.."

if [[ "${LSD_CUDA_PIP:-0}" == 1 ]]; then
    root=${CUDA_PIP_ROOT:-/opt/cuda-pip}
    if [[ ! -x "$root/bin/nvcc" || ! -e "$root/lib64/libcudnn.so" ]]; then
        bash scripts/cuda/setup-cuda-build.sh >/dev/null
    fi
    eval "$(bash scripts/cuda/setup-cuda-build.sh --env)"
fi
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CUDAFORGE_THREADS=${CUDAFORGE_THREADS:-$(nproc)}
profile=${CARGO_PROFILE:-dist}

# The binary and the plugins must be built with the same features: the plugin
# fingerprint includes them, and the host refuses a CPU plugin in a CUDA build.
# Each plugin is built as a cdylib alone: a package that also emits its rlib
# (for its own tests) is not link-time optimised as a whole, and then keeps
# every kernel Candle has (33 MB of GGUF/MoE device code per plugin, and a
# dependency on libcudart and libstdc++).
start=$(date +%s)
cargo build --locked --profile "$profile" --features cuda -p lsd-tui
for plugin in clip identity segmentation; do
    cargo rustc --locked --profile "$profile" --features cuda -p "lsd-plugin-$plugin" --lib --crate-type cdylib
done
echo "cargo build: $(($(date +%s) - start)) s"

out=dist/cuda
rm -rf "$out" && mkdir -p "$out"
cp "target/$profile/lsd-tui" "$out/"
cp target/"$profile"/liblsd_plugin_*.so "$out/"
cp scripts/cuda/device-check.sh "$out/"
# The symbols are kept (readable panics); the debug info goes.
strip --strip-debug "$out/lsd-tui" "$out"/liblsd_plugin_*.so
ls -la "$out"
# What a GPU machine needs, as one file: the binaries and the fixtures the
# device check runs on.
tar -C . -cJf dist/lsd-tui-cuda.tar.xz dist/cuda tests/fixtures
ls -la dist/lsd-tui-cuda.tar.xz
echo "built $out and dist/lsd-tui-cuda.tar.xz; on the GPU machine: dist/cuda/device-check.sh"

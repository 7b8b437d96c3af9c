#!/usr/bin/env bash
# Every GPU check in one run, for a GPU machine (H100/H200), at most about
# 8 minutes: run from the repository root (for tests/fixtures), with
# dist/cuda/ from scripts/cuda/build.sh (or dist/lsd-tui-cuda.tar.xz, which
# is unpacked when dist/cuda/ is missing).
#   1. every fixture on cuda:0 (check-fixture all), under fp32 (each
#      fixture's tolerance) and under tf32 (1e-3 relative);
#   2. each built-in plugin on cuda:0 against the CPU (plugins check);
#   3. the generator and training-step benchmarks at 1024², batch 1 and 4,
#      each after an untimed warm-up iteration (the first use of a kernel
#      pays for JIT compilation, cuDNN plans and the ops' parity probes;
#      the warm-up times are in the JSON beside the timed ones). The step
#      times come from runs without --profile (a step then waits for the
#      GPU once); one more batch-1 run with --profile, which waits at the
#      end of each phase, gives the breakdown by phase. Each JSON also has
#      gpu_memory: the memory pool's peak in use (PyTorch's
#      max_memory_allocated) and peak reserved.
# Every step has its own time limit. Output: device-check.log and one JSON
# file per benchmark, in $OUT when set (the device machine's return
# folder), else dist/cuda/results/. Exit status: 0 when every step passed.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
bin=dist/cuda/lsd-tui
out=${OUT:-dist/cuda/results}

if [[ ! -x "$bin" && -f dist/lsd-tui-cuda.tar.xz ]]; then
    tar -xJf dist/lsd-tui-cuda.tar.xz
fi
[[ -x "$bin" ]] || { echo "no $bin: run scripts/cuda/build.sh first" >&2; exit 2; }
mkdir -p "$out"

# CUDA 13 and cuDNN 9 libraries: a system toolkit, or the ones a PyTorch
# cu130 venv ships (nvidia/cu13/lib and nvidia/cudnn/lib).
if [[ -z "${LD_LIBRARY_PATH:-}" ]]; then
    libs=""
    for name in libcublas.so.13 libcudnn.so.9; do
        lib=$(find / -name "$name" -path '*nvidia*' 2>/dev/null | head -n1)
        [[ -n "$lib" ]] && libs="$libs:$(dirname "$lib")"
    done
    export LD_LIBRARY_PATH=${libs#:}
fi
# A persistent JIT cache makes the second process's first launch cheap.
export CUDA_CACHE_PATH=${CUDA_CACHE_PATH:-$HOME/.cache/lsd-tui/cuda-jit} CUDA_CACHE_MAXSIZE=4294967296
export LSD_PLUGIN_PATH=dist/cuda

failed=()
# step NAME SECONDS COMMAND…: runs one step under a time limit.
step() {
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit} s)"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@"
    local rc=$?
    echo "-- $name: exit $rc after $((SECONDS - t0)) s"
    ((rc == 0)) || failed+=("$name")
}

{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
    "$bin" --version
    for p in fp32 tf32; do
        step "check-fixture all $p" 75 "$bin" check-fixture all tests/fixtures --device cuda:0 --precision "$p"
    done
    for p in dist/cuda/liblsd_plugin_*.so; do
        step "plugins check $(basename "$p")" 35 "$bin" plugins check "$p" --device cuda:0
    done
    step "bench generator 1024 b1" 45 "$bin" bench generator --size 1024 --batch 1 --device cuda:0 \
        --warmup 1 --iters 5 --profile --json "$out/bench-generator-1024-b1.json"
    step "bench step 1024 b1" 45 "$bin" bench step --size 1024 --batch 1 --device cuda:0 \
        --warmup 1 --steps 5 --json "$out/bench-step-1024-b1.json"
    step "bench step 1024 b4" 60 "$bin" bench step --size 1024 --batch 4 --device cuda:0 \
        --warmup 1 --steps 5 --json "$out/bench-step-1024-b4.json"
    step "bench step 1024 b1 profile" 45 "$bin" bench step --size 1024 --batch 1 --device cuda:0 \
        --warmup 1 --steps 3 --profile --json "$out/bench-step-1024-b1-profile.json"
    echo "== done in $SECONDS s; failed: ${failed[*]:-none}"
    ((${#failed[@]} == 0))
} 2>&1 | tee "$out/device-check.log"
exit "${PIPESTATUS[0]}"

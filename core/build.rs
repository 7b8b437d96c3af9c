//! With the `cuda` feature, compiles the op layer's kernels
//! (`src/ops/cuda/kernels.cu`) to PTX in `OUT_DIR/kernels.ptx`, which
//! `ops::cuda` embeds and the driver JIT-compiles on first use (nvcc from
//! `$NVCC`, then `PATH`; the target from `CUDA_COMPUTE_CAP`, e.g. 90 for
//! H100/H200, as for Candle's own kernels). Without it no CUDA toolkit is
//! needed, and this does nothing. (The plugin ABI fingerprint is recorded by
//! `lsd-plugin-api`'s build script.)

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "cuda")]
    cuda::build_ptx();
}

#[cfg(feature = "cuda")]
mod cuda {
    const SOURCE: &str = "src/ops/cuda/kernels.cu";

    pub fn build_ptx() {
        println!("cargo:rerun-if-changed={SOURCE}");
        let built = cudaforge::KernelBuilder::new().source_files([SOURCE]).arg("-std=c++17").arg("-O3").build_ptx();
        if let Err(e) = built {
            panic!("compiling {SOURCE} to PTX failed (is nvcc in $NVCC or on PATH, and CUDA_COMPUTE_CAP set?): {e}");
        }
    }
}

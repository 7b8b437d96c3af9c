//! Differentiable ops with **constant weights**: the layer every frozen
//! network here is written in.
//!
//! Only the latent direction learns; every weight is frozen. Candle's
//! autograd does not know that: its backward computes the gradient of every
//! operand (a conv computes a kernel gradient as big as its forward, a matmul
//! the weight's), and its conv input gradient is a slow direct loop. Each op
//! here holds its weight as a constant and implements a Candle `CustomOp`
//! whose backward computes only the input gradient.
//!
//! One op, one interface: on CPU the fast kernel runs; on a CUDA device
//! (f32, the `cuda` feature) the op's CUDA kernel or cuDNN call runs once a
//! runtime probe has found it equal to the stock composition there
//! ([`probe`]); otherwise the op falls back to the stock-Candle composition
//! it replaces, which is also the oracle its tests compare against
//! (`*_stock` methods). Linear layers stay the stock composition on CUDA: it
//! is one cuBLAS product with the constant weight.

// Code on a training step's path: no host reads but the step's one
// (`readback`, clippy.toml).
#![deny(clippy::disallowed_methods)]

pub mod conv;
pub(crate) mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
pub mod fir;
pub mod fused;
pub mod linear;
pub mod memory;
pub mod precision;
pub mod probe;
pub mod profile;
#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod testing;
mod winograd;

pub use conv::{BatchNormParams, Conv2d, ConvTranspose2d};
pub use fir::Fir;
pub use linear::Linear;
pub use precision::{precision, set_precision, Precision};

/// Fixes the CPU thread count for the whole process, once.
///
/// Unless `RAYON_NUM_THREADS` is set, Candle works the count out again on
/// every CPU matmul, reading `/proc/cpuinfo` each time (about 12 % of a
/// generator pass at 64² went there). Setting the variable makes that a
/// cheap lookup, for this binary and for every plugin library it loads
/// (each carries its own Candle, but they share the environment). A value
/// the user set is kept.
///
/// Call it at the very start of `main`, before any other thread exists:
/// changing the environment is only sound while no other thread reads it.
pub fn settle_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = candle_core::utils::get_num_threads();
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}

/// Heaps glibc's allocator may use (see [`settle_allocator`]).
const ARENAS: i32 = 2;

/// Lets every thread reuse the memory the others freed (glibc on Linux; a
/// no-op elsewhere).
///
/// glibc gives each new thread its own heap ("arena", up to 8 per core),
/// and memory freed in one is reused only by the threads of that one. The
/// tensors here are few and large and move between the engine, the plugin
/// calls and the compute threads, so each heap ends up holding its own
/// freed copies: `bench step --size 256` peaked at 2 085 MiB with the
/// default and 1 918 MiB with two heaps, at the same speed (see
/// `docs/performance.md`). `MALLOC_ARENA_MAX` in the environment wins.
///
/// Call it at the very start of `main`, before any other thread exists.
pub fn settle_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: `mallopt` only changes the allocator's parameters and
        // takes the allocator's own lock.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, ARENAS);
        }
    }
}

/// Hands the memory freed so far back to the system (glibc on Linux; a
/// no-op elsewhere). Call it once the networks are loaded.
///
/// glibc keeps freed heap memory resident for reuse, and loading the
/// networks frees a lot of it (the file buffers, the tensors converted or
/// folded at load): `bench step --size 256` measured 1.5 GiB resident after
/// its set-up, 0.6 GiB of it free. Trimming once after loading returns
/// that; the steps themselves keep reusing their own freed memory, which is
/// faster than mapping fresh pages for every tensor (a fixed 1 MiB
/// `M_MMAP_THRESHOLD` was measured: the same peak saving, but about 40 %
/// more system time per generator pass, from the page faults).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only returns free pages of the allocator's own
    // heaps to the system; glibc takes its own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

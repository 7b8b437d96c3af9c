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
//! One op, one interface: on CPU the fast kernel runs; on any other device
//! the op falls back to the stock-Candle composition it replaces, which is
//! also the oracle its tests compare against (`*_stock` methods).

pub mod conv;
pub mod fir;
pub mod fused;
pub mod linear;
pub mod profile;
pub(crate) mod cpu;
#[cfg(test)]
mod testing;
mod winograd;

pub use conv::{BatchNormParams, Conv2d, ConvTranspose2d};
pub use fir::Fir;
pub use linear::Linear;

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

/// Tensor-sized allocations at or above this many bytes get pages of their
/// own, returned to the system when freed.
const MMAP_THRESHOLD: usize = 1 << 20;

/// Makes freed tensor memory go back to the system (glibc on Linux; a
/// no-op elsewhere).
///
/// glibc serves a large block from its own mapping only until the first
/// such block is freed; it then raises that threshold (up to 32 MiB), and
/// every later activation or weight buffer comes from heaps that keep freed
/// memory resident: loading the networks and the first backward pass leave
/// hundreds of MiB behind (`bench step --size 256`: 2 504 → 1 874 MiB peak
/// resident, see `docs/performance.md`). A fixed 1 MiB threshold keeps
/// every tensor buffer in its own mapping at no measured cost in speed; the
/// plugins share the process's allocator, so this covers them too.
///
/// `MALLOC_MMAP_THRESHOLD_` in the environment wins, as glibc documents.
/// Call it at the start of `main`.
pub fn settle_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: `mallopt` only changes the allocator's parameters; glibc
        // takes its own lock, so it is sound at any time.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
        }
    }
}


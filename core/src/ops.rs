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

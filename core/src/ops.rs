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
mod storage;
#[cfg(test)]
mod testing;

pub use conv::{Conv2d, ConvTranspose2d};
pub use fir::Fir;
pub use linear::Linear;

//! The generator's fixed-function operations: PixelNorm, plus the op-layer
//! pieces it uses by name (the fused leaky ReLU, `upfirdn2d`).
//!
//! Reference: rosinality's `model.py` (`PixelNorm`)
//! <https://github.com/rosinality/stylegan2-pytorch/blob/bef283a1c24087da704d16c30abc8e36e63efa0e/model.py>.

use candle_core::Tensor;

use crate::Result;

pub use crate::ops::fir::Fir;
pub use crate::ops::fused::lrelu_gain;

/// `x * rsqrt(mean_over_last_dim(x²) + 1e-8)`, per sample.
///
/// rosinality `PixelNorm` (model.py), the first layer of the mapping network.
pub fn pixel_norm(xs: &Tensor) -> Result<Tensor> {
    let last = xs.rank() - 1;
    let norm = (xs.sqr()?.mean_keepdim(last)? + 1e-8)?.sqrt()?.recip()?;
    Ok(xs.broadcast_mul(&norm)?)
}

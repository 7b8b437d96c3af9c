//! The generator's fixed-function operations: PixelNorm, the fused leaky
//! ReLU, plus the op-layer pieces it uses by name (`upfirdn2d`,
//! zero-insertion).
//!
//! Reference: rosinality's `model.py` (`PixelNorm`) and `op/fused_act.py`
//! (CPU path)
//! <https://github.com/rosinality/stylegan2-pytorch/blob/bef283a1c24087da704d16c30abc8e36e63efa0e/model.py>.

use candle_core::Tensor;

use crate::Result;

pub use crate::ops::conv::zero_insert;
pub use crate::ops::fir::Fir;

/// Negative slope of every leaky ReLU in the generator.
const LRELU_SLOPE: f64 = 0.2;

/// `x * rsqrt(mean_over_last_dim(x²) + 1e-8)`, per sample.
///
/// rosinality `PixelNorm` (model.py), the first layer of the mapping network.
pub fn pixel_norm(xs: &Tensor) -> Result<Tensor> {
    let last = xs.rank() - 1;
    let norm = (xs.sqr()?.mean_keepdim(last)? + 1e-8)?.sqrt()?.recip()?;
    Ok(xs.broadcast_mul(&norm)?)
}

/// `lrelu(xs, 0.2) * sqrt(2)`; the bias has already been added.
///
/// `op/fused_act.py` on CPU: `F.leaky_relu(input + bias, 0.2) * sqrt(2)`.
/// `where_cond` keeps both branches differentiable (its backward routes the
/// gradient to the chosen branch), unlike a custom op.
pub fn lrelu_gain(xs: &Tensor) -> Result<Tensor> {
    let positive = xs.ge(0f64)?;
    let ys = positive.where_cond(xs, &(xs * LRELU_SLOPE)?)?;
    Ok((ys * std::f64::consts::SQRT_2)?)
}

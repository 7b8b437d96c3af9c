//! The generator's fixed-function operations: PixelNorm, the fused leaky
//! ReLU, zero-insertion and `upfirdn2d` (up-sample, pad, FIR filter).
//!
//! Everything is built from candle-core ops that have a backward pass
//! (`conv2d` with one group, `cat`, `reshape`, `narrow`, `pad_with_zeros`,
//! `where_cond`, arithmetic), so gradients reach the latents exactly.
//! Reference: rosinality's `op/upfirdn2d.py` (`upfirdn2d_native`) and
//! `op/fused_act.py` (CPU path)
//! <https://github.com/rosinality/stylegan2-pytorch/blob/bef283a1c24087da704d16c30abc8e36e63efa0e/op/upfirdn2d.py>.

use candle_core::{Device, Tensor};

use crate::Result;

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

pub use crate::ops::conv::zero_insert;

/// A separable FIR filter applied per channel, with rosinality's
/// `upfirdn2d(x, K, up, down=1, pad=(p0, p1))` semantics:
/// zero-insertion up-sampling, zero padding `p0` before and `p1` after on
/// both spatial axes, then a valid correlation with the flipped kernel.
///
/// `K = outer(k, k) / sum(outer(k, k)) * up²` factors into the 1-D kernel
/// `k / sum(k) * up` per axis, so the 2-D filter runs as two 1-D convs.
#[derive(Debug, Clone)]
pub struct Fir {
    /// The 1-D kernel as a conv2d weight along the height, `[1, 1, n, 1]`.
    k_h: Tensor,
    /// The same along the width, `[1, 1, 1, n]`.
    k_w: Tensor,
    up: usize,
    pad: (usize, usize),
}

impl Fir {
    /// The filter for `blur_kernel` (e.g. `[1, 3, 3, 1]`), with gain `gain`
    /// over the 2-D kernel (4 for both uses in the generator).
    pub fn new(
        blur_kernel: &[f64],
        gain: f64,
        up: usize,
        pad: (usize, usize),
        device: &Device,
    ) -> Result<Self> {
        let sum: f64 = blur_kernel.iter().sum();
        // Correlation with the flipped kernel, as upfirdn2d_native does.
        let k: Vec<f32> =
            blur_kernel.iter().rev().map(|v| (v / sum * gain.sqrt()) as f32).collect();
        let n = k.len();
        let k_h = Tensor::from_vec(k.clone(), (1, 1, n, 1), device)?;
        let k_w = Tensor::from_vec(k, (1, 1, 1, n), device)?;
        Ok(Self { k_h, k_w, up, pad })
    }

    /// The 2-D kernel `outer(k, k) / sum(outer(k, k)) * gain` that
    /// rosinality registers as the `*.kernel` buffer.
    pub fn kernel_2d(blur_kernel: &[f64], gain: f64) -> Vec<f64> {
        let sum: f64 = blur_kernel.iter().sum();
        let mut out = Vec::with_capacity(blur_kernel.len() * blur_kernel.len());
        for a in blur_kernel {
            for b in blur_kernel {
                out.push(a * b / (sum * sum) * gain);
            }
        }
        out
    }

    /// Filters `xs` `[B, C, H, W]` channel by channel; output
    /// `[B, C, up*H + p0 + p1 - n + 1, …]`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        // Channels into the batch: one single-channel conv for all of them.
        let xs = xs.reshape((b * c, 1, h, w))?;
        let xs = zero_insert(&xs, 2, self.up)?;
        let xs = zero_insert(&xs, 3, self.up)?;
        let (p0, p1) = self.pad;
        let k_h = self.k_h.to_dtype(xs.dtype())?;
        let k_w = self.k_w.to_dtype(xs.dtype())?;
        let ys = xs.pad_with_zeros(2, p0, p1)?.conv2d(&k_h, 0, 1, 1, 1)?;
        let ys = ys.pad_with_zeros(3, p0, p1)?.conv2d(&k_w, 0, 1, 1, 1)?;
        let (_, _, ho, wo) = ys.dims4()?;
        Ok(ys.reshape((b, c, ho, wo))?)
    }
}

//! Differentiable image resampling as matrix products.
//!
//! Candle's `upsample_bilinear2d` has no backward pass and the backward of
//! `upsample_nearest2d` overwrites instead of accumulating, yet every loss
//! must send its gradient back to the generator's pixels. Any separable
//! resampling `out = Mh · x · Mwᵀ` is two matrix products, whose backward
//! passes candle has, so each resize here builds its `[out, in]` matrix on the
//! host (in f64, rounded once) and applies it with [`resample`].
//!
//! The matrices follow PyTorch's index arithmetic exactly
//! (`aten/src/ATen/native/UpSample.h`, `AdaptiveAveragePooling.cpp`).
//! Each is built once per filter, size, dtype and device, and applied as a
//! constant-weight [`Linear`] (so no backward pass computes its gradient).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use candle_core::{DType, Device, Tensor};

use crate::ops::Linear;
use crate::Result;

/// A resampling filter along one axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Filter {
    /// `F.interpolate(mode='bilinear', align_corners=False)`, no antialias.
    Bilinear,
    /// `F.interpolate(mode='bilinear', align_corners=True)`.
    BilinearAlignCorners,
    /// `F.interpolate(mode='nearest')` with an explicit output size.
    Nearest,
    /// `nn.AdaptiveAvgPool2d`: uneven, possibly overlapping windows
    /// `[floor(i·in/out), ceil((i+1)·in/out))`.
    AdaptiveAvg,
}

/// The `[out, in]` matrix that resamples one axis of length `n_in` to `n_out`.
pub fn matrix(filter: Filter, n_in: usize, n_out: usize) -> Vec<f64> {
    let mut m = vec![0f64; n_out * n_in];
    let scale = n_in as f64 / n_out as f64;
    for o in 0..n_out {
        let row = &mut m[o * n_in..(o + 1) * n_in];
        match filter {
            Filter::Bilinear | Filter::BilinearAlignCorners => {
                let src = if filter == Filter::BilinearAlignCorners {
                    if n_out > 1 {
                        o as f64 * (n_in - 1) as f64 / (n_out - 1) as f64
                    } else {
                        0.0
                    }
                } else {
                    // PyTorch clamps negative source coordinates to 0.
                    ((o as f64 + 0.5) * scale - 0.5).max(0.0)
                };
                let i0 = (src.floor() as usize).min(n_in - 1);
                let i1 = (i0 + 1).min(n_in - 1);
                let l1 = src - i0 as f64;
                row[i0] += 1.0 - l1;
                row[i1] += l1;
            }
            Filter::Nearest => {
                let i = ((o as f64 * scale).floor() as usize).min(n_in - 1);
                row[i] = 1.0;
            }
            Filter::AdaptiveAvg => {
                let start = (o * n_in) / n_out;
                let end = ((o + 1) * n_in).div_ceil(n_out);
                let w = 1.0 / (end - start) as f64;
                for v in &mut row[start..end] {
                    *v = w;
                }
            }
        }
    }
    m
}

/// The matrix of [`matrix`] as an f32 tensor `[n_out, n_in]` on `device`.
pub fn matrix_tensor(filter: Filter, n_in: usize, n_out: usize, device: &Device) -> Result<Tensor> {
    let m: Vec<f32> = matrix(filter, n_in, n_out).into_iter().map(|v| v as f32).collect();
    Ok(Tensor::from_vec(m, (n_out, n_in), device)?)
}

/// Resamples the last two axes of `xs` (`[..., H, W]`) to `(h, w)`:
/// `Mh · xs · Mwᵀ`, differentiable with respect to `xs`.
pub fn resample(xs: &Tensor, filter: Filter, (h, w): (usize, usize)) -> Result<Tensor> {
    let dims = xs.dims();
    let (h_in, w_in) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    if (h_in, w_in) == (h, w) && filter != Filter::AdaptiveAvg {
        return Ok(xs.clone());
    }
    let mh = axis_op(filter, h_in, h, xs.dtype(), xs.device())?;
    let mw = axis_op(filter, w_in, w, xs.dtype(), xs.device())?;
    let lead: usize = dims[..dims.len() - 2].iter().product();
    let flat = xs.reshape((lead, h_in, w_in))?;
    // [lead, H, W] · Mwᵀ = [lead, H, w]; then the same along H, transposed.
    let rows = mw.forward(&flat)?;
    let out = mh.forward(&rows.transpose(1, 2)?)?.transpose(1, 2)?;
    let mut shape = dims[..dims.len() - 2].to_vec();
    shape.extend([h, w]);
    Ok(out.reshape(shape)?)
}

/// The resampling of one axis as a constant-weight linear layer, built once
/// per filter, sizes, dtype and device.
fn axis_op(filter: Filter, n_in: usize, n_out: usize, dtype: DType, device: &Device) -> Result<Linear> {
    type Key = (Filter, usize, usize, DType, String);
    static OPS: OnceLock<Mutex<HashMap<Key, Linear>>> = OnceLock::new();
    let key = (filter, n_in, n_out, dtype, format!("{:?}", device.location()));
    let mut ops = OPS.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    if let Some(op) = ops.get(&key) {
        return Ok(op.clone());
    }
    let op = Linear::new(matrix_tensor(filter, n_in, n_out, device)?.to_dtype(dtype)?, None)?;
    ops.insert(key, op.clone());
    Ok(op)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adaptive_avg_windows_overlap_like_pytorch() {
        // torch: AdaptiveAvgPool1d(3) over 5 inputs uses windows [0,2), [1,4), [3,5).
        let m = matrix(Filter::AdaptiveAvg, 5, 3);
        assert_eq!(&m[0..5], &[0.5, 0.5, 0.0, 0.0, 0.0]);
        let third = 1.0 / 3.0;
        assert_eq!(&m[5..10], &[0.0, third, third, third, 0.0]);
        assert_eq!(&m[10..15], &[0.0, 0.0, 0.0, 0.5, 0.5]);
    }

    #[test]
    fn bilinear_matches_pytorch_half_pixel() {
        // torch.nn.functional.interpolate(torch.arange(4.).view(1,1,1,4), size=(1,8),
        //   mode='bilinear', align_corners=False) -> [0, .25, .75, 1.25, 1.75, 2.25, 2.75, 3]
        let m = matrix(Filter::Bilinear, 4, 8);
        let x = [0.0, 1.0, 2.0, 3.0];
        let y: Vec<f64> = (0..8).map(|o| (0..4).map(|i| m[o * 4 + i] * x[i]).sum()).collect();
        assert_eq!(y, vec![0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0]);
    }

    #[test]
    fn align_corners_hits_both_ends() {
        let m = matrix(Filter::BilinearAlignCorners, 3, 5);
        let x = [0.0, 10.0, 20.0];
        let y: Vec<f64> = (0..5).map(|o| (0..3).map(|i| m[o * 3 + i] * x[i]).sum()).collect();
        assert_eq!(y, vec![0.0, 5.0, 10.0, 15.0, 20.0]);
    }

    #[test]
    fn resample_is_differentiable() -> Result<()> {
        let x = candle_core::Var::from_tensor(&Tensor::arange(0f32, 24., &Device::Cpu)?.reshape((1, 2, 3, 4))?)?;
        let y = resample(x.as_tensor(), Filter::Bilinear, (5, 7))?;
        assert_eq!(y.dims(), &[1, 2, 5, 7]);
        let g = y.sum_all()?.backward()?;
        let gx = g.get(&x).expect("x takes part in y");
        // Each bilinear row sums to 1, so d(sum y)/dx sums to the output size.
        let total = gx.sum_all()?.to_scalar::<f32>()?;
        assert!((total - 70.0).abs() < 1e-4, "{total}");
        Ok(())
    }
}

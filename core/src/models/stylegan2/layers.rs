//! The generator's layers: equalized-lr linear, modulated convolution,
//! styled convolution (conv + noise + activation) and ToRGB.
//!
//! Reference: rosinality `model.py` classes `EqualLinear`, `ModulatedConv2d`,
//! `NoiseInjection`, `StyledConv`, `ToRGB`
//! <https://github.com/rosinality/stylegan2-pytorch/blob/bef283a1c24087da704d16c30abc8e36e63efa0e/model.py>.

use candle_core::{Tensor, D};
use candle_nn::VarBuilder;

use super::ops::{lrelu_gain, zero_insert, Fir};
use crate::Result;

/// Records named intermediate tensors of one forward pass (sample 0 only),
/// to localise a mismatch against the reference trace. Disabled by default.
#[derive(Debug, Default)]
pub struct Trace {
    entries: Option<Vec<(String, Tensor)>>,
}

impl Trace {
    /// A trace that records.
    pub fn enabled() -> Self {
        Self { entries: Some(Vec::new()) }
    }

    /// A trace that records nothing.
    pub fn disabled() -> Self {
        Self { entries: None }
    }

    /// Records sample 0 of `t` under `name` when enabled.
    pub fn record(&mut self, name: impl FnOnce() -> String, t: &Tensor) -> Result<()> {
        if let Some(entries) = &mut self.entries {
            entries.push((name(), t.narrow(0, 0, 1)?.detach()));
        }
        Ok(())
    }

    /// The recorded tensors, in recording order.
    pub fn into_entries(self) -> Vec<(String, Tensor)> {
        self.entries.unwrap_or_default()
    }
}

/// `EqualLinear`: raw weights scaled at run time by `lr_mul / sqrt(in)`,
/// bias by `lr_mul`, optionally followed by the fused leaky ReLU.
#[derive(Debug, Clone)]
pub struct EqualLinear {
    /// Effective weight, transposed: `[in, out]`.
    weight_t: Tensor,
    /// Effective bias `[out]`.
    bias: Tensor,
    activate: bool,
}

impl EqualLinear {
    /// Loads `weight` `[out, in]` and `bias` `[out]` under `vb`.
    pub fn new(
        in_dim: usize,
        out_dim: usize,
        lr_mul: f64,
        activate: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let scale = lr_mul / (in_dim as f64).sqrt();
        let weight_t = (vb.get((out_dim, in_dim), "weight")? * scale)?.t()?.contiguous()?;
        let bias = (vb.get(out_dim, "bias")? * lr_mul)?;
        Ok(Self { weight_t, bias, activate })
    }

    /// `xs` `[…, in]` to `[…, out]`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let ys = xs.broadcast_matmul(&self.weight_t)?.broadcast_add(&self.bias)?;
        if self.activate {
            lrelu_gain(&ys)
        } else {
            Ok(ys)
        }
    }
}

/// `ModulatedConv2d`, computed the "non-fused" way (rosinality's
/// `fused=False` branch): modulate the input channels by the style, run
/// one convolution with the shared weight for the whole batch, then scale
/// the output channels by the per-sample demodulation coefficients.
///
/// This equals the per-sample-weight (grouped) form exactly in real
/// arithmetic, and is one batched conv instead of `B` small ones.
#[derive(Debug, Clone)]
pub struct ModulatedConv2d {
    /// `scale * weight[0]`, `[out, in, k, k]`; for the up-sampling conv the
    /// kernel is spatially flipped (see [`Self::forward`]).
    weight: Tensor,
    /// `sum_{ky,kx} (scale * weight)²` as `[in, out]`, when demodulating:
    /// `sum_i s_i² · wsq[i, o]` is the squared norm of the modulated filter.
    wsq: Option<Tensor>,
    modulation: EqualLinear,
    /// The blur that follows the transposed conv of the up-sampling layers.
    blur: Option<Fir>,
    kernel_size: usize,
}

impl ModulatedConv2d {
    /// Loads `weight` `[1, out, in, k, k]` and `modulation.{weight,bias}`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        in_ch: usize,
        out_ch: usize,
        kernel_size: usize,
        style_dim: usize,
        demodulate: bool,
        upsample: bool,
        blur_kernel: &[f64],
        vb: VarBuilder,
    ) -> Result<Self> {
        let scale = 1.0 / ((in_ch * kernel_size * kernel_size) as f64).sqrt();
        let weight = (vb.get((1, out_ch, in_ch, kernel_size, kernel_size), "weight")? * scale)?
            .squeeze(0)?;
        let wsq = if demodulate {
            Some(weight.sqr()?.sum(D::Minus1)?.sum(D::Minus1)?.t()?.contiguous()?)
        } else {
            None
        };
        let (weight, blur) = if upsample {
            // model.py ModulatedConv2d.__init__: p = (len(k) - 2) - (ks - 1),
            // pad0 = (p + 1) // 2 + 1, pad1 = p // 2 + 1; (1, 1) for k = 4, ks = 3.
            let p = blur_kernel.len() as i64 - 2 - (kernel_size as i64 - 1);
            let pad0 = (p + 1).div_euclid(2) + 1;
            let pad1 = p.div_euclid(2) + 1;
            let blur = Fir::new(blur_kernel, 4.0, 1, (pad0 as usize, pad1 as usize), vb.device())?;
            (weight.flip(&[2, 3])?.contiguous()?, Some(blur))
        } else {
            (weight.contiguous()?, None)
        };
        let modulation = EqualLinear::new(style_dim, in_ch, 1.0, false, vb.pp("modulation"))?;
        Ok(Self { weight, wsq, modulation, blur, kernel_size })
    }

    /// Applies the layer to `xs` `[B or 1, in, H, W]` with the style `w`
    /// `[B, style_dim]`; `name` is the module path used in the trace.
    pub fn forward(&self, xs: &Tensor, w: &Tensor, name: &str, trace: &mut Trace) -> Result<Tensor> {
        let s = self.modulation.forward(w)?;
        trace.record(|| format!("{name}.modulation.out"), &s)?;
        let (b, in_ch) = s.dims2()?;
        let xs = xs.broadcast_mul(&s.reshape((b, in_ch, 1, 1))?)?;
        let k = self.kernel_size;
        let ys = if self.blur.is_some() {
            // conv_transpose2d(x, W^T, stride 2, padding 0), written as
            // zero-insertion (size 2H-1), padding k-1 and correlation with
            // the flipped kernel, so it runs on the (faster) conv2d path.
            let (_, _, h, w) = xs.dims4()?;
            let up = zero_insert(&zero_insert(&xs, 2, 2)?, 3, 2)?;
            let up = up.narrow(2, 0, 2 * h - 1)?.narrow(3, 0, 2 * w - 1)?;
            up.conv2d(&self.weight, k - 1, 1, 1, 1)?
        } else {
            xs.conv2d(&self.weight, k / 2, 1, 1, 1)?
        };
        let ys = match &self.wsq {
            Some(wsq) => {
                let demod = (s.sqr()?.matmul(wsq)? + 1e-8)?.sqrt()?.recip()?;
                let out_ch = demod.dim(1)?;
                // The blur is linear per channel, so demodulating before it
                // is the same as after; this way `blur.in` matches the
                // reference's (fused) transposed-conv output.
                ys.broadcast_mul(&demod.reshape((b, out_ch, 1, 1))?)?
            }
            None => ys,
        };
        let ys = match &self.blur {
            Some(blur) => {
                trace.record(|| format!("{name}.blur.in"), &ys)?;
                blur.forward(&ys)?
            }
            None => ys,
        };
        trace.record(|| format!("{name}.out"), &ys)?;
        Ok(ys)
    }
}

/// `StyledConv`: demodulated [`ModulatedConv2d`], noise injection
/// (`y + noise.weight * noise`), then `lrelu(y + activate.bias) * sqrt(2)`.
#[derive(Debug, Clone)]
pub struct StyledConv {
    conv: ModulatedConv2d,
    /// `noise.weight`, shape `[1]`.
    noise_weight: Tensor,
    /// `activate.bias` as `[1, out, 1, 1]`.
    bias: Tensor,
}

impl StyledConv {
    /// Loads `conv.*`, `noise.weight` and `activate.bias`.
    pub fn new(
        in_ch: usize,
        out_ch: usize,
        style_dim: usize,
        upsample: bool,
        blur_kernel: &[f64],
        vb: VarBuilder,
    ) -> Result<Self> {
        let conv =
            ModulatedConv2d::new(in_ch, out_ch, 3, style_dim, true, upsample, blur_kernel, vb.pp("conv"))?;
        let noise_weight = vb.get(1, "noise.weight")?;
        let bias = vb.get(out_ch, "activate.bias")?.reshape((1, out_ch, 1, 1))?;
        Ok(Self { conv, noise_weight, bias })
    }

    /// `noise`: `[1 or B, 1, H, W]` at the output resolution, or `None` for
    /// no noise.
    pub fn forward(
        &self,
        xs: &Tensor,
        w: &Tensor,
        noise: Option<&Tensor>,
        name: &str,
        trace: &mut Trace,
    ) -> Result<Tensor> {
        let ys = self.conv.forward(xs, w, &format!("{name}.conv"), trace)?;
        let ys = match noise {
            Some(noise) => ys.broadcast_add(&noise.broadcast_mul(&self.noise_weight)?)?,
            None => ys,
        };
        trace.record(|| format!("{name}.noise.out"), &ys)?;
        let ys = lrelu_gain(&ys.broadcast_add(&self.bias)?)?;
        trace.record(|| format!("{name}.out"), &ys)?;
        Ok(ys)
    }
}

/// `ToRGB`: a 1x1 modulated conv without demodulation, plus bias, plus the
/// up-sampled previous RGB output (`upfirdn2d` up 2, pad (2, 1)).
#[derive(Debug, Clone)]
pub struct ToRgb {
    conv: ModulatedConv2d,
    /// `bias`, `[1, 3, 1, 1]`.
    bias: Tensor,
    upsample: Option<Fir>,
}

impl ToRgb {
    /// Loads `conv.*` and `bias`; `upsample` for the blocks with a skip input.
    pub fn new(
        in_ch: usize,
        style_dim: usize,
        upsample: bool,
        blur_kernel: &[f64],
        vb: VarBuilder,
    ) -> Result<Self> {
        let conv = ModulatedConv2d::new(in_ch, 3, 1, style_dim, false, false, blur_kernel, vb.pp("conv"))?;
        let bias = vb.get((1, 3, 1, 1), "bias")?;
        let upsample = if upsample {
            // model.py Upsample: p = len(k) - 2, pad0 = (p + 1) // 2 + 1, pad1 = p // 2.
            let p = blur_kernel.len().saturating_sub(2);
            Some(Fir::new(blur_kernel, 4.0, 2, ((p + 1) / 2 + 1, p / 2), vb.device())?)
        } else {
            None
        };
        Ok(Self { conv, bias, upsample })
    }

    /// `skip` is the previous ToRGB output, required when this block
    /// up-samples one.
    pub fn forward(
        &self,
        xs: &Tensor,
        w: &Tensor,
        skip: Option<&Tensor>,
        name: &str,
        trace: &mut Trace,
    ) -> Result<Tensor> {
        let ys = self.conv.forward(xs, w, &format!("{name}.conv"), trace)?.broadcast_add(&self.bias)?;
        let ys = match (&self.upsample, skip) {
            (Some(up), Some(skip)) => {
                trace.record(|| format!("{name}.upsample.in"), skip)?;
                let skip = up.forward(skip)?;
                trace.record(|| format!("{name}.upsample.out"), &skip)?;
                (ys + skip)?
            }
            _ => ys,
        };
        trace.record(|| format!("{name}.out"), &ys)?;
        Ok(ys)
    }
}

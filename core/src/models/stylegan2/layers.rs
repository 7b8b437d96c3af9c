//! The generator's layers: equalized-lr linear, modulated convolution,
//! styled convolution (conv + noise + activation) and ToRGB, written in the
//! constant-weight ops of [`crate::ops`].
//!
//! Reference: rosinality `model.py` classes `EqualLinear`, `ModulatedConv2d`,
//! `NoiseInjection`, `StyledConv`, `ToRGB`
//! <https://github.com/rosinality/stylegan2-pytorch/blob/bef283a1c24087da704d16c30abc8e36e63efa0e/model.py>.

use candle_core::{Tensor, D};
use candle_nn::VarBuilder;

use super::ops::{lrelu_gain, Fir};
use crate::ops::fused::{demodulate_stock, modulate, Epilogue};
use crate::ops::{Conv2d, ConvTranspose2d, Linear};
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

    /// Whether this trace records (to compute an intermediate only for it).
    pub fn is_enabled(&self) -> bool {
        self.entries.is_some()
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
/// bias by `lr_mul`, optionally followed by the fused leaky ReLU. The scales
/// are folded into one constant-weight linear layer at load.
#[derive(Debug, Clone)]
pub struct EqualLinear {
    linear: Linear,
    activate: bool,
}

impl EqualLinear {
    /// Loads `weight` `[out, in]` and `bias` `[out]` under `vb`.
    pub fn new(in_dim: usize, out_dim: usize, lr_mul: f64, activate: bool, vb: VarBuilder) -> Result<Self> {
        let scale = lr_mul / (in_dim as f64).sqrt();
        Self::with_gains(vb.get((out_dim, in_dim), "weight")?, vb.get(out_dim, "bias")?, scale, lr_mul, activate)
    }

    /// The layer of the raw `weight` `[out, in]` and `bias` `[out]` with
    /// explicit run-time gains (`weight_gain`, `bias_gain` of StyleGAN2-ADA's
    /// `FullyConnectedLayer`; `lr_mul / sqrt(in)` and `lr_mul` here).
    pub fn with_gains(weight: Tensor, bias: Tensor, weight_gain: f64, bias_gain: f64, activate: bool) -> Result<Self> {
        Ok(Self { linear: Linear::new((weight * weight_gain)?, Some((bias * bias_gain)?))?, activate })
    }

    /// The same layer computing each sample on its own
    /// ([`Linear::row_independent`]).
    pub fn row_independent(self) -> Self {
        Self { linear: self.linear.row_independent(), ..self }
    }

    /// `xs` `[…, in]` to `[…, out]`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let ys = self.linear.forward(xs)?;
        if self.activate {
            lrelu_gain(&ys)
        } else {
            Ok(ys)
        }
    }
}

/// The convolution inside a modulated conv.
#[derive(Debug, Clone)]
enum Conv {
    /// Stride 1, padding `k / 2`.
    Same(Conv2d),
    /// `conv_transpose2d(x, W^T, stride 2, padding 0)` (output `2H + 1`
    /// for `k = 3`), then the blur (`upfirdn2d` up 1, pad (1, 1)) to `2H`.
    Up { conv: ConvTranspose2d, blur: Fir },
}

/// A [`ModulatedConv2d`]'s output before demodulation.
#[derive(Debug, Clone)]
pub struct ModConvOut {
    /// The conv (and blur) of the modulated input with the shared weight,
    /// `[B, out, H', W']`.
    pub ys: Tensor,
    /// The demodulation coefficients `[B, out]` that scale `ys`'s
    /// channels, when the layer demodulates.
    pub demod: Option<Tensor>,
}

/// `ModulatedConv2d`, computed the "non-fused" way (rosinality's
/// `fused=False` branch): modulate the input channels by the style, run
/// one convolution with the shared weight for the whole batch, then scale
/// the output channels by the per-sample demodulation coefficients.
///
/// This equals the per-sample-weight (grouped) form exactly in real
/// arithmetic, and is one batched conv instead of `B` small ones. The
/// demodulation is applied by the caller ([`StyledConv`] fuses it into its
/// epilogue); since the blur is linear per channel, scaling after it equals
/// rosinality's scaling of the weight before the transposed conv.
#[derive(Debug, Clone)]
pub struct ModulatedConv2d {
    conv: Conv,
    /// `Σ_{ky,kx} (scale·weight)²` `[out, in]` as a constant linear layer,
    /// when demodulating: `Σ_i s_i² · wsq[o, i]` is the squared norm of the
    /// modulated filter `o`.
    wsq: Option<Linear>,
    modulation: EqualLinear,
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
        let weight = (vb.get((1, out_ch, in_ch, kernel_size, kernel_size), "weight")? * scale)?.squeeze(0)?;
        let modulation = EqualLinear::new(style_dim, in_ch, 1.0, false, vb.pp("modulation"))?;
        Self::from_weight(weight, modulation, demodulate, upsample, blur_kernel)
    }

    /// The layer of `weight` `[out, in, k, k]` with its run-time gain
    /// already applied, and the style's `modulation` layer. rosinality
    /// scales the weight by `1/sqrt(in·k·k)`; StyleGAN2-ADA's
    /// `SynthesisLayer` uses it unscaled (the demodulation normalises it
    /// away but for the `1e-8`), its `ToRGBLayer` scales the style instead,
    /// which is the same product.
    pub fn from_weight(
        weight: Tensor,
        modulation: EqualLinear,
        demodulate: bool,
        upsample: bool,
        blur_kernel: &[f64],
    ) -> Result<Self> {
        let kernel_size = weight.dim(3)?;
        // The style and demodulation layers compute each sample on its own,
        // so that an image does not depend on what it is batched with (the
        // engine renders originals in batches and caches them per seed).
        let modulation = modulation.row_independent();
        let wsq = if demodulate {
            Some(Linear::new(weight.sqr()?.sum(D::Minus1)?.sum(D::Minus1)?, None)?.row_independent())
        } else {
            None
        };
        let conv = if upsample {
            // model.py ModulatedConv2d.__init__: p = (len(k) - 2) - (ks - 1),
            // pad0 = (p + 1) // 2 + 1, pad1 = p // 2 + 1; (1, 1) for k = 4, ks = 3.
            let p = blur_kernel.len() as i64 - 2 - (kernel_size as i64 - 1);
            let pad0 = (p + 1).div_euclid(2) + 1;
            let pad1 = p.div_euclid(2) + 1;
            let blur = Fir::new(blur_kernel, 4.0, 1, (pad0 as usize, pad1 as usize), weight.device())?;
            // The weight laid out [in, out, k, k], not flipped (model.py
            // ModulatedConv2d.forward, fused=False: weight.transpose(0, 1),
            // conv_transpose2d(input, weight, padding=0, stride=2)).
            Conv::Up { conv: ConvTranspose2d::new(weight.transpose(0, 1)?, 2)?, blur }
        } else {
            Conv::Same(Conv2d::new(weight, None, 1, kernel_size / 2)?)
        };
        Ok(Self { conv, wsq, modulation })
    }

    /// Applies the layer to `xs` `[B or 1, in, H, W]` with the style `w`
    /// `[B, style_dim]`; `name` is the module path used in the trace, which
    /// records the demodulated outputs (as the reference computes them).
    pub fn forward(&self, xs: &Tensor, w: &Tensor, name: &str, trace: &mut Trace) -> Result<ModConvOut> {
        let s = self.modulation.forward(w)?;
        trace.record(|| format!("{name}.modulation.out"), &s)?;
        let demod = match &self.wsq {
            Some(wsq) => Some((wsq.forward(&s.sqr()?)? + 1e-8)?.sqrt()?.recip()?),
            None => None,
        };
        let mut record = |what: &str, ys: &Tensor| -> Result<()> {
            if trace.is_enabled() {
                let ys = match &demod {
                    Some(d) => demodulate_stock(ys, d)?,
                    None => ys.clone(),
                };
                trace.record(|| format!("{name}.{what}"), &ys)?;
            }
            Ok(())
        };
        let xs = modulate(xs, &s)?;
        let ys = match &self.conv {
            Conv::Same(conv) => conv.forward(&xs)?,
            Conv::Up { conv, blur } => {
                let ys = conv.forward(&xs)?;
                record("blur.in", &ys)?;
                blur.forward(&ys)?
            }
        };
        record("out", &ys)?;
        Ok(ModConvOut { ys, demod })
    }
}

/// `StyledConv`: demodulated [`ModulatedConv2d`], noise injection
/// (`y + noise.weight * noise`), then `lrelu(y + activate.bias) * sqrt(2)`;
/// demodulation, noise, bias and activation run as one fused [`Epilogue`].
#[derive(Debug, Clone)]
pub struct StyledConv {
    conv: ModulatedConv2d,
    /// `noise.weight` and `activate.bias`.
    epilogue: Epilogue,
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
        let conv = ModulatedConv2d::new(in_ch, out_ch, 3, style_dim, true, upsample, blur_kernel, vb.pp("conv"))?;
        let epilogue = Epilogue::new(vb.get(out_ch, "activate.bias")?, vb.get(1, "noise.weight")?)?;
        Ok(Self::from_parts(conv, epilogue))
    }

    /// The layer of a demodulating `conv` and its `epilogue`.
    pub fn from_parts(conv: ModulatedConv2d, epilogue: Epilogue) -> Self {
        Self { conv, epilogue }
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
        let ModConvOut { ys, demod } = self.conv.forward(xs, w, &format!("{name}.conv"), trace)?;
        let demod = demod.expect("a styled conv is built demodulating");
        if trace.is_enabled() {
            let noised = self.epilogue.add_noise_stock(&demodulate_stock(&ys, &demod)?, noise)?;
            trace.record(|| format!("{name}.noise.out"), &noised)?;
        }
        let ys = self.epilogue.forward(&ys, &demod, noise)?;
        trace.record(|| format!("{name}.out"), &ys)?;
        Ok(ys)
    }
}

/// `ToRGB`: a 1x1 modulated conv without demodulation, plus bias, plus the
/// up-sampled previous RGB output (`upfirdn2d` up 2, pad (2, 1)).
/// StyleGAN2-ADA clamps the layer's own output (before the skip sum) to
/// `±conv_clamp`; rosinality does not clamp.
#[derive(Debug, Clone)]
pub struct ToRgb {
    conv: ModulatedConv2d,
    /// `bias`, `[1, 3, 1, 1]`.
    bias: Tensor,
    upsample: Option<Fir>,
    clamp: Option<f64>,
}

impl ToRgb {
    /// Loads `conv.*` and `bias`; `upsample` for the blocks with a skip input.
    pub fn new(in_ch: usize, style_dim: usize, upsample: bool, blur_kernel: &[f64], vb: VarBuilder) -> Result<Self> {
        let conv = ModulatedConv2d::new(in_ch, 3, 1, style_dim, false, false, blur_kernel, vb.pp("conv"))?;
        let bias = vb.get((1, 3, 1, 1), "bias")?;
        Self::from_parts(conv, bias, upsample, blur_kernel, None)
    }

    /// The layer of a non-demodulating `conv`, its `bias` (`[C]` or
    /// `[1, C, 1, 1]`), whether it up-samples a skip input, and the clamp
    /// of its output.
    pub fn from_parts(
        conv: ModulatedConv2d,
        bias: Tensor,
        upsample: bool,
        blur_kernel: &[f64],
        clamp: Option<f64>,
    ) -> Result<Self> {
        let c = bias.elem_count();
        let bias = bias.reshape((1, c, 1, 1))?;
        let upsample = if upsample {
            // model.py Upsample: p = len(k) - 2, pad0 = (p + 1) // 2 + 1, pad1 = p // 2.
            let p = blur_kernel.len().saturating_sub(2);
            Some(Fir::new(blur_kernel, 4.0, 2, (p.div_ceil(2) + 1, p / 2), bias.device())?)
        } else {
            None
        };
        Ok(Self { conv, bias, upsample, clamp })
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
        // Not demodulated: `ys` is the modulated conv's output as is.
        let ys = self.conv.forward(xs, w, &format!("{name}.conv"), trace)?.ys.broadcast_add(&self.bias)?;
        let ys = match self.clamp {
            Some(c) => ys.clamp(-c, c)?,
            None => ys,
        };
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

//! Fused element-wise ops of the modulated convolution: [`modulate`]
//! (input channels times the style) and the styled conv's [`Epilogue`]
//! (demodulation, noise, bias, leaky ReLU·√2), each one pass forward and
//! one pass backward on the CPU (f32, f64), parallel over the `B·C` planes.
//!
//! Both carry gradients to every operand that depends on the latent: the
//! input and the style for `modulate`, the conv output and the
//! demodulation coefficients for the epilogue. The noise map, its weight
//! and the bias are constants. On a CUDA device (f32) the same ops run as
//! the kernels of `cuda/kernels.cu`, once the runtime probe
//! ([`super::probe`]) has found them equal to the stock composition there.
//! Elsewhere each op runs as the stock-Candle composition it replaces
//! (`*_stock`), which is also the tests' oracle.
//!
//! Reference: rosinality `model.py` (`ModulatedConv2d`, `NoiseInjection`)
//! and `op/fused_act.py`
//! <https://github.com/rosinality/stylegan2-pytorch/blob/bef283a1c24087da704d16c30abc8e36e63efa0e/model.py>.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::profile::{self, Family};
use super::{cpu, probe};
use crate::{Error, Result};

/// Negative slope of the fused leaky ReLU.
pub const LRELU_SLOPE: f64 = 0.2;

/// Whether `t` runs on the CPU kernels.
fn on_cpu_kernel(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64)
}

/// Probes [`modulate`] on `xs`'s device: a shared and a per-sample input,
/// forward and the gradients of the input and the style (all three ops).
fn probe_modulate(xs: &Tensor) -> bool {
    let run = |fast: bool| {
        let u = |seed: u64, shape: &[usize]| probe::uniform(seed, shape, DType::F32, xs.device());
        let mut out = Vec::new();
        for bx in [1, 3] {
            let args = [u(1, &[bx, 4, 5, 6])?, u(2, &[3, 4])?];
            let r = u(3, &[3, 4, 5, 6])?;
            out.extend(probe::value_and_grads(&args, &r, |a| {
                if fast {
                    modulate_fast(&a[0], &a[1])
                } else {
                    modulate_stock(&a[0], &a[1])
                }
            })?);
        }
        Ok(out)
    };
    probe::fast_kernel_passes("modulate", xs, probe::ELEMENTWISE_TOLERANCE, || run(true), || run(false))
}

/// `xs * s` per sample and channel: `xs` `[B or 1, C, H, W]`, the style
/// `s` `[B, C]`, output `[B, C, H, W]`. Gradients reach both.
pub fn modulate(xs: &Tensor, s: &Tensor) -> Result<Tensor> {
    let (bx, c, _, _) = xs.dims4()?;
    let (b, cs) = s.dims2()?;
    if cs != c || (bx != 1 && bx != b) {
        return Err(Error::BadShape {
            name: "modulate input".into(),
            expected: format!("[1 or {b}, {cs}, H, W] for a style [{b}, {cs}]"),
            got: xs.dims().to_vec(),
        });
    }
    let fast =
        xs.dtype() == s.dtype() && (on_cpu_kernel(xs) || (probe::cuda_applies(xs, &[Some(s)]) && probe_modulate(xs)));
    if !fast {
        return modulate_stock(xs, s);
    }
    modulate_fast(xs, s)
}

/// The custom op of [`modulate`], whatever the device.
fn modulate_fast(xs: &Tensor, s: &Tensor) -> Result<Tensor> {
    Ok(xs.contiguous()?.apply_op2(&s.contiguous()?, Modulate)?)
}

/// The stock-Candle composition of [`modulate`] (`broadcast_mul`).
pub fn modulate_stock(xs: &Tensor, s: &Tensor) -> Result<Tensor> {
    let (b, c) = s.dims2()?;
    Ok(xs.broadcast_mul(&s.reshape((b, c, 1, 1))?)?)
}

/// The dtype-matched CPU slices of a binary op's operands, or an error.
macro_rules! dispatch2 {
    ($name:expr, $s1:expr, $l1:expr, $s2:expr, $l2:expr, |$a:ident, $b:ident| $body:expr) => {
        match ($s1, $s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let $a: &[f32] = cpu::slice($s1, $l1)?;
                let $b: &[f32] = cpu::slice($s2, $l2)?;
                CpuStorage::F32($body)
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let $a: &[f64] = cpu::slice($s1, $l1)?;
                let $b: &[f64] = cpu::slice($s2, $l2)?;
                CpuStorage::F64($body)
            }
            (a, b) => bail!("{}: needs two f32 or two f64 operands, got {:?} and {:?}", $name, a.dtype(), b.dtype()),
        }
    };
}

/// `out[b, c] = x[b or 0, c] * s[b, c]`, planes of `H·W`.
#[derive(Debug, Clone, Copy)]
struct Modulate;

impl CustomOp2 for Modulate {
    fn name(&self) -> &'static str {
        "modulate"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let _t = profile::scope(Family::Elementwise);
        let (bx, c, h, w) = l1.shape().dims4()?;
        let (b, _) = l2.shape().dims2()?;
        let hw = h * w;
        let out = dispatch2!(self.name(), s1, l1, s2, l2, |xs, s| {
            let mut out = vec![WithDType::from_f64(0.0); b * c * hw];
            if hw > 0 {
                out.par_chunks_mut(hw).enumerate().for_each(|(p, o)| {
                    let x = &xs[(if bx == 1 { p % c } else { p }) * hw..][..hw];
                    let sv = s[p];
                    for (ov, &xv) in o.iter_mut().zip(x) {
                        *ov = xv * sv;
                    }
                });
            }
            out
        });
        Ok((out, Shape::from((b, c, h, w))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (bx, c, h, w) = l1.shape().dims4()?;
        let (b, _) = l2.shape().dims2()?;
        let out = super::cuda::modulate((s1, l1), (s2, l2), (bx, b, c, h * w))?;
        Ok((out, Shape::from((b, c, h, w))))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        s: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let gx = match (xs.track_op(), xs.dim(0)? == grad.dim(0)?) {
            (false, _) => None,
            // The same op: the input gradient is the gradient modulated.
            (true, true) => Some(grad.apply_op2(s, Modulate)?),
            (true, false) => Some(grad.apply_op2_no_bwd(s, &ModulateSum)?),
        };
        let gs = if s.track_op() { Some(grad.apply_op2_no_bwd(xs, &ChannelDot)?) } else { None };
        Ok((gx, gs))
    }
}

/// `out[0, c] = Σ_b g[b, c] * s[b, c]`: the gradient of a modulated input
/// shared by the whole batch.
#[derive(Debug, Clone, Copy)]
struct ModulateSum;

impl CustomOp2 for ModulateSum {
    fn name(&self) -> &'static str {
        "modulate-sum"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let _t = profile::scope(Family::Elementwise);
        let (b, c, h, w) = l1.shape().dims4()?;
        let hw = h * w;
        let out = dispatch2!(self.name(), s1, l1, s2, l2, |g, s| {
            let mut out = vec![WithDType::from_f64(0.0); c * hw];
            if hw > 0 {
                out.par_chunks_mut(hw).enumerate().for_each(|(ci, o)| {
                    for bi in 0..b {
                        let sv = s[bi * c + ci];
                        for (ov, &gv) in o.iter_mut().zip(&g[(bi * c + ci) * hw..][..hw]) {
                            *ov += gv * sv;
                        }
                    }
                });
            }
            out
        });
        Ok((out, Shape::from((1, c, h, w))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (b, c, h, w) = l1.shape().dims4()?;
        let out = super::cuda::modulate_sum((s1, l1), (s2, l2), (b, c, h * w))?;
        Ok((out, Shape::from((1, c, h, w))))
    }
}

/// `out[b, c] = Σ_{h,w} g[b, c] * x[b or 0, c]` (summed in f64): the
/// gradient of the style.
#[derive(Debug, Clone, Copy)]
struct ChannelDot;

impl CustomOp2 for ChannelDot {
    fn name(&self) -> &'static str {
        "channel-dot"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let _t = profile::scope(Family::Elementwise);
        let (b, c, h, w) = l1.shape().dims4()?;
        let bx = l2.shape().dims4()?.0;
        let hw = h * w;
        let out = dispatch2!(self.name(), s1, l1, s2, l2, |g, xs| {
            (0..b * c)
                .into_par_iter()
                .map(|p| {
                    let x = &xs[(if bx == 1 { p % c } else { p }) * hw..][..hw];
                    let dot = g[p * hw..][..hw].iter().zip(x).fold(0f64, |acc, (&gv, &xv)| acc + (gv * xv).to_f64());
                    WithDType::from_f64(dot)
                })
                .collect()
        });
        Ok((out, Shape::from((b, c))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (b, c, h, w) = l1.shape().dims4()?;
        let bx = l2.shape().dims4()?.0;
        let out = super::cuda::channel_dot((s1, l1), (s2, l2), (bx, b, c, h * w))?;
        Ok((out, Shape::from((b, c))))
    }
}

/// The end of a styled conv, after the (up-sampling and blur of the) conv:
/// `lrelu(y·demod[b, o] + noise_weight·noise + bias[o], 0.2)·√2`, in one
/// pass. `demod` carries the demodulation, so the conv before it runs with
/// one shared weight for the whole batch (rosinality's `fused=False` form).
///
/// StyleGAN2-ADA's layers end with a clamp of that result to `±clamp`
/// ([`Self::with_clamp`], `bias_act(…, clamp=conv_clamp·gain)`); without
/// one (rosinality) nothing changes.
#[derive(Debug, Clone)]
pub struct Epilogue {
    /// `activate.bias`, `[C]`, for the stock path.
    bias: Tensor,
    /// `noise.weight`, `[1]`, for the stock path.
    noise_weight: Tensor,
    /// The same constants on the host, read once, for the CPU kernel.
    bias_host: Arc<[f64]>,
    noise_weight_host: f64,
    /// Outputs are clamped to `±clamp` when set.
    clamp: Option<f64>,
}

impl Epilogue {
    /// The epilogue with the constants `bias` `[C]` and `noise_weight` `[1]`.
    #[allow(clippy::disallowed_methods, reason = "reads the constants once, when the network is loaded")]
    pub fn new(bias: Tensor, noise_weight: Tensor) -> Result<Self> {
        let c = bias.dims1()?;
        let bias_host: Arc<[f64]> = bias.to_dtype(DType::F64)?.to_vec1::<f64>()?.into();
        let noise_weight_host = noise_weight.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?[0];
        Ok(Self { bias: bias.reshape((1, c, 1, 1))?, noise_weight, bias_host, noise_weight_host, clamp: None })
    }

    /// The same epilogue, its output clamped to `±clamp` (`None`: not
    /// clamped). The clamp's gradient is zero where it cuts, as torch's.
    pub fn with_clamp(self, clamp: Option<f64>) -> Self {
        Self { clamp, ..self }
    }

    /// `ys` `[B, C, H, W]`, `demod` `[B, C]`, `noise` `[1 or B, 1, H, W]`
    /// (`None`: no noise) to `[B, C, H, W]`. Gradients reach `ys` and
    /// `demod`.
    pub fn forward(&self, ys: &Tensor, demod: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
        self.check(ys, demod, noise)?;
        let fast = ys.dtype() == demod.dtype()
            && (on_cpu_kernel(ys) || (probe::cuda_applies(ys, &[Some(demod), noise]) && self.probe(ys)));
        if !fast {
            return self.forward_stock(ys, demod, noise);
        }
        self.forward_fast(ys, demod, noise)
    }

    /// The custom op, whatever the device.
    fn forward_fast(&self, ys: &Tensor, demod: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
        let (b, c, h, w) = ys.dims4()?;
        let noise = match noise {
            Some(n) => Some(n.to_dtype(ys.dtype())?.contiguous()?),
            None => None,
        };
        let op = EpilogueOp {
            bias: self.bias_host.clone(),
            bias_tensor: self.bias.to_dtype(ys.dtype())?,
            noise_weight: self.noise_weight_host,
            noise,
            clamp: self.clamp,
        };
        let out = ys.contiguous()?.apply_op2(&demod.contiguous()?, op)?;
        debug_assert_eq!(out.dims(), &[b, c, h, w]);
        Ok(out)
    }

    /// Probes the epilogue on `ys`'s device, with this epilogue's clamp: with
    /// a shared and a per-sample noise map and without, forward and the
    /// gradients of the conv output and the demodulation.
    fn probe(&self, ys: &Tensor) -> bool {
        let run = |fast: bool| {
            let u = |seed: u64, shape: &[usize]| probe::uniform(seed, shape, DType::F32, ys.device());
            let epi = Epilogue::new(u(1, &[4])?, u(2, &[1])?)?.with_clamp(self.clamp.map(|_| 0.5));
            let mut out = Vec::new();
            for nb in [0, 1, 3] {
                let noise = if nb > 0 { Some(u(3, &[nb, 1, 5, 6])?) } else { None };
                let args = [u(4, &[3, 4, 5, 6])?, (u(5, &[3, 4])?.abs()? + 0.5)?];
                let r = u(6, &[3, 4, 5, 6])?;
                out.extend(probe::value_and_grads(&args, &r, |a| {
                    if fast {
                        epi.forward_fast(&a[0], &a[1], noise.as_ref())
                    } else {
                        epi.forward_stock(&a[0], &a[1], noise.as_ref())
                    }
                })?);
            }
            Ok(out)
        };
        let op = if self.clamp.is_some() { "styled-conv-epilogue-clamped" } else { "styled-conv-epilogue" };
        probe::fast_kernel_passes(op, ys, probe::ELEMENTWISE_TOLERANCE, || run(true), || run(false))
    }

    /// The stock-Candle composition of [`Self::forward`].
    pub fn forward_stock(&self, ys: &Tensor, demod: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
        let ys = self.add_noise_stock(&demodulate_stock(ys, demod)?, noise)?;
        let ys = lrelu_gain(&ys.broadcast_add(&self.bias.to_dtype(ys.dtype())?)?)?;
        match self.clamp {
            Some(c) => Ok(ys.clamp(-c, c)?),
            None => Ok(ys),
        }
    }

    /// `ys + noise_weight·noise` (stock ops, for traces).
    pub fn add_noise_stock(&self, ys: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
        match noise {
            Some(noise) => {
                let nw = self.noise_weight.to_dtype(ys.dtype())?;
                Ok(ys.broadcast_add(&noise.to_dtype(ys.dtype())?.broadcast_mul(&nw)?)?)
            }
            None => Ok(ys.clone()),
        }
    }

    fn check(&self, ys: &Tensor, demod: &Tensor, noise: Option<&Tensor>) -> Result<()> {
        let (b, c, h, w) = ys.dims4()?;
        let bad = |name: &str, expected: String, got: &Tensor| Error::BadShape {
            name: name.into(),
            expected,
            got: got.dims().to_vec(),
        };
        if c != self.bias_host.len() {
            return Err(bad("epilogue input", format!("{} channels", self.bias_host.len()), ys));
        }
        if demod.dims() != [b, c] {
            return Err(bad("demodulation", format!("[{b}, {c}]"), demod));
        }
        if let Some(n) = noise {
            let (nb, nc, nh, nw) = n.dims4()?;
            if (nb != 1 && nb != b) || nc != 1 || (nh, nw) != (h, w) {
                return Err(bad("noise", format!("[1 or {b}, 1, {h}, {w}]"), n));
            }
        }
        Ok(())
    }
}

/// `ys·demod[b, o]` as stock ops: a modulated conv's output, for traces
/// and the stock epilogue.
pub fn demodulate_stock(ys: &Tensor, demod: &Tensor) -> Result<Tensor> {
    let (b, c) = demod.dims2()?;
    Ok(ys.broadcast_mul(&demod.reshape((b, c, 1, 1))?)?)
}

/// `lrelu(xs, 0.2)·√2` as stock ops; `where_cond` keeps both branches
/// differentiable (its backward routes the gradient to the chosen branch).
///
/// `op/fused_act.py` on CPU: `F.leaky_relu(input + bias, 0.2) * sqrt(2)`.
pub fn lrelu_gain(xs: &Tensor) -> Result<Tensor> {
    let positive = xs.ge(0f64)?;
    let ys = positive.where_cond(xs, &(xs * LRELU_SLOPE)?)?;
    Ok((ys * std::f64::consts::SQRT_2)?)
}

/// The epilogue's constants as one op's state.
#[derive(Debug, Clone)]
struct EpilogueOp {
    bias: Arc<[f64]>,
    /// The same bias as a tensor on the input's device and in its dtype
    /// (read by the CUDA kernel).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    bias_tensor: Tensor,
    noise_weight: f64,
    /// `[1 or B, 1, H, W]`, contiguous, in the input's dtype.
    noise: Option<Tensor>,
    clamp: Option<f64>,
}

/// A plane's constants in the kernel's dtype.
struct PlaneConsts<'a, T> {
    bias: T,
    noise_weight: T,
    noise: Option<&'a [T]>,
}

impl EpilogueOp {
    const NAME: &'static str = "styled-conv-epilogue";

    /// The constants as the CUDA kernels take them, for `[B, C, H, W]`.
    #[cfg(feature = "cuda")]
    fn cuda_args(&self, l: &Layout) -> candle_core::Result<super::cuda::EpilogueArgs<'_>> {
        let (_, c, h, w) = l.shape().dims4()?;
        Ok(super::cuda::EpilogueArgs {
            bias: &self.bias_tensor,
            noise: self.noise.as_ref(),
            noise_weight: self.noise_weight,
            clamp: self.clamp,
            c,
            hw: h * w,
        })
    }

    /// Runs `f` with the noise map's data (or `None`).
    fn with_noise<T: WithDType, R>(
        &self,
        f: impl FnOnce(Option<&[T]>) -> candle_core::Result<R>,
    ) -> candle_core::Result<R> {
        match &self.noise {
            Some(n) => cpu::with_data(&n.contiguous()?, |data| f(Some(data)))?,
            None => f(None),
        }
    }

    /// The constants of plane `p` (sample `p / c`, channel `p % c`).
    fn plane<'a, T: WithDType>(&self, noise: Option<&'a [T]>, p: usize, c: usize, hw: usize) -> PlaneConsts<'a, T> {
        let noise = noise.map(|n| {
            let nb = n.len() / hw;
            &n[(if nb == 1 { 0 } else { p / c }) * hw..][..hw]
        });
        PlaneConsts { bias: T::from_f64(self.bias[p % c]), noise_weight: T::from_f64(self.noise_weight), noise }
    }

    fn forward<T: WithDType>(&self, ys: &[T], demod: &[T], (c, hw): (usize, usize)) -> candle_core::Result<Vec<T>> {
        let (slope, gain) = (T::from_f64(LRELU_SLOPE), T::from_f64(std::f64::consts::SQRT_2));
        let clamp = self.clamp.map(T::from_f64);
        self.with_noise(|noise: Option<&[T]>| {
            let mut out = vec![T::from_f64(0.0); ys.len()];
            if hw == 0 {
                return Ok(out);
            }
            out.par_chunks_mut(hw).zip(ys.par_chunks(hw)).enumerate().for_each(|(p, (o, y))| {
                let k = self.plane(noise, p, c, hw);
                let d = demod[p];
                let act = |z: T| {
                    let y = (if z >= T::from_f64(0.0) { z } else { z * slope }) * gain;
                    match clamp {
                        Some(c) if y > c => c,
                        Some(c) if y < T::from_f64(0.0) - c => T::from_f64(0.0) - c,
                        _ => y,
                    }
                };
                match k.noise {
                    // The stock order: ((y·d) + noise·w) + bias.
                    Some(n) => {
                        for ((ov, &yv), &nv) in o.iter_mut().zip(y).zip(n) {
                            *ov = act(yv * d + nv * k.noise_weight + k.bias);
                        }
                    }
                    None => {
                        for (ov, &yv) in o.iter_mut().zip(y) {
                            *ov = act(yv * d + k.bias);
                        }
                    }
                }
            });
            Ok(out)
        })
    }

    /// `[grad_y (B·C·H·W) | grad_demod (B·C)]`, flat. The pre-activation is
    /// recomputed exactly as in the forward, so the branch taken matches.
    fn backward<T: WithDType>(
        &self,
        ys: &[T],
        demod: &[T],
        grad: &[T],
        (c, hw): (usize, usize),
    ) -> candle_core::Result<Vec<T>> {
        let (slope, gain) = (T::from_f64(LRELU_SLOPE), T::from_f64(std::f64::consts::SQRT_2));
        let clamp = self.clamp.map(T::from_f64);
        let planes = demod.len();
        self.with_noise(|noise: Option<&[T]>| {
            let mut out = vec![T::from_f64(0.0); ys.len() + planes];
            if hw == 0 {
                return Ok(out);
            }
            let (gy, gd) = out.split_at_mut(ys.len());
            gy.par_chunks_mut(hw)
                .zip(gd.par_iter_mut())
                .zip(ys.par_chunks(hw).zip(grad.par_chunks(hw)))
                .enumerate()
                .for_each(|(p, ((gy, gd), (y, g)))| {
                    let k = self.plane(noise, p, c, hw);
                    let d = demod[p];
                    let mut acc = 0f64;
                    for (i, ((gyv, &yv), &gv)) in gy.iter_mut().zip(y).zip(g).enumerate() {
                        let z = match k.noise {
                            Some(n) => yv * d + n[i] * k.noise_weight + k.bias,
                            None => yv * d + k.bias,
                        };
                        let (y, dz) = if z >= T::from_f64(0.0) {
                            (z * gain, gv * gain)
                        } else {
                            (z * slope * gain, gv * gain * slope)
                        };
                        // Zero where the clamp cut (torch's clamp passes the
                        // gradient on its bounds).
                        let dz = match clamp {
                            Some(c) if y > c || y < T::from_f64(0.0) - c => T::from_f64(0.0),
                            _ => dz,
                        };
                        *gyv = dz * d;
                        acc += (dz * yv).to_f64();
                    }
                    *gd = T::from_f64(acc);
                });
            Ok(out)
        })
    }
}

impl CustomOp2 for EpilogueOp {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let _t = profile::scope(Family::Elementwise);
        let (_, c, h, w) = l1.shape().dims4()?;
        let out = dispatch2!(Self::NAME, s1, l1, s2, l2, |ys, demod| self.forward(ys, demod, (c, h * w))?);
        Ok((out, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let out = super::cuda::epilogue((s1, l1), (s2, l2), &self.cuda_args(l1)?)?;
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        ys: &Tensor,
        demod: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let n = ys.elem_count();
        let packed = ys.apply_op3_no_bwd(demod, &grad.contiguous()?, &EpilogueBwd(self.clone()))?;
        let gy = ys.track_op().then(|| packed.narrow(0, 0, n)?.reshape(ys.shape())).transpose()?;
        let gd =
            demod.track_op().then(|| packed.narrow(0, n, demod.elem_count())?.reshape(demod.shape())).transpose()?;
        Ok((gy, gd))
    }
}

/// The epilogue's backward: `(ys, demod, grad)` to the packed gradients of
/// `ys` and `demod` (see [`EpilogueOp::backward`]).
struct EpilogueBwd(EpilogueOp);

impl CustomOp3 for EpilogueBwd {
    fn name(&self) -> &'static str {
        "styled-conv-epilogue-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let _t = profile::scope(Family::Elementwise);
        let (_, c, h, w) = l1.shape().dims4()?;
        let n = l1.shape().elem_count() + l2.shape().elem_count();
        let name = self.name();
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(self.0.backward::<f32>(
                cpu::slice(s1, l1)?,
                cpu::slice(s2, l2)?,
                cpu::slice(s3, l3)?,
                (c, h * w),
            )?),
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(self.0.backward::<f64>(
                cpu::slice(s1, l1)?,
                cpu::slice(s2, l2)?,
                cpu::slice(s3, l3)?,
                (c, h * w),
            )?),
            (a, b, g) => bail!(
                "{name}: needs f32 or f64 operands of one dtype, got {:?}, {:?}, {:?}",
                a.dtype(),
                b.dtype(),
                g.dtype()
            ),
        };
        Ok((out, Shape::from(n)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let n = l1.shape().elem_count() + l2.shape().elem_count();
        let out = super::cuda::epilogue_backward((s1, l1), (s2, l2), (s3, l3), &self.0.cuda_args(l1)?)?;
        Ok((out, Shape::from(n)))
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::ops::testing::{assert_close, randn};

    /// `(B of xs, B, C, H, W)`: shared and per-sample inputs, odd and
    /// non-square planes, single pixels.
    const MODULATE_SHAPES: [(usize, usize, usize, usize, usize); 5] =
        [(1, 1, 2, 3, 4), (3, 3, 2, 5, 1), (1, 3, 4, 2, 3), (2, 2, 1, 1, 1), (1, 2, 3, 7, 5)];

    /// `d/d(args) sum(f(args) * r)`, for every argument.
    fn grads(args: &[Tensor], r: &Tensor, f: impl Fn(&[Tensor]) -> Result<Tensor>) -> Result<(Tensor, Vec<Tensor>)> {
        let vars = args.iter().map(Var::from_tensor).collect::<candle_core::Result<Vec<_>>>()?;
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let out = f(&ts)?;
        let g = (&out * r)?.sum_all()?.backward()?;
        let gs = ts.iter().map(|t| g.get(t).expect("every argument is on the loss path").clone()).collect();
        Ok((out, gs))
    }

    /// Forward and every gradient of `fast` against `stock`.
    fn check(
        args: &[Tensor],
        r: &Tensor,
        tol: f64,
        what: &str,
        fast: impl Fn(&[Tensor]) -> Result<Tensor>,
        stock: impl Fn(&[Tensor]) -> Result<Tensor>,
    ) -> Result<()> {
        let (out_fast, g_fast) = grads(args, r, fast)?;
        let (out_stock, g_stock) = grads(args, r, stock)?;
        assert_close(&out_fast, &out_stock, tol, &format!("{what}: forward"))?;
        for (i, (a, b)) in g_fast.iter().zip(&g_stock).enumerate() {
            assert_close(a, b, tol, &format!("{what}: gradient of argument {i}"))?;
        }
        Ok(())
    }

    #[test]
    fn modulate_matches_stock() -> Result<()> {
        for (i, &(bx, b, c, h, w)) in MODULATE_SHAPES.iter().enumerate() {
            for (dtype, tol) in [(DType::F32, 1e-6), (DType::F64, 1e-14)] {
                let seed = 10 * i as u64;
                let args = [randn(seed, (bx, c, h, w), dtype)?, randn(seed + 1, (b, c), dtype)?];
                let r = randn(seed + 2, (b, c, h, w), dtype)?;
                let what = format!("modulate {:?} {dtype:?}", (bx, b, c, h, w));
                check(&args, &r, tol, &what, |a| modulate(&a[0], &a[1]), |a| modulate_stock(&a[0], &a[1]))?;
            }
        }
        Ok(())
    }

    /// A constant input (the generator's `input.input`): only the style
    /// gets a gradient.
    #[test]
    fn modulate_of_a_constant_input() -> Result<()> {
        let xs = randn(1, (1, 3, 4, 4), DType::F64)?;
        let s = Var::from_tensor(&randn(2, (2, 3), DType::F64)?)?;
        let r = randn(3, (2, 3, 4, 4), DType::F64)?;
        let fast = (modulate(&xs, s.as_tensor())? * &r)?.sum_all()?.backward()?;
        let stock = (modulate_stock(&xs, s.as_tensor())? * &r)?.sum_all()?.backward()?;
        assert!(fast.get(&xs).is_none());
        let grad = |g: &candle_core::backprop::GradStore| g.get(s.as_tensor()).expect("s is on the loss path").clone();
        assert_close(&grad(&fast), &grad(&stock), 1e-14, "style gradient")
    }

    /// `(B, C, H, W, noise batch)`; 0: no noise.
    const EPILOGUE_SHAPES: [(usize, usize, usize, usize, usize); 5] =
        [(1, 2, 3, 4, 1), (3, 2, 5, 1, 3), (3, 4, 2, 3, 1), (2, 3, 4, 4, 0), (1, 1, 1, 1, 1)];

    fn epilogue(seed: u64, c: usize, dtype: DType) -> Result<Epilogue> {
        let bias = randn(seed, c, dtype)?;
        let noise_weight = randn(seed + 1, 1, dtype)?;
        Epilogue::new(bias, noise_weight)
    }

    #[test]
    fn epilogue_matches_stock() -> Result<()> {
        for (i, &(b, c, h, w, nb)) in EPILOGUE_SHAPES.iter().enumerate() {
            for (dtype, tol, clamp) in [
                (DType::F32, 1e-6, None),
                (DType::F64, 1e-14, None),
                (DType::F32, 1e-6, Some(0.6)),
                (DType::F64, 1e-14, Some(0.6)),
            ] {
                let seed = 10 * i as u64;
                let epi = epilogue(seed, c, dtype)?.with_clamp(clamp);
                let noise = if nb > 0 { Some(randn(seed + 2, (nb, 1, h, w), dtype)?) } else { None };
                let args = [randn(seed + 3, (b, c, h, w), dtype)?, (randn(seed + 4, (b, c), dtype)?.abs()? + 0.5)?];
                let r = randn(seed + 5, (b, c, h, w), dtype)?;
                let what = format!("epilogue {:?} {dtype:?} clamp {clamp:?}", (b, c, h, w, nb));
                check(
                    &args,
                    &r,
                    tol,
                    &what,
                    |a| epi.forward(&a[0], &a[1], noise.as_ref()),
                    |a| epi.forward_stock(&a[0], &a[1], noise.as_ref()),
                )?;
            }
        }
        Ok(())
    }

    /// Central differences in f64 on every coordinate of every argument.
    fn finite_differences(args: &[Tensor], r: &Tensor, f: impl Fn(&[Tensor]) -> Result<Tensor>) -> Result<()> {
        let (_, analytic) = grads(args, r, &f)?;
        let loss = |args: &[Tensor]| -> Result<f64> { Ok((f(args)? * r)?.sum_all()?.to_scalar::<f64>()?) };
        let eps = 1e-6;
        for (a, grad) in analytic.iter().enumerate() {
            let base = args[a].flatten_all()?.to_vec1::<f64>()?;
            let grad = grad.flatten_all()?.to_vec1::<f64>()?;
            for i in 0..base.len() {
                let at = |delta: f64| -> Result<f64> {
                    let mut v = base.clone();
                    v[i] += delta;
                    let mut moved = args.to_vec();
                    moved[a] = Tensor::from_vec(v, args[a].shape(), &Device::Cpu)?;
                    loss(&moved)
                };
                let numeric = (at(eps)? - at(-eps)?) / (2.0 * eps);
                let err = (numeric - grad[i]).abs();
                assert!(
                    err < 1e-7 * (1.0 + numeric.abs()),
                    "argument {a}, coordinate {i}: numeric {numeric}, analytic {}",
                    grad[i]
                );
            }
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let f64_ = DType::F64;
        let args = [randn(1, (1, 2, 3, 2), f64_)?, randn(2, (2, 2), f64_)?];
        finite_differences(&args, &randn(3, (2, 2, 3, 2), f64_)?, |a| modulate(&a[0], &a[1]))?;
        let epi = epilogue(4, 3, f64_)?;
        let noise = randn(5, (1, 1, 2, 3), f64_)?;
        let args = [randn(6, (2, 3, 2, 3), f64_)?, (randn(7, (2, 3), f64_)?.abs()? + 0.5)?];
        finite_differences(&args, &randn(8, (2, 3, 2, 3), f64_)?, |a| epi.forward(&a[0], &a[1], Some(&noise)))?;
        // With a clamp that cuts some outputs (none of them near the bound).
        let clamped = epi.with_clamp(Some(0.8));
        let out = clamped.forward(&args[0], &args[1], Some(&noise))?.flatten_all()?.to_vec1::<f64>()?;
        assert!(out.iter().any(|v| v.abs() == 0.8), "the clamp cuts: {out:?}");
        assert!(out.iter().all(|v| (v.abs() - 0.8).abs() > 1e-4 || v.abs() == 0.8));
        finite_differences(&args, &randn(8, (2, 3, 2, 3), f64_)?, |a| clamped.forward(&a[0], &a[1], Some(&noise)))
    }

    #[test]
    fn shapes_are_checked() -> Result<()> {
        let dt = DType::F32;
        assert!(modulate(&randn(0, (2, 3, 4, 4), dt)?, &randn(1, (3, 3), dt)?).is_err());
        assert!(modulate(&randn(0, (1, 2, 4, 4), dt)?, &randn(1, (3, 3), dt)?).is_err());
        let epi = epilogue(0, 3, dt)?;
        let ys = randn(1, (2, 3, 4, 4), dt)?;
        let demod = randn(2, (2, 3), dt)?;
        assert!(epi.forward(&ys, &randn(3, (2, 2), dt)?, None).is_err());
        assert!(epi.forward(&ys, &demod, Some(&randn(4, (1, 1, 4, 3), dt)?)).is_err());
        assert!(epi.forward(&randn(1, (2, 2, 4, 4), dt)?, &randn(2, (2, 2), dt)?, None).is_err());
        Ok(())
    }
}

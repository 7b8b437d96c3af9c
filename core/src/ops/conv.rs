//! 2-D convolutions with a constant kernel: [`Conv2d`] (any kernel, stride
//! and padding) and the true stride-`s` transposed convolution
//! [`ConvTranspose2d`]. Each computes only its input gradient.
//!
//! On the CPU (f32, f64) both run as two Candle custom ops that are each
//! other's adjoint: `ConvForward` (im2col + `gemm`) and
//! `ConvBackwardData` (`gemm` with the transposed kernel, then col2im).
//! The backward of one is the forward of the other, so gradients of
//! gradients stay correct. A transposed convolution is the backward-data op
//! of the convolution it transposes, so it needs no zero insertion.
//!
//! On a CUDA device (f32) the same two ops run through cuDNN (forward and
//! backward-data), once the runtime probe ([`super::probe`]) has found them
//! equal to the stock composition there.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor, WithDType};

use super::cpu::{self, ConvGeom};
use super::probe;
use super::profile::{self, Family};
use crate::{Error, Result};

/// A constant kernel `[c_out, c_in, kh, kw]` (contiguous, so it is already
/// the `[c_out, c_in·kh·kw]` matrix `gemm` reads), with its stride, padding
/// and an optional bias `[c_out]`.
#[derive(Debug)]
struct ConvKernel {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
    family: Family,
}

impl ConvKernel {
    /// The geometry of a convolution of a `c_in x h x w` image, if the
    /// channels match and the kernel fits.
    fn geom(&self, c_in: usize, h: usize, w: usize) -> Option<ConvGeom> {
        let (c_out, wc_in, kh, kw) = self.weight.dims4().ok()?;
        let g = ConvGeom { c_in, c_out, kh, kw, stride: self.stride, padding: self.padding, h, w };
        (c_in == wc_in && g.out_hw().is_some()).then_some(g)
    }
}

/// The convolution `[B, c_in, h, w] → [B, c_out, oh, ow]` (plus the bias when
/// `with_bias`); backward: [`ConvBackwardData`].
struct ConvForward {
    kernel: Arc<ConvKernel>,
    with_bias: bool,
}

impl ConvForward {
    /// The geometry of the input under `l`, and the output shape.
    fn geometry(&self, l: &Layout) -> candle_core::Result<(ConvGeom, Shape)> {
        let (b, c, h, w) = l.shape().dims4()?;
        let Some(g) = self.kernel.geom(c, h, w) else {
            candle_core::bail!("lsd-conv2d: input {:?} does not fit kernel {:?}", l.dims(), self.kernel.weight.dims())
        };
        let (oh, ow) = g.out_hw().expect("checked by geom");
        Ok((g, Shape::from((b, g.c_out, oh, ow))))
    }

    fn run<T: WithDType>(&self, g: &ConvGeom, s: &CpuStorage, l: &Layout) -> candle_core::Result<CpuStorage> {
        let x = cpu::slice::<T>(s, l)?;
        let bias = self.kernel.bias.as_ref().filter(|_| self.with_bias);
        let y = cpu::with_data(&self.kernel.weight, |w| cpu::with_opt_data(bias, |b| cpu::conv2d(g, x, w, b)))??;
        Ok(T::to_cpu_storage_owned(y))
    }
}

impl CustomOp1 for ConvForward {
    fn name(&self) -> &'static str {
        "lsd-conv2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let _t = profile::scope(self.kernel.family);
        let (g, shape) = self.geometry(l)?;
        let y = cpu::dispatch(s, self.name(), || self.run::<f32>(&g, s, l), || self.run::<f64>(&g, s, l))?;
        Ok((y, shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::{self, cudnn};
        let (g, shape) = self.geometry(l)?;
        let (b, c_out, oh, ow) = shape.dims4()?;
        let mut y = cudnn::convolve(cudnn::Direction::Forward, &g, b, (s, l), &self.kernel.weight)?;
        if let Some(bias) = self.kernel.bias.as_ref().filter(|_| self.with_bias) {
            cuda::add_channel_bias(&s.device, &mut y, bias, c_out, oh * ow)?;
        }
        Ok((candle_core::CudaStorage::wrap_cuda_slice(y, s.device.clone()), shape))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (_, _, h, w) = arg.dims4()?;
        let op = ConvBackwardData { kernel: self.kernel.clone(), h, w };
        Ok(Some(grad.contiguous()?.apply_op1(op)?))
    }
}

/// The adjoint of [`ConvForward`] in its input: `[B, c_out, oh, ow] →
/// [B, c_in, h, w]` for the input size `h x w` it was built for (a strided
/// convolution maps several input sizes to one output size). Backward:
/// [`ConvForward`] without bias.
struct ConvBackwardData {
    kernel: Arc<ConvKernel>,
    h: usize,
    w: usize,
}

impl ConvBackwardData {
    /// The geometry of the convolution whose output gradient `l` holds, and
    /// the input gradient's shape.
    fn geometry(&self, l: &Layout) -> candle_core::Result<(ConvGeom, Shape)> {
        let (b, c_out, oh, ow) = l.shape().dims4()?;
        let (wc_out, c_in, _, _) = self.kernel.weight.dims4()?;
        let g = self.kernel.geom(c_in, self.h, self.w).filter(|g| g.out_hw() == Some((oh, ow)));
        let Some(g) = g.filter(|_| c_out == wc_out) else {
            candle_core::bail!(
                "lsd-conv2d-backward-data: gradient {:?} is not the output of kernel {:?} on a {}x{} input",
                l.dims(),
                self.kernel.weight.dims(),
                self.h,
                self.w
            )
        };
        Ok((g, Shape::from((b, c_in, self.h, self.w))))
    }

    fn run<T: WithDType>(&self, g: &ConvGeom, s: &CpuStorage, l: &Layout) -> candle_core::Result<CpuStorage> {
        let dy = cpu::slice::<T>(s, l)?;
        let dx = cpu::with_data(&self.kernel.weight, |w| cpu::conv2d_backward_data(g, dy, w))?;
        Ok(T::to_cpu_storage_owned(dx))
    }
}

impl CustomOp1 for ConvBackwardData {
    fn name(&self) -> &'static str {
        "lsd-conv2d-backward-data"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let _t = profile::scope(self.kernel.family);
        let (g, shape) = self.geometry(l)?;
        let dx = cpu::dispatch(s, self.name(), || self.run::<f32>(&g, s, l), || self.run::<f64>(&g, s, l))?;
        Ok((dx, shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::cudnn;
        let (g, shape) = self.geometry(l)?;
        let dx = cudnn::convolve(cudnn::Direction::BackwardData, &g, shape.dims4()?.0, (s, l), &self.kernel.weight)?;
        Ok((candle_core::CudaStorage::wrap_cuda_slice(dx, s.device.clone()), shape))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let op = ConvForward { kernel: self.kernel.clone(), with_bias: false };
        Ok(Some(grad.contiguous()?.apply_op1(op)?))
    }
}

/// `conv2d(xs, weight, bias, stride, padding)` with a frozen `weight`
/// `[out, in, kh, kw]` and optional `bias` `[out]`; equal stride and
/// padding on both axes, one group, no dilation.
///
/// The backward pass computes the input gradient only: the weight and bias
/// are constants, even if they were loaded as `Var`s.
#[derive(Debug, Clone)]
pub struct Conv2d {
    kernel: Arc<ConvKernel>,
}

impl Conv2d {
    /// A convolution with the given constant `weight` `[out, in, kh, kw]`.
    pub fn new(weight: Tensor, bias: Option<Tensor>, stride: usize, padding: usize) -> Result<Self> {
        let (c_out, ..) = weight.dims4()?;
        let weight = weight.contiguous()?;
        let bias = match bias {
            Some(b) if b.elem_count() != c_out => {
                return Err(Error::BadShape {
                    name: "conv2d bias".into(),
                    expected: format!("[{c_out}] (one per output channel)"),
                    got: b.dims().to_vec(),
                })
            }
            Some(b) => Some(b.flatten_all()?.contiguous()?),
            None => None,
        };
        let kernel = ConvKernel { weight, bias, stride, padding, family: Family::Conv };
        Ok(Self { kernel: Arc::new(kernel) })
    }

    /// The kernel, `[out, in, kh, kw]`.
    pub fn weight(&self) -> &Tensor {
        &self.kernel.weight
    }

    /// `xs` `[B, in, H, W]` to `[B, out, (H + 2p - kh) / s + 1, …]`.
    ///
    /// On the CPU in f32 and f64 this is im2col + `gemm`; on a CUDA device
    /// in f32, cuDNN (once probed); elsewhere, or for an input the kernel
    /// does not fit, [`Conv2d::forward_stock`].
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let k = &self.kernel;
        let fits = xs.dims4().is_ok_and(|(_, c, h, w)| k.geom(c, h, w).is_some());
        let weights = [Some(&k.weight), k.bias.as_ref()];
        let fast = fits && (cpu::applies(xs, &weights) || (probe::cuda_applies(xs, &weights) && probe_conv2d(xs)));
        if !fast {
            let _t = profile::scope(Family::Conv);
            return self.forward_stock(xs);
        }
        self.forward_fast(xs)
    }

    /// The custom op, whatever the device.
    fn forward_fast(&self, xs: &Tensor) -> Result<Tensor> {
        let op = ConvForward { kernel: self.kernel.clone(), with_bias: true };
        Ok(xs.contiguous()?.apply_op1(op)?)
    }

    /// The stock-Candle composition: Candle's `conv2d` (weight gradient and
    /// all). The reference the fast kernel is tested against.
    ///
    /// Candle's `Conv2D` backward derives the transposed convolution's
    /// `output_padding` from the height alone and applies it to the width
    /// too; a strided convolution whose height and width leave different
    /// remainders (e.g. 65 x 64 under a 7x7/2 stem) would get a wrongly
    /// sized input gradient. In that case the input is padded explicitly and
    /// cropped to the part the windows read, so that both remainders are
    /// zero. The forward values are identical either way.
    pub fn forward_stock(&self, xs: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = xs.dims4()?;
        let weight = &self.kernel.weight;
        let (s, p) = (self.kernel.stride, self.kernel.padding);
        let (kh, kw) = (weight.dim(2)?, weight.dim(3)?);
        let rem = |n: usize, k: usize| (n + 2 * p - k) % s;
        let ys = if s > 1 && (rem(h, kh) != 0 || rem(w, kw) != 0) {
            let used = |n: usize, k: usize| ((n + 2 * p - k) / s) * s + k;
            let xs = xs.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p)?.narrow(2, 0, used(h, kh))?.narrow(
                3,
                0,
                used(w, kw),
            )?;
            xs.conv2d(weight, 0, s, 1, 1)?
        } else {
            xs.conv2d(weight, p, s, 1, 1)?
        };
        self.add_bias(ys)
    }

    fn add_bias(&self, ys: Tensor) -> Result<Tensor> {
        match &self.kernel.bias {
            Some(b) => Ok(ys.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?)?),
            None => Ok(ys),
        }
    }
}

/// `conv_transpose2d(xs, weight, stride, padding = 0)` with a frozen
/// `weight` in PyTorch's transposed layout `[in, out, k, k]`: every input
/// pixel scatters `weight[i, :, :, :]` into the output at `stride · (y, x)`.
/// Output `[B, out, (H - 1)·s + k, (W - 1)·s + k]`.
///
/// This is the input gradient of the stride-`s` convolution whose kernel is
/// the same tensor read as `[out_conv = in, in_conv = out, k, k]`, so on the
/// CPU it runs that op directly: no zero insertion, a quarter of the
/// multiply-adds at stride 2. Its backward is that strided convolution.
#[derive(Debug, Clone)]
pub struct ConvTranspose2d {
    kernel: Arc<ConvKernel>,
}

impl ConvTranspose2d {
    /// A transposed convolution with the constant `weight` `[in, out, k, k]`.
    pub fn new(weight: Tensor, stride: usize) -> Result<Self> {
        weight.dims4()?;
        let weight = weight.contiguous()?;
        let kernel = ConvKernel { weight, bias: None, stride, padding: 0, family: Family::ConvTranspose };
        Ok(Self { kernel: Arc::new(kernel) })
    }

    /// `xs` `[B, in, H, W]` to `[B, out, (H - 1)·s + k, (W - 1)·s + k]`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let k = &self.kernel;
        let (c_in, _, kh, kw) = k.weight.dims4()?;
        let out_hw = match xs.dims4() {
            Ok((_, c, h, w)) if c == c_in && h > 0 && w > 0 && k.stride > 0 => {
                Some(((h - 1) * k.stride + kh, (w - 1) * k.stride + kw))
            }
            _ => None,
        };
        let weights = [Some(&k.weight)];
        let fast = |_: &_| cpu::applies(xs, &weights) || (probe::cuda_applies(xs, &weights) && probe_transposed(xs));
        let Some(hw) = out_hw.filter(fast) else {
            let _t = profile::scope(Family::ConvTranspose);
            return self.forward_stock(xs);
        };
        self.forward_fast(xs, hw)
    }

    /// The custom op for an output of side `hw`, whatever the device.
    fn forward_fast(&self, xs: &Tensor, (h, w): (usize, usize)) -> Result<Tensor> {
        let op = ConvBackwardData { kernel: self.kernel.clone(), h, w };
        Ok(xs.contiguous()?.apply_op1(op)?)
    }

    /// The stock-Candle composition: zero-insertion to `(H - 1)·s + 1`,
    /// then a correlation with the flipped, transposed kernel padded by
    /// `k - 1` (the reference the fast kernel is tested against).
    pub fn forward_stock(&self, xs: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = xs.dims4()?;
        let (s, k) = (self.kernel.stride, self.kernel.weight.dim(2)?);
        let up = zero_insert(&zero_insert(xs, 2, s)?, 3, s)?;
        let up = up.narrow(2, 0, (h - 1) * s + 1)?.narrow(3, 0, (w - 1) * s + 1)?;
        // Candle's `flip` (an `index_select`) needs a contiguous input.
        let kernel = self.kernel.weight.transpose(0, 1)?.contiguous()?.flip(&[2, 3])?;
        Ok(up.conv2d(&kernel, k - 1, 1, 1, 1)?)
    }
}

/// Probes the convolution ops on `xs`'s device (see [`super::probe`]):
/// 3x3 kernels at stride 1 and 2 with a bias, forward and input gradient
/// (so both custom ops run).
fn probe_conv2d(xs: &Tensor) -> bool {
    let run = |fast: bool| {
        let dev = xs.device();
        let u = |seed: u64, shape: &[usize]| probe::uniform(seed, shape, DType::F32, dev);
        let mut out = Vec::new();
        for (s, p) in [(1, 1), (2, 1)] {
            let conv = Conv2d::new(u(1, &[8, 4, 3, 3])?, Some(u(2, &[8])?), s, p)?;
            let (oh, ow) = ((9 + 2 * p - 3) / s + 1, (8 + 2 * p - 3) / s + 1);
            let (x, r) = (u(3, &[2, 4, 9, 8])?, u(4, &[2, 8, oh, ow])?);
            out.extend(probe::value_and_grads(&[x], &r, |a| {
                if fast {
                    conv.forward_fast(&a[0])
                } else {
                    conv.forward_stock(&a[0])
                }
            })?);
        }
        Ok(out)
    };
    probe::fast_kernel_passes("conv2d", xs, probe::product_tolerance(), || run(true), || run(false))
}

/// Probes the stride-2 transposed convolution on `xs`'s device.
fn probe_transposed(xs: &Tensor) -> bool {
    let run = |fast: bool| {
        let dev: &Device = xs.device();
        let u = |seed: u64, shape: &[usize]| probe::uniform(seed, shape, DType::F32, dev);
        let conv = ConvTranspose2d::new(u(5, &[4, 6, 3, 3])?, 2)?;
        let (x, r) = (u(6, &[2, 4, 5, 6])?, u(7, &[2, 6, 11, 13])?);
        probe::value_and_grads(&[x], &r, |a| {
            if fast {
                conv.forward_fast(&a[0], (11, 13))
            } else {
                conv.forward_stock(&a[0])
            }
        })
    };
    probe::fast_kernel_passes("conv-transpose2d", xs, probe::product_tolerance(), || run(true), || run(false))
}

/// The statistics and affine parameters of an eval-mode BatchNorm over `c`
/// channels: `y = γ (x − mean) / √(var + ε) + β`.
#[derive(Debug, Clone)]
pub struct BatchNormParams {
    /// `γ` (`weight`), `[c]`.
    pub gamma: Tensor,
    /// `β` (`bias`), `[c]`.
    pub beta: Tensor,
    /// `running_mean`, `[c]`.
    pub mean: Tensor,
    /// `running_var`, `[c]`.
    pub var: Tensor,
    /// `ε`.
    pub eps: f64,
}

impl BatchNormParams {
    /// Reads `weight`, `bias`, `running_mean` and `running_var` of a
    /// PyTorch `BatchNorm{1,2}d(c)` (`num_batches_tracked` is training
    /// bookkeeping and unused).
    pub fn load(c: usize, eps: f64, vb: candle_nn::VarBuilder) -> Result<Self> {
        Ok(Self {
            gamma: vb.get(c, "weight")?,
            beta: vb.get(c, "bias")?,
            mean: vb.get(c, "running_mean")?,
            var: vb.get(c, "running_var")?,
            eps,
        })
    }

    /// Folds this BatchNorm into the layer before it, whose output channel
    /// `o` is computed from `weight[o, …]` plus `bias[o]`: returns the
    /// `(weight, bias)` of the one layer computing `BN(layer(x))`, every
    /// output channel's weights scaled by `γ / √(var + ε)` and the bias
    /// `β + (bias − mean) · scale`. Folded in f64 and cast back to the
    /// weight's dtype, so the only extra rounding is that cast.
    pub fn fold_into(&self, weight: &Tensor, bias: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        let f64_ = |t: &Tensor| t.to_dtype(DType::F64);
        let (c, dtype) = (weight.dim(0)?, weight.dtype());
        let scale = (f64_(&self.gamma)? / (f64_(&self.var)? + self.eps)?.sqrt()?)?;
        let centred = match bias {
            Some(b) => (f64_(b)? - f64_(&self.mean)?)?,
            None => f64_(&self.mean)?.neg()?,
        };
        let bias = (f64_(&self.beta)? + (centred * &scale)?)?;
        let mut scale_shape = vec![1; weight.rank()];
        scale_shape[0] = c;
        let weight = f64_(weight)?.broadcast_mul(&scale.reshape(scale_shape)?)?;
        Ok((weight.to_dtype(dtype)?, bias.to_dtype(dtype)?))
    }
}

/// Inserts `up - 1` zeros after every sample along `dim` (a size-`n` axis
/// becomes `up * n`), as `upfirdn2d`'s up-sampling step does.
pub fn zero_insert(xs: &Tensor, dim: usize, up: usize) -> Result<Tensor> {
    if up == 1 {
        return Ok(xs.clone());
    }
    let mut dims = xs.dims().to_vec();
    let xs = xs.unsqueeze(dim + 1)?;
    let mut zero_dims = xs.dims().to_vec();
    zero_dims[dim + 1] = up - 1;
    let zeros = Tensor::zeros(zero_dims, xs.dtype(), xs.device())?;
    dims[dim] *= up;
    Ok(Tensor::cat(&[&xs, &zeros], dim + 1)?.reshape(dims)?)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Var};

    use super::*;
    use crate::ops::testing::{check_finite_differences, rel_diff, value_and_grad, Draw};

    /// `(batch, c_in, c_out, h, w, kh, kw, stride, padding, bias)`.
    type Case = (usize, usize, usize, usize, usize, usize, usize, usize, usize, bool);

    fn conv_cases() -> Vec<Case> {
        let mut cases = vec![
            (1, 3, 4, 7, 7, 3, 3, 1, 1, true),
            (2, 3, 5, 9, 6, 3, 3, 2, 1, false),
            (2, 4, 3, 8, 11, 3, 3, 2, 0, true),
            // The 7x7/2 stem on a size whose row and column remainders differ.
            (1, 2, 3, 13, 12, 7, 7, 2, 3, false),
            (3, 5, 2, 6, 5, 1, 1, 1, 0, true),
            (2, 4, 6, 9, 7, 1, 1, 2, 0, false),
            (1, 3, 4, 8, 12, 4, 4, 4, 0, true),
            (1, 2, 3, 5, 6, 2, 3, 1, 2, true),
            (2, 3, 2, 6, 6, 3, 3, 3, 2, false),
            // Several bands of output rows (the last one shorter), forward and
            // backward (where neighbouring bands overlap on the input).
            (1, 64, 4, 64, 61, 3, 3, 1, 1, true),
            (1, 128, 3, 125, 70, 3, 3, 2, 1, false),
            // Winograd F(2x2, 3x3): odd and even sides, non-square, batch > 1,
            // and several bands of tile rows.
            (2, 16, 24, 9, 13, 3, 3, 1, 1, true),
            (1, 20, 16, 8, 8, 3, 3, 1, 1, false),
            (1, 128, 16, 40, 130, 3, 3, 1, 1, true),
        ];
        for p in 0..=3 {
            for s in 1..=2 {
                cases.push((2, 2, 3, 7, 6, 3, 3, s, p, p % 2 == 0));
            }
        }
        cases
    }

    fn build(d: &mut Draw, case: Case, dtype: DType) -> Result<(Conv2d, Tensor, Tensor)> {
        let (b, ci, co, h, w, kh, kw, s, p, bias) = case;
        let weight = d.tensor(&[co, ci, kh, kw], dtype)?;
        let bias = if bias { Some(d.tensor(&[co], dtype)?) } else { None };
        let conv = Conv2d::new(weight, bias, s, p)?;
        let x = d.tensor(&[b, ci, h, w], dtype)?;
        let (oh, ow) = ((h + 2 * p - kh) / s + 1, (w + 2 * p - kw) / s + 1);
        let r = d.tensor(&[b, co, oh, ow], dtype)?;
        Ok((conv, x, r))
    }

    #[test]
    fn conv_matches_stock_forward_and_input_gradient() -> Result<()> {
        let mut d = Draw::new(1);
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-12)] {
            for case in conv_cases() {
                let (conv, x, r) = build(&mut d, case, dtype)?;
                let (y, g) = value_and_grad(&x, &r, |x| conv.forward(x))?;
                let (y_ref, g_ref) = value_and_grad(&x, &r, |x| conv.forward_stock(x))?;
                let (ey, eg) = (rel_diff(&y, &y_ref)?, rel_diff(&g, &g_ref)?);
                assert!(ey <= tol && eg <= tol, "{case:?} {dtype:?}: forward {ey:e}, gradient {eg:e}");
            }
        }
        Ok(())
    }

    #[test]
    fn conv_gradient_matches_finite_differences() -> Result<()> {
        let mut d = Draw::new(2);
        for case in [
            (2, 2, 3, 5, 4, 3, 3, 1, 1, true),
            (1, 2, 2, 7, 6, 3, 3, 2, 1, false),
            (1, 3, 2, 6, 5, 3, 2, 2, 0, true),
            (1, 16, 16, 9, 8, 3, 3, 1, 1, true),
        ] {
            let (conv, x, r) = build(&mut d, case, DType::F64)?;
            check_finite_differences(&x, &r, |x| conv.forward(x))?;
        }
        Ok(())
    }

    /// The backward-data op's own gradient is the convolution without bias
    /// (they are adjoints), so a gradient of a gradient is right too: with
    /// `r` as the output gradient and `x` as the direction, `∇ᵣ⟨bwd(r), x⟩`
    /// is `conv(x)`.
    #[test]
    fn conv_backward_data_is_differentiable() -> Result<()> {
        let mut d = Draw::new(3);
        for case in [(2, 3, 4, 9, 8, 3, 3, 2, 1, true), (1, 2, 3, 7, 6, 3, 2, 1, 2, false)] {
            let (conv, x, r) = build(&mut d, case, DType::F64)?;
            let (_, _, h, w) = x.dims4()?;
            let bwd = |g: &Tensor| Ok(g.apply_op1(ConvBackwardData { kernel: conv.kernel.clone(), h, w })?);
            let (dx, gr) = value_and_grad(&r, &x, bwd)?;
            let (_, dx_ref) = value_and_grad(&x, &r, |x| conv.forward_stock(x))?;
            let (s, p) = (case.7, case.8);
            let gr_ref = Conv2d::new(conv.weight().clone(), None, s, p)?.forward_stock(&x)?;
            assert!(rel_diff(&dx, &dx_ref)? <= 1e-12 && rel_diff(&gr, &gr_ref)? <= 1e-12, "{case:?}");
            check_finite_differences(&r, &x, bwd)?;
        }
        Ok(())
    }

    #[test]
    fn conv_computes_no_weight_gradient() -> Result<()> {
        let mut d = Draw::new(4);
        let w = Var::from_tensor(&d.tensor(&[3, 2, 3, 3], DType::F32)?)?;
        let conv = Conv2d::new(w.as_tensor().clone(), None, 1, 1)?;
        let x = Var::from_tensor(&d.tensor(&[1, 2, 5, 5], DType::F32)?)?;
        let grads = conv.forward(x.as_tensor())?.sum_all()?.backward()?;
        assert!(grads.get(x.as_tensor()).is_some());
        assert!(grads.get(w.as_tensor()).is_none(), "the kernel is a constant");
        Ok(())
    }

    #[test]
    fn conv_takes_strided_inputs_and_rejects_bad_shapes() -> Result<()> {
        let mut d = Draw::new(5);
        let (conv, x, _) = build(&mut d, (2, 3, 4, 6, 6, 3, 3, 1, 1, true), DType::F32)?;
        let xt = x.transpose(2, 3)?;
        assert!(rel_diff(&conv.forward(&xt)?, &conv.forward_stock(&xt.contiguous()?)?)? <= 1e-5);
        assert!(conv.forward(&d.tensor(&[1, 2, 6, 6], DType::F32)?).is_err(), "wrong channel count");
        assert!(conv.forward(&d.tensor(&[1, 3, 1, 1], DType::F32)?).is_ok(), "padding makes room");
        assert!(Conv2d::new(d.tensor(&[4, 3, 3, 3], DType::F32)?, Some(d.tensor(&[3], DType::F32)?), 1, 1).is_err());
        Ok(())
    }

    #[test]
    fn batch_norm_folds_into_the_convolution_before_it() -> Result<()> {
        let mut d = Draw::new(8);
        let c = 4;
        let mut vec = |shape: &[usize]| d.tensor(shape, DType::F64);
        let bn = BatchNormParams {
            gamma: vec(&[c])?,
            beta: vec(&[c])?,
            mean: vec(&[c])?,
            var: (vec(&[c])?.abs()? + 0.5)?,
            eps: 1e-5,
        };
        let (w, b, x) = (vec(&[c, 3, 3, 3])?, vec(&[c])?, vec(&[2, 3, 6, 5])?);
        let per_channel = |t: &Tensor| t.reshape((1, c, 1, 1));
        for bias in [None, Some(&b)] {
            let (wf, bf) = bn.fold_into(&w, bias)?;
            let folded = Conv2d::new(wf, Some(bf), 2, 1)?.forward(&x)?;
            let z = Conv2d::new(w.clone(), bias.cloned(), 2, 1)?.forward(&x)?;
            let expected = z
                .broadcast_sub(&per_channel(&bn.mean)?)?
                .broadcast_div(&per_channel(&(&bn.var + bn.eps)?.sqrt()?)?)?
                .broadcast_mul(&per_channel(&bn.gamma)?)?
                .broadcast_add(&per_channel(&bn.beta)?)?;
            assert!(rel_diff(&folded, &expected)? <= 1e-12);
        }
        Ok(())
    }

    /// `(batch, in, out, h, w, k, stride)`.
    type TCase = (usize, usize, usize, usize, usize, usize, usize);

    fn build_t(
        d: &mut Draw,
        (b, ci, co, h, w, k, s): TCase,
        dtype: DType,
    ) -> Result<(ConvTranspose2d, Tensor, Tensor)> {
        let conv = ConvTranspose2d::new(d.tensor(&[ci, co, k, k], dtype)?, s)?;
        let x = d.tensor(&[b, ci, h, w], dtype)?;
        let r = d.tensor(&[b, co, (h - 1) * s + k, (w - 1) * s + k], dtype)?;
        Ok((conv, x, r))
    }

    #[test]
    fn conv_transpose_matches_stock_forward_and_input_gradient() -> Result<()> {
        let mut d = Draw::new(6);
        let cases = [
            (1, 3, 4, 5, 5, 3, 2),
            (2, 4, 3, 4, 7, 3, 2),
            (2, 3, 2, 3, 6, 4, 2),
            (1, 2, 3, 5, 4, 3, 1),
            (2, 2, 3, 4, 3, 3, 3),
            // Several bands.
            (1, 4, 128, 50, 40, 3, 2),
        ];
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-12)] {
            for case in cases {
                let (conv, x, r) = build_t(&mut d, case, dtype)?;
                let (y, g) = value_and_grad(&x, &r, |x| conv.forward(x))?;
                let (y_ref, g_ref) = value_and_grad(&x, &r, |x| conv.forward_stock(x))?;
                let (ey, eg) = (rel_diff(&y, &y_ref)?, rel_diff(&g, &g_ref)?);
                assert!(ey <= tol && eg <= tol, "{case:?} {dtype:?}: forward {ey:e}, gradient {eg:e}");
            }
        }
        Ok(())
    }

    #[test]
    fn conv_transpose_gradient_matches_finite_differences() -> Result<()> {
        let mut d = Draw::new(7);
        for case in [(1, 2, 3, 4, 3, 3, 2), (2, 2, 2, 3, 3, 3, 1)] {
            let (conv, x, r) = build_t(&mut d, case, DType::F64)?;
            check_finite_differences(&x, &r, |x| conv.forward(x))?;
        }
        Ok(())
    }
}

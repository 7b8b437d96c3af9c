//! `upfirdn2d` with `down = 1`: a separable FIR filter applied per channel,
//! after zero-insertion up-sampling and zero padding, as StyleGAN2 uses it
//! for the blur after each transposed conv and for the RGB skip up-sampling.
//!
//! On the CPU (f32, f64) it is a direct separable filter, one pass per
//! axis, parallel over the `B·C` planes, that never materialises the
//! inserted zeros (polyphase: each output reads only the taps that meet a
//! real sample). Its backward is the adjoint filter (the transpose: the
//! reversed taps with the pads mirrored, then down-sampling by `up`), itself
//! the same op with `up` and `down` swapped, whose backward is the forward
//! again. On a CUDA device (f32, at most [`CUDA_MAX_TAPS`] taps) the same
//! op runs as a kernel of `cuda/kernels.cu`, once the runtime probe
//! ([`super::probe`]) has found it equal to the stock composition there.
//! Elsewhere it runs as the stock-Candle composition
//! ([`Fir::forward_stock`]), which is also the tests' oracle.
//!
//! Reference: rosinality `op/upfirdn2d.py` (`upfirdn2d_native`)
//! <https://github.com/rosinality/stylegan2-pytorch/blob/bef283a1c24087da704d16c30abc8e36e63efa0e/op/upfirdn2d.py>.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::conv::zero_insert;
use super::profile::{self, Family};
use super::{cpu, probe};
use crate::{Error, Result};

/// The most taps the CUDA kernel takes (`MAX_TAPS` in `cuda/kernels.cu`).
pub const CUDA_MAX_TAPS: usize = 8;

/// A separable FIR filter applied per channel, with rosinality's
/// `upfirdn2d(x, K, up, down=1, pad=(p0, p1))` semantics:
/// zero-insertion up-sampling, zero padding `p0` before and `p1` after on
/// both spatial axes, then a valid correlation with the flipped kernel.
///
/// `K = outer(k, k) / sum(outer(k, k)) * gain` factors into the 1-D kernel
/// `k / sum(k) * sqrt(gain)` per axis, so the 2-D filter runs as two 1-D
/// passes.
#[derive(Debug, Clone)]
pub struct Fir {
    /// The 1-D correlation taps: the kernel reversed (`upfirdn2d_native`
    /// flips it), divided by its sum, times `sqrt(gain)`.
    taps: Arc<[f64]>,
    /// `taps` as an f32 conv2d weight along the height, `[1, 1, n, 1]`, on
    /// the filter's device (the stock path off the CPU).
    k_h: Tensor,
    /// The same along the width, `[1, 1, 1, n]`.
    k_w: Tensor,
    up: usize,
    pad: (usize, usize),
}

impl Fir {
    /// The filter for `blur_kernel` (e.g. `[1, 3, 3, 1]`), with gain `gain`
    /// over the 2-D kernel (4 for both uses in the generator).
    pub fn new(blur_kernel: &[f64], gain: f64, up: usize, pad: (usize, usize), device: &Device) -> Result<Self> {
        if blur_kernel.is_empty() || up == 0 {
            return Err(Error::Config(format!(
                "upfirdn2d needs a non-empty kernel and up >= 1 (got {} taps, up {up})",
                blur_kernel.len()
            )));
        }
        let sum: f64 = blur_kernel.iter().sum();
        // Correlation with the flipped kernel, as upfirdn2d_native does.
        let taps: Arc<[f64]> = blur_kernel.iter().rev().map(|v| v / sum * gain.sqrt()).collect();
        let k: Vec<f32> = taps.iter().map(|&v| v as f32).collect();
        let n = k.len();
        let k_h = Tensor::from_vec(k.clone(), (1, 1, n, 1), device)?;
        let k_w = Tensor::from_vec(k, (1, 1, 1, n), device)?;
        Ok(Self { taps, k_h, k_w, up, pad })
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

    /// The output side for an input side `n`: `up·n + p0 + p1 - taps + 1`.
    pub fn out_size(&self, n: usize) -> Result<usize> {
        let (p0, p1) = self.pad;
        match (self.up * n + p0 + p1 + 1).checked_sub(self.taps.len()) {
            Some(m) if m > 0 => Ok(m),
            _ => Err(Error::BadShape {
                name: "upfirdn2d input".into(),
                expected: format!(
                    "sides with up·n + p0 + p1 >= {} (up {}, pad {:?})",
                    self.taps.len(),
                    self.up,
                    self.pad
                ),
                got: vec![n],
            }),
        }
    }

    /// Filters `xs` `[B, C, H, W]` channel by channel; output
    /// `[B, C, up·H + p0 + p1 - n + 1, …]`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let on_cpu = xs.device().is_cpu() && matches!(xs.dtype(), DType::F32 | DType::F64);
        let on_cuda = self.taps.len() <= CUDA_MAX_TAPS && probe::cuda_applies(xs, &[]) && self.probe(xs);
        if !(on_cpu || on_cuda) {
            return self.forward_stock(xs);
        }
        self.forward_fast(xs)
    }

    /// The custom op, whatever the device.
    fn forward_fast(&self, xs: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = xs.dims4()?;
        let op = FirOp {
            taps: self.taps.clone(),
            up: self.up,
            down: 1,
            pad0: self.pad.0 as isize,
            out: (self.out_size(h)?, self.out_size(w)?),
        };
        Ok(xs.contiguous()?.apply_op1(op)?)
    }

    /// Probes this filter's taps, up-sampling and padding on `xs`'s device,
    /// forward and input gradient (the op and its adjoint).
    fn probe(&self, xs: &Tensor) -> bool {
        let run = |fast: bool| {
            let u = |seed: u64, shape: &[usize]| probe::uniform(seed, shape, DType::F32, xs.device());
            let fir =
                Fir { k_h: self.k_h.to_device(xs.device())?, k_w: self.k_w.to_device(xs.device())?, ..self.clone() };
            let x = u(1, &[2, 3, 7, 6])?;
            let r = u(2, &[2, 3, fir.out_size(7)?, fir.out_size(6)?])?;
            probe::value_and_grads(&[x], &r, |a| if fast { fir.forward_fast(&a[0]) } else { fir.forward_stock(&a[0]) })
        };
        let op = match (self.up, self.pad) {
            (1, _) => "upfirdn2d-blur",
            _ => "upfirdn2d-up",
        };
        probe::fast_kernel_passes(op, xs, probe::ELEMENTWISE_TOLERANCE, || run(true), || run(false))
    }

    /// The stock-Candle composition: zero-insertion, padding, and two
    /// single-channel `conv2d`s with the channels folded into the batch.
    /// The reference the CPU kernel is tested against.
    pub fn forward_stock(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        let (ho, wo) = (self.out_size(h)?, self.out_size(w)?);
        let (k_h, k_w) = self.stock_taps(xs)?;
        // Channels into the batch: one single-channel conv for all of them.
        let xs = xs.reshape((b * c, 1, h, w))?;
        let xs = zero_insert(&xs, 2, self.up)?;
        let xs = zero_insert(&xs, 3, self.up)?;
        let (p0, p1) = self.pad;
        let ys = xs.pad_with_zeros(2, p0, p1)?.conv2d(&k_h, 0, 1, 1, 1)?;
        let ys = ys.pad_with_zeros(3, p0, p1)?.conv2d(&k_w, 0, 1, 1, 1)?;
        Ok(ys.reshape((b, c, ho, wo))?)
    }

    /// The taps as conv2d weights in `xs`'s dtype: exact (from the f64
    /// values) on the CPU, the stored f32 tensors converted elsewhere (no
    /// host-to-device copy per call).
    fn stock_taps(&self, xs: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = self.taps.len();
        if xs.device().is_cpu() {
            let t = Tensor::from_slice(&self.taps[..], n, &Device::Cpu)?.to_dtype(xs.dtype())?;
            Ok((t.reshape((1, 1, n, 1))?, t.reshape((1, 1, 1, n))?))
        } else {
            Ok((self.k_h.to_dtype(xs.dtype())?, self.k_w.to_dtype(xs.dtype())?))
        }
    }
}

/// The CPU op: per plane and per axis,
/// `out[m] = Σ_t taps[t] · z[down·m + t - pad0]`, where `z` is the input
/// with `up - 1` zeros inserted after every sample and zeros outside.
/// `out` is the output `(H, W)`; the zero boundary provides `pad1`.
#[derive(Debug, Clone)]
struct FirOp {
    taps: Arc<[f64]>,
    up: usize,
    down: usize,
    pad0: isize,
    out: (usize, usize),
}

impl FirOp {
    const NAME: &'static str = "upfirdn2d";

    /// The transpose of this op for an input of side `(H, W)`: correlate
    /// the (zero-inserted by `down`) gradient with the reversed taps,
    /// padded by `n - 1 - pad0` before, and keep every `up`-th sample.
    fn adjoint(&self, input_hw: (usize, usize)) -> Self {
        let n = self.taps.len() as isize;
        Self {
            taps: self.taps.iter().rev().copied().collect(),
            up: self.down,
            down: self.up,
            pad0: n - 1 - self.pad0,
            out: input_hw,
        }
    }

    fn run<T: WithDType>(&self, xs: &[T], planes: usize, (h, w): (usize, usize)) -> Vec<T> {
        let (ho, wo) = self.out;
        let mut ys = vec![T::from_f64(0.0); planes * ho * wo];
        if h * w == 0 || ho * wo == 0 {
            return ys;
        }
        let n = self.taps.len();
        let filter = Filter {
            rows: plan(n, self.up, self.down, self.pad0, h, ho),
            cols: plan(n, self.up, self.down, self.pad0, w, wo),
            taps: self.taps.iter().map(|&v| T::from_f64(v)).collect(),
            up: self.up,
            unit_pad0: (self.up == 1 && self.down == 1).then_some(self.pad0),
            width_first: self.up >= self.down,
        };
        ys.par_chunks_mut(ho * wo)
            .zip(xs.par_chunks(h * w))
            .for_each_init(Vec::new, |tmp, (y, x)| filter.plane(x, (h, w), y, (ho, wo), tmp));
        ys
    }
}

/// Which input samples and taps each output reads, per output index:
/// `(first input index, first tap, count)`; the input index steps by one
/// while the tap steps by `up`.
type Plan = Vec<(usize, usize, usize)>;

fn plan(taps: usize, up: usize, down: usize, pad0: isize, len_in: usize, len_out: usize) -> Plan {
    let (n, up) = (taps as isize, up as isize);
    (0..len_out)
        .map(|m| {
            // z index read by tap 0; tap t reads z[base + t], a real sample
            // when it is a multiple of `up` inside the input.
            let base = (down * m) as isize - pad0;
            let mut t = (-base).max(0);
            t += (-(base + t)).rem_euclid(up);
            let i0 = (base + t) / up;
            let count = if t < n { ((n - 1 - t) / up + 1).min(len_in as isize - i0) } else { 0 };
            if count > 0 {
                (i0 as usize, t as usize, count as usize)
            } else {
                (0, 0, 0)
            }
        })
        .collect()
}

/// One call's plans and taps, shared by every plane.
struct Filter<T> {
    rows: Plan,
    cols: Plan,
    taps: Vec<T>,
    up: usize,
    /// `pad0` when `up = down = 1`: the width pass then runs as one shifted
    /// row update per tap, which vectorises.
    unit_pad0: Option<isize>,
    /// Filter along the width first (it then runs on the fewer rows).
    width_first: bool,
}

impl<T: WithDType> Filter<T> {
    fn plane(&self, x: &[T], (h, w): (usize, usize), y: &mut [T], (ho, wo): (usize, usize), tmp: &mut Vec<T>) {
        let zero = T::from_f64(0.0);
        if self.width_first {
            tmp.resize(h * wo, zero);
            self.along_width(x, w, tmp, wo);
            self.along_height(tmp, wo, y);
        } else {
            tmp.resize(ho * w, zero);
            self.along_height(x, w, tmp);
            self.along_width(tmp, w, y, wo);
        }
    }

    /// Each row of `x` (length `w`) filtered into the row of `y` (`wo`).
    fn along_width(&self, x: &[T], w: usize, y: &mut [T], wo: usize) {
        if let Some(pad0) = self.unit_pad0 {
            return self.along_width_unit(x, w, y, wo, pad0);
        }
        for (xr, yr) in x.chunks_exact(w).zip(y.chunks_exact_mut(wo)) {
            for (yv, &(i0, t0, count)) in yr.iter_mut().zip(&self.cols) {
                let mut acc = T::from_f64(0.0);
                for (k, &xv) in xr[i0..i0 + count].iter().enumerate() {
                    acc += self.taps[t0 + k * self.up] * xv;
                }
                *yv = acc;
            }
        }
    }

    /// [`Self::along_width`] for `up = down = 1`:
    /// `y[m] += taps[t] · x[m + t - pad0]` over the `m` where both exist,
    /// tap by tap (the same order of additions as the general loop).
    fn along_width_unit(&self, x: &[T], w: usize, y: &mut [T], wo: usize, pad0: isize) {
        for (xr, yr) in x.chunks_exact(w).zip(y.chunks_exact_mut(wo)) {
            yr.fill(T::from_f64(0.0));
            for (t, &c) in self.taps.iter().enumerate() {
                let shift = t as isize - pad0;
                let lo = (-shift).max(0);
                let hi = (wo as isize).min(w as isize - shift);
                if lo >= hi {
                    continue;
                }
                let xs = &xr[(lo + shift) as usize..(hi + shift) as usize];
                for (yv, &xv) in yr[lo as usize..hi as usize].iter_mut().zip(xs) {
                    *yv += c * xv;
                }
            }
        }
    }

    /// Whole rows of `x` (width `w`) combined into the rows of `y`.
    fn along_height(&self, x: &[T], w: usize, y: &mut [T]) {
        for (yr, &(i0, t0, count)) in y.chunks_exact_mut(w).zip(&self.rows) {
            yr.fill(T::from_f64(0.0));
            for k in 0..count {
                let c = self.taps[t0 + k * self.up];
                let xr = &x[(i0 + k) * w..(i0 + k + 1) * w];
                for (yv, &xv) in yr.iter_mut().zip(xr) {
                    *yv += c * xv;
                }
            }
        }
    }
}

impl CustomOp1 for FirOp {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let _t = profile::scope(Family::Fir);
        let (b, c, h, w) = l.shape().dims4()?;
        let shape = Shape::from((b, c, self.out.0, self.out.1));
        let ys = match s {
            CpuStorage::F32(_) => CpuStorage::F32(self.run(cpu::slice(s, l)?, b * c, (h, w))),
            CpuStorage::F64(_) => CpuStorage::F64(self.run(cpu::slice(s, l)?, b * c, (h, w))),
            _ => bail!("{}: only f32 and f64 run on the CPU kernel, got {:?}", Self::NAME, s.dtype()),
        };
        Ok((ys, shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (b, c, h, w) = l.shape().dims4()?;
        let args = super::cuda::FirArgs {
            taps: &self.taps,
            up: self.up,
            down: self.down,
            pad0: self.pad0,
            planes: b * c,
            input: (h, w),
            out: self.out,
        };
        Ok((super::cuda::upfirdn2d((s, l), &args)?, Shape::from((b, c, self.out.0, self.out.1))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (_, _, h, w) = arg.dims4()?;
        Ok(Some(grad.contiguous()?.apply_op1(self.adjoint((h, w)))?))
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use candle_core::Var;

    use super::*;
    use crate::ops::testing::{assert_close, randn};

    /// `(blur kernel, gain)`: the generator's, an odd-length asymmetric one
    /// (the flip and the adjoint's reversal matter), a two-tap one.
    const KERNELS: [(&[f64], f64); 3] = [(&[1.0, 3.0, 3.0, 1.0], 4.0), (&[1.0, 2.0, 4.0], 1.0), (&[1.0, 1.0], 4.0)];
    const SHAPES: [(usize, usize, usize, usize); 4] = [(1, 1, 1, 1), (2, 3, 5, 7), (1, 2, 8, 8), (3, 1, 6, 3)];
    const PADS: [(usize, usize); 5] = [(0, 0), (1, 1), (2, 1), (1, 2), (3, 0)];

    /// Every (kernel, up, pad, shape) whose output is not empty.
    fn cases() -> Vec<(Fir, (usize, usize, usize, usize))> {
        let mut out = Vec::new();
        for (k, gain) in KERNELS {
            for up in [1, 2, 3] {
                for pad in PADS {
                    let fir = Fir::new(k, gain, up, pad, &Device::Cpu).expect("a valid filter");
                    for shape in SHAPES {
                        if fir.out_size(shape.2).is_ok() && fir.out_size(shape.3).is_ok() {
                            out.push((fir.clone(), shape));
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn forward_matches_stock() -> Result<()> {
        for (i, (fir, shape)) in cases().into_iter().enumerate() {
            for (dtype, tol) in [(DType::F32, 1e-6), (DType::F64, 1e-14)] {
                let xs = randn(i as u64, shape, dtype)?;
                let fast = fir.forward(&xs)?;
                let stock = fir.forward_stock(&xs)?;
                assert_close(&fast, &stock, tol, &format!("{fir:?} on {shape:?} {dtype:?}"))?;
            }
        }
        Ok(())
    }

    /// `d/dx sum(fir(x) * r)` through `forward` and through `forward_stock`.
    fn grads(fir: &Fir, xs: &Tensor, r: &Tensor) -> Result<(Tensor, Tensor)> {
        let grad = |stock: bool| -> Result<Tensor> {
            let var = Var::from_tensor(xs)?;
            let ys = if stock { fir.forward_stock(var.as_tensor())? } else { fir.forward(var.as_tensor())? };
            let g = (ys * r)?.sum_all()?.backward()?;
            Ok(g.get(var.as_tensor()).expect("x is on the loss path").clone())
        };
        Ok((grad(false)?, grad(true)?))
    }

    #[test]
    fn gradient_matches_stock() -> Result<()> {
        for (i, (fir, shape)) in cases().into_iter().enumerate() {
            for (dtype, tol) in [(DType::F32, 1e-6), (DType::F64, 1e-14)] {
                let xs = randn(i as u64, shape, dtype)?;
                let (b, c, h, w) = shape;
                let r = randn(1000 + i as u64, (b, c, fir.out_size(h)?, fir.out_size(w)?), dtype)?;
                let (fast, stock) = grads(&fir, &xs, &r)?;
                assert_close(&fast, &stock, tol, &format!("gradient of {fir:?} on {shape:?} {dtype:?}"))?;
            }
        }
        Ok(())
    }

    /// The adjoint is an op too, and its backward is the forward: the
    /// gradient of `sum(adjoint(g) * x)` w.r.t. `g` is `fir(x)`.
    #[test]
    fn adjoint_backward_is_the_forward() -> Result<()> {
        for (i, (fir, shape)) in cases().into_iter().enumerate() {
            let (b, c, h, w) = shape;
            let (ho, wo) = (fir.out_size(h)?, fir.out_size(w)?);
            let xs = randn(i as u64, shape, DType::F64)?;
            let g = Var::from_tensor(&randn(500 + i as u64, (b, c, ho, wo), DType::F64)?)?;
            let op = FirOp { taps: fir.taps.clone(), up: fir.up, down: 1, pad0: fir.pad.0 as isize, out: (ho, wo) };
            let adj = g.as_tensor().apply_op1(op.adjoint((h, w)))?;
            assert_eq!(adj.dims(), xs.dims());
            let grads = (adj * &xs)?.sum_all()?.backward()?;
            let back = grads.get(g.as_tensor()).expect("g is on the loss path");
            assert_close(back, &fir.forward_stock(&xs)?, 1e-14, &format!("{fir:?} on {shape:?}"))?;
        }
        Ok(())
    }

    #[test]
    fn gradient_matches_finite_differences() -> Result<()> {
        let fir = Fir::new(&[1.0, 2.0, 4.0], 2.0, 2, (2, 1), &Device::Cpu)?;
        let shape = (2, 1, 3, 4);
        let xs = randn(7, shape, DType::F64)?;
        let r = randn(8, (2, 1, fir.out_size(3)?, fir.out_size(4)?), DType::F64)?;
        let (analytic, _) = grads(&fir, &xs, &r)?;
        let analytic = analytic.flatten_all()?.to_vec1::<f64>()?;
        let base = xs.flatten_all()?.to_vec1::<f64>()?;
        let loss = |v: Vec<f64>| -> Result<f64> {
            let x = Tensor::from_vec(v, shape, &Device::Cpu)?;
            Ok((fir.forward(&x)? * &r)?.sum_all()?.to_scalar::<f64>()?)
        };
        let eps = 1e-4;
        for i in 0..base.len() {
            let mut plus = base.clone();
            plus[i] += eps;
            let mut minus = base.clone();
            minus[i] -= eps;
            let numeric = (loss(plus)? - loss(minus)?) / (2.0 * eps);
            assert!(
                (numeric - analytic[i]).abs() < 1e-9,
                "coordinate {i}: numeric {numeric}, analytic {}",
                analytic[i]
            );
        }
        Ok(())
    }

    #[test]
    fn empty_output_is_an_error() {
        let fir = Fir::new(&[1.0, 3.0, 3.0, 1.0], 4.0, 1, (0, 0), &Device::Cpu).expect("a valid filter");
        let xs = Tensor::zeros((1, 1, 3, 8), DType::F32, &Device::Cpu).expect("a tensor");
        assert!(fir.forward(&xs).is_err());
    }
}

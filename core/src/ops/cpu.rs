//! CPU kernels of the constant-weight ops: `gemm` (the crate Candle's own
//! matmul uses), im2col and its adjoint col2im.
//!
//! Images are NCHW and contiguous. A convolution of one image is one matrix
//! product `Y [c_out, oh·ow] = W [c_out, K] · col [K, oh·ow]` with
//! `K = c_in·kh·kw` ordered `(c, ky, kx)`, which is exactly the layout of a
//! contiguous `[c_out, c_in, kh, kw]` kernel, so the weight needs no
//! repacking per call. The input gradient is the adjoint: `col = Wᵀ · G`,
//! then col2im scatters every column back onto the input pixels it read.
//! The output pixels are processed in bands of whole rows so that the
//! column buffer stays a few MiB at any image size. A 3×3, stride-1,
//! padding-1 convolution of a big enough layer runs as Winograd's
//! F(2×2, 3×3) instead ([`super::winograd`]), in both directions.

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, DType, Layout, Storage, Tensor, WithDType};
use gemm::Parallelism;

use super::winograd;
use rayon::prelude::*;

/// Elements of one im2col band (8 MiB in f32): large enough for `gemm` to
/// run at full speed, small enough to stay out of the way at 512².
pub(crate) const BAND_ELEMS: usize = 1 << 21;

/// Threads for `gemm`, read once: Candle's `get_num_threads` re-reads the
/// CPU list on every call unless `RAYON_NUM_THREADS` is set.
pub(crate) fn parallelism() -> Parallelism {
    static THREADS: OnceLock<usize> = OnceLock::new();
    let n = *THREADS.get_or_init(candle_core::utils::get_num_threads);
    if n > 1 {
        Parallelism::Rayon(n)
    } else {
        Parallelism::None
    }
}

/// Whether the fast CPU kernels can run `xs` against the constant
/// `weights`: everything on the CPU, in f32 or f64, one dtype, no empty axis.
pub(crate) fn applies(xs: &Tensor, weights: &[Option<&Tensor>]) -> bool {
    let dtype = xs.dtype();
    xs.device().is_cpu()
        && matches!(dtype, DType::F32 | DType::F64)
        && xs.elem_count() > 0
        && weights.iter().flatten().all(|w| w.device().is_cpu() && w.dtype() == dtype)
}

/// The elements of a contiguous CPU storage under `layout`.
pub(crate) fn slice<'a, T: WithDType>(s: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [T]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("lsd ops take contiguous inputs, got strides {:?}", layout.stride())
    };
    Ok(&T::cpu_storage_as_slice(s)?[start..end])
}

/// Runs `f` on the elements of a contiguous CPU tensor (a constant weight).
pub(crate) fn with_data<T: WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> R) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else { bail!("lsd ops: the weight is not on the CPU") };
    Ok(f(slice(cpu, layout)?))
}

/// Like [`with_data`] for an optional tensor (a bias).
pub(crate) fn with_opt_data<T: WithDType, R>(
    t: Option<&Tensor>,
    f: impl FnOnce(Option<&[T]>) -> R,
) -> candle_core::Result<R> {
    match t {
        Some(t) => with_data(t, |d| f(Some(d))),
        None => Ok(f(None)),
    }
}

/// Runs the f32 or the f64 instance of a kernel, by the dtype of `storage`.
pub(crate) fn dispatch(
    storage: &CpuStorage,
    op: &'static str,
    f32_: impl FnOnce() -> candle_core::Result<CpuStorage>,
    f64_: impl FnOnce() -> candle_core::Result<CpuStorage>,
) -> candle_core::Result<CpuStorage> {
    match storage.dtype() {
        DType::F32 => f32_(),
        DType::F64 => f64_(),
        dtype => Err(candle_core::Error::UnsupportedDTypeForOp(dtype, op)),
    }
}

/// A strided read-only matrix view: element `(i, j)` at `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a, T> {
    pub data: &'a [T],
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> Mat<'a, T> {
    /// A row-major matrix with `cols` columns.
    pub fn rows(data: &'a [T], cols: usize) -> Self {
        Self { data, rs: cols, cs: 1 }
    }

    /// The transpose of a row-major matrix with `cols` columns.
    pub fn rows_t(data: &'a [T], cols: usize) -> Self {
        Self { data, rs: 1, cs: cols }
    }

    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }
}

/// `dst [m, n] (row stride dst_rs) = lhs [m, k] · rhs [k, n]`, plus the old
/// `dst` when `accumulate`.
pub(crate) fn matmul<T: WithDType>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    dst_rs: usize,
    accumulate: bool,
    lhs: Mat<'_, T>,
    rhs: Mat<'_, T>,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(lhs.fits(m, k) && rhs.fits(k, n) && (m - 1) * dst_rs + n <= dst.len(), "matmul operands out of bounds");
    if k == 0 {
        if !accumulate {
            for row in dst.chunks_mut(dst_rs).take(m) {
                row[..n].fill(T::from_f64(0.0));
            }
        }
        return;
    }
    // SAFETY: every index gemm touches, (i, j) with i < m, j < n over the
    // depth k, lies inside the slices (checked above); `dst` is borrowed
    // mutably, so nothing else reads or writes it meanwhile.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            T::from_f64(1.0),
            T::from_f64(1.0),
            false,
            false,
            false,
            parallelism(),
        )
    }
}

/// The shape of a 2-D convolution (one group, no dilation, equal stride and
/// padding on both axes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConvGeom {
    pub c_in: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub padding: usize,
    /// Input height and width.
    pub h: usize,
    pub w: usize,
}

impl ConvGeom {
    /// Output height and width; `None` when the kernel does not fit.
    pub fn out_hw(&self) -> Option<(usize, usize)> {
        let o = |n: usize, k: usize| (n + 2 * self.padding).checked_sub(k).map(|d| d / self.stride + 1);
        if self.stride == 0 {
            return None;
        }
        Some((o(self.h, self.kh)?, o(self.w, self.kw)?))
    }

    fn oh_ow(&self) -> (usize, usize) {
        self.out_hw().expect("geometry checked by the op")
    }

    /// Rows of the im2col matrix.
    fn k(&self) -> usize {
        self.c_in * self.kh * self.kw
    }

    /// A 1x1, stride-1, unpadded convolution: the image is its own im2col.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.padding == 0
    }

    /// Output rows per band.
    fn band_rows(&self) -> usize {
        let (oh, ow) = self.oh_ow();
        (BAND_ELEMS / (self.k() * ow).max(1)).clamp(1, oh.max(1))
    }

    /// The output columns `ox` whose tap `kx` reads inside the input row:
    /// `0 ≤ ox·s + kx − p < w`.
    fn valid_cols(&self, kx: usize, ow: usize) -> (usize, usize) {
        let (s, p) = (self.stride, self.padding);
        let hi = if self.w + p > kx { ((self.w + p - 1 - kx) / s + 1).min(ow) } else { 0 };
        let lo = if kx >= p { 0 } else { (p - kx).div_ceil(s) };
        (lo.min(hi), hi)
    }

    /// The input row that output row `oy` reads with tap `ky`, if inside.
    fn input_row(&self, oy: usize, ky: usize) -> Option<usize> {
        (oy * self.stride + ky).checked_sub(self.padding).filter(|&iy| iy < self.h)
    }
}

/// im2col of output rows `r0..r1` of one image `x` `[c_in, h, w]` into `col`
/// `[K, (r1 − r0)·ow]`, zeros where a tap falls in the padding.
fn im2col<T: WithDType>(g: &ConvGeom, x: &[T], (r0, r1): (usize, usize), col: &mut [T]) {
    let (_, ow) = g.oh_ow();
    let n = (r1 - r0) * ow;
    let (s, p, hw) = (g.stride, g.padding, g.h * g.w);
    let zero = T::from_f64(0.0);
    col[..g.k() * n].par_chunks_mut(n).enumerate().for_each(|(row, dst)| {
        let (c, ky, kx) = (row / (g.kh * g.kw), (row / g.kw) % g.kh, row % g.kw);
        let plane = &x[c * hw..(c + 1) * hw];
        let (lo, hi) = g.valid_cols(kx, ow);
        for (oy, d) in (r0..r1).zip(dst.chunks_mut(ow)) {
            let Some(iy) = g.input_row(oy, ky) else {
                d.fill(zero);
                continue;
            };
            let src = &plane[iy * g.w..(iy + 1) * g.w];
            d[..lo].fill(zero);
            d[hi..].fill(zero);
            if lo == hi {
                continue;
            }
            if s == 1 {
                d[lo..hi].copy_from_slice(&src[lo + kx - p..hi + kx - p]);
            } else {
                for (ox, v) in (lo..hi).zip(&mut d[lo..hi]) {
                    *v = src[ox * s + kx - p];
                }
            }
        }
    });
}

/// The adjoint of [`im2col`]: adds every entry of `col` `[K, (r1 − r0)·ow]`
/// onto the input pixel it was read from in `dx` `[c_in, h, w]`. Parallel
/// over input channels, which own disjoint planes.
fn col2im<T: WithDType>(g: &ConvGeom, col: &[T], (r0, r1): (usize, usize), dx: &mut [T]) {
    let (_, ow) = g.oh_ow();
    let n = (r1 - r0) * ow;
    let (s, p, kk) = (g.stride, g.padding, g.kh * g.kw);
    dx.par_chunks_mut(g.h * g.w).enumerate().for_each(|(c, plane)| {
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let src = &col[(c * kk + ky * g.kw + kx) * n..][..n];
                let (lo, hi) = g.valid_cols(kx, ow);
                if lo == hi {
                    continue;
                }
                for (oy, sr) in (r0..r1).zip(src.chunks(ow)) {
                    let Some(iy) = g.input_row(oy, ky) else { continue };
                    let d = &mut plane[iy * g.w..(iy + 1) * g.w];
                    if s == 1 {
                        let d = &mut d[lo + kx - p..hi + kx - p];
                        for (v, &a) in d.iter_mut().zip(&sr[lo..hi]) {
                            *v += a;
                        }
                    } else {
                        for (ox, &a) in (lo..hi).zip(&sr[lo..hi]) {
                            d[ox * s + kx - p] += a;
                        }
                    }
                }
            }
        }
    });
}

/// The bands of output rows, `[r0, r1)`.
fn bands(g: &ConvGeom) -> impl Iterator<Item = (usize, usize)> {
    let (oh, _) = g.oh_ow();
    let step = g.band_rows();
    (0..oh).step_by(step).map(move |r0| (r0, (r0 + step).min(oh)))
}

/// Convolution of a batch `x` `[B, c_in, h, w]` with `weight`
/// `[c_out, c_in, kh, kw]` (both contiguous) plus an optional per-channel
/// `bias`: `[B, c_out, oh, ow]`.
pub(crate) fn conv2d<T: WithDType>(g: &ConvGeom, x: &[T], weight: &[T], bias: Option<&[T]>) -> Vec<T> {
    if winograd::applies(g) {
        return winograd::conv3x3(g, x, weight, bias, winograd::Role::Forward);
    }
    let (oh, ow) = g.oh_ow();
    let (k, in_sz, out_px) = (g.k(), g.c_in * g.h * g.w, oh * ow);
    let batch = x.len() / in_sz.max(1);
    let mut y = vec![T::from_f64(0.0); batch * g.c_out * out_px];
    if let Some(bias) = bias {
        for (plane, &b) in y.chunks_mut(out_px).zip(bias.iter().cycle()) {
            plane.fill(b);
        }
    }
    let lhs = Mat::rows(weight, k);
    let mut col = if g.pointwise() { Vec::new() } else { vec![T::from_f64(0.0); k * g.band_rows() * ow] };
    for (xb, yb) in x.chunks(in_sz).zip(y.chunks_mut(g.c_out * out_px)) {
        for (r0, r1) in bands(g) {
            let n = (r1 - r0) * ow;
            let rhs = if g.pointwise() {
                Mat { data: &xb[r0 * ow..], rs: out_px, cs: 1 }
            } else {
                im2col(g, xb, (r0, r1), &mut col);
                Mat::rows(&col[..k * n], n)
            };
            matmul((g.c_out, n, k), &mut yb[r0 * ow..], out_px, bias.is_some(), lhs, rhs);
        }
    }
    y
}

/// The input gradient of [`conv2d`] (its adjoint in `x`): `dy`
/// `[B, c_out, oh, ow]` to `[B, c_in, h, w]`.
pub(crate) fn conv2d_backward_data<T: WithDType>(g: &ConvGeom, dy: &[T], weight: &[T]) -> Vec<T> {
    if winograd::applies(g) {
        return winograd::conv3x3(g, dy, weight, None, winograd::Role::BackwardData);
    }
    let (oh, ow) = g.oh_ow();
    let (k, in_px, out_sz) = (g.k(), g.h * g.w, g.c_out * oh * ow);
    let batch = dy.len() / out_sz.max(1);
    let mut dx = vec![T::from_f64(0.0); batch * g.c_in * in_px];
    let lhs = Mat::rows_t(weight, k);
    let mut col = if g.pointwise() { Vec::new() } else { vec![T::from_f64(0.0); k * g.band_rows() * ow] };
    for (gb, xb) in dy.chunks(out_sz).zip(dx.chunks_mut(g.c_in * in_px)) {
        for (r0, r1) in bands(g) {
            let n = (r1 - r0) * ow;
            let rhs = Mat { data: &gb[r0 * ow..], rs: oh * ow, cs: 1 };
            if g.pointwise() {
                matmul((k, n, g.c_out), &mut xb[r0 * ow..], in_px, false, lhs, rhs);
            } else {
                matmul((k, n, g.c_out), &mut col[..k * n], n, false, lhs, rhs);
                col2im(g, &col[..k * n], (r0, r1), xb);
            }
        }
    }
    dx
}

/// `x` `[M, d_in]` times `weight_t` `[d_in, d_out]` plus `bias`: `[M, d_out]`.
pub(crate) fn linear<T: WithDType>(x: &[T], weight_t: &[T], bias: Option<&[T]>, d_in: usize, d_out: usize) -> Vec<T> {
    let m = x.len() / d_in.max(1);
    let mut y = vec![T::from_f64(0.0); m * d_out];
    if let Some(bias) = bias {
        for row in y.chunks_mut(d_out) {
            row.copy_from_slice(bias);
        }
    }
    matmul((m, d_out, d_in), &mut y, d_out, bias.is_some(), Mat::rows(x, d_in), Mat::rows(weight_t, d_out));
    y
}

/// The input gradient of [`linear`]: `dy` `[M, d_out]` times `weight_tᵀ`:
/// `[M, d_in]`.
pub(crate) fn linear_backward_data<T: WithDType>(dy: &[T], weight_t: &[T], d_in: usize, d_out: usize) -> Vec<T> {
    let m = dy.len() / d_out.max(1);
    let mut dx = vec![T::from_f64(0.0); m * d_in];
    matmul((m, d_in, d_out), &mut dx, d_in, false, Mat::rows(dy, d_out), Mat::rows_t(weight_t, d_out));
    dx
}

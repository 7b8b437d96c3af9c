//! The op layer on CUDA (f32): the element-wise kernels of
//! `kernels.cu` (compiled to PTX at build time, loaded through Candle's
//! `CudaDevice` on first use) and the convolutions through cuDNN
//! ([`cudnn`]). Each function here is the `cuda_fwd` of the CustomOp of the
//! same name in the parent modules; the shapes were checked there.

pub(crate) mod cudnn;
pub(crate) mod memory;

use candle_core::cuda::cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda::{CudaDevice, CudaStorage, WrapErr};
use candle_core::{bail, Layout, Storage, Tensor};

/// The PTX of `kernels.cu`.
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/kernels.ptx"));
/// The module's name in the device's cache of loaded modules.
const MODULE: &str = "lsd-ops";
/// Threads per block; `REDUCE_THREADS` in `kernels.cu` for the reductions.
const THREADS: u32 = 256;
/// `MAX_TAPS` in `kernels.cu`.
const MAX_TAPS: usize = super::fir::CUDA_MAX_TAPS;

type R<T> = candle_core::Result<T>;

/// The elements of a contiguous f32 storage under `layout`.
pub(crate) fn view<'a>(s: &'a CudaStorage, layout: &Layout) -> R<CudaView<'a, f32>> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("lsd ops take contiguous inputs, got strides {:?}", layout.stride())
    };
    Ok(s.as_cuda_slice::<f32>()?.slice(start..end))
}

/// Runs `f` with the device data of the constant `t` (a weight, a bias).
pub(crate) fn with_view<T>(t: &Tensor, f: impl FnOnce(CudaView<'_, f32>) -> R<T>) -> R<T> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(s) = &*storage else {
        bail!("lsd ops: a constant of shape {:?} is not on the CUDA device", t.dims())
    };
    f(view(s, layout)?)
}

/// An uninitialised output of `n` floats (every kernel writes all of it).
fn output(dev: &CudaDevice, n: usize) -> R<CudaSlice<f32>> {
    // SAFETY: every caller launches a kernel that writes each element
    // before the storage is read.
    unsafe { dev.alloc::<f32>(n.max(1)) }
}

fn wrap(dev: &CudaDevice, out: CudaSlice<f32>) -> CudaStorage {
    CudaStorage::wrap_cuda_slice(out, dev.clone())
}

/// A grid-stride launch over `n` elements.
fn elementwise(n: usize) -> LaunchConfig {
    let blocks = (n as u64).div_ceil(THREADS as u64).clamp(1, 1 << 20) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// One block per plane (the per-plane reductions).
fn per_plane(planes: usize) -> R<LaunchConfig> {
    let Ok(blocks) = u32::try_from(planes) else { bail!("lsd ops: {planes} planes exceed one CUDA grid") };
    Ok(LaunchConfig { grid_dim: (blocks.max(1), 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 })
}

/// `out[b, c] = x[b or 0, c] · s[b, c]`; `x` `[bx, c, hw]`, `s` `[b, c]`.
pub(crate) fn modulate(
    (x, lx): (&CudaStorage, &Layout),
    (s, ls): (&CudaStorage, &Layout),
    (bx, b, c, hw): (usize, usize, usize, usize),
) -> R<CudaStorage> {
    let dev = &x.device;
    let (xv, sv) = (view(x, lx)?, view(s, ls)?);
    let n = b * c * hw;
    let mut out = output(dev, n)?;
    if n > 0 {
        let (bx, c, hw, n64) = (bx as u32, c as u32, hw as u64, n as u64);
        let f = dev.get_or_load_custom_func("lsd_modulate_f32", MODULE, PTX)?;
        let mut l = f.builder();
        l.arg(&xv).arg(&sv).arg(&mut out).arg(&bx).arg(&c).arg(&hw).arg(&n64);
        // SAFETY: argument types and order match the kernel's signature.
        unsafe { l.launch(elementwise(n)) }.w()?;
    }
    Ok(wrap(dev, out))
}

/// `out[0, c] = Σ_b g[b, c] · s[b, c]`; `g` `[b, c, hw]`.
pub(crate) fn modulate_sum(
    (g, lg): (&CudaStorage, &Layout),
    (s, ls): (&CudaStorage, &Layout),
    (b, c, hw): (usize, usize, usize),
) -> R<CudaStorage> {
    let dev = &g.device;
    let (gv, sv) = (view(g, lg)?, view(s, ls)?);
    let n = c * hw;
    let mut out = output(dev, n)?;
    if n > 0 {
        let (b, c, hw, n64) = (b as u32, c as u32, hw as u64, n as u64);
        let f = dev.get_or_load_custom_func("lsd_modulate_sum_f32", MODULE, PTX)?;
        let mut l = f.builder();
        l.arg(&gv).arg(&sv).arg(&mut out).arg(&b).arg(&c).arg(&hw).arg(&n64);
        // SAFETY: argument types and order match the kernel's signature.
        unsafe { l.launch(elementwise(n)) }.w()?;
    }
    Ok(wrap(dev, out))
}

/// `out[b, c] = Σ g[b, c] · x[b or 0, c]` over each plane of `hw`.
pub(crate) fn channel_dot(
    (g, lg): (&CudaStorage, &Layout),
    (x, lx): (&CudaStorage, &Layout),
    (bx, b, c, hw): (usize, usize, usize, usize),
) -> R<CudaStorage> {
    let dev = &g.device;
    let (gv, xv) = (view(g, lg)?, view(x, lx)?);
    let planes = b * c;
    let mut out = output(dev, planes)?;
    if planes > 0 {
        let (bx, c, hw) = (bx as u32, c as u32, hw as u64);
        let f = dev.get_or_load_custom_func("lsd_channel_dot_f32", MODULE, PTX)?;
        let mut l = f.builder();
        l.arg(&gv).arg(&xv).arg(&mut out).arg(&bx).arg(&c).arg(&hw);
        // SAFETY: argument types and order match the kernel's signature.
        unsafe { l.launch(per_plane(planes)?) }.w()?;
    }
    Ok(wrap(dev, out))
}

/// The styled-conv epilogue's constants, on the device.
pub(crate) struct EpilogueArgs<'a> {
    /// `[C]` (any shape with `C` elements), f32.
    pub bias: &'a Tensor,
    /// `[1 or B, 1, H, W]`, f32, contiguous.
    pub noise: Option<&'a Tensor>,
    pub noise_weight: f64,
    pub clamp: Option<f64>,
    /// Channels and the plane size.
    pub c: usize,
    pub hw: usize,
}

impl EpilogueArgs<'_> {
    /// Runs `f` with the bias and the noise map (the bias again when there
    /// is no noise: the kernel then never reads it) on the device.
    fn with_constants<T>(&self, f: impl FnOnce(&CudaView<'_, f32>, &CudaView<'_, f32>, u32) -> R<T>) -> R<T> {
        with_view(self.bias, |bias| match self.noise {
            Some(n) => {
                let nb = n.dim(0)? as u32;
                with_view(n, |noise| f(&bias, &noise, nb))
            }
            None => f(&bias, &bias, 1),
        })
    }
}

/// `lrelu(y·demod + noise·w + bias)·√2` (clamped), `ys` `[B, C, H, W]`.
pub(crate) fn epilogue(
    (ys, ly): (&CudaStorage, &Layout),
    (demod, ld): (&CudaStorage, &Layout),
    a: &EpilogueArgs<'_>,
) -> R<CudaStorage> {
    let dev = &ys.device;
    let (yv, dv) = (view(ys, ly)?, view(demod, ld)?);
    let n = ly.shape().elem_count();
    let mut out = output(dev, n)?;
    if n > 0 {
        a.with_constants(|bias, noise, nb| {
            let (nw, has_noise, c, hw) = (a.noise_weight as f32, a.noise.is_some() as u32, a.c as u32, a.hw as u64);
            let (has_clamp, clamp, n64) = (a.clamp.is_some() as u32, a.clamp.unwrap_or(0.0) as f32, n as u64);
            let f = dev.get_or_load_custom_func("lsd_epilogue_f32", MODULE, PTX)?;
            let mut l = f.builder();
            l.arg(&yv).arg(&dv).arg(noise).arg(bias).arg(&mut out);
            l.arg(&nw).arg(&has_noise).arg(&nb).arg(&c).arg(&hw).arg(&has_clamp).arg(&clamp).arg(&n64);
            // SAFETY: argument types and order match the kernel's signature.
            unsafe { l.launch(elementwise(n)) }.w()?;
            Ok(())
        })?;
    }
    Ok(wrap(dev, out))
}

/// The epilogue's backward: `[grad_ys | grad_demod]`, flat.
pub(crate) fn epilogue_backward(
    (ys, ly): (&CudaStorage, &Layout),
    (demod, ld): (&CudaStorage, &Layout),
    (grad, lg): (&CudaStorage, &Layout),
    a: &EpilogueArgs<'_>,
) -> R<CudaStorage> {
    let dev = &ys.device;
    let (yv, dv, gv) = (view(ys, ly)?, view(demod, ld)?, view(grad, lg)?);
    let planes = ld.shape().elem_count();
    let n = ly.shape().elem_count();
    let mut out = output(dev, n + planes)?;
    if planes > 0 {
        a.with_constants(|bias, noise, nb| {
            let (nw, has_noise, c, hw) = (a.noise_weight as f32, a.noise.is_some() as u32, a.c as u32, a.hw as u64);
            let (has_clamp, clamp, p64) = (a.clamp.is_some() as u32, a.clamp.unwrap_or(0.0) as f32, planes as u64);
            let f = dev.get_or_load_custom_func("lsd_epilogue_backward_f32", MODULE, PTX)?;
            let mut l = f.builder();
            l.arg(&yv).arg(&dv).arg(noise).arg(bias).arg(&gv).arg(&mut out);
            l.arg(&nw).arg(&has_noise).arg(&nb).arg(&c).arg(&hw).arg(&has_clamp).arg(&clamp).arg(&p64);
            // SAFETY: argument types and order match the kernel's signature.
            unsafe { l.launch(per_plane(planes)?) }.w()?;
            Ok(())
        })?;
    }
    Ok(wrap(dev, out))
}

/// `y[b, c] += bias[c]` in place, `y` `[B, C, hw]`.
pub(crate) fn add_channel_bias(dev: &CudaDevice, y: &mut CudaSlice<f32>, bias: &Tensor, c: usize, hw: usize) -> R<()> {
    let n = y.len();
    if n == 0 {
        return Ok(());
    }
    with_view(bias, |b| {
        let (c, hw, n64) = (c as u32, hw as u64, n as u64);
        let f = dev.get_or_load_custom_func("lsd_channel_bias_f32", MODULE, PTX)?;
        let mut l = f.builder();
        l.arg(&mut *y).arg(&b).arg(&c).arg(&hw).arg(&n64);
        // SAFETY: argument types and order match the kernel's signature.
        unsafe { l.launch(elementwise(n)) }.w()?;
        Ok(())
    })
}

/// The taps of a FIR filter as one by-value kernel argument.
#[repr(C)]
#[derive(Clone, Copy)]
struct Taps([f32; MAX_TAPS]);

// SAFETY: a plain array of f32, laid out as `struct Taps` in `kernels.cu`.
unsafe impl candle_core::cuda::cudarc::driver::DeviceRepr for Taps {}

/// One FIR pass per plane and axis (see `FirOp`): `x` `[planes, h, w]` to
/// `[planes, ho, wo]`.
pub(crate) struct FirArgs<'a> {
    pub taps: &'a [f64],
    pub up: usize,
    pub down: usize,
    pub pad0: isize,
    pub planes: usize,
    pub input: (usize, usize),
    pub out: (usize, usize),
}

pub(crate) fn upfirdn2d((x, lx): (&CudaStorage, &Layout), a: &FirArgs<'_>) -> R<CudaStorage> {
    let dev = &x.device;
    if a.taps.len() > MAX_TAPS {
        bail!("upfirdn2d on CUDA takes at most {MAX_TAPS} taps, got {}", a.taps.len())
    }
    let xv = view(x, lx)?;
    let n = a.planes * a.out.0 * a.out.1;
    let mut out = output(dev, n)?;
    if n > 0 && a.input.0 * a.input.1 > 0 {
        let mut taps = Taps([0.0; MAX_TAPS]);
        for (t, &v) in taps.0.iter_mut().zip(a.taps) {
            *t = v as f32;
        }
        let int = |v: usize| i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("upfirdn2d: {v} too large")));
        let (ntaps, up, down, pad0) = (int(a.taps.len())?, int(a.up)?, int(a.down)?, a.pad0 as i32);
        let (h, w, ho, wo, n64) = (int(a.input.0)?, int(a.input.1)?, int(a.out.0)?, int(a.out.1)?, n as u64);
        let f = dev.get_or_load_custom_func("lsd_upfirdn2d_f32", MODULE, PTX)?;
        let mut l = f.builder();
        l.arg(&xv).arg(&mut out).arg(&taps).arg(&ntaps).arg(&up).arg(&down).arg(&pad0);
        l.arg(&h).arg(&w).arg(&ho).arg(&wo).arg(&n64);
        // SAFETY: argument types and order match the kernel's signature.
        unsafe { l.launch(elementwise(n)) }.w()?;
    } else if n > 0 {
        dev.cuda_stream().memset_zeros(&mut out).w()?;
    }
    Ok(wrap(dev, out))
}

//! Differentiable preprocessing: a generator image in `[-1, 1]` (NCHW RGB, any
//! size) to CLIP's normalised `pixel_values` at the tower's input size.
//!
//! Steps, in this order: `x01 = (x + 1) / 2`; resize to `S_out × S_out`;
//! `(x01 - mean[c]) / std[c]` with OpenAI's CLIP mean and std
//! ([`MEAN`], [`STD`]; `clip/clip.py` `_transform`,
//! <https://github.com/openai/CLIP/blob/main/clip/clip.py>).
//!
//! Which resize ([`Resize::Auto`]):
//! - input already `S_out × S_out`: none;
//! - `S_out = 224` and both sides multiples of 32 (every StyleGAN size from
//!   32 up): StyleCLIP's resize, nearest-neighbour upsampling ×7 then average
//!   pooling with kernel = stride = S/32, as `CLIPLoss` in StyleCLIP's
//!   [`criteria/clip_loss.py`](https://github.com/orpatashnik/StyleCLIP/blob/main/criteria/clip_loss.py)
//!   (`Upsample(scale_factor=7)` + `AvgPool2d(stylegan_size // 32)`). It is
//!   applied as one exact `[224, S]` matrix per axis ([`styleclip_matrix`]),
//!   which is the same linear map without the 7×-larger intermediate and
//!   without candle's `upsample_nearest2d`, whose backward overwrites
//!   gradients instead of accumulating them;
//! - anything else: PyTorch-style bilinear (`align_corners=False`, no
//!   antialias) through [`crate::imageops::resample`].
//!
//! Unlike StyleCLIP's own loss, which feeds the `[-1, 1]` image to CLIP
//! unnormalised, this maps to `[0, 1]` and normalises, as CLIP was trained.
//! Hugging Face's `CLIPImageProcessor` (PIL bicubic, centre crop) is not
//! differentiable and is not used.

use candle_core::{Device, Tensor};

use crate::imageops::{self, Filter};
use crate::{Error, Result};

/// CLIP's per-channel RGB mean.
pub const MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
/// CLIP's per-channel RGB standard deviation.
pub const STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// The input size StyleCLIP's ×7 / (S/32) resize produces.
const STYLECLIP_OUT: usize = 224;

/// How an image is brought to the tower's input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resize {
    /// StyleCLIP's resize where it applies, else bilinear (see the module docs).
    #[default]
    Auto,
    /// Nearest ×7 then average pool S/32; needs sides that are multiples of 32
    /// and a 224 output.
    StyleClip,
    /// PyTorch bilinear, `align_corners=False`, no antialias.
    Bilinear,
}

/// The `[224, size]` matrix of StyleCLIP's resize along one axis: output
/// row `i` averages source rows `floor((k·i + j) / 7)`, `j < k`, `k = size / 32`.
pub fn styleclip_matrix(size: usize) -> Result<Vec<f64>> {
    if size == 0 || !size.is_multiple_of(32) {
        return Err(Error::Config(format!(
            "StyleCLIP's resize needs a side that is a multiple of 32, got {size}; use Resize::Bilinear"
        )));
    }
    let k = size / 32;
    let mut m = vec![0f64; STYLECLIP_OUT * size];
    for i in 0..STYLECLIP_OUT {
        for j in 0..k {
            // Pooling window row k·i + j of the ×7 image comes from source row (k·i + j) / 7.
            m[i * size + (k * i + j) / 7] += 1.0;
        }
    }
    Ok(m.into_iter().map(|c| c / k as f64).collect())
}

/// [`styleclip_matrix`] as an f32 tensor `[224, size]`.
pub fn styleclip_matrix_tensor(size: usize, device: &Device) -> Result<Tensor> {
    let m: Vec<f32> = styleclip_matrix(size)?.into_iter().map(|v| v as f32).collect();
    Ok(Tensor::from_vec(m, (STYLECLIP_OUT, size), device)?)
}

/// `Mh · xs · Mwᵀ` over the last two axes of `xs` `[N, C, H, W]`.
fn apply_separable(xs: &Tensor, mh: &Tensor, mw: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = xs.dims4()?;
    let (mh, mw) = (mh.to_dtype(xs.dtype())?, mw.to_dtype(xs.dtype())?);
    let (ho, wo) = (mh.dim(0)?, mw.dim(0)?);
    let flat = xs.reshape((n * c, h, w))?;
    let rows = flat.broadcast_matmul(&mw.t()?)?; // [NC, H, wo]
    let out = mh.broadcast_left(n * c)?.matmul(&rows.contiguous()?)?; // [NC, ho, wo]
    Ok(out.reshape((n, c, ho, wo))?)
}

/// Resizes `xs` `[N, C, H, W]` to `size × size` with `method`.
pub fn resize(xs: &Tensor, method: Resize, size: usize) -> Result<Tensor> {
    let (_, _, h, w) = xs.dims4()?;
    let styleclip_fits = size == STYLECLIP_OUT && h % 32 == 0 && w % 32 == 0 && h > 0 && w > 0;
    match method {
        Resize::Auto if (h, w) == (size, size) => Ok(xs.clone()),
        Resize::Auto if styleclip_fits => resize(xs, Resize::StyleClip, size),
        Resize::Auto | Resize::Bilinear => imageops::resample(xs, Filter::Bilinear, (size, size)),
        Resize::StyleClip => {
            if size != STYLECLIP_OUT {
                return Err(Error::Config(format!(
                    "StyleCLIP's resize produces {STYLECLIP_OUT}x{STYLECLIP_OUT}, the model wants {size}; use Resize::Bilinear"
                )));
            }
            let mh = styleclip_matrix_tensor(h, xs.device())?;
            let mw = if w == h { mh.clone() } else { styleclip_matrix_tensor(w, xs.device())? };
            apply_separable(xs, &mh, &mw)
        }
    }
}

/// `(x01 - mean[c]) / std[c]` for an RGB batch `x01` in `[0, 1]`.
pub fn normalize_pixels(x01: &Tensor) -> Result<Tensor> {
    let c = x01.dim(1)?;
    if c != 3 {
        return Err(Error::BadShape {
            name: "image".into(),
            expected: "[N, 3, H, W] RGB".into(),
            got: x01.dims().to_vec(),
        });
    }
    let stat = |v: &[f64; 3]| -> Result<Tensor> {
        Ok(Tensor::new(v, x01.device())?.to_dtype(x01.dtype())?.reshape((1, 3, 1, 1))?)
    };
    Ok(x01.broadcast_sub(&stat(&MEAN)?)?.broadcast_div(&stat(&STD)?)?)
}

/// A `[-1, 1]` image `[N, 3, H, W]` to CLIP `pixel_values` `[N, 3, size, size]`.
pub fn preprocess(xs: &Tensor, method: Resize, size: usize) -> Result<Tensor> {
    let x01 = ((xs + 1.0)? * 0.5)?;
    normalize_pixels(&resize(&x01, method, size)?)
}

/// [`preprocess`] with StyleCLIP's and CLIPLSD's switches: `clamp` clamps
/// the image to `[-1, 1]` first; `normalize: false` feeds the resized
/// `[-1, 1]` image itself, without the `x01` shift and CLIP's mean/std (as
/// StyleCLIP's `criteria/clip_loss.py` and CLIPLSD's `cliplsd.py` do:
/// `avg_pool(upsample(image))` straight into `encode_image`).
pub fn prepare(xs: &Tensor, method: Resize, size: usize, clamp: bool, normalize: bool) -> Result<Tensor> {
    let xs = if clamp { xs.clamp(-1.0f32, 1.0f32)? } else { xs.clone() };
    if normalize {
        preprocess(&xs, method, size)
    } else {
        resize(&xs, method, size)
    }
}

//! StyleCLIP's identity loss: face crop of a generator image, ArcFace
//! embedding, `1 − cos` against the unedited image.
//!
//! Reference: orpatashnik/StyleCLIP `criteria/id_loss.py`
//! (<https://github.com/orpatashnik/StyleCLIP/blob/f87a47f7fc39e19a1f6c88293875692b303bf168/criteria/id_loss.py>).
//! e4e's `criteria/id_loss.py` uses the same crop and loss but expects 256x256
//! inputs (no internal pre-pool); for 256x256 images both agree.
//!
//! Every resize goes through [`crate::imageops::resample`], so the gradient
//! reaches the generator's pixels.

use candle_core::{Tensor, D};

use super::Backbone;
use crate::imageops::{resample, Filter};
use crate::Result;

/// Side StyleCLIP brings every image to before cropping.
pub const STYLECLIP_SIZE: usize = 256;
/// Rows `35..223` of the 256x256 image hold the face (StyleCLIP's crop).
pub const CROP_ROWS: std::ops::Range<usize> = 35..223;
/// Columns `32..220` of the 256x256 image hold the face.
pub const CROP_COLS: std::ops::Range<usize> = 32..220;

/// `IDLoss.extract_feats` without the network: `[N, 3, H, W]` generator
/// output (range about `[-1, 1]`, not clamped) to the `[N, 3, size, size]`
/// face crop the backbone takes (`size` = 112 for IR-SE50).
///
/// As in the reference
/// (<https://github.com/orpatashnik/StyleCLIP/blob/f87a47f7fc39e19a1f6c88293875692b303bf168/criteria/id_loss.py#L18-L24>),
/// only the height decides whether the image is first average-pooled to
/// 256x256 (an exact 4x4 mean for 1024² generators); then the crop
/// `[35:223, 32:220]` (188x188) is pooled with `AdaptiveAvgPool2d(size)`,
/// whose windows are uneven and overlap.
pub fn styleclip_preprocess(xs: &Tensor, size: usize) -> Result<Tensor> {
    let (_, _, h, _) = xs.dims4()?;
    let xs = if h != STYLECLIP_SIZE {
        resample(xs, Filter::AdaptiveAvg, (STYLECLIP_SIZE, STYLECLIP_SIZE))?
    } else {
        xs.clone()
    };
    let crop = xs.narrow(2, CROP_ROWS.start, CROP_ROWS.len())?.narrow(3, CROP_COLS.start, CROP_COLS.len())?;
    resample(&crop, Filter::AdaptiveAvg, (size, size))
}

/// How a generator image becomes the backbone's input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Crop {
    /// StyleCLIP's face crop ([`styleclip_preprocess`]).
    #[default]
    StyleClip,
    /// The whole image resized to the input size, as CLIPLSD
    /// (`cliplsd.py`: `torchvision.transforms.Resize(size=[112])` on the
    /// raw image; torchvision 0.10 resizes tensors bilinearly without
    /// antialias): [`whole_image_preprocess`].
    None,
}

/// CLIPLSD's identity input: the whole `[N, 3, H, W]` image resized
/// bilinearly (`align_corners=False`, no antialias) to `size × size`.
pub fn whole_image_preprocess(xs: &Tensor, size: usize) -> Result<Tensor> {
    resample(xs, Filter::Bilinear, (size, size))
}

/// `1 − ⟨reference_i, edited_i⟩` per row of two `[N, E]` unit-norm embedding
/// batches: `[N]`. Neither side is detached here.
pub fn id_loss_per_pair(reference: &Tensor, edited: &Tensor) -> Result<Tensor> {
    let dot = (reference * edited)?.sum(D::Minus1)?;
    Ok(dot.affine(-1.0, 1.0)?)
}

/// StyleCLIP's loss value from embeddings: `Σ_i (1 − ⟨r_i, e_i⟩) / N`, a
/// scalar, with the reference side detached (no gradient flows into it)
/// (<https://github.com/orpatashnik/StyleCLIP/blob/f87a47f7fc39e19a1f6c88293875692b303bf168/criteria/id_loss.py#L26-L37>).
pub fn id_loss_from_embeddings(reference: &Tensor, edited: &Tensor) -> Result<Tensor> {
    Ok(id_loss_per_pair(&reference.detach(), edited)?.mean_all()?)
}

/// StyleCLIP's `IDLoss`: an ArcFace backbone plus the face-crop
/// preprocessing.
///
/// `IDLoss.forward` also returns a "similarity improvement" that StyleCLIP
/// never updates (always 0); it is left out.
#[derive(Debug, Clone)]
pub struct IdLoss {
    backbone: Backbone,
    crop: Crop,
}

impl IdLoss {
    /// Wraps a backbone (its input size sets the crop's output size).
    pub fn new(backbone: Backbone) -> Self {
        Self { backbone, crop: Crop::StyleClip }
    }

    /// Sets how images are brought to the backbone (see [`Crop`]).
    pub fn with_crop(mut self, crop: Crop) -> Self {
        self.crop = crop;
        self
    }

    /// The wrapped backbone.
    pub fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    /// `IDLoss.extract_feats`: unit-norm embeddings `[N, E]` of generator images.
    pub fn extract_feats(&self, xs: &Tensor) -> Result<Tensor> {
        let size = self.backbone.config().input_size;
        let crop = match self.crop {
            Crop::StyleClip => styleclip_preprocess(xs, size)?,
            Crop::None => whole_image_preprocess(xs, size)?,
        };
        Ok(self.backbone.forward_outputs(&crop)?.embedding)
    }

    /// `IDLoss.forward(y_hat, y)[0]`: the mean over the batch of
    /// `1 − cos(R(y_i), R(y_hat_i))`, a scalar; `y` gets no gradient.
    pub fn forward(&self, y_hat: &Tensor, y: &Tensor) -> Result<Tensor> {
        let y_feats = self.extract_feats(&y.detach())?;
        self.forward_with_reference(y_hat, &y_feats)
    }

    /// [`Self::forward`] with the embeddings `[N, E]` of `y` already
    /// computed (they do not depend on the edit, so a caller may keep them).
    pub fn forward_with_reference(&self, y_hat: &Tensor, y_feats: &Tensor) -> Result<Tensor> {
        let y_hat_feats = self.extract_feats(y_hat)?;
        id_loss_from_embeddings(&y_feats.detach(), &y_hat_feats)
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A 512² image is first mean-pooled 2x2 to 256², so it crops like its
    /// pooled copy; a 256² image is cropped as is.
    #[test]
    fn larger_images_are_pooled_to_256_first() -> Result<()> {
        let dev = Device::Cpu;
        let big = Tensor::rand(-1f32, 1f32, (1, 3, 512, 512), &dev)?;
        let pooled = big.avg_pool2d(2)?;
        let a = styleclip_preprocess(&big, 112)?;
        let b = styleclip_preprocess(&pooled, 112)?;
        assert_eq!(a.dims(), &[1, 3, 112, 112]);
        let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "{diff}");
        // Output cell 0 averages crop rows 0..2 (188/112): image rows 35, 36.
        let x = Tensor::arange(0f32, 256., &dev)?.reshape((1, 1, 256, 1))?.broadcast_as((1, 3, 256, 256))?;
        let first = styleclip_preprocess(&x.contiguous()?, 112)?.get(0)?.get(0)?.get(0)?.get(0)?;
        assert_eq!(first.to_scalar::<f32>()?, 35.5);
        Ok(())
    }
}

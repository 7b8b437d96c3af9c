//! The built-in `segmentation` loss plugin: keeps an edit inside a face
//! part (hair, eyes, mouth, …) found by BiSeNet face parsing.
//!
//! # The loss
//!
//! With a region mask `s ∈ [0, 1]` per pixel and the change `Δ = x − x_edit`,
//!
//! ```text
//! ℓ = mean_n [ Σ_{c,h,w} (1 − s_n,h,w) · Δ²_n,c,h,w / (Σ_{c,h,w} Δ²_n,c,h,w + ε) ]
//! ```
//!
//! the share of the change that falls OUTSIDE the region, in `[0, 1]`:
//! 0 when every changed pixel is inside, 1 when all of the change is
//! outside. `space: features` computes the same on each of the generator's
//! feature maps (the mask resized to the map's resolution) and averages
//! over the maps, as LELSD's localisation score (Pajouheshgar et al. 2022,
//! "Optimizing Latent Space Directions For GAN-based Local Image Editing",
//! <https://arxiv.org/abs/2111.12583>, reference
//! <https://github.com/IVRL/LELSD>) and CLIPLSD do.
//!
//! **Why the complement.** The report measures localisation as the
//! in-region share `Σ s·Δ² / Σ Δ²` (higher is better). A loss is
//! minimised, so the term is `1 −` that share (up to `ε`): minimising the
//! in-region share itself would reward moving the edit out of the region.
//!
//! **ε.** The denominator is guarded with `ε` (`epsilon`, default `1e-6`):
//! at `α = 0` or a zero direction `x_edit = x`, `Δ = 0` and the ratio is
//! `0/0`. With the guard the loss is 0 there and its gradient is finite
//! (it is `0` at `Δ = 0`). For a real edit `ΣΔ²` is many orders of
//! magnitude larger (sums over `3·H·W` pixels in `[−1, 1]`), so `ε` changes
//! the value by a relative `ε/ΣΔ²`.
//!
//! # The masks
//!
//! BiSeNet parses `x` and `x_edit` at `size × size`
//! ([`bisenet::preprocess_generator_image`]); the mask of an image is the
//! summed probability of `classes` (`mask: soft`) or 1 where the most
//! likely class is one of them (`mask: hard`). The masks of `x` and
//! `x_edit` are combined per pixel by `max` (`union`), `min`
//! (`intersection`) or the mean (`average`), then resized to the image (or
//! feature map): area averaging ([`Filter::AdaptiveAvg`]) when shrinking, so
//! a cell's mask is the region's share of it, bilinear when enlarging.
//!
//! The masks are **detached**: they only say where change is allowed, and
//! the gradient flows through `Δ` alone. (Otherwise the cheapest way to
//! lower the loss would be to grow the region itself — e.g. paint hair over
//! the background.) The mask source is injectable
//! ([`SegmentationTerm::with_masks`]), so the formula is tested on hand-made
//! masks and the network path separately.
//!
//! Weights: `InitContext::weights["bisenet"]`, `79999_iter.pth` (or its
//! safetensors conversion). With no path — or no `bisenet` entry at all, as
//! `lsd-tui plugins check` passes — the seeded demo network
//! ([`bisenet::demo`] with [`DEMO_MODEL_SEED`]) is built, the same network
//! the host builds.
//!
//! See README.md for the commands and the parameter table.

// The term runs inside a training step: no host reads, so the step
// reads the device once, in the host (lsd-core's `readback`, clippy.toml).
#![deny(clippy::disallowed_methods)]
#![deny(missing_docs)]

use std::path::PathBuf;

use candle_core::{DType, Module, Tensor};
use lsd_core::demo::DEMO_MODEL_SEED;
use lsd_core::imageops::{resample, Filter};
use lsd_core::models::bisenet::{self, BiSeNet};
use lsd_core::plugin::{EditBatch, InitContext, LossTerm, Needs, OriginalCache, ParamInfo, Plugin};
use lsd_core::{Error, Result};
use serde::{Deserialize, Deserializer};

/// How the masks of `x` and `x_edit` are combined (`combine:`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Combine {
    /// `max(s_x, s_edit)`: change is allowed where either image has the part.
    #[default]
    Union,
    /// `min(s_x, s_edit)`: only where both have it.
    Intersection,
    /// `(s_x + s_edit) / 2`.
    Average,
}

/// How a parse becomes a mask (`mask:`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaskKind {
    /// The summed probabilities of the classes.
    #[default]
    Soft,
    /// 1 where the most likely class is one of the classes, else 0.
    Hard,
}

/// Where the change is measured (`space:`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Space {
    /// On the images.
    #[default]
    Pixels,
    /// On the generator's feature maps, averaged over the maps.
    Features,
}

/// How the change of a pixel (or feature-map cell) is measured over its
/// channels (`change:`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// `Σ_c Δ²` (LELSD's `L2`, which averages over the channels: the ratio
    /// is the same, ε aside).
    #[default]
    L2,
    /// `Σ_c |Δ|` (LELSD's `L1`, up to the same channel factor).
    L1,
    /// `1 − cos` of the channel vectors (LELSD's `cos`, torch's
    /// `cosine_similarity` with `eps = 1e-8`).
    Cosine,
}

/// What the term returns (`loss:`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossForm {
    /// `1 −` the in-region share: the out-of-region share, in `[0, 1]`.
    #[default]
    Complement,
    /// `−` the in-region share, weighted per layer: LELSD's and CLIPLSD's
    /// `localization_loss` (−1 is perfect localisation).
    Negative,
}

/// Which side of the mask the edit belongs to (`region:`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Region {
    /// Inside the classes.
    #[default]
    Foreground,
    /// Outside them (LELSD's `mode='background'`: the indicator is `1 − s`).
    Background,
}

/// How the mask is brought to a feature map's resolution (`mask_resize:`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaskResize {
    /// From the parse to each map directly: area averaging when shrinking,
    /// bilinear when enlarging ([`resize_mask`]).
    #[default]
    Area,
    /// LELSD's cascade ([`cascade_masks`]): maps from the finest down, the
    /// mask resized bilinearly with `align_corners=True` from the previous
    /// resolution's mask, starting at the parse (512 for BiSeNet).
    Cascade,
}

/// A face part, checked against [`bisenet::CLASS_NAMES`] (and LELSD's
/// aliases) while the parameters are parsed, so that an unknown name is
/// reported with its line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FacePart(pub usize);

impl<'de> Deserialize<'de> for FacePart {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        bisenet::class_index(&name).map(FacePart).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown face part '{name}' in `classes`; use one of: {}",
                valid_class_names()
            ))
        })
    }
}

/// The names `classes` accepts, comma separated.
pub fn valid_class_names() -> String {
    let mut names: Vec<&str> = bisenet::CLASS_NAMES.to_vec();
    names.extend(["eyeglass", "earrings", "necklace"]);
    names.join(", ")
}

fn default_classes() -> Vec<FacePart> {
    vec![FacePart(17)] // hair
}

/// The plugin's parameters, as written under the term in a recipe.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// The face parts the edit may change.
    pub classes: Vec<FacePart>,
    /// How the masks of `x` and `x_edit` are combined.
    pub combine: Combine,
    /// Soft or hard masks.
    pub mask: MaskKind,
    /// Pixels or generator feature maps.
    pub space: Space,
    /// The side BiSeNet parses at (512 for the real network).
    pub size: usize,
    /// Guard of the denominator (see the module docs).
    pub epsilon: f64,
    /// How the change is measured over the channels.
    pub change: Change,
    /// `complement` (`1 −` the in-region share) or `negative` (LELSD's `−`).
    pub loss: LossForm,
    /// Whether the edit belongs inside (`foreground`) or outside the parts.
    pub region: Region,
    /// `space: features`: the feature maps used, 0-based (map `i` is the
    /// output of the `i + 1`-th styled conv, LELSD's `layer_{i+1}`;
    /// default: all, LELSD's layers 1..17 at 1024²).
    pub layers: Option<Vec<usize>>,
    /// `space: features`: a weight per used map (default equal), divided
    /// by their sum as in LELSD.
    pub layer_weights: Option<Vec<f64>>,
    /// `space: features`: how the mask reaches each map's resolution.
    pub mask_resize: MaskResize,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            classes: default_classes(),
            combine: Combine::Union,
            mask: MaskKind::Soft,
            space: Space::Pixels,
            size: 512,
            epsilon: 1e-6,
            change: Change::L2,
            loss: LossForm::Complement,
            region: Region::Foreground,
            layers: None,
            layer_weights: None,
            mask_resize: MaskResize::Area,
        }
    }
}

impl Params {
    /// Checks the values serde cannot.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(format!("parameters of plugin 'segmentation': {msg}")));
        if self.classes.is_empty() {
            return bad(format!("`classes` is empty; name at least one face part: {}", valid_class_names()));
        }
        if self.size < 32 {
            return bad(format!("`size` is {}, it must be at least 32 (BiSeNet downsamples 32 times)", self.size));
        }
        // "Is it in range" rather than "out of range", so NaN is rejected.
        if !(self.epsilon > 0.0 && self.epsilon.is_finite()) {
            return bad(format!("`epsilon` is {}, it must be > 0", self.epsilon));
        }
        if let Some(layers) = &self.layers {
            if layers.is_empty() {
                return bad("`layers` is empty; remove it to use every feature map".into());
            }
        }
        if let Some(w) = &self.layer_weights {
            if w.iter().any(|v| !(v.is_finite() && *v >= 0.0)) || w.iter().sum::<f64>() <= 0.0 {
                return bad(format!("`layer_weights` {w:?}: expected weights >= 0 with a positive sum"));
            }
            let n = self.layers.as_ref().map(Vec::len);
            if n.is_some_and(|n| n != w.len()) {
                return bad(format!(
                    "`layer_weights` has {} weights for the {} `layers`; give one per layer",
                    w.len(),
                    n.unwrap_or(0)
                ));
            }
        }
        let features_only =
            self.layers.is_some() || self.layer_weights.is_some() || self.mask_resize != MaskResize::Area;
        if features_only && self.space != Space::Features {
            return bad(
                "`layers`, `layer_weights` and `mask_resize` apply to `space: features`; set it or remove them".into(),
            );
        }
        Ok(())
    }
}

/// Where the term's masks come from.
#[derive(Debug, Clone)]
pub enum MaskSource {
    /// BiSeNet parses `x` and `x_edit` on every call.
    Network(Box<BiSeNet>),
    /// Given masks `[N, 1, h, w]` in `[0, 1]` of `x` and `x_edit`.
    Fixed {
        /// The mask of the originals.
        x: Tensor,
        /// The mask of the edited images.
        x_edit: Tensor,
    },
}

/// The `segmentation` term.
#[derive(Debug, Clone)]
pub struct SegmentationTerm {
    params: Params,
    classes: Vec<usize>,
    source: MaskSource,
    /// BiSeNet's mask of each original: it does not change with the edit.
    mask_x: OriginalCache,
}

/// The weights path the host gave for `key`; `None` (demo weights) when it
/// gave `null` or no entry at all.
fn weights_path(context: &InitContext, key: &str) -> Option<PathBuf> {
    context.weights.get(key).cloned().flatten()
}

/// Resizes a mask `[N, 1, h, w]` to `(height, width)`: area averaging when
/// shrinking both axes, bilinear otherwise.
pub fn resize_mask(mask: &Tensor, (height, width): (usize, usize)) -> Result<Tensor> {
    let (_, _, h, w) = mask.dims4()?;
    if (h, w) == (height, width) {
        return Ok(mask.clone());
    }
    let filter = if height <= h && width <= w { Filter::AdaptiveAvg } else { Filter::Bilinear };
    resample(mask, filter, (height, width))
}

/// LELSD's mask cascade (`lelsd.py`, `fit`): for maps of resolutions
/// `sides` (any order), the mask of each, walking from the finest side down;
/// when the side changes, the mask is the previous one resized bilinearly
/// with `align_corners=True` (the parse itself at the parse's side, and the
/// parse is the start). Returned in the order of `sides`.
pub fn cascade_masks(mask: &Tensor, sides: &[usize]) -> Result<Vec<Tensor>> {
    let (_, _, h, _) = mask.dims4()?;
    let mut order: Vec<usize> = (0..sides.len()).collect();
    order.sort_by(|&a, &b| sides[b].cmp(&sides[a]));
    let mut out: Vec<Option<Tensor>> = vec![None; sides.len()];
    let (mut current, mut last) = (mask.clone(), None);
    for i in order {
        let side = sides[i];
        if last != Some(side) {
            current =
                if side == h { mask.clone() } else { resample(&current, Filter::BilinearAlignCorners, (side, side))? };
        }
        last = Some(side);
        out[i] = Some(current.clone());
    }
    Ok(out.into_iter().map(|m| m.expect("every side visited")).collect())
}

/// The per-cell change `[N, h, w]` of `[N, C, h, w]` tensors.
pub fn change_map(a: &Tensor, b: &Tensor, how: Change) -> Result<Tensor> {
    let d = (a - b)?;
    Ok(match how {
        Change::L2 => d.sqr()?.sum(1)?,
        Change::L1 => d.abs()?.sum(1)?,
        Change::Cosine => {
            // torch: x·y / max(‖x‖·‖y‖, eps), eps = 1e-8.
            let dot = (a * b)?.sum(1)?;
            let na = a.sqr()?.sum(1)?.sqrt()?;
            let nb = b.sqr()?.sum(1)?.sqrt()?;
            let cos = (dot / (na * nb)?.clamp(1e-8, f64::INFINITY)?)?;
            cos.affine(-1.0, 1.0)?
        }
    })
}

/// The in-region share `Σ s·D / (Σ D + ε)` per sample, `[N]`, of the change
/// `D` ([`change_map`]) with the indicator `s` `[N, 1, h, w]` already at the
/// tensors' resolution.
pub fn in_region_share(a: &Tensor, b: &Tensor, indicator: &Tensor, how: Change, epsilon: f64) -> Result<Tensor> {
    let d = change_map(a, b, how)?;
    let s = indicator.detach().to_dtype(a.dtype())?.squeeze(1)?;
    let inside = (&d * s)?.sum((1, 2))?;
    let total = (d.sum((1, 2))? + epsilon)?;
    Ok((inside / total)?)
}

/// Combines two detached masks per pixel.
pub fn combine(mask_x: &Tensor, mask_edit: &Tensor, how: Combine) -> Result<Tensor> {
    Ok(match how {
        Combine::Union => mask_x.maximum(mask_edit)?,
        Combine::Intersection => mask_x.minimum(mask_edit)?,
        Combine::Average => ((mask_x + mask_edit)? * 0.5)?,
    })
}

/// The out-of-region share `mean_n Σ(1 − s)·(a − b)² / (Σ(a − b)² + ε)` of
/// `[N, C, H, W]` tensors, with `mask` `[N, 1, h, w]` (detached here, and
/// resized with [`resize_mask`]). Differentiable with respect to `a` and `b`.
pub fn out_of_region_share(a: &Tensor, b: &Tensor, mask: &Tensor, epsilon: f64) -> Result<Tensor> {
    let (_, _, h, w) = a.dims4()?;
    let s = resize_mask(&mask.detach().to_dtype(a.dtype())?, (h, w))?;
    let d2 = (a - b)?.sqr()?;
    let outside = d2.broadcast_mul(&s.affine(-1.0, 1.0)?)?.sum((1, 2, 3))?;
    let total = (d2.sum((1, 2, 3))? + epsilon)?;
    Ok((outside / total)?.mean_all()?)
}

impl SegmentationTerm {
    /// The term with a ready network.
    pub fn with_network(params: Params, net: BiSeNet) -> Result<Self> {
        params.validate()?;
        let classes = params.classes.iter().map(|c| c.0).collect();
        Ok(Self { params, classes, source: MaskSource::Network(Box::new(net)), mask_x: OriginalCache::default() })
    }

    /// The term with given masks `[N, 1, h, w]` of `x` and `x_edit` instead
    /// of BiSeNet's (for tests with hand-made masks, or a host that parses
    /// the images elsewhere); `classes`, `mask` and `size` are then unused.
    pub fn with_masks(params: Params, mask_x: Tensor, mask_edit: Tensor) -> Result<Self> {
        params.validate()?;
        if mask_x.dims() != mask_edit.dims() || mask_x.rank() != 4 || mask_x.dim(1)? != 1 {
            return Err(Error::BadShape {
                name: "segmentation masks".into(),
                expected: format!("[N, 1, h, w] for both, like the first {:?}", mask_x.dims()),
                got: mask_edit.dims().to_vec(),
            });
        }
        let classes = params.classes.iter().map(|c| c.0).collect();
        let source = MaskSource::Fixed { x: mask_x.detach(), x_edit: mask_edit.detach() };
        Ok(Self { params, classes, source, mask_x: OriginalCache::default() })
    }

    /// The parameters.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The mask of `[N, 3, H, W]` images (`[-1, 1]`): `[N, 1, size, size]`,
    /// f32, detached. Errors for a term built [`with_masks`](Self::with_masks).
    pub fn parse_mask(&self, images: &Tensor) -> Result<Tensor> {
        let MaskSource::Network(net) = &self.source else {
            return Err(Error::Config("segmentation: this term has fixed masks".into()));
        };
        let size = (self.params.size, self.params.size);
        let input = bisenet::preprocess_generator_image(&images.detach().to_dtype(DType::F32)?, size)?;
        let logits = net.forward(&input)?;
        let mask = match self.params.mask {
            MaskKind::Soft => bisenet::soft_mask(&bisenet::probabilities(&logits)?, &self.classes)?,
            MaskKind::Hard => bisenet::hard_mask(&logits, &self.classes)?,
        };
        Ok(mask.unsqueeze(1)?.detach())
    }

    /// The combined, detached mask of the batch, `[N, 1, h, w]`.
    pub fn mask(&self, batch: &EditBatch) -> Result<Tensor> {
        let (mx, me) = match &self.source {
            MaskSource::Network(_) => {
                (self.mask_x.get_or_compute(batch, |x| Ok(self.parse_mask(x)?))?, self.parse_mask(&batch.x_edit)?)
            }
            MaskSource::Fixed { x, x_edit } => (x.clone(), x_edit.clone()),
        };
        Ok(combine(&mx, &me, self.params.combine)?.detach())
    }
}

impl SegmentationTerm {
    /// `true` when every setting is the original formula's
    /// ([`out_of_region_share`], equal map weights, area resize).
    fn classic(&self) -> bool {
        let p = &self.params;
        p.change == Change::L2
            && p.loss == LossForm::Complement
            && p.region == Region::Foreground
            && p.layers.is_none()
            && p.layer_weights.is_none()
            && p.mask_resize == MaskResize::Area
    }

    /// The general form: `Σ_l w_l · share_l` over the used maps (or the
    /// image), then `1 −` it or `−` it, averaged over the batch.
    fn weighted_share_loss(&self, batch: &EditBatch, mask: &Tensor) -> Result<Tensor> {
        let p = &self.params;
        let pairs: Vec<(Tensor, Tensor)> = match p.space {
            Space::Pixels => vec![(batch.x.clone(), batch.x_edit.clone())],
            Space::Features => {
                let maps = batch.features.as_ref().filter(|f| !f.x_edit.is_empty()).ok_or_else(no_features)?;
                let all: Vec<usize> = (0..maps.x_edit.len()).collect();
                let used = p.layers.clone().unwrap_or(all);
                if let Some(&bad) = used.iter().find(|&&l| l >= maps.x_edit.len()) {
                    return Err(Error::Config(format!(
                        "plugin 'segmentation': `layers` names feature map {bad}, and the generator has {} (0..={})",
                        maps.x_edit.len(),
                        maps.x_edit.len() - 1
                    )));
                }
                used.iter().map(|&l| (maps.x[l].clone(), maps.x_edit[l].clone())).collect()
            }
        };
        let weights: Vec<f64> = match &p.layer_weights {
            Some(w) if w.len() != pairs.len() => {
                return Err(Error::Config(format!(
                    "plugin 'segmentation': {} `layer_weights` for {} feature maps; give one per map",
                    w.len(),
                    pairs.len()
                )))
            }
            Some(w) => w.iter().map(|v| v / w.iter().sum::<f64>()).collect(),
            None => vec![1.0 / pairs.len() as f64; pairs.len()],
        };
        let mask = mask.detach().to_dtype(batch.x_edit.dtype())?;
        let sides: Vec<usize> = pairs.iter().map(|(a, _)| a.dim(2)).collect::<candle_core::Result<_>>()?;
        let masks = match p.mask_resize {
            MaskResize::Cascade => cascade_masks(&mask, &sides)?,
            MaskResize::Area => {
                pairs.iter().map(|(a, _)| resize_mask(&mask, (a.dim(2)?, a.dim(3)?))).collect::<Result<_>>()?
            }
        };
        let mut score: Option<Tensor> = None;
        for (((a, b), m), w) in pairs.iter().zip(&masks).zip(&weights) {
            if *w == 0.0 {
                continue;
            }
            let indicator = match p.region {
                Region::Foreground => m.clone(),
                Region::Background => m.affine(-1.0, 1.0)?,
            };
            let share = (in_region_share(a, b, &indicator, p.change, p.epsilon)? * *w)?;
            score = Some(match score {
                Some(t) => (t + share)?,
                None => share,
            });
        }
        let score = score.ok_or_else(|| Error::Config("plugin 'segmentation': every layer weight is 0".into()))?;
        let per_sample = match p.loss {
            LossForm::Complement => score.affine(-1.0, 1.0)?,
            LossForm::Negative => score.neg()?,
        };
        Ok(per_sample.mean_all()?)
    }
}

fn no_features() -> Error {
    Error::Config(
        "plugin 'segmentation' with `space: features` needs the generator's feature maps, and the batch has none"
            .into(),
    )
}

impl LossTerm for SegmentationTerm {
    fn loss(&self, batch: &EditBatch) -> lsd_plugin_api::Result<Tensor> {
        let mask = self.mask(batch)?;
        if !self.classic() {
            return Ok(self.weighted_share_loss(batch, &mask)?);
        }
        let eps = self.params.epsilon;
        match self.params.space {
            Space::Pixels => Ok(out_of_region_share(&batch.x, &batch.x_edit, &mask, eps)?),
            Space::Features => {
                let maps = batch.features.as_ref().filter(|f| !f.x_edit.is_empty()).ok_or_else(|| {
                    Error::Config(
                        "plugin 'segmentation' with `space: features` needs the generator's \
                             feature maps, and the batch has none"
                            .into(),
                    )
                })?;
                let mut total: Option<Tensor> = None;
                for (fx, fe) in maps.x.iter().zip(&maps.x_edit) {
                    let layer = out_of_region_share(fx, fe, &mask, eps)?;
                    total = Some(match total {
                        Some(t) => (t + layer)?,
                        None => layer,
                    });
                }
                let total = total.expect("at least one feature map, checked above");
                Ok((total / maps.x_edit.len() as f64)?)
            }
        }
    }

    fn needs(&self) -> Needs {
        Needs { features: self.params.space == Space::Features }
    }
}

impl Plugin for SegmentationTerm {
    const NAME: &'static str = "segmentation";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str =
        "share of the change outside BiSeNet face parts: Σ(1−s)·|x−x_edit|² / Σ|x−x_edit|²";
    type Params = Params;

    fn params() -> Vec<ParamInfo> {
        vec![
            ParamInfo::new(
                "classes",
                "list of face parts",
                "[hair]",
                "parts the edit may change (background, skin, l_brow, …, hair, hat)",
            ),
            ParamInfo::new(
                "combine",
                "union | intersection | average",
                "union",
                "masks of x and x_edit combined by max, min or mean",
            ),
            ParamInfo::new("mask", "soft | hard", "soft", "class probabilities or argmax"),
            ParamInfo::new(
                "space",
                "pixels | features",
                "pixels",
                "measure the change on the images or the generator's feature maps",
            ),
            ParamInfo::new("size", "integer ≥ 32", "512", "side BiSeNet parses at"),
            ParamInfo::new("epsilon", "f64 > 0", "1e-6", "added to the denominator ΣΔ²"),
            ParamInfo::new(
                "change",
                "l2 | l1 | cosine",
                "l2",
                "change per cell over the channels: ΣΔ², Σ|Δ| or 1 − cos",
            ),
            ParamInfo::new("loss", "complement | negative", "complement", "1 − in-region share, or −share (LELSD)"),
            ParamInfo::new(
                "region",
                "foreground | background",
                "foreground",
                "the edit belongs inside or outside the parts",
            ),
            ParamInfo::new(
                "layers",
                "list of map indices",
                "all",
                "space: features: the maps used (LELSD's layer i+1)",
            ),
            ParamInfo::new(
                "layer_weights",
                "list of f64 ≥ 0",
                "equal",
                "space: features: weight per used map, normalised to sum 1",
            ),
            ParamInfo::new(
                "mask_resize",
                "area | cascade",
                "area",
                "space: features: direct area/bilinear, or LELSD's 2× align_corners cascade",
            ),
        ]
    }

    fn new(params: Params, context: &InitContext) -> lsd_plugin_api::Result<Self> {
        // The networks run in this library's own lsd-core: use the host's precision.
        lsd_core::plugin::adopt_precision(context)?;
        params.validate()?;
        let device = context.device()?;
        let net = match weights_path(context, "bisenet") {
            Some(path) => BiSeNet::load(&path, &device)?,
            None => bisenet::demo(DEMO_MODEL_SEED, &device)?,
        };
        Ok(Self::with_network(params, net)?)
    }
}

lsd_plugin_api::export_plugin!(SegmentationTerm);

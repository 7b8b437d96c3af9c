//! The built-in `identity` loss plugin: keeps the person recognisable by
//! penalising the change of their ArcFace embedding.
//!
//! ```text
//! ℓ = mean_n [ 1 − cos(R(x_n), R(x_edit_n)) ]
//! ```
//!
//! `R` is ArcFace IR-SE50 (Deng et al. 2019, "ArcFace: Additive Angular
//! Margin Loss for Deep Face Recognition", <https://arxiv.org/abs/1801.07698>)
//! applied to StyleCLIP's face crop (pool to 256², rows 35..223, columns
//! 32..220, pool to 112²), as StyleCLIP's identity loss
//! ([`criteria/id_loss.py`](https://github.com/orpatashnik/StyleCLIP/blob/f87a47f7fc39e19a1f6c88293875692b303bf168/criteria/id_loss.py)).
//! The original `x` is detached: only the edited image is pushed back
//! towards the original identity. The network, the crop and the loss are
//! [`lsd_core::models::arcface`] ([`IdLoss`]); this crate exports them as a
//! dynamic library, exactly like a user's plugin (see `docs/plugins.md`).
//!
//! Weights: `InitContext::weights["arcface"]`, `model_ir_se50.pth` (or its
//! safetensors conversion). With no path — or no `arcface` entry at all, as
//! `lsd-tui plugins check` passes — the seeded demo network
//! ([`lsd_core::models::arcface::demo`] with [`DEMO_MODEL_SEED`]) is built,
//! the same network the host builds.
//!
//! See README.md for the commands.

// The term runs inside a training step: no host reads, so the step
// reads the device once, in the host (lsd-core's `readback`, clippy.toml).
#![deny(clippy::disallowed_methods)]
#![deny(missing_docs)]

use std::path::PathBuf;

use candle_core::{DType, Tensor};
use lsd_core::demo::DEMO_MODEL_SEED;
use lsd_core::models::arcface::{self, Backbone, IdLoss};
use lsd_core::plugin::{EditBatch, InitContext, LossTerm, OriginalCache, ParamInfo, Plugin};
use serde::Deserialize;

/// Which input the backbone sees (`crop:`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CropMode {
    /// StyleCLIP's face crop (`criteria/id_loss.py`).
    #[default]
    Styleclip,
    /// The whole image resized to 112² (CLIPLSD's `cliplsd.py`). λ_ID is not
    /// comparable between the two: the uncropped image holds background.
    None,
}

/// The plugin's parameters (a misspelt key is an error naming the plugin
/// rather than silently ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// StyleCLIP's face crop or the whole image.
    pub crop: CropMode,
}

/// The `identity` term.
#[derive(Debug, Clone)]
pub struct IdentityTerm {
    id_loss: IdLoss,
    /// `R(x)` per original: the unedited faces' embeddings do not change.
    reference: OriginalCache,
}

/// The weights path the host gave for `key`; `None` (demo weights) when it
/// gave `null` or no entry at all.
fn weights_path(context: &InitContext, key: &str) -> Option<PathBuf> {
    context.weights.get(key).cloned().flatten()
}

impl IdentityTerm {
    /// The term around a ready backbone.
    pub fn with_backbone(backbone: Backbone) -> Self {
        Self { id_loss: IdLoss::new(backbone), reference: OriginalCache::default() }
    }

    /// The wrapped loss.
    pub fn id_loss(&self) -> &IdLoss {
        &self.id_loss
    }
}

impl LossTerm for IdentityTerm {
    fn loss(&self, batch: &EditBatch) -> lsd_plugin_api::Result<Tensor> {
        // The network is f32; a caller's f64 batch is cast there and back
        // (both casts are differentiable). `IdLoss::forward` detaches `x`.
        let reference = self
            .reference
            .get_or_compute(batch, |x| Ok(self.id_loss.extract_feats(&x.detach().to_dtype(DType::F32)?)?))?;
        let x_edit = batch.x_edit.to_dtype(DType::F32)?;
        Ok(self.id_loss.forward_with_reference(&x_edit, &reference)?.to_dtype(batch.x_edit.dtype())?)
    }
}

impl Plugin for IdentityTerm {
    const NAME: &'static str = "identity";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str =
        "1 − cos(R(x), R(x_edit)): ArcFace IR-SE50 on StyleCLIP's face crop keeps the identity";
    type Params = Params;

    fn params() -> Vec<ParamInfo> {
        vec![ParamInfo::new(
            "crop",
            "styleclip | none",
            "styleclip",
            "StyleCLIP's face crop, or the whole image resized to 112² (CLIPLSD); λ differs between them",
        )]
    }

    fn new(params: Params, context: &InitContext) -> lsd_plugin_api::Result<Self> {
        // The networks run in this library's own lsd-core: use the host's precision.
        lsd_core::plugin::adopt_precision(context)?;
        let device = context.device()?;
        let backbone = match weights_path(context, "arcface") {
            Some(path) => Backbone::from_state_dict(lsd_core::torch::load(&path)?, &device)?,
            None => arcface::demo(DEMO_MODEL_SEED, &device)?,
        };
        let crop = match params.crop {
            CropMode::Styleclip => arcface::Crop::StyleClip,
            CropMode::None => arcface::Crop::None,
        };
        Ok(Self { id_loss: IdLoss::new(backbone).with_crop(crop), reference: OriginalCache::default() })
    }
}

lsd_plugin_api::export_plugin!(IdentityTerm);

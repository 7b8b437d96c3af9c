//! Example loss plugin: keeps the per-channel colour statistics (mean and
//! standard deviation of R, G and B) of the edited image close to those of
//! the original.
//!
//! A text-driven edit such as "gray hair" tends to leak into a global tint
//! (CLIP rewards a greyer picture overall); this term penalises such shifts
//! while leaving local changes, which barely move the image-wide
//! statistics, almost free. It is the mean/std matching of AdaIN (Huang &
//! Belongie 2017, <https://arxiv.org/abs/1703.06868>) used as a loss:
//!
//! ```text
//! ℓ = mean_weight · mean_{n,c} (μ_nc(x_edit) − μ_nc(x))²
//!   + std_weight  · mean_{n,c} (σ_nc(x_edit) − σ_nc(x))²,   σ = sqrt(var + epsilon)
//! ```
//!
//! See README.md for how to build, list, check and use it.

use candle_core::{Tensor, D};
use lsd_plugin_api::{EditBatch, Error, InitContext, LossTerm, ParamInfo, Plugin, Result};
use serde::Deserialize;

/// The plugin's parameters, as written under the term in a recipe.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// Weight of the squared difference of channel means.
    pub mean_weight: f64,
    /// Weight of the squared difference of channel standard deviations.
    pub std_weight: f64,
    /// Added to the variance before the square root, which keeps the
    /// gradient finite on flat images.
    pub epsilon: f64,
}

impl Default for Params {
    fn default() -> Self {
        Self { mean_weight: 1.0, std_weight: 1.0, epsilon: 1e-6 }
    }
}

/// The colour-statistics term.
#[derive(Debug, Clone)]
pub struct ColourStats {
    params: Params,
}

/// Channel means and standard deviations of `[N, C, H, W]` images, `[N, C]`
/// each.
fn channel_stats(xs: &Tensor, epsilon: f64) -> Result<(Tensor, Tensor)> {
    let (n, c, h, w) = xs.dims4()?;
    let flat = xs.reshape((n, c, h * w))?;
    let mean = flat.mean_keepdim(D::Minus1)?;
    let var = flat.broadcast_sub(&mean)?.sqr()?.mean(D::Minus1)?;
    Ok((mean.squeeze(D::Minus1)?, (var + epsilon)?.sqrt()?))
}

impl LossTerm for ColourStats {
    fn loss(&self, batch: &EditBatch) -> Result<Tensor> {
        let (mean_x, std_x) = channel_stats(&batch.x, self.params.epsilon)?;
        let (mean_e, std_e) = channel_stats(&batch.x_edit, self.params.epsilon)?;
        let mean_term = (mean_e - mean_x)?.sqr()?.mean_all()?;
        let std_term = (std_e - std_x)?.sqr()?.mean_all()?;
        Ok(((mean_term * self.params.mean_weight)? + (std_term * self.params.std_weight)?)?)
    }
}

impl Plugin for ColourStats {
    const NAME: &'static str = "colour-stats";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str =
        "keeps the per-channel mean and standard deviation of the edited image close to the original's";
    type Params = Params;

    fn params() -> Vec<ParamInfo> {
        vec![
            ParamInfo::new("mean_weight", "f64 ≥ 0", "1.0", "weight of the channel-mean difference"),
            ParamInfo::new("std_weight", "f64 ≥ 0", "1.0", "weight of the channel-std difference"),
            ParamInfo::new("epsilon", "f64 > 0", "1e-6", "added to the variance before the square root"),
        ]
    }

    fn new(params: Params, _context: &InitContext) -> Result<Self> {
        // Written as "is it in range" rather than "is it out of range" so
        // that NaN is rejected too.
        let checks = [
            ("mean_weight", params.mean_weight, params.mean_weight >= 0.0, "≥ 0"),
            ("std_weight", params.std_weight, params.std_weight >= 0.0, "≥ 0"),
            ("epsilon", params.epsilon, params.epsilon > 0.0, "> 0"),
        ];
        for (field, value, in_range, want) in checks {
            if !in_range {
                return Err(Error::Config(format!("colour-stats: '{field}' is {value}, it must be {want}")));
            }
        }
        Ok(Self { params })
    }
}

lsd_plugin_api::export_plugin!(ColourStats);

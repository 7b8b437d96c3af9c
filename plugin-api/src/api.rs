//! What a plugin author writes against: [`LossTerm`], [`Plugin`],
//! [`EditBatch`] and the small data types around them.
//!
//! The same types are used on both sides of the boundary — the host builds
//! an [`EditBatch`] of its own tensors, the adapter in the plugin rebuilds
//! one of the plugin's tensors — but never does a value of one side reach
//! the other: only plain data crosses (see [`super::abi`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A differentiable loss term.
///
/// `loss` returns a scalar (a tensor with one element). It may use any
/// field of the batch; the gradients with respect to `x_edit`, `w`, `u` and
/// the feature maps of `x_edit` are taken by the caller, so the term only
/// computes the forward pass, with ordinary Candle code.
pub trait LossTerm: Send + Sync {
    /// The loss on `batch`, a scalar.
    fn loss(&self, batch: &EditBatch) -> Result<Tensor>;

    /// What the term needs beyond the images, latents and directions.
    /// Asked once, when the term is loaded.
    fn needs(&self) -> Needs {
        Needs::default()
    }
}

/// Optional inputs a term asks for when it is loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Needs {
    /// The generator's intermediate feature maps of `x` and `x_edit`
    /// ([`EditBatch::features`]); copying them costs time, so they are only
    /// sent to terms that ask.
    pub features: bool,
}

/// Intermediate feature maps of the generator, in the order the engine
/// defines (coarse to fine), one `[N, C_j, H_j, W_j]` tensor per layer.
#[derive(Debug, Clone)]
pub struct FeatureMaps {
    /// Feature maps of the original images (no gradient).
    pub x: Vec<Tensor>,
    /// Feature maps of the edited images.
    pub x_edit: Vec<Tensor>,
}

/// One step's worth of edited samples.
///
/// `N` samples, `K` directions. Sample `i` is `x_edit[i] = G(w[i] +
/// alpha[i] · u[direction[i]])` and its original is `x[i] = G(w[i])`.
#[derive(Debug, Clone)]
pub struct EditBatch {
    /// Original images `[N, 3, H, W]`, in `[-1, 1]`. Never differentiated.
    pub x: Tensor,
    /// Edited images `[N, 3, H, W]`, in `[-1, 1]`.
    pub x_edit: Tensor,
    /// Latents `[N, L, D]` (W+).
    pub w: Tensor,
    /// Directions `[K, L, D]`.
    pub u: Tensor,
    /// Edit strength per sample.
    pub alpha: Vec<f32>,
    /// The row of `u` that edited each sample.
    pub direction: Vec<usize>,
    /// The text prompt.
    pub prompt: String,
    /// The generator's feature maps, when the term asked for them.
    pub features: Option<FeatureMaps>,
    /// One key per sample naming its original: two samples (in this call or
    /// any other) with the same key have bit-identical originals `x` (and
    /// feature maps of `x`). Keys fold in everything `x` depends on
    /// (generator weights, truncation, noise, latent), so a term may cache
    /// what it computes from `x` under them ([`OriginalCache`]). `None` when
    /// the caller cannot say.
    pub keys: Option<Vec<u64>>,
}

impl EditBatch {
    /// A batch with one direction (`K = 1`) and no feature maps; `alpha`
    /// gives `N`.
    pub fn new(
        x: Tensor,
        x_edit: Tensor,
        w: Tensor,
        u: Tensor,
        alpha: Vec<f32>,
        prompt: impl Into<String>,
    ) -> Result<Self> {
        let direction = vec![0; alpha.len()];
        let batch = Self { x, x_edit, w, u, alpha, direction, prompt: prompt.into(), features: None, keys: None };
        batch.validate()?;
        Ok(batch)
    }

    /// The number of samples `N`.
    pub fn len(&self) -> usize {
        self.alpha.len()
    }

    /// Whether the batch has no samples.
    pub fn is_empty(&self) -> bool {
        self.alpha.is_empty()
    }

    /// Checks that the shapes agree with each other.
    pub fn validate(&self) -> Result<()> {
        let n = self.alpha.len();
        let bad = |name: &str, expected: String, t: &Tensor| Error::BadShape {
            name: format!("batch.{name}"),
            expected,
            got: t.dims().to_vec(),
        };
        let image = |name: &str, t: &Tensor| -> Result<()> {
            match t.dims() {
                [b, 3, _, _] if *b == n => Ok(()),
                _ => Err(bad(name, format!("[{n}, 3, H, W]"), t)),
            }
        };
        image("x", &self.x)?;
        image("x_edit", &self.x_edit)?;
        if self.x.dims() != self.x_edit.dims() {
            return Err(bad("x_edit", format!("{:?} like x", self.x.dims()), &self.x_edit));
        }
        let (l, d) = match self.w.dims() {
            [b, l, d] if *b == n => (*l, *d),
            _ => return Err(bad("w", format!("[{n}, L, D]"), &self.w)),
        };
        let k = match self.u.dims() {
            [k, ul, ud] if *ul == l && *ud == d && *k > 0 => *k,
            _ => return Err(bad("u", format!("[K, {l}, {d}]"), &self.u)),
        };
        if self.direction.len() != n {
            return Err(Error::Config(format!("batch.direction has {} entries for {n} samples", self.direction.len())));
        }
        if let Some(i) = self.direction.iter().position(|&j| j >= k) {
            return Err(Error::Config(format!(
                "batch.direction[{i}] = {} but there are only {k} directions",
                self.direction[i]
            )));
        }
        if let Some(keys) = &self.keys {
            if keys.len() != n {
                return Err(Error::Config(format!("batch.keys has {} entries for {n} samples", keys.len())));
            }
        }
        if let Some(f) = &self.features {
            if f.x.len() != f.x_edit.len() {
                return Err(Error::Config(format!(
                    "batch.features has {} maps of x but {} of x_edit",
                    f.x.len(),
                    f.x_edit.len()
                )));
            }
            for (j, (a, b)) in f.x.iter().zip(&f.x_edit).enumerate() {
                if a.dims() != b.dims() || a.dims().first() != Some(&n) {
                    return Err(bad(&format!("features.x_edit[{j}]"), format!("{:?}", a.dims()), b));
                }
            }
        }
        Ok(())
    }

    /// `α` as a `[N, 1, 1]` tensor of `w`'s dtype and device.
    pub fn alpha_tensor(&self) -> Result<Tensor> {
        let n = self.alpha.len();
        Ok(Tensor::from_slice(&self.alpha, (n, 1, 1), self.w.device())?.to_dtype(self.w.dtype())?)
    }

    /// The direction of each sample, `[N, L, D]` (rows of `u`, repeated).
    pub fn u_per_sample(&self) -> Result<Tensor> {
        let ids: Vec<u32> = self.direction.iter().map(|&j| j as u32).collect();
        let ids = Tensor::from_vec(ids, self.direction.len(), self.u.device())?;
        Ok(self.u.index_select(&ids, 0)?)
    }

    /// The edited latents `w + α · u[direction]`, `[N, L, D]`,
    /// differentiable with respect to `w` and `u`.
    pub fn w_edit(&self) -> Result<Tensor> {
        Ok((&self.w + self.u_per_sample()?.broadcast_mul(&self.alpha_tensor()?)?)?)
    }
}

/// One parameter of a plugin, as `lsd-tui plugins` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamInfo {
    /// The YAML key.
    pub name: String,
    /// Its type, in words (`f64`, `string`, `union | intersection | average`).
    #[serde(rename = "type")]
    pub ty: String,
    /// The default, as YAML text.
    pub default: String,
    /// One line of help.
    pub help: String,
}

impl ParamInfo {
    /// A parameter description.
    pub fn new(name: &str, ty: &str, default: &str, help: &str) -> Self {
        Self { name: name.into(), ty: ty.into(), default: default.into(), help: help.into() }
    }
}

/// What a plugin says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInfo {
    /// The name recipes use.
    pub name: String,
    /// The plugin's own version.
    pub version: String,
    /// One line on what the term does.
    pub description: String,
    /// Its parameters.
    pub params: Vec<ParamInfo>,
}

/// What a plugin is given to build its term.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitContext {
    /// The device to compute on: `cpu`, `cuda:0`, `metal:0`.
    pub device: String,
    /// Weights files by name; `None` asks for the seeded demo model.
    pub weights: BTreeMap<String, Option<PathBuf>>,
    /// The seed for demo weights and anything else random.
    pub seed: u64,
    /// The host's process-wide precision of GPU products, `tf32` or `fp32`
    /// (lsd-core's `ops::precision`). The host always sets it when it
    /// creates a term; a plugin that runs lsd-core's networks adopts it in
    /// its own copy with `lsd_core::plugin::adopt_precision(context)`.
    pub precision: String,
}

/// The seed of the demo networks (random weights drawn from it) that host
/// and plugins build when no weights file is given, so that both sides
/// build the same networks.
pub const DEMO_MODEL_SEED: u64 = 2022;

/// The networks a host names in every context: `generator`, `clip`,
/// `arcface`, `bisenet`.
pub const NETWORKS: [&str; 4] = ["generator", "clip", "arcface", "bisenet"];

impl Default for InitContext {
    /// The CPU, every network of [`NETWORKS`] on its demo weights, the
    /// shared demo seed (so a plugin builds the same demo networks as the
    /// host), and `fp32` products.
    fn default() -> Self {
        Self {
            device: "cpu".into(),
            weights: NETWORKS.iter().map(|n| (n.to_string(), None)).collect(),
            seed: DEMO_MODEL_SEED,
            precision: "fp32".into(),
        }
    }
}

impl InitContext {
    /// A context for `device` with demo weights (see [`InitContext::default`]).
    pub fn on(device: &Device) -> Self {
        Self { device: device_name(device), ..Self::default() }
    }

    /// Opens [`InitContext::device`] in the calling side's Candle.
    pub fn device(&self) -> Result<Device> {
        parse_device(&self.device)
    }

    /// The weights path for `name`: `Ok(None)` for demo weights, an error
    /// naming the known keys when the host did not mention `name` at all.
    pub fn weights(&self, name: &str) -> Result<Option<&PathBuf>> {
        match self.weights.get(name) {
            Some(p) => Ok(p.as_ref()),
            None => Err(Error::Config(format!(
                "no weights entry '{name}' in the plugin context (have: {}); add it to the \
                 recipe's weights, or set it to null for demo weights",
                self.weights.keys().cloned().collect::<Vec<_>>().join(", ")
            ))),
        }
    }
}

/// `cpu`, `cuda:N` or `metal:N` for a device.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// Opens a device from its name (`cpu`, `cuda`, `cuda:N`, `metal:N`).
pub fn parse_device(name: &str) -> Result<Device> {
    let (kind, ordinal) = match name.split_once(':') {
        Some((k, n)) => {
            let n = n
                .parse::<usize>()
                .map_err(|_| Error::Config(format!("device '{name}': expected cpu, cuda:N or metal:N")))?;
            (k, n)
        }
        None => (name, 0),
    };
    match kind {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::new_cuda(ordinal)?),
        "metal" => Ok(Device::new_metal(ordinal)?),
        _ => Err(Error::Config(format!("device '{name}': expected cpu, cuda:N or metal:N"))),
    }
}

/// A loss term that can be exported from a dynamic library with
/// [`crate::export_plugin!`].
///
/// `Params` is the plugin's own typed configuration; derive `Deserialize`
/// with `#[serde(deny_unknown_fields, default)]` so that misspelt keys are
/// errors that name the plugin's fields.
pub trait Plugin: LossTerm + Sized + 'static {
    /// The name recipes use (`colour-stats`).
    const NAME: &'static str;
    /// The plugin's version (usually `env!("CARGO_PKG_VERSION")`).
    const VERSION: &'static str;
    /// One line on what the term does.
    const DESCRIPTION: &'static str;
    /// The typed parameters.
    type Params: DeserializeOwned;

    /// The parameters, for listings (name, type, default, help).
    fn params() -> Vec<ParamInfo>;

    /// Builds the term.
    fn new(params: Self::Params, context: &InitContext) -> Result<Self>;

    /// Parses YAML parameters and builds the term.
    fn from_yaml(params: &str, context: &InitContext) -> Result<Self> {
        Self::new(parse_params::<Self::Params>(Self::NAME, params)?, context)
    }
}

/// Parses a plugin's YAML parameters into its typed config. Empty text
/// means "all defaults". Errors name the plugin, the offending field and its
/// line and column within the parameters.
pub fn parse_params<P: DeserializeOwned>(plugin: &str, yaml: &str) -> Result<P> {
    let text = if yaml.trim().is_empty() { "{}" } else { yaml };
    yaml_serde::from_str(text)
        .map_err(|e| Error::Config(format!("parameters of plugin '{plugin}': {e}; run `lsd-tui plugins` to list them")))
}

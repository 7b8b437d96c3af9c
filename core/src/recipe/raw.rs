//! The recipe as serde reads it: types are checked, values are not.
//!
//! [`RawRecipe`] is what a recipe file says (`deny_unknown_fields`, so a
//! typo is an error) and what a run folder's `recipe.yaml` holds; its
//! values are checked by [`super::check`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which weights a network uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum WeightsRef {
    /// The tiny seeded demo network (no files).
    Demo,
    /// A name from the weights manifest (`lsd-tui weights list`).
    Named(String),
    /// A file on disk.
    Path(PathBuf),
}

impl From<String> for WeightsRef {
    fn from(s: String) -> Self {
        let looks_like_path = s.contains('/')
            || s.contains('\\')
            || [".pt", ".pth", ".pkl", ".safetensors", ".bin"].iter().any(|e| s.ends_with(e));
        if s == "demo" {
            Self::Demo
        } else if looks_like_path {
            Self::Path(PathBuf::from(s))
        } else {
            Self::Named(s)
        }
    }
}

impl From<WeightsRef> for String {
    fn from(w: WeightsRef) -> Self {
        match w {
            WeightsRef::Demo => "demo".into(),
            WeightsRef::Named(n) => n,
            WeightsRef::Path(p) => p.display().to_string(),
        }
    }
}

impl WeightsRef {
    /// True for the demo network.
    pub fn is_demo(&self) -> bool {
        matches!(self, Self::Demo)
    }
}

fn demo() -> WeightsRef {
    WeightsRef::Demo
}

/// The weights of the four networks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Models {
    /// StyleGAN2 generator.
    #[serde(default = "demo")]
    pub generator: WeightsRef,
    /// CLIP ViT-B/32.
    #[serde(default = "demo")]
    pub clip: WeightsRef,
    /// ArcFace IR-SE50.
    #[serde(default = "demo")]
    pub arcface: WeightsRef,
    /// BiSeNet face parsing.
    #[serde(default = "demo")]
    pub bisenet: WeightsRef,
}

impl Default for Models {
    fn default() -> Self {
        Self { generator: demo(), clip: demo(), arcface: demo(), bisenet: demo() }
    }
}

impl Models {
    /// `(network, weights)` pairs, for plugins and metadata.
    pub fn entries(&self) -> [(&'static str, &WeightsRef); 4] {
        [("generator", &self.generator), ("clip", &self.clip), ("arcface", &self.arcface), ("bisenet", &self.bisenet)]
    }

    /// True when any network is a demo network.
    pub fn any_demo(&self) -> bool {
        self.entries().iter().any(|(_, w)| w.is_demo())
    }
}

/// What the optimiser trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// W+ direction(s) `u`, `x_edit = G(w + α·u)` (the report's method).
    #[default]
    Direction,
    /// StyleCLIP's per-image latent optimisation: `w` itself is trained.
    Latent,
}

/// How a direction is normalised after each step; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    /// Every trained layer's vector has unit length: α is the step in W.
    #[default]
    Layer,
    /// The whole direction has unit Frobenius norm: α is the step in W+.
    Total,
    /// No constraint.
    None,
}

/// The edit strength during training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RawAlpha {
    /// One fixed α.
    Fixed(f32),
    /// α drawn uniformly from `[min, max]` per sample, rejecting `|α| < min_abs`.
    Range {
        /// Lower bound.
        min: f32,
        /// Upper bound.
        max: f32,
        /// Smallest |α| accepted (0 by default).
        #[serde(default)]
        min_abs: f32,
    },
}

/// The optimiser family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Adam (Kingma & Ba).
    #[default]
    Adam,
    /// Adam with decoupled weight decay.
    Adamw,
    /// SGD with momentum.
    Sgd,
}

/// The learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase", tag = "kind", deny_unknown_fields)]
pub enum Schedule {
    /// The same rate throughout.
    #[default]
    Constant,
    /// Cosine decay from `lr` to `lr·final_ratio` after a linear warm-up.
    Cosine {
        /// Warm-up steps (linear from 0).
        #[serde(default)]
        warmup: usize,
        /// The final rate as a fraction of `lr`.
        #[serde(default)]
        final_ratio: f32,
    },
    /// Multiply the rate by `gamma` every `every` steps.
    Step {
        /// Period in steps.
        every: usize,
        /// Factor.
        gamma: f32,
    },
    /// Halve the rate `count` times over the run, with LELSD's and
    /// CLIPLSD's step arithmetic (see [`crate::optim::halvings_before`]).
    Halvings {
        /// `num_lr_halvings` of the reference code.
        count: usize,
    },
}

fn default_lr() -> f32 {
    0.1
}
fn default_betas() -> [f32; 2] {
    [0.9, 0.999]
}
fn default_momentum() -> f32 {
    0.9
}

/// Optimiser settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Optimizer {
    /// Adam, AdamW or SGD.
    #[serde(default)]
    pub kind: OptimizerKind,
    /// The base learning rate.
    #[serde(default = "default_lr")]
    pub lr: f32,
    /// Adam's β₁, β₂.
    #[serde(default = "default_betas")]
    pub betas: [f32; 2],
    /// Decoupled (AdamW) or L2 (SGD) weight decay.
    #[serde(default)]
    pub weight_decay: f32,
    /// SGD momentum.
    #[serde(default = "default_momentum")]
    pub momentum: f32,
    /// The learning-rate schedule.
    #[serde(default)]
    pub schedule: Schedule,
}

impl Default for Optimizer {
    fn default() -> Self {
        Self {
            kind: OptimizerKind::Adam,
            lr: default_lr(),
            betas: default_betas(),
            weight_decay: 0.0,
            momentum: default_momentum(),
            schedule: Schedule::Constant,
        }
    }
}

fn one() -> f32 {
    1.0
}

/// One loss term as written in the recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTerm {
    /// A plugin name (`clip`, `identity`, `segmentation`, …) or a path to a
    /// plugin library.
    pub plugin: String,
    /// λ, the term's weight in the total loss.
    #[serde(default = "one")]
    pub weight: f32,
    /// The plugin's own parameters (passed to it as YAML text).
    #[serde(default)]
    pub params: Option<yaml_serde::Value>,
    /// The term's place under `terms:` in the recipe text, set when the
    /// text is parsed, so that a term keeps its own line when an edit
    /// drops the terms before it; `None` for a term the text does not have.
    #[serde(skip)]
    pub source: Option<usize>,
}

/// Preview settings as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPreview {
    /// Render previews every N steps (0: only at the end).
    #[serde(default = "default_preview_every")]
    pub every: usize,
    /// The α values of the edited columns.
    #[serde(default)]
    pub alphas: Option<Vec<f32>>,
    /// Seeds of the preview images (default: the first training seed).
    #[serde(default)]
    pub seeds: Option<Vec<u64>>,
}

pub(super) fn default_preview_every() -> usize {
    10
}

impl Default for RawPreview {
    /// What a recipe without `preview:` gets.
    fn default() -> Self {
        RawPreview { every: default_preview_every(), alphas: None, seeds: None }
    }
}

/// Noise inputs of the generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NoiseMode {
    /// The checkpoint's stored noise buffers (fixed images for a latent).
    #[default]
    Stored,
    /// Fresh noise drawn from the recipe seed, fixed for the whole run.
    Seeded,
    /// No noise.
    Zero,
}

impl NoiseMode {
    /// The generator's noise for this mode, with the recipe's `seed`.
    pub fn noise(self, seed: u64) -> crate::models::stylegan2::Noise {
        use crate::models::stylegan2::Noise;
        match self {
            NoiseMode::Stored => Noise::Stored,
            NoiseMode::Zero => Noise::Zero,
            NoiseMode::Seeded => Noise::Seeded(seed),
        }
    }

    /// The name a recipe and a direction's metadata write.
    pub fn name(self) -> &'static str {
        match self {
            NoiseMode::Stored => "stored",
            NoiseMode::Seeded => "seeded",
            NoiseMode::Zero => "zero",
        }
    }

    /// The mode [`NoiseMode::name`] names; `None` for another word.
    pub fn from_name(name: &str) -> Option<Self> {
        [NoiseMode::Stored, NoiseMode::Seeded, NoiseMode::Zero].into_iter().find(|m| m.name() == name)
    }
}

/// The diversity term of `K ≥ 2` directions (`diversity_kind:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DiversityKind {
    /// LELSD's correlation loss: per trained W+ layer (once in W), the mean
    /// over all `K²` entries of `|corr(u_i, u_j) − δ_ij|`, averaged over the
    /// layers (`lelsd.py`, `correlation_loss` and its use in `fit`).
    #[default]
    Correlation,
    /// The mean over pairs `i ≠ j` of the squared cosine of the flattened
    /// directions (this project's earlier term; flat near orthogonality,
    /// and layers of opposite sign can cancel).
    SquaredCosine,
}

/// Which directions a step trains when `K ≥ 2` (`direction_draw:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DirectionDraw {
    /// LELSD: each step edits the batch with one mixture `Σ c_k u_k`,
    /// `c` a relaxed one-hot draw (Gumbel-softmax, uniform
    /// probabilities, temperature `one_hot_temperature`), so about one
    /// direction per step.
    #[default]
    OneHot,
    /// Every direction edits every latent each step (`batch × K` samples).
    All,
}

/// The latent space of the direction (`space:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LatentSpace {
    /// One 512-vector per W+ layer (`layers` picks which are trained).
    #[default]
    #[serde(alias = "w+")]
    Wplus,
    /// One 512-vector tied across the layers (`layers`, when given, picks
    /// where it is added), as LELSD's and CLIPLSD's `latent_space='W'`.
    W,
}

/// How often α is drawn from a range (`alpha_per:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AlphaPer {
    /// One α per sample.
    #[default]
    Sample,
    /// One α per step for the whole batch (LELSD's and CLIPLSD's
    /// `sample_alpha`, called once per step).
    Step,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn default_one_hot_temperature() -> f32 {
    ONE_HOT_TEMPERATURE
}

fn is_default_one_hot_temperature(t: &f32) -> bool {
    *t == ONE_HOT_TEMPERATURE
}

/// LELSD's relaxed one-hot temperature (`onehot_temperature=0.001`).
pub const ONE_HOT_TEMPERATURE: f32 = 0.001;

/// How a seed becomes z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SeedRng {
    /// A ChaCha8 stream seeded with the seed (the same on every platform).
    #[default]
    Chacha,
    /// NumPy's `RandomState(seed).randn(512)` (MT19937, polar Gaussian), as
    /// NumPy-based StyleGAN code draws z: the same face for the same seed
    /// and weights. Seeds must fit in 32 bits.
    Numpy,
}

/// The recipe exactly as serde reads it: types are checked, values are not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRecipe {
    /// A display name (default: the file stem).
    #[serde(default)]
    pub name: Option<String>,
    /// The text prompt the edit should match.
    pub prompt: String,
    /// The weights of each network.
    #[serde(default)]
    pub models: Models,
    /// Truncation ψ towards the average latent (1 = none).
    #[serde(default = "one")]
    pub truncation: f32,
    /// Generator noise.
    #[serde(default)]
    pub noise: NoiseMode,
    /// `direction` or `latent`.
    #[serde(default)]
    pub mode: Mode,
    /// K, the number of directions trained together.
    #[serde(default = "one_usize")]
    pub directions: usize,
    /// The diversity term's weight γ, for K > 1 (LELSD's notebooks use 5).
    #[serde(default)]
    pub diversity: f32,
    /// Which diversity term: `correlation` (LELSD's, the default) or
    /// `squared_cosine`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub diversity_kind: DiversityKind,
    /// For K > 1: `one_hot` (LELSD's relaxed one-hot mixture per step, the
    /// default) or `all` (every direction every step).
    #[serde(default, skip_serializing_if = "is_default")]
    pub direction_draw: DirectionDraw,
    /// The relaxed one-hot temperature τ (LELSD: 0.001).
    #[serde(default = "default_one_hot_temperature", skip_serializing_if = "is_default_one_hot_temperature")]
    pub one_hot_temperature: f32,
    /// `wplus` (default) or `w` (one vector tied across the layers).
    #[serde(default, skip_serializing_if = "is_default")]
    pub space: LatentSpace,
    /// `mode: latent` only: weight of StyleCLIP's `‖w − w₀‖²` (summed over
    /// W+, averaged over the images; StyleCLIP uses 0.008).
    #[serde(default)]
    pub latent_l2: f32,
    /// W+ layers the direction may change (default: all): a list of
    /// numbers, or text with presets and ranges (`coarse`, `medium`,
    /// `fine`, `0-3,8`; see [`crate::layers`]).
    #[serde(default)]
    pub layers: Option<RawLayers>,
    /// How the direction is normalised.
    #[serde(default)]
    pub norm: Norm,
    /// The edit strength: a number, or `{min, max, min_abs}`.
    #[serde(default = "default_alpha")]
    pub alpha: RawAlpha,
    /// A range's α drawn per `sample` (default) or once per `step`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub alpha_per: AlphaPer,
    /// Training seeds: one seed trains a local direction, several a global one.
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// Latent files of more training images (real photos inverted with e4e,
    /// pSp or ReStyle; see [`crate::latents`]), relative to the recipe;
    /// `seeds: []` trains on them alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latents: Vec<PathBuf>,
    /// Latents per step. With `resample: true` they are drawn afresh each
    /// step; otherwise `batch` of the training seeds are drawn per step (all
    /// of them when equal). Not used in `mode: latent`, which optimises every
    /// training seed each step.
    #[serde(default = "one_usize")]
    pub batch: usize,
    /// Draw a new batch of latents every step (global directions).
    #[serde(default)]
    pub resample: bool,
    /// Optimisation steps.
    pub steps: usize,
    /// The seed of every random draw of the run.
    #[serde(default)]
    pub seed: u64,
    /// How a latent seed becomes z: `chacha` (default) or `numpy`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub seed_rng: SeedRng,
    /// The optimiser.
    #[serde(default)]
    pub optimizer: Optimizer,
    /// The loss terms.
    pub terms: Vec<RawTerm>,
    /// Preview images.
    #[serde(default)]
    pub preview: Option<RawPreview>,
    /// Write a checkpoint every N steps (0: only at the end).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: usize,
    /// The run folder.
    #[serde(default)]
    pub output: Option<PathBuf>,
    /// `cpu` or `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
    /// `tf32` or `fp32` products on a GPU; unset: the device's default
    /// (`tf32` on CUDA, `fp32` on the CPU, see [`crate::ops::precision`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<crate::ops::Precision>,
}

/// `layers:` as written: a list of layer numbers, or presets and ranges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RawLayers {
    /// `[0, 1, 2]`.
    List(Vec<usize>),
    /// `coarse`, `fine`, `0-3,8`, …
    Text(String),
}

/// The first training seed, and the first latent file's first image.
pub(super) fn default_preview_seeds(raw: &RawRecipe) -> Vec<u64> {
    let mut seeds: Vec<u64> = raw.seeds.first().copied().into_iter().collect();
    if !raw.latents.is_empty() {
        seeds.push(crate::latents::key(0));
    }
    seeds
}

fn one_usize() -> usize {
    1
}
fn default_alpha() -> RawAlpha {
    RawAlpha::Fixed(3.0)
}
fn default_seeds() -> Vec<u64> {
    vec![0]
}
fn default_checkpoint_every() -> usize {
    50
}
pub(super) fn default_device() -> String {
    "cpu".into()
}

/// Parses a seed list as the command line writes it: `3`, `1,2,5`,
/// `0..10` (end excluded, as in Rust), `0..=9`, or a mix (`0..3,7`).
pub fn parse_seeds(text: &str) -> Result<Vec<u64>, String> {
    let mut out = Vec::new();
    let bad = |part: &str, why: &str| format!("'{part}' in seeds '{text}': {why}; write seeds as 3, 1,2,5 or 0..10");
    for part in text.split(',').map(str::trim) {
        if part.is_empty() {
            return Err(bad(part, "empty entry"));
        }
        let num = |s: &str| s.trim().parse::<u64>().map_err(|_| bad(part, "not a whole number >= 0"));
        if let Some((a, b)) = part.split_once("..") {
            let (b, inclusive) = match b.strip_prefix('=') {
                Some(b) => (b, true),
                None => (b, false),
            };
            let (a, b) = (num(a)?, num(b)?);
            let end = if inclusive { b.checked_add(1).ok_or_else(|| bad(part, "too large"))? } else { b };
            if end <= a {
                return Err(bad(part, "the range is empty"));
            }
            if end - a > 1_000_000 {
                return Err(bad(part, "more than a million seeds"));
            }
            out.extend(a..end);
        } else {
            out.push(num(part)?);
        }
    }
    Ok(out)
}

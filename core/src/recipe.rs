//! Recipes: one YAML file = one repeatable edit.
//!
//! Parsing has two steps, as in ripgrep's `LowArgs → HiArgs`: serde reads the
//! text into a plain [`RawRecipe`] (`deny_unknown_fields`, so a typo is an
//! error, not a silently ignored key), then [`Recipe::parse`] checks every
//! value and returns a [`RecipeError`] that names the file, the line and
//! column, the key, what was expected and what to do.
//!
//! What α means. A direction `u` is normalised after every optimiser step
//! according to [`Norm`]. The default, `norm: layer`, gives each trained
//! layer's 512-vector unit length, so `x_edit = G(w + α·u)` moves every
//! edited layer's style by exactly `α` in W — the same scale as classic
//! W-space editing, whichever layers are trained. (LELSD's reference code,
//! with `unit_norm`, divides its W+ directions `[K, L, D]` by their norm
//! over axis 1 — the layer axis, for each latent coordinate — instead of
//! the latent axis; that is not offered.) `norm: total` gives the
//! whole W+ direction unit Frobenius norm, so α is the distance travelled in
//! W+ and each layer moves by about `α/√layers`; `norm: none` leaves `u` free
//! (α is then only a scale). The constraint is applied once when `u` is
//! drawn (N(0, 1) from the recipe's seed, masked to the trained layers) and
//! after every optimiser step; the optimiser's moment estimates are not
//! projected. Untrained layers of `u` stay exactly zero.
//!
//! # The schema
//!
//! `tests/recipes/valid/full.yaml` shows every key with its default;
//! `examples/recipes/` holds the demo recipe and the report's cases. In
//! short: `prompt` and `steps` and `terms` are required; `models` names the
//! weights of `generator`, `clip`, `arcface`, `bisenet` (`demo` — the
//! default —, a manifest name such as `stylegan2-ffhq-1024`, or a path
//! relative to the recipe); `mode` is `direction` (K = `directions`
//! directions, a `diversity` term for K ≥ 2 — `diversity_kind`
//! `correlation`, LELSD's, by default — trained `direction_draw: one_hot`
//! (LELSD's relaxed one-hot mixture, one direction per step, the default)
//! or `all`; optional `layers`; `space: wplus` or `w`, one vector tied
//! across the layers) or
//! `latent` (StyleCLIP's per-image latent optimisation: every training
//! seed's latent is optimised, `batch`, `alpha` and `norm` do not apply,
//! `latent_l2` weighs `‖w − w₀‖²`); `alpha` is a number or `{min, max,
//! min_abs}`; `layers` is a list or presets and ranges (`coarse`, `medium`,
//! `fine`, `0-3,8`: [`crate::layers`]); `latents` lists latent files (a
//! photo's W+, [`crate::latents`]) trained on with the seeds;
//! `seeds` (one seed: a local direction) with `batch` latents
//! per step, or `resample: true` for `batch` fresh latents every step (a
//! global direction); `optimizer` (`adam`, `adamw`, `sgd`; `lr`, `betas`,
//! `weight_decay`, `momentum`, `schedule`: `constant`, `cosine`, `step` or
//! LELSD's `halvings`); `alpha_per` (`sample` or `step`); `seed_rng`
//! (`chacha` or `numpy`, NumPy's `RandomState(seed).randn`); `preview`
//! (`every`, `alphas`,
//! `seeds`); `checkpoint_every`; `output`; `device`; `precision` (`tf32`
//! or `fp32`, for a GPU).
//!
//! Each term's `params` are handed to its plugin exactly as written (cut
//! out of the file), so the plugin's own `line N column M` maps to the
//! recipe by [`Term::params_line`]. `lsd-tui run RECIPE --models demo`
//! runs any recipe on the demo networks (the report's cases name real
//! weights by manifest name; the demo recipe leaves `models` out).

pub mod locate;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// An error in a recipe, located in its file.
#[derive(Debug, Clone, PartialEq)]
pub struct RecipeError {
    /// The recipe file (or `<recipe>` for text without a file).
    pub file: PathBuf,
    /// 1-based line (0 when unknown).
    pub line: usize,
    /// 1-based column (0 when unknown).
    pub column: usize,
    /// The key path, e.g. `terms[1].weight` (empty for syntax errors).
    pub key: String,
    /// What is wrong, what was expected and what to do.
    pub message: String,
}

impl fmt::Display for RecipeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": '{}': {}", self.key, self.message)
        }
    }
}

impl std::error::Error for RecipeError {}

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
        [
            ("generator", &self.generator),
            ("clip", &self.clip),
            ("arcface", &self.arcface),
            ("bisenet", &self.bisenet),
        ]
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

fn default_preview_every() -> usize {
    10
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
fn default_preview_seeds(raw: &RawRecipe) -> Vec<u64> {
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
fn default_device() -> String {
    "cpu".into()
}

/// The edit strength, checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Alpha {
    /// One α for every sample.
    Fixed(f32),
    /// Uniform in `[min, max]` with `|α| >= min_abs`.
    Range {
        /// Lower bound.
        min: f32,
        /// Upper bound.
        max: f32,
        /// Smallest |α| accepted.
        min_abs: f32,
    },
}

impl Alpha {
    /// Draws one α: the fixed value, or uniform in `[min, max]` with
    /// `|α| >= min_abs`.
    ///
    /// Rejection sampling first (the historical draw, so a run's random
    /// stream is unchanged), for at most [`ALPHA_REJECTIONS`] tries; then a
    /// direct draw from the admissible part of the range, so that a range
    /// whose admissible part is tiny (or unreachable by rejection, such as
    /// `{min: 0, max: 1, min_abs: 0.99999994}`) still returns at once. The
    /// bounds must be checked ([`Recipe::parse`] does): finite, `min < max`,
    /// `max - min` finite and `min_abs` below the largest |bound|.
    pub fn sample<R: rand::Rng + ?Sized>(&self, rng: &mut R) -> f32 {
        let (min, max, min_abs) = match *self {
            Alpha::Fixed(a) => return a,
            Alpha::Range { min, max, min_abs } => (min, max, min_abs),
        };
        for _ in 0..ALPHA_REJECTIONS {
            let a = rng.random_range(min..=max);
            if a.abs() >= min_abs {
                return a;
            }
        }
        // The admissible part: [min, -min_abs] and [min_abs, max], each
        // possibly empty; pick one in proportion to its length.
        let neg = (min <= -min_abs).then_some((min, (-min_abs).min(max)));
        let pos = (max >= min_abs).then_some((min_abs.max(min), max));
        let len = |p: Option<(f32, f32)>| p.map_or(0.0, |(a, b)| (b as f64 - a as f64).max(0.0));
        let (ln, lp) = (len(neg), len(pos));
        let pick = match (neg, pos) {
            (Some(n), Some(p)) => {
                if rng.random::<f64>() * (ln + lp) < ln {
                    n
                } else {
                    p
                }
            }
            (Some(n), None) => n,
            (None, Some(p)) => p,
            // Unreachable for checked bounds; the largest bound is admissible.
            (None, None) => return if max.abs() >= min.abs() { max } else { min },
        };
        if pick.0 < pick.1 {
            rng.random_range(pick.0..=pick.1)
        } else {
            pick.0
        }
    }

    /// A representative α for previews and metrics: the fixed value, or
    /// the bound of largest magnitude.
    pub fn typical(&self) -> f32 {
        match *self {
            Alpha::Fixed(a) => a,
            Alpha::Range { min, max, .. } => {
                if max.abs() >= min.abs() {
                    max
                } else {
                    min
                }
            }
        }
    }
}

/// A loss term, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    /// Plugin name or library path.
    pub plugin: String,
    /// λ.
    pub weight: f32,
    /// The plugin's parameters as YAML text (`{}` when none).
    pub params: String,
    /// The 1-based line where the params start in the recipe, so a plugin's
    /// own line numbers can be mapped back to the file: the plugin's line
    /// `n` is the recipe's line `params_line + n - 1` (0 when unknown).
    pub params_line: usize,
    /// Characters before the params text on its first line (flow style,
    /// `params: {classes: [hat]}`), so the plugin's column `m` on its line 1
    /// is the recipe's column `params_column + m`.
    pub params_column: usize,
    /// The indentation removed from the params block's lines 2…, so the
    /// plugin's column `m` there is the recipe's `params_indent + m`.
    pub params_indent: usize,
}

/// Preview settings, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Preview {
    /// Every N steps (0: at the end only).
    pub every: usize,
    /// α values of the edited columns.
    pub alphas: Vec<f32>,
    /// Preview seeds.
    pub seeds: Vec<u64>,
}

/// A checked recipe, ready to run.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// Display name.
    pub name: String,
    /// The file it came from (or `<recipe>`).
    pub file: PathBuf,
    /// The raw form, which is what `recipe.yaml` in a run folder holds.
    pub raw: RawRecipe,
    /// The edit strength.
    pub alpha: Alpha,
    /// Trained W+ layers (sorted, unique); `None` = all, or a preset
    /// not resolved yet (see `layer_preset`).
    pub layers: Option<Vec<usize>>,
    /// `layers` given with a preset (`coarse`, `medium`, `fine`), which the
    /// engine resolves against the loaded generator into `layers`.
    pub layer_preset: Option<crate::layers::LayerSpec>,
    /// The latent files (`latents`), resolved against the recipe's folder.
    pub latents: Vec<PathBuf>,
    /// The loss terms.
    pub terms: Vec<Term>,
    /// Preview settings.
    pub preview: Preview,
    /// The run folder.
    pub output: PathBuf,
    text: String,
}

const MAX_STEPS: usize = 10_000_000;

/// Rejection-sampling tries of [`Alpha::sample`] before it draws directly
/// from the admissible range.
pub const ALPHA_REJECTIONS: usize = 64;

impl Recipe {
    /// Reads and checks a recipe file.
    pub fn load(path: &Path) -> Result<Self, RecipeError> {
        let text = std::fs::read_to_string(path).map_err(|e| RecipeError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read the recipe: {e}; check the path and its permissions"),
        })?;
        Self::parse(&text, path)
    }

    /// Checks recipe text; `file` is used in messages and for the default name.
    pub fn parse(text: &str, file: &Path) -> Result<Self, RecipeError> {
        let raw: RawRecipe = yaml_serde::from_str(text).map_err(|e| syntax_error(text, file, &e))?;
        let ctx = Ctx { text, file };
        ctx.check(raw)
    }

    /// The 1-based `(line, column)` of a key path (e.g. `models.clip`), for
    /// errors found after parsing (a missing weight, a plugin's own error).
    pub fn locate(&self, key: &str) -> (usize, usize) {
        locate::locate(&self.text, &locate::parse_path(key)).unwrap_or((0, 0))
    }

    /// An error located at `key`.
    pub fn error_at(&self, key: &str, message: impl Into<String>) -> RecipeError {
        Ctx { text: &self.text, file: &self.file }.error(key, message)
    }

    /// The recipe text as given.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The resolved recipe as YAML (what a run folder keeps).
    pub fn to_yaml(&self) -> String {
        yaml_serde::to_string(&self.raw).unwrap_or_else(|e| format!("# could not serialise: {e}\n"))
    }

    /// A stable hash of the resolved recipe (hex SHA-256 of [`Recipe::to_yaml`]).
    pub fn hash(&self) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(self.to_yaml().as_bytes()))
    }

    /// A hash of the settings that decide the trained direction (the
    /// resolved recipe without `output`, `device`, `precision`, `preview`
    /// and `checkpoint_every`): a checkpoint only resumes a run with the same.
    pub fn training_hash(&self) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(self.training_yaml().as_bytes()))
    }

    /// The settings [`Recipe::training_hash`] hashes, as YAML.
    pub fn training_yaml(&self) -> String {
        let mut raw = self.raw.clone();
        raw.output = None;
        raw.device = default_device();
        raw.precision = None;
        raw.preview = None;
        raw.checkpoint_every = 0;
        raw.name = None;
        yaml_serde::to_string(&raw).unwrap_or_default()
    }

    /// True when any network is a demo network.
    pub fn uses_demo(&self) -> bool {
        self.raw.models.any_demo()
    }
}

struct Ctx<'a> {
    text: &'a str,
    file: &'a Path,
}

fn syntax_error(text: &str, file: &Path, e: &yaml_serde::Error) -> RecipeError {
    let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
    let msg = e.to_string();
    // yaml_serde prefixes the key path ("terms[0]: unknown field ...").
    let (key, detail) = match msg.split_once(": ") {
        Some((k, rest)) if !k.contains(' ') || k.contains('[') || k.contains('.') => {
            (k.to_string(), rest.to_string())
        }
        _ => (String::new(), msg.clone()),
    };
    let detail = detail.split(" at line ").next().unwrap_or(&detail).to_string();
    let (mut line, mut column, mut key) = (line, column, key);
    let quoted = |d: &str| -> Option<String> {
        let a = d.find('`')?;
        let b = d[a + 1..].find('`')?;
        Some(d[a + 1..a + 1 + b].to_string())
    };
    if detail.contains("unknown field") {
        // Name the misspelt key itself: `optimizer.lrr`, not `optimizer`.
        if let Some(field) = quoted(&detail) {
            key = if key.is_empty() { field } else { format!("{key}.{field}") };
        }
    } else if detail.contains("duplicate field") {
        // serde reports the mapping; point at the second occurrence.
        if let Some(field) = quoted(&detail) {
            let hits: Vec<(usize, usize)> = text
                .lines()
                .enumerate()
                .filter_map(|(i, l)| {
                    let t = l.trim_start();
                    let t = t.strip_prefix("- ").unwrap_or(t);
                    t.strip_prefix(field.as_str()).filter(|r| r.trim_start().starts_with(':')).map(|_| (i + 1, l.len() - l.trim_start().len() + 1))
                })
                .collect();
            if let Some(&(l, c)) = hits.get(1) {
                (line, column) = (l, c);
            }
            key = if key.is_empty() { field } else { format!("{key}.{field}") };
        }
    } else if detail.contains("untagged enum RawAlpha") {
        // Untagged enums lose the path and position: it can only be `alpha`.
        key = "alpha".into();
        if let Some(at) = locate::locate(text, &locate::parse_path("alpha")) {
            (line, column) = at;
        }
    } else if detail.contains("untagged enum RawLayers") {
        key = "layers".into();
        if let Some(at) = locate::locate(text, &locate::parse_path("layers")) {
            (line, column) = at;
        }
    }
    let hint = if detail.contains("unknown field") {
        "; remove it or fix its spelling (keys are case-sensitive)"
    } else if detail.contains("missing field") {
        "; add it (see examples/recipes/ for a complete recipe)"
    } else if detail.contains("duplicate field") {
        "; a key may appear only once: remove one of them"
    } else if detail.contains("unknown variant") {
        "; use one of the values listed"
    } else if detail.contains("invalid type") || detail.contains("invalid value") {
        "; fix the value's type"
    } else if detail.contains("untagged enum RawLayers") {
        "; expected a list of layers ([0, 1, 2]) or text (coarse, medium, fine, 0-3,8)"
    } else if detail.contains("did not match any variant") {
        "; expected a number (alpha: 3) or a range (alpha: {min: -3, max: 3, min_abs: 1})"
    } else if key.is_empty() {
        "; the file is not valid YAML there"
    } else {
        ""
    };
    RecipeError { file: file.to_path_buf(), line, column, key, message: format!("{detail}{hint}") }
}

impl Ctx<'_> {
    fn error(&self, key: &str, message: impl Into<String>) -> RecipeError {
        let (line, column) = locate::locate(self.text, &locate::parse_path(key)).unwrap_or((0, 0));
        RecipeError {
            file: self.file.to_path_buf(),
            line,
            column,
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn check(&self, raw: RawRecipe) -> Result<Recipe, RecipeError> {
        if raw.prompt.trim().is_empty() {
            return Err(self.error("prompt", "the prompt is empty; write the edit in words, e.g. 'a photo of a person with gray hair'"));
        }
        if !(raw.truncation.is_finite() && raw.truncation > 0.0 && raw.truncation <= 1.0) {
            return Err(self.error("truncation", format!("expected ψ in (0, 1], got {}; 0.7 is usual, 1 disables truncation", raw.truncation)));
        }
        if raw.directions == 0 || raw.directions > 64 {
            return Err(self.error("directions", format!("expected 1 to 64 directions, got {}", raw.directions)));
        }
        if raw.mode == Mode::Latent && raw.directions != 1 {
            return Err(self.error("directions", "mode 'latent' trains the latent itself: set directions: 1 or use mode: direction"));
        }
        if !(raw.diversity.is_finite() && raw.diversity >= 0.0) {
            return Err(self.error("diversity", format!("expected a weight >= 0, got {}", raw.diversity)));
        }
        if raw.steps == 0 || raw.steps > MAX_STEPS {
            return Err(self.error("steps", format!("expected 1 to {MAX_STEPS} steps, got {}", raw.steps)));
        }
        if raw.batch == 0 || raw.batch > 1024 {
            return Err(self.error("batch", format!("expected a batch of 1 to 1024, got {}", raw.batch)));
        }
        if raw.seeds.is_empty() && raw.latents.is_empty() {
            return Err(self.error("seeds", "give at least one training seed, e.g. seeds: [0], or a latent file under 'latents'"));
        }
        if let Some(s) = raw.seeds.iter().find(|&&s| crate::latents::index(s).is_some()) {
            return Err(self.error("seeds", format!("seed {s} is reserved for latent files; use seeds below {}", crate::latents::KEY_BASE)));
        }
        if raw.mode == Mode::Direction && !raw.resample && raw.batch > raw.seeds.len() + raw.latents.len() {
            return Err(self.error("batch", format!(
                "batch {} is larger than the {} training seed(s) and latent file(s); list more seeds or set resample: true to draw latents each step",
                raw.batch, raw.seeds.len() + raw.latents.len()
            )));
        }
        if !(raw.latent_l2.is_finite() && raw.latent_l2 >= 0.0) {
            return Err(self.error("latent_l2", format!("expected a weight >= 0, got {}", raw.latent_l2)));
        }
        if raw.mode == Mode::Direction && raw.latent_l2 != 0.0 {
            return Err(self.error("latent_l2", "latent_l2 applies to mode: latent only (a direction's size is fixed by its norm); remove it"));
        }
        if raw.diversity > 0.0 && raw.directions < 2 {
            return Err(self.error("diversity", "the diversity term needs two or more directions; set directions: 2 or more, or remove diversity"));
        }
        if !(raw.one_hot_temperature.is_finite() && raw.one_hot_temperature >= ONE_HOT_TEMPERATURE) {
            return Err(self.error("one_hot_temperature", format!(
                "expected a temperature >= {ONE_HOT_TEMPERATURE} (LELSD's floor; smaller values overflow the softmax), got {}",
                raw.one_hot_temperature
            )));
        }
        if raw.mode == Mode::Latent && raw.space == LatentSpace::W {
            return Err(self.error("space", "mode 'latent' optimises each W+ latent; remove space: w or use mode: direction"));
        }
        if raw.seed_rng == SeedRng::Numpy {
            if let Some(s) = raw.seeds.iter().chain(raw.preview.iter().flat_map(|p| p.seeds.iter().flatten())).find(|&&s| s > u32::MAX as u64) {
                return Err(self.error("seeds", format!("seed {s} does not fit in 32 bits, which seed_rng: numpy requires (NumPy refuses it); use seeds below 4294967296")));
            }
        }
        if raw.mode == Mode::Latent && raw.resample {
            return Err(self.error("resample", "mode 'latent' optimises fixed latents; remove resample: true"));
        }
        let alpha = self.check_alpha(&raw.alpha)?;
        let (layers, layer_preset) = match &raw.layers {
            Some(RawLayers::Text(text)) => {
                let spec = crate::layers::LayerSpec::parse(text).map_err(|e| self.error("layers", e))?;
                if spec.is_numeric() {
                    let list = spec.resolve(32).map_err(|e| self.error("layers", e))?;
                    (self.check_layers(Some(list.as_slice()))?, None)
                } else {
                    (None, Some(spec))
                }
            }
            Some(RawLayers::List(list)) => (self.check_layers(Some(list.as_slice()))?, None),
            None => (None, None),
        };
        let latents = raw.latents.iter().map(|p| self.relative(p)).collect();
        self.check_optimizer(&raw.optimizer, raw.steps)?;
        if raw.terms.is_empty() {
            return Err(self.error("terms", "no loss terms; add at least one, e.g. '- plugin: clip'"));
        }
        let terms = raw
            .terms
            .iter()
            .enumerate()
            .map(|(i, t)| self.check_term(i, t))
            .collect::<Result<Vec<_>, _>>()?;
        for (name, w) in raw.models.entries() {
            if let WeightsRef::Path(p) = w {
                let p = self.relative(p);
                // A regular file only: opening a FIFO or a device would block.
                let readable = std::fs::metadata(&p).and_then(|m| {
                    if m.is_file() {
                        std::fs::File::open(&p).map(drop)
                    } else {
                        Err(std::io::Error::other("not a regular file"))
                    }
                });
                if let Err(e) = readable {
                    return Err(self.error(&format!("models.{name}"), format!(
                        "cannot read weights '{}': {e}; check the path, or use a manifest name (lsd-tui weights list) or 'demo'",
                        p.display()
                    )));
                }
            }
        }
        let preview = self.check_preview(raw.preview.as_ref(), &raw, alpha)?;
        let name = raw.name.clone().unwrap_or_else(|| {
            self.file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "recipe".into())
        });
        if name.is_empty() || name.contains(['/', '\\']) {
            return Err(self.error("name", "expected a non-empty name without slashes (it names the run folder)"));
        }
        let device = raw.device.as_str();
        let device_ok = device == "cpu"
            || device.strip_prefix("cuda:").is_some_and(|n| n.parse::<usize>().is_ok())
            || device == "cuda";
        if !device_ok {
            return Err(self.error("device", format!("unknown device '{device}'; expected 'cpu' or 'cuda:N'")));
        }
        let output = raw.output.clone().map(|p| self.relative(&p)).unwrap_or_else(|| PathBuf::from("runs").join(&name));
        Ok(Recipe {
            name,
            file: self.file.to_path_buf(),
            alpha,
            layers,
            layer_preset,
            latents,
            terms,
            preview,
            output,
            raw,
            text: self.text.to_string(),
        })
    }

    /// Paths in a recipe are relative to the recipe's folder.
    fn relative(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            return p.to_path_buf();
        }
        match self.file.parent() {
            Some(dir) if !dir.as_os_str().is_empty() && self.file.exists() => dir.join(p),
            _ => p.to_path_buf(),
        }
    }

    fn check_alpha(&self, a: &RawAlpha) -> Result<Alpha, RecipeError> {
        match *a {
            RawAlpha::Fixed(v) => {
                if !v.is_finite() || v == 0.0 {
                    return Err(self.error("alpha", format!("expected a finite, non-zero α, got {v}")));
                }
                Ok(Alpha::Fixed(v))
            }
            RawAlpha::Range { min, max, min_abs } => {
                if !(min.is_finite() && max.is_finite() && min_abs.is_finite()) {
                    return Err(self.error("alpha", "α bounds must be finite numbers"));
                }
                if min >= max {
                    return Err(self.error("alpha.max", format!("expected max > min, got min {min}, max {max}")));
                }
                if min_abs < 0.0 {
                    return Err(self.error("alpha.min_abs", format!("expected min_abs >= 0, got {min_abs}")));
                }
                if !(max - min).is_finite() {
                    return Err(self.error("alpha", format!(
                        "the range [{min}, {max}] is too wide to sample (max - min overflows); α is a step in W, usually between -10 and 10"
                    )));
                }
                if min_abs >= min.abs().max(max.abs()) {
                    return Err(self.error("alpha.min_abs", format!(
                        "min_abs {min_abs} excludes the whole range [{min}, {max}]; lower it"
                    )));
                }
                Ok(Alpha::Range { min, max, min_abs })
            }
        }
    }

    fn check_layers(&self, layers: Option<&[usize]>) -> Result<Option<Vec<usize>>, RecipeError> {
        let Some(layers) = layers else { return Ok(None) };
        if layers.is_empty() {
            return Err(self.error("layers", "the layer list is empty; remove 'layers' to train all layers"));
        }
        // 18 is n_latent at 1024²; the generator checks the real bound at run time.
        if let Some(&bad) = layers.iter().find(|&&l| l >= 32) {
            return Err(self.error("layers", format!("layer {bad} does not exist; W+ has at most 18 layers (0..=17) at 1024²")));
        }
        let mut sorted = layers.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        Ok(Some(sorted))
    }

    fn check_optimizer(&self, o: &Optimizer, steps: usize) -> Result<(), RecipeError> {
        if !(o.lr.is_finite() && o.lr > 0.0) {
            return Err(self.error("optimizer.lr", format!("expected a learning rate > 0, got {}", o.lr)));
        }
        if o.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            return Err(self.error("optimizer.betas", format!("expected two betas in [0, 1), got {:?}", o.betas)));
        }
        if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
            return Err(self.error("optimizer.weight_decay", "expected weight_decay >= 0"));
        }
        if !(0.0..1.0).contains(&o.momentum) {
            return Err(self.error("optimizer.momentum", format!("expected momentum in [0, 1), got {}", o.momentum)));
        }
        match o.schedule {
            Schedule::Step { every: 0, .. } => Err(self.error("optimizer.schedule", "a step schedule needs every >= 1")),
            Schedule::Step { gamma, .. } if !(gamma > 0.0 && gamma <= 1.0) => {
                Err(self.error("optimizer.schedule", format!("expected gamma in (0, 1], got {gamma}")))
            }
            Schedule::Halvings { count } if count == 0 || count >= steps => Err(self.error("optimizer.schedule", format!(
                "expected count between 1 and steps - 1 ({}), got {count}: the reference halves every steps / (count + 1) steps",
                steps.saturating_sub(1)
            ))),
            Schedule::Cosine { final_ratio, .. } if !(0.0..=1.0).contains(&final_ratio) => {
                Err(self.error("optimizer.schedule", format!("expected final_ratio in [0, 1], got {final_ratio}")))
            }
            _ => Ok(()),
        }
    }

    fn check_term(&self, i: usize, t: &RawTerm) -> Result<Term, RecipeError> {
        let key = format!("terms[{i}]");
        if t.plugin.trim().is_empty() {
            return Err(self.error(&format!("{key}.plugin"), "empty plugin name; use clip, identity, segmentation or a library path"));
        }
        if !t.weight.is_finite() || t.weight < 0.0 {
            return Err(self.error(&format!("{key}.weight"), format!("expected a weight λ >= 0, got {}", t.weight)));
        }
        let value = match &t.params {
            None | Some(yaml_serde::Value::Null) => None,
            Some(v @ yaml_serde::Value::Mapping(_)) => Some(v),
            Some(_) => {
                return Err(self.error(&format!("{key}.params"), "expected a mapping of the plugin's parameters (see lsd-tui plugins)"))
            }
        };
        let Some(value) = value else {
            return Ok(Term { plugin: t.plugin.clone(), weight: t.weight, params: "{}\n".into(), params_line: 0, params_column: 0, params_indent: 0 });
        };
        // The plugin gets the params exactly as written (so its line numbers
        // map to the file); if that text cannot be cut out cleanly, a
        // re-serialised copy (positions then only approximate).
        if let Some(line) = self.locate_line(&format!("{key}.params")) {
            if let Some((text, first, column, indent)) = params_source(self.text, line) {
                if yaml_serde::from_str::<yaml_serde::Value>(&text).ok().as_ref() == Some(value) {
                    return Ok(Term { plugin: t.plugin.clone(), weight: t.weight, params: text, params_line: first, params_column: column, params_indent: indent });
                }
            }
        }
        let params = yaml_serde::to_string(value).unwrap_or_default();
        let params_line = self.locate_line(&format!("{key}.params")).map(|l| l + 1).unwrap_or(0);
        Ok(Term { plugin: t.plugin.clone(), weight: t.weight, params, params_line, params_column: 0, params_indent: 0 })
    }

    fn locate_line(&self, key: &str) -> Option<usize> {
        let path = locate::parse_path(key);
        let (line, _) = locate::locate(self.text, &path)?;
        // Only accept an exact hit on the last key.
        let last = match path.last() {
            Some(locate::Seg::Key(k)) => k.clone(),
            _ => return Some(line),
        };
        let text_line = self.text.lines().nth(line - 1)?;
        text_line.contains(&format!("{last}:")).then_some(line)
    }

    fn check_preview(&self, p: Option<&RawPreview>, raw: &RawRecipe, alpha: Alpha) -> Result<Preview, RecipeError> {
        let typical = alpha.typical();
        // Latent mode: α interpolates from w₀ (0) to the optimised latent (1).
        let default_alphas = match raw.mode {
            Mode::Direction => vec![-typical, 0.0, typical],
            Mode::Latent => vec![0.5, 1.0],
        };
        let Some(p) = p else {
            return Ok(Preview { every: default_preview_every(), alphas: default_alphas, seeds: default_preview_seeds(raw) });
        };
        let alphas = p.alphas.clone().unwrap_or(default_alphas);
        if alphas.is_empty() || alphas.len() > 16 {
            return Err(self.error("preview.alphas", format!("expected 1 to 16 α values, got {}", alphas.len())));
        }
        if alphas.iter().any(|a| !a.is_finite()) {
            return Err(self.error("preview.alphas", "α values must be finite numbers"));
        }
        let seeds = p.seeds.clone().unwrap_or_else(|| default_preview_seeds(raw));
        if seeds.is_empty() || seeds.len() > 8 {
            return Err(self.error("preview.seeds", format!("expected 1 to 8 preview seeds, got {}", seeds.len())));
        }
        if raw.mode == Mode::Latent {
            if let Some(s) = seeds.iter().find(|s| !raw.seeds.contains(s) && crate::latents::index(**s).is_none()) {
                return Err(self.error("preview.seeds", format!(
                    "seed {s} is not a training seed; mode 'latent' optimises only the training seeds' latents, so preview those"
                )));
            }
        }
        Ok(Preview { every: p.every, alphas, seeds })
    }
}

/// Cuts the value of the `params:` key on 1-based `line` out of `text`:
/// `(text, first line, column offset of line 1, indentation removed from
/// the other lines)`. Flow style (`params: {a: 1}`) starts on the key's
/// line; block style on the next line, with the common indentation removed.
/// Blank and comment lines are kept so that line numbers map one to one.
fn params_source(text: &str, line: usize) -> Option<(String, usize, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let key_line = *lines.get(line.checked_sub(1)?)?;
    let key_indent = indentation(key_line);
    let after = key_line.find("params:")? + "params:".len();
    let rest = &key_line[after..];
    let rest_trim = rest.trim_start_matches([' ', '\t']);
    let inline = !rest_trim.is_empty() && !rest_trim.starts_with('#');
    // The block: following lines indented deeper than the key (blank and
    // comment lines included).
    let mut end = line; // index of the first line after the block
    while end < lines.len() {
        let l = lines[end];
        let t = l.trim();
        if t.is_empty() || t.starts_with('#') || indentation(l) > key_indent {
            end += 1;
        } else {
            break;
        }
    }
    // Trailing blank/comment lines belong to no one.
    while end > line && {
        let t = lines[end - 1].trim();
        t.is_empty() || t.starts_with('#')
    } {
        end -= 1;
    }
    let block = &lines[line..end];
    let indent = block
        .iter()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|l| indentation(l))
        .min()
        .unwrap_or(0);
    // `indent` counts ASCII spaces only, so slicing there stays on a
    // character boundary; a line with less indentation (a comment, a flow
    // continuation) loses its spaces only.
    let dedent = |l: &&str| -> String {
        if indentation(l) >= indent {
            l[indent..].to_string()
        } else {
            l.trim_start_matches(' ').to_string()
        }
    };
    if inline {
        let column = after + (rest.len() - rest_trim.len());
        let mut out = vec![rest_trim.to_string()];
        out.extend(block.iter().map(dedent));
        Some((out.join("\n") + "\n", line, column, indent))
    } else {
        if block.is_empty() {
            return None;
        }
        let out: Vec<String> = block.iter().map(dedent).collect();
        Some((out.join("\n") + "\n", line + 1, indent, indent))
    }
}

/// YAML indentation: the leading ASCII spaces (tabs and other white space,
/// such as a non-breaking space, are content to YAML, and may be several
/// bytes long).
fn indentation(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// The keys (dotted, `optimizer.lr`) whose values differ between two
/// YAML mappings, such as two [`Recipe::training_yaml`] texts.
pub fn differing_keys(a: &str, b: &str) -> Vec<String> {
    fn walk(prefix: &str, a: Option<&yaml_serde::Value>, b: Option<&yaml_serde::Value>, out: &mut Vec<String>) {
        use yaml_serde::Value::Mapping;
        match (a, b) {
            (Some(Mapping(x)), Some(Mapping(y))) => {
                let mut keys: Vec<String> = x.keys().chain(y.keys()).filter_map(|k| k.as_str().map(str::to_string)).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&key, x.get(k.as_str()), y.get(k.as_str()), out);
                }
            }
            (x, y) if x != y => out.push(if prefix.is_empty() { "(all)".into() } else { prefix.to_string() }),
            _ => {}
        }
    }
    let parse = |t: &str| yaml_serde::from_str::<yaml_serde::Value>(t).ok();
    let mut out = Vec::new();
    walk("", parse(a).as_ref(), parse(b).as_ref(), &mut out);
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
prompt: a photo of a person with gray hair
steps: 10
alpha: 3
terms:
  - plugin: clip
  - plugin: segmentation
    weight: 0.1
    params:
      classes: [hair]
";

    #[test]
    fn parses_a_minimal_recipe_with_defaults() {
        let r = Recipe::parse(GOOD, Path::new("gray.yaml")).expect("valid");
        assert_eq!(r.name, "gray");
        assert_eq!(r.alpha, Alpha::Fixed(3.0));
        assert_eq!(r.preview.alphas, vec![-3.0, 0.0, 3.0]);
        assert_eq!(r.terms.len(), 2);
        assert_eq!(r.terms[0].weight, 1.0);
        assert!(r.terms[1].params.contains("hair"));
        assert_eq!(r.terms[1].params_line, 9);
        assert!(r.uses_demo());
        assert_eq!(r.output, PathBuf::from("runs/gray"));
    }

    #[test]
    fn hash_is_stable_and_sensitive() {
        let a = Recipe::parse(GOOD, Path::new("a.yaml")).unwrap();
        let b = Recipe::parse(GOOD, Path::new("a.yaml")).unwrap();
        let c = Recipe::parse(&GOOD.replace("steps: 10", "steps: 11"), Path::new("a.yaml")).unwrap();
        assert_eq!(a.hash(), b.hash());
        assert_ne!(a.hash(), c.hash());
    }

    #[test]
    fn precision_is_read_kept_and_left_out_of_the_training_hash() {
        let a = Recipe::parse(GOOD, Path::new("a.yaml")).unwrap();
        assert_eq!(a.raw.precision, None);
        assert!(!a.to_yaml().contains("precision"), "an unset precision is not written");
        let fp32 = Recipe::parse(&format!("{GOOD}\nprecision: fp32\n"), Path::new("a.yaml")).unwrap();
        assert_eq!(fp32.raw.precision, Some(crate::ops::Precision::Fp32));
        let again = Recipe::parse(&fp32.to_yaml(), Path::new("a.yaml")).unwrap();
        assert_eq!(again.raw.precision, Some(crate::ops::Precision::Fp32));
        assert_ne!(a.hash(), fp32.hash());
        assert_eq!(a.training_hash(), fp32.training_hash());
        let bad = Recipe::parse(&format!("{GOOD}\nprecision: bf16\n"), Path::new("a.yaml")).unwrap_err().to_string();
        assert!(bad.contains("tf32") && bad.contains("fp32"), "{bad}");
    }

    #[test]
    fn resolved_yaml_round_trips() {
        let a = Recipe::parse(GOOD, Path::new("a.yaml")).unwrap();
        let b = Recipe::parse(&a.to_yaml(), Path::new("a.yaml")).unwrap();
        assert_eq!(a.raw, b.raw);
    }

    #[test]
    fn weights_refs_classify() {
        assert_eq!(WeightsRef::from("demo".to_string()), WeightsRef::Demo);
        assert_eq!(WeightsRef::from("clip-vit-b32".to_string()), WeightsRef::Named("clip-vit-b32".into()));
        assert!(matches!(WeightsRef::from("w/g.pt".to_string()), WeightsRef::Path(_)));
        assert!(matches!(WeightsRef::from("g.safetensors".to_string()), WeightsRef::Path(_)));
    }

    /// An expectation line of a file in `tests/recipes/invalid/`:
    /// `# expect: LINE:COL KEY | substring | substring …` (`-` for no key),
    /// and `# needs: plugins|binary` when only the binary can check it.
    pub(crate) struct Expect {
        pub line: usize,
        pub column: usize,
        pub key: String,
        pub contains: Vec<String>,
        pub needs: Option<String>,
    }

    pub(crate) fn read_expect(text: &str) -> Expect {
        let first = text.lines().next().and_then(|l| l.strip_prefix("# expect: ")).expect("an '# expect:' first line");
        let mut parts = first.split(" | ");
        let head = parts.next().expect("position and key");
        let (pos, key) = head.split_once(' ').expect("'L:C KEY'");
        let (l, c) = pos.split_once(':').expect("L:C");
        let needs = text.lines().nth(1).and_then(|l| l.strip_prefix("# needs: ")).map(str::to_string);
        Expect {
            line: l.parse().expect("a line"),
            column: c.parse().expect("a column"),
            key: if key == "-" { String::new() } else { key.to_string() },
            contains: parts.map(str::to_string).collect(),
            needs,
        }
    }

    fn recipes_dir(kind: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/recipes").join(kind)
    }

    fn yaml_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .expect("the recipes folder")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        files
    }

    #[test]
    fn invalid_recipes_are_located_and_explained() {
        let files = yaml_files(&recipes_dir("invalid"));
        assert!(files.len() >= 30, "only {} invalid recipes", files.len());
        let mut failures = Vec::new();
        let mut checked = 0;
        for path in &files {
            let text = std::fs::read_to_string(path).expect("readable");
            let want = read_expect(&text);
            if want.needs.is_some() {
                continue; // tui/tests/run.rs checks these through the binary.
            }
            checked += 1;
            let got = std::panic::catch_unwind(|| Recipe::load(path));
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            match got {
                Err(_) => failures.push(format!("{name}: PANICKED")),
                Ok(Ok(_)) => failures.push(format!("{name}: accepted")),
                Ok(Err(e)) => {
                    let shown = e.to_string();
                    let ok = e.line == want.line
                        && e.column == want.column
                        && e.key == want.key
                        && shown.contains(&name)
                        && want.contains.iter().all(|c| shown.contains(c.as_str()));
                    if !ok {
                        failures.push(format!(
                            "{name}: got {}:{} '{}' {shown:?}; want {}:{} '{}' containing {:?}",
                            e.line, e.column, e.key, want.line, want.column, want.key, want.contains
                        ));
                    }
                }
            }
        }
        assert!(checked >= 30, "only {checked} checked here");
        assert!(failures.is_empty(), "{} of {checked} failed:\n{}", failures.len(), failures.join("\n"));
    }

    #[test]
    fn valid_recipes_and_examples_parse() {
        let mut files = yaml_files(&recipes_dir("valid"));
        files.extend(yaml_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/recipes")));
        assert!(files.len() >= 5);
        for path in files {
            if let Err(e) = Recipe::load(&path) {
                panic!("{e}");
            }
        }
    }

    #[test]
    fn params_keep_their_text_and_position() {
        let text = "prompt: p\nsteps: 1\nterms:\n  - plugin: seg\n    params:\n      # comment\n      classes: [hair]\n\n      size: 64\n  - plugin: clip\n    params: {resize: bilinear}\n";
        let r = Recipe::parse(text, Path::new("p.yaml")).expect("valid");
        assert_eq!(r.terms[0].params, "# comment\nclasses: [hair]\n\nsize: 64\n");
        assert_eq!((r.terms[0].params_line, r.terms[0].params_indent), (6, 6));
        assert_eq!(r.terms[1].params, "{resize: bilinear}\n");
        assert_eq!((r.terms[1].params_line, r.terms[1].params_column), (11, 12));
    }

    /// Issue 15: a params line indented with spaces then a non-breaking
    /// space (valid YAML: the NBSP is content) made the params cutting slice
    /// inside the two-byte character and panic.
    #[test]
    fn issue_15_params_indented_with_a_non_breaking_space_do_not_panic() {
        for text in [
            "prompt: p\nsteps: 1\nterms:\n  - plugin: x\n    params: {a: 1,\n      b: 2,\n     \u{a0}c: 3}\n",
            "prompt: p\nsteps: 1\nterms:\n  - plugin: x\n    params:\n      a: 1\n     \u{a0}# not a comment\n",
            "prompt: p\nsteps: 1\nterms:\n  - plugin: x\n    params:\n      a: \"x\n     \u{a0}y\"\n",
        ] {
            let got = std::panic::catch_unwind(|| Recipe::parse(text, Path::new("nbsp.yaml")));
            let got = got.unwrap_or_else(|_| panic!("Recipe::parse panicked on {text:?}"));
            if let Ok(r) = got {
                // Whatever was cut out reads back as the same mapping.
                let parsed: yaml_serde::Value = yaml_serde::from_str(&r.terms[0].params).expect("params are YAML");
                assert_eq!(Some(parsed), r.raw.terms[0].params, "{text:?}");
            }
        }
    }

    /// Issue 15: `alpha: {min: -3.0e38, max: 3.0e38}` passed validation and
    /// the sampler panicked at step 1 (`max - min` overflows in f32).
    #[test]
    fn issue_15_alpha_range_whose_width_overflows_is_refused() {
        let text = GOOD.replace("alpha: 3", "alpha: {min: -3.0e38, max: 3.0e38}");
        let e = Recipe::parse(&text, Path::new("wide.yaml")).expect_err("an overflowing range");
        assert_eq!(e.key, "alpha");
        assert!(e.message.contains("too wide"), "{e}");
        assert_eq!((e.line, e.column), (3, 1));
    }

    /// Issue 15: `alpha: {min: 0, max: 1, min_abs: 0.99999994}` is valid,
    /// but rejection sampling never drew an admissible α, so the engine
    /// spun for ever. The sampler must return an admissible α at once.
    #[test]
    fn issue_15_alpha_sampler_returns_for_a_nearly_empty_range() {
        use rand::SeedableRng;
        let text = GOOD.replace("alpha: 3", "alpha: {min: 0, max: 1, min_abs: 0.99999994}");
        let r = Recipe::parse(&text, Path::new("narrow.yaml")).expect("a valid range");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let t = std::time::Instant::now();
        for _ in 0..1000 {
            let a = r.alpha.sample(&mut rng);
            assert!((0.99999994..=1.0).contains(&a), "{a}");
        }
        assert!(t.elapsed() < std::time::Duration::from_secs(2), "{:?}", t.elapsed());
        // Both halves of a symmetric range are drawn, never inside min_abs.
        let sym = Alpha::Range { min: -2.0, max: 2.0, min_abs: 1.9999999 };
        let draws: Vec<f32> = (0..200).map(|_| sym.sample(&mut rng)).collect();
        assert!(draws.iter().all(|a| a.abs() >= 1.9999999 && a.abs() <= 2.0), "{draws:?}");
        assert!(draws.iter().any(|&a| a < 0.0) && draws.iter().any(|&a| a > 0.0));
    }

    /// The draw of an ordinary range is the historical rejection draw, so
    /// a checkpoint of an older build resumes onto the same α stream.
    #[test]
    fn alpha_sampler_keeps_the_rejection_stream() {
        use rand::{Rng, SeedableRng};
        let (min, max, min_abs) = (-3.0f32, 3.0f32, 1.0f32);
        let mut a = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut b = a.clone();
        for _ in 0..500 {
            let want = loop {
                let x = b.random_range(min..=max);
                if x.abs() >= min_abs {
                    break x;
                }
            };
            assert_eq!(Alpha::Range { min, max, min_abs }.sample(&mut a), want);
        }
    }

    #[test]
    fn seeds_parse() {
        assert_eq!(parse_seeds("3"), Ok(vec![3]));
        assert_eq!(parse_seeds("1, 2,5"), Ok(vec![1, 2, 5]));
        assert_eq!(parse_seeds("0..3,7"), Ok(vec![0, 1, 2, 7]));
        assert_eq!(parse_seeds("2..=4"), Ok(vec![2, 3, 4]));
        for bad in ["", "a", "3..3", "1,,2", "-1", "0..99999999"] {
            let e = parse_seeds(bad).expect_err(bad);
            assert!(e.contains("0..10"), "{e}");
        }
    }

    #[test]
    fn latents_and_layer_presets() {
        let text = "prompt: gray hair\nsteps: 5\nterms:\n  - plugin: clip\nseeds: []\nlatents: [me.npy]\nlayers: fine\n";
        let r = Recipe::parse(text, Path::new("p.yaml")).expect("valid");
        assert_eq!(r.latents, vec![PathBuf::from("me.npy")]);
        assert_eq!(r.layers, None);
        assert_eq!(r.layer_preset.as_ref().map(|s| s.text()), Some("fine"));
        assert_eq!(r.preview.seeds, vec![crate::latents::key(0)]);
        // The resolved recipe keeps both, and reads back the same.
        let again = Recipe::parse(&r.to_yaml(), Path::new("p.yaml")).expect("round trip");
        assert_eq!(again.raw, r.raw);
        // Numbers as text resolve at once; lists are unchanged; no latents, no key.
        let text = "prompt: x\nsteps: 5\nterms:\n  - plugin: clip\nlayers: 0-2,5\n";
        let r = Recipe::parse(text, Path::new("p.yaml")).expect("valid");
        assert_eq!((r.layers.clone(), r.layer_preset.clone()), (Some(vec![0, 1, 2, 5]), None));
        assert!(!r.to_yaml().contains("latents"), "an empty list is not written, so old hashes stay");
        assert_eq!(r.preview.seeds, vec![0]);
    }
}

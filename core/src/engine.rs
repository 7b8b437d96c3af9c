//! The training engine: runs a recipe on its own thread.
//!
//! The engine sends [`events::TrainEvent`]s and reads [`events::Control`]s;
//! [`EngineHandle`] bundles both channels and the thread. The TUI and the
//! headless runner are two consumers of the same handle.
//!
//! # One step
//!
//! 1. Choose the step's latents: the training seeds (all of them, or
//!    `batch` of them drawn per step), or `batch` fresh seeds
//!    (`resample: true`). Each seed's `w` is the mapping of its z, truncated.
//! 2. `x = G(w)` without gradient. With stored or zero noise an image does
//!    not depend on its batch: the seeds not cached render in one batch and
//!    are cached per seed (bit-identical whatever the batch composition,
//!    which keeps `--resume` exact); with seeded noise they are computed
//!    per batch, and cached when the batch never changes.
//! 3. `x_edit = G(w + α·u)` for every latent and every direction (`N =
//!    batch × K` samples; with `direction_draw: one_hot`, LELSD's, `u` is
//!    the step's one relaxed one-hot mixture `Σ c_k u_k` and `N = batch`),
//!    with the generator's feature maps when a term asked for them.
//! 4. Each term's value and input gradients ([`plugin::differentiate`] for
//!    in-process terms, the plugin's own backward for plugins), left on the
//!    device.
//! 5. One backward pass through the generator of the vector–Jacobian
//!    surrogate [`plugin::surrogate`] (plus the diversity term and the
//!    latent L2 term, which live in the host graph).
//! 6. The optimiser step ([`crate::optim`]), then the norm constraint (see
//!    [`crate::recipe`] for what α means under each [`Norm`]).
//! 7. The step's one read of the device ([`readback::scalars`]): the
//!    values, a finiteness probe of each gradient a term returned, the
//!    gradient norm and a probe of the updated tensor. A non-finite one
//!    puts the trained tensor and the optimiser state back as they were
//!    before the step and stops the run, naming the term and the step.
//!
//! In `mode: latent` the trained tensor is a per-seed offset `δ` `[N, L,
//! D]` (StyleCLIP's latent optimisation, `w = w₀ + δ`); terms see it as
//! `u` with `K = N`, `direction[i] = i` and `α = 1`, so `w_edit() = w₀ + δ`.
//!
//! # Reproducibility
//!
//! Every random draw comes from ChaCha8 seeded with the recipe's `seed`:
//! stream 0 draws the initial direction, stream `s + 1` the latents, α and
//! the one-hot mixture of step `s`. (A latent seed becomes z by its own
//! draw: ChaCha8 or, with `seed_rng: numpy`, NumPy's `RandomState`.) Per-step randomness is thus a function of `(seed, step)`,
//! and a checkpoint (trained tensor, optimiser state, step, loss history)
//! is all `--resume` needs to end with the same direction as an
//! uninterrupted run, bit for bit on the CPU.

// A step reads the device once, through `readback` (see clippy.toml).
#![deny(clippy::disallowed_methods)]

pub mod events;
mod report;
pub mod terms;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::models::stylegan2::{Generator, LoadedGenerator, Noise, Source};
use crate::optim::{self, Optimizer};
use crate::plugin::{self, EditBatch, FeatureMaps, TermOutput};
use crate::readback;
use crate::recipe::{Alpha, AlphaPer, DirectionDraw, DiversityKind, LatentSpace, Mode, Norm, Recipe};
use crate::{Error, Result};
use events::{Control, Level, RunInfo, StepStats, TrainEvent};
pub use report::{CHECKPOINT_FILE, DIRECTION_FILE};
pub use terms::{load_plugin_terms, EngineTerm, TermImpl, Weights};

/// What a finished (or stopped) run leaves behind.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The run folder with every output.
    pub output: PathBuf,
    /// The last completed step.
    pub steps: usize,
    /// True when the run was stopped before its last step.
    pub stopped_early: bool,
}

/// A running engine: its event stream, its control channel and its thread.
pub struct EngineHandle {
    /// Events from the engine, in order. Never blocks the engine.
    pub events: Receiver<events::TrainEvent>,
    /// Commands to the engine.
    pub control: Sender<events::Control>,
    /// The engine thread; joins to the run's outcome.
    pub thread: JoinHandle<Result<RunSummary>>,
}

/// Everything a run needs besides the recipe: resolved, loaded things.
#[derive(Debug)]
pub struct Setup {
    /// The device to train on.
    pub device: Device,
    /// The networks' weights (`None` = demo network).
    pub weights: Weights,
    /// The loss terms, in the recipe's order (see [`load_plugin_terms`]).
    pub terms: Vec<EngineTerm>,
    /// Continue from the run folder's checkpoint when there is one.
    pub resume: bool,
    /// Stop (as [`Control::Stop`] does) once this step is done.
    pub stop_after: Option<usize>,
    /// Compute the CLIP metrics of `metrics.json` with the host's CLIP.
    pub metrics: bool,
    /// Run one untimed forward and backward pass before step 1 and report
    /// it as a warm-up ([`TrainEvent::WarmUp`], [`WARM_UP_KERNELS`]), so that
    /// first-use kernel compilation and cuDNN autotuning are not charged to
    /// step 1. `None`: on a CUDA device only.
    pub warm_up: Option<bool>,
}

impl Setup {
    /// A CPU setup with demo weights and the given terms.
    pub fn new(terms: Vec<EngineTerm>) -> Self {
        Self {
            device: Device::Cpu,
            weights: Weights::demo(),
            terms,
            resume: false,
            stop_after: None,
            metrics: true,
            warm_up: None,
        }
    }
}

/// Starts a run on a thread of its own.
pub fn spawn(recipe: Recipe, setup: Setup) -> EngineHandle {
    let (event_tx, events) = mpsc::channel();
    let (control, control_rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("lsd-engine".into())
        .spawn(move || run(recipe, setup, &event_tx, &control_rx))
        .expect("the OS can start a thread");
    EngineHandle { events, control, thread }
}

/// Runs a recipe on the calling thread, sending events and reading
/// controls; [`spawn`] calls this on a new thread. A failure is sent as
/// [`TrainEvent::Failed`] and returned.
pub fn run(
    recipe: Recipe,
    setup: Setup,
    events: &Sender<TrainEvent>,
    control: &Receiver<Control>,
) -> Result<RunSummary> {
    let started = Instant::now();
    let result = Engine::new(recipe, setup, events.clone()).and_then(|mut e| {
        // One run per folder at a time: held until the run returns.
        let _lock = crate::outputs::RunLock::acquire(e.recipe.output())?;
        e.train(control, started)
    });
    if let Err(e) = &result {
        let _ = events.send(TrainEvent::Failed { error: e.to_string() });
    }
    result
}

/// Per-step random stream `stream` of `seed` (0: initialisation, `s + 1`:
/// step `s`).
pub fn rng_for(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// An original image (and its feature maps) of one latent or one batch.
#[derive(Debug, Clone)]
struct Original {
    image: Tensor,
    features: Vec<Tensor>,
}

/// What the engine is training.
struct Engine {
    recipe: Recipe,
    setup: Setup,
    tx: Sender<TrainEvent>,
    gen: Generator,
    latent_avg: Tensor,
    /// `[1, L, 1]`, 1 on trained layers.
    mask: Tensor,
    /// `[K, L, D]` directions, or `[N, L, D]` latent offsets.
    param: Var,
    opt: Optimizer,
    /// Latent mode: `w₀` of every training seed, `[N, L, D]`.
    w0: Option<Tensor>,
    needs_features: bool,
    cache: HashMap<u64, Original>,
    batch_cache: Option<(Vec<u64>, Original)>,
    /// One row per completed step: step, total, terms…, grad_norm, lr.
    history: Vec<Vec<f64>>,
    /// Completed steps.
    step: usize,
    preview_alphas: Vec<f32>,
    term_names: Vec<String>,
    generator_sha: Option<String>,
    /// Folds the generator's identity, truncation and noise into every
    /// sample key ([`EditBatch::keys`]).
    key_salt: u64,
    /// What a checkpoint must match to be resumed (see `report.rs`).
    provenance: Option<report::Provenance>,
    /// The recipe's latent-file images, keyed by [`crate::latents::key`]
    /// among the seeds.
    latents: Vec<crate::latents::LatentImage>,
}

/// Wall time per phase of a step.
///
/// On a GPU the kernels run asynchronously, so a phase's wall time is only
/// the time to queue it, and the step's one read at the end waits for the
/// rest. Under `bench --profile` ([`crate::ops::profile::enabled`]) each
/// lap first waits for the device instead, so the phases are device time,
/// at the price of one wait per phase.
struct PhaseClock {
    last: Instant,
    laps: Vec<(String, f64)>,
    /// The device to wait for at each lap, when profiling off the CPU.
    wait_for: Option<Device>,
}

impl PhaseClock {
    fn start(device: &Device) -> Self {
        let wait_for = (crate::ops::profile::enabled() && !device.is_cpu()).then(|| device.clone());
        Self { last: Instant::now(), laps: Vec::new(), wait_for }
    }

    /// Records the time since the previous lap (or since the start).
    fn lap(&mut self, name: &str) {
        if let Some(device) = &self.wait_for {
            // A failed wait shows up in the step's read; the lap is then
            // only the time to queue the phase.
            #[allow(clippy::disallowed_methods, reason = "profiling only: phases measured as device time")]
            let _ = device.synchronize();
        }
        let now = Instant::now();
        self.laps.push((name.to_string(), (now - self.last).as_secs_f64()));
        self.last = now;
    }
}

/// What the warm-up before step 1 is, as [`TrainEvent::WarmUp`] says it.
pub const WARM_UP_KERNELS: &str = "kernel compilation";

/// A step's forward and backward pass, before the update.
struct Pass {
    /// The gradient with respect to the trained parameters.
    grad: Tensor,
    /// The scalars the step reads back, still on the device, in the order
    /// their checks run.
    watch: Vec<(Watched, Tensor)>,
    /// The gradients of the feature maps of `x_edit`, by term: not read on
    /// the way (they can be large), only probed to name the culprit when
    /// the gradient norm turns out non-finite.
    feature_grads: Vec<(String, String, Tensor)>,
}

/// What one scalar of a step's read-back is, and how it is checked.
#[derive(Debug)]
enum Watched {
    /// A history column — a term's value, or the diversity or latent-L2
    /// value — and its weight in the total.
    Value { term: String, weight: f64 },
    /// The [`readback::finiteness`] probe of a gradient a term returned.
    Gradient { term: String, of: String },
    /// The squared norm of the gradient with respect to the trained tensor.
    GradNormSq,
    /// The [`readback::finiteness`] probe of the trained tensor after the
    /// update.
    Update,
}

/// What a step's one read gives.
struct Readings {
    /// The history columns, in order.
    values: Vec<f64>,
    /// The weighted total.
    total: f64,
    /// The norm of the gradient with respect to the trained tensor.
    grad_norm: f64,
}

impl Pass {
    /// Reads every watched scalar in one transfer ([`readback::scalars`]),
    /// then runs the checks in order: the first non-finite one stops the
    /// step, naming its term (step `human`, 1-based).
    fn read(&self, human: usize) -> Result<Readings> {
        let got = readback::scalars(&self.watch.iter().map(|(_, t)| t.clone()).collect::<Vec<_>>())?;
        let mut r = Readings { values: Vec::new(), total: 0.0, grad_norm: 0.0 };
        for ((what, _), v) in self.watch.iter().zip(got) {
            let ok = v.is_finite();
            match what {
                Watched::Value { term, .. } if !ok => return Err(non_finite(term, human, "value", v)),
                Watched::Value { weight, .. } => {
                    r.values.push(v);
                    r.total += weight * v;
                }
                Watched::Gradient { term, of } if !ok => {
                    return Err(non_finite(term, human, &format!("gradient with respect to {of}"), v))
                }
                Watched::GradNormSq if !ok => return Err(self.culprit(human, v.sqrt())),
                Watched::GradNormSq => r.grad_norm = v.sqrt(),
                Watched::Update if !ok => return Err(non_finite("direction", human, "update", v)),
                Watched::Gradient { .. } | Watched::Update => {}
            }
        }
        Ok(r)
    }

    /// The error for a non-finite gradient norm: names the term whose
    /// feature-map gradient is not finite when there is one (a second read,
    /// on this failure path only), the total otherwise.
    fn culprit(&self, human: usize, norm: f64) -> Error {
        let probes = self.feature_grads.iter().map(|(_, _, g)| readback::finiteness(g)).collect::<Result<Vec<_>>>();
        let found = probes
            .and_then(|p| readback::scalars(&p))
            .ok()
            .and_then(|got| got.iter().position(|v| !v.is_finite()).map(|i| (&self.feature_grads[i], got[i])));
        match found {
            Some(((term, of, _), v)) => non_finite(term, human, &format!("gradient with respect to {of}"), v),
            None => non_finite("total", human, "gradient norm", norm),
        }
    }
}

/// Columns of the loss history after `step, total` and the terms.
const TAIL_COLUMNS: [&str; 2] = ["grad_norm", "lr"];
/// Most seeds whose originals are cached.
const CACHE_LIMIT: usize = 64;

impl Engine {
    fn new(mut recipe: Recipe, setup: Setup, tx: Sender<TrainEvent>) -> Result<Self> {
        if setup.terms.len() != recipe.terms().len() {
            return Err(Error::Config(format!(
                "the setup has {} loss terms for the recipe's {}",
                setup.terms.len(),
                recipe.terms().len()
            )));
        }
        let device = setup.device.clone();
        let _ = tx.send(TrainEvent::WarmUp { what: "loading the generator".into() });
        let source = Source::from_path(setup.weights.generator.clone());
        let LoadedGenerator { generator: gen, latent_avg, .. } = LoadedGenerator::load(&source, &device)?;
        let (l, d) = (gen.config().n_latent(), gen.config().style_dim);
        recipe.resolve_layers(l).map_err(|e| Error::Config(e.to_string()))?;
        let latents = crate::latents::load_all(recipe.latents(), l, d, &device)?;
        if let Some(&s) =
            recipe.preview().seeds.iter().find(|&&s| crate::latents::index(s).is_some_and(|i| i >= latents.len()))
        {
            return Err(recipe_error(
                &recipe,
                "preview.seeds",
                format!("seed {s} is reserved for latent files, and there are only {}", latents.len()),
            ));
        }
        let mask: Vec<f32> = (0..l).map(|i| recipe.layers().is_none_or(|ls| ls.contains(&i)) as u8 as f32).collect();
        let mask = Tensor::from_vec(mask, (1, l, 1), &device)?;
        let needs_features = setup.terms.iter().any(|t| t.needs().features);
        let mut term_names: Vec<String> = setup.terms.iter().map(|t| t.name.clone()).collect();
        let raw = recipe.raw();
        let k = raw.directions;
        if raw.mode == Mode::Direction && k > 1 && raw.diversity > 0.0 {
            term_names.push("diversity".into());
        }
        if raw.mode == Mode::Latent && raw.latent_l2 > 0.0 {
            term_names.push("latent_l2".into());
        }
        let mut engine = Self {
            preview_alphas: recipe.preview().alphas.clone(),
            gen,
            latent_avg,
            mask,
            param: Var::zeros((1, l, d), DType::F32, &device)?,
            opt: Optimizer::new(&raw.optimizer),
            w0: None,
            needs_features,
            cache: HashMap::new(),
            batch_cache: None,
            history: Vec::new(),
            step: 0,
            term_names,
            generator_sha: None,
            key_salt: 0,
            provenance: None,
            latents,
            recipe,
            setup,
            tx,
        };
        engine.key_salt = engine.key_salt()?;
        engine.init_param()?;
        // The networks are loaded (the terms by the caller, the generator
        // above): what loading freed goes back to the system.
        crate::ops::release_free_memory();
        Ok(engine)
    }

    fn send(&self, e: TrainEvent) {
        // A consumer that went away must not stop the run: outputs still get written.
        let _ = self.tx.send(e);
    }

    fn message(&self, level: Level, text: impl Into<String>) {
        self.send(TrainEvent::Message { level, text: text.into() });
    }

    fn device(&self) -> &Device {
        &self.setup.device
    }

    fn dims(&self) -> (usize, usize) {
        (self.gen.config().n_latent(), self.gen.config().style_dim)
    }

    /// `w` of a seed, `[1, L, D]` (a latent file's own, for its key).
    fn w_plus(&self, seed: u64) -> Result<Tensor> {
        if let Some(i) = crate::latents::index(seed) {
            let img = self.latents.get(i).ok_or_else(|| Error::Config(format!("no latent image {i}")))?;
            return Ok(img.w_plus.clone());
        }
        let psi = self.recipe.raw().truncation as f64;
        let trunc = (psi < 1.0).then_some((psi, &self.latent_avg));
        let w = self.gen.w_from_seed_with(seed, self.recipe.raw().seed_rng, trunc)?;
        Ok(self.gen.broadcast_latent(&w)?.contiguous()?)
    }

    /// The training images: the seeds, then the latent files' images
    /// ([`crate::latents::key`]).
    fn train_keys(&self) -> Vec<u64> {
        let mut keys = self.recipe.raw().seeds.clone();
        keys.extend((0..self.latents.len()).map(crate::latents::key));
        keys
    }

    /// How an image is named in previews and file names: the seed, or the
    /// latent file's label.
    fn image_label(&self, key: u64) -> String {
        match crate::latents::index(key).and_then(|i| self.latents.get(i)) {
            Some(img) => img.label.clone(),
            None => key.to_string(),
        }
    }

    fn w_batch(&self, seeds: &[u64]) -> Result<Tensor> {
        let ws = seeds.iter().map(|&s| self.w_plus(s)).collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&ws, 0)?)
    }

    fn noise(&self) -> Noise {
        self.recipe.noise()
    }

    /// What an original depends on besides its latent and, with seeded
    /// noise, its batch: the generator file (path, size, modification time;
    /// or the demo network), truncation and noise mode.
    fn key_salt(&self) -> Result<u64> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        match &self.setup.weights.generator {
            None => ("demo", crate::demo::DEMO_MODEL_SEED).hash(&mut h),
            Some(path) => {
                let meta = std::fs::metadata(path).map_err(|e| Error::io("reading", path, e))?;
                (path, meta.len(), meta.modified().ok()).hash(&mut h);
            }
        }
        self.recipe.raw().truncation.to_bits().hash(&mut h);
        format!("{:?}", self.noise()).hash(&mut h);
        Ok(h.finish())
    }

    /// The key of each sample's original (see [`EditBatch::keys`]), from
    /// the latent seed of every sample. With seeded noise an original
    /// depends on its place in the batch it was rendered in (which has the
    /// samples' layout), so the key names the batch and the place.
    fn sample_keys(&self, per_sample: &[u64]) -> Vec<u64> {
        use std::hash::{Hash, Hasher};
        let seeded = matches!(self.noise(), Noise::Seeded(_));
        (0..per_sample.len())
            .map(|i| {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                self.key_salt.hash(&mut h);
                if seeded {
                    (per_sample, i).hash(&mut h);
                } else {
                    per_sample[i].hash(&mut h);
                }
                h.finish()
            })
            .collect()
    }

    /// The initial trained tensor.
    fn init_param(&mut self) -> Result<()> {
        let (l, d) = self.dims();
        let raw = self.recipe.raw();
        match raw.mode {
            Mode::Direction => {
                let k = raw.directions;
                let mut rng = rng_for(raw.seed, 0);
                let rows = self.param_layers();
                let data: Vec<f32> = (0..k * rows * d).map(|_| StandardNormal.sample(&mut rng)).collect();
                let u = Tensor::from_vec(data, (k, rows, d), self.device())?;
                // Every norm starts from unit layers so α means the same at step 0.
                let u = self.constrain(&u, Norm::Layer)?;
                self.param = Var::from_tensor(&u)?;
            }
            Mode::Latent => {
                let seeds = self.train_keys();
                self.w0 = Some(self.w_batch(&seeds)?);
                self.param = Var::zeros((seeds.len(), l, d), DType::F32, self.device())?;
            }
        }
        Ok(())
    }

    /// The trained tensor as the generator sees it (masked; in W, the tied
    /// vector broadcast to the layers), `[K, L, D]`, in the graph.
    fn effective(&self) -> Result<Tensor> {
        Ok(self.param.as_tensor().broadcast_mul(&self.mask)?)
    }

    /// Rows per direction of the trained tensor: 1 in W (one vector tied
    /// across the layers), `L` in W+.
    fn param_layers(&self) -> usize {
        match self.recipe.raw().space {
            LatentSpace::W => 1,
            LatentSpace::Wplus => self.dims().0,
        }
    }

    /// The norm constraint on a trained tensor (`[K, 1, D]` in W, `[K, L,
    /// D]` in W+, masked to the trained layers).
    fn constrain(&self, param: &Tensor, norm: Norm) -> Result<Tensor> {
        match self.recipe.raw().space {
            LatentSpace::W => normalize(param, norm, &Tensor::ones((1, 1, 1), param.dtype(), param.device())?),
            LatentSpace::Wplus => normalize(&param.broadcast_mul(&self.mask)?, norm, &self.mask),
        }
    }

    /// Directions edited per latent in a step: `K`, or 1 when a step edits
    /// with one relaxed one-hot mixture of the `K` (LELSD).
    fn directions_per_step(&self) -> usize {
        let raw = self.recipe.raw();
        match raw.mode {
            Mode::Latent => 1,
            Mode::Direction if raw.directions > 1 && raw.direction_draw == DirectionDraw::OneHot => 1,
            Mode::Direction => raw.directions,
        }
    }

    /// The step's seeds, α per sample and, when a step edits with one
    /// mixture of the directions, its coefficients.
    fn draw(&self, step: usize) -> (Vec<u64>, Vec<f32>, Option<Vec<f32>>) {
        let raw = self.recipe.raw();
        let mut rng = rng_for(raw.seed, step as u64 + 1);
        let keys = self.train_keys();
        let seeds: Vec<u64> = if raw.mode == Mode::Latent {
            keys
        } else if raw.resample {
            (0..raw.batch).map(|_| rng.random::<u32>() as u64).collect()
        } else if raw.batch >= keys.len() {
            keys
        } else {
            let mut idx = rand::seq::index::sample(&mut rng, keys.len(), raw.batch).into_vec();
            idx.sort_unstable();
            idx.into_iter().map(|i| keys[i]).collect()
        };
        let n = seeds.len() * self.directions_per_step();
        let alphas = match (raw.mode, self.recipe.alpha(), raw.alpha_per) {
            (Mode::Latent, _, _) => vec![1.0; n],
            (_, Alpha::Fixed(a), _) => vec![a; n],
            (_, alpha @ Alpha::Range { .. }, AlphaPer::Sample) => (0..n).map(|_| alpha.sample(&mut rng)).collect(),
            (_, alpha @ Alpha::Range { .. }, AlphaPer::Step) => vec![alpha.sample(&mut rng); n],
        };
        let mixture =
            (raw.mode == Mode::Direction && raw.directions > 1 && raw.direction_draw == DirectionDraw::OneHot)
                .then(|| relaxed_one_hot(&mut rng, raw.directions, raw.one_hot_temperature as f64));
        (seeds, alphas, mixture)
    }

    /// Originals of `seeds`, `[B, …]`, cached per seed where the image does
    /// not depend on its batch.
    fn originals(&mut self, seeds: &[u64]) -> Result<Original> {
        let noise = self.noise();
        let features = self.needs_features;
        if matches!(noise, Noise::Seeded(_)) {
            if let Some((s, o)) = &self.batch_cache {
                if s == seeds {
                    return Ok(o.clone());
                }
            }
            let out = self.gen.synthesis(&self.w_batch(seeds)?, noise, features)?;
            let o = Original { image: out.image.detach(), features: out.features.iter().map(Tensor::detach).collect() };
            let fixed = !self.recipe.raw().resample && seeds.len() == self.train_keys().len();
            if fixed {
                self.batch_cache = Some((seeds.to_vec(), o.clone()));
            }
            return Ok(o);
        }
        // The seeds not cached render in one batch; each image is bit for
        // bit the one rendered alone (the generator computes per-sample
        // layers row by row), so the cache does not depend on batching.
        let mut seen = std::collections::HashSet::new();
        let missing: Vec<u64> =
            seeds.iter().copied().filter(|s| !self.cache.contains_key(s) && seen.insert(*s)).collect();
        let mut rendered = HashMap::new();
        if !missing.is_empty() {
            let out = self.gen.synthesis(&self.w_batch(&missing)?, noise, features)?;
            for (i, &s) in missing.iter().enumerate() {
                let image = out.image.narrow(0, i, 1)?.detach();
                let features = out.features.iter().map(|f| Ok(f.narrow(0, i, 1)?.detach())).collect::<Result<_>>()?;
                rendered.insert(s, Original { image, features });
            }
        }
        let cacheable = !self.recipe.raw().resample;
        for &s in &missing {
            if cacheable && self.cache.len() < CACHE_LIMIT {
                self.cache.insert(s, rendered[&s].clone());
            }
        }
        let rows: Vec<&Original> = seeds.iter().map(|s| rendered.get(s).unwrap_or_else(|| &self.cache[s])).collect();
        let image = Tensor::cat(&rows.iter().map(|o| &o.image).collect::<Vec<_>>(), 0)?;
        let n_maps = rows.first().map_or(0, |o| o.features.len());
        let features = (0..n_maps)
            .map(|j| Tensor::cat(&rows.iter().map(|o| &o.features[j]).collect::<Vec<_>>(), 0))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Original { image, features })
    }

    /// One optimisation step (0-based `step`): returns the stats, or an
    /// error naming the term that went non-finite.
    ///
    /// The update is applied before anything is read, and the step's
    /// scalars — values, finiteness probes, gradient norm, the check of the
    /// update — are read together at the end ([`Pass::read`]): one host
    /// synchronisation per step on a GPU. When the read finds a non-finite
    /// scalar, the trained tensor and the optimiser state go back to what
    /// they were before the step.
    fn train_step(&mut self, step: usize) -> Result<StepStats> {
        let mut clock = PhaseClock::start(self.device());
        let mut pass = self.pass(step, &mut clock)?;
        let human = step + 1;
        let raw = self.recipe.raw();
        let lr = optim::learning_rate(&raw.optimizer, step, raw.steps);
        let saved = (self.param.as_tensor().copy()?, self.opt.clone());
        let read = self.update(&pass.grad, lr).and_then(|probe| {
            pass.watch.push((Watched::Update, probe));
            pass.read(human)
        });
        let Readings { values, total, grad_norm } = match read {
            Ok(r) => r,
            Err(e) => {
                self.param.set(&saved.0)?;
                self.opt = saved.1;
                return Err(e);
            }
        };
        let mut row = vec![human as f64, total];
        row.extend(&values);
        row.extend([grad_norm, lr]);
        self.history.push(row);
        self.step = human;
        clock.lap("update");
        Ok(StepStats { step: human, terms: values, total, grad_norm, steps_per_sec: 0.0, timings: clock.laps })
    }

    /// The optimiser step and the norm constraint; returns the
    /// [`readback::finiteness`] probe of the updated tensor, unread.
    fn update(&mut self, grad: &Tensor, lr: f64) -> Result<Tensor> {
        self.opt.step(&self.param, grad, lr)?;
        let raw = self.recipe.raw();
        if raw.mode == Mode::Direction && raw.norm != Norm::None {
            let next = self.constrain(self.param.as_tensor(), raw.norm)?;
            self.param.set(&next)?;
        }
        readback::finiteness(self.param.as_tensor())
    }

    /// The forward and backward pass of step `step` (0-based): the batch,
    /// every term with its checks, the objective and its gradient with
    /// respect to the trained parameters — everything but the update, so
    /// [`Engine::warm_up`] can run it without changing the run.
    fn pass(&mut self, step: usize, clock: &mut PhaseClock) -> Result<Pass> {
        let raw = self.recipe.raw().clone();
        let (seeds, alphas, mixture) = self.draw(step);
        let b = seeds.len();
        let k = self.directions_per_step();
        let n = alphas.len();
        // Sample i edits latent i % b with direction i / b.
        let (latent_of, direction): (Vec<u32>, Vec<usize>) = match raw.mode {
            Mode::Direction => (0..n).map(|i| ((i % b) as u32, i / b)).unzip(),
            Mode::Latent => (0..n).map(|i| (i as u32, i)).unzip(),
        };
        let per_sample: Vec<u64> = latent_of.iter().map(|&j| seeds[j as usize]).collect();
        let keys = self.sample_keys(&per_sample);
        let ids = Tensor::from_vec(latent_of, n, self.device())?;
        let w_b = match (&self.w0, raw.mode) {
            (Some(w0), Mode::Latent) => w0.clone(),
            _ => self.w_batch(&seeds)?,
        };
        let w = if k == 1 { w_b.clone() } else { w_b.index_select(&ids, 0)? };
        let original = if matches!(self.noise(), Noise::Seeded(_)) && k > 1 {
            // Seeded noise depends on the batch position: render the originals
            // with the same N-sample layout as the edits.
            let out = self.gen.synthesis(&w, self.noise(), self.needs_features)?;
            Original { image: out.image.detach(), features: out.features.iter().map(Tensor::detach).collect() }
        } else {
            let o = self.originals(&seeds)?;
            if k == 1 {
                o
            } else {
                Original {
                    image: o.image.index_select(&ids, 0)?,
                    features: o.features.iter().map(|f| f.index_select(&ids, 0)).collect::<candle_core::Result<_>>()?,
                }
            }
        };
        clock.lap("originals");
        let u = self.effective()?;
        // LELSD: the step's one direction is the mixture `Σ c_k u_k`.
        let edit_u = match &mixture {
            Some(c) => {
                let (kk, l, d) = u.dims3()?;
                let c = Tensor::from_slice(c, (1, kk), u.device())?;
                c.matmul(&u.reshape((kk, l * d))?)?.reshape((1, l, d))?
            }
            None => u.clone(),
        };
        let mut batch = EditBatch {
            x: original.image,
            x_edit: original_placeholder(&w)?,
            w: w.detach(),
            u: edit_u,
            alpha: alphas.clone(),
            direction,
            prompt: raw.prompt.clone(),
            features: None,
            keys: Some(keys),
        };
        let w_edit = batch.w_edit()?;
        let out = self.gen.synthesis(&w_edit, self.noise(), self.needs_features)?;
        batch.x_edit = out.image;
        if self.needs_features {
            batch.features = Some(FeatureMaps { x: original.features, x_edit: out.features });
        }
        batch.validate()?;
        clock.lap("generator forward");

        let human = step + 1;
        let mut outputs: Vec<TermOutput> = Vec::new();
        let mut watch = Vec::new();
        let mut feature_grads = Vec::new();
        for term in &self.setup.terms {
            let o = term
                .evaluate(&batch)
                .map_err(|e| Error::Config(format!("loss term '{}' at step {human}: {e}", term.name)))?;
            watch.push((Watched::Value { term: term.name.clone(), weight: term.weight }, o.value.clone()));
            for (of, g) in [("x_edit", &o.grad_x_edit), ("w", &o.grad_w), ("u", &o.grad_u)] {
                if let Some(g) = g {
                    let of = of.to_string();
                    watch.push((Watched::Gradient { term: term.name.clone(), of }, readback::finiteness(g)?));
                }
            }
            for (j, g) in o.grad_features_edit.iter().enumerate() {
                if let Some(g) = g {
                    feature_grads.push((term.name.clone(), format!("features.x_edit[{j}]"), g.clone()));
                }
            }
            outputs.push(o);
            clock.lap(&format!("term {}", term.name));
        }
        let weights: Vec<f64> = self.setup.terms.iter().map(|t| t.weight).collect();
        let mut objective = plugin::surrogate(&outputs, &weights, &batch)?;
        drop(outputs);
        if raw.mode == Mode::Direction && raw.directions > 1 && raw.diversity > 0.0 {
            let div = match raw.diversity_kind {
                DiversityKind::SquaredCosine => diversity(&u)?,
                DiversityKind::Correlation => {
                    let trained = match (raw.space, self.recipe.layers()) {
                        (LatentSpace::W, _) => self.param.as_tensor().clone(),
                        (LatentSpace::Wplus, None) => u.clone(),
                        (LatentSpace::Wplus, Some(ls)) => {
                            let idx = Tensor::from_vec(
                                ls.iter().map(|&x| x as u32).collect::<Vec<_>>(),
                                ls.len(),
                                u.device(),
                            )?;
                            u.index_select(&idx, 1)?
                        }
                    };
                    correlation_diversity(&trained)?
                }
            };
            let weight = raw.diversity as f64;
            watch.push((Watched::Value { term: "diversity".into(), weight }, div.detach()));
            objective = (objective + (div * weight)?)?;
        }
        if raw.mode == Mode::Latent && raw.latent_l2 > 0.0 {
            // StyleCLIP: ‖w − w₀‖², summed over W+, averaged over the images.
            let l2 = (u.sqr()?.sum_all()? / n as f64)?;
            let weight = raw.latent_l2 as f64;
            watch.push((Watched::Value { term: "latent_l2".into(), weight }, l2.detach()));
            objective = (objective + (l2 * weight)?)?;
        }
        let grads = objective.backward()?;
        let grad = match grads.get(self.param.as_tensor()) {
            Some(g) => g.clone(),
            None => self.param.as_tensor().zeros_like()?,
        };
        watch.push((Watched::GradNormSq, grad.sqr()?.sum_all()?));
        clock.lap("generator backward");
        Ok(Pass { grad, watch, feature_grads })
    }

    /// The next step's forward and backward pass, untimed and discarded:
    /// compiles and autotunes every kernel the steps use. It changes nothing
    /// the run computes: the step's draw depends on its number only, and
    /// the caches it fills hold what the step would compute.
    fn warm_up(&mut self) -> Result<()> {
        let mut clock = PhaseClock::start(self.device());
        // The read waits for the device, so the warm-up's work is done
        // before step 1's clock starts.
        self.pass(self.step, &mut clock)?.read(self.step + 1).map(|_| ())
    }

    fn info(&self, start_step: usize) -> RunInfo {
        RunInfo {
            recipe: self.recipe.name().to_string(),
            prompt: self.recipe.raw().prompt.clone(),
            mode: match self.recipe.raw().mode {
                Mode::Direction => "direction".into(),
                Mode::Latent => "latent".into(),
            },
            device: plugin::device_name(self.device()),
            total_steps: self.recipe.raw().steps,
            start_step,
            terms: self.term_names.clone(),
            demo: self.setup.weights.generator.is_none() || self.recipe.uses_demo(),
            output: self.recipe.output().to_path_buf(),
        }
    }

    /// The history's column names.
    fn columns(&self) -> Vec<String> {
        let mut c = vec!["step".to_string(), "total".to_string()];
        c.extend(self.term_names.iter().cloned());
        c.extend(TAIL_COLUMNS.iter().map(|s| s.to_string()));
        c
    }

    fn train(&mut self, control: &Receiver<Control>, started: Instant) -> Result<RunSummary> {
        let total_steps = self.recipe.raw().steps;
        if self.setup.resume {
            self.resume()?;
        }
        let start_step = self.step;
        self.send(TrainEvent::Started(self.info(start_step)));
        if start_step > 0 {
            self.message(Level::Info, format!("resumed from the checkpoint at step {start_step}"));
        }
        if self.info(start_step).demo {
            self.message(Level::Warn, crate::demo::DEMO_LABEL);
        }
        self.preview()?;
        let warmed = self.step < total_steps && self.setup.warm_up.unwrap_or_else(|| self.device().is_cuda());
        if warmed {
            self.send(TrainEvent::WarmUp { what: WARM_UP_KERNELS.into() });
            if let Err(e) = self.warm_up() {
                self.message(Level::Error, format!("{e} (in the warm-up pass before step {})", self.step + 1));
                return Err(e);
            }
        }
        let mut rate: Option<f64> = None;
        let mut stopped_early = false;
        let every_ckpt = self.recipe.raw().checkpoint_every;
        let every_preview = self.recipe.preview().every;
        while self.step < total_steps {
            match self.poll(control)? {
                Flow::Go => {}
                Flow::Stop => {
                    stopped_early = true;
                    break;
                }
            }
            let step = self.step;
            // Without a warm-up pass, step 1 pays for the first use of every
            // kernel: it is reported as such and left out of the rate.
            let first = step == start_step && !warmed;
            if first {
                self.send(TrainEvent::WarmUp { what: "first step (allocating, compiling kernels)".into() });
            }
            let t0 = Instant::now();
            let mut stats = match self.train_step(step) {
                Ok(s) => s,
                Err(e) => {
                    self.message(Level::Error, format!("{e}; keeping the direction of step {}", self.step));
                    // Keep the last good state on disk.
                    let _ = self.write_outputs(started, false);
                    return Err(e);
                }
            };
            let dt = t0.elapsed().as_secs_f64().max(1e-9);
            if !first {
                rate = Some(match rate {
                    Some(r) => 0.8 * r + 0.2 / dt,
                    None => 1.0 / dt,
                });
            }
            stats.steps_per_sec = rate.unwrap_or(1.0 / dt);
            self.send(TrainEvent::Step(stats));
            if every_ckpt > 0 && self.step.is_multiple_of(every_ckpt) && self.step < total_steps {
                self.checkpoint_or_warn();
            }
            if every_preview > 0 && self.step.is_multiple_of(every_preview) && self.step < total_steps {
                self.preview()?;
            }
            if self.setup.stop_after.is_some_and(|s| self.step >= s) && self.step < total_steps {
                stopped_early = true;
                break;
            }
        }
        self.preview()?;
        self.write_outputs(started, true)?;
        self.send(TrainEvent::Finished { output: self.recipe.output().to_path_buf(), elapsed: started.elapsed() });
        Ok(RunSummary { output: self.recipe.output().to_path_buf(), steps: self.step, stopped_early })
    }

    /// Handles pending controls; blocks while paused.
    fn poll(&mut self, control: &Receiver<Control>) -> Result<Flow> {
        let mut paused = false;
        loop {
            let c = if paused {
                match control.recv() {
                    Ok(c) => c,
                    // Nobody can resume us: carry on rather than hang.
                    Err(_) => Control::Resume,
                }
            } else {
                match control.try_recv() {
                    Ok(c) => c,
                    Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => return Ok(Flow::Go),
                }
            };
            match c {
                Control::Pause => {
                    if !paused {
                        paused = true;
                        self.send(TrainEvent::Paused(true));
                    }
                }
                Control::Resume => {
                    if paused {
                        self.send(TrainEvent::Paused(false));
                        return Ok(Flow::Go);
                    }
                }
                Control::Stop => {
                    if paused {
                        self.send(TrainEvent::Paused(false));
                    }
                    return Ok(Flow::Stop);
                }
                Control::SaveNow => match self.write_outputs(Instant::now(), false) {
                    Ok(()) => self.message(Level::Info, format!("saved the outputs of step {}", self.step)),
                    Err(e) => self.message(Level::Warn, format!(
                        "could not save the outputs of step {}: {e}; training goes on, the files already there are kept",
                        self.step
                    )),
                },
                Control::SetPreviewAlphas(a) => {
                    if a.is_empty() || a.iter().any(|x| !x.is_finite()) {
                        self.message(Level::Warn, "preview α values must be finite and non-empty; kept the old ones");
                    } else {
                        self.preview_alphas = a;
                        self.preview()?;
                    }
                }
            }
        }
    }
}

enum Flow {
    Go,
    Stop,
}

/// A zero tensor shaped like an image batch for `w`'s batch; replaced by
/// the real `x_edit` before use (it only lets `EditBatch::w_edit` run).
fn original_placeholder(w: &Tensor) -> Result<Tensor> {
    Ok(Tensor::zeros((w.dim(0)?, 3, 1, 1), w.dtype(), w.device())?)
}

fn non_finite(term: &str, step: usize, what: &str, value: f64) -> Error {
    Error::Config(format!(
        "loss term '{term}' gave a non-finite {what} ({value}) at step {step}; the run stopped. Lower the learning rate or the term's weight, or check its parameters"
    ))
}

fn recipe_error(recipe: &Recipe, key: &str, message: String) -> Error {
    Error::Config(recipe.error_at(key, message).to_string())
}

/// Applies the norm constraint to `u` `[K, L, D]` (already masked).
pub fn normalize(u: &Tensor, norm: Norm, mask: &Tensor) -> Result<Tensor> {
    const EPS: f64 = 1e-12;
    Ok(match norm {
        Norm::None => u.clone(),
        Norm::Layer => {
            let n = u.sqr()?.sum_keepdim(2)?.sqrt()?.clamp(EPS, f64::INFINITY)?;
            u.broadcast_div(&n)?.broadcast_mul(mask)?
        }
        Norm::Total => {
            let k = u.dim(0)?;
            let n = u.reshape((k, ()))?.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(EPS, f64::INFINITY)?;
            u.broadcast_div(&n.reshape((k, 1, 1))?)?
        }
    })
}

/// The squared-cosine diversity term of `K` directions `[K, L, D]`
/// (`diversity_kind: squared_cosine`; LELSD's is [`correlation_diversity`]):
/// the mean over pairs `k ≠ l` of the squared cosine similarity of the
/// flattened directions. 0 when they are orthogonal, 1 when parallel.
pub fn diversity(u: &Tensor) -> Result<Tensor> {
    let k = u.dim(0)?;
    if k < 2 {
        return Ok(Tensor::zeros((), u.dtype(), u.device())?);
    }
    let flat = u.reshape((k, ()))?;
    let unit = flat.broadcast_div(&flat.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::INFINITY)?)?;
    let c = unit.matmul(&unit.t()?)?;
    let c2 = c.sqr()?;
    let off = (c2.sum_all()? - c2.diagonal_sum()?)?;
    Ok((off / (k * (k - 1)) as f64)?)
}

/// LELSD's correlation loss of `K` directions `[K, L, D]` (its
/// `correlation_loss` per layer, averaged over the `L` layers given —
/// <https://github.com/IVRL/LELSD/blob/main/lelsd.py>): for each layer, the
/// mean over all `K²` entries of `|corr(u_i, u_j) − δ_ij|`, with `corr` the
/// cosine. 0 for orthogonal directions, `(K − 1)/K` for parallel or
/// antiparallel ones. The reference divides by the norms unguarded; here a
/// zero vector (an untrained direction's layer) is uncorrelated with every
/// other and contributes nothing, not NaN.
pub fn correlation_diversity(u: &Tensor) -> Result<Tensor> {
    let k = u.dim(0)?;
    if k < 2 {
        return Ok(Tensor::zeros((), u.dtype(), u.device())?);
    }
    let per_layer = u.transpose(0, 1)?.contiguous()?; // [L, K, D]
    let cov = per_layer.matmul(&per_layer.transpose(1, 2)?)?; // [L, K, K]
    let sq = per_layer.sqr()?.sum_keepdim(2)?; // [L, K, 1]
    let nonzero = sq.gt(0.0)?.to_dtype(u.dtype())?.detach();
    // 1/‖u‖ where ‖u‖ > 0, else 0; the square root is taken of 1 there, so
    // neither the value nor the gradient divides by zero.
    let inv = (&nonzero / (sq + (1.0 - &nonzero)?)?.sqrt()?)?;
    let corr = cov.broadcast_mul(&inv)?.broadcast_mul(&inv.transpose(1, 2)?)?;
    // δ_ij, minus the diagonal of zero vectors (their corr is 0 there too).
    let eye = Tensor::eye(k, u.dtype(), u.device())?.unsqueeze(0)?;
    let target = eye.broadcast_mul(&nonzero)?;
    // The mean over [L, K, K] is the mean over the layers of each layer's
    // mean over its K² entries.
    Ok((corr - target)?.abs()?.mean_all()?)
}

/// A relaxed one-hot draw of `k` coefficients (Gumbel-softmax with uniform
/// probabilities and temperature `tau`, as torch's
/// `RelaxedOneHotCategorical(tau, probs=[1/k]*k).sample()` in LELSD): they
/// sum to 1, and for small `tau` one of them is almost 1.
pub fn relaxed_one_hot<R: Rng + ?Sized>(rng: &mut R, k: usize, tau: f64) -> Vec<f32> {
    let log_p = -(k as f64).ln();
    let scores: Vec<f64> = (0..k)
        .map(|_| {
            let u: f64 = rng.random::<f64>().clamp(f64::EPSILON, 1.0 - f64::EPSILON);
            (log_p - (-u.ln()).ln()) / tau
        })
        .collect();
    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|v| (v / sum) as f32).collect()
}

trait DiagonalSum {
    fn diagonal_sum(&self) -> candle_core::Result<Tensor>;
}

impl DiagonalSum for Tensor {
    /// Σ_i t[i, i] of a square matrix.
    fn diagonal_sum(&self) -> candle_core::Result<Tensor> {
        let k = self.dim(0)?;
        let eye = Tensor::eye(k, self.dtype(), self.device())?;
        (self * eye)?.sum_all()
    }
}

/// The path of the run folder's checkpoint.
pub fn checkpoint_path(output: &Path) -> PathBuf {
    output.join(CHECKPOINT_FILE)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests;

//! The report's experiments: `similarity` (Fig. 5), `generalize` (Fig. 8),
//! `ablation` (Fig. 9) and `merge` (joins `--shard` folders). The work is in
//! `lsd_core::experiments`; this module parses flags, resolves weight names,
//! draws progress and prints the tables.
//!
//! SIGTERM, SIGINT and SIGHUP stop an experiment as they stop a run
//! ([`OnSignal`]): the direction being trained writes its checkpoint and
//! outputs, and the command exits with 128 + the signal's number. Running
//! the same command again reuses the finished directions and resumes the
//! stopped one. `similarity` trains nothing and writes its tables at the
//! end, so a signal simply ends it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use color_eyre::eyre::{bail, eyre, Result, WrapErr};
use indicatif::{ProgressBar, ProgressStyle};
use lsd_core::engine::Weights;
use lsd_core::experiments::models::{ClipModel, LoadedGenerator, Source};
use lsd_core::experiments::{ablation, generalize, seeds, similarity, sweep, Progress, Stop};
use lsd_core::recipe::{Models, Recipe, SeedRng, WeightsRef};

use crate::args::{DeviceArg, ModelsArg, Seeds, Shard};
use crate::exit::{self, Signal, Signals};

/// `lsd-tui similarity` arguments.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  lsd-tui similarity --prompts \"a photo of a person with gray hair\" \"a smiling face\" --seeds 0..10\n  lsd-tui similarity --prompts \"a smiling face\" --latent me.npy --direction sefa.safetensors@0 --alphas -3,0,3"
)]
pub struct SimilarityArgs {
    /// Text prompts (the table's rows).
    #[arg(long, num_args = 1.., required = true)]
    pub prompts: Vec<String>,
    /// Image seeds (the columns): a range `0..10` (end excluded), `0..=9`,
    /// or a list `1,2,5` (default `0..10`, or none when `--latent` is given).
    #[arg(long)]
    pub seeds: Option<Seeds>,
    /// A latent file (a real photo's W+ from e4e, pSp or ReStyle: `.npy`,
    /// `.pt` or `.safetensors`): more columns, labelled by file name.
    /// Repeatable.
    #[arg(long = "latent", value_name = "FILE")]
    pub latents: Vec<PathBuf>,
    /// Generator weights: `demo`, a name from `lsd-tui weights list`, or a file.
    #[arg(long, default_value = "demo")]
    pub generator: String,
    /// CLIP weights: `demo`, a name from `lsd-tui weights list`, or a file.
    #[arg(long, default_value = "demo")]
    pub clip: String,
    /// Truncation ψ towards the average latent (1 = none).
    #[arg(long, default_value_t = 0.7)]
    pub truncation: f64,
    /// Side of the thumbnails in the heat map, in pixels.
    #[arg(long, default_value_t = 64)]
    pub thumb: u32,
    /// A direction file to apply to every image (trained, `direction
    /// import`ed or from `lsd-tui sefa`): `FILE` for all its directions,
    /// `FILE@K` for one. Each image becomes one column per direction and α.
    /// Repeatable.
    #[arg(long = "direction", value_name = "FILE[@K]")]
    pub directions: Vec<String>,
    /// α of the edited columns, comma separated (with `--direction`).
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true, default_value = "-3,0,3")]
    pub alphas: Vec<f64>,
    /// Fix the heat map's colour scale to `LOW,HIGH` (the report's Fig. 5:
    /// `0.1,0.3`); default: the values' own range.
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    pub scale: Option<Vec<f64>>,
    /// How a seed becomes z: `chacha` (default) or `numpy`
    /// (`RandomState(seed).randn(512)`, as NumPy-based StyleGAN code).
    #[arg(long, value_parser = ["chacha", "numpy"], default_value = "chacha")]
    pub seed_rng: String,
    /// Output folder.
    #[arg(long, short = 'o', alias = "out", value_name = "DIR", default_value = "runs/similarity")]
    pub output: PathBuf,
    #[command(flatten)]
    pub device: DeviceArg,
}

/// Flags shared by the experiments that train directions from a recipe.
#[derive(Debug, clap::Args)]
pub struct RecipeArgs {
    /// The recipe (YAML) every direction is trained with.
    #[arg(long)]
    pub recipe: PathBuf,
    #[command(flatten)]
    pub options: TrainingOptions,
}

/// How the experiments that train from a recipe train and where they write.
#[derive(Debug, clap::Args)]
pub struct TrainingOptions {
    /// Train with this many steps instead of the recipe's (e.g. 2 for a smoke test).
    #[arg(long)]
    pub steps: Option<usize>,
    #[command(flatten)]
    pub models: ModelsArg,
    #[command(flatten)]
    pub device: DeviceArg,
    /// Output folder (default: runs/<recipe name>-<experiment>).
    #[arg(long, short = 'o', alias = "out", value_name = "DIR")]
    pub output: Option<PathBuf>,
}

/// `lsd-tui generalize` arguments.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  lsd-tui generalize --recipe examples/recipes/experiments/generalize-gray-hair.yaml --train-seeds 1..41 --test-seeds 1000..1100\n  lsd-tui generalize --recipe R.yaml --test-seeds 100..150 --shard $SLURM_ARRAY_TASK_ID/8 --output runs/g/shard-$SLURM_ARRAY_TASK_ID\n  lsd-tui generalize --recipe R.yaml --direction sefa.safetensors --test-seeds 100..150"
)]
pub struct GeneralizeArgs {
    #[command(flatten)]
    pub common: RecipeArgs,
    /// One local direction per training seed (default: the recipe's seeds): `1..20`, `1,2,5`.
    #[arg(long, conflicts_with = "directions")]
    pub train_seeds: Option<Seeds>,
    /// Measure this direction file instead of training (imported, from
    /// `lsd-tui sefa`, or another recipe's run): `FILE` for all its
    /// directions, `FILE@K` for one; the recipe gives the prompt, the
    /// truncation and the noise. Repeatable; `--shard` splits the list.
    #[arg(long = "direction", value_name = "FILE[@K]")]
    pub directions: Vec<String>,
    /// The unseen images every direction is also applied to: `100..150`.
    #[arg(long)]
    pub test_seeds: Seeds,
    /// α values to measure, comma-separated (0 is always added).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true, default_value = "1,2,3,4")]
    pub alphas: Vec<f64>,
    /// Images per generator call while measuring.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Run only part I of N of the training seeds (0-based), e.g. `$SLURM_ARRAY_TASK_ID/8`;
    /// join the shard folders afterwards with `lsd-tui merge`.
    #[arg(long)]
    pub shard: Option<Shard>,
}

/// `lsd-tui ablation` arguments.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  lsd-tui ablation --recipe examples/recipes/experiments/ablation-gray-hair.yaml\n  lsd-tui ablation --recipe R.yaml --models demo --steps 2 --alphas -3,3"
)]
pub struct AblationArgs {
    #[command(flatten)]
    pub common: RecipeArgs,
    /// α values of the grid's columns, comma-separated (default: the recipe's preview α).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    pub alphas: Option<Vec<f64>>,
    /// Side of one grid cell in pixels (images are shrunk to fit).
    #[arg(long, default_value_t = 128)]
    pub cell: u32,
}

/// `lsd-tui sweep` arguments.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  lsd-tui sweep R.yaml --set identity.weight=0.1,0.5,1 --set segmentation.weight=0,0.1 --set alpha=2,3\n  lsd-tui sweep R.yaml --set optimizer.lr=0.05,0.1 --shard 0/4 --output runs/sweep/shard-0"
)]
pub struct SweepArgs {
    /// The recipe (YAML) every run starts from.
    pub recipe: PathBuf,
    /// A setting and its values, `KEY=V1,V2,…`: a term's field by its plugin
    /// name (`identity.weight=0.1,0.5,1`) or a recipe key (`alpha=2,3`,
    /// `optimizer.lr=0.05,0.1`). Repeatable: every combination is one run.
    #[arg(long = "set", value_name = "KEY=VALUES", required = true)]
    pub settings: Vec<String>,
    #[command(flatten)]
    pub options: TrainingOptions,
    /// Run only part I of N of the grid (0-based), e.g. `$SLURM_ARRAY_TASK_ID/8`;
    /// join the shard folders afterwards with `lsd-tui merge`.
    #[arg(long)]
    pub shard: Option<Shard>,
    /// Side of one grid cell in pixels (images are shrunk to fit).
    #[arg(long, default_value_t = 96)]
    pub cell: u32,
}

/// `lsd-tui merge` arguments.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  lsd-tui merge --output runs/generalize-fig8 runs/generalize-fig8/shard-*")]
pub struct MergeArgs {
    /// The folder to merge into (created if needed; may be one of the shards).
    #[arg(long, short = 'o', alias = "out", value_name = "DIR")]
    pub output: PathBuf,
    /// The shard folders written by `generalize --shard I/N` or `sweep --shard I/N`.
    #[arg(required = true)]
    pub shards: Vec<PathBuf>,
}

/// `demo`, or a weights name or file resolved with `lsd_weights::resolve`.
fn source(name_or_path: &str, what: &str) -> Result<Source> {
    if name_or_path == "demo" {
        return Ok(Source::Demo);
    }
    let path =
        lsd_weights::resolve(name_or_path).wrap_err_with(|| format!("finding the {what} weights '{name_or_path}'"))?;
    Ok(Source::File(path))
}

/// A progress bar on stderr (hidden when stderr is not a terminal) and the
/// callback that moves it.
fn progress_bar(message: &str) -> (ProgressBar, impl FnMut(Progress)) {
    let bar = ProgressBar::new(0);
    if let Ok(style) = ProgressStyle::with_template("{msg} [{wide_bar}] {pos}/{len} {elapsed} (eta {eta}) {prefix}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message.to_string());
    let b = bar.clone();
    let update = move |p: Progress| {
        b.set_length(p.total as u64);
        b.set_position(p.done as u64);
        b.set_prefix(p.what);
    };
    (bar, update)
}

/// Turns the first SIGTERM, SIGINT or SIGHUP into a [`Stop`] request.
struct OnSignal {
    stop: Stop,
    got: Arc<Mutex<Option<Signal>>>,
}

impl OnSignal {
    /// Installs the handlers; a thread watches them.
    fn install() -> Result<Self> {
        let signals = Signals::install().wrap_err("installing the SIGTERM/SIGINT/SIGHUP handlers")?;
        let stop = Stop::new();
        let got = Arc::new(Mutex::new(None));
        let (s, g) = (stop.clone(), Arc::clone(&got));
        std::thread::Builder::new().name("lsd-signals".into()).spawn(move || loop {
            if let Some(sig) = signals.take() {
                if let Ok(mut first) = g.lock() {
                    if first.is_some() {
                        exit::warn(format!("{sig} again: ending now; the newest checkpoints are kept"));
                        std::process::exit(sig.exit_code());
                    }
                    *first = Some(sig);
                    exit::warn(format!("{sig}: stopping: the direction being trained writes its checkpoint and outputs (send {sig} again to end at once)"));
                    s.request();
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        })?;
        Ok(Self { stop, got })
    }

    /// The signal that arrived, if any.
    fn signal(&self) -> Option<Signal> {
        self.got.lock().ok().and_then(|g| *g)
    }

    /// The exit status once the experiment returned `result`: a signal's
    /// status when one stopped it, after saying how to continue.
    fn finish<T>(&self, result: Result<T>, done: impl FnOnce(T) -> Result<()>) -> Result<i32> {
        match (result, self.signal()) {
            (Ok(v), _) => done(v).map(|()| exit::FINISHED),
            (Err(e), Some(sig)) => {
                exit::warn(format!("{sig}: {e:#}"));
                exit::warn(format!(
                    "{sig}: finished directions are kept and the stopped one is checkpointed; continue with: {}",
                    std::env::args().map(|a| exit::shell_quote(&a)).collect::<Vec<_>>().join(" ")
                ));
                Ok(sig.exit_code())
            }
            (Err(e), None) => Err(e),
        }
    }
}

/// Fig. 5.
pub fn similarity(a: SimilarityArgs) -> Result<i32> {
    let start = Instant::now();
    let seeds = match (&a.seeds, a.latents.is_empty()) {
        (Some(s), _) => s.0.clone(),
        (None, true) => (0..10).collect(),
        (None, false) => Vec::new(),
    };
    if !(a.truncation > 0.0 && a.truncation <= 1.0) {
        bail!("truncation '{}' is outside (0, 1]; 0.7 is usual, 1 disables it", a.truncation);
    }
    let device = a.device.open()?;
    let mut gen =
        LoadedGenerator::load(&source(&a.generator, "generator")?, &device).wrap_err("loading the generator")?;
    if a.seed_rng == "numpy" {
        gen.seed_rng = SeedRng::Numpy;
    }
    let scale = match a.scale.as_deref() {
        None => None,
        Some(&[lo, hi]) if lo.is_finite() && hi.is_finite() && lo < hi => Some((lo, hi)),
        Some(v) => bail!("--scale {v:?}: expected LOW,HIGH with LOW < HIGH, e.g. --scale 0.1,0.3"),
    };
    let clip = ClipModel::load(&source(&a.clip, "CLIP")?, &device).wrap_err("loading CLIP")?;
    let g = gen.generator.config();
    let directions = lsd_core::direction_io::load_given(&a.directions, g.n_latent(), g.style_dim, &device)?;
    if a.alphas.iter().any(|v| !v.is_finite()) {
        bail!("--alphas {:?}: give finite numbers, e.g. --alphas -3,0,3", a.alphas);
    }
    let cfg = similarity::Config {
        prompts: a.prompts,
        seeds,
        latents: a.latents,
        truncation: a.truncation,
        thumb: a.thumb,
        scale,
        directions,
        alphas: a.alphas,
    };
    let on_signal = OnSignal::install()?;
    let (bar, mut update) = progress_bar("images");
    let result = similarity::run(&cfg, &gen, &clip, &mut |p| {
        if let Some(sig) = on_signal.signal() {
            // Nothing to checkpoint: the tables are written at the end.
            bar.abandon();
            exit::warn(format!(
                "{sig}: similarity stopped after {} of {} images; it writes nothing until the end; run it again",
                p.done, p.total
            ));
            std::process::exit(sig.exit_code());
        }
        update(p)
    })?;
    bar.finish_and_clear();
    let out = result.write(&a.output).wrap_err_with(|| format!("writing into '{}'", a.output.display()))?;
    print!("{}", result.to_table());
    println!("wrote {}", out.csv.display());
    println!("wrote {}", out.png.display());
    println!("wrote {}", out.json.display());
    println!("wrote {} images under {}", out.images.len(), a.output.join("images").display());
    eprintln!("done in {:.1}s", start.elapsed().as_secs_f64());
    Ok(exit::FINISHED)
}

/// A recipe loaded for an experiment: weights resolved, device opened,
/// the generator and CLIP loaded for measuring.
struct Loaded {
    recipe: Recipe,
    weights: Weights,
    device: candle_core::Device,
    gen: LoadedGenerator,
    clip: ClipModel,
}

fn load(recipe: &Path, common: &TrainingOptions) -> Result<Loaded> {
    let mut recipe = Recipe::load(recipe).map_err(|e| eyre!("{e}"))?;
    if common.models.demo() {
        recipe.edit(|raw| raw.models = Models::default()).map_err(|e| eyre!("{e}"))?;
    }
    let resolve = |what: &str, w: &WeightsRef| -> Result<Option<PathBuf>> {
        match w {
            WeightsRef::Demo => Ok(None),
            WeightsRef::Named(n) => {
                Ok(Some(lsd_weights::resolve(n).wrap_err_with(|| format!("finding the {what} weights '{n}'"))?))
            }
            WeightsRef::Path(p) => Ok(Some(
                lsd_weights::resolve(&p.display().to_string())
                    .wrap_err_with(|| format!("finding the {what} weights '{}'", p.display()))?,
            )),
        }
    };
    let m = &recipe.raw().models;
    let weights = Weights {
        generator: resolve("generator", &m.generator)?,
        clip: resolve("CLIP", &m.clip)?,
        arcface: resolve("ArcFace", &m.arcface)?,
        bisenet: resolve("BiSeNet", &m.bisenet)?,
    };
    let device_name = common.device.device.clone().unwrap_or_else(|| recipe.raw().device.clone());
    let device = lsd_core::ops::memory::open_device(&device_name)?;
    let src = |p: &Option<PathBuf>| p.clone().map_or(Source::Demo, Source::File);
    let mut gen = LoadedGenerator::load(&src(&weights.generator), &device).wrap_err("loading the generator")?;
    // Measure the same faces the recipe trains on.
    gen.seed_rng = recipe.raw().seed_rng;
    let clip = ClipModel::load(&src(&weights.clip), &device).wrap_err("loading CLIP")?;
    Ok(Loaded { recipe, weights, device, gen, clip })
}

fn default_out(common: &TrainingOptions, recipe: &Recipe, what: &str) -> PathBuf {
    common.output.clone().unwrap_or_else(|| PathBuf::from("runs").join(format!("{}-{what}", recipe.name())))
}

/// Fig. 8.
pub fn generalize(a: GeneralizeArgs) -> Result<i32> {
    let start = Instant::now();
    let l = load(&a.common.recipe, &a.common.options)?;
    let g = l.gen.generator.config();
    let directions = lsd_core::direction_io::load_given(&a.directions, g.n_latent(), g.style_dim, &l.device)?;
    let all_train = match &a.train_seeds {
        _ if !directions.is_empty() => (0..directions.len() as u64).collect(),
        Some(s) => s.0.clone(),
        None => l.recipe.raw().seeds.clone(),
    };
    let shard = a.shard.map(Shard::pair);
    let train_seeds = match shard {
        Some((i, n)) => seeds::shard(&all_train, i, n),
        None => all_train,
    };
    let cfg = generalize::Config {
        train_seeds,
        test_seeds: a.test_seeds.0.clone(),
        alphas: a.alphas,
        steps: a.common.options.steps,
        batch: a.batch,
        shard,
        stop: Stop::new(),
        directions,
    };
    let out = default_out(&a.common.options, &l.recipe, "generalize");
    if let Some((i, n)) = shard {
        let what = if cfg.directions.is_empty() { "training seeds" } else { "given directions" };
        eprintln!("shard {i}/{n}: {what} {:?}", cfg.train_seeds);
    }
    let on_signal = OnSignal::install()?;
    let cfg = generalize::Config { stop: on_signal.stop.clone(), ..cfg };
    let (bar, mut update) = progress_bar("directions");
    let result = generalize::run(&l.recipe, &cfg, &out, &l.weights, &l.gen, &l.clip, &l.device, &mut update);
    bar.finish_and_clear();
    on_signal.finish(result.map_err(Into::into), |summary| {
        print!("{}", summary.to_table());
        for f in ["generalize.csv", "summary.csv", "generalize.png"] {
            println!("wrote {}", out.join(f).display());
        }
        println!("direction folders under {}", out.join("directions").display());
        eprintln!("done in {:.1}s", start.elapsed().as_secs_f64());
        Ok(())
    })
}

/// Fig. 9.
pub fn ablation(a: AblationArgs) -> Result<i32> {
    let start = Instant::now();
    let l = load(&a.common.recipe, &a.common.options)?;
    let alphas = match a.alphas {
        Some(v) => v,
        None => l.recipe.preview().alphas.iter().map(|&x| x as f64).collect(),
    };
    let on_signal = OnSignal::install()?;
    let cfg = ablation::Config { alphas, steps: a.common.options.steps, cell: a.cell, stop: on_signal.stop.clone() };
    let out = default_out(&a.common.options, &l.recipe, "ablation");
    let (bar, mut update) = progress_bar("variants");
    let result = ablation::run(&l.recipe, &cfg, &out, &l.weights, &l.gen, &l.clip, &l.device, &mut update);
    bar.finish_and_clear();
    on_signal.finish(result.map_err(Into::into), |result| {
        let files = result.write(&out, cfg.cell)?;
        print!("{}", result.to_table());
        println!("wrote {}", files.png.display());
        println!("wrote {}", files.csv.display());
        for f in &result.folders {
            println!("run folder {}", f.display());
        }
        eprintln!("done in {:.1}s", start.elapsed().as_secs_f64());
        Ok(())
    })
}

/// Trains and measures a grid of recipe settings.
pub fn sweep(a: SweepArgs) -> Result<i32> {
    let start = Instant::now();
    let common = &a.options;
    let settings = a.settings.iter().map(|s| sweep::parse_setting(s)).collect::<lsd_core::Result<Vec<_>>>()?;
    let shard = a.shard.map(Shard::pair);
    let l = load(&a.recipe, common)?;
    let on_signal = OnSignal::install()?;
    let cfg = sweep::Config { settings, steps: common.steps, shard, stop: on_signal.stop.clone() };
    let out = default_out(common, &l.recipe, "sweep");
    let (bar, mut update) = progress_bar("runs");
    let result = sweep::run(&l.recipe, &cfg, &out, &l.weights, &l.gen, &l.clip, &l.device, &mut update);
    bar.finish_and_clear();
    on_signal.finish(result.map_err(Into::into), |summary| {
        let (csv, png) = summary.write(&out, a.cell)?;
        print!("{}", summary.to_table());
        println!("wrote {}", csv.display());
        println!("wrote {}", png.display());
        eprintln!("done in {:.1}s", start.elapsed().as_secs_f64());
        Ok(())
    })
}

/// Joins `generalize --shard` or `sweep --shard` folders.
pub fn merge(a: MergeArgs) -> Result<()> {
    if a.shards.first().is_some_and(|s| s.join(sweep::SWEEP_FILE).is_file()) {
        let summary =
            sweep::merge(&a.output, &a.shards).wrap_err_with(|| format!("merging into '{}'", a.output.display()))?;
        let (csv, png) = summary.write(&a.output, 96)?;
        print!("{}", summary.to_table());
        println!("wrote {}", csv.display());
        println!("wrote {}", png.display());
        return Ok(());
    }
    let summary =
        generalize::merge(&a.output, &a.shards).wrap_err_with(|| format!("merging into '{}'", a.output.display()))?;
    print!("{}", summary.to_table());
    for f in ["generalize.csv", "summary.csv", "generalize.png"] {
        println!("wrote {}", a.output.join(f).display());
    }
    Ok(())
}

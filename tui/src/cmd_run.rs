//! `lsd-tui demo`, `run` and `apply`.
//!
//! `run` turns a recipe into a running engine: it parses the recipe
//! (located errors), applies the command-line overrides, resolves every
//! weight name to a file (`lsd_weights::resolve`, whose error gives the
//! fetch command; located at `models.<network>`), loads the loss plugins
//! (a plugin's parameter error is located at the parameter's line), and
//! spawns the engine. Then it shows the run: the TUI on a terminal, the
//! headless view otherwise or with `--headless`.
//!
//! A run ends with the exit status of [`crate::exit`]: 0 only when it reached
//! its last step; recipe errors exit with 2 and the located message; a
//! failed run with 1; a run the user stopped with 3; a signal with 128 + its
//! number, after the checkpoint and outputs are written. Every stopped run
//! prints the command that continues it.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use color_eyre::eyre::{bail, eyre, Result, WrapErr};
use lsd_core::engine::{self, Setup, Weights};
use lsd_core::layers::LayerSpec;
use lsd_core::models::stylegan2::{LoadedGenerator, Source};
use lsd_core::ops::memory;
use lsd_core::recipe::{Models, NoiseMode, Recipe, RecipeError, SeedRng, WeightsRef};
use lsd_core::{latents, outputs, render};

use crate::args::{Alphas, DeviceArg, ModelsArg, Seeds};
use crate::exit::{self, Signals};
use crate::headless::{self, Outcome};
use crate::report;
use crate::tui::GraphicsMode;

/// The demo recipe, built in so that `lsd-tui demo` works from any folder.
pub const DEMO_RECIPE: &str = include_str!("../../examples/recipes/demo.yaml");

/// `lsd-tui demo` arguments.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  lsd-tui demo                      # the TUI; q stops with a checkpoint\n  lsd-tui demo --headless          # progress bar or log lines\n  lsd-tui demo --resume            # continue a stopped run"
)]
pub struct DemoArgs {
    /// No TUI: a progress bar on a terminal, plain log lines otherwise.
    #[arg(long)]
    pub headless: bool,
    /// The run folder.
    #[arg(long, short = 'o', alias = "out", value_name = "DIR", default_value = "runs/demo")]
    pub output: PathBuf,
    #[command(flatten)]
    pub device: DeviceArg,
    /// Products on a GPU: `tf32` (the default on CUDA) or `fp32` (the
    /// reference's exact float32 arithmetic); no effect on the CPU.
    #[arg(long, value_name = "tf32|fp32")]
    pub precision: Option<lsd_core::ops::Precision>,
    /// Preview graphics in the TUI, and of the strips shown after the run.
    #[arg(long, value_enum, default_value_t)]
    pub graphics: GraphicsMode,
    /// Continue from the checkpoint in the output folder.
    #[arg(long)]
    pub resume: bool,
}

/// `lsd-tui run` arguments.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  lsd-tui run examples/recipes/gray_hair.yaml\n  lsd-tui run examples/recipes/gray_hair.yaml --models demo --check\n  lsd-tui run my.yaml --device cuda:0 --precision fp32 --output runs/my\n  lsd-tui run my.yaml --resume     # after a stop, a crash or a lost SSH session"
)]
pub struct RunArgs {
    /// The recipe (YAML; see examples/recipes/).
    pub recipe: PathBuf,
    /// No TUI: a progress bar on a terminal, plain log lines otherwise
    /// (also the default when stdout is not a terminal).
    #[arg(long)]
    pub headless: bool,
    /// Continue from the checkpoint in the output folder; ends with the same
    /// direction as an uninterrupted run.
    #[arg(long)]
    pub resume: bool,
    /// The run folder (default: the recipe's `output`, else runs/<name>).
    #[arg(long, short = 'o', alias = "out", value_name = "DIR")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceArg,
    /// Products on a GPU: `tf32` (the default on CUDA) or `fp32` (the
    /// reference's exact float32 arithmetic); no effect on the CPU
    /// (default: the recipe's `precision`).
    #[arg(long, value_name = "tf32|fp32")]
    pub precision: Option<lsd_core::ops::Precision>,
    #[command(flatten)]
    pub models: ModelsArg,
    /// Preview graphics in the TUI, and of the strips shown after the run.
    #[arg(long, value_enum, default_value_t)]
    pub graphics: GraphicsMode,
    /// Check the recipe, its weights and its plugins, then exit.
    #[arg(long)]
    pub check: bool,
    /// Stop after this step as a stop key would (checkpoint and outputs
    /// written); `--resume` continues.
    #[arg(long, value_name = "STEP")]
    pub stop_after: Option<usize>,
    /// A latent file (a real photo's W+ from e4e, pSp or ReStyle: `.npy`,
    /// `.pt` or `.safetensors`) to train on besides the recipe's seeds and
    /// `latents` (as `latents:` in the recipe; write `seeds: []` there to
    /// train on latent files alone). Repeatable.
    #[arg(long = "latent", value_name = "FILE")]
    pub latents: Vec<PathBuf>,
}

/// `lsd-tui apply` arguments.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  lsd-tui apply runs/gray_hair/direction.safetensors --seeds 0..4 --alphas -3,0,3\n  lsd-tui apply runs/gray_hair/direction.safetensors --latent me.npy --layers fine\n  lsd-tui apply --edit runs/gray_hair/direction.safetensors=2 --edit runs/smile/direction.safetensors=-1 --seeds 7\n  lsd-tui apply sefa.safetensors --index 0 --animate --output sweep.png"
)]
pub struct ApplyArgs {
    /// A `direction.safetensors` written by `lsd-tui run` (or by `sefa`,
    /// `direction import`), swept over `--alphas`; may be left out when
    /// `--edit` is given.
    pub direction: Option<PathBuf>,
    /// Another direction with its own α, added to every edited image:
    /// `FILE=α`, or `FILE@K=α` for direction K of a file with several.
    /// Repeatable: the edits add up, and DIRECTION's sweep goes on top.
    #[arg(long = "edit", value_name = "FILE=ALPHA")]
    pub edits: Vec<String>,
    /// A 2-D grid of one image instead of rows: this direction's
    /// `--alphas2` down, DIRECTION's `--alphas` across.
    #[arg(long, value_name = "FILE")]
    pub grid_with: Option<PathBuf>,
    /// α values of the rows of the 2-D grid (`--grid-with`).
    #[arg(long, default_value = "-3,0,3", allow_hyphen_values = true)]
    pub alphas2: Alphas,
    /// Also write an animated GIF of DIRECTION's α sweep (smallest to
    /// largest α and back) beside the PNG, and an MP4 where `ffmpeg` is on
    /// the PATH.
    #[arg(long)]
    pub animate: bool,
    /// Frames of the animation from the smallest to the largest α.
    #[arg(long, default_value_t = 16)]
    pub frames: usize,
    /// Seeds of the images to edit: `3`, `1,2,5` or `0..10` (default
    /// `0..4`, or none when `--latent` is given).
    #[arg(long)]
    pub seeds: Option<Seeds>,
    /// A latent file to edit (a real photo inverted with e4e, pSp or
    /// ReStyle): `.npy`, `.pt` or `.safetensors` of shape `[18, 512]`,
    /// `[N, 18, 512]` or `[512]` (W) at 1024²; rows are labelled by file
    /// name. Repeatable; the rows come after the seeds' rows.
    #[arg(long = "latent", value_name = "FILE")]
    pub latents: Vec<PathBuf>,
    /// The W+ layers the edit acts on: `coarse` (0-3), `medium` (4-7),
    /// `fine` (8 to the last), numbers and ranges (`0-3,8`) or a mix;
    /// default: the layers the direction was trained on.
    #[arg(long, value_name = "LAYERS")]
    pub layers: Option<String>,
    /// Truncation ψ of the seeds' latents (default: the direction's; latent
    /// files are used as they are).
    #[arg(long, value_name = "PSI")]
    pub truncation: Option<f32>,
    /// α values of the columns, comma separated (`-3,0,3`).
    #[arg(long, default_value = "-3,0,3", allow_hyphen_values = true)]
    pub alphas: Alphas,
    /// Which direction of a file with several (K > 1).
    #[arg(long, default_value_t = 0)]
    pub index: usize,
    /// The PNG to write.
    #[arg(long, short = 'o', alias = "out", value_name = "PNG", default_value = "strip.png")]
    pub output: PathBuf,
    #[command(flatten)]
    pub device: DeviceArg,
}

/// Prints a recipe error and exits with status 2.
fn recipe_exit(e: &RecipeError) -> ! {
    report::error(e);
    std::process::exit(exit::USAGE)
}

/// Runs the demo recipe on the demo networks; returns the exit status.
pub fn demo(args: DemoArgs) -> Result<i32> {
    let mut recipe = Recipe::parse(DEMO_RECIPE, Path::new("examples/recipes/demo.yaml (built in)"))
        .unwrap_or_else(|e| recipe_exit(&e));
    recipe.edit(|raw| raw.models = Models::default()).unwrap_or_else(|e| recipe_exit(&e));
    recipe.set_output(args.output);
    let opts = Options {
        headless: args.headless,
        resume: args.resume,
        device: args.device.device,
        precision: args.precision,
        graphics: args.graphics,
        check: false,
        stop_after: None,
    };
    start(recipe, &opts)
}

/// Runs a recipe; returns the exit status.
pub fn run(args: RunArgs) -> Result<i32> {
    let mut recipe = Recipe::load(&args.recipe).unwrap_or_else(|e| recipe_exit(&e));
    if let Some(out) = &args.output {
        recipe.set_output(out.clone());
    }
    if args.models.demo() {
        recipe.edit(|raw| raw.models = Models::default()).unwrap_or_else(|e| recipe_exit(&e));
    }
    if !args.latents.is_empty() {
        // Part of the resolved recipe (recipe.yaml, its hash), as if written
        // there; without preview seeds the first latent image is previewed.
        let cwd = std::env::current_dir().wrap_err("reading the current folder")?;
        let paths: Vec<PathBuf> = args.latents.iter().map(|p| cwd.join(p)).collect();
        recipe.edit(|raw| raw.latents.extend(paths)).unwrap_or_else(|e| recipe_exit(&e));
    }
    let opts = Options {
        headless: args.headless,
        resume: args.resume,
        device: args.device.device,
        precision: args.precision,
        graphics: args.graphics,
        check: args.check,
        stop_after: args.stop_after,
    };
    start(recipe, &opts)
}

struct Options {
    headless: bool,
    resume: bool,
    device: Option<String>,
    precision: Option<lsd_core::ops::Precision>,
    graphics: GraphicsMode,
    check: bool,
    stop_after: Option<usize>,
}

/// A weight reference to a file: manifest names through `lsd_weights`,
/// paths relative to the recipe's folder.
fn resolve_weight(recipe: &Recipe, network: &str, w: &WeightsRef) -> std::result::Result<Option<PathBuf>, RecipeError> {
    let key = format!("models.{network}");
    match w {
        WeightsRef::Demo => Ok(None),
        WeightsRef::Path(p) => {
            let p = if p.is_relative() {
                recipe
                    .file()
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .map(|d| d.join(p))
                    .unwrap_or_else(|| p.clone())
            } else {
                p.clone()
            };
            lsd_weights::resolve(&p.display().to_string()).map(Some).map_err(|e| recipe.error_at(&key, e.to_string()))
        }
        WeightsRef::Named(n) => lsd_weights::resolve(n).map(Some).map_err(|e| recipe.error_at(&key, e.to_string())),
    }
}

fn start(mut recipe: Recipe, opts: &Options) -> Result<i32> {
    let device_name = opts.device.clone().unwrap_or_else(|| recipe.raw().device.clone());
    let device = memory::open_device(&device_name)
        .map_err(|e| eyre!("device '{device_name}': {e}; use cpu, or cuda:N on a build with --features cuda"))?;
    recipe
        .edit(|raw| {
            raw.device = device_name;
            if let Some(p) = opts.precision {
                raw.precision = Some(p);
            }
        })
        .unwrap_or_else(|e| recipe_exit(&e));
    lsd_core::ops::set_precision(
        recipe.raw().precision.unwrap_or_else(|| lsd_core::ops::Precision::default_for(&device)),
    );
    let models = recipe.raw().models.clone();
    let weights = Weights {
        generator: resolve_weight(&recipe, "generator", &models.generator).unwrap_or_else(|e| recipe_exit(&e)),
        clip: resolve_weight(&recipe, "clip", &models.clip).unwrap_or_else(|e| recipe_exit(&e)),
        arcface: resolve_weight(&recipe, "arcface", &models.arcface).unwrap_or_else(|e| recipe_exit(&e)),
        bisenet: resolve_weight(&recipe, "bisenet", &models.bisenet).unwrap_or_else(|e| recipe_exit(&e)),
    };
    let terms = engine::load_plugin_terms(&recipe, &weights, &device).unwrap_or_else(|e| recipe_exit(&e));
    if opts.check {
        println!(
            "{}: ok ({} steps, {} terms: {}; output {})",
            recipe.file().display(),
            recipe.raw().steps,
            terms.len(),
            terms.iter().map(|t| format!("{} λ={}", t.name, t.weight)).collect::<Vec<_>>().join(", "),
            recipe.output().display()
        );
        return Ok(exit::FINISHED);
    }
    let setup = Setup { device, weights, resume: opts.resume, stop_after: opts.stop_after, ..Setup::new(terms) };
    // From here a signal stops the run with its checkpoint and outputs;
    // before, there is nothing to save and the default action is right.
    let signals = Signals::install().wrap_err("installing the SIGTERM/SIGINT/SIGHUP handlers")?;
    let handle = engine::spawn(recipe, setup);
    let terminal = std::io::stdout().is_terminal();
    let (outcome, graphics) = if terminal && !opts.headless {
        let tui_opts = crate::tui::TuiOptions { graphics: opts.graphics, stop_timeout: Duration::from_secs(15) };
        let ended = crate::tui::run(handle, &tui_opts, &signals)?;
        (ended.outcome, ended.graphics)
    } else {
        let outcome = headless::follow(handle, terminal, &signals)?;
        let finished = matches!(&outcome, Outcome::Finished(s) if !s.stopped_early);
        (outcome, if terminal && finished { headless::inline_graphics(opts.graphics) } else { None })
    };
    Ok(report_outcome(outcome, |output| {
        if terminal {
            for strip in headless::strips(output) {
                headless::show_inline(&strip, graphics.as_ref());
            }
        }
    }))
}

/// Prints how the run ended and returns its exit status; `show` shows the
/// strips of a finished run.
fn report_outcome(outcome: Outcome, show: impl FnOnce(&Path)) -> i32 {
    let resume = || format!("continue with: {}", exit::resume_command());
    match outcome {
        Outcome::Finished(summary) if !summary.stopped_early => {
            show(&summary.output);
            exit::FINISHED
        }
        Outcome::Finished(summary) => {
            exit::say(format!(
                "stopped at step {}; outputs in {}; {}",
                summary.steps,
                summary.output.display(),
                resume()
            ));
            exit::STOPPED
        }
        Outcome::Failed(error) => {
            report::error(error);
            exit::FAILED
        }
        Outcome::Quit { saved } => {
            if saved {
                exit::say(format!("quit; the last checkpoint holds the run; {}", resume()));
            } else {
                exit::say(format!(
                    "quit without saving the last steps; the last periodic checkpoint is kept; {}",
                    resume()
                ));
            }
            // The engine may still be stepping: returning from `main` ends it.
            exit::STOPPED
        }
        Outcome::Signalled { signal, saved, summary } => {
            match (saved, summary) {
                (true, Some(s)) => exit::warn(format!(
                    "{signal}: stopped at step {}; checkpoint and outputs in {}; {}",
                    s.steps,
                    s.output.display(),
                    resume()
                )),
                (true, None) => exit::warn(format!("{signal}: checkpoint written; {}", resume())),
                (false, _) => exit::warn(format!(
                    "{signal}: the run did not save in time; the last periodic checkpoint is kept; {}",
                    resume()
                )),
            }
            // The engine may still be stepping when it did not save in time:
            // returning from `main` ends it.
            signal.exit_code()
        }
    }
}

/// Parses `--edit FILE=α` / `FILE@K=α`.
fn parse_edit(text: &str) -> Result<(PathBuf, usize, f32)> {
    let bad = || {
        eyre!("--edit '{text}': expected FILE=ALPHA or FILE@K=ALPHA, e.g. --edit runs/smile/direction.safetensors=2")
    };
    let (file, alpha) = text.rsplit_once('=').ok_or_else(bad)?;
    let alpha: f32 = alpha.trim().parse().ok().filter(|a: &f32| a.is_finite()).ok_or_else(bad)?;
    let (file, index) = match file.rsplit_once('@') {
        Some((f, k)) if k.parse::<usize>().is_ok() => (f, k.parse().map_err(|_| bad())?),
        _ => (file, 0),
    };
    Ok((PathBuf::from(file), index, alpha))
}

/// Applies saved directions to images: an α sweep of one direction, a sum
/// of several (`--edit`), a 2-D grid of two (`--grid-with`), and an
/// animation of the sweep (`--animate`).
pub fn apply(args: ApplyArgs) -> Result<()> {
    let seeds = match (&args.seeds, args.latents.is_empty()) {
        (Some(s), _) => s.0.clone(),
        (None, true) => vec![0, 1, 2, 3],
        (None, false) => Vec::new(),
    };
    let alphas = args.alphas.0.clone();
    let device = args.device.open()?;
    let main =
        args.direction.as_deref().map(|p| lsd_core::direction_io::read_one(p, args.index, &device)).transpose()?;
    let mut edits = Vec::new();
    for text in &args.edits {
        let (path, k, a) = parse_edit(text)?;
        let (u, meta) = lsd_core::direction_io::read_one(&path, k, &device)?;
        edits.push((u, meta, a));
    }
    let second = args.grid_with.as_deref().map(|p| lsd_core::direction_io::read_one(p, 0, &device)).transpose()?;
    let metas: Vec<&outputs::DirectionMeta> = main
        .iter()
        .map(|(_, m)| m)
        .chain(edits.iter().map(|(_, m, _)| m))
        .chain(second.iter().map(|(_, m)| m))
        .collect();
    let Some(&first) = metas.first() else {
        bail!("nothing to apply: give a direction file, or --edit FILE=ALPHA");
    };
    if let Some(other) =
        metas.iter().find(|m| (&m.generator, &m.generator_sha256) != (&first.generator, &first.generator_sha256))
    {
        bail!(
            "the directions come from different generators ('{}' and '{}'); apply directions of one generator together",
            first.generator,
            other.generator
        );
    }
    let loaded = apply_generator(first, &device)?;
    let gen = &loaded.generator;
    let demo = first.generator == "demo";
    let dims = (gen.config().n_latent(), gen.config().style_dim);
    let mask = match &args.layers {
        Some(text) => {
            let layers = LayerSpec::parse(text).and_then(|s| s.resolve(dims.0)).map_err(|e| eyre!("--layers: {e}"))?;
            Some(layer_mask(&layers, dims.0, &device)?)
        }
        None => None,
    };
    let prepare = |u: &candle_core::Tensor| -> Result<candle_core::Tensor> {
        let shape = u.dims();
        if (shape[1], shape[2]) != dims {
            bail!("a direction is [{}, {}] but this generator's W+ is {dims:?}", shape[1], shape[2]);
        }
        Ok(match &mask {
            Some(m) => u.broadcast_mul(m)?,
            None => u.clone(),
        })
    };
    let u = main.as_ref().map(|(u, _)| prepare(u)).transpose()?;
    let mut offset = candle_core::Tensor::zeros((1, dims.0, dims.1), candle_core::DType::F32, &device)?;
    for (v, _, a) in &edits {
        offset = (offset + (prepare(v)? * *a as f64)?)?;
    }
    let noise = NoiseMode::from_name(&first.noise).unwrap_or_default().noise(first.seed);
    let psi = args.truncation.unwrap_or(first.truncation) as f64;
    if !(psi.is_finite() && psi > 0.0 && psi <= 1.0) {
        bail!("--truncation {psi}: expected 0 < ψ <= 1");
    }
    let mut images = Vec::new();
    for &seed in &seeds {
        images.push((format!("seed {seed}"), loaded.w_plus(seed, psi)?));
    }
    for img in latents::load_all(&args.latents, dims.0, dims.1, &device)? {
        images.push((img.label, img.w_plus));
    }
    if images.is_empty() {
        bail!("no images: give --seeds or --latent");
    }
    // The image of `w` edited by the `--edit` sum and `a` × DIRECTION.
    let edited = |w: &candle_core::Tensor, a: f32, extra: Option<&candle_core::Tensor>| -> Result<image::RgbImage> {
        let mut lat = (w + &offset)?;
        if let Some(u) = &u {
            lat = (lat + (u * a as f64)?)?;
        }
        if let Some(x) = extra {
            lat = (lat + x)?;
        }
        Ok(render::tensor_to_rgb(&gen.synthesis(&lat, noise, false)?.image)?)
    };
    let mut title = match &main {
        Some((_, m)) => format!("{}: \"{}\"", m.name, m.prompt),
        None => "edits".to_string(),
    };
    for (_, m, a) in &edits {
        title.push_str(&format!(" + {}×{a}", m.name));
    }
    let footer = demo.then_some(lsd_core::demo::DEMO_LABEL);
    let img = if let Some((v, m2)) = &second {
        let Some(_) = &u else {
            bail!("--grid-with needs DIRECTION too: the grid is DIRECTION's α across, this one's down")
        };
        if images.len() != 1 {
            bail!("--grid-with draws one image; give one seed (--seeds 3) or one latent");
        }
        let alphas2 = args.alphas2.0.clone();
        let v = prepare(v)?;
        let w = &images[0].1;
        let mut cells = Vec::new();
        for &b in &alphas2 {
            let shift = (&v * b as f64)?;
            cells.push(alphas.iter().map(|&a| edited(w, a, Some(&shift))).collect::<Result<Vec<_>>>()?);
        }
        let rows: Vec<String> = alphas2.iter().map(|b| format!("b={b}")).collect();
        let cols: Vec<String> = alphas.iter().map(|a| format!("a={a}")).collect();
        let main_name = main.as_ref().map_or("", |(_, m)| m.name.as_str());
        let title = format!(
            "{}: a × {main_name}, b × {}{}",
            images[0].0,
            m2.name,
            &title[title.find(" + ").unwrap_or(title.len())..]
        );
        render::grid(&cells, &rows, &cols, &title, footer)
    } else {
        let mut cells = Vec::new();
        for (_, w) in &images {
            let mut row = vec![render::tensor_to_rgb(&gen.synthesis(w, noise, false)?.image)?];
            match &u {
                Some(_) => row.extend(alphas.iter().map(|&a| edited(w, a, None)).collect::<Result<Vec<_>>>()?),
                None => row.push(edited(w, 0.0, None)?),
            }
            cells.push(row);
        }
        let rows: Vec<String> = images.iter().map(|(label, _)| label.clone()).collect();
        let mut cols = vec!["original".to_string()];
        match &u {
            Some(_) => cols.extend(alphas.iter().map(|a| format!("a={a}"))),
            None => cols.push("edited".into()),
        }
        render::grid(&cells, &rows, &cols, &title, footer)
    };
    render::save_png_atomic(&img, &args.output)?;
    println!("wrote {} ({} images × {} α)", args.output.display(), images.len(), alphas.len());
    if args.animate {
        if u.is_none() {
            bail!("--animate sweeps DIRECTION's α: give a direction file");
        }
        let lo = alphas.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = alphas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let cols: Vec<String> = images.iter().map(|(l, _)| l.clone()).collect();
        let mut frames = Vec::new();
        for a in lsd_core::animate::ping_pong(lo, hi, args.frames) {
            let row = images.iter().map(|(_, w)| edited(w, a, None)).collect::<Result<Vec<_>>>()?;
            frames.push(render::grid(&[row], &[format!("a={a:+.2}")], &cols, &title, footer));
        }
        let gif = args.output.with_extension("gif");
        lsd_core::animate::write_gif(&frames, 80, &gif)?;
        println!("wrote {} ({} frames, α {lo} … {hi} and back)", gif.display(), frames.len());
        match write_mp4(&frames, 12, &args.output.with_extension("mp4"))? {
            Some(mp4) => println!("wrote {}", mp4.display()),
            None => println!("no MP4: ffmpeg is not on the PATH"),
        }
    }
    if std::io::stdout().is_terminal() {
        let graphics = headless::inline_graphics(GraphicsMode::Auto);
        headless::show_inline(&args.output, graphics.as_ref());
    }
    Ok(())
}

/// Encodes `frames` as an H.264 MP4 with `ffmpeg` when it is on the PATH
/// (`None` otherwise), atomically.
fn write_mp4(frames: &[image::RgbImage], fps: u32, path: &Path) -> Result<Option<PathBuf>> {
    let found = std::process::Command::new("ffmpeg")
        .arg("-version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        return Ok(None);
    }
    let dir = tempfile::tempdir().wrap_err("creating a folder for the frames")?;
    for (i, f) in frames.iter().enumerate() {
        f.save(dir.path().join(format!("frame-{i:05}.png"))).wrap_err("writing a frame")?;
    }
    lsd_core::durable::write_with(path, |tmp| {
        let out = std::process::Command::new("ffmpeg")
            .args(["-loglevel", "error", "-y", "-framerate", &fps.to_string(), "-i"])
            .arg(dir.path().join("frame-%05d.png"))
            // H.264 wants even sides.
            .args(["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-pix_fmt", "yuv420p", "-f", "mp4"])
            .arg(tmp)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("ffmpeg failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
        }
    })?;
    Ok(Some(path.to_path_buf()))
}

/// `[1, L, 1]`: 1 on `layers`, 0 elsewhere.
fn layer_mask(layers: &[usize], n_latent: usize, device: &candle_core::Device) -> Result<candle_core::Tensor> {
    let m: Vec<f32> = (0..n_latent).map(|i| layers.contains(&i) as u8 as f32).collect();
    Ok(candle_core::Tensor::from_vec(m, (1, n_latent, 1), device)?)
}

/// The generator a direction was trained with, drawing seeds as it did:
/// the demo network, or its weights file (a checksum that differs from the
/// training one is a warning: the edit may not transfer).
fn apply_generator(meta: &outputs::DirectionMeta, device: &candle_core::Device) -> Result<LoadedGenerator> {
    let source = if meta.generator == "demo" {
        Source::Demo
    } else {
        let path = lsd_weights::resolve(&meta.generator)?;
        let sha = lsd_core::torch::sha256_file(&path)?;
        if sha != meta.generator_sha256 {
            eprintln!(
                "warning: {} has SHA-256 {sha}, but the direction was trained with {}; the edit may not transfer",
                path.display(),
                meta.generator_sha256
            );
        }
        Source::File(path)
    };
    let mut loaded = LoadedGenerator::load(&source, device)?;
    loaded.seed_rng = if meta.seed_rng == "numpy" { SeedRng::Numpy } else { SeedRng::Chacha };
    Ok(loaded)
}

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
use lsd_core::models::stylegan2::{self, Generator, Noise};
use lsd_core::recipe::{parse_seeds, Models, Recipe, RecipeError, SeedRng, WeightsRef};
use lsd_core::{outputs, plugin, render};

use crate::exit::{self, Signals};
use crate::headless::{self, Outcome};
use crate::report;
use crate::tui::GraphicsMode;

/// The demo recipe, built in so that `lsd-tui demo` works from any folder.
pub const DEMO_RECIPE: &str = include_str!("../../examples/recipes/demo.yaml");

/// Which networks to swap for demo networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelsOverride {
    /// Every network is its seeded demo network (no downloads).
    Demo,
}

/// `lsd-tui demo` arguments.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// No TUI: a progress bar on a terminal, plain log lines otherwise.
    #[arg(long)]
    pub headless: bool,
    /// The run folder.
    #[arg(long, default_value = "runs/demo")]
    pub output: PathBuf,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long)]
    pub device: Option<String>,
    /// Preview graphics in the TUI, and of the strips shown after the run.
    #[arg(long, value_enum, default_value_t)]
    pub graphics: GraphicsMode,
    /// Continue from the checkpoint in the output folder.
    #[arg(long)]
    pub resume: bool,
}

/// `lsd-tui run` arguments.
#[derive(Debug, clap::Args)]
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
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// `cpu`, `cuda` or `cuda:N` (default: the recipe's `device`).
    #[arg(long)]
    pub device: Option<String>,
    /// `demo`: run every network as its seeded demo network, whatever the
    /// recipe names (no downloads; the images mean nothing).
    #[arg(long, value_enum)]
    pub models: Option<ModelsOverride>,
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
}

/// `lsd-tui apply` arguments.
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// A `direction.safetensors` written by `lsd-tui run`.
    pub direction: PathBuf,
    /// Seeds of the images to edit: `3`, `1,2,5` or `0..10`.
    #[arg(long, default_value = "0..4")]
    pub seeds: String,
    /// α values of the columns, comma separated (`-3,0,3`).
    #[arg(long, default_value = "-3,0,3", allow_hyphen_values = true)]
    pub alphas: String,
    /// Which direction of a file with several (K > 1).
    #[arg(long, default_value_t = 0)]
    pub index: usize,
    /// The PNG to write.
    #[arg(long, default_value = "strip.png")]
    pub out: PathBuf,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
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
    recipe.raw.models = Models::default();
    recipe.output = args.output.clone();
    recipe.raw.output = Some(args.output);
    let opts = Options {
        headless: args.headless,
        resume: args.resume,
        device: args.device,
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
        recipe.output = out.clone();
        recipe.raw.output = Some(out.clone());
    }
    if args.models == Some(ModelsOverride::Demo) {
        recipe.raw.models = Models::default();
    }
    let opts = Options {
        headless: args.headless,
        resume: args.resume,
        device: args.device,
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
                recipe.file.parent().filter(|d| !d.as_os_str().is_empty()).map(|d| d.join(p)).unwrap_or_else(|| p.clone())
            } else {
                p.clone()
            };
            lsd_weights::resolve(&p.display().to_string()).map(Some).map_err(|e| recipe.error_at(&key, e.to_string()))
        }
        WeightsRef::Named(n) => lsd_weights::resolve(n).map(Some).map_err(|e| recipe.error_at(&key, e.to_string())),
    }
}

fn start(mut recipe: Recipe, opts: &Options) -> Result<i32> {
    if let Some(d) = &opts.device {
        recipe.raw.device = d.clone();
    }
    let device = plugin::parse_device(&recipe.raw.device)
        .map_err(|e| eyre!("device '{}': {e}; use cpu, or cuda:N on a build with --features cuda", recipe.raw.device))?;
    let models = recipe.raw.models.clone();
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
            recipe.file.display(),
            recipe.raw.steps,
            terms.len(),
            terms.iter().map(|t| format!("{} λ={}", t.name, t.weight)).collect::<Vec<_>>().join(", "),
            recipe.output.display()
        );
        return Ok(exit::FINISHED);
    }
    let setup = Setup { device, weights, terms, resume: opts.resume, stop_after: opts.stop_after, metrics: true };
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
            exit::say(format!("stopped at step {}; outputs in {}; {}", summary.steps, summary.output.display(), resume()));
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
                exit::say(format!("quit without saving the last steps; the last periodic checkpoint is kept; {}", resume()));
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
                (false, _) => exit::warn(format!("{signal}: the run did not save in time; the last periodic checkpoint is kept; {}", resume())),
            }
            // The engine may still be stepping when it did not save in time:
            // returning from `main` ends it.
            signal.exit_code()
        }
    }
}

/// Parses `-3,0,3`.
fn parse_alphas(text: &str) -> Result<Vec<f32>> {
    let alphas = text
        .split(',')
        .map(|s| s.trim().parse::<f32>().map_err(|_| eyre!("--alphas: '{s}' is not a number; write e.g. -3,0,3")))
        .collect::<Result<Vec<_>>>()?;
    if alphas.is_empty() || alphas.iter().any(|a| !a.is_finite()) {
        bail!("--alphas: give finite numbers, e.g. -3,0,3");
    }
    Ok(alphas)
}

/// Applies a saved direction to other images over an α sweep.
pub fn apply(args: ApplyArgs) -> Result<()> {
    let seeds = parse_seeds(&args.seeds).map_err(|e| eyre!("--seeds: {e}"))?;
    let alphas = parse_alphas(&args.alphas)?;
    let device = plugin::parse_device(&args.device).map_err(|e| eyre!("--device: {e}"))?;
    let d = outputs::read_direction(&args.direction, &device)?;
    if d.meta.mode == "latent" {
        bail!("{} holds per-image latents of a 'mode: latent' run, not a direction; apply needs a direction run", args.direction.display());
    }
    let k = d.direction.dim(0)?;
    if args.index >= k {
        bail!("--index {}: the file has {k} direction(s) (0..{})", args.index, k - 1);
    }
    let demo = d.meta.generator == "demo";
    let (gen, avg) = if demo {
        stylegan2::demo(lsd_core::demo::DEMO_MODEL_SEED, &device)?
    } else {
        let path = lsd_weights::resolve(&d.meta.generator)?;
        let sha = lsd_core::torch::sha256_file(&path)?;
        if sha != d.meta.generator_sha256 {
            eprintln!(
                "warning: {} has SHA-256 {sha}, but the direction was trained with {}; the edit may not transfer",
                path.display(),
                d.meta.generator_sha256
            );
        }
        let (g, avg) = Generator::load(&path, &device)?;
        let avg = avg.ok_or_else(|| eyre!("{} has no latent_avg; use a converted g_ema checkpoint", path.display()))?;
        (g, avg)
    };
    let dims = (gen.config().n_latent(), gen.config().style_dim);
    let shape = d.direction.dims();
    if (shape[1], shape[2]) != dims {
        bail!("the direction is [{}, {}] per direction but this generator's W+ is {dims:?}", shape[1], shape[2]);
    }
    let u = d.direction.narrow(0, args.index, 1)?;
    let noise = match d.meta.noise.as_str() {
        "zero" => Noise::Zero,
        "seeded" => Noise::Seeded(d.meta.seed),
        _ => Noise::Stored,
    };
    let psi = d.meta.truncation as f64;
    let mut cells = Vec::new();
    for &seed in &seeds {
        let rng = if d.meta.seed_rng == "numpy" { SeedRng::Numpy } else { SeedRng::Chacha };
        let w = gen.w_from_seed_with(seed, rng, (psi < 1.0).then_some((psi, &avg)))?;
        let w = gen.broadcast_latent(&w)?.contiguous()?;
        let mut row = vec![render::tensor_to_rgb(&gen.synthesis(&w, noise, false)?.image)?];
        for &a in &alphas {
            let img = gen.synthesis(&(&w + (&u * a as f64)?)?, noise, false)?.image;
            row.push(render::tensor_to_rgb(&img)?);
        }
        cells.push(row);
    }
    let rows: Vec<String> = seeds.iter().map(|s| format!("seed {s}")).collect();
    let mut cols = vec!["original".to_string()];
    cols.extend(alphas.iter().map(|a| format!("a={a}")));
    let title = format!("{}: \"{}\"", d.meta.name, d.meta.prompt);
    let img = render::grid(&cells, &rows, &cols, &title, demo.then_some(lsd_core::demo::DEMO_LABEL));
    render::save_png_atomic(&img, &args.out)?;
    println!("wrote {} ({} seeds × {} α)", args.out.display(), seeds.len(), alphas.len());
    if std::io::stdout().is_terminal() {
        let graphics = headless::inline_graphics(GraphicsMode::Auto);
        headless::show_inline(&args.out, graphics.as_ref());
    }
    Ok(())
}

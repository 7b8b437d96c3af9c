//! The report's experiments: `similarity` (Fig. 5), `generalize` (Fig. 8),
//! `ablation` (Fig. 9) and `merge` (joins `--shard` folders). The work is in
//! `lsd_core::experiments`; this module parses flags, resolves weight names,
//! draws progress and prints the tables.

use std::path::PathBuf;
use std::time::Instant;

use color_eyre::eyre::{bail, Result, WrapErr};
use indicatif::{ProgressBar, ProgressStyle};
use lsd_core::experiments::models::{ClipModel, GeneratorModel, Source};
use lsd_core::experiments::{seeds, similarity, Progress};

/// `lsd-tui similarity` arguments.
#[derive(Debug, clap::Args)]
pub struct SimilarityArgs {
    /// Text prompts (the table's rows).
    #[arg(long, num_args = 1.., required = true)]
    pub prompts: Vec<String>,
    /// Image seeds (the columns): a range `0..10` (end excluded), `0..=9`, or a list `1,2,5`.
    #[arg(long, default_value = "0..10")]
    pub seeds: String,
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
    /// Output folder.
    #[arg(long, default_value = "runs/similarity")]
    pub out: PathBuf,
    /// `cpu` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// `lsd-tui generalize` arguments.
#[derive(Debug, clap::Args)]
pub struct GeneralizeArgs {}
/// `lsd-tui ablation` arguments.
#[derive(Debug, clap::Args)]
pub struct AblationArgs {}
/// `lsd-tui merge` arguments.
#[derive(Debug, clap::Args)]
pub struct MergeArgs {}

/// `demo`, or a weights name or file resolved with `lsd_weights::resolve`.
fn source(name_or_path: &str, what: &str) -> Result<Source> {
    if name_or_path == "demo" {
        return Ok(Source::Demo);
    }
    let path = lsd_weights::resolve(name_or_path)
        .wrap_err_with(|| format!("finding the {what} weights '{name_or_path}'"))?;
    Ok(Source::File(path))
}

/// A progress bar on stderr (hidden when stderr is not a terminal) and the
/// callback that moves it.
fn progress_bar(message: &str) -> (ProgressBar, impl FnMut(Progress)) {
    let bar = ProgressBar::new(0);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{wide_bar}] {pos}/{len} {elapsed} (eta {eta}) {prefix}",
    ) {
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

/// Fig. 5.
pub fn similarity(a: SimilarityArgs) -> Result<()> {
    let start = Instant::now();
    let seeds = seeds::parse_seeds(&a.seeds)?;
    if !(a.truncation > 0.0 && a.truncation <= 1.0) {
        bail!("truncation '{}' is outside (0, 1]; 0.7 is usual, 1 disables it", a.truncation);
    }
    let device = lsd_core::plugin::parse_device(&a.device)?;
    let gen = GeneratorModel::load(&source(&a.generator, "generator")?, &device)
        .wrap_err("loading the generator")?;
    let clip = ClipModel::load(&source(&a.clip, "CLIP")?, &device).wrap_err("loading CLIP")?;
    let cfg =
        similarity::Config { prompts: a.prompts, seeds, truncation: a.truncation, thumb: a.thumb };
    let (bar, mut update) = progress_bar("images");
    let result = similarity::run(&cfg, &gen, &clip, &mut update)?;
    bar.finish_and_clear();
    let out =
        result.write(&a.out).wrap_err_with(|| format!("writing into '{}'", a.out.display()))?;
    print!("{}", result.to_table());
    println!("wrote {}", out.csv.display());
    println!("wrote {}", out.png.display());
    println!("wrote {}", out.json.display());
    println!("wrote {} images under {}", out.images.len(), a.out.join("images").display());
    eprintln!("done in {:.1}s", start.elapsed().as_secs_f64());
    Ok(())
}

/// Fig. 8.
pub fn generalize(_a: GeneralizeArgs) -> Result<()> {
    bail!("'generalize' is not available in this build yet")
}
/// Fig. 9.
pub fn ablation(_a: AblationArgs) -> Result<()> {
    bail!("'ablation' is not available in this build yet")
}
/// Merges shards.
pub fn merge(_a: MergeArgs) -> Result<()> {
    bail!("'merge' is not available in this build yet")
}

//! `lsd-tui check-fixture MODEL DIR`: runs any reference fixture directory
//! of a model's layout (config, checkpoint, cases) against our
//! implementation and prints max abs/rel error per case against the
//! tolerances stored in that directory.

use std::path::PathBuf;

use color_eyre::eyre::{Result, WrapErr};
use lsd_core::fixture::FixtureReport;
use lsd_core::models::{arcface, bisenet, clip, stylegan2};

/// Which network a fixture directory is for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FixtureModel {
    /// rosinality StyleGAN2 generator (config.json, generator.pt, cases.safetensors).
    Stylegan2,
    /// NVIDIA StyleGAN2-ADA network pickles (config.json, network.pkl,
    /// network-clamp.pkl, cases.safetensors).
    #[value(name = "stylegan2-ada")]
    Stylegan2Ada,
    /// Hugging Face CLIP (config.json, tokenizer.json, model.safetensors, cases.*).
    Clip,
    /// ArcFace IR-SE50 (config.json, model.pth, cases.safetensors).
    Arcface,
    /// BiSeNet face parsing (config.json, model.pth, cases.safetensors).
    Bisenet,
}

/// `lsd-tui check-fixture` arguments.
#[derive(Debug, clap::Args)]
pub struct CheckFixtureArgs {
    /// The network the fixture is for.
    #[arg(value_enum)]
    pub model: FixtureModel,
    /// The fixture directory.
    pub dir: PathBuf,
    /// `cpu` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Runs every case of the directory; exits non-zero when any case fails or
/// an expected input is missing.
pub fn run(args: CheckFixtureArgs) -> Result<()> {
    let device = lsd_core::plugin::parse_device(&args.device)
        .wrap_err_with(|| format!("opening device '{}'", args.device))?;
    if !args.dir.is_dir() {
        color_eyre::eyre::bail!("fixture directory '{}' does not exist", args.dir.display());
    }
    let report: FixtureReport = match args.model {
        FixtureModel::Stylegan2 => stylegan2::check_fixture(&args.dir, &device),
        FixtureModel::Stylegan2Ada => stylegan2::ada_fixture::check_fixture(&args.dir, &device),
        FixtureModel::Clip => clip::check_fixture(&args.dir, &device),
        FixtureModel::Arcface => arcface::check_fixture(&args.dir, &device),
        FixtureModel::Bisenet => bisenet::check_fixture(&args.dir, &device),
    }
    .wrap_err_with(|| format!("checking fixture '{}'", args.dir.display()))?;
    print!("{}", report.table());
    println!("device: {}", args.device);
    if !report.passed() {
        std::process::exit(1);
    }
    Ok(())
}

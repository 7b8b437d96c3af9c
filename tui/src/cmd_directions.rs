//! `lsd-tui sefa` and `lsd-tui direction import|export`: directions from
//! other methods in our direction format (so `apply` works on them), and
//! ours out as `.npy`.

use std::path::PathBuf;

use color_eyre::eyre::{bail, eyre, Result, WrapErr};
use lsd_core::layers::LayerSpec;
use lsd_core::models::stylegan2::{self, Config};
use lsd_core::outputs::{self, Direction};
use lsd_core::{demo, direction_io, sefa};

/// `lsd-tui sefa` arguments.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  lsd-tui sefa --generator stylegan2-ffhq-1024 --layers coarse --top 10 --output sefa-coarse.safetensors\n  lsd-tui sefa --generator demo --top 3"
)]
pub struct SefaArgs {
    /// Generator weights: `demo`, a name from `lsd-tui weights list`, or a file.
    #[arg(long, default_value = "demo")]
    pub generator: String,
    /// The W+ layers whose style weights are factorised, and that the
    /// directions act on: `coarse`, `medium`, `fine`, `0-3,8`, … (default: all).
    #[arg(long)]
    pub layers: Option<String>,
    /// How many directions to keep (largest eigenvalues first).
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// The direction file to write (`apply --index K` picks direction K).
    #[arg(long, short = 'o', alias = "out", value_name = "FILE", default_value = "sefa.safetensors")]
    pub output: PathBuf,
}

/// `lsd-tui direction …`
#[derive(Debug, clap::Args)]
pub struct DirectionArgs {
    #[command(subcommand)]
    pub command: DirectionSub,
}

/// What to do with a direction file.
#[derive(Debug, clap::Subcommand)]
pub enum DirectionSub {
    /// Import an InterFaceGAN / GANSpace `.npy` direction: W (`[512]`,
    /// `[K, 512]`, copied onto each chosen layer) or W+ (`[18, 512]`,
    /// `[K, 18, 512]`, as is).
    Import {
        /// The `.npy` file.
        input: PathBuf,
        /// The generator it belongs to: `demo`, a manifest name, or a file.
        #[arg(long, default_value = "demo")]
        generator: String,
        /// The W+ layers a W direction is copied onto (default: all).
        #[arg(long)]
        layers: Option<String>,
        /// The direction file to write.
        #[arg(long, short = 'o', alias = "out", value_name = "FILE")]
        output: PathBuf,
    },
    /// Export a direction file's `[K, L, D]` tensor as `.npy` (float32).
    Export {
        /// A direction file (`direction.safetensors`, `lsd-tui sefa`'s output, …).
        input: PathBuf,
        /// The `.npy` file to write.
        out: PathBuf,
    },
}

/// The generator's state dict, its key prefix, its configuration and its
/// checksum (`demo` for the demo generator).
fn generator_weights(
    name: &str,
) -> Result<(std::collections::HashMap<String, candle_core::Tensor>, String, Config, String)> {
    if name == "demo" {
        let cfg = stylegan2::demo::demo_config();
        let w = stylegan2::demo::demo_weights(&cfg, demo::DEMO_MODEL_SEED)?;
        return Ok((w.tensors().clone(), String::new(), cfg, "demo".into()));
    }
    let path = lsd_weights::resolve(name).wrap_err_with(|| format!("finding the generator weights '{name}'"))?;
    let tensors = lsd_core::torch::load(&path)?;
    let prefix = if tensors.keys().any(|k| k.starts_with("g_ema.")) { "g_ema" } else { "" };
    let cfg = Config::from_tensors(&tensors, prefix)?;
    let sha = lsd_core::torch::sha256_file(&path)?;
    Ok((tensors, prefix.to_string(), cfg, sha))
}

fn resolve_layers(text: Option<&str>, n_latent: usize) -> Result<Vec<usize>> {
    match text {
        Some(t) => LayerSpec::parse(t).and_then(|s| s.resolve(n_latent)).map_err(|e| eyre!("--layers: {e}")),
        None => Ok((0..n_latent).collect()),
    }
}

/// Computes SeFa's directions and writes them as a direction file.
pub fn sefa(a: SefaArgs) -> Result<()> {
    if a.top == 0 {
        bail!("--top 0: keep at least one direction");
    }
    let start = std::time::Instant::now();
    let (tensors, prefix, cfg, sha) = generator_weights(&a.generator)?;
    let n_latent = cfg.n_latent();
    let layers = resolve_layers(a.layers.as_deref(), n_latent)?;
    let f = sefa::factorize(&tensors, &prefix, n_latent, &layers)?;
    let direction = f.directions(a.top, n_latent, &candle_core::Device::Cpu)?;
    let layer_text = a.layers.as_deref().unwrap_or("all");
    let name = match &a.layers {
        Some(text) => format!("sefa-{}", text.replace(' ', "")),
        None => "sefa".to_string(),
    };
    let meta = direction_io::external_meta(&name, &format!("SeFa, layers {layer_text}"), &a.generator, &sha, &layers);
    outputs::write_direction(&a.output, &Direction { direction, latent: None, meta })?;
    let total: f64 = f.values.iter().sum();
    println!(
        "wrote {} ({} directions of SeFa on {} layers, {:.2}s)",
        a.output.display(),
        a.top.min(f.values.len()),
        layers.len(),
        start.elapsed().as_secs_f64()
    );
    println!("  k  eigenvalue  share");
    for (k, v) in f.values.iter().take(a.top).enumerate() {
        println!("{k:>3}  {v:>10.4}  {:>5.1}%", 100.0 * v / total);
    }
    if a.generator == "demo" {
        println!("{}", demo::DEMO_LABEL);
    }
    Ok(())
}

/// `direction import` / `direction export`.
pub fn direction(a: DirectionArgs) -> Result<()> {
    match a.command {
        DirectionSub::Import { input, generator, layers, output } => {
            let (_, _, cfg, sha) = generator_weights(&generator)?;
            let n_latent = cfg.n_latent();
            let chosen = resolve_layers(layers.as_deref(), n_latent)?;
            let direction =
                direction_io::import_npy(&input, n_latent, cfg.style_dim, Some(&chosen), &candle_core::Device::Cpu)?;
            let name = lsd_core::latents::label_of(&input);
            let meta = direction_io::external_meta(
                &name,
                &format!("imported from {}", input.display()),
                &generator,
                &sha,
                &chosen,
            );
            let k = direction.dim(0)?;
            outputs::write_direction(&output, &Direction { direction, latent: None, meta })?;
            println!("wrote {} ({k} direction(s) from {})", output.display(), input.display());
        }
        DirectionSub::Export { input, out } => {
            let d = outputs::read_direction(&input, &candle_core::Device::Cpu)?;
            direction_io::export_npy(&d.direction, &out)?;
            println!("wrote {} (shape {:?})", out.display(), d.direction.dims());
        }
    }
    Ok(())
}

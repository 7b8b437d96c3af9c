//! The networks an experiment measures with: the generator that makes the
//! images and the CLIP model that scores them, from the demo seed or from
//! weight files (already resolved to paths by the caller; core never looks
//! names up or downloads).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::demo::DEMO_MODEL_SEED;
use crate::models::clip::{self, Clip, ClipTokenizer};
use crate::models::stylegan2::{self, Generator};
use crate::recipe::SeedRng;
use crate::Result;

/// Where a network's weights come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The seeded demo network ([`crate::demo`]); its outputs mean nothing.
    Demo,
    /// A weights file.
    File(PathBuf),
}

impl Source {
    /// True for the demo network.
    pub fn is_demo(&self) -> bool {
        matches!(self, Self::Demo)
    }

    /// `demo` or the file's path, for tables and metadata.
    pub fn describe(&self) -> String {
        match self {
            Self::Demo => "demo".into(),
            Self::File(p) => p.display().to_string(),
        }
    }
}

/// Number of z averaged when a checkpoint has no `latent_avg`.
const LATENT_AVG_SAMPLES: u64 = 4096;

/// A generator and its average latent `[style_dim]` (for truncation).
#[derive(Debug, Clone)]
pub struct GeneratorModel {
    /// The network.
    pub generator: Generator,
    /// The checkpoint's `latent_avg`, or the mean of the mapping over
    /// seeded z when the checkpoint has none.
    pub latent_avg: Tensor,
    /// Where it came from.
    pub source: Source,
    /// How a seed becomes z (the recipe's `seed_rng`; ChaCha8 by default).
    pub seed_rng: SeedRng,
}

impl GeneratorModel {
    /// Loads the generator from `source` onto `device`.
    pub fn load(source: &Source, device: &Device) -> Result<Self> {
        let (generator, latent_avg) = match source {
            Source::Demo => stylegan2::demo(DEMO_MODEL_SEED, device)?,
            Source::File(path) => {
                let (g, avg) = Generator::load(path, device)?;
                let avg = match avg {
                    Some(a) => a,
                    None => estimate_latent_avg(&g)?,
                };
                (g, avg)
            }
        };
        Ok(Self { generator, latent_avg, source: source.clone(), seed_rng: SeedRng::Chacha })
    }

    /// W `[1, style_dim]` for `seed`, truncated with `psi` (1 = none).
    pub fn w(&self, seed: u64, psi: f64) -> Result<Tensor> {
        let trunc = (psi < 1.0).then_some((psi, &self.latent_avg));
        self.generator.w_from_seed_with(seed, self.seed_rng, trunc)
    }

    /// The image `[1, 3, H, W]` in about `[-1, 1]` of a latent (W or W+),
    /// with the checkpoint's stored noise.
    pub fn image(&self, latent: &Tensor) -> Result<Tensor> {
        self.image_with(latent, stylegan2::Noise::Stored)
    }

    /// Images `[B, 3, H, W]` of latents `[B, D]` or `[B, L, D]` with `noise`.
    pub fn image_with(&self, latent: &Tensor, noise: stylegan2::Noise) -> Result<Tensor> {
        Ok(self.generator.synthesis(latent, noise, false)?.image)
    }

    /// W+ `[1, L, D]` for `seed`, truncated with `psi`, as the training
    /// engine computes it.
    pub fn w_plus(&self, seed: u64, psi: f64) -> Result<Tensor> {
        Ok(self.generator.broadcast_latent(&self.w(seed, psi)?)?.contiguous()?)
    }
}

/// The mean of the mapping over [`LATENT_AVG_SAMPLES`] seeded z (seeds
/// `1_000_000 + i`, as the training engine draws them, so that truncation
/// matches its runs), in batches.
fn estimate_latent_avg(g: &Generator) -> Result<Tensor> {
    let d = g.z_dim();
    let mut sum = Tensor::zeros(d, DType::F32, g.device())?;
    for chunk in (0..LATENT_AVG_SAMPLES).collect::<Vec<_>>().chunks(256) {
        let zs = chunk
            .iter()
            .map(|s| stylegan2::z_from_seed(1_000_000 + s, d, g.device()))
            .collect::<Result<Vec<_>>>()?;
        sum = (sum + g.mapping(&Tensor::cat(&zs, 0)?)?.sum(0)?)?;
    }
    Ok((sum / LATENT_AVG_SAMPLES as f64)?)
}

/// CLIP and its tokenizer.
#[derive(Debug, Clone)]
pub struct ClipModel {
    /// The network.
    pub clip: Clip,
    /// The tokenizer.
    pub tokenizer: ClipTokenizer,
    /// Where it came from.
    pub source: Source,
}

impl ClipModel {
    /// Loads CLIP from `source` onto `device`. For a file, a `config.json`
    /// and `tokenizer.json` next to it are used when present (as the hub
    /// download has them); otherwise the configuration is inferred from the
    /// weights and the built-in tokenizer is used.
    pub fn load(source: &Source, device: &Device) -> Result<Self> {
        let (clip, tokenizer) = match source {
            Source::Demo => clip::demo(DEMO_MODEL_SEED, device)?,
            Source::File(path) => load_clip_file(path, device)?,
        };
        Ok(Self { clip, tokenizer, source: source.clone() })
    }
}

fn load_clip_file(path: &Path, device: &Device) -> Result<(Clip, ClipTokenizer)> {
    let tensors = crate::torch::load(path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let config_json = dir.join("config.json");
    let cfg = if config_json.is_file() {
        clip::Config::from_file(&config_json)?
    } else {
        clip::Config::from_tensors(&tensors)?
    };
    let tokenizer_json = dir.join("tokenizer.json");
    let tokenizer = if tokenizer_json.is_file() {
        ClipTokenizer::from_file(&tokenizer_json)?
    } else {
        ClipTokenizer::embedded()?
    };
    let clip = Clip::new(&cfg, VarBuilder::from_tensors(tensors, DType::F32, device))?;
    Ok((clip, tokenizer))
}

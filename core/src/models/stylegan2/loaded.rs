//! A generator ready to draw the images of seeds: the network, its average
//! latent (for truncation) and where it came from. The engine, the
//! experiments and `lsd-tui apply` all load a generator through
//! [`LoadedGenerator::load`], so they accept the same files and truncate
//! towards the same average.

use std::path::PathBuf;

use candle_core::{Device, Tensor};

use super::{Generator, Noise, SeedRng};
use crate::demo::DEMO_MODEL_SEED;
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
    /// The demo network for `None`, else the file.
    pub fn from_path(path: Option<PathBuf>) -> Self {
        path.map_or(Self::Demo, Self::File)
    }

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
pub const LATENT_AVG_SAMPLES: u64 = 4096;

/// A generator and its average latent `[style_dim]` (for truncation).
#[derive(Debug, Clone)]
pub struct LoadedGenerator {
    /// The network.
    pub generator: Generator,
    /// The checkpoint's `latent_avg`, or the mean of the mapping over
    /// seeded z when the checkpoint has none ([`estimate_latent_avg`]).
    pub latent_avg: Tensor,
    /// Where it came from.
    pub source: Source,
    /// How a seed becomes z (a recipe's `seed_rng`; ChaCha8 by default).
    pub seed_rng: SeedRng,
}

impl LoadedGenerator {
    /// Loads the generator from `source` onto `device` (any file
    /// [`Generator::load`] reads).
    pub fn load(source: &Source, device: &Device) -> Result<Self> {
        let (generator, latent_avg) = match source {
            Source::Demo => super::demo(DEMO_MODEL_SEED, device)?,
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

    /// W+ `[1, L, D]` for `seed`, truncated with `psi`, as the training
    /// engine computes it.
    pub fn w_plus(&self, seed: u64, psi: f64) -> Result<Tensor> {
        Ok(self.generator.broadcast_latent(&self.w(seed, psi)?)?.contiguous()?)
    }

    /// The image `[1, 3, H, W]` in about `[-1, 1]` of a latent (W or W+),
    /// with the checkpoint's stored noise.
    pub fn image(&self, latent: &Tensor) -> Result<Tensor> {
        self.image_with(latent, Noise::Stored)
    }

    /// Images `[B, 3, H, W]` of latents `[B, D]` or `[B, L, D]` with `noise`.
    pub fn image_with(&self, latent: &Tensor, noise: Noise) -> Result<Tensor> {
        Ok(self.generator.synthesis(latent, noise, false)?.image)
    }
}

/// The mean of the mapping over [`LATENT_AVG_SAMPLES`] seeded z (seeds
/// `1_000_000 + i`), for checkpoints without `latent_avg` (rosinality's
/// training checkpoints).
pub fn estimate_latent_avg(g: &Generator) -> Result<Tensor> {
    let d = g.z_dim();
    let zs = (0..LATENT_AVG_SAMPLES)
        .map(|i| super::z_from_seed(1_000_000 + i, d, g.device()))
        .collect::<Result<Vec<_>>>()?;
    Ok(g.mapping(&Tensor::cat(&zs, 0)?)?.mean(0)?)
}

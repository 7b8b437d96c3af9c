//! A tiny random-weight generator under the real checkpoint key names, so
//! the pipeline runs with no download. Its images are coloured blobs that
//! mean nothing (see [`crate::demo::DEMO_LABEL`]).

use candle_core::{Device, Tensor};

use super::ops::Fir;
use super::{z_from_seed, Config, Generator};
use crate::demo::SeededWeights;
use crate::Result;

/// Number of z averaged into the demo `latent_avg`.
const LATENT_AVG_SAMPLES: usize = 512;

/// The demo configuration: 64x64 images, style_dim 32, 4 mapping layers,
/// narrow channels.
pub fn demo_config() -> Config {
    Config {
        size: 64,
        style_dim: 32,
        n_mlp: 4,
        lr_mlp: 0.01,
        blur_kernel: vec![1.0, 3.0, 3.0, 1.0],
        channels: vec![32, 32, 24, 16, 16],
    }
}

/// The demo generator for `seed`, and its `latent_avg` `[style_dim]` (the
/// mean of the mapping over [`LATENT_AVG_SAMPLES`] seeded z).
///
/// Weights follow rosinality's initialisation (raw N(0, 1) conv weights,
/// mapping weights N(0, 1/lr_mlp²), modulation bias 1), with the
/// constant-initialised parameters moved off their constants and the ToRGB
/// weights scaled down so the images stay roughly within [-1, 1].
pub fn demo(seed: u64, device: &Device) -> Result<(Generator, Tensor)> {
    let cfg = demo_config();
    let w = demo_weights(&cfg, seed)?;
    let gen = Generator::new(&cfg, w.into_var_builder(device))?;
    let zs = (0..LATENT_AVG_SAMPLES as u64)
        .map(|i| z_from_seed(seed.wrapping_mul(1_000_003).wrapping_add(i), cfg.style_dim, device))
        .collect::<Result<Vec<_>>>()?;
    let latent_avg = gen.mapping(&Tensor::cat(&zs, 0)?)?.mean(0)?;
    Ok((gen, latent_avg))
}

/// Seeded weights for any configuration, under rosinality's key names
/// (without the `g_ema.` prefix); see [`demo`] for the distributions.
pub fn demo_weights(cfg: &Config, seed: u64) -> Result<SeededWeights> {
    let mut w = SeededWeights::new(seed);
    let lr = cfg.lr_mlp as f32;
    for (name, shape) in cfg.state_dict_shapes() {
        let last = name.rsplit('.').next().unwrap_or_default();
        if name.ends_with(".kernel") {
            let k = Fir::kernel_2d(&cfg.blur_kernel, 4.0).into_iter().map(|v| v as f32).collect();
            w.insert(&name, Tensor::from_vec(k, shape.as_slice(), &Device::Cpu)?);
        } else if name.starts_with("style.") {
            // Raw values; the forward multiplies by lr_mlp.
            let std = if last == "weight" { 1.0 / lr } else { 0.1 / lr };
            w.normal(&name, &shape, 0.0, std)?;
        } else if name.contains("modulation.bias") {
            w.normal(&name, &shape, 1.0, 0.2)?;
        } else if name.starts_with("to_rgb") && name.ends_with("conv.weight") {
            w.normal(&name, &shape, 0.0, 0.2)?;
        } else if (name.starts_with("to_rgb") && last == "bias") || name.ends_with("noise.weight") {
            w.normal(&name, &shape, 0.0, 0.05)?;
        } else if name.ends_with("activate.bias") {
            w.normal(&name, &shape, 0.0, 0.1)?;
        } else {
            w.normal(&name, &shape, 0.0, 1.0)?;
        }
    }
    Ok(w)
}

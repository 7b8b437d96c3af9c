//! StyleGAN2 generator: mapping network, truncation, style mixing and the
//! synthesis network with modulated convolutions, driven from Z, W or W+.
//!
//! This is the generator whose latent space lsd-tui searches for edit
//! directions, so it must be differentiable to its latent input: every
//! operation has a backward pass (the constant-weight ops of [`crate::ops`]
//! for the convs, linears, FIR filters and fused element-wise steps; stock
//! candle-core ops for the rest), and the fixture checks the gradient
//! w.r.t. W+ and z.
//!
//! Paper: Karras et al. 2020, "Analyzing and Improving the Image Quality of
//! StyleGAN" (<https://arxiv.org/abs/1912.04958>).
//! Reference implementation: rosinality/stylegan2-pytorch `model.py`
//! (`Generator` and its layers)
//! <https://github.com/rosinality/stylegan2-pytorch/blob/bef283a1c24087da704d16c30abc8e36e63efa0e/model.py>.
//! Checkpoint: `stylegan2-ffhq-config-f.pt` (converted from NVIDIA's
//! TensorFlow release by rosinality's `convert_weight.py`), a dict
//! `{'g_ema': state_dict, 'latent_avg': [512]}`.
//!
//! The same generator also runs NVIDIA's StyleGAN2-ADA PyTorch snapshots
//! (`ffhq.pkl` and the other `network-snapshot-*.pkl`), whose layout and
//! few differences (gains, the activation clamp) are in [`ada`];
//! [`Generator::load`] reads either.

pub mod ada;
pub mod ada_fixture;
pub mod demo;
pub mod fixture;
pub mod layers;
pub mod loaded;
pub mod ops;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

#[cfg(test)]
use candle_core::Var;
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

pub use crate::recipe::SeedRng;
use crate::{Error, Result};

pub use demo::demo;
pub use fixture::check_fixture;
use layers::{EqualLinear, StyledConv, ToRgb, Trace};
pub use loaded::{LoadedGenerator, Source};
pub use ops::pixel_norm;

/// Hyper-parameters of a rosinality `Generator`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Config {
    /// Output resolution (a power of two, at least 4).
    pub size: usize,
    /// Dimension of z and w.
    pub style_dim: usize,
    /// Number of EqualLinear layers in the mapping network.
    pub n_mlp: usize,
    /// Learning-rate multiplier of the mapping layers (scales their weights
    /// and biases in the forward pass).
    pub lr_mlp: f64,
    /// The 1-D blur/up-sampling filter taps (`[1, 3, 3, 1]`).
    pub blur_kernel: Vec<f64>,
    /// Feature channels per resolution: `channels[i]` at `4 * 2^i`, for
    /// `i = 0..=log2(size) - 2`.
    pub channels: Vec<usize>,
}

impl Config {
    /// FFHQ 1024x1024, config-f: `Generator(1024, 512, 8,
    /// channel_multiplier=2)` as used for `stylegan2-ffhq-config-f.pt`
    /// (rosinality `convert_weight.py` / `generate.py` defaults).
    pub fn ffhq_1024() -> Self {
        Self::with_channel_multiplier(1024, 512, 8, 2)
    }

    /// rosinality's channel table: 512 up to 32x32, then
    /// `256, 128, 64, 32, 16` times `channel_multiplier` at 64..1024.
    pub fn with_channel_multiplier(size: usize, style_dim: usize, n_mlp: usize, mult: usize) -> Self {
        let channels = (2..=size.max(4).ilog2())
            .map(|log| match 1usize << log {
                r if r <= 32 => 512,
                r => (16384 / r) * mult,
            })
            .collect();
        Self { size, style_dim, n_mlp, lr_mlp: 0.01, blur_kernel: vec![1.0, 3.0, 3.0, 1.0], channels }
    }

    /// Infers the configuration from a state dict whose keys sit under
    /// `prefix` (`"g_ema"` for rosinality checkpoints, `""` for a bare
    /// state dict): `style_dim` and `n_mlp` from `style.*.weight`, the
    /// channels from `input.input` and `convs.*.conv.weight`, the size from
    /// the number of convs. `lr_mlp` and `blur_kernel` are not stored and
    /// take rosinality's defaults (0.01, `[1, 3, 3, 1]`).
    pub fn from_tensors(tensors: &HashMap<String, Tensor>, prefix: &str) -> Result<Self> {
        let key = |name: &str| if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") };
        let get = |name: &str| {
            tensors.get(&key(name)).ok_or_else(|| Error::MissingTensor {
                name: key(name),
                hint: "; is this a rosinality StyleGAN2 generator state dict (keys 'g_ema.*')?".into(),
            })
        };
        let style = get("style.1.weight")?;
        let style_dim = style.dim(0)?;
        let n_mlp = (1..).take_while(|i| tensors.contains_key(&key(&format!("style.{i}.weight")))).count();
        let input = get("input.input")?;
        let mut channels = vec![input.dim(1)?];
        let n_convs = (0..).take_while(|i| tensors.contains_key(&key(&format!("convs.{i}.conv.weight")))).count();
        if n_convs % 2 != 0 {
            return Err(Error::Config(format!(
                "found {n_convs} 'convs.*' layers; a generator has two per resolution above 4x4"
            )));
        }
        for j in 0..n_convs / 2 {
            let name = format!("convs.{}.conv.weight", 2 * j);
            let w = get(&name)?;
            if w.rank() != 5 {
                return Err(Error::BadShape {
                    name: key(&name),
                    expected: "[1, out, in, 3, 3]".into(),
                    got: w.dims().to_vec(),
                });
            }
            channels.push(w.dim(1)?);
        }
        let cfg = Self {
            size: 4 << (n_convs / 2),
            style_dim,
            n_mlp,
            lr_mlp: 0.01,
            blur_kernel: vec![1.0, 3.0, 3.0, 1.0],
            channels,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// `log2(size)`.
    pub fn log_size(&self) -> usize {
        self.size.ilog2() as usize
    }

    /// Number of W+ slots: `2 * log2(size) - 2` (18 at 1024).
    pub fn n_latent(&self) -> usize {
        2 * self.log_size() - 2
    }

    /// Number of styled convs, i.e. of noise inputs: `2 * (log2(size) - 2) + 1`.
    pub fn num_layers(&self) -> usize {
        2 * (self.log_size() - 2) + 1
    }

    /// Side of noise input `i` (`noises.noise_i`).
    pub fn noise_size(&self, i: usize) -> usize {
        1 << ((i + 5) / 2)
    }

    /// Checks that the values describe a buildable generator.
    pub fn validate(&self) -> Result<()> {
        if self.size < 4 || !self.size.is_power_of_two() {
            return Err(Error::Config(format!("size {} must be a power of two >= 4", self.size)));
        }
        if self.channels.len() != self.log_size() - 1 {
            return Err(Error::Config(format!(
                "{} channel entries for size {}; give one per resolution 4..{} ({})",
                self.channels.len(),
                self.size,
                self.size,
                self.log_size() - 1
            )));
        }
        if self.style_dim == 0 || self.n_mlp == 0 || self.blur_kernel.is_empty() {
            return Err(Error::Config("style_dim, n_mlp and blur_kernel must be non-empty".into()));
        }
        Ok(())
    }

    /// Every tensor of rosinality's `Generator.state_dict()` for this
    /// configuration, with its shape, in `state_dict()` order (keys without
    /// the `g_ema.` prefix). Used to build demo weights under the real names
    /// and to check a layout.
    pub fn state_dict_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let d = self.style_dim;
        let k = self.blur_kernel.len();
        let mut out: Vec<(String, Vec<usize>)> = Vec::new();
        for i in 1..=self.n_mlp {
            out.push((format!("style.{i}.weight"), vec![d, d]));
            out.push((format!("style.{i}.bias"), vec![d]));
        }
        let c4 = self.channels[0];
        out.push(("input.input".into(), vec![1, c4, 4, 4]));
        // state_dict() order: a module's own parameters, then its buffers,
        // then its children in registration order (model.py __init__s).
        let modconv = |out: &mut Vec<(String, Vec<usize>)>, name: &str, o: usize, i: usize, ks: usize, up: bool| {
            out.push((format!("{name}.conv.weight"), vec![1, o, i, ks, ks]));
            if up {
                out.push((format!("{name}.conv.blur.kernel"), vec![k, k]));
            }
            out.push((format!("{name}.conv.modulation.weight"), vec![i, d]));
            out.push((format!("{name}.conv.modulation.bias"), vec![i]));
        };
        let styled = |out: &mut Vec<(String, Vec<usize>)>, name: &str, o: usize, i: usize, up: bool| {
            modconv(out, name, o, i, 3, up);
            out.push((format!("{name}.noise.weight"), vec![1]));
            out.push((format!("{name}.activate.bias"), vec![o]));
        };
        let to_rgb = |out: &mut Vec<(String, Vec<usize>)>, name: &str, i: usize, up: bool| {
            out.push((format!("{name}.bias"), vec![1, 3, 1, 1]));
            if up {
                out.push((format!("{name}.upsample.kernel"), vec![k, k]));
            }
            modconv(out, name, 3, i, 1, false);
        };
        styled(&mut out, "conv1", c4, c4, false);
        to_rgb(&mut out, "to_rgb1", c4, false);
        for j in 0..self.channels.len() - 1 {
            let (i, o) = (self.channels[j], self.channels[j + 1]);
            styled(&mut out, &format!("convs.{}", 2 * j), o, i, true);
            styled(&mut out, &format!("convs.{}", 2 * j + 1), o, o, false);
        }
        for j in 0..self.channels.len() - 1 {
            to_rgb(&mut out, &format!("to_rgbs.{j}"), self.channels[j + 1], true);
        }
        for i in 0..self.num_layers() {
            let s = self.noise_size(i);
            out.push((format!("noises.noise_{i}"), vec![1, 1, s, s]));
        }
        out
    }
}

/// Where the per-layer noise maps come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Noise {
    /// The checkpoint's fixed `noises.noise_i` buffers (rosinality's
    /// `randomize_noise=False`): the same image for the same latent.
    Stored,
    /// Fresh N(0, 1) maps `[B, 1, H, W]` per layer drawn from a ChaCha8
    /// stream with this seed, in layer order (like `randomize_noise=True`,
    /// but reproducible).
    Seeded(u64),
    /// No noise at all.
    Zero,
}

/// The result of a synthesis pass.
#[derive(Debug, Clone)]
pub struct SynthesisOutput {
    /// `[B, 3, size, size]`, unclamped (trained models give about [-1, 1]).
    pub image: Tensor,
    /// The output of every styled conv (`conv1`, `convs.0`, …), in order,
    /// when requested; empty otherwise.
    pub features: Vec<Tensor>,
}

/// The rosinality StyleGAN2 generator (`g_ema`).
#[derive(Debug, Clone)]
pub struct Generator {
    cfg: Config,
    mapping: Vec<EqualLinear>,
    /// `input.input`, `[1, C4, 4, 4]`.
    input: Tensor,
    conv1: StyledConv,
    to_rgb1: ToRgb,
    convs: Vec<StyledConv>,
    to_rgbs: Vec<ToRgb>,
    noises: Vec<Tensor>,
    device: Device,
    /// Seeded noise maps already drawn, by `(seed, batch)`: drawing them on
    /// the host and uploading them is the same work every step.
    seeded_noise: Arc<Mutex<HashMap<(u64, usize), Vec<Option<Tensor>>>>>,
    /// Dimension of z (w's, `style_dim`, in rosinality's layout; its own in
    /// StyleGAN2-ADA's).
    z_dim: usize,
}

/// The layers of a generator built elsewhere than [`Generator::new`] (the
/// StyleGAN2-ADA layout, [`ada::build`]), in rosinality's structure.
pub(crate) struct Parts {
    pub mapping: Vec<EqualLinear>,
    /// `[1, C4, 4, 4]`.
    pub input: Tensor,
    pub conv1: StyledConv,
    pub to_rgb1: ToRgb,
    pub convs: Vec<StyledConv>,
    pub to_rgbs: Vec<ToRgb>,
    /// `[1, 1, s, s]` per styled conv, in forward order.
    pub noises: Vec<Tensor>,
}

/// Most `(seed, batch)` noise draws a generator keeps.
const SEEDED_NOISE_LIMIT: usize = 8;

impl Generator {
    /// Builds the generator from a `VarBuilder` positioned at the state dict
    /// (`vb.pp("g_ema")` for a rosinality checkpoint).
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let d = cfg.style_dim;
        let k = &cfg.blur_kernel;
        let mapping = (1..=cfg.n_mlp)
            .map(|i| EqualLinear::new(d, d, cfg.lr_mlp, true, vb.pp(format!("style.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let c4 = cfg.channels[0];
        let input = vb.get((1, c4, 4, 4), "input.input")?;
        let conv1 = StyledConv::new(c4, c4, d, false, k, vb.pp("conv1"))?;
        let to_rgb1 = ToRgb::new(c4, d, false, k, vb.pp("to_rgb1"))?;
        let mut convs = Vec::new();
        let mut to_rgbs = Vec::new();
        for j in 0..cfg.channels.len() - 1 {
            let (i, o) = (cfg.channels[j], cfg.channels[j + 1]);
            convs.push(StyledConv::new(i, o, d, true, k, vb.pp(format!("convs.{}", 2 * j)))?);
            convs.push(StyledConv::new(o, o, d, false, k, vb.pp(format!("convs.{}", 2 * j + 1)))?);
            to_rgbs.push(ToRgb::new(o, d, true, k, vb.pp(format!("to_rgbs.{j}")))?);
        }
        let noises = (0..cfg.num_layers())
            .map(|i| {
                let s = cfg.noise_size(i);
                Ok(vb.get((1, 1, s, s), &format!("noises.noise_{i}"))?)
            })
            .collect::<Result<Vec<_>>>()?;
        let parts = Parts { mapping, input, conv1, to_rgb1, convs, to_rgbs, noises };
        Self::from_parts(cfg, cfg.style_dim, parts, vb.device())
    }

    /// The generator of `cfg`'s geometry with z of `z_dim` and the given
    /// layers.
    pub(crate) fn from_parts(cfg: &Config, z_dim: usize, parts: Parts, device: &Device) -> Result<Self> {
        cfg.validate()?;
        let Parts { mapping, input, conv1, to_rgb1, convs, to_rgbs, noises } = parts;
        if noises.len() != cfg.num_layers() || convs.len() != cfg.num_layers() - 1 {
            return Err(Error::Config(format!(
                "{} styled convs and {} noise maps for a {}x{} generator",
                convs.len() + 1,
                noises.len(),
                cfg.size,
                cfg.size
            )));
        }
        Ok(Self {
            cfg: cfg.clone(),
            mapping,
            input,
            conv1,
            to_rgb1,
            convs,
            to_rgbs,
            noises,
            device: device.clone(),
            seeded_noise: Arc::default(),
            z_dim,
        })
    }

    /// Loads a generator file and infers its configuration: a rosinality
    /// checkpoint (`.pt` with `g_ema`, or a safetensors export with
    /// `g_ema.*` keys or bare state-dict keys), a StyleGAN2-ADA network
    /// pickle (`.pkl`, its `G_ema`), or a safetensors file converted from
    /// one ([`ada::convert`]). Returns the generator and `latent_avg`
    /// `[style_dim]` when the file has one (converted rosinality
    /// checkpoints do, training ones don't; StyleGAN2-ADA's `w_avg` always).
    /// Every place that loads a generator for a recipe goes through here,
    /// by way of [`LoadedGenerator::load`].
    pub fn load(path: &Path, device: &Device) -> Result<(Self, Option<Tensor>)> {
        match crate::torch::detect(path)? {
            crate::torch::Format::NetworkPickle => {
                let (gen, avg, _) = ada::load_pickle(path, device)?;
                return Ok((gen, Some(avg)));
            }
            crate::torch::Format::Safetensors => {
                if let Some(cfg) = ada::converted_config(path)? {
                    let (gen, avg) = ada::load_converted(path, &cfg, device)?;
                    return Ok((gen, Some(avg)));
                }
            }
            _ => {}
        }
        let tensors = crate::torch::load(path)?;
        let prefix = if tensors.keys().any(|k| k.starts_with("g_ema.")) { "g_ema" } else { "" };
        let cfg = Config::from_tensors(&tensors, prefix)?;
        let latent_avg = match tensors.get("latent_avg") {
            Some(t) => Some(t.flatten_all()?.to_dtype(DType::F32)?.to_device(device)?),
            None => None,
        };
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let vb = if prefix.is_empty() { vb } else { vb.pp(prefix) };
        Ok((Self::new(&cfg, vb)?, latent_avg))
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Dimension of z, the mapping's input.
    pub fn z_dim(&self) -> usize {
        self.z_dim
    }

    /// Mapping network z → w: PixelNorm, then `n_mlp` EqualLinear layers,
    /// each (the last included) followed by the fused leaky ReLU. Works on
    /// `[B, D]` and on `[B, L, D]` (one z per W+ slot).
    pub fn mapping(&self, zs: &Tensor) -> Result<Tensor> {
        let mut xs = pixel_norm(zs)?;
        for layer in &self.mapping {
            xs = layer.forward(&xs)?;
        }
        Ok(xs)
    }

    /// A 2-D style `[B, D]` repeated to W+ `[B, n_latent, D]`; a 3-D W+ is
    /// checked and returned as is.
    pub fn broadcast_latent(&self, w: &Tensor) -> Result<Tensor> {
        let (n, d) = (self.cfg.n_latent(), self.cfg.style_dim);
        match w.dims() {
            &[b, dd] if dd == d => Ok(w.unsqueeze(1)?.broadcast_as((b, n, d))?),
            &[_, nn, dd] if nn == n && dd == d => Ok(w.clone()),
            got => Err(Error::BadShape {
                name: "latent".into(),
                expected: format!("[B, {d}] (W) or [B, {n}, {d}] (W+)"),
                got: got.to_vec(),
            }),
        }
    }

    /// Style mixing (rosinality `Generator.forward` with two styles): W+
    /// slots `0..inject_index` take `w1`, the rest `w2`. Both are `[B, D]`.
    pub fn mix(&self, w1: &Tensor, w2: &Tensor, inject_index: usize) -> Result<Tensor> {
        let n = self.cfg.n_latent();
        if inject_index > n {
            return Err(Error::Config(format!("inject_index {inject_index} is past the {n} latent slots")));
        }
        let w1 = self.broadcast_latent(w1)?.narrow(1, 0, inject_index)?;
        let w2 = self.broadcast_latent(w2)?.narrow(1, inject_index, n - inject_index)?;
        Ok(Tensor::cat(&[&w1, &w2], 1)?)
    }

    /// Synthesis from W `[B, D]` (broadcast to every slot) or W+
    /// `[B, n_latent, D]`. `features` asks for the output of every styled
    /// conv as well.
    pub fn synthesis(&self, latent: &Tensor, noise: Noise, features: bool) -> Result<SynthesisOutput> {
        self.synthesis_traced(latent, noise, features, &mut Trace::disabled())
    }

    /// [`Self::synthesis`], recording named intermediates into `trace`.
    pub(crate) fn synthesis_traced(
        &self,
        latent: &Tensor,
        noise: Noise,
        want_features: bool,
        trace: &mut Trace,
    ) -> Result<SynthesisOutput> {
        let latent = self.broadcast_latent(latent)?;
        let b = latent.dim(0)?;
        let noises = self.noise_maps(noise, b)?;
        let slot = |i: usize| latent.narrow(1, i, 1).and_then(|t| t.squeeze(1));
        let mut features = Vec::new();
        let mut keep = |t: &Tensor| {
            if want_features {
                features.push(t.clone());
            }
        };
        // model.py Generator.forward: conv1 reads slot 0, to_rgb1 slot 1,
        // block j reads 1+2j, 2+2j and (its ToRGB) 3+2j.
        let mut xs = self.conv1.forward(&self.input, &slot(0)?, noises[0].as_ref(), "conv1", trace)?;
        keep(&xs);
        let mut skip = self.to_rgb1.forward(&xs, &slot(1)?, None, "to_rgb1", trace)?;
        for (j, to_rgb) in self.to_rgbs.iter().enumerate() {
            let (a, c) = (2 * j, 2 * j + 1);
            xs = self.convs[a].forward(&xs, &slot(1 + a)?, noises[1 + a].as_ref(), &format!("convs.{a}"), trace)?;
            keep(&xs);
            xs = self.convs[c].forward(&xs, &slot(1 + c)?, noises[1 + c].as_ref(), &format!("convs.{c}"), trace)?;
            keep(&xs);
            skip = to_rgb.forward(&xs, &slot(3 + a)?, Some(&skip), &format!("to_rgbs.{j}"), trace)?;
        }
        Ok(SynthesisOutput { image: skip, features })
    }

    /// The noise map of every layer for a batch of `b`.
    fn noise_maps(&self, noise: Noise, b: usize) -> Result<Vec<Option<Tensor>>> {
        let n = self.cfg.num_layers();
        match noise {
            Noise::Stored => Ok(self.noises.iter().cloned().map(Some).collect()),
            Noise::Zero => Ok(vec![None; n]),
            Noise::Seeded(seed) => {
                let mut drawn = self.seeded_noise.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(maps) = drawn.get(&(seed, b)) {
                    return Ok(maps.clone());
                }
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let maps = (0..n)
                    .map(|i| {
                        let s = self.cfg.noise_size(i);
                        let data: Vec<f32> = (0..b * s * s).map(|_| StandardNormal.sample(&mut rng)).collect();
                        Ok(Some(Tensor::from_vec(data, (b, 1, s, s), &self.device)?))
                    })
                    .collect::<Result<Vec<_>>>()?;
                if drawn.len() >= SEEDED_NOISE_LIMIT {
                    drawn.clear();
                }
                drawn.insert((seed, b), maps.clone());
                Ok(maps)
            }
        }
    }

    /// The full generator from z `[B, D]`: mapping, optional truncation
    /// `(psi, latent_avg)`, synthesis.
    pub fn forward_z(&self, z: &Tensor, truncation: Option<(f64, &Tensor)>, noise: Noise) -> Result<Tensor> {
        let mut w = self.mapping(z)?;
        if let Some((psi, avg)) = truncation {
            w = truncate(&w, avg, psi)?;
        }
        Ok(self.synthesis(&w, noise, false)?.image)
    }

    /// w `[1, D]` for a seed: [`z_from_seed`], mapping, then truncation
    /// towards `latent_avg` when given.
    pub fn w_from_seed(&self, seed: u64, truncation: Option<(f64, &Tensor)>) -> Result<Tensor> {
        self.w_from_seed_with(seed, SeedRng::Chacha, truncation)
    }

    /// [`Generator::w_from_seed`] with z drawn by `rng` (see [`z_for_seed`]).
    pub fn w_from_seed_with(&self, seed: u64, rng: SeedRng, truncation: Option<(f64, &Tensor)>) -> Result<Tensor> {
        let w = self.mapping(&z_for_seed(seed, rng, self.z_dim, &self.device)?)?;
        match truncation {
            Some((psi, avg)) => truncate(&w, avg, psi),
            None => Ok(w),
        }
    }
}

impl Module for Generator {
    /// W `[B, D]` or W+ `[B, n_latent, D]` to the image, with the stored noise.
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.synthesis(xs, Noise::Stored, false).map(|o| o.image).map_err(|e| match e {
            Error::Candle(e) => e,
            e => candle_core::Error::Msg(e.to_string()),
        })
    }
}

/// Truncation: `latent_avg + psi * (w - latent_avg)` for W `[B, D]` or W+
/// `[B, L, D]`, with `latent_avg` `[D]`.
pub fn truncate(w: &Tensor, latent_avg: &Tensor, psi: f64) -> Result<Tensor> {
    let avg = latent_avg.flatten_all()?;
    Ok(w.broadcast_sub(&avg)?.affine(psi, 0.0)?.broadcast_add(&avg)?)
}

/// z `[1, style_dim]` for `seed` drawn by `rng`: [`z_from_seed`] (ChaCha8),
/// or NumPy's `RandomState(seed).randn(style_dim)` rounded to f32, as
/// NumPy-based StyleGAN code draws it (CLIPLSD, LELSD).
pub fn z_for_seed(seed: u64, rng: SeedRng, style_dim: usize, device: &Device) -> Result<Tensor> {
    match rng {
        SeedRng::Chacha => z_from_seed(seed, style_dim, device),
        SeedRng::Numpy => {
            let data: Vec<f32> = crate::numpy_rng::randn(seed, style_dim)?.into_iter().map(|v| v as f32).collect();
            Ok(Tensor::from_vec(data, (1, style_dim), device)?)
        }
    }
}

/// A standard-normal z `[1, style_dim]` drawn from a ChaCha8 stream seeded
/// with `seed` (the same on every platform, like `demo::SeededWeights`).
pub fn z_from_seed(seed: u64, style_dim: usize, device: &Device) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let data: Vec<f32> = (0..style_dim).map(|_| StandardNormal.sample(&mut rng)).collect();
    Ok(Tensor::from_vec(data, (1, style_dim), device)?)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/stylegan2");

    #[test]
    fn fixture_matches_reference() -> Result<()> {
        let report = check_fixture(Path::new(FIXTURE), &Device::Cpu)?;
        println!("{}", report.table());
        assert!(report.missing.is_empty(), "missing: {:?}", report.missing);
        assert!(report.cases.len() >= 66, "too few cases ran");
        // Both checkpoints run every case: the torch zip and the legacy,
        // transposed-view copy written the way convert_weight.py writes.
        assert!(report.cases.len() >= 132, "the converted-layout checkpoint did not run:\n{}", report.table());
        let failed: Vec<_> = report.failures().collect();
        assert!(failed.is_empty(), "failed cases:\n{}", report.table());
        Ok(())
    }

    /// A tiny generator in f64 with seeded weights.
    fn tiny_f64() -> Result<Generator> {
        let cfg = Config {
            size: 8,
            style_dim: 8,
            n_mlp: 2,
            lr_mlp: 0.01,
            blur_kernel: vec![1.0, 3.0, 3.0, 1.0],
            channels: vec![6, 4],
        };
        let w = demo::demo_weights(&cfg, 3)?;
        let vb = VarBuilder::from_tensors(w.tensors().clone(), DType::F64, &Device::Cpu);
        Generator::new(&cfg, vb)
    }

    #[test]
    fn wplus_gradient_matches_finite_differences() -> Result<()> {
        let gen = tiny_f64()?;
        let dev = Device::Cpu;
        let n = gen.config().n_latent() * gen.config().style_dim;
        let mut draw = crate::demo::SeededWeights::new(9);
        draw.normal("latent", &[1, gen.config().n_latent(), 8], 0.0, 1.0)?;
        draw.normal("r", &[1, 3, 8, 8], 0.0, 1.0)?;
        let latent = draw.tensors()["latent"].to_dtype(DType::F64)?;
        let r = draw.tensors()["r"].to_dtype(DType::F64)?;
        let loss_of =
            |l: &Tensor| -> Result<Tensor> { Ok((gen.synthesis(l, Noise::Stored, false)?.image * &r)?.sum_all()?) };
        let var = Var::from_tensor(&latent)?;
        let grads = loss_of(var.as_tensor())?.backward()?;
        let analytic = grads.get(var.as_tensor()).expect("W+ is on the loss path").flatten_all()?.to_vec1::<f64>()?;
        let base = latent.flatten_all()?.to_vec1::<f64>()?;
        let eps = 1e-5;
        for i in 0..n {
            let at = |delta: f64| -> Result<f64> {
                let mut v = base.clone();
                v[i] += delta;
                loss_of(&Tensor::from_vec(v, latent.shape(), &dev)?)?.to_scalar::<f64>().map_err(Into::into)
            };
            let numeric = (at(eps)? - at(-eps)?) / (2.0 * eps);
            let err = (numeric - analytic[i]).abs();
            assert!(err <= 1e-6 * (1.0 + numeric.abs()), "coordinate {i}: numeric {numeric}, analytic {}", analytic[i]);
        }
        Ok(())
    }

    #[test]
    fn ffhq_1024_layout_is_accepted() -> Result<()> {
        let path = Path::new(FIXTURE).join("ffhq-1024-config-f.keys.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io("reading", &path, e))?;
        let json: serde_json::Value = serde_json::from_str(&text).expect("valid json");
        let keys = json["keys"].as_array().expect("a key list");
        let zero = Tensor::zeros(1, DType::F32, &Device::Cpu)?;
        let mut tensors = HashMap::new();
        let mut listed = Vec::new();
        for k in keys {
            let name = k["name"].as_str().expect("a name").to_string();
            let shape: Vec<usize> =
                k["shape"].as_array().expect("a shape").iter().map(|v| v.as_u64().expect("a dim") as usize).collect();
            // Zeros broadcast from one element: no 130 MB allocation.
            let t = zero.reshape(vec![1; shape.len()])?.broadcast_as(shape.as_slice())?;
            tensors.insert(format!("g_ema.{name}"), t);
            listed.push((name, shape));
        }
        tensors.insert("latent_avg".into(), Tensor::zeros(512, DType::F32, &Device::Cpu)?);
        let cfg = Config::from_tensors(&tensors, "g_ema")?;
        assert_eq!(cfg, Config::ffhq_1024());
        assert_eq!(cfg.size, 1024);
        assert_eq!(cfg.n_latent(), 18);
        assert_eq!(cfg.channels, vec![512, 512, 512, 512, 512, 256, 128, 64, 32]);
        // The layout this code expects is exactly the real one, in order.
        assert_eq!(cfg.state_dict_shapes(), listed);
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let gen = Generator::new(&cfg, vb.pp("g_ema"))?;
        assert_eq!(gen.config().num_layers(), 17);
        Ok(())
    }

    #[test]
    fn seeded_noise_is_drawn_once_and_equals_a_fresh_draw() -> Result<()> {
        let dev = Device::Cpu;
        let (gen, _) = demo(1, &dev)?;
        let w = gen.broadcast_latent(&gen.w_from_seed(3, None)?)?;
        let first = gen.synthesis(&w, Noise::Seeded(5), false)?.image.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(gen.seeded_noise.lock().unwrap().len(), 1);
        let again = gen.synthesis(&w, Noise::Seeded(5), false)?.image.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(gen.seeded_noise.lock().unwrap().len(), 1, "the second pass reuses the draw");
        let (fresh_gen, _) = demo(1, &dev)?;
        let fresh = fresh_gen.synthesis(&w, Noise::Seeded(5), false)?.image.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(first, again);
        assert_eq!(first, fresh);
        let other = gen.synthesis(&w, Noise::Seeded(6), false)?.image.flatten_all()?.to_vec1::<f32>()?;
        assert_ne!(first, other, "another seed draws other noise");
        Ok(())
    }

    /// An image rendered in a batch is bit for bit the image rendered alone
    /// (the engine caches originals per seed, whatever batch drew them).
    #[test]
    fn batched_images_equal_images_rendered_alone() -> Result<()> {
        let dev = Device::Cpu;
        let (gen, _) = demo(1, &dev)?;
        let ws = [3u64, 8, 21]
            .iter()
            .map(|&s| gen.broadcast_latent(&gen.w_from_seed(s, None)?))
            .collect::<Result<Vec<_>>>()?;
        let batch = Tensor::cat(&ws, 0)?;
        let bits = |t: &Tensor| -> Result<Vec<u32>> {
            Ok(t.flatten_all()?.to_vec1::<f32>()?.into_iter().map(f32::to_bits).collect())
        };
        for noise in [Noise::Stored, Noise::Zero] {
            let all = gen.synthesis(&batch, noise, true)?;
            for (i, w) in ws.iter().enumerate() {
                let alone = gen.synthesis(w, noise, true)?;
                assert_eq!(bits(&all.image.narrow(0, i, 1)?)?, bits(&alone.image)?, "image {i}, {noise:?}");
                for (j, (f, g)) in all.features.iter().zip(&alone.features).enumerate() {
                    assert_eq!(bits(&f.narrow(0, i, 1)?)?, bits(g)?, "feature map {j} of image {i}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn demo_is_deterministic() -> Result<()> {
        let dev = Device::Cpu;
        let render = |seed| -> Result<(Vec<f32>, Vec<f32>)> {
            let (gen, avg) = demo(seed, &dev)?;
            let w = gen.w_from_seed(11, Some((0.7, &avg)))?;
            let image = gen.synthesis(&w, Noise::Seeded(5), false)?.image;
            Ok((image.flatten_all()?.to_vec1()?, avg.to_vec1()?))
        };
        let (a, avg_a) = render(1)?;
        let (b, avg_b) = render(1)?;
        let (c, _) = render(2)?;
        assert_eq!(a, b);
        assert_eq!(avg_a, avg_b);
        assert_ne!(a, c);
        let max = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(max > 0.2 && max < 2.0, "demo image range {max}");
        assert_eq!(z_from_seed(4, 32, &dev)?.to_vec2::<f32>()?, z_from_seed(4, 32, &dev)?.to_vec2::<f32>()?);
        Ok(())
    }

    #[test]
    fn skip_upsample_matches_closed_form() -> Result<()> {
        // README: out[2i] = 0.25 x[i-1] + 0.75 x[i], out[2i+1] = 0.75 x[i] + 0.25 x[i+1].
        let x = [1f32, -2.0, 3.0];
        let fir = crate::ops::Fir::new(&[1.0, 3.0, 3.0, 1.0], 4.0, 2, (2, 1), &Device::Cpu)?;
        let xs = Tensor::from_vec(x.to_vec(), (1, 1, 1, 3), &Device::Cpu)?.broadcast_as((1, 1, 3, 3))?.contiguous()?;
        let ys = fir.forward(&xs)?;
        assert_eq!(ys.dims(), &[1, 1, 6, 6]);
        let at = |i: isize| if (0..3).contains(&i) { x[i as usize] } else { 0.0 };
        // Rows are constant in x, so row 2 (interior) = 0.25·1·x + 0.75·1·x along the width.
        let row = ys.get(0)?.get(0)?.get(2)?.to_vec1::<f32>()?;
        for i in 0..3isize {
            let even = 0.25 * at(i - 1) + 0.75 * at(i);
            let odd = 0.75 * at(i) + 0.25 * at(i + 1);
            assert!((row[2 * i as usize] - even).abs() < 1e-6);
            assert!((row[2 * i as usize + 1] - odd).abs() < 1e-6);
        }
        Ok(())
    }
}

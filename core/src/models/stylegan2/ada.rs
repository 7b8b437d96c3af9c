//! NVIDIA's StyleGAN2-ADA generator (`G_ema` of the official PyTorch
//! snapshots: `ffhq.pkl`, MetFaces, AFHQ, BreCaHAD, and every network
//! trained with `stylegan2-ada-pytorch` or StyleGAN3's StyleGAN2 config),
//! run by the same layers and ops as rosinality's layout.
//!
//! The two are the same config-f generator written differently; what
//! differs, and is kept explicit here:
//! - names: `mapping.fc{i}`, `mapping.w_avg` (the truncation centre),
//!   `synthesis.b{res}.{const, conv0, conv1, torgb}`, each layer with its own
//!   `affine`, `noise_strength` and `noise_const`;
//! - the gains: every `FullyConnectedLayer` stores its `weight_gain` and
//!   `bias_gain` (the mapping's learning-rate multiplier 0.01 folded in), read
//!   from the file; a `SynthesisLayer` convolves with its raw weight (the
//!   demodulation normalises it), a `ToRGBLayer` scales its style by
//!   `1/sqrt(in·k·k)`, which is folded into its weight here;
//! - the clamp: after every layer's bias and leaky ReLU·√2, outputs are
//!   clamped to `±conv_clamp` (the layer gain is 1 in the `skip`
//!   architecture), and each ToRGB output to `±conv_clamp` before the skip
//!   sum;
//! - the noise: `noise_const · noise_strength` for the stored noise
//!   (`noise_mode='const'`), fresh maps times `noise_strength` otherwise;
//! - float32 throughout (upstream runs the top `num_fp16_res` blocks in
//!   float16 on GPUs, an optimisation).
//!
//! Reference: NVlabs/stylegan2-ada-pytorch `training/networks.py`
//! (`MappingNetwork`, `SynthesisLayer`, `ToRGBLayer`, `SynthesisBlock`,
//! `SynthesisNetwork`, `Generator`)
//! <https://github.com/NVlabs/stylegan2-ada-pytorch/blob/main/training/networks.py>.
//!
//! A converted file ([`convert`]) holds `G_ema`'s `state_dict()` under its
//! own names (`mapping.fc0.weight`, `synthesis.b4.const`, …) and this
//! configuration as JSON in the safetensors metadata key [`CONFIG_KEY`],
//! with `layout` = [`LAYOUT`].

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::layers::{EqualLinear, ModulatedConv2d, StyledConv, ToRgb};
use super::{Config, Generator};
use crate::ops::fused::Epilogue;
use crate::torch::{Attr, Network};
use crate::{Error, Result};

/// The `layout` metadata value of a converted StyleGAN2-ADA generator.
pub const LAYOUT: &str = "stylegan2-ada";
/// The metadata key holding the [`AdaConfig`] as JSON.
pub const CONFIG_KEY: &str = "stylegan2_ada_config";
/// The network a snapshot's generator is read from.
pub const NETWORK: &str = "G_ema";
/// The resampling filter taps of every StyleGAN2 network (`[1, 3, 3, 1]`).
const FILTER: [f64; 4] = [1.0, 3.0, 3.0, 1.0];

/// The configuration of a StyleGAN2-ADA `Generator`, read from the pickle
/// (attributes) and its tensors (shapes).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdaConfig {
    /// Dimension of z.
    pub z_dim: usize,
    /// Dimension of w.
    pub w_dim: usize,
    /// Output resolution.
    pub img_resolution: usize,
    /// Output channels (3).
    pub img_channels: usize,
    /// Layers of the mapping network.
    pub mapping_layers: usize,
    /// The mapping's learning-rate multiplier (its layers' `bias_gain`;
    /// `weight_gain` is this over `sqrt(fan_in)`).
    pub mapping_lr_multiplier: f64,
    /// Feature channels per block, at 4, 8, …, `img_resolution`.
    pub channels: Vec<usize>,
    /// The clamp of every layer's output, `None` for none.
    pub conv_clamp: Option<f64>,
    /// Number of w slots (`2·log2(img_resolution) - 2`).
    pub num_ws: usize,
}

impl AdaConfig {
    /// The block resolutions 4, 8, …, `img_resolution`.
    pub fn resolutions(&self) -> Vec<usize> {
        (0..self.channels.len()).map(|i| 4 << i).collect()
    }

    /// Infers the sizes from the shapes of a `G_ema` state dict (z and w
    /// dims, mapping depth, resolution, channels); `conv_clamp` and the
    /// mapping's learning-rate multiplier are not in the shapes and are
    /// given.
    pub fn from_shapes(
        shapes: &HashMap<String, Vec<usize>>,
        conv_clamp: Option<f64>,
        mapping_lr_multiplier: f64,
    ) -> Result<Self> {
        let get = |name: &str| {
            shapes.get(name).ok_or_else(|| Error::MissingTensor {
                name: name.to_string(),
                hint: "; is this the G_ema of a StyleGAN2-ADA network pickle?".into(),
            })
        };
        let dims = |name: &str, rank: usize, what: &str| -> Result<Vec<usize>> {
            let d = get(name)?;
            if d.len() != rank {
                return Err(Error::BadShape { name: name.into(), expected: what.into(), got: d.clone() });
            }
            Ok(d.clone())
        };
        if shapes.contains_key("mapping.embed.weight") {
            return Err(Error::Config(
                "a conditional network (c_dim > 0, 'mapping.embed'): recipes give no class label; \
                 use an unconditional snapshot"
                    .into(),
            ));
        }
        let fc0 = dims("mapping.fc0.weight", 2, "[w_dim, z_dim]")?;
        let z_dim = fc0[1];
        let w_dim = dims("mapping.w_avg", 1, "[w_dim]")?[0];
        let mapping_layers = (0..).take_while(|i| shapes.contains_key(&format!("mapping.fc{i}.weight"))).count();
        let mut channels = vec![dims("synthesis.b4.const", 3, "[C, 4, 4]")?[0]];
        while shapes.contains_key(&format!("synthesis.b{}.conv1.weight", 8 << (channels.len() - 1))) {
            let res = 4 << channels.len();
            channels.push(dims(&format!("synthesis.b{res}.conv1.weight"), 4, "[out, in, 3, 3]")?[0]);
        }
        let img_resolution = 4 << (channels.len() - 1);
        let rgb = format!("synthesis.b{img_resolution}.torgb.weight");
        let img_channels = dims(&rgb, 4, "[img_channels, C, 1, 1]")?[0];
        let cfg = Self {
            z_dim,
            w_dim,
            img_resolution,
            img_channels,
            mapping_layers,
            mapping_lr_multiplier,
            channels,
            conv_clamp,
            num_ws: 2 * img_resolution.ilog2() as usize - 2,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads the configuration of `G_ema` from its record (the attributes
    /// the pickle stores) and tensor shapes, checking that the two agree
    /// and that the network is one this generator runs (unconditional,
    /// `skip` architecture, leaky-ReLU layers with the `[1, 3, 3, 1]` filter,
    /// one `conv_clamp`, noise inputs).
    pub fn from_network(net: &Network, tensors: &HashMap<String, Tensor>) -> Result<Self> {
        let bad = |what: String| Error::Config(format!("unsupported StyleGAN2-ADA network: {what}"));
        expect_class(net, "G_ema", "Generator")?;
        let mapping = child(net, "G_ema", "mapping", "MappingNetwork")?;
        let synthesis = child(net, "G_ema", "synthesis", "SynthesisNetwork")?;
        // The mapping's learning rate, from its first layer's stored gains.
        let fc0 = child(mapping, "G_ema.mapping", "fc0", "FullyConnectedLayer")?;
        let lr = number(fc0, "G_ema.mapping.fc0", "bias_gain")?;
        let conv_clamp = clamp_of(synthesis.get("b4.conv1").ok_or_else(|| bad("no 'synthesis.b4.conv1'".into()))?)?;
        let shapes: HashMap<String, Vec<usize>> = tensors.iter().map(|(k, t)| (k.clone(), t.dims().to_vec())).collect();
        let cfg = Self::from_shapes(&shapes, conv_clamp, lr)?;

        // The stored attributes must say what the shapes say.
        for (owner, path, name, want) in [
            (net, "G_ema", "z_dim", cfg.z_dim),
            (net, "G_ema", "w_dim", cfg.w_dim),
            (net, "G_ema", "img_resolution", cfg.img_resolution),
            (net, "G_ema", "img_channels", cfg.img_channels),
            (net, "G_ema", "num_ws", cfg.num_ws),
            (net, "G_ema", "c_dim", 0),
            (mapping, "G_ema.mapping", "num_layers", cfg.mapping_layers),
            (synthesis, "G_ema.synthesis", "num_ws", cfg.num_ws),
        ] {
            let got = number(owner, path, name)?;
            if got != want as f64 {
                return Err(bad(format!("{path}.{name} is {got}, but the tensors give {want}")));
            }
        }
        if cfg.img_channels != 3 {
            return Err(bad(format!("{} image channels; only RGB generators are supported", cfg.img_channels)));
        }
        for i in 0..cfg.mapping_layers {
            let path = format!("G_ema.mapping.fc{i}");
            let fc = child(mapping, "G_ema.mapping", &format!("fc{i}"), "FullyConnectedLayer")?;
            let fan_in = if i == 0 { cfg.z_dim } else { cfg.w_dim };
            check_linear(fc, &path, "lrelu", lr, fan_in)?;
        }
        for (b, res) in cfg.resolutions().into_iter().enumerate() {
            let bpath = format!("G_ema.synthesis.b{res}");
            let block = child(synthesis, "G_ema.synthesis", &format!("b{res}"), "SynthesisBlock")?;
            match block.attr("architecture") {
                Some(Attr::Str(a)) if a == "skip" => {}
                other => return Err(bad(format!("{bpath}.architecture is {other:?}; only 'skip' is supported"))),
            }
            let mut layers = vec![("conv1", "SynthesisLayer", 1.0)];
            if b > 0 {
                layers.insert(0, ("conv0", "SynthesisLayer", 2.0));
            }
            for (name, class, up) in layers {
                let path = format!("{bpath}.{name}");
                let layer = child(block, &bpath, name, class)?;
                match layer.attr("activation") {
                    Some(Attr::Str(a)) if a == "lrelu" => {}
                    other => return Err(bad(format!("{path}.activation is {other:?}, not 'lrelu'"))),
                }
                if number(layer, &path, "up")? != up {
                    return Err(bad(format!("{path}.up is not {up}")));
                }
                if (number(layer, &path, "act_gain")? - std::f64::consts::SQRT_2).abs() > 1e-6 {
                    return Err(bad(format!("{path}.act_gain is not sqrt(2)")));
                }
                if layer.attr("use_noise") != Some(&Attr::Bool(true)) {
                    return Err(bad(format!("{path} has no noise input (use_noise is not True)")));
                }
                if clamp_of(layer)? != cfg.conv_clamp {
                    return Err(bad(format!("{path}.conv_clamp differs from the first layer's")));
                }
                let affine = child(layer, &path, "affine", "FullyConnectedLayer")?;
                check_linear(affine, &format!("{path}.affine"), "linear", 1.0, cfg.w_dim)?;
            }
            let path = format!("{bpath}.torgb");
            let torgb = child(block, &bpath, "torgb", "ToRGBLayer")?;
            if clamp_of(torgb)? != cfg.conv_clamp {
                return Err(bad(format!("{path}.conv_clamp differs from the first layer's")));
            }
            let gain = number(torgb, &path, "weight_gain")?;
            if !close(gain, 1.0 / (cfg.channels[b] as f64).sqrt()) {
                return Err(bad(format!("{path}.weight_gain is {gain}, not 1/sqrt({})", cfg.channels[b])));
            }
            let affine = child(torgb, &path, "affine", "FullyConnectedLayer")?;
            check_linear(affine, &format!("{path}.affine"), "linear", 1.0, cfg.w_dim)?;
        }
        // Every resampling filter is the standard one.
        let standard = crate::ops::Fir::kernel_2d(&FILTER, 1.0);
        for (name, t) in tensors {
            if name.ends_with("resample_filter") {
                #[allow(clippy::disallowed_methods, reason = "checks the snapshot once, when it is loaded")]
                let got = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
                if got.len() != standard.len() || got.iter().zip(&standard).any(|(a, b)| (a - b).abs() > 1e-6) {
                    return Err(bad(format!("{name} is not the [1, 3, 3, 1] filter")));
                }
            }
        }
        Ok(cfg)
    }

    /// Checks that the values describe a buildable generator.
    pub fn validate(&self) -> Result<()> {
        let res = self.img_resolution;
        if res < 4 || !res.is_power_of_two() || self.channels.len() != res.ilog2() as usize - 1 {
            return Err(Error::Config(format!(
                "resolution {res} with {} blocks: blocks must run from 4 to a power-of-two resolution",
                self.channels.len()
            )));
        }
        if self.z_dim == 0 || self.w_dim == 0 || self.mapping_layers == 0 || self.channels.contains(&0) {
            return Err(Error::Config(
                "z_dim, w_dim, the mapping depth and every channel count must be positive".into(),
            ));
        }
        if self.num_ws != 2 * res.ilog2() as usize - 2 {
            return Err(Error::Config(format!("num_ws {} for resolution {res}", self.num_ws)));
        }
        if !(self.mapping_lr_multiplier.is_finite() && self.mapping_lr_multiplier > 0.0) {
            return Err(Error::Config(format!("mapping learning-rate multiplier {}", self.mapping_lr_multiplier)));
        }
        if let Some(c) = self.conv_clamp {
            if !(c.is_finite() && c > 0.0) {
                return Err(Error::Config(format!("conv_clamp {c} must be positive")));
            }
        }
        Ok(())
    }

    /// The geometry in the terms of rosinality's [`Config`] (`style_dim` is
    /// w's dimension), which the shared generator code runs on.
    pub fn geometry(&self) -> Config {
        Config {
            size: self.img_resolution,
            style_dim: self.w_dim,
            n_mlp: self.mapping_layers,
            lr_mlp: self.mapping_lr_multiplier,
            blur_kernel: FILTER.to_vec(),
            channels: self.channels.clone(),
        }
    }

    /// Every tensor of `G_ema.state_dict()` for this configuration, with
    /// its shape, in `state_dict()` order.
    pub fn state_dict_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (w, k) = (self.w_dim, FILTER.len());
        let mut out: Vec<(String, Vec<usize>)> = Vec::new();
        let layer = |out: &mut Vec<(String, Vec<usize>)>, name: &str, o: usize, i: usize, res: usize| {
            out.push((format!("{name}.weight"), vec![o, i, 3, 3]));
            out.push((format!("{name}.noise_strength"), vec![]));
            out.push((format!("{name}.bias"), vec![o]));
            out.push((format!("{name}.resample_filter"), vec![k, k]));
            out.push((format!("{name}.noise_const"), vec![res, res]));
            out.push((format!("{name}.affine.weight"), vec![i, w]));
            out.push((format!("{name}.affine.bias"), vec![i]));
        };
        for (b, res) in self.resolutions().into_iter().enumerate() {
            let (c, name) = (self.channels[b], format!("synthesis.b{res}"));
            if b == 0 {
                out.push((format!("{name}.const"), vec![c, 4, 4]));
            }
            out.push((format!("{name}.resample_filter"), vec![k, k]));
            if b > 0 {
                layer(&mut out, &format!("{name}.conv0"), c, self.channels[b - 1], res);
            }
            layer(&mut out, &format!("{name}.conv1"), c, c, res);
            out.push((format!("{name}.torgb.weight"), vec![self.img_channels, c, 1, 1]));
            out.push((format!("{name}.torgb.bias"), vec![self.img_channels]));
            out.push((format!("{name}.torgb.affine.weight"), vec![c, w]));
            out.push((format!("{name}.torgb.affine.bias"), vec![c]));
        }
        out.push(("mapping.w_avg".into(), vec![w]));
        for i in 0..self.mapping_layers {
            out.push((format!("mapping.fc{i}.weight"), vec![w, if i == 0 { self.z_dim } else { w }]));
            out.push((format!("mapping.fc{i}.bias"), vec![w]));
        }
        out
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * b.abs().max(1e-12)
}

fn expect_class(net: &Network, path: &str, class: &str) -> Result<()> {
    // The file may name the class bare or qualified (`training.networks.X`).
    if net.class_name.rsplit('.').next() != Some(class) {
        return Err(Error::Config(format!(
            "'{path}' is a pickled '{}', expected a StyleGAN2-ADA {class}",
            net.class_name
        )));
    }
    Ok(())
}

fn child<'a>(net: &'a Network, path: &str, name: &str, class: &str) -> Result<&'a Network> {
    let c = net
        .get(name)
        .ok_or_else(|| Error::Config(format!("the pickled network '{path}' has no sub-module '{name}'")))?;
    expect_class(c, &format!("{path}.{name}"), class)?;
    Ok(c)
}

fn number(net: &Network, path: &str, name: &str) -> Result<f64> {
    net.attr(name)
        .and_then(Attr::as_f64)
        .ok_or_else(|| Error::Config(format!("the pickled network '{path}' has no numeric attribute '{name}'")))
}

/// A layer's `conv_clamp` (`None`: no clamp).
fn clamp_of(layer: &Network) -> Result<Option<f64>> {
    match layer.attr("conv_clamp") {
        Some(Attr::None) => Ok(None),
        Some(a) => a.as_f64().map(Some).ok_or_else(|| Error::Config("conv_clamp is not a number".into())),
        None => Err(Error::Config("a synthesis layer without a conv_clamp attribute".into())),
    }
}

/// Checks a `FullyConnectedLayer`'s activation and stored gains.
fn check_linear(fc: &Network, path: &str, activation: &str, lr: f64, fan_in: usize) -> Result<()> {
    let bad = |what: String| Error::Config(format!("unsupported StyleGAN2-ADA network: {path}: {what}"));
    match fc.attr("activation") {
        Some(Attr::Str(a)) if a == activation => {}
        other => return Err(bad(format!("activation {other:?}, expected '{activation}'"))),
    }
    let (wg, bg) = (number(fc, path, "weight_gain")?, number(fc, path, "bias_gain")?);
    if !close(bg, lr) || !close(wg, lr / (fan_in as f64).sqrt()) {
        return Err(bad(format!("gains ({wg}, {bg}) are not ({lr}/sqrt({fan_in}), {lr})")));
    }
    Ok(())
}

/// Builds the generator from a `VarBuilder` over `G_ema`'s state dict
/// (names as `state_dict()` gives them).
pub fn build(cfg: &AdaConfig, vb: VarBuilder) -> Result<Generator> {
    cfg.validate()?;
    let (w, lr) = (cfg.w_dim, cfg.mapping_lr_multiplier);
    let mapping = (0..cfg.mapping_layers)
        .map(|i| {
            let fan_in = if i == 0 { cfg.z_dim } else { w };
            let vb = vb.pp(format!("mapping.fc{i}"));
            EqualLinear::with_gains(
                vb.get((w, fan_in), "weight")?,
                vb.get(w, "bias")?,
                lr / (fan_in as f64).sqrt(),
                lr,
                true,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    // An affine layer: FullyConnectedLayer(w_dim, in_channels), gains
    // (1/sqrt(w_dim), 1).
    let affine = |vb: VarBuilder, out: usize| -> Result<EqualLinear> {
        EqualLinear::with_gains(vb.get((out, w), "weight")?, vb.get(out, "bias")?, 1.0 / (w as f64).sqrt(), 1.0, false)
    };
    let layer = |vb: VarBuilder, o: usize, i: usize, up: bool, res: usize| -> Result<(StyledConv, Tensor)> {
        let conv = ModulatedConv2d::from_weight(
            vb.get((o, i, 3, 3), "weight")?,
            affine(vb.pp("affine"), i)?,
            true,
            up,
            &FILTER,
        )?;
        let epilogue =
            Epilogue::new(vb.get(o, "bias")?, vb.get((), "noise_strength")?.reshape(1)?)?.with_clamp(cfg.conv_clamp);
        let noise = vb.get((res, res), "noise_const")?.reshape((1, 1, res, res))?;
        Ok((StyledConv::from_parts(conv, epilogue), noise))
    };
    let torgb = |vb: VarBuilder, c: usize, up: bool| -> Result<ToRgb> {
        let gain = 1.0 / (c as f64).sqrt();
        let weight = (vb.get((cfg.img_channels, c, 1, 1), "weight")? * gain)?;
        let conv = ModulatedConv2d::from_weight(weight, affine(vb.pp("affine"), c)?, false, false, &FILTER)?;
        ToRgb::from_parts(conv, vb.get(cfg.img_channels, "bias")?, up, &FILTER, cfg.conv_clamp)
    };
    let s = vb.pp("synthesis");
    let c4 = cfg.channels[0];
    let input = s.get((c4, 4, 4), "b4.const")?.reshape((1, c4, 4, 4))?;
    let (conv1, noise0) = layer(s.pp("b4.conv1"), c4, c4, false, 4)?;
    let to_rgb1 = torgb(s.pp("b4.torgb"), c4, false)?;
    let mut noises = vec![noise0];
    let (mut convs, mut to_rgbs) = (Vec::new(), Vec::new());
    for (b, res) in cfg.resolutions().into_iter().enumerate().skip(1) {
        let (i, o) = (cfg.channels[b - 1], cfg.channels[b]);
        let block = s.pp(format!("b{res}"));
        for (name, inc, up) in [("conv0", i, true), ("conv1", o, false)] {
            let (conv, noise) = layer(block.pp(name), o, inc, up, res)?;
            convs.push(conv);
            noises.push(noise);
        }
        to_rgbs.push(torgb(block.pp("torgb"), o, true)?);
    }
    let parts = super::Parts { mapping, input, conv1, to_rgb1, convs, to_rgbs, noises };
    Generator::from_parts(&cfg.geometry(), cfg.z_dim, parts, vb.device())
}

/// Loads `G_ema` of a StyleGAN2-ADA network pickle: the generator and
/// `mapping.w_avg`. Nothing in the pickle is executed; `G`, `D` and
/// `augment_pipe` are read as data and dropped.
pub fn load_pickle(path: &Path, device: &Device) -> Result<(Generator, Tensor, AdaConfig)> {
    let (net, tensors) = crate::torch::load_network(path, NETWORK)?;
    let cfg = AdaConfig::from_network(&net, &tensors).map_err(|e| in_file(path, e))?;
    let (gen, avg) = from_tensors(&cfg, tensors, device).map_err(|e| in_file(path, e))?;
    Ok((gen, avg, cfg))
}

/// Attaches the file to a configuration error.
fn in_file(path: &Path, e: Error) -> Error {
    match e {
        Error::Config(reason) => Error::Checkpoint { path: path.to_path_buf(), reason },
        e => e,
    }
}

/// The generator and `w_avg` of `G_ema`'s state dict.
fn from_tensors(cfg: &AdaConfig, tensors: HashMap<String, Tensor>, device: &Device) -> Result<(Generator, Tensor)> {
    let avg = tensors
        .get("mapping.w_avg")
        .ok_or_else(|| Error::MissingTensor { name: "mapping.w_avg".into(), hint: String::new() })?
        .to_dtype(DType::F32)?
        .to_device(device)?;
    let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
    Ok((build(cfg, vb)?, avg))
}

/// The [`AdaConfig`] of a safetensors file converted by [`convert`], or
/// `None` when the file is not one.
pub fn converted_config(path: &Path) -> Result<Option<AdaConfig>> {
    let meta = crate::torch::safetensors_metadata(path)?;
    if meta.get("layout").map(String::as_str) != Some(LAYOUT) {
        return Ok(None);
    }
    let text = meta.get(CONFIG_KEY).ok_or_else(|| Error::Checkpoint {
        path: path.to_path_buf(),
        reason: format!("a '{LAYOUT}' file without its '{CONFIG_KEY}' metadata"),
    })?;
    let cfg: AdaConfig = serde_json::from_str(text).map_err(|e| Error::Checkpoint {
        path: path.to_path_buf(),
        reason: format!("the '{CONFIG_KEY}' metadata is not a valid configuration: {e}"),
    })?;
    cfg.validate().map_err(|e| in_file(path, e))?;
    Ok(Some(cfg))
}

/// Loads a converted file with its configuration (see [`converted_config`]).
pub fn load_converted(path: &Path, cfg: &AdaConfig, device: &Device) -> Result<(Generator, Tensor)> {
    let tensors = crate::torch::load(path)?;
    from_tensors(cfg, tensors, device).map_err(|e| in_file(path, e))
}

/// What [`convert`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvertSummary {
    /// Tensors written (`G_ema`'s state dict).
    pub tensors: usize,
    /// Size of the written file in bytes.
    pub bytes: u64,
    /// SHA-256 of the pickle, hex.
    pub source_sha256: String,
    /// The configuration stored with the tensors.
    pub config: AdaConfig,
}

/// Writes `G_ema` of the network pickle `input` to the safetensors file
/// `output` (atomically): its state dict under its own names, float32,
/// with metadata `format` = `pt`, `layout` = [`LAYOUT`], [`CONFIG_KEY`]
/// (the [`AdaConfig`] as JSON), `source_file` and `source_sha256`. The
/// generator is built from the tensors first, so a file that would not
/// load is never written.
pub fn convert(input: &Path, output: &Path) -> Result<ConvertSummary> {
    let (net, tensors) = crate::torch::load_network(input, NETWORK)?;
    let config = AdaConfig::from_network(&net, &tensors).map_err(|e| in_file(input, e))?;
    build(&config, VarBuilder::from_tensors(tensors.clone(), DType::F32, &Device::Cpu))
        .map_err(|e| in_file(input, e))?;
    let order: HashMap<String, usize> =
        config.state_dict_shapes().into_iter().enumerate().map(|(i, (name, _))| (name, i)).collect();
    let mut named: Vec<(String, Tensor)> =
        tensors.into_iter().map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?))).collect::<Result<_>>()?;
    named.sort_by_key(|(k, _)| (order.get(k).copied().unwrap_or(usize::MAX), k.clone()));
    let config_json = serde_json::to_string(&config).map_err(|e| Error::Config(e.to_string()))?;
    let extra = vec![("layout".to_string(), LAYOUT.to_string()), (CONFIG_KEY.to_string(), config_json)];
    let (bytes, source_sha256) = crate::torch::write_converted(input, output, &named, extra)?;
    Ok(ConvertSummary { tensors: named.len(), bytes, source_sha256, config })
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use crate::models::stylegan2::Noise;

    const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/stylegan2-ada");

    /// `(name, shape)` of a `*.keys.json` map under `key`, sorted.
    fn keys(file: &str, key: &str) -> Vec<(String, Vec<usize>)> {
        let path = Path::new(FIXTURE).join(file);
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut out: Vec<(String, Vec<usize>)> = json[key]
            .as_object()
            .expect("a key map")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect()))
            .collect();
        out.sort();
        out
    }

    fn sorted(mut v: Vec<(String, Vec<usize>)>) -> Vec<(String, Vec<usize>)> {
        v.sort();
        v
    }

    #[test]
    fn fixture_config_is_read_from_the_pickle() -> Result<()> {
        let (net, tensors) = crate::torch::load_network(&Path::new(FIXTURE).join("network.pkl"), NETWORK)?;
        let cfg = AdaConfig::from_network(&net, &tensors)?;
        assert_eq!((cfg.z_dim, cfg.w_dim, cfg.img_resolution, cfg.num_ws), (128, 128, 64, 10));
        assert_eq!((cfg.mapping_layers, cfg.conv_clamp), (8, Some(256.0)));
        assert!((cfg.mapping_lr_multiplier - 0.01).abs() < 1e-12);
        assert_eq!(cfg.channels, vec![64, 64, 64, 64, 32]);
        assert_eq!(sorted(cfg.state_dict_shapes()), keys("generator.keys.json", "state_dict_keys_of_G_ema"));
        let (net, tensors) = crate::torch::load_network(&Path::new(FIXTURE).join("network-clamp.pkl"), NETWORK)?;
        assert_eq!(AdaConfig::from_network(&net, &tensors)?.conv_clamp, Some(0.3));
        Ok(())
    }

    /// Without its clamp, the clamp network misses its reference by far:
    /// the fixture's clamp case really tests the clamp.
    #[test]
    fn the_clamp_network_needs_the_clamp() -> Result<()> {
        let dev = Device::Cpu;
        let (net, tensors) = crate::torch::load_network(&Path::new(FIXTURE).join("network-clamp.pkl"), NETWORK)?;
        let cfg = AdaConfig::from_network(&net, &tensors)?;
        let cases = candle_core::safetensors::load(Path::new(FIXTURE).join("cases.safetensors"), &dev)?;
        let expected = &cases["clamp.synthesis.const.image"];
        let err = |cfg: &AdaConfig| -> Result<f64> {
            let (gen, _) = from_tensors(cfg, tensors.clone(), &dev)?;
            let image = gen.synthesis(&cases["clamp.ws"], Noise::Stored, false)?.image;
            Ok((image - expected)?.abs()?.max_all()?.to_scalar::<f32>()? as f64)
        };
        assert!(err(&cfg)? < 1e-3);
        let unclamped = AdaConfig { conv_clamp: None, ..cfg };
        assert!(err(&unclamped)? > 1.0);
        Ok(())
    }

    #[test]
    fn ffhq_1024_layout_is_accepted() -> Result<()> {
        let listed = keys("ffhq-1024.keys.json", "keys");
        let shapes: HashMap<String, Vec<usize>> = listed.iter().cloned().collect();
        // conv_clamp 256 and the mapping's 0.01 are FFHQ's training config.
        let cfg = AdaConfig::from_shapes(&shapes, Some(256.0), 0.01)?;
        assert_eq!((cfg.z_dim, cfg.w_dim, cfg.img_resolution, cfg.num_ws, cfg.mapping_layers), (512, 512, 1024, 18, 8));
        assert_eq!(cfg.channels, vec![512, 512, 512, 512, 512, 256, 128, 64, 32]);
        assert_eq!(sorted(cfg.state_dict_shapes()), listed, "the layout this code builds is exactly the real one");
        // The generator from exactly those names and shapes (zeros
        // broadcast from one element: no 120 MB of weights).
        let zero = Tensor::zeros(1, DType::F32, &Device::Cpu)?;
        let tensors = listed
            .iter()
            .map(|(name, shape)| {
                Ok((name.clone(), zero.reshape(vec![1; shape.len()])?.broadcast_as(shape.as_slice())?))
            })
            .collect::<Result<HashMap<_, _>>>()?;
        let gen = build(&cfg, VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu))?;
        assert_eq!(gen.config().n_latent(), 18);
        assert_eq!(gen.config().num_layers(), 17);
        assert_eq!(gen.z_dim(), 512);
        Ok(())
    }

    #[test]
    fn conversion_keeps_the_configuration_and_refuses_other_files() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("creating", Path::new("tmp"), e))?;
        let out = dir.path().join("g.safetensors");
        let summary = convert(&Path::new(FIXTURE).join("network-clamp.pkl"), &out)?;
        assert_eq!(summary.tensors, keys("generator.keys.json", "state_dict_keys_of_G_ema").len());
        assert_eq!(converted_config(&out)?, Some(summary.config.clone()));
        let meta = crate::torch::safetensors_metadata(&out)?;
        assert_eq!(meta["layout"], LAYOUT);
        assert_eq!(meta["source_sha256"], summary.source_sha256);
        // Loading goes through the one generator loader, both ways.
        let (a, avg_a) = Generator::load(&Path::new(FIXTURE).join("network-clamp.pkl"), &Device::Cpu)?;
        let (b, avg_b) = Generator::load(&out, &Device::Cpu)?;
        let w = a.broadcast_latent(&a.w_from_seed(3, Some((0.7, avg_a.as_ref().unwrap())))?)?;
        let ia = a.synthesis(&w, Noise::Stored, false)?.image.flatten_all()?.to_vec1::<f32>()?;
        let ib = b.synthesis(&w, Noise::Stored, false)?.image.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(ia, ib);
        assert_eq!(avg_a.unwrap().to_vec1::<f32>()?, avg_b.unwrap().to_vec1::<f32>()?);
        // A rosinality checkpoint is not a network pickle.
        let other = Path::new(FIXTURE).join("../stylegan2/generator.pt");
        let e = convert(&other, &dir.path().join("x.safetensors")).unwrap_err().to_string();
        assert!(e.contains("not a network pickle"), "{e}");
        assert!(!dir.path().join("x.safetensors").exists());
        Ok(())
    }
}

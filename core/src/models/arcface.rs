//! ArcFace IR-SE50: the face-recognition backbone behind the identity loss.
//!
//! The identity loss `L_ID = 1 − cos(R(x), R(x_edit))` compares ArcFace
//! embeddings of the face crop before and after an edit, so this network must
//! be differentiable all the way to its input pixels: the convolutions and
//! the output layer are the op layer's constant-weight [`Conv2d`] and
//! [`Linear`] (input gradient only), everything else is a Candle op with a
//! backward pass (`relu`, `sigmoid`, sums, `index_select`). BatchNorm runs
//! in eval mode from its running statistics; where it follows a convolution
//! or the linear layer it is folded into that layer's weights at load time.
//!
//! - Paper: Deng et al. 2019, "ArcFace: Additive Angular Margin Loss for Deep
//!   Face Recognition" (<https://arxiv.org/abs/1801.07698>); the IR-SE
//!   ("improved residual" with squeeze-and-excitation) units follow Hu et al.
//!   2018, "Squeeze-and-Excitation Networks".
//! - Reference implementation: TreB1eN/InsightFace_Pytorch `model.py`,
//!   `Backbone(50, 0.6, 'ir_se')`
//!   (<https://github.com/TreB1eN/InsightFace_Pytorch/blob/350ff7aa9c9db8d369d1932e14d2a4d11a3e9553/model.py>),
//!   which StyleCLIP and e4e copy as `models/facial_recognition/model_irse.py`.
//! - Checkpoint: `model_ir_se50.pth` from the InsightFace_Pytorch README
//!   (<https://github.com/TreB1eN/InsightFace_Pytorch#2-pretrained-models--performance>),
//!   a plain state dict (`input_layer.*`, `body.{0..23}.*`, `output_layer.*`).
//!
//! The StyleCLIP preprocessing (pool to 256, crop, pool to 112) and the loss
//! itself live in [`id_loss`]; [`check_fixture`] compares everything with the
//! reference fixtures in `tests/fixtures/arcface/`.

use std::collections::HashMap;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::VarBuilder;

use crate::demo::SeededWeights;
use crate::ops::{BatchNormParams, Conv2d, Linear};
use crate::{Error, Result};

mod fixture;
pub mod id_loss;

pub use fixture::check_fixture;
pub use id_loss::{id_loss_from_embeddings, styleclip_preprocess, whole_image_preprocess, Crop, IdLoss};

/// The shape of an IR-SE backbone.
///
/// Everything except `bn_eps` can be read off a state dict's tensor shapes
/// ([`Config::from_tensors`]), so the same code loads the real IR-SE50 and
/// narrow test networks.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Channels of the 3x3 stem convolution (`input_layer.0`).
    pub stem_width: usize,
    /// Output channels of each stage.
    pub stage_widths: Vec<usize>,
    /// Number of `bottleneck_IR_SE` units in each stage.
    pub stage_units: Vec<usize>,
    /// The squeeze-and-excitation bottleneck is `width / se_reduction` wide.
    pub se_reduction: usize,
    /// Length of the embedding (`output_layer.3` out features).
    pub embedding_size: usize,
    /// Side of the square input; each stage halves it once.
    pub input_size: usize,
    /// BatchNorm epsilon (PyTorch's default, for the 2d and the 1d norms).
    pub bn_eps: f64,
}

impl Config {
    /// The real IR-SE50: `Backbone(50, 0.6, 'ir_se')`, 112x112 input
    /// (`get_blocks(50)` and the widths of `Backbone.__init__`,
    /// <https://github.com/TreB1eN/InsightFace_Pytorch/blob/350ff7aa9c9db8d369d1932e14d2a4d11a3e9553/model.py#L85-L134>).
    pub fn ir_se50() -> Self {
        Self {
            stem_width: 64,
            stage_widths: vec![64, 128, 256, 512],
            stage_units: vec![3, 4, 14, 3],
            se_reduction: 16,
            embedding_size: 512,
            input_size: 112,
            bn_eps: 1e-5,
        }
    }

    /// The tiny network of [`demo`]: real key names and topology, 112x112
    /// input (so the StyleCLIP crop path works), a few thousand times smaller.
    pub fn demo() -> Self {
        Self {
            stem_width: 16,
            stage_widths: vec![16, 32, 48, 64],
            stage_units: vec![1, 1, 1, 1],
            se_reduction: 16,
            embedding_size: 128,
            input_size: 112,
            bn_eps: 1e-5,
        }
    }

    /// Reads the shape of the network off a state dict (see
    /// [`Config::from_shapes`]).
    pub fn from_tensors(tensors: &HashMap<String, Tensor>) -> Result<Self> {
        let shapes = tensors.iter().map(|(k, t)| (k.clone(), t.dims().to_vec())).collect();
        Self::from_shapes(&shapes)
    }

    /// Reads the shape of the network off the tensor shapes of a state dict.
    ///
    /// Units are `body.0, body.1, …`; a stage starts at `body.0` and at every
    /// unit with a `shortcut_layer.0` convolution (its input width differs
    /// from its output width). The input size follows from the Linear layer:
    /// `in_features = last_width · s²` with `s = input_size / 2^stages`.
    pub fn from_shapes(shapes: &HashMap<String, Vec<usize>>) -> Result<Self> {
        let get = |name: &str| -> Result<&Vec<usize>> {
            shapes.get(name).ok_or_else(|| Error::MissingTensor {
                name: name.to_string(),
                hint: "; is this an InsightFace IR-SE state dict (input_layer.*, body.*, output_layer.*)?".into(),
            })
        };
        let bad = |name: &str, expected: &str, got: &[usize]| Error::BadShape {
            name: name.to_string(),
            expected: expected.to_string(),
            got: got.to_vec(),
        };
        let stem = get("input_layer.0.weight")?;
        if stem.len() != 4 || stem[1] != 3 {
            return Err(bad("input_layer.0.weight", "[width, 3, 3, 3]", stem));
        }
        let stem_width = stem[0];
        let (mut stage_widths, mut stage_units) = (Vec::new(), Vec::new());
        let mut se_reduction = None;
        let mut prev = stem_width;
        for i in 0.. {
            let name = format!("body.{i}.res_layer.1.weight");
            let Some(w) = shapes.get(&name) else { break };
            if w.len() != 4 || w[1] != prev {
                return Err(bad(&name, &format!("[depth, {prev}, 3, 3]"), w));
            }
            let depth = w[0];
            let has_shortcut = shapes.contains_key(&format!("body.{i}.shortcut_layer.0.weight"));
            if i == 0 || has_shortcut {
                stage_widths.push(depth);
                stage_units.push(1);
            } else {
                *stage_units.last_mut().expect("body.0 opened a stage") += 1;
            }
            if has_shortcut == (prev == depth) {
                return Err(Error::Config(format!(
                    "unit 'body.{i}' maps {prev} to {depth} channels but {} a shortcut convolution",
                    if has_shortcut { "has" } else { "lacks" }
                )));
            }
            let fc1_name = format!("body.{i}.res_layer.5.fc1.weight");
            let mid = get(&fc1_name)?[0];
            let r = *se_reduction.get_or_insert(depth / mid.max(1));
            if mid == 0 || depth / r != mid {
                return Err(bad(&fc1_name, &format!("[{depth} / {r}, {depth}, 1, 1]"), get(&fc1_name)?));
            }
            prev = depth;
        }
        let last = *stage_widths.last().ok_or_else(|| Error::MissingTensor {
            name: "body.0.res_layer.1.weight".into(),
            hint: "; the state dict has no body units".into(),
        })?;
        let lin = get("output_layer.3.weight")?;
        let side = (lin.get(1).copied().unwrap_or(0) / last.max(1)) as f64;
        let side = side.sqrt().round() as usize;
        if lin.len() != 2 || side == 0 || last * side * side != lin[1] {
            return Err(bad("output_layer.3.weight", &format!("[embedding, {last} · s · s]"), lin));
        }
        let input_size = side << stage_widths.len();
        Ok(Self {
            stem_width,
            stage_widths,
            stage_units,
            se_reduction: se_reduction.expect("at least one unit"),
            embedding_size: lin[0],
            input_size,
            bn_eps: 1e-5,
        })
    }

    /// Side of the last feature map (7 for a 112 input and four stages).
    pub fn final_size(&self) -> usize {
        self.input_size >> self.stage_widths.len()
    }

    /// Every tensor the network reads, with its shape, in state-dict order
    /// (without the `num_batches_tracked` buffers, which eval mode ignores).
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        let bn = |out: &mut Vec<(String, Vec<usize>)>, p: &str, c: usize| {
            for n in ["weight", "bias", "running_mean", "running_var"] {
                out.push((format!("{p}.{n}"), vec![c]));
            }
        };
        out.push(("input_layer.0.weight".into(), vec![self.stem_width, 3, 3, 3]));
        bn(&mut out, "input_layer.1", self.stem_width);
        out.push(("input_layer.2.weight".into(), vec![self.stem_width]));
        let last = *self.stage_widths.last().unwrap_or(&self.stem_width);
        bn(&mut out, "output_layer.0", last);
        let side = self.final_size();
        out.push(("output_layer.3.weight".into(), vec![self.embedding_size, last * side * side]));
        out.push(("output_layer.3.bias".into(), vec![self.embedding_size]));
        bn(&mut out, "output_layer.4", self.embedding_size);
        for (i, u) in self.units().iter().enumerate() {
            let p = format!("body.{i}");
            if u.in_channels != u.depth {
                out.push((format!("{p}.shortcut_layer.0.weight"), vec![u.depth, u.in_channels, 1, 1]));
                bn(&mut out, &format!("{p}.shortcut_layer.1"), u.depth);
            }
            bn(&mut out, &format!("{p}.res_layer.0"), u.in_channels);
            out.push((format!("{p}.res_layer.1.weight"), vec![u.depth, u.in_channels, 3, 3]));
            out.push((format!("{p}.res_layer.2.weight"), vec![u.depth]));
            out.push((format!("{p}.res_layer.3.weight"), vec![u.depth, u.depth, 3, 3]));
            bn(&mut out, &format!("{p}.res_layer.4"), u.depth);
            let mid = u.depth / self.se_reduction;
            out.push((format!("{p}.res_layer.5.fc1.weight"), vec![mid, u.depth, 1, 1]));
            out.push((format!("{p}.res_layer.5.fc2.weight"), vec![u.depth, mid, 1, 1]));
        }
        out
    }

    /// The units of `body`, flattened stage by stage
    /// (`get_block`, <https://github.com/TreB1eN/InsightFace_Pytorch/blob/350ff7aa9c9db8d369d1932e14d2a4d11a3e9553/model.py#L82-L83>):
    /// the first unit of each stage has stride 2.
    fn units(&self) -> Vec<UnitSpec> {
        let mut out = Vec::new();
        let mut in_channels = self.stem_width;
        for (stage, (&depth, &n)) in self.stage_widths.iter().zip(&self.stage_units).enumerate() {
            for k in 0..n {
                out.push(UnitSpec { in_channels, depth, stride: if k == 0 { 2 } else { 1 }, stage });
                in_channels = depth;
            }
        }
        out
    }
}

#[derive(Debug, Clone, Copy)]
struct UnitSpec {
    in_channels: usize,
    depth: usize,
    stride: usize,
    stage: usize,
}

/// Eval-mode BatchNorm (2d over `[N, C, H, W]` or 1d over `[N, C]`), folded
/// into one per-channel scale and shift.
#[derive(Debug, Clone)]
struct BatchNorm {
    scale: Tensor,
    shift: Tensor,
}

impl BatchNorm {
    fn new(c: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let bn = BatchNormParams::load(c, eps, vb)?;
        // y = (x - mean) / sqrt(var + eps) * weight + bias = x * scale + shift.
        let scale = (bn.gamma / (bn.var + eps)?.sqrt()?)?;
        let shift = (bn.beta - (bn.mean * &scale)?)?;
        Ok(Self { scale, shift })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let c = self.scale.dim(0)?;
        let shape: Vec<usize> = (0..xs.rank()).map(|d| if d == 1 { c } else { 1 }).collect();
        let scale = self.scale.reshape(shape.as_slice())?;
        let shift = self.shift.reshape(shape.as_slice())?;
        Ok(xs.broadcast_mul(&scale)?.broadcast_add(&shift)?)
    }
}

/// Per-channel PReLU: `x` where `x >= 0`, `a_c · x` otherwise, written as
/// `relu(x) - a · relu(-x)` so that it is differentiable in Candle.
#[derive(Debug, Clone)]
struct PRelu {
    weight: Tensor,
}

impl PRelu {
    fn new(c: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self { weight: vb.get(c, "weight")?.reshape((1, c, 1, 1))? })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let neg = xs.neg()?.relu()?.broadcast_mul(&self.weight)?;
        Ok((xs.relu()? - neg)?)
    }
}

/// A bias-free `k x k` convolution from `<vb>.weight` `[c_out, c_in, k, k]`.
fn conv_no_bias(
    (c_in, c_out, k): (usize, usize, usize),
    stride: usize,
    padding: usize,
    vb: VarBuilder,
) -> Result<Conv2d> {
    Conv2d::new(vb.get((c_out, c_in, k, k), "weight")?, None, stride, padding)
}

/// A bias-free convolution (`conv.weight`) followed by the eval-mode
/// BatchNorm `bn`, folded into one convolution with a bias.
fn conv_bn(
    (c_in, c_out, k): (usize, usize, usize),
    (stride, padding): (usize, usize),
    eps: f64,
    conv: VarBuilder,
    bn: VarBuilder,
) -> Result<Conv2d> {
    let weight = conv.get((c_out, c_in, k, k), "weight")?;
    let (weight, bias) = BatchNormParams::load(c_out, eps, bn)?.fold_into(&weight, None)?;
    Conv2d::new(weight, Some(bias), stride, padding)
}

/// Squeeze-and-excitation (`SEModule`,
/// <https://github.com/TreB1eN/InsightFace_Pytorch/blob/350ff7aa9c9db8d369d1932e14d2a4d11a3e9553/model.py#L19-L37>).
#[derive(Debug, Clone)]
struct SqueezeExcite {
    fc1: Conv2d,
    fc2: Conv2d,
}

impl SqueezeExcite {
    fn new(c: usize, mid: usize, vb: VarBuilder) -> Result<Self> {
        let fc1 = conv_no_bias((c, mid, 1), 1, 0, vb.pp("fc1"))?;
        let fc2 = conv_no_bias((mid, c, 1), 1, 0, vb.pp("fc2"))?;
        Ok(Self { fc1, fc2 })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let pooled = xs.mean_keepdim(D::Minus1)?.mean_keepdim(D::Minus2)?;
        let gate = self.fc2.forward(&self.fc1.forward(&pooled)?.relu()?)?;
        // candle_nn's sigmoid is a custom op, but it does define `bwd`.
        let gate = candle_nn::ops::sigmoid(&gate)?;
        Ok(xs.broadcast_mul(&gate)?)
    }
}

/// One `bottleneck_IR_SE` unit
/// (<https://github.com/TreB1eN/InsightFace_Pytorch/blob/350ff7aa9c9db8d369d1932e14d2a4d11a3e9553/model.py#L57-L77>).
#[derive(Debug, Clone)]
struct Unit {
    /// `shortcut_layer.{0,1}` (BatchNorm folded in) when the width
    /// changes; `None` means `MaxPool2d(1, stride)`, i.e. identity or
    /// stride-2 subsampling.
    shortcut: Option<Conv2d>,
    stride: usize,
    bn0: BatchNorm,
    conv1: Conv2d,
    prelu: PRelu,
    /// `res_layer.3` with the BatchNorm `res_layer.4` folded in.
    conv2: Conv2d,
    se: SqueezeExcite,
}

impl Unit {
    fn new(cfg: &Config, spec: UnitSpec, vb: VarBuilder) -> Result<Self> {
        let (cin, d, s) = (spec.in_channels, spec.depth, spec.stride);
        let eps = cfg.bn_eps;
        let shortcut = if cin == d {
            None
        } else {
            let vb = vb.pp("shortcut_layer");
            Some(conv_bn((cin, d, 1), (s, 0), eps, vb.pp("0"), vb.pp("1"))?)
        };
        let vb = vb.pp("res_layer");
        Ok(Self {
            shortcut,
            stride: s,
            bn0: BatchNorm::new(cin, eps, vb.pp("0"))?,
            conv1: conv_no_bias((cin, d, 3), 1, 1, vb.pp("1"))?,
            prelu: PRelu::new(d, vb.pp("2"))?,
            // The stride sits in the second 3x3 convolution, not the first.
            conv2: conv_bn((d, d, 3), (s, 1), eps, vb.pp("3"), vb.pp("4"))?,
            se: SqueezeExcite::new(d, d / cfg.se_reduction, vb.pp("5"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let shortcut = match &self.shortcut {
            Some(conv) => conv.forward(xs)?,
            None => subsample(xs, self.stride)?,
        };
        let res = self.bn0.forward(xs)?;
        let res = self.prelu.forward(&self.conv1.forward(&res)?)?;
        let res = self.conv2.forward(&res)?;
        let res = self.se.forward(&res)?;
        Ok((res + shortcut)?)
    }
}

/// `MaxPool2d(kernel 1, stride)`: `xs[:, :, ::stride, ::stride]`, via
/// `index_select` (whose backward scatters the gradient back).
fn subsample(xs: &Tensor, stride: usize) -> Result<Tensor> {
    if stride == 1 {
        return Ok(xs.clone());
    }
    let (_, _, h, w) = xs.dims4()?;
    let idx = |n: usize| Tensor::arange_step(0u32, n as u32, stride as u32, xs.device());
    Ok(xs.index_select(&idx(h)?, 2)?.index_select(&idx(w)?, 3)?)
}

/// Intermediate outputs of one backbone pass, for debugging and fixtures.
#[derive(Debug, Clone)]
pub struct BackboneOutputs {
    /// Output of the last unit of each stage, `[N, width_s, H_s, W_s]`.
    pub stages: Vec<Tensor>,
    /// `output_layer` output (after BatchNorm1d), before `l2_norm`: `[N, E]`.
    pub before_l2norm: Tensor,
    /// The L2-normalised embedding `[N, E]`.
    pub embedding: Tensor,
}

/// The IR-SE backbone (`Backbone` in InsightFace_Pytorch): `[N, 3, S, S]`
/// RGB in `[-1, 1]` to unit-norm embeddings `[N, E]`.
#[derive(Debug, Clone)]
pub struct Backbone {
    cfg: Config,
    /// `input_layer.0` with the BatchNorm `input_layer.1` folded in.
    stem_conv: Conv2d,
    stem_prelu: PRelu,
    units: Vec<(usize, Unit)>,
    out_bn: BatchNorm,
    /// `output_layer.3` with the BatchNorm1d `output_layer.4` folded in.
    linear: Linear,
}

impl Backbone {
    /// Builds the network from a state dict laid out like `model_ir_se50.pth`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        if cfg.stage_widths.len() != cfg.stage_units.len() || cfg.stage_widths.is_empty() {
            return Err(Error::Config(format!(
                "arcface: {} stage widths for {} stage unit counts; give one of each per stage",
                cfg.stage_widths.len(),
                cfg.stage_units.len()
            )));
        }
        if cfg.final_size() << cfg.stage_widths.len() != cfg.input_size || cfg.final_size() == 0 {
            return Err(Error::Config(format!(
                "arcface: input size {} is not a multiple of 2^{} (one halving per stage)",
                cfg.input_size,
                cfg.stage_widths.len()
            )));
        }
        let eps = cfg.bn_eps;
        let w0 = cfg.stem_width;
        let vbi = vb.pp("input_layer");
        let stem_conv = conv_bn((3, w0, 3), (1, 1), eps, vbi.pp("0"), vbi.pp("1"))?;
        let stem_prelu = PRelu::new(w0, vbi.pp("2"))?;
        let vbb = vb.pp("body");
        let units = cfg
            .units()
            .into_iter()
            .enumerate()
            .map(|(i, spec)| Ok((spec.stage, Unit::new(cfg, spec, vbb.pp(i.to_string()))?)))
            .collect::<Result<Vec<_>>>()?;
        let last = *cfg.stage_widths.last().expect("checked non-empty");
        let side = cfg.final_size();
        let vbo = vb.pp("output_layer");
        // Indices 1 (Dropout, identity in eval) and 2 (Flatten) hold no weights.
        let out_bn = BatchNorm::new(last, eps, vbo.pp("0"))?;
        let (d_in, vbl) = (last * side * side, vbo.pp("3"));
        let e = cfg.embedding_size;
        let (weight, bias) = (vbl.get((e, d_in), "weight")?, vbl.get(e, "bias")?);
        let (weight, bias) = BatchNormParams::load(e, eps, vbo.pp("4"))?.fold_into(&weight, Some(&bias))?;
        let linear = Linear::new(weight, Some(bias))?;
        Ok(Self { cfg: cfg.clone(), stem_conv, stem_prelu, units, out_bn, linear })
    }

    /// Loads a state dict (e.g. from [`crate::torch::load`]), inferring the
    /// configuration from its shapes.
    pub fn from_state_dict(tensors: HashMap<String, Tensor>, device: &Device) -> Result<Self> {
        let cfg = Config::from_tensors(&tensors)?;
        Self::new(&cfg, VarBuilder::from_tensors(tensors, DType::F32, device))
    }

    /// The configuration the network was built with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Runs the network and keeps the stage outputs and the un-normalised
    /// embedding (`Backbone.forward`,
    /// <https://github.com/TreB1eN/InsightFace_Pytorch/blob/350ff7aa9c9db8d369d1932e14d2a4d11a3e9553/model.py#L136-L140>).
    pub fn forward_outputs(&self, xs: &Tensor) -> Result<BackboneOutputs> {
        let (_, c, h, w) = xs.dims4()?;
        let s = self.cfg.input_size;
        if (c, h, w) != (3, s, s) {
            return Err(Error::BadShape {
                name: "arcface input".into(),
                expected: format!("[N, 3, {s}, {s}] (crop and resize faces first, e.g. styleclip_preprocess)"),
                got: xs.dims().to_vec(),
            });
        }
        let mut x = self.stem_conv.forward(xs)?;
        x = self.stem_prelu.forward(&x)?;
        let mut stages = Vec::with_capacity(self.cfg.stage_widths.len());
        for (i, (stage, unit)) in self.units.iter().enumerate() {
            x = unit.forward(&x)?;
            if self.units.get(i + 1).is_none_or(|(next, _)| next != stage) {
                stages.push(x.clone());
            }
        }
        let x = self.out_bn.forward(&x)?;
        // Flatten NCHW channel-major (`view(N, -1)`): index c·s² + h·s + w.
        let x = x.flatten_from(1)?;
        let before_l2norm = self.linear.forward(&x)?;
        let embedding = l2_norm(&before_l2norm)?;
        Ok(BackboneOutputs { stages, before_l2norm, embedding })
    }
}

impl Module for Backbone {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_outputs(xs).map(|o| o.embedding).map_err(|e| match e {
            Error::Candle(e) => e,
            other => candle_core::Error::Msg(other.to_string()),
        })
    }
}

/// `l2_norm`: `x / ||x||₂` over dim 1, without an epsilon as in the reference
/// (<https://github.com/TreB1eN/InsightFace_Pytorch/blob/350ff7aa9c9db8d369d1932e14d2a4d11a3e9553/model.py#L14-L17>).
pub fn l2_norm(xs: &Tensor) -> Result<Tensor> {
    let norm = xs.sqr()?.sum_keepdim(1)?.sqrt()?;
    Ok(xs.broadcast_div(&norm)?)
}

/// Seeded weights under the real key names for `cfg`, with sane statistics:
/// He-scaled convolutions, BN weights near 1, running mean 0, running
/// variance 1, PReLU slopes 0.25 (PyTorch's default).
pub fn demo_weights(cfg: &Config, seed: u64) -> Result<SeededWeights> {
    let mut w = SeededWeights::new(seed);
    for (name, shape) in cfg.tensor_shapes() {
        let fan_in: usize = shape.iter().skip(1).product();
        if name.ends_with("running_mean") {
            w.constant(&name, &shape, 0.0)?;
        } else if name.ends_with("running_var") {
            w.constant(&name, &shape, 1.0)?;
        } else if name.ends_with(".2.weight") {
            w.constant(&name, &shape, 0.25)?;
        } else if shape.len() == 1 && name.ends_with("weight") {
            w.normal(&name, &shape, 1.0, 0.1)?;
        } else if shape.len() == 1 {
            w.normal(&name, &shape, 0.0, 0.1)?;
        } else {
            w.normal(&name, &shape, 0.0, (1.0 / fan_in as f32).sqrt())?;
        }
    }
    Ok(w)
}

/// A tiny random-weight network ([`Config::demo`]) from `seed`, for running
/// the pipeline with no downloads; its embeddings mean nothing
/// (see [`crate::demo::DEMO_LABEL`]).
pub fn demo(seed: u64, device: &Device) -> Result<Backbone> {
    let cfg = Config::demo();
    Backbone::new(&cfg, demo_weights(&cfg, seed)?.into_var_builder(device))
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use candle_core::Var;

    const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/arcface");

    /// The tolerance of a case the directory's `tolerances.json` names is
    /// 10× the figure stated there: the shipped figure gives the stated
    /// atol, and a directory stating a far smaller error fails the case.
    #[test]
    fn tolerances_come_from_the_directory() -> Result<()> {
        let report = check_fixture(std::path::Path::new(FIXTURE), &Device::Cpu)?;
        let case = report.cases.iter().find(|c| c.name == "embeddings").expect("the case ran");
        assert!((case.atol - 10.0 * 1.640000e-07).abs() < 1e-15, "{}", report.table());
        let dir = tempfile::tempdir().expect("a temp dir");
        for entry in std::fs::read_dir(FIXTURE).expect("the fixture") {
            let path = entry.expect("an entry").path();
            std::fs::copy(&path, dir.path().join(path.file_name().expect("a name"))).expect("copied");
        }
        std::fs::write(dir.path().join("tolerances.json"), r#"{"f32_error": {"embeddings": 1e-15}}"#).expect("written");
        let strict = check_fixture(dir.path(), &Device::Cpu)?;
        let failed: Vec<&str> = strict.failures().map(|c| c.name.as_str()).collect();
        assert!(failed.contains(&"embeddings"), "{}", strict.table());
        Ok(())
    }

    #[test]
    fn fixture_passes() -> Result<()> {
        let report = check_fixture(std::path::Path::new(FIXTURE), &Device::Cpu)?;
        println!("{}", report.table());
        // Both checkpoints (torch zip and pre-1.6 legacy) load and every case passes.
        assert!(report.passed(), "{}", report.table());
        assert!(report.cases.iter().any(|c| c.name.starts_with("model_legacy.pth")), "{}", report.table());
        Ok(())
    }

    #[test]
    fn real_layout_is_accepted() -> Result<()> {
        let path = std::path::Path::new(FIXTURE).join("arcface_ir_se50.keys.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io("reading", &path, e))?;
        let json: serde_json::Value = serde_json::from_str(&text).expect("keys.json is JSON");
        let keys = json["keys"].as_array().expect("keys.json lists keys");
        let mut listed = Vec::new();
        let mut tensors = HashMap::new();
        for k in keys {
            let name = k["name"].as_str().expect("name").to_string();
            let shape: Vec<usize> =
                k["shape"].as_array().expect("shape").iter().map(|d| d.as_u64().expect("dim") as usize).collect();
            let dtype = if k["dtype"] == "int64" { DType::I64 } else { DType::F32 };
            tensors.insert(name.clone(), Tensor::zeros(shape.as_slice(), dtype, &Device::Cpu)?);
            if !name.ends_with("num_batches_tracked") {
                listed.push((name, shape));
            }
        }
        let cfg = Config::from_tensors(&tensors)?;
        assert_eq!(cfg, Config::ir_se50());
        // Every tensor the model reads is in the checkpoint and vice versa.
        let mut ours = cfg.tensor_shapes();
        ours.sort();
        listed.sort();
        assert_eq!(ours, listed);
        Backbone::new(&cfg, VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu))?;
        Ok(())
    }

    #[test]
    fn inconsistent_layouts_are_rejected() -> Result<()> {
        let cfg = Config::demo();
        let shapes: HashMap<String, Vec<usize>> = cfg.tensor_shapes().into_iter().collect();
        assert_eq!(Config::from_shapes(&shapes)?, cfg);
        let mut no_shortcut = shapes.clone();
        no_shortcut.retain(|k, _| !k.starts_with("body.1.shortcut_layer"));
        assert!(Config::from_shapes(&no_shortcut).is_err(), "a width change needs a shortcut conv");
        let mut bad_linear = shapes.clone();
        bad_linear.insert("output_layer.3.weight".into(), vec![128, 64 * 50]);
        assert!(Config::from_shapes(&bad_linear).is_err(), "64 · 50 is not 64 · s²");
        let mut no_body = shapes;
        no_body.retain(|k, _| !k.starts_with("body."));
        assert!(Config::from_shapes(&no_body).is_err());
        Ok(())
    }

    #[test]
    fn demo_is_deterministic_and_finite() -> Result<()> {
        let dev = Device::Cpu;
        let xs = Tensor::rand(-1f32, 1f32, (2, 3, 112, 112), &dev)?;
        let a = demo(3, &dev)?.forward(&xs)?;
        let b = demo(3, &dev)?.forward(&xs)?;
        let c = demo(4, &dev)?.forward(&xs)?;
        let (a, b, c) = (
            a.flatten_all()?.to_vec1::<f32>()?,
            b.flatten_all()?.to_vec1::<f32>()?,
            c.flatten_all()?.to_vec1::<f32>()?,
        );
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().all(|v| v.is_finite()));
        Ok(())
    }

    /// Central differences in f64 through crop, pool and backbone agree
    /// with the backward pass at a few pixels.
    #[test]
    fn gradient_matches_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let cfg = Config::demo();
        let w = demo_weights(&cfg, 11)?;
        let net = Backbone::new(&cfg, VarBuilder::from_tensors(w.tensors().clone(), DType::F64, &dev))?;
        let loss_fn = IdLoss::new(net);
        let y = Tensor::rand(-1f64, 1f64, (1, 3, 256, 256), &dev)?;
        let y_hat0 = (&y + Tensor::rand(-0.3f64, 0.3f64, (1, 3, 256, 256), &dev)?)?;
        let y_hat = Var::from_tensor(&y_hat0)?;
        let loss = loss_fn.forward(y_hat.as_tensor(), &y)?;
        let grads = loss.backward()?;
        let g = grads.get(&y_hat).expect("y_hat takes part in the loss").flatten_all()?.to_vec1::<f64>()?;
        let base = y_hat0.flatten_all()?.to_vec1::<f64>()?;
        let h = 1e-4;
        // Pixels inside the crop (rows 35..223, columns 32..220) and one outside.
        for &(c, r, col) in &[(0usize, 100usize, 100usize), (1, 40, 200), (2, 222, 33), (0, 10, 10)] {
            let i = c * 256 * 256 + r * 256 + col;
            let at = |d: f64| -> Result<f64> {
                let mut v = base.clone();
                v[i] += d;
                let x = Tensor::from_vec(v, (1, 3, 256, 256), &dev)?;
                Ok(loss_fn.forward(&x, &y)?.to_scalar::<f64>()?)
            };
            let fd = (at(h)? - at(-h)?) / (2.0 * h);
            assert!((fd - g[i]).abs() <= 1e-6 + 1e-4 * fd.abs(), "pixel {c},{r},{col}: fd {fd} vs {}", g[i]);
            if r < 35 {
                assert_eq!(g[i], 0.0, "pixels outside the crop get no gradient");
            } else {
                assert!(g[i] != 0.0);
            }
        }
        Ok(())
    }
}

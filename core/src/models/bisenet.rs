//! BiSeNet face parsing: 19 face-part classes per pixel, differentiable to
//! the input pixels.
//!
//! The segmentation losses use it to tell where an edit happened (hair,
//! skin, mouth, …): a mask derived from the parse of the generated image
//! restricts or rewards change inside a region, and the network itself must
//! pass gradients back to the generator.
//!
//! - Paper: Yu et al., "BiSeNet: Bilateral Segmentation Network for
//!   Real-time Semantic Segmentation", ECCV 2018, <https://arxiv.org/abs/1808.00897>.
//!   This variant drops the spatial path and feeds ResNet-18's 1/8 feature
//!   to the fusion module instead.
//! - Reference implementation: zllrunning/face-parsing.PyTorch `model.py`
//!   and `resnet.py`
//!   <https://github.com/zllrunning/face-parsing.PyTorch/blob/d2e684cf1588b46145635e8fe7bcc29544e5537e/model.py>
//!   (vendored unchanged by IVRL/LELSD in `models/face_bisenet/`).
//! - Checkpoint: `79999_iter.pth`, a plain state dict trained on
//!   CelebAMask-HQ, linked from the reference README.
//!
//! Eval mode only: every BatchNorm uses its running statistics and is folded
//! into the preceding convolution at load time. All resizes are matrix
//! products from [`crate::imageops`] (candle's upsampling ops lack a usable
//! backward). Only the main output `feat_out` is computed by
//! [`BiSeNet::forward`]; the two auxiliary heads are training-only but their
//! weights are part of the checkpoint, so they are loaded and available
//! through [`BiSeNet::forward_trace`].

mod fixture;
mod resnet;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::VarBuilder;

use crate::imageops::{resample, Filter};
use crate::ops::Conv2d;
use crate::{Error, Result};
use resnet::{ConvBn, Resnet18};

pub use fixture::check_fixture;

/// The 19 class names in label order, as upstream's `face_dataset.py`
/// (`atts`, enumerated from 1) with 0 = background.
pub const CLASS_NAMES: [&str; 19] = [
    "background",
    "skin",
    "l_brow",
    "r_brow",
    "l_eye",
    "r_eye",
    "eye_g",
    "l_ear",
    "r_ear",
    "ear_r",
    "nose",
    "mouth",
    "u_lip",
    "l_lip",
    "neck",
    "neck_l",
    "cloth",
    "hair",
    "hat",
];

/// LELSD's names (`FaceSegmentation.part_to_mask_idx`) where they differ
/// from upstream's, so recipes written for either are accepted.
const CLASS_ALIASES: [(&str, usize); 3] = [("eyeglass", 6), ("earrings", 9), ("necklace", 15)];

/// The label of a face part by name (upstream name or LELSD alias,
/// case-insensitive): `class_index("hair") == Some(17)`.
pub fn class_index(name: &str) -> Option<usize> {
    let name = name.trim().to_ascii_lowercase();
    CLASS_NAMES
        .iter()
        .position(|&n| n == name)
        .or_else(|| CLASS_ALIASES.iter().find(|(a, _)| *a == name).map(|&(_, i)| i))
}

/// Like [`class_index`], but an unknown name is an error that lists the
/// valid names.
pub fn class_index_or_err(name: &str) -> Result<usize> {
    class_index(name).ok_or_else(|| {
        let aliases: Vec<&str> = CLASS_ALIASES.iter().map(|(a, _)| *a).collect();
        Error::Config(format!(
            "unknown face part '{name}'; use one of: {} (or {})",
            CLASS_NAMES.join(", "),
            aliases.join(", ")
        ))
    })
}

/// ImageNet channel means used by upstream `test.py` and LELSD.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations used by upstream `test.py` and LELSD.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// `transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)` of an RGB image
/// `[N, 3, H, W]` in [0, 1] (what `ToTensor` makes of a uint8 image).
pub fn normalize(rgb01: &Tensor) -> Result<Tensor> {
    let (dev, dtype) = (rgb01.device(), rgb01.dtype());
    let mean = Tensor::new(&IMAGENET_MEAN, dev)?.to_dtype(dtype)?.reshape((1, 3, 1, 1))?;
    let std = Tensor::new(&IMAGENET_STD, dev)?.to_dtype(dtype)?.reshape((1, 3, 1, 1))?;
    // Subtract then divide, in the input dtype, as torchvision does.
    Ok(rgb01.broadcast_sub(&mean)?.broadcast_div(&std)?)
}

/// The network input for a generator image `xs` `[N, 3, H, W]` in [-1, 1]:
/// resized to `size` (`(512, 512)` for the real network) and normalised.
///
/// LELSD goes through uint8 (`(x*127.5 + 128).clamp(0, 255).to(uint8)`),
/// PIL `Resize` and `ToTensor`, which has no gradient. This is its
/// differentiable counterpart: `(x + 1) / 2` (truncating `x*127.5 + 128`
/// gives `x*127.5 + 127.5` on average), then a bilinear resize
/// (`align_corners=False`, no antialiasing, unlike PIL when shrinking), then
/// [`normalize`]. No clamping, so out-of-range pixels keep their gradient.
pub fn preprocess_generator_image(xs: &Tensor, size: (usize, usize)) -> Result<Tensor> {
    let rgb01 = ((xs + 1.0)? * 0.5)?;
    normalize(&resample(&rgb01, Filter::Bilinear, size)?)
}

/// Class probabilities `softmax(logits, dim=1)` of logits `[N, C, H, W]`.
///
/// Composed from differentiable ops (`candle_nn::ops::softmax`), unlike the
/// fused `softmax_last_dim`, which has no backward.
pub fn probabilities(logits: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::softmax(logits, 1)?)
}

/// The parse map `[N, H, W]` (u32 labels): argmax over the class axis.
pub fn parse(logits: &Tensor) -> Result<Tensor> {
    Ok(logits.argmax(1)?)
}

/// A soft mask `[N, H, W]`: the probabilities of `classes` summed, from
/// [`probabilities`] `[N, C, H, W]`.
///
/// Differentiable; a loss that only uses the mask as a weight should
/// `detach()` it.
pub fn soft_mask(probs: &Tensor, classes: &[usize]) -> Result<Tensor> {
    let ids = class_ids(classes, probs.dim(1)?, probs.device())?;
    Ok(probs.index_select(&ids, 1)?.sum(1)?)
}

/// A hard mask `[N, H, W]` in {0, 1} (dtype of `logits`): 1 where the argmax
/// class is one of `classes`. Not differentiable (detached).
pub fn hard_mask(logits: &Tensor, classes: &[usize]) -> Result<Tensor> {
    let ids = class_ids(classes, logits.dim(1)?, logits.device())?;
    let labels = parse(&logits.detach())?;
    let (n, h, w) = labels.dims3()?;
    let k = ids.dim(0)?;
    // one-hot of the label restricted to `classes`, summed over them.
    let hits = labels.unsqueeze(1)?.broadcast_eq(&ids.reshape((1, k, 1, 1))?.broadcast_as((n, k, h, w))?)?;
    Ok(hits.to_dtype(logits.dtype())?.sum(1)?)
}

/// Distinct, in-range class ids as a u32 tensor.
fn class_ids(classes: &[usize], n_classes: usize, device: &Device) -> Result<Tensor> {
    let mut ids: Vec<u32> = Vec::with_capacity(classes.len());
    for &c in classes {
        if c >= n_classes {
            return Err(Error::Config(format!(
                "face-part class {c} out of range; the network has {n_classes} classes (0..={})",
                n_classes - 1
            )));
        }
        if !ids.contains(&(c as u32)) {
            ids.push(c as u32);
        }
    }
    if ids.is_empty() {
        return Err(Error::Config("empty face-part class set; name at least one part".into()));
    }
    Ok(Tensor::new(ids.as_slice(), device)?)
}

/// Widths of a BiSeNet face-parsing network.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Output widths of ResNet `layer1..layer4` (the stem has `layer1`'s).
    pub resnet_widths: [usize; 4],
    /// BasicBlocks per ResNet layer.
    pub resnet_blocks: [usize; 4],
    /// Context-path width (ARM, `conv_head*`, `conv_avg` outputs).
    pub cp_width: usize,
    /// Feature-fusion output width.
    pub ffm_out: usize,
    /// Feature-fusion attention bottleneck (`ffm.conv1` output).
    pub ffm_mid: usize,
    /// Hidden width of the main head `conv_out`.
    pub conv_out_mid: usize,
    /// Hidden width of the auxiliary heads `conv_out16` / `conv_out32`.
    pub aux_out_mid: usize,
    /// Number of classes.
    pub n_classes: usize,
    /// BatchNorm epsilon.
    pub bn_eps: f64,
}

impl Config {
    /// `BiSeNet(n_classes=19)` as used for `79999_iter.pth`
    /// (<https://github.com/zllrunning/face-parsing.PyTorch/blob/d2e684cf1588b46145635e8fe7bcc29544e5537e/model.py>,
    /// `ContextPath.__init__` and `BiSeNet.__init__`).
    pub fn face_parsing_19() -> Self {
        Self {
            resnet_widths: [64, 128, 256, 512],
            resnet_blocks: [2, 2, 2, 2],
            cp_width: 128,
            ffm_out: 256,
            ffm_mid: 64,
            conv_out_mid: 256,
            aux_out_mid: 64,
            n_classes: 19,
            bn_eps: 1e-5,
        }
    }

    /// A tiny network for demos and tests (see [`demo`]).
    pub fn demo() -> Self {
        Self {
            resnet_widths: [8, 8, 16, 16],
            resnet_blocks: [2, 2, 2, 2],
            cp_width: 8,
            ffm_out: 16,
            ffm_mid: 4,
            conv_out_mid: 8,
            aux_out_mid: 4,
            n_classes: 19,
            bn_eps: 1e-5,
        }
    }

    /// The fusion module's input width: ResNet `layer2` plus the context path.
    pub fn ffm_in(&self) -> usize {
        self.resnet_widths[1] + self.cp_width
    }

    /// Reads the widths off a state dict's weight shapes.
    pub fn from_tensors(tensors: &HashMap<String, Tensor>) -> Result<Self> {
        let dim = |name: &str, i: usize| -> Result<usize> {
            let t = tensors.get(name).ok_or_else(|| Error::MissingTensor {
                name: name.to_string(),
                hint: "; is this a BiSeNet face-parsing state dict (e.g. 79999_iter.pth)?".into(),
            })?;
            t.dims().get(i).copied().ok_or_else(|| Error::BadShape {
                name: name.to_string(),
                expected: format!("at least {} dimensions", i + 1),
                got: t.dims().to_vec(),
            })
        };
        let mut resnet_widths = [0; 4];
        let mut resnet_blocks = [0; 4];
        for k in 0..4 {
            let layer = format!("cp.resnet.layer{}", k + 1);
            resnet_widths[k] = dim(&format!("{layer}.0.conv1.weight"), 0)?;
            resnet_blocks[k] = (0..).take_while(|i| tensors.contains_key(&format!("{layer}.{i}.conv1.weight"))).count();
        }
        let cfg = Self {
            resnet_widths,
            resnet_blocks,
            cp_width: dim("cp.arm16.conv.conv.weight", 0)?,
            ffm_out: dim("ffm.convblk.conv.weight", 0)?,
            ffm_mid: dim("ffm.conv1.weight", 0)?,
            conv_out_mid: dim("conv_out.conv.conv.weight", 0)?,
            aux_out_mid: dim("conv_out16.conv.conv.weight", 0)?,
            n_classes: dim("conv_out.conv_out.weight", 0)?,
            bn_eps: 1e-5,
        };
        cfg.check_state_dict(tensors)?;
        Ok(cfg)
    }

    /// Every state-dict entry of this network in `state_dict()` order:
    /// name, shape, dtype (`num_batches_tracked` buffers are i64 scalars).
    pub fn state_dict_shapes(&self) -> Vec<(String, Vec<usize>, DType)> {
        let mut out = Vec::new();
        let conv = |out: &mut Vec<_>, name: String, shape: [usize; 4]| {
            out.push((format!("{name}.weight"), shape.to_vec(), DType::F32));
        };
        let bn = |out: &mut Vec<(String, Vec<usize>, DType)>, name: String, c: usize| {
            for p in ["weight", "bias", "running_mean", "running_var"] {
                out.push((format!("{name}.{p}"), vec![c], DType::F32));
            }
            out.push((format!("{name}.num_batches_tracked"), vec![], DType::I64));
        };
        let w = self.resnet_widths;
        conv(&mut out, "cp.resnet.conv1".into(), [w[0], 3, 7, 7]);
        bn(&mut out, "cp.resnet.bn1".into(), w[0]);
        let mut c_in = w[0];
        for k in 0..4 {
            for i in 0..self.resnet_blocks[k] {
                let p = format!("cp.resnet.layer{}.{i}", k + 1);
                let ci = if i == 0 { c_in } else { w[k] };
                conv(&mut out, format!("{p}.conv1"), [w[k], ci, 3, 3]);
                bn(&mut out, format!("{p}.bn1"), w[k]);
                conv(&mut out, format!("{p}.conv2"), [w[k], w[k], 3, 3]);
                bn(&mut out, format!("{p}.bn2"), w[k]);
                if i == 0 && (ci != w[k] || k > 0) {
                    conv(&mut out, format!("{p}.downsample.0"), [w[k], ci, 1, 1]);
                    bn(&mut out, format!("{p}.downsample.1"), w[k]);
                }
            }
            c_in = w[k];
        }
        let cp = self.cp_width;
        let conv_bn = |out: &mut Vec<_>, name: &str, c_out: usize, c_in: usize, k: usize| {
            conv(out, format!("{name}.conv"), [c_out, c_in, k, k]);
            bn(out, format!("{name}.bn"), c_out);
        };
        for (arm, c_in) in [("cp.arm16", w[2]), ("cp.arm32", w[3])] {
            conv_bn(&mut out, &format!("{arm}.conv"), cp, c_in, 3);
            out.push((format!("{arm}.conv_atten.weight"), vec![cp, cp, 1, 1], DType::F32));
            bn(&mut out, format!("{arm}.bn_atten"), cp);
        }
        conv_bn(&mut out, "cp.conv_head32", cp, cp, 3);
        conv_bn(&mut out, "cp.conv_head16", cp, cp, 3);
        conv_bn(&mut out, "cp.conv_avg", cp, w[3], 1);
        conv_bn(&mut out, "ffm.convblk", self.ffm_out, self.ffm_in(), 1);
        out.push(("ffm.conv1.weight".into(), vec![self.ffm_mid, self.ffm_out, 1, 1], DType::F32));
        out.push(("ffm.conv2.weight".into(), vec![self.ffm_out, self.ffm_mid, 1, 1], DType::F32));
        for (head, c_in, mid) in [
            ("conv_out", self.ffm_out, self.conv_out_mid),
            ("conv_out16", cp, self.aux_out_mid),
            ("conv_out32", cp, self.aux_out_mid),
        ] {
            conv_bn(&mut out, &format!("{head}.conv"), mid, c_in, 3);
            out.push((format!("{head}.conv_out.weight"), vec![self.n_classes, mid, 1, 1], DType::F32));
        }
        out
    }

    /// Checks a state dict like PyTorch's strict `load_state_dict`: every
    /// entry present with its shape, and nothing else.
    pub fn check_state_dict(&self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let expected = self.state_dict_shapes();
        for (name, shape, _) in &expected {
            let t =
                tensors.get(name).ok_or_else(|| Error::MissingTensor { name: name.clone(), hint: String::new() })?;
            if t.dims() != shape.as_slice() {
                return Err(Error::BadShape {
                    name: name.clone(),
                    expected: format!("{shape:?}"),
                    got: t.dims().to_vec(),
                });
            }
        }
        if tensors.len() != expected.len() {
            let mut extra: Vec<&String> =
                tensors.keys().filter(|k| !expected.iter().any(|(n, _, _)| n == *k)).collect();
            extra.sort();
            return Err(Error::Config(format!(
                "unexpected tensors in the BiSeNet weights: {}; strip any prefix such as 'module.' \
                 or check that this is a face-parsing state dict",
                extra.iter().map(|k| format!("'{k}'")).collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(())
    }
}

/// Upstream `AttentionRefinementModule`: a ConvBNReLU whose output is
/// rescaled per channel by a sigmoid gate computed from its global mean.
#[derive(Debug, Clone)]
struct AttentionRefinement {
    conv: ConvBn,
    atten: ConvBn,
}

impl AttentionRefinement {
    fn new(vb: VarBuilder, c_in: usize, c_out: usize, eps: f64) -> Result<Self> {
        let conv = ConvBn::new(vb.pp("conv.conv"), vb.pp("conv.bn"), (c_in, c_out, 3), 1, 1, eps)?;
        let atten = ConvBn::new(vb.pp("conv_atten"), vb.pp("bn_atten"), (c_out, c_out, 1), 1, 0, eps)?;
        Ok(Self { conv, atten })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let feat = self.conv.forward(xs)?.relu()?;
        let atten = candle_nn::ops::sigmoid(&self.atten.forward(&global_mean(&feat)?)?)?;
        // No residual here, unlike the fusion module.
        Ok(feat.broadcast_mul(&atten)?)
    }
}

/// `[N, C, H, W]` -> `[N, C, 1, 1]` (`adaptive_avg_pool2d(x, 1)`).
fn global_mean(xs: &Tensor) -> Result<Tensor> {
    Ok(xs.mean_keepdim((2, 3))?)
}

/// Upstream `ContextPath`: ResNet-18 plus attention refinement and the
/// top-down path, returning `(feat_res8, feat_cp8, feat_cp16)`.
#[derive(Debug, Clone)]
struct ContextPath {
    resnet: Resnet18,
    arm16: AttentionRefinement,
    arm32: AttentionRefinement,
    conv_head32: ConvBn,
    conv_head16: ConvBn,
    conv_avg: ConvBn,
}

impl ContextPath {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (w, cp, eps) = (cfg.resnet_widths, cfg.cp_width, cfg.bn_eps);
        let conv_bn = |name: &str, c_in: usize, k: usize| {
            let vb = vb.pp(name);
            ConvBn::new(vb.pp("conv"), vb.pp("bn"), (c_in, cp, k), 1, k / 2, eps)
        };
        Ok(Self {
            resnet: Resnet18::new(vb.pp("resnet"), w, cfg.resnet_blocks, eps)?,
            arm16: AttentionRefinement::new(vb.pp("arm16"), w[2], cp, eps)?,
            arm32: AttentionRefinement::new(vb.pp("arm32"), w[3], cp, eps)?,
            conv_head32: conv_bn("conv_head32", cp, 3)?,
            conv_head16: conv_bn("conv_head16", cp, 3)?,
            conv_avg: conv_bn("conv_avg", w[3], 1)?,
        })
    }

    // model.py `ContextPath.forward`.
    fn forward(&self, xs: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (feat8, feat16, feat32) = self.resnet.forward(xs)?;
        let size = |t: &Tensor| -> Result<(usize, usize)> { Ok((t.dim(2)?, t.dim(3)?)) };
        // The nearest resize of a 1x1 map to feat32's size is a broadcast.
        let avg = self.conv_avg.forward(&global_mean(&feat32)?)?.relu()?;
        let feat32_sum = self.arm32.forward(&feat32)?.broadcast_add(&avg)?;
        // F.interpolate(mode='nearest') to explicit sizes: src = floor(dst * in / out),
        // not an exact 2x when the input is not a multiple of 32.
        let feat32_up = resample(&feat32_sum, Filter::Nearest, size(&feat16)?)?;
        let feat32_up = self.conv_head32.forward(&feat32_up)?.relu()?;
        let feat16_sum = (self.arm16.forward(&feat16)? + &feat32_up)?;
        let feat16_up = resample(&feat16_sum, Filter::Nearest, size(&feat8)?)?;
        let feat16_up = self.conv_head16.forward(&feat16_up)?.relu()?;
        Ok((feat8, feat16_up, feat32_up))
    }
}

/// Upstream `FeatureFusionModule`: concatenation, ConvBNReLU, and a
/// squeeze-excitation gate with a residual (`feat * atten + feat`).
#[derive(Debug, Clone)]
struct FeatureFusion {
    convblk: ConvBn,
    conv1: Conv2d,
    conv2: Conv2d,
}

impl FeatureFusion {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (c_in, c_out, mid) = (cfg.ffm_in(), cfg.ffm_out, cfg.ffm_mid);
        let blk = vb.pp("convblk");
        Ok(Self {
            convblk: ConvBn::new(blk.pp("conv"), blk.pp("bn"), (c_in, c_out, 1), 1, 0, cfg.bn_eps)?,
            conv1: Conv2d::new(vb.get((mid, c_out, 1, 1), "conv1.weight")?, None, 1, 0)?,
            conv2: Conv2d::new(vb.get((c_out, mid, 1, 1), "conv2.weight")?, None, 1, 0)?,
        })
    }

    /// `fsp`: the ResNet 1/8 feature (first in the concatenation), `fcp`:
    /// the context feature.
    fn forward(&self, fsp: &Tensor, fcp: &Tensor) -> Result<Tensor> {
        let feat = self.convblk.forward(&Tensor::cat(&[fsp, fcp], 1)?)?.relu()?;
        let atten = self.conv1.forward(&global_mean(&feat)?)?.relu()?;
        let atten = candle_nn::ops::sigmoid(&self.conv2.forward(&atten)?)?;
        Ok((feat.broadcast_mul(&atten)? + &feat)?)
    }
}

/// Upstream `BiSeNetOutput`: ConvBNReLU 3x3, then a 1x1 convolution to the
/// class logits (at the feature's resolution).
#[derive(Debug, Clone)]
struct Head {
    conv: ConvBn,
    conv_out: Conv2d,
}

impl Head {
    fn new(vb: VarBuilder, c_in: usize, mid: usize, n_classes: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            conv: ConvBn::new(vb.pp("conv.conv"), vb.pp("conv.bn"), (c_in, mid, 3), 1, 1, eps)?,
            conv_out: Conv2d::new(vb.get((n_classes, mid, 1, 1), "conv_out.weight")?, None, 1, 0)?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.conv_out.forward(&self.conv.forward(xs)?.relu()?)
    }
}

/// Every intermediate of one forward pass (names as upstream's locals).
#[derive(Debug, Clone)]
pub struct Trace {
    /// ResNet `layer2` output (1/8), `feat_res8`.
    pub feat_res8: Tensor,
    /// Context path at 1/8 after `conv_head16`, `feat_cp8`.
    pub feat_cp8: Tensor,
    /// Context path at 1/16 after `conv_head32`, `feat_cp16`.
    pub feat_cp16: Tensor,
    /// Feature-fusion output (1/8).
    pub ffm_out: Tensor,
    /// Main head logits before upsampling (1/8).
    pub logits_lowres: Tensor,
    /// `conv_out16` logits before upsampling (on `feat_cp8`, 1/8).
    pub aux16_logits_lowres: Tensor,
    /// `conv_out32` logits before upsampling (on `feat_cp16`, 1/16).
    pub aux32_logits_lowres: Tensor,
    /// Main output `feat_out` at the input resolution.
    pub logits: Tensor,
}

/// The BiSeNet face-parsing network (upstream `BiSeNet`, eval mode).
#[derive(Debug, Clone)]
pub struct BiSeNet {
    cfg: Config,
    cp: ContextPath,
    ffm: FeatureFusion,
    conv_out: Head,
    conv_out16: Head,
    conv_out32: Head,
}

impl BiSeNet {
    /// Builds the network from weights under the checkpoint's key names
    /// (`cp.resnet.conv1.weight`, …; no `module.` prefix).
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (cp, n, eps) = (cfg.cp_width, cfg.n_classes, cfg.bn_eps);
        Ok(Self {
            cfg: cfg.clone(),
            cp: ContextPath::new(cfg, vb.pp("cp"))?,
            ffm: FeatureFusion::new(cfg, vb.pp("ffm"))?,
            conv_out: Head::new(vb.pp("conv_out"), cfg.ffm_out, cfg.conv_out_mid, n, eps)?,
            conv_out16: Head::new(vb.pp("conv_out16"), cp, cfg.aux_out_mid, n, eps)?,
            conv_out32: Head::new(vb.pp("conv_out32"), cp, cfg.aux_out_mid, n, eps)?,
        })
    }

    /// Builds the network from a state dict, reading the widths off the
    /// weight shapes and checking the keys strictly (see
    /// [`Config::check_state_dict`]).
    pub fn from_tensors(tensors: HashMap<String, Tensor>, device: &Device) -> Result<Self> {
        let cfg = Config::from_tensors(&tensors)?;
        Self::new(&cfg, VarBuilder::from_tensors(tensors, DType::F32, device))
    }

    /// Loads a checkpoint file (`.pth` state dict or `.safetensors`).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        Self::from_tensors(crate::torch::load(path)?, device)
    }

    /// The widths of this network.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Main-head logits at 1/8 of the input resolution.
    pub fn forward_lowres(&self, xs: &Tensor) -> Result<Tensor> {
        let (feat_res8, feat_cp8, _) = self.cp.forward(xs)?;
        self.conv_out.forward(&self.ffm.forward(&feat_res8, &feat_cp8)?)
    }

    /// Runs every part, including the training-only auxiliary heads (their
    /// low-resolution logits only), for checking against the reference.
    pub fn forward_trace(&self, xs: &Tensor) -> Result<Trace> {
        let (feat_res8, feat_cp8, feat_cp16) = self.cp.forward(xs)?;
        let ffm_out = self.ffm.forward(&feat_res8, &feat_cp8)?;
        let logits_lowres = self.conv_out.forward(&ffm_out)?;
        let logits = upsample_to_input(&logits_lowres, xs)?;
        Ok(Trace {
            aux16_logits_lowres: self.conv_out16.forward(&feat_cp8)?,
            aux32_logits_lowres: self.conv_out32.forward(&feat_cp16)?,
            feat_res8,
            feat_cp8,
            feat_cp16,
            ffm_out,
            logits_lowres,
            logits,
        })
    }
}

/// `F.interpolate(logits, (H, W), mode='bilinear', align_corners=True)`
/// (model.py `BiSeNet.forward`).
fn upsample_to_input(logits: &Tensor, xs: &Tensor) -> Result<Tensor> {
    resample(logits, Filter::BilinearAlignCorners, (xs.dim(D::Minus2)?, xs.dim(D::Minus1)?))
}

impl Module for BiSeNet {
    /// Normalised images `[N, 3, H, W]` -> class logits `[N, n_classes, H, W]`
    /// (upstream output `[0]`, `feat_out`).
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let run = || -> Result<Tensor> { upsample_to_input(&self.forward_lowres(xs)?, xs) };
        run().map_err(|e| match e {
            Error::Candle(e) => e,
            other => candle_core::Error::Msg(other.to_string()),
        })
    }
}

/// The seeded weights of [`demo`], under the real key names.
fn demo_weights(cfg: &Config, seed: u64) -> Result<crate::demo::SeededWeights> {
    let mut w = crate::demo::SeededWeights::new(seed);
    for (name, shape, dtype) in cfg.state_dict_shapes() {
        if dtype == DType::I64 {
            w.insert(&name, Tensor::zeros(shape.as_slice(), DType::I64, &Device::Cpu)?);
        } else if shape.len() == 4 {
            // He initialisation keeps activations O(1) through the ReLUs.
            let fan_in = (shape[1] * shape[2] * shape[3]) as f32;
            w.normal(&name, &shape, 0.0, (2.0 / fan_in).sqrt())?;
        } else if name.ends_with(".weight") {
            w.normal(&name, &shape, 1.0, 0.1)?;
        } else if name.ends_with(".running_var") {
            w.constant(&name, &shape, 1.0)?;
        } else if name.ends_with(".running_mean") {
            w.constant(&name, &shape, 0.0)?;
        } else {
            w.normal(&name, &shape, 0.0, 0.1)?;
        }
    }
    Ok(w)
}

/// A tiny random-weight BiSeNet ([`Config::demo`]) under the real key names,
/// identical for the same `seed` on every platform. Its parses mean nothing
/// (see [`crate::demo::DEMO_LABEL`]).
pub fn demo(seed: u64, device: &Device) -> Result<BiSeNet> {
    let cfg = Config::demo();
    BiSeNet::new(&cfg, demo_weights(&cfg, seed)?.into_var_builder(device))
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use candle_core::Var;

    const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/bisenet");

    /// The tolerance of a case the directory's `tolerances.json` names is
    /// 10× the figure stated there: the shipped figure gives the stated
    /// atol, and a directory stating a far smaller error fails the case.
    #[test]
    fn tolerances_come_from_the_directory() -> Result<()> {
        let report = check_fixture(std::path::Path::new(FIXTURE), &Device::Cpu)?;
        let case = report.cases.iter().find(|c| c.name == "logits").expect("the case ran");
        assert!((case.atol - 10.0 * 1.700000e-05).abs() < 1e-15, "{}", report.table());
        let dir = tempfile::tempdir().expect("a temp dir");
        for entry in std::fs::read_dir(FIXTURE).expect("the fixture") {
            let path = entry.expect("an entry").path();
            std::fs::copy(&path, dir.path().join(path.file_name().expect("a name"))).expect("copied");
        }
        std::fs::write(dir.path().join("tolerances.json"), r#"{"f32_error": {"logits": 1e-15}}"#).expect("written");
        let strict = check_fixture(dir.path(), &Device::Cpu)?;
        let failed: Vec<&str> = strict.failures().map(|c| c.name.as_str()).collect();
        assert!(failed.contains(&"logits"), "{}", strict.table());
        Ok(())
    }

    #[test]
    fn fixture_matches_reference() -> Result<()> {
        // Both checkpoints (torch zip and the pre-1.6 legacy format) load and
        // every case passes.
        let report = check_fixture(Path::new(FIXTURE), &Device::Cpu)?;
        println!("{}", report.table());
        assert!(report.passed(), "{}", report.table());
        assert!(report.cases.len() > 15, "{}", report.table());
        assert!(report.cases.iter().any(|c| c.name == fixture::LEGACY_CASE));
        Ok(())
    }

    #[test]
    fn missing_fixture_files_and_cases_are_reported() -> Result<()> {
        let dir = tempfile::tempdir().expect("temp dir");
        let report = check_fixture(dir.path(), &Device::Cpu)?;
        assert!(!report.passed());
        assert_eq!(report.missing, vec!["model.pth", "cases.safetensors"]);
        // A cases file holding only the rect input: every other tensor is missing.
        std::fs::copy(Path::new(FIXTURE).join("model.pth"), dir.path().join("model.pth"))
            .map_err(|e| Error::io("copying", dir.path(), e))?;
        let cases = candle_core::safetensors::load(Path::new(FIXTURE).join("cases.safetensors"), &Device::Cpu)?;
        let only = HashMap::from([("rect_input".to_string(), cases["rect_input"].clone())]);
        candle_core::safetensors::save(&only, dir.path().join("cases.safetensors"))?;
        let report = check_fixture(dir.path(), &Device::Cpu)?;
        assert!(!report.passed());
        assert!(report.missing.iter().any(|m| m == "rect_logits"), "{:?}", report.missing);
        assert!(report.missing.iter().any(|m| m == "grad_hair_objective_wrt_input"));
        assert!(!report.missing.iter().any(|m| m == "rect_input"));
        Ok(())
    }

    #[test]
    fn real_layout_is_accepted() -> Result<()> {
        #[derive(serde::Deserialize)]
        struct Entry {
            name: String,
            shape: Vec<usize>,
            dtype: String,
        }
        #[derive(serde::Deserialize)]
        struct Keys {
            keys: Vec<Entry>,
        }
        let path = Path::new(FIXTURE).join("bisenet_19.keys.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io("reading", &path, e))?;
        let keys: Keys = serde_json::from_str(&text).expect("keys file is valid JSON");
        let mut tensors = HashMap::new();
        for k in &keys.keys {
            let dtype = if k.dtype == "int64" { DType::I64 } else { DType::F32 };
            tensors.insert(k.name.clone(), Tensor::zeros(k.shape.as_slice(), dtype, &Device::Cpu)?);
        }
        let cfg = Config::from_tensors(&tensors)?;
        assert_eq!(cfg, Config::face_parsing_19());
        // Same names, shapes, dtypes and order as the real state dict.
        let ours: Vec<(String, Vec<usize>, String)> = cfg
            .state_dict_shapes()
            .into_iter()
            .map(|(n, s, d)| (n, s, if d == DType::I64 { "int64" } else { "float32" }.to_string()))
            .collect();
        let theirs: Vec<_> = keys.keys.into_iter().map(|k| (k.name, k.shape, k.dtype)).collect();
        assert_eq!(ours, theirs);
        let net = BiSeNet::from_tensors(tensors, &Device::Cpu)?;
        let logits = net.forward(&Tensor::zeros((1, 3, 40, 36), DType::F32, &Device::Cpu)?)?;
        assert_eq!(logits.dims(), &[1, 19, 40, 36]);
        Ok(())
    }

    #[test]
    fn unexpected_and_missing_keys_are_rejected() -> Result<()> {
        let mut tensors = demo_weights(&Config::demo(), 1)?.tensors().clone();
        tensors.insert("module.extra".into(), Tensor::zeros(1, DType::F32, &Device::Cpu)?);
        let err = Config::from_tensors(&tensors).expect_err("extra key").to_string();
        assert!(err.contains("'module.extra'"), "{err}");
        tensors.remove("module.extra");
        tensors.remove("ffm.conv2.weight");
        assert!(Config::from_tensors(&tensors).is_err());
        Ok(())
    }

    #[test]
    fn demo_is_deterministic() -> Result<()> {
        let dev = Device::Cpu;
        let xs = Tensor::randn(0f32, 1., (1, 3, 40, 48), &dev)?;
        let run = |seed| -> Result<Vec<f32>> { Ok(demo(seed, &dev)?.forward(&xs)?.flatten_all()?.to_vec1::<f32>()?) };
        let a = run(3)?;
        assert_eq!(a.len(), 19 * 40 * 48);
        assert!(a.iter().all(|v| v.is_finite()));
        assert_eq!(a, run(3)?);
        assert_ne!(a, run(4)?);
        Ok(())
    }

    #[test]
    fn class_names_resolve() {
        assert_eq!(class_index("hair"), Some(17));
        assert_eq!(class_index("background"), Some(0));
        assert_eq!(class_index("u_lip"), Some(12));
        assert_eq!(class_index("l_lip"), Some(13));
        assert_eq!(class_index("Eyeglass"), Some(6));
        assert_eq!(class_index("necklace"), Some(15));
        assert_eq!(class_index("beard"), None);
        for (i, n) in CLASS_NAMES.iter().enumerate() {
            assert_eq!(class_index(n), Some(i));
        }
        let err = class_index_or_err("beard").expect_err("unknown").to_string();
        assert!(err.contains("'beard'") && err.contains("hair") && err.contains("hat"), "{err}");
    }

    #[test]
    fn masks_follow_the_argmax_and_the_softmax() -> Result<()> {
        let dev = Device::Cpu;
        // Two pixels, three classes: argmax 2 then 0.
        let logits = Tensor::new(&[[[[0f32, 3.]], [[1., 1.]], [[2., -1.]]]], &dev)?;
        let hard = hard_mask(&logits, &[2, 1])?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(hard, vec![1.0, 0.0]);
        let probs = probabilities(&logits)?;
        let soft = soft_mask(&probs, &[0, 1, 2, 2])?.flatten_all()?.to_vec1::<f32>()?;
        assert!(soft.iter().all(|v| (v - 1.0).abs() < 1e-6), "{soft:?}");
        assert!(soft_mask(&probs, &[3]).is_err());
        Ok(())
    }

    #[test]
    fn generator_images_are_rescaled_resized_and_normalised() -> Result<()> {
        let dev = Device::Cpu;
        // -1, 0 and 1 become 0, 0.5 and 1 before normalisation.
        let xs = Tensor::new(&[-1f32, 0., 1.], &dev)?.reshape((1, 3, 1, 1))?.repeat((1, 1, 4, 6))?;
        let out = preprocess_generator_image(&xs, (8, 12))?;
        assert_eq!(out.dims(), &[1, 3, 8, 12]);
        let v = out.mean((2, 3))?.flatten_all()?.to_vec1::<f32>()?;
        for (c, (got, x01)) in v.iter().zip([0f32, 0.5, 1.0]).enumerate() {
            let want = (x01 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
            assert!((got - want).abs() < 1e-5, "channel {c}: {got} vs {want}");
        }
        // Differentiable: every input pixel receives gradient.
        let var = Var::from_tensor(&xs)?;
        let grads = preprocess_generator_image(var.as_tensor(), (8, 12))?.sum_all()?.backward()?;
        let g = grads.get(&var).expect("input takes part").flatten_all()?.to_vec1::<f32>()?;
        assert!(g.iter().all(|v| *v > 0.0), "{g:?}");
        Ok(())
    }

    /// d/dx sum(prob_hair * R) against central differences, in f64, at a
    /// size whose height and width leave different remainders under the
    /// strided convolutions (the case candle's conv backward gets wrong).
    #[test]
    fn gradient_matches_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let cfg = Config::demo();
        let vb = VarBuilder::from_tensors(demo_weights(&cfg, 11)?.tensors().clone(), DType::F64, &dev);
        let net = BiSeNet::new(&cfg, vb)?;
        let (h, w) = (33, 32);
        let xs = Tensor::randn(0f64, 1., (1, 3, h, w), &dev)?;
        let r = Tensor::randn(0f64, 1., (1, h, w), &dev)?;
        let objective = |xs: &Tensor| -> Result<Tensor> {
            let probs = probabilities(&net.forward(xs)?)?;
            Ok((soft_mask(&probs, &[17])? * &r)?.sum_all()?)
        };
        let var = Var::from_tensor(&xs)?;
        let grads = objective(var.as_tensor())?.backward()?;
        let grad = grads.get(&var).expect("the input takes part").flatten_all()?.to_vec1::<f64>()?;
        let base = xs.flatten_all()?.to_vec1::<f64>()?;
        let eps = 1e-5;
        for idx in [0, 5 * w + 7, h * w + 3 * w + 31, 2 * h * w + 32 * w + 31, 2 * h * w + 16 * w] {
            let at = |delta: f64| -> Result<f64> {
                let mut v = base.clone();
                v[idx] += delta;
                Ok(objective(&Tensor::from_vec(v, (1, 3, h, w), &dev)?)?.to_scalar::<f64>()?)
            };
            let fd = (at(eps)? - at(-eps)?) / (2.0 * eps);
            let tol = 1e-6 + 1e-4 * fd.abs();
            assert!((fd - grad[idx]).abs() < tol, "pixel {idx}: autograd {} vs fd {fd}", grad[idx]);
        }
        Ok(())
    }
}

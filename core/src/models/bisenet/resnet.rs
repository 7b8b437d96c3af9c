//! The ResNet-18 backbone of BiSeNet's context path, and the convolution
//! building blocks shared by the rest of the network.
//!
//! Reference: zllrunning/face-parsing.PyTorch `resnet.py`
//! <https://github.com/zllrunning/face-parsing.PyTorch/blob/d2e684cf1588b46145635e8fe7bcc29544e5537e/resnet.py>.
//! It is torchvision's ResNet-18 without the classifier, returning the
//! 1/8, 1/16 and 1/32 feature maps.
//!
//! Every op used here has a backward pass: the convolutions are the op
//! layer's [`Conv2d`] (input gradient only, correct for every input size),
//! the rest are Candle ops (broadcast add/mul, ReLU, `index_select`,
//! `maximum`, `pad_with_zeros`). Candle's own `max_pool2d` is avoided: its
//! backward refuses a kernel that differs from the stride (3 vs 2 here) and
//! it has no padding.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::ops::{BatchNormParams, Conv2d};
use crate::Result;

/// A bias-free convolution followed by an eval-mode BatchNorm, folded into
/// one convolution plus a per-channel bias.
///
/// Upstream's `ConvBNReLU` (without its ReLU), the ResNet `convN`/`bnN`
/// pairs, the `downsample` pair and ARM's `conv_atten`/`bn_atten`.
#[derive(Debug, Clone)]
pub(super) struct ConvBn {
    conv: Conv2d,
}

impl ConvBn {
    /// Reads `<conv>.weight` `[c_out, c_in, k, k]` and the BN's four
    /// tensors; `num_batches_tracked` is training bookkeeping and unused.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        conv: VarBuilder,
        bn: VarBuilder,
        (c_in, c_out, k): (usize, usize, usize),
        stride: usize,
        padding: usize,
        eps: f64,
    ) -> Result<Self> {
        let weight = conv.get((c_out, c_in, k, k), "weight")?;
        let (weight, bias) = BatchNormParams::load(c_out, eps, bn)?.fold_into(&weight, None)?;
        let conv = Conv2d::new(weight, Some(bias), stride, padding)?;
        Ok(Self { conv })
    }

    /// `BN(conv(xs))`.
    pub(super) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.conv.forward(xs)
    }
}

/// 3x3 max pooling, stride 2, padding 1, on a non-negative input.
///
/// Upstream `nn.MaxPool2d(kernel_size=3, stride=2, padding=1)` after the
/// stem's ReLU (`resnet.py` L67). Its input is non-negative, so zero padding
/// never wins a maximum and gives the same values as PyTorch's `-inf`
/// padding. The 3x3 maximum is separable: rows first, then columns, each
/// the elementwise maximum of three strided `index_select`s.
pub(super) fn max_pool_3x3_s2_p1(xs: &Tensor) -> Result<Tensor> {
    let xs = xs.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
    let pool_axis = |xs: &Tensor, dim: usize| -> Result<Tensor> {
        let n_padded = xs.dim(dim)?;
        // floor((n + 2 - 3) / 2) + 1 windows.
        let n_out = (n_padded - 3) / 2 + 1;
        let mut out: Option<Tensor> = None;
        for offset in 0..3u32 {
            let ids: Vec<u32> = (0..n_out as u32).map(|i| offset + 2 * i).collect();
            let ids = Tensor::new(ids.as_slice(), xs.device())?;
            let taps = xs.index_select(&ids, dim)?;
            out = Some(match out {
                None => taps,
                Some(acc) => acc.maximum(&taps)?,
            });
        }
        Ok(out.expect("three taps were taken"))
    };
    pool_axis(&pool_axis(&xs, 2)?, 3)
}

/// torchvision's `BasicBlock` (`resnet.py` L22-L46).
#[derive(Debug, Clone)]
struct BasicBlock {
    conv1: ConvBn,
    conv2: ConvBn,
    downsample: Option<ConvBn>,
}

impl BasicBlock {
    fn new(vb: VarBuilder, c_in: usize, c_out: usize, stride: usize, eps: f64) -> Result<Self> {
        let conv1 = ConvBn::new(vb.pp("conv1"), vb.pp("bn1"), (c_in, c_out, 3), stride, 1, eps)?;
        let conv2 = ConvBn::new(vb.pp("conv2"), vb.pp("bn2"), (c_out, c_out, 3), 1, 1, eps)?;
        // resnet.py L33: a projection shortcut whenever the shape changes.
        let downsample = if c_in != c_out || stride != 1 {
            let ds = vb.pp("downsample");
            Some(ConvBn::new(ds.pp("0"), ds.pp("1"), (c_in, c_out, 1), stride, 0, eps)?)
        } else {
            None
        };
        Ok(Self { conv1, conv2, downsample })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let residual = self.conv2.forward(&self.conv1.forward(xs)?.relu()?)?;
        let shortcut = match &self.downsample {
            Some(ds) => ds.forward(xs)?,
            None => xs.clone(),
        };
        Ok((shortcut + residual)?.relu()?)
    }
}

/// ResNet-18 without `avgpool`/`fc`, returning `(feat8, feat16, feat32)`
/// (`resnet.py` L49-L76).
#[derive(Debug, Clone)]
pub(super) struct Resnet18 {
    stem: ConvBn,
    layers: Vec<Vec<BasicBlock>>,
}

impl Resnet18 {
    /// `widths`: the stem/`layer1` width, then `layer2..4`; `blocks`: blocks
    /// per layer (2 each for ResNet-18).
    pub(super) fn new(vb: VarBuilder, widths: [usize; 4], blocks: [usize; 4], eps: f64) -> Result<Self> {
        let stem = ConvBn::new(vb.pp("conv1"), vb.pp("bn1"), (3, widths[0], 7), 2, 3, eps)?;
        let mut layers = Vec::with_capacity(4);
        let mut c_in = widths[0];
        for (k, (&c_out, &n)) in widths.iter().zip(&blocks).enumerate() {
            let vb_layer = vb.pp(format!("layer{}", k + 1));
            let stride = if k == 0 { 1 } else { 2 };
            let mut layer = Vec::with_capacity(n);
            for i in 0..n {
                let (ci, s) = if i == 0 { (c_in, stride) } else { (c_out, 1) };
                layer.push(BasicBlock::new(vb_layer.pp(i.to_string()), ci, c_out, s, eps)?);
            }
            layers.push(layer);
            c_in = c_out;
        }
        Ok(Self { stem, layers })
    }

    /// `[N, 3, H, W]` -> the outputs of `layer2`, `layer3`, `layer4`.
    pub(super) fn forward(&self, xs: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let mut xs = max_pool_3x3_s2_p1(&self.stem.forward(xs)?.relu()?)?;
        let mut feats = Vec::with_capacity(3);
        for (k, layer) in self.layers.iter().enumerate() {
            for block in layer {
                xs = block.forward(&xs)?;
            }
            if k > 0 {
                feats.push(xs.clone());
            }
        }
        let mut feats = feats.into_iter();
        let mut next = || feats.next().expect("four layers give three feature maps");
        Ok((next(), next(), next()))
    }
}

//! The two CLIP towers: a pre-LN transformer encoder shared by both, the
//! text transformer (token + position embeddings, causal mask, final norm,
//! pooling at the end-of-text token) and the vision transformer (patch
//! convolution, class token, `pre_layrnorm`, `post_layernorm` on the class
//! token).
//!
//! Reference: Hugging Face `transformers`
//! [`models/clip/modeling_clip.py`](https://github.com/huggingface/transformers/blob/main/src/transformers/models/clip/modeling_clip.py)
//! (`CLIPAttention`, `CLIPMLP`, `CLIPEncoderLayer`, `CLIPTextTransformer`,
//! `CLIPVisionEmbeddings`, `CLIPVisionTransformer`).
//!
//! Every op here has a backward pass in candle 0.11, so a loss on the
//! embeddings reaches the pixels: layer norm is composed from primitive ops
//! (`candle_nn::ops::layer_norm_slow`) because the fused `candle_nn::LayerNorm`
//! on contiguous input silently detaches its output, and softmax is the
//! composed `candle_nn::ops::softmax`, not the fused `softmax_last_dim`.

use candle_core::{DType, Device, IndexOp, Module, Tensor, D};
use candle_nn::{Embedding, VarBuilder};

use super::{Activation, TextConfig, VisionConfig};
use crate::ops::{Conv2d, Linear};
use crate::{Error, Result};

/// Layer norm over the last axis, built from differentiable primitive ops.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Loads `weight` and `bias` of width `dim`.
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self { weight: vb.get(dim, "weight")?, bias: vb.get(dim, "bias")?, eps })
    }
}

impl Module for LayerNorm {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        // Biased variance, as torch's LayerNorm.
        candle_nn::ops::layer_norm_slow(xs, &self.weight, &self.bias, self.eps as f32)
    }
}

impl Activation {
    fn apply(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(match self {
            // x · sigmoid(1.702 x): OpenAI's approximation, which CLIP was trained with.
            Self::QuickGelu => (xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?)?,
            Self::Gelu => xs.gelu_erf()?,
        })
    }
}

/// `nn.Linear(d_in, d_out)` from `<vb>.weight` `[d_out, d_in]` and `<vb>.bias`.
fn linear(d_in: usize, d_out: usize, vb: VarBuilder) -> Result<Linear> {
    Linear::new(vb.get((d_out, d_in), "weight")?, Some(vb.get(d_out, "bias")?))
}

/// Multi-head self-attention with biased q/k/v/out projections.
#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
    head_dim: usize,
    scale: f64,
}

impl Attention {
    fn new(dim: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        if heads == 0 || !dim.is_multiple_of(heads) {
            return Err(Error::Config(format!(
                "hidden size {dim} is not divisible by {heads} attention heads; fix num_attention_heads"
            )));
        }
        let head_dim = dim / heads;
        Ok(Self {
            q_proj: linear(dim, dim, vb.pp("q_proj"))?,
            k_proj: linear(dim, dim, vb.pp("k_proj"))?,
            v_proj: linear(dim, dim, vb.pp("v_proj"))?,
            out_proj: linear(dim, dim, vb.pp("out_proj"))?,
            heads,
            head_dim,
            scale: (head_dim as f64).powf(-0.5),
        })
    }

    /// `xs` `[B, T, D]`; `mask` broadcastable to `[B, H, T, T]`, added to the scores.
    fn forward(&self, xs: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, t, d) = xs.dims3()?;
        // [B, T, D] -> [B, H, T, hd], as CLIPAttention's view + transpose(1, 2).
        let split = |x: Tensor| -> Result<Tensor> {
            Ok(x.reshape((b, t, self.heads, self.head_dim))?.transpose(1, 2)?.contiguous()?)
        };
        let q = split((self.q_proj.forward(xs)? * self.scale)?)?;
        let k = split(self.k_proj.forward(xs)?)?;
        let v = split(self.v_proj.forward(xs)?)?;
        let scores = q.matmul(&k.t()?)?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let out = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d))?;
        self.out_proj.forward(&out)
    }
}

/// `fc2(act(fc1(x)))`.
#[derive(Debug, Clone)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl Mlp {
    fn new(dim: usize, hidden: usize, act: Activation, vb: VarBuilder) -> Result<Self> {
        Ok(Self { fc1: linear(dim, hidden, vb.pp("fc1"))?, fc2: linear(hidden, dim, vb.pp("fc2"))?, act })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.act.apply(&self.fc1.forward(xs)?)?)
    }
}

/// Hyper-parameters shared by the encoders of both towers.
#[derive(Debug, Clone, Copy)]
pub(super) struct EncoderShape {
    pub dim: usize,
    pub mlp: usize,
    pub layers: usize,
    pub heads: usize,
    pub eps: f64,
    pub act: Activation,
}

/// One pre-LN residual block (`CLIPEncoderLayer`).
#[derive(Debug, Clone)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: Attention,
    layer_norm2: LayerNorm,
    mlp: Mlp,
}

impl EncoderLayer {
    fn new(s: &EncoderShape, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            layer_norm1: LayerNorm::new(s.dim, s.eps, vb.pp("layer_norm1"))?,
            self_attn: Attention::new(s.dim, s.heads, vb.pp("self_attn"))?,
            layer_norm2: LayerNorm::new(s.dim, s.eps, vb.pp("layer_norm2"))?,
            mlp: Mlp::new(s.dim, s.mlp, s.act, vb.pp("mlp"))?,
        })
    }

    fn forward(&self, xs: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let h = self.self_attn.forward(&self.layer_norm1.forward(xs)?, mask)?;
        let xs = (xs + h)?;
        let h = self.mlp.forward(&self.layer_norm2.forward(&xs)?)?;
        Ok((xs + h)?)
    }
}

/// The stack of encoder layers (`CLIPEncoder`, prefix `encoder.layers.{i}`).
#[derive(Debug, Clone)]
struct Encoder {
    layers: Vec<EncoderLayer>,
}

impl Encoder {
    fn new(s: &EncoderShape, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("layers");
        let layers = (0..s.layers).map(|i| EncoderLayer::new(s, vb.pp(i))).collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    fn forward(&self, xs: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let mut xs = xs.clone();
        for layer in &self.layers {
            xs = layer.forward(&xs, mask)?;
        }
        Ok(xs)
    }
}

/// `[T, T]` additive causal mask: position i sees only j ≤ i.
fn causal_mask(t: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> =
        (0..t).flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 })).collect();
    Ok(Tensor::from_vec(mask, (t, t), device)?.to_dtype(dtype)?)
}

/// The outputs of the text tower.
#[derive(Debug, Clone)]
pub struct TextStates {
    /// `final_layer_norm` of every position, `[B, T, D]`.
    pub last_hidden_state: Tensor,
    /// The row at the end-of-text token, `[B, D]`.
    pub pooled: Tensor,
    /// The pooling position of each sequence, `[B]`.
    pub eos_index: Vec<usize>,
}

/// The text transformer (`text_model.*`).
#[derive(Debug, Clone)]
pub struct ClipTextTransformer {
    token_embedding: Embedding,
    position_embedding: Tensor,
    encoder: Encoder,
    final_layer_norm: LayerNorm,
    eos_token_id: u32,
}

impl ClipTextTransformer {
    /// Loads the tower from `vb` (the `text_model` prefix).
    pub fn new(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        let emb = vb.pp("embeddings");
        let token = emb.get((cfg.vocab_size, cfg.hidden_size), "token_embedding.weight")?;
        let position_embedding =
            emb.get((cfg.max_position_embeddings, cfg.hidden_size), "position_embedding.weight")?;
        let shape = EncoderShape {
            dim: cfg.hidden_size,
            mlp: cfg.intermediate_size,
            layers: cfg.num_hidden_layers,
            heads: cfg.num_attention_heads,
            eps: cfg.layer_norm_eps,
            act: cfg.hidden_act,
        };
        Ok(Self {
            token_embedding: Embedding::new(token, cfg.hidden_size),
            position_embedding,
            encoder: Encoder::new(&shape, vb.pp("encoder"))?,
            final_layer_norm: LayerNorm::new(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("final_layer_norm"))?,
            eos_token_id: cfg.eos_token_id,
        })
    }

    /// The pooling position of each row of `input_ids` (`[B, T]`, u32 or i64).
    ///
    /// As `CLIPTextTransformer.forward`: with the legacy `eos_token_id == 2`
    /// the position is `argmax(ids)`, otherwise the first position holding
    /// `eos_token_id`. A row without that token falls back to `argmax`, which
    /// for CLIP's vocabulary (end-of-text is the largest id) is the same row.
    /// Both take the first maximum, so padding with end-of-text is safe.
    #[allow(clippy::disallowed_methods, reason = "token ids, read once per prompt when it is encoded")]
    pub fn eos_index(&self, input_ids: &Tensor) -> Result<Vec<usize>> {
        let ids = input_ids.to_dtype(DType::I64)?.to_vec2::<i64>()?;
        let argmax = |row: &[i64]| {
            let mut best = 0;
            for (j, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = j;
                }
            }
            best
        };
        Ok(ids
            .iter()
            .map(|row| {
                let first_eos = row.iter().position(|&v| v == i64::from(self.eos_token_id));
                match first_eos {
                    Some(j) if self.eos_token_id != 2 => j,
                    _ => argmax(row),
                }
            })
            .collect())
    }

    /// Runs the tower on `input_ids` `[B, T]` (T ≤ max positions) with the
    /// causal mask only: padding after the end-of-text token changes only the
    /// padded rows of `last_hidden_state`, never the pooled row.
    pub fn forward_states(&self, input_ids: &Tensor) -> Result<TextStates> {
        let (b, t) = input_ids.dims2()?;
        let max_t = self.position_embedding.dim(0)?;
        if t > max_t {
            return Err(Error::Config(format!("{t} tokens exceed the text context of {max_t}; truncate the prompt")));
        }
        let tokens = self.token_embedding.forward(input_ids)?;
        let xs = tokens.broadcast_add(&self.position_embedding.narrow(0, 0, t)?)?;
        let mask = causal_mask(t, xs.dtype(), xs.device())?;
        let xs = self.encoder.forward(&xs, Some(&mask))?;
        let last_hidden_state = self.final_layer_norm.forward(&xs)?;
        let eos_index = self.eos_index(input_ids)?;
        let rows: Vec<u32> = eos_index.iter().enumerate().map(|(i, &j)| (i * t + j) as u32).collect();
        let rows = Tensor::from_vec(rows, b, input_ids.device())?;
        let d = last_hidden_state.dim(2)?;
        let pooled = last_hidden_state.reshape((b * t, d))?.index_select(&rows, 0)?;
        Ok(TextStates { last_hidden_state, pooled, eos_index })
    }
}

/// The outputs of the vision tower.
#[derive(Debug, Clone)]
pub struct VisionStates {
    /// Class token + patch embeddings + position embeddings, `[B, 1 + N, D]`.
    pub embeddings: Tensor,
    /// The encoder output before `post_layernorm`, `[B, 1 + N, D]`.
    pub last_hidden_state: Tensor,
    /// `post_layernorm` of the class token, `[B, D]`.
    pub pooled: Tensor,
}

/// The vision transformer (`vision_model.*`).
#[derive(Debug, Clone)]
pub struct ClipVisionTransformer {
    /// The bias-free stride-`p` `p x p` patch convolution.
    patch_embedding: Conv2d,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    encoder: Encoder,
    post_layernorm: LayerNorm,
    image_size: usize,
}

impl ClipVisionTransformer {
    /// Loads the tower from `vb` (the `vision_model` prefix).
    pub fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let (d, p) = (cfg.hidden_size, cfg.patch_size);
        if p == 0 || !cfg.image_size.is_multiple_of(p) {
            return Err(Error::Config(format!(
                "image size {} is not a multiple of the patch size {p}",
                cfg.image_size
            )));
        }
        let grid = cfg.image_size / p;
        let emb = vb.pp("embeddings");
        let shape = EncoderShape {
            dim: d,
            mlp: cfg.intermediate_size,
            layers: cfg.num_hidden_layers,
            heads: cfg.num_attention_heads,
            eps: cfg.layer_norm_eps,
            act: cfg.hidden_act,
        };
        Ok(Self {
            patch_embedding: Conv2d::new(emb.get((d, cfg.num_channels, p, p), "patch_embedding.weight")?, None, p, 0)?,
            class_embedding: emb.get(d, "class_embedding")?,
            position_embedding: emb.get((grid * grid + 1, d), "position_embedding.weight")?,
            // "pre_layrnorm" is the real key name, misspelt in the checkpoint.
            pre_layrnorm: LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("pre_layrnorm"))?,
            encoder: Encoder::new(&shape, vb.pp("encoder"))?,
            post_layernorm: LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("post_layernorm"))?,
            image_size: cfg.image_size,
        })
    }

    /// The tower's input size (224 for ViT-B/32).
    pub fn image_size(&self) -> usize {
        self.image_size
    }

    /// `CLIPVisionEmbeddings`: patches as a stride-`p` convolution, flattened
    /// row-major, the class token prepended, position embeddings added.
    pub fn embeddings(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (b, _c, h, w) = pixel_values.dims4()?;
        if (h, w) != (self.image_size, self.image_size) {
            return Err(Error::BadShape {
                name: "pixel_values".into(),
                expected: format!("[B, C, {0}, {0}]; resize with clip::preprocess first", self.image_size),
                got: pixel_values.dims().to_vec(),
            });
        }
        let patches = self.patch_embedding.forward(pixel_values)?;
        let patches = patches.flatten_from(2)?.transpose(1, 2)?; // [B, N, D]
        let d = self.class_embedding.dim(0)?;
        let class = self.class_embedding.reshape((1, 1, d))?.broadcast_as((b, 1, d))?;
        let xs = Tensor::cat(&[&class, &patches], 1)?;
        Ok(xs.broadcast_add(&self.position_embedding)?)
    }

    /// Runs the tower on normalised `pixel_values` `[B, C, S, S]`.
    pub fn forward_states(&self, pixel_values: &Tensor) -> Result<VisionStates> {
        let embeddings = self.embeddings(pixel_values)?;
        let xs = self.pre_layrnorm.forward(&embeddings)?;
        let last_hidden_state = self.encoder.forward(&xs, None)?;
        let pooled = self.post_layernorm.forward(&last_hidden_state.i((.., 0))?)?;
        Ok(VisionStates { embeddings, last_hidden_state, pooled })
    }
}

impl Module for ClipVisionTransformer {
    /// The pooled class token `[B, D]` of `pixel_values`.
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_states(xs).map(|s| s.pooled).map_err(candle_core::Error::wrap)
    }
}

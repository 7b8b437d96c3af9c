//! CLIP (ViT-B/32 topology): image and text towers, tokenizer, differentiable
//! preprocessing and the CLIP loss `1 - cos(E_img(x), E_txt(t))`.
//!
//! CLIP embeds images and texts in one space; StyleCLIP-style editing pushes
//! a generator's output towards a text prompt by backpropagating the cosine
//! distance between the two embeddings to the pixels, so every op here is
//! differentiable with respect to the input image.
//!
//! - Paper: Radford et al. 2021, "Learning Transferable Visual Models From
//!   Natural Language Supervision", <https://arxiv.org/abs/2103.00020>.
//! - Reference implementation: Hugging Face `transformers` `CLIPModel`,
//!   [`modeling_clip.py`](https://github.com/huggingface/transformers/blob/main/src/transformers/models/clip/modeling_clip.py);
//!   the key names here are its `state_dict` names.
//! - Checkpoint: [`openai/clip-vit-base-patch32`](https://huggingface.co/openai/clip-vit-base-patch32)
//!   `model.safetensors` + `tokenizer.json` (+ `config.json`).
//!
//! The towers live in [`transformer`], the tokenizer in [`tokenizer`], the
//! `[-1, 1]`-image-to-`pixel_values` path in [`preprocess`], the fixture
//! check in [`fixture`].

pub mod fixture;
pub mod preprocess;
pub mod tokenizer;
pub mod transformer;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor, D};
use candle_nn::VarBuilder;
use serde::Deserialize;

use crate::demo::SeededWeights;
use crate::ops::Linear;
use crate::{Error, Result};

pub use fixture::check_fixture;
pub use preprocess::{prepare, preprocess, Resize};
pub use tokenizer::{ClipTokenizer, Padding, TokenBatch, CONTEXT_LENGTH};
pub use transformer::{ClipTextTransformer, ClipVisionTransformer, TextStates, VisionStates};

/// The MLP activation (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Activation {
    /// `x · sigmoid(1.702 x)`, what every OpenAI CLIP uses.
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// The exact (erf) GELU.
    #[serde(rename = "gelu")]
    Gelu,
}

/// The text tower's hyper-parameters (`text_config`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct TextConfig {
    /// Number of tokens (49408).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Number of attention heads.
    pub num_attention_heads: usize,
    /// Context length (77).
    pub max_position_embeddings: usize,
    /// MLP activation.
    pub hidden_act: Activation,
    /// Layer-norm epsilon.
    pub layer_norm_eps: f64,
    /// The end-of-text id used for pooling; 2 selects HF's legacy `argmax(ids)` rule.
    pub eos_token_id: u32,
}

impl Default for TextConfig {
    /// `CLIPTextConfig()` defaults.
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            eos_token_id: 49407,
        }
    }
}

/// The vision tower's hyper-parameters (`vision_config`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct VisionConfig {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Number of attention heads.
    pub num_attention_heads: usize,
    /// Input channels (3).
    pub num_channels: usize,
    /// Input side (224).
    pub image_size: usize,
    /// Patch side (32).
    pub patch_size: usize,
    /// MLP activation.
    pub hidden_act: Activation,
    /// Layer-norm epsilon.
    pub layer_norm_eps: f64,
}

impl Default for VisionConfig {
    /// `CLIPVisionConfig()` defaults.
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }
}

/// CLIP's hyper-parameters, in the layout of a Hugging Face `config.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The text tower.
    pub text_config: TextConfig,
    /// The vision tower.
    pub vision_config: VisionConfig,
    /// Width of the shared embedding space.
    pub projection_dim: usize,
    /// Initial `logit_scale` (log of the temperature); the checkpoint's value wins.
    pub logit_scale_init_value: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self::vit_b_32()
    }
}

/// The head width every OpenAI CLIP uses; the only way to recover head counts
/// from weights, which do not store them.
const HEAD_DIM: usize = 64;

impl Config {
    /// OpenAI CLIP ViT-B/32,
    /// <https://huggingface.co/openai/clip-vit-base-patch32/blob/main/config.json>.
    pub fn vit_b_32() -> Self {
        Self {
            // The published config keeps the legacy eos_token_id 2 (pool at argmax).
            text_config: TextConfig { eos_token_id: 2, ..TextConfig::default() },
            vision_config: VisionConfig::default(),
            projection_dim: 512,
            logit_scale_init_value: 2.6592,
        }
    }

    /// The tiny configuration of [`demo`].
    pub fn demo() -> Self {
        Self {
            text_config: TextConfig {
                hidden_size: 32,
                intermediate_size: 64,
                num_hidden_layers: 1,
                num_attention_heads: 2,
                ..TextConfig::default()
            },
            vision_config: VisionConfig {
                hidden_size: 32,
                intermediate_size: 64,
                num_hidden_layers: 1,
                num_attention_heads: 2,
                ..VisionConfig::default()
            },
            projection_dim: 16,
            logit_scale_init_value: 100f64.ln(),
        }
    }

    /// Parses a Hugging Face `config.json` (missing fields take HF's defaults).
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::Config(format!("CLIP config.json: {e}")))
    }

    /// Reads a Hugging Face `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
        serde_json::from_str(&text)
            .map_err(|e| Error::Checkpoint { path: path.to_path_buf(), reason: format!("not a CLIP config.json: {e}") })
    }

    /// Infers the configuration from a checkpoint's tensors.
    ///
    /// Widths, depths, vocabulary, context, patch and image size come from
    /// the shapes. Head counts are not stored, so they assume OpenAI's head
    /// width of 64 (ViT-B/32: 12 vision, 8 text heads); a narrower net needs
    /// its `config.json`. The end-of-text id is taken as the last token of
    /// the vocabulary, which is where CLIP keeps it.
    pub fn from_tensors(tensors: &HashMap<String, Tensor>) -> Result<Self> {
        let dims = |name: &str| -> Result<Vec<usize>> {
            tensors
                .get(name)
                .map(|t| t.dims().to_vec())
                .ok_or_else(|| Error::MissingTensor { name: name.into(), hint: String::new() })
        };
        let layers = |prefix: &str| {
            tensors
                .keys()
                .filter_map(|k| k.strip_prefix(prefix)?.split('.').next()?.parse::<usize>().ok())
                .max()
                .map_or(0, |i| i + 1)
        };
        let heads = |width: usize| (width / HEAD_DIM).max(1);
        let tok = dims("text_model.embeddings.token_embedding.weight")?;
        let tpos = dims("text_model.embeddings.position_embedding.weight")?;
        let tfc1 = dims("text_model.encoder.layers.0.mlp.fc1.weight")?;
        let patch = dims("vision_model.embeddings.patch_embedding.weight")?;
        let vpos = dims("vision_model.embeddings.position_embedding.weight")?;
        let vfc1 = dims("vision_model.encoder.layers.0.mlp.fc1.weight")?;
        let proj = dims("visual_projection.weight")?;
        let (vocab, dt, dv, p) = (tok[0], tok[1], patch[0], patch[2]);
        let grid = ((vpos[0].saturating_sub(1)) as f64).sqrt().round() as usize;
        if grid * grid + 1 != vpos[0] {
            return Err(Error::BadShape {
                name: "vision_model.embeddings.position_embedding.weight".into(),
                expected: "[1 + g², D]: a class token plus a square patch grid".into(),
                got: vpos,
            });
        }
        Ok(Self {
            text_config: TextConfig {
                vocab_size: vocab,
                hidden_size: dt,
                intermediate_size: tfc1[0],
                num_hidden_layers: layers("text_model.encoder.layers."),
                num_attention_heads: heads(dt),
                max_position_embeddings: tpos[0],
                eos_token_id: vocab.saturating_sub(1) as u32,
                ..TextConfig::default()
            },
            vision_config: VisionConfig {
                hidden_size: dv,
                intermediate_size: vfc1[0],
                num_hidden_layers: layers("vision_model.encoder.layers."),
                num_attention_heads: heads(dv),
                num_channels: patch[1],
                image_size: grid * p,
                patch_size: p,
                ..VisionConfig::default()
            },
            projection_dim: proj[0],
            logit_scale_init_value: 2.6592,
        })
    }

    /// Every parameter of the model under its checkpoint name, with its shape.
    pub fn parameter_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (t, v) = (&self.text_config, &self.vision_config);
        let mut out: Vec<(String, Vec<usize>)> = vec![("logit_scale".into(), vec![])];
        let mut add = |name: String, shape: Vec<usize>| out.push((name, shape));
        let layer = |add: &mut dyn FnMut(String, Vec<usize>), pre: &str, d: usize, mlp: usize| {
            for p in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                add(format!("{pre}.self_attn.{p}.weight"), vec![d, d]);
                add(format!("{pre}.self_attn.{p}.bias"), vec![d]);
            }
            for n in ["layer_norm1", "layer_norm2"] {
                add(format!("{pre}.{n}.weight"), vec![d]);
                add(format!("{pre}.{n}.bias"), vec![d]);
            }
            add(format!("{pre}.mlp.fc1.weight"), vec![mlp, d]);
            add(format!("{pre}.mlp.fc1.bias"), vec![mlp]);
            add(format!("{pre}.mlp.fc2.weight"), vec![d, mlp]);
            add(format!("{pre}.mlp.fc2.bias"), vec![d]);
        };
        let (dt, dv, p) = (t.hidden_size, v.hidden_size, v.patch_size);
        add("text_model.embeddings.token_embedding.weight".into(), vec![t.vocab_size, dt]);
        add("text_model.embeddings.position_embedding.weight".into(), vec![t.max_position_embeddings, dt]);
        for i in 0..t.num_hidden_layers {
            layer(&mut add, &format!("text_model.encoder.layers.{i}"), dt, t.intermediate_size);
        }
        add("text_model.final_layer_norm.weight".into(), vec![dt]);
        add("text_model.final_layer_norm.bias".into(), vec![dt]);
        let grid = v.image_size / p.max(1);
        add("vision_model.embeddings.class_embedding".into(), vec![dv]);
        add("vision_model.embeddings.patch_embedding.weight".into(), vec![dv, v.num_channels, p, p]);
        add("vision_model.embeddings.position_embedding.weight".into(), vec![grid * grid + 1, dv]);
        for n in ["pre_layrnorm", "post_layernorm"] {
            add(format!("vision_model.{n}.weight"), vec![dv]);
            add(format!("vision_model.{n}.bias"), vec![dv]);
        }
        for i in 0..v.num_hidden_layers {
            layer(&mut add, &format!("vision_model.encoder.layers.{i}"), dv, v.intermediate_size);
        }
        add("visual_projection.weight".into(), vec![self.projection_dim, dv]);
        add("text_projection.weight".into(), vec![self.projection_dim, dt]);
        out
    }
}

/// `xs / ‖xs‖₂` along the last axis.
pub fn normalize(xs: &Tensor) -> Result<Tensor> {
    Ok(xs.broadcast_div(&xs.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)?)
}

/// `[images, texts]` cosine similarities of normalised embeddings.
pub fn cosine_similarity(image_embeds: &Tensor, text_embeds: &Tensor) -> Result<Tensor> {
    Ok(image_embeds.matmul(&text_embeds.t()?)?)
}

/// What [`Clip::forward`] returns.
#[derive(Debug, Clone)]
pub struct ClipOutput {
    /// `exp(logit_scale) · cos`, `[images, texts]`.
    pub logits_per_image: Tensor,
    /// The transpose, `[texts, images]`.
    pub logits_per_text: Tensor,
    /// Normalised image embeddings `[images, P]`.
    pub image_embeds: Tensor,
    /// Normalised text embeddings `[texts, P]`.
    pub text_embeds: Tensor,
}

/// The CLIP model (`CLIPModel`): both towers, both projections, `logit_scale`.
#[derive(Debug, Clone)]
pub struct Clip {
    /// The text tower.
    pub text_model: ClipTextTransformer,
    /// The vision tower.
    pub vision_model: ClipVisionTransformer,
    visual_projection: Linear,
    text_projection: Linear,
    logit_scale: Tensor,
}

impl Clip {
    /// Loads the model; `vb` is at the checkpoint's root.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let p = cfg.projection_dim;
        let (dt, dv) = (cfg.text_config.hidden_size, cfg.vision_config.hidden_size);
        Ok(Self {
            text_model: ClipTextTransformer::new(&cfg.text_config, vb.pp("text_model"))?,
            vision_model: ClipVisionTransformer::new(&cfg.vision_config, vb.pp("vision_model"))?,
            visual_projection: Linear::new(vb.pp("visual_projection").get((p, dv), "weight")?, None)?,
            text_projection: Linear::new(vb.pp("text_projection").get((p, dt), "weight")?, None)?,
            logit_scale: vb.get((), "logit_scale")?,
        })
    }

    /// `logit_scale`, a 0-d tensor holding the log of the similarity scale.
    pub fn logit_scale(&self) -> &Tensor {
        &self.logit_scale
    }

    /// The vision tower's input side (224).
    pub fn image_size(&self) -> usize {
        self.vision_model.image_size()
    }

    /// Projects pooled text states: `text_projection(pooled)` (unnormalised).
    pub fn project_text(&self, pooled: &Tensor) -> Result<Tensor> {
        self.text_projection.forward(pooled)
    }

    /// Projects pooled image states: `visual_projection(pooled)` (unnormalised).
    pub fn project_image(&self, pooled: &Tensor) -> Result<Tensor> {
        self.visual_projection.forward(pooled)
    }

    /// Unnormalised text embeddings of `input_ids` `[B, T]` (HF `get_text_features`).
    pub fn text_features(&self, input_ids: &Tensor) -> Result<Tensor> {
        self.project_text(&self.text_model.forward_states(input_ids)?.pooled)
    }

    /// Unnormalised image embeddings of `pixel_values` (HF `get_image_features`).
    pub fn image_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.project_image(&self.vision_model.forward_states(pixel_values)?.pooled)
    }

    /// Normalised embeddings and scaled similarities, as `CLIPModel.forward`.
    pub fn forward(&self, pixel_values: &Tensor, input_ids: &Tensor) -> Result<ClipOutput> {
        let image_embeds = normalize(&self.image_features(pixel_values)?)?;
        let text_embeds = normalize(&self.text_features(input_ids)?)?;
        let cos = cosine_similarity(&image_embeds, &text_embeds)?;
        let logits_per_image = cos.broadcast_mul(&self.logit_scale.exp()?)?;
        let logits_per_text = logits_per_image.t()?;
        Ok(ClipOutput { logits_per_image, logits_per_text, image_embeds, text_embeds })
    }
}

/// StyleCLIP's CLIP loss on `[-1, 1]` images against fixed prompts:
/// `1 - cos(E_img(x), E_txt(t))`, differentiable with respect to `x`.
#[derive(Debug, Clone)]
pub struct ClipLoss {
    clip: Clip,
    text_embeds: Tensor,
    resize: Resize,
    clamp: bool,
    normalize: bool,
}

impl ClipLoss {
    /// Embeds `prompts` once; images are resized with `resize`.
    pub fn new(clip: Clip, tokenizer: &ClipTokenizer, prompts: &[&str], resize: Resize) -> Result<Self> {
        let device = clip.logit_scale.device().clone();
        let batch = tokenizer.encode_batch(prompts, Padding::Longest, &device)?;
        let text = normalize(&clip.text_features(&batch.input_ids)?)?;
        Ok(Self::from_text_embeds(clip, &text, resize))
    }

    /// Uses ready normalised text embeddings `[P, D]` (held as constants).
    pub fn from_text_embeds(clip: Clip, text_embeds: &Tensor, resize: Resize) -> Self {
        Self { clip, text_embeds: text_embeds.detach(), resize, clamp: false, normalize: true }
    }

    /// Sets how images are prepared (see [`prepare`]): the default is
    /// `clamp: false, normalize: true` (the fixtures' pipeline).
    pub fn with_input(mut self, clamp: bool, normalize: bool) -> Self {
        self.clamp = clamp;
        self.normalize = normalize;
        self
    }

    /// The normalised text embeddings `[P, D]`.
    pub fn text_embeds(&self) -> &Tensor {
        &self.text_embeds
    }

    /// The model.
    pub fn clip(&self) -> &Clip {
        &self.clip
    }

    /// Normalised image embeddings `[B, D]` of `[-1, 1]` images `xs` `[B, 3, H, W]`.
    pub fn image_embeds(&self, xs: &Tensor) -> Result<Tensor> {
        let pixels = prepare(xs, self.resize, self.clip.image_size(), self.clamp, self.normalize)?;
        normalize(&self.clip.image_features(&pixels)?)
    }

    /// `[B, P]` cosine similarities between the images and every prompt.
    pub fn similarity(&self, xs: &Tensor) -> Result<Tensor> {
        cosine_similarity(&self.image_embeds(xs)?, &self.text_embeds)
    }

    /// `[B]` losses `1 - cos` against prompt number `prompt`.
    pub fn loss(&self, xs: &Tensor, prompt: usize) -> Result<Tensor> {
        let n = self.text_embeds.dim(0)?;
        if prompt >= n {
            return Err(Error::Config(format!("prompt index {prompt} is out of range for {n} prompts")));
        }
        Ok(self.similarity(xs)?.narrow(1, prompt, 1)?.squeeze(1)?.affine(-1.0, 1.0)?)
    }
}

/// A tiny random-weight CLIP ([`Config::demo`]) under the real key names,
/// drawn from `seed`, and the real CLIP tokenizer ([`ClipTokenizer::embedded`]).
///
/// Its embeddings mean nothing ([`crate::demo::DEMO_LABEL`]).
pub fn demo(seed: u64, device: &Device) -> Result<(Clip, ClipTokenizer)> {
    let (cfg, w) = demo_weights(seed)?;
    let clip = Clip::new(&cfg, w.into_var_builder(device))?;
    Ok((clip, ClipTokenizer::embedded()?))
}

/// The configuration and weights of [`demo`].
fn demo_weights(seed: u64) -> Result<(Config, SeededWeights)> {
    let cfg = Config::demo();
    let mut w = SeededWeights::new(seed);
    for (name, shape) in cfg.parameter_shapes() {
        let fan_in = shape.get(1..).map_or(1, |s| s.iter().product::<usize>()).max(1);
        if name == "logit_scale" {
            w.constant(&name, &shape, cfg.logit_scale_init_value as f32)?;
        } else if name.contains("norm") {
            // Gains near 1 and small biases keep the activations well scaled.
            let mean = if name.ends_with("weight") { 1.0 } else { 0.0 };
            w.normal(&name, &shape, mean, 0.1)?;
        } else if name.contains("patch_embedding") {
            w.normal(&name, &shape, 0.0, (fan_in as f32).powf(-0.5))?;
        } else if name.contains("embedding") {
            w.normal(&name, &shape, 0.0, 0.3)?;
        } else if name.ends_with("bias") {
            w.normal(&name, &shape, 0.0, 0.02)?;
        } else {
            w.normal(&name, &shape, 0.0, (fan_in as f32).powf(-0.5))?;
        }
    }
    Ok((cfg, w))
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use candle_core::{DType, Var};

    const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/clip");

    #[test]
    fn fixture_passes() -> Result<()> {
        let report = check_fixture(Path::new(FIXTURE), &Device::Cpu)?;
        println!("{}", report.table());
        assert!(report.passed(), "{}", report.table());
        Ok(())
    }

    /// A fixture directory where `image224.input` is NOT the StyleCLIP
    /// resize of `image64.input`: the shipped set with the 224 batch's
    /// images 1 and 2 swapped, in the input and in every `image224.*`
    /// reference alike (only stored numbers, reordered). Each batch is
    /// right against its own references, so the check must pass.
    #[test]
    fn fixture_passes_where_the_resize_relation_is_false() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("creating", "tempdir", e))?;
        for entry in std::fs::read_dir(FIXTURE).map_err(|e| Error::io("reading", FIXTURE, e))? {
            let path = entry.map_err(|e| Error::io("reading", FIXTURE, e))?.path();
            let to = dir.path().join(path.file_name().expect("a file name"));
            std::fs::copy(&path, &to).map_err(|e| Error::io("copying", &path, e))?;
        }
        let cases = Path::new(FIXTURE).join("cases.safetensors");
        let mut tensors = candle_core::safetensors::load(&cases, &Device::Cpu)?;
        let swap = Tensor::new(&[0u32, 2, 1], &Device::Cpu)?;
        let mut swapped = 0;
        for (name, t) in tensors.iter_mut() {
            if name.starts_with("image224.") && name != "image224.pixel_values_first" {
                *t = t.index_select(&swap, 0)?;
                swapped += 1;
            }
        }
        assert!(swapped >= 10, "{swapped} image224 tensors");
        candle_core::safetensors::save(&tensors, dir.path().join("cases.safetensors"))?;
        let report = check_fixture(dir.path(), &Device::Cpu)?;
        println!("{}", report.table());
        assert!(report.passed(), "{}", report.table());
        // The relation is indeed false there.
        let x64 = &tensors["image64.input"].to_dtype(DType::F32)?;
        let x224 = &tensors["image224.input"].to_dtype(DType::F32)?;
        let resized = preprocess::resize(x64, Resize::StyleClip, 224)?;
        assert!((resized - x224)?.abs()?.max_all()?.to_scalar::<f32>()? > 0.01);
        Ok(())
    }

    #[test]
    fn missing_fixture_files_are_reported() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("creating", "tempdir", e))?;
        let report = check_fixture(dir.path(), &Device::Cpu)?;
        assert!(!report.passed());
        assert_eq!(report.missing.len(), 5, "{:?}", report.missing);
        Ok(())
    }

    #[test]
    fn fixture_config_parses() -> Result<()> {
        let cfg = Config::from_file(&Path::new(FIXTURE).join("config.json"))?;
        assert_eq!(cfg.projection_dim, 32);
        assert_eq!((cfg.text_config.hidden_size, cfg.text_config.num_attention_heads), (16, 4));
        assert_eq!((cfg.vision_config.hidden_size, cfg.vision_config.intermediate_size), (64, 256));
        assert_eq!(cfg.text_config.eos_token_id, 49407);
        assert_eq!(cfg.vision_config.hidden_act, Activation::QuickGelu);
        // Everything but the head counts (not stored in weights) is inferred.
        let weights = candle_core::safetensors::load(Path::new(FIXTURE).join("model.safetensors"), &Device::Cpu)?;
        let mut inferred = Config::from_tensors(&weights)?;
        inferred.text_config.num_attention_heads = 4;
        inferred.vision_config.num_attention_heads = 4;
        inferred.logit_scale_init_value = cfg.logit_scale_init_value;
        assert_eq!(inferred, cfg);
        Ok(())
    }

    /// The real `openai/clip-vit-base-patch32` layout: every key and shape of
    /// `vit-b-32.keys.json` is what the model asks for, the config inferred
    /// from those shapes is ViT-B/32's, and the model loads from them.
    #[test]
    fn real_vit_b_32_layout_loads() -> Result<()> {
        let path = Path::new(FIXTURE).join("vit-b-32.keys.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io("reading", &path, e))?;
        let json: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        let keys = json["keys"].as_object().expect("a keys object");
        let real: HashMap<String, Vec<usize>> = keys
            .iter()
            .map(|(k, v)| {
                let shape = v["shape"].as_array().expect("shape").iter();
                (k.clone(), shape.map(|d| d.as_u64().expect("dim") as usize).collect())
            })
            .collect();
        assert_eq!(real.len(), 398);
        let ours: HashMap<String, Vec<usize>> = Config::vit_b_32().parameter_shapes().into_iter().collect();
        assert_eq!(ours, real);

        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for (k, shape) in &real {
            tensors.insert(k.clone(), Tensor::zeros(shape.as_slice(), DType::F32, &Device::Cpu)?);
        }
        // Older conversions carry these buffers; they must be ignored.
        let ids = Tensor::arange(0i64, 77, &Device::Cpu)?.unsqueeze(0)?;
        tensors.insert("text_model.embeddings.position_ids".into(), ids);
        let cfg = Config::from_tensors(&tensors)?;
        let mut expected = Config::vit_b_32();
        // Inference takes the last token as end-of-text; the published config
        // says 2 (HF's legacy argmax rule). Both pool at the same row.
        expected.text_config.eos_token_id = 49407;
        assert_eq!(cfg, expected);
        let n: usize = real.values().map(|s| s.iter().product::<usize>()).sum();
        assert_eq!(n, 151_277_313);
        let clip = Clip::new(&cfg, VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu))?;
        assert_eq!(clip.image_size(), 224);
        Ok(())
    }

    #[test]
    fn demo_is_deterministic() -> Result<()> {
        let dev = Device::Cpu;
        let embed = |seed| -> Result<(Vec<f32>, Vec<f32>)> {
            let (clip, tok) = demo(seed, &dev)?;
            let ids = tok.encode_batch(&["a photo of a person with gray hair"], Padding::Longest, &dev)?;
            let text = clip.text_features(&ids.input_ids)?.flatten_all()?.to_vec1()?;
            let pixels: Vec<f32> = (0..3 * 64 * 64).map(|i| ((i % 97) as f32 / 48.0) - 1.0).collect();
            let xs = Tensor::from_vec(pixels, (1, 3, 64, 64), &dev)?;
            let px = preprocess(&xs, Resize::Auto, clip.image_size())?;
            let image = clip.image_features(&px)?.flatten_all()?.to_vec1()?;
            Ok((text, image))
        };
        let (a, b, c) = (embed(3)?, embed(3)?, embed(4)?);
        assert_eq!(a, b);
        assert_ne!(a.0, c.0);
        assert_ne!(a.1, c.1);
        assert!(a.0.iter().chain(&a.1).all(|v| v.is_finite()));
        Ok(())
    }

    #[test]
    fn tokenizer_truncates_with_eos_last_and_pads_with_eos() -> Result<()> {
        let tok = ClipTokenizer::embedded()?;
        let long = "hat ".repeat(200);
        let ids = tok.encode(&long)?;
        assert_eq!(ids.len(), CONTEXT_LENGTH);
        assert_eq!((ids[0], ids[76]), (49406, 49407));
        let batch = tok.encode_batch(&["a hat", "a photo of a hat"], Padding::Longest, &Device::Cpu)?;
        let ids = batch.input_ids.to_vec2::<u32>()?;
        let mask = batch.attention_mask.to_vec2::<u32>()?;
        assert_eq!(ids[0].len(), ids[1].len());
        assert_eq!(ids[0][ids[0].len() - 1], 49407);
        assert_eq!(mask[0].iter().sum::<u32>(), 4);
        Ok(())
    }

    #[test]
    fn styleclip_resize_matches_upsample_then_pool() -> Result<()> {
        // Nearest ×7 then average pool 2 (kernel = stride), done with candle's ops.
        let dev = Device::Cpu;
        let xs = Tensor::rand(-1f32, 1., (1, 3, 64, 64), &dev)?;
        let reference = xs.upsample_nearest2d(448, 448)?.avg_pool2d(2)?;
        let ours = preprocess::resize(&xs, Resize::StyleClip, 224)?;
        let diff = (ours - reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "{diff}");
        let m = preprocess::styleclip_matrix(1024)?;
        assert!(m.chunks(1024).all(|row| (row.iter().sum::<f64>() - 1.0).abs() < 1e-12));
        assert!(preprocess::styleclip_matrix(100).is_err());
        Ok(())
    }

    /// The loss gradient at a few pixels against central differences, in f64
    /// on the demo weights, through both resize paths.
    #[test]
    fn pixel_gradient_matches_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let (cfg, w) = demo_weights(11)?;
        let clip = Clip::new(&cfg, VarBuilder::from_tensors(w.tensors().clone(), DType::F64, &dev))?;
        let tok = ClipTokenizer::embedded()?;
        for (size, resize) in [(32, Resize::StyleClip), (12, Resize::Bilinear)] {
            let loss_fn = ClipLoss::new(clip.clone(), &tok, &["a photo of a baby", "a hat"], resize)?;
            let n = 2 * 3 * size * size;
            let data: Vec<f64> = (0..n).map(|i| ((i * 37 % 101) as f64 / 50.0) - 1.0).collect();
            let xs = Tensor::from_vec(data.clone(), (2, 3, size, size), &dev)?;
            let x = Var::from_tensor(&xs)?;
            let total = |t: &Tensor| -> Result<Tensor> { Ok(loss_fn.loss(t, 1)?.sum_all()?) };
            let grads = total(x.as_tensor())?.backward()?;
            let g = grads.get(x.as_tensor()).expect("the loss depends on the pixels");
            let g = g.flatten_all()?.to_vec1::<f64>()?;
            let h = 1e-5;
            for &i in &[0, 7, size * size + 3, n / 2 + 5, n - 1] {
                let mut plus = data.clone();
                plus[i] += h;
                let mut minus = data.clone();
                minus[i] -= h;
                let f = |v: Vec<f64>| -> Result<f64> {
                    Ok(total(&Tensor::from_vec(v, (2, 3, size, size), &dev)?)?.to_scalar::<f64>()?)
                };
                let fd = (f(plus)? - f(minus)?) / (2.0 * h);
                let tol = 1e-6 + 1e-4 * fd.abs();
                assert!((fd - g[i]).abs() < tol, "{resize:?} pixel {i}: backward {} vs fd {fd}", g[i]);
            }
            assert!(g.iter().any(|v| v.abs() > 1e-8), "{resize:?}: zero gradient");
        }
        Ok(())
    }

    #[test]
    fn clip_loss_is_one_minus_similarity() -> Result<()> {
        let dev = Device::Cpu;
        let (clip, tok) = demo(5, &dev)?;
        let loss_fn = ClipLoss::new(clip, &tok, &["a", "b c"], Resize::Auto)?;
        let xs = Tensor::rand(-1f32, 1., (2, 3, 64, 64), &dev)?;
        let sim = loss_fn.similarity(&xs)?.to_vec2::<f32>()?;
        let loss = loss_fn.loss(&xs, 1)?.to_vec1::<f32>()?;
        for i in 0..2 {
            assert!((loss[i] - (1.0 - sim[i][1])).abs() < 1e-6);
            assert!(sim[i][0].abs() <= 1.0 + 1e-6);
        }
        assert!(loss_fn.loss(&xs, 2).is_err());
        Ok(())
    }
}

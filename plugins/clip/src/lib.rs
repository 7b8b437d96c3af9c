//! The built-in `clip` loss plugin: pulls the edited image towards a text
//! prompt (or a reference image) in CLIP's embedding space.
//!
//! ```text
//! ℓ = mean_n [ 1 − cos(E_img(x_edit_n), E_txt(prompt)) ]        (text target)
//! ℓ = mean_n [ 1 − cos(E_img(x_edit_n), E_img(reference)) ]     (`image:` target)
//! ```
//!
//! This is StyleCLIP's CLIP loss (Patashnik et al. 2021, "StyleCLIP:
//! Text-Driven Manipulation of StyleGAN Imagery",
//! <https://arxiv.org/abs/2103.17249>; reference
//! [`criteria/clip_loss.py`](https://github.com/orpatashnik/StyleCLIP/blob/main/criteria/clip_loss.py)),
//! which LELSD and CLIPLSD also use to supervise edit directions. The
//! network, its preprocessing and the loss itself are
//! [`lsd_core::models::clip`] ([`ClipLoss`]); this crate only chooses the
//! target, caches its embedding and exports the term as a dynamic library,
//! exactly like a user's plugin (see `docs/plugins.md`).
//!
//! The target embedding is a constant: a fixed `prompt:` or `image:` is
//! embedded once when the term is built; the batch's own prompt is embedded
//! on the first call and again only when it changes.
//!
//! Weights: `InitContext::weights["clip"]`, a Hugging Face CLIP folder or
//! its `model.safetensors` (with `config.json` and `tokenizer.json` beside
//! it when present; otherwise the shapes give the configuration and the
//! built-in CLIP tokenizer is used). With no path — or no `clip` entry at
//! all, as `lsd-tui plugins check` passes — the seeded demo CLIP
//! ([`lsd_core::models::clip::demo`] with [`DEMO_MODEL_SEED`]) is built, the
//! same network the host builds.
//!
//! See README.md for the commands and the parameter table.

// The term runs inside a training step: no host reads, so the step
// reads the device once, in the host (lsd-core's `readback`, clippy.toml).
#![deny(clippy::disallowed_methods)]
#![deny(missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use lsd_core::demo::DEMO_MODEL_SEED;
use lsd_core::models::clip::{self, Clip, ClipLoss, ClipTokenizer, Resize};
use lsd_core::plugin::{EditBatch, InitContext, LossTerm, ParamInfo, Plugin};
use lsd_core::{Error, Result};
use serde::Deserialize;

/// How images are brought to CLIP's input size (`resize:`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizeMode {
    /// StyleCLIP's resize for sides that are multiples of 32, else bilinear.
    #[default]
    Auto,
    /// StyleCLIP's nearest ×7 + average pool (sides must be multiples of 32).
    Styleclip,
    /// PyTorch bilinear, `align_corners=False`.
    Bilinear,
}

impl From<ResizeMode> for Resize {
    fn from(mode: ResizeMode) -> Self {
        match mode {
            ResizeMode::Auto => Resize::Auto,
            ResizeMode::Styleclip => Resize::StyleClip,
            ResizeMode::Bilinear => Resize::Bilinear,
        }
    }
}

/// The plugin's parameters, as written under the term in a recipe.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// A text target that overrides the batch's (the recipe's) prompt.
    pub prompt: Option<String>,
    /// A reference image (PNG) to move towards instead of a text.
    pub image: Option<PathBuf>,
    /// How images are resized to CLIP's input.
    pub resize: ResizeMode,
    /// Shift to `[0, 1]` and apply CLIP's mean/std (default `true`);
    /// `false` feeds the resized `[-1, 1]` image as StyleCLIP and CLIPLSD do.
    pub normalize: Option<bool>,
    /// Clamp the image to `[-1, 1]` before resizing (StyleCLIP, CLIPLSD).
    pub clamp: bool,
}

impl Params {
    fn normalize(&self) -> bool {
        self.normalize.unwrap_or(true)
    }
}

/// Where the target embedding comes from.
enum Target {
    /// Embedded when the term was built (`prompt:` or `image:`).
    Fixed(ClipLoss),
    /// The batch's prompt, embedded on first use and whenever it changes.
    BatchPrompt(Mutex<Option<(String, ClipLoss)>>),
}

/// The `clip` term.
pub struct ClipTerm {
    clip: Clip,
    tokenizer: ClipTokenizer,
    resize: Resize,
    clamp: bool,
    normalize: bool,
    target: Target,
}

impl std::fmt::Debug for ClipTerm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let target = match &self.target {
            Target::Fixed(_) => "fixed",
            Target::BatchPrompt(_) => "batch prompt",
        };
        f.debug_struct("ClipTerm")
            .field("resize", &self.resize)
            .field("clamp", &self.clamp)
            .field("normalize", &self.normalize)
            .field("target", &target)
            .finish_non_exhaustive()
    }
}

/// The weights path the host gave for `key`; `None` (demo weights) when it
/// gave `null` or no entry at all.
fn weights_path(context: &InitContext, key: &str) -> Option<PathBuf> {
    context.weights.get(key).cloned().flatten()
}

/// Loads a Hugging Face CLIP from a folder or its `model.safetensors`.
///
/// `config.json` beside the weights wins over the shapes (it holds the head
/// counts); `tokenizer.json` beside them wins over the built-in tokenizer.
pub fn load_clip(path: &Path, device: &Device) -> Result<(Clip, ClipTokenizer)> {
    let (dir, model) = if path.is_dir() {
        (path.to_path_buf(), path.join("model.safetensors"))
    } else {
        (path.parent().map(Path::to_path_buf).unwrap_or_default(), path.to_path_buf())
    };
    if !model.is_file() {
        return Err(Error::Config(format!(
            "clip weights '{}': no such file; give a CLIP folder holding model.safetensors or \
             the file itself (`lsd-tui weights fetch clip-vit-b32`)",
            model.display()
        )));
    }
    let tensors = lsd_core::torch::load(&model)?;
    let config_file = dir.join("config.json");
    let cfg = if config_file.is_file() {
        clip::Config::from_file(&config_file)?
    } else {
        clip::Config::from_tensors(&tensors)?
    };
    let tokenizer_file = dir.join("tokenizer.json");
    let tokenizer =
        if tokenizer_file.is_file() { ClipTokenizer::from_file(&tokenizer_file)? } else { ClipTokenizer::embedded()? };
    let clip = Clip::new(&cfg, VarBuilder::from_tensors(tensors, DType::F32, device))?;
    Ok((clip, tokenizer))
}

/// Reads an image file as a `[1, 3, H, W]` f32 tensor in `[-1, 1]`
/// (`v / 127.5 − 1` of the 8-bit RGB values, the inverse of how the
/// generator's images are saved).
pub fn load_image(path: &Path, device: &Device) -> Result<Tensor> {
    let img = image::open(path)
        .map_err(|e| {
            Error::Config(format!(
                "parameters of plugin 'clip': `image: {}`: cannot read it as a PNG image: {e}",
                path.display()
            ))
        })?
        .to_rgb8();
    let (w, h) = img.dimensions();
    let data: Vec<f32> = img.into_raw().into_iter().map(|v| f32::from(v) / 127.5 - 1.0).collect();
    let hwc = Tensor::from_vec(data, (h as usize, w as usize, 3), device)?;
    Ok(hwc.permute((2, 0, 1))?.unsqueeze(0)?.contiguous()?)
}

impl ClipTerm {
    /// The term around a ready network (the constructor [`Plugin::new`] uses
    /// after loading the weights).
    pub fn with_model(clip: Clip, tokenizer: ClipTokenizer, params: &Params) -> Result<Self> {
        let resize = Resize::from(params.resize);
        let (clamp, normalize) = (params.clamp, params.normalize());
        let target = match (&params.prompt, &params.image) {
            (Some(_), Some(_)) => {
                return Err(Error::Config(
                    "parameters of plugin 'clip': give either `prompt:` or `image:`, not both".into(),
                ))
            }
            (Some(prompt), None) => {
                Target::Fixed(ClipLoss::new(clip.clone(), &tokenizer, &[prompt], resize)?.with_input(clamp, normalize))
            }
            (None, Some(path)) => {
                let device = clip.logit_scale().device().clone();
                let reference = load_image(path, &device)?;
                // What `ClipLoss::image_embeds` computes for the edited images.
                let pixels = clip::prepare(&reference, resize, clip.image_size(), clamp, normalize)?;
                let embeds = clip::normalize(&clip.image_features(&pixels)?)?;
                Target::Fixed(ClipLoss::from_text_embeds(clip.clone(), &embeds, resize).with_input(clamp, normalize))
            }
            (None, None) => Target::BatchPrompt(Mutex::new(None)),
        };
        Ok(Self { clip, tokenizer, resize, clamp, normalize, target })
    }

    /// The [`ClipLoss`] for `prompt` (the batch's), from the cache or
    /// freshly embedded.
    fn loss_for(&self, prompt: &str) -> Result<ClipLoss> {
        match &self.target {
            Target::Fixed(loss) => Ok(loss.clone()),
            Target::BatchPrompt(cache) => {
                let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((cached, loss)) = cache.as_ref() {
                    if cached == prompt {
                        return Ok(loss.clone());
                    }
                }
                if prompt.trim().is_empty() {
                    return Err(Error::Config(
                        "plugin 'clip': the batch has no prompt; set the recipe's prompt, or \
                         `prompt:` or `image:` in the term's params"
                            .into(),
                    ));
                }
                let loss = ClipLoss::new(self.clip.clone(), &self.tokenizer, &[prompt], self.resize)?
                    .with_input(self.clamp, self.normalize);
                *cache = Some((prompt.to_string(), loss.clone()));
                Ok(loss)
            }
        }
    }
}

impl LossTerm for ClipTerm {
    fn loss(&self, batch: &EditBatch) -> lsd_plugin_api::Result<Tensor> {
        let loss = self.loss_for(&batch.prompt)?;
        // The network is f32; a caller's f64 batch is cast there and back
        // (both casts are differentiable).
        let xs = batch.x_edit.to_dtype(DType::F32)?;
        Ok(loss.loss(&xs, 0)?.mean_all()?.to_dtype(batch.x_edit.dtype())?)
    }
}

impl Plugin for ClipTerm {
    const NAME: &'static str = "clip";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str =
        "1 − cos(E_img(x_edit), E_txt(prompt)): CLIP pulls the edit towards the prompt (or a reference image)";
    type Params = Params;

    fn params() -> Vec<ParamInfo> {
        vec![
            ParamInfo::new("prompt", "string", "null", "text target overriding the recipe's prompt"),
            ParamInfo::new(
                "image",
                "path",
                "null",
                "reference PNG to move towards instead of a text: 1 − cos(E_img(x_edit), E_img(ref))",
            ),
            ParamInfo::new(
                "resize",
                "auto | styleclip | bilinear",
                "auto",
                "resize to CLIP's input: StyleCLIP's ×7/avg-pool for multiples of 32, else bilinear",
            ),
            ParamInfo::new(
                "normalize",
                "true | false",
                "true",
                "CLIP's mean/std on [0, 1] pixels; false feeds the resized [-1, 1] image (StyleCLIP, CLIPLSD)",
            ),
            ParamInfo::new("clamp", "true | false", "false", "clamp the image to [-1, 1] first (StyleCLIP, CLIPLSD)"),
        ]
    }

    fn new(params: Params, context: &InitContext) -> lsd_plugin_api::Result<Self> {
        // The networks run in this library's own lsd-core: use the host's precision.
        lsd_core::plugin::adopt_precision(context)?;
        let device = context.device()?;
        let (clip, tokenizer) = match weights_path(context, "clip") {
            Some(path) => load_clip(&path, &device)?,
            None => clip::demo(DEMO_MODEL_SEED, &device)?,
        };
        Ok(Self::with_model(clip, tokenizer, &params)?)
    }
}

lsd_plugin_api::export_plugin!(ClipTerm);

//! The networks an experiment measures with: the generator that makes the
//! images and the CLIP model that scores them, from the demo seed or from
//! weight files (already resolved to paths by the caller; core never looks
//! names up or downloads).

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::demo::DEMO_MODEL_SEED;
use crate::models::clip::{self, Clip, ClipTokenizer};
pub use crate::models::stylegan2::{LoadedGenerator, Source};
use crate::Result;

/// CLIP and its tokenizer.
#[derive(Debug, Clone)]
pub struct ClipModel {
    /// The network.
    pub clip: Clip,
    /// The tokenizer.
    pub tokenizer: ClipTokenizer,
    /// Where it came from.
    pub source: Source,
}

impl ClipModel {
    /// Loads CLIP from `source` onto `device`. For a file, a `config.json`
    /// and `tokenizer.json` next to it are used when present (as the hub
    /// download has them); otherwise the configuration is inferred from the
    /// weights and the built-in tokenizer is used.
    pub fn load(source: &Source, device: &Device) -> Result<Self> {
        let (clip, tokenizer) = match source {
            Source::Demo => clip::demo(DEMO_MODEL_SEED, device)?,
            Source::File(path) => load_clip_file(path, device)?,
        };
        Ok(Self { clip, tokenizer, source: source.clone() })
    }
}

fn load_clip_file(path: &Path, device: &Device) -> Result<(Clip, ClipTokenizer)> {
    let tensors = crate::torch::load(path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let config_json = dir.join("config.json");
    let cfg = if config_json.is_file() {
        clip::Config::from_file(&config_json)?
    } else {
        clip::Config::from_tensors(&tensors)?
    };
    let tokenizer_json = dir.join("tokenizer.json");
    let tokenizer =
        if tokenizer_json.is_file() { ClipTokenizer::from_file(&tokenizer_json)? } else { ClipTokenizer::embedded()? };
    let clip = Clip::new(&cfg, VarBuilder::from_tensors(tensors, DType::F32, device))?;
    Ok((clip, tokenizer))
}

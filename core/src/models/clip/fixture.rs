//! Checks the CLIP port against `tests/fixtures/clip/` (see its README):
//! token ids, every stored intermediate of both towers, preprocessing and
//! resize matrices, similarities, CLIP losses and pixel gradients, each with
//! the tolerance `cases.json` states for it.

// Fixture checks read the values they compare; they never run in a step.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use serde_json::Value;

use super::preprocess::{self, Resize, MEAN, STD};
use super::{cosine_similarity, normalize, Clip, ClipTokenizer, Config, Padding};
use crate::fixture::{CaseResult, FixtureReport};
use crate::imageops::{self, Filter};
use crate::{Error, Result};

const FILES: [&str; 5] = ["config.json", "tokenizer.json", "model.safetensors", "cases.safetensors", "cases.json"];

/// The fixture's tensors, tolerances and the report being filled.
struct Ctx {
    report: FixtureReport,
    tensors: HashMap<String, Tensor>,
    meta: Value,
}

impl Ctx {
    /// A stored tensor (floats as f32), or `None` after recording it missing.
    fn get(&mut self, key: &str) -> Result<Option<Tensor>> {
        match self.tensors.get(key) {
            Some(t) if t.dtype().is_float() => Ok(Some(t.to_dtype(DType::F32)?)),
            Some(t) => Ok(Some(t.clone())),
            None => {
                self.report.missing(key);
                Ok(None)
            }
        }
    }

    /// `(atol, rtol)` of `key` from `cases.json`; `exact` is `(0, 0)`.
    fn tolerance(&self, key: &str) -> Option<(f64, f64)> {
        let tol = self.meta.get("tensors")?.get(key)?.get("tolerance")?;
        if tol.get("exact").and_then(Value::as_bool) == Some(true) {
            return Some((0.0, 0.0));
        }
        Some((tol.get("atol")?.as_f64()?, tol.get("rtol")?.as_f64()?))
    }

    /// Compares `actual` with stored `key` under the case name `name`.
    fn check_as(&mut self, name: &str, key: &str, actual: &Tensor) -> Result<()> {
        let Some(expected) = self.get(key)? else { return Ok(()) };
        let Some((atol, rtol)) = self.tolerance(key) else {
            self.report.missing(format!("tolerance of {key} in cases.json"));
            return Ok(());
        };
        self.report.compare(name, actual, &expected, atol, rtol)?;
        Ok(())
    }

    fn check(&mut self, key: &str, actual: &Tensor) -> Result<()> {
        self.check_as(key, key, actual)
    }

    fn fail(&mut self, name: &str, note: &str) {
        self.report.push(CaseResult {
            name: name.into(),
            max_abs: f64::INFINITY,
            max_rel: f64::INFINITY,
            atol: 0.0,
            rtol: 0.0,
            passed: false,
            note: Some(note.into()),
        });
    }
}

/// Runs every case of the CLIP fixture in `dir` on `device`.
///
/// Files or tensors the directory lacks are listed in `report.missing`.
pub fn check_fixture(dir: &Path, device: &Device) -> Result<FixtureReport> {
    let mut report = FixtureReport::new("clip");
    for f in FILES {
        if !dir.join(f).is_file() {
            report.missing(f);
        }
    }
    if !report.missing.is_empty() {
        return Ok(report);
    }
    let cfg = Config::from_file(&dir.join("config.json"))?;
    let tokenizer = ClipTokenizer::from_file(&dir.join("tokenizer.json"))?;
    // The weights are f16; the VarBuilder converts them to f32 losslessly.
    let weights = candle_core::safetensors::load(dir.join("model.safetensors"), device)?;
    let clip = Clip::new(&cfg, VarBuilder::from_tensors(weights, DType::F32, device))?;
    let json_path = dir.join("cases.json");
    let json = std::fs::read_to_string(&json_path).map_err(|e| Error::io("reading", &json_path, e))?;
    let meta: Value = serde_json::from_str(&json)
        .map_err(|e| Error::Fixture { path: json_path.clone(), reason: format!("invalid JSON: {e}") })?;
    let tensors = candle_core::safetensors::load(dir.join("cases.safetensors"), device)?;
    let mut ctx = Ctx { report, tensors, meta };

    let header = ctx.meta.get("header").cloned().unwrap_or(Value::Null);
    let prompts: Vec<String> = header
        .get("prompts")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|p| p.as_str().map(String::from)).collect())
        .unwrap_or_default();
    let Some(loss_prompt) = header.get("loss_prompt_index").and_then(Value::as_u64) else {
        ctx.report.missing("header.loss_prompt_index in cases.json");
        return Ok(ctx.report);
    };
    if prompts.is_empty() {
        ctx.report.missing("header.prompts in cases.json");
        return Ok(ctx.report);
    }
    check_constants(&mut ctx, &header, device)?;

    let prompts: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let text = check_text(&mut ctx, &clip, &tokenizer, &prompts, device)?;
    check_resize_matrices(&mut ctx, device)?;
    let p = loss_prompt as usize;
    if let Some(x) = ctx.get("image224.input")? {
        check_image(&mut ctx, &clip, &text, p, "image224", &x, Resize::Auto)?;
    }
    // Each batch is checked against its own references only: that the
    // shipped `image224.input` is the StyleCLIP resize of `image64.input`
    // is a property of that fixture set, which its README says not to rely
    // on in general.
    if let Some(x) = ctx.get("image64.input")? {
        check_image(&mut ctx, &clip, &text, p, "image64.styleclip", &x, Resize::StyleClip)?;
        check_image(&mut ctx, &clip, &text, p, "image64.bilinear", &x, Resize::Bilinear)?;
    }
    Ok(ctx.report)
}

/// The preprocessing constants of the header against [`MEAN`] and [`STD`].
fn check_constants(ctx: &mut Ctx, header: &Value, device: &Device) -> Result<()> {
    for (key, ours) in [("mean", MEAN), ("std", STD)] {
        let stored: Option<Vec<f64>> = header
            .get("preprocessing")
            .and_then(|p| p.get(key))
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_f64).collect());
        match stored {
            Some(v) if v.len() == 3 => {
                let name = format!("header.preprocessing.{key}");
                let (a, e) = (Tensor::new(&ours, device)?, Tensor::new(v.as_slice(), device)?);
                ctx.report.compare(&name, &a, &e, 0.0, 0.0)?;
            }
            _ => ctx.report.missing(format!("header.preprocessing.{key} in cases.json")),
        }
    }
    Ok(())
}

/// Token ids, masks, pooling positions and every text output; returns our
/// normalised text embeddings (used by the image cases).
fn check_text(
    ctx: &mut Ctx,
    clip: &Clip,
    tokenizer: &ClipTokenizer,
    prompts: &[&str],
    device: &Device,
) -> Result<Tensor> {
    let batch = tokenizer.encode_batch(prompts, Padding::Longest, device)?;
    ctx.check("text.input_ids", &batch.input_ids)?;
    ctx.check("text.attention_mask", &batch.attention_mask)?;
    let batch77 = tokenizer.encode_batch(prompts, Padding::MaxLength, device)?;
    ctx.check("text.input_ids_padded77", &batch77.input_ids)?;
    ctx.check("text.attention_mask_padded77", &batch77.attention_mask)?;

    let states = clip.text_model.forward_states(&batch.input_ids)?;
    let eos: Vec<i64> = states.eos_index.iter().map(|&i| i as i64).collect();
    ctx.check("text.eos_index", &Tensor::new(eos.as_slice(), device)?)?;
    // Padded rows depend on HF's padding mask, which the causal-only tower
    // does not apply; the README says to compare the mask == 1 rows only.
    let (b, t, d) = states.last_hidden_state.dims3()?;
    let keep: Vec<u32> = batch
        .attention_mask
        .flatten_all()?
        .to_vec1::<u32>()?
        .iter()
        .enumerate()
        .filter_map(|(i, &m)| (m == 1).then_some(i as u32))
        .collect();
    let keep = Tensor::new(keep.as_slice(), device)?;
    if let Some(expected) = ctx.get("text.last_hidden_state")? {
        let rows = |x: &Tensor| -> Result<Tensor> { Ok(x.reshape((b * t, d))?.index_select(&keep, 0)?) };
        let (atol, rtol) = ctx.tolerance("text.last_hidden_state").unwrap_or((0.0, 0.0));
        ctx.report.compare(
            "text.last_hidden_state (mask=1 rows)",
            &rows(&states.last_hidden_state)?,
            &rows(&expected)?,
            atol,
            rtol,
        )?;
    }
    ctx.check("text.pooled", &states.pooled)?;
    let embeds = clip.project_text(&states.pooled)?;
    ctx.check("text.embeds", &embeds)?;
    let embeds_normalized = normalize(&embeds)?;
    ctx.check("text.embeds_normalized", &embeds_normalized)?;

    // Full-context padding must give the same pooled and projected outputs.
    let states77 = clip.text_model.forward_states(&batch77.input_ids)?;
    ctx.check_as("text.pooled (padded77)", "text.pooled", &states77.pooled)?;
    let embeds77 = normalize(&clip.project_text(&states77.pooled)?)?;
    ctx.check_as("text.embeds_normalized (padded77)", "text.embeds_normalized", &embeds77)?;
    Ok(embeds_normalized)
}

fn check_resize_matrices(ctx: &mut Ctx, device: &Device) -> Result<()> {
    let styleclip = preprocess::styleclip_matrix_tensor(64, device)?;
    ctx.check("resize.styleclip_64_to_224", &styleclip)?;
    let bilinear = imageops::matrix_tensor(Filter::Bilinear, 64, 224, device)?;
    ctx.check("resize.bilinear_64_to_224", &bilinear)?;
    Ok(())
}

/// One image batch through preprocessing, the vision tower, the similarity,
/// the loss and its backward pass to the `[-1, 1]` pixels.
fn check_image(
    ctx: &mut Ctx,
    clip: &Clip,
    text: &Tensor,
    prompt: usize,
    prefix: &str,
    input: &Tensor,
    resize: Resize,
) -> Result<()> {
    let x = Var::from_tensor(input)?;
    let pixels = preprocess::preprocess(x.as_tensor(), resize, clip.image_size())?;
    // The stored pixel values are those of the 224 batch's first image.
    if prefix == "image224" {
        ctx.check("image224.pixel_values_first", &pixels.narrow(0, 0, 1)?)?;
    }
    let states = clip.vision_model.forward_states(&pixels)?;
    let embeds = clip.project_image(&states.pooled)?;
    let embeds_normalized = normalize(&embeds)?;
    let cos = cosine_similarity(&embeds_normalized, text)?;
    let loss = cos.narrow(1, prompt, 1)?.squeeze(1)?.affine(-1.0, 1.0)?;
    if prefix == "image224" {
        ctx.check("image224.vision.embeddings", &states.embeddings)?;
        ctx.check("image224.vision.last_hidden_state", &states.last_hidden_state)?;
        ctx.check("image224.vision.pooled", &states.pooled)?;
        let logits = cos.broadcast_mul(&clip.logit_scale().exp()?)?;
        ctx.check("image224.logits_per_image", &logits)?;
    }
    ctx.check(&format!("{prefix}.embeds"), &embeds)?;
    ctx.check(&format!("{prefix}.embeds_normalized"), &embeds_normalized)?;
    ctx.check(&format!("{prefix}.cos_sim"), &cos)?;
    ctx.check(&format!("{prefix}.loss"), &loss)?;
    let grads = loss.sum_all()?.backward()?;
    let name = format!("{prefix}.grad");
    match grads.get(x.as_tensor()) {
        Some(g) => ctx.check(&name, g)?,
        None => ctx.fail(&name, "no gradient reached the input pixels"),
    }
    Ok(())
}

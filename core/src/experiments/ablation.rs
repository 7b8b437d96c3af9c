//! The regulariser ablation (report Fig. 9): the same edit trained four
//! times on the same image and seed, with the CLIP term alone, with the
//! identity term, with the segmentation term, and with all three, shown as
//! one grid (rows = variants, columns = α) with each variant's metrics.
//!
//! The recipe is the full model: it must hold a `clip`, an `identity` and a
//! `segmentation` term, with the weights to ablate (the report uses λ_ID =
//! 1.0 and λ_S = 0.1). The variants drop terms from it and keep everything
//! else (including any other term) unchanged. Each variant trains into its
//! own run folder, reused when finished.
//!
//! Metrics, per variant and α, on the training image `x` and its edit `x'`:
//! - CLIP gain: `cos(E(x'), t) − cos(E(x), t)`;
//! - ID similarity: `cos(R(x), R(x'))` with ArcFace on StyleCLIP's face
//!   crop (1 = same identity);
//! - inside share: `Σ s·|x − x'|² / Σ |x − x'|²`, the share of the pixel
//!   change inside the segmentation term's face parts, `s` the union (max)
//!   of the soft BiSeNet masks of `x` and `x'` (the complement of the
//!   segmentation loss with its default settings).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use serde::Deserialize;

use super::models::{ClipModel, LoadedGenerator};
use super::table::{csv_line, csv_number, text_table, write_atomic};
use super::train::{load_direction, Trainer};
use super::Progress;
use crate::demo::DEMO_MODEL_SEED;
use crate::engine::terms::{term_library, term_names};
use crate::engine::Weights;
use crate::models::arcface::{self, Backbone, IdLoss};
use crate::models::bisenet::{self, BiSeNet};
use crate::models::clip::preprocess::Resize;
use crate::models::clip::ClipLoss;
use crate::recipe::Recipe;
use crate::render::{grid, save_png_atomic, tensor_to_rgb};
use crate::{Error, Result};

/// One ablation row.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// Row label, e.g. `CLIP + ID (λ_ID = 1)`.
    pub label: String,
    /// Folder name, e.g. `clip+id`.
    pub slug: String,
    /// Indices of the recipe's terms this variant keeps.
    pub terms: Vec<usize>,
}

/// The four variants of `recipe`: CLIP only, + ID, + Seg, all three.
pub fn variants(recipe: &Recipe) -> Result<Vec<Variant>> {
    let names = term_names(recipe.terms());
    let find = |want: &str| -> Result<usize> {
        names.iter().position(|n| n == want).ok_or_else(|| {
            Error::Config(format!(
                "recipe '{}' has no '{want}' term; the ablation recipe must hold clip, identity \
                 and segmentation terms (the full model), e.g. examples/recipes/experiments/ablation-gray-hair.yaml",
                recipe.file().display()
            ))
        })
    };
    let (clip, id, seg) = (find("clip")?, find("identity")?, find("segmentation")?);
    let others: Vec<usize> = (0..names.len()).filter(|i| ![clip, id, seg].contains(i)).collect();
    let with = |extra: &[usize]| -> Vec<usize> {
        let mut v: Vec<usize> = others.iter().copied().chain([clip]).chain(extra.iter().copied()).collect();
        v.sort_unstable();
        v
    };
    let (l_id, l_s) = (recipe.terms()[id].weight, recipe.terms()[seg].weight);
    Ok(vec![
        Variant { label: "CLIP only".into(), slug: "clip".into(), terms: with(&[]) },
        Variant { label: format!("CLIP + ID (λ_ID = {l_id})"), slug: "clip+id".into(), terms: with(&[id]) },
        Variant { label: format!("CLIP + Seg (λ_S = {l_s})"), slug: "clip+seg".into(), terms: with(&[seg]) },
        Variant { label: "CLIP + ID + Seg".into(), slug: "clip+id+seg".into(), terms: with(&[id, seg]) },
    ])
}

/// `recipe` with only the terms of `variant`.
pub fn variant_recipe(recipe: &Recipe, variant: &Variant) -> Result<Recipe> {
    let mut r = recipe.clone();
    r.edit(|raw| raw.terms = variant.terms.iter().map(|&i| recipe.raw().terms[i].clone()).collect())
        .map_err(|e| Error::Config(e.to_string()))?;
    Ok(r)
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// α values of the grid's columns (after the original).
    pub alphas: Vec<f64>,
    /// Override of the recipe's step count.
    pub steps: Option<usize>,
    /// Asks the run to stop (see [`super::Stop`]).
    pub stop: super::Stop,
    /// Grid cell side in pixels (images are shrunk to fit).
    pub cell: u32,
}

/// One measured cell.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    /// Row label.
    pub variant: String,
    /// α.
    pub alpha: f64,
    /// CLIP similarity of the original.
    pub clip_before: f64,
    /// CLIP similarity of the edit.
    pub clip_after: f64,
    /// ArcFace cosine similarity of original and edit.
    pub id_similarity: f64,
    /// Share of the pixel change inside the face parts.
    pub inside_share: f64,
}

/// The ablation's results.
#[derive(Debug, Clone)]
pub struct Ablation {
    /// The variants, in row order.
    pub variants: Vec<Variant>,
    /// α values of the columns.
    pub alphas: Vec<f64>,
    /// The seed of the image.
    pub seed: u64,
    /// The prompt.
    pub prompt: String,
    /// Face parts of the inside share.
    pub classes: Vec<String>,
    /// `[variant][α]`.
    pub metrics: Vec<Vec<Metric>>,
    /// `[variant][original, α…]` images.
    pub images: Vec<Vec<RgbImage>>,
    /// The run folder of each variant.
    pub folders: Vec<PathBuf>,
    /// True when a demo network was used.
    pub demo: bool,
}

/// The segmentation term's parameters that the inside share uses.
#[derive(Debug, Deserialize)]
struct SegParams {
    classes: Vec<String>,
    size: usize,
}

/// ArcFace and BiSeNet for the metrics.
pub(super) struct Judges {
    id: IdLoss,
    parser: BiSeNet,
    classes: Vec<usize>,
    size: usize,
}

fn judges(weights: &Weights, device: &Device, params: &SegParams) -> Result<(Judges, Vec<String>)> {
    let backbone = match &weights.arcface {
        None => arcface::demo(DEMO_MODEL_SEED, device)?,
        Some(p) => Backbone::from_state_dict(crate::torch::load(p)?, device)?,
    };
    let parser = match &weights.bisenet {
        None => bisenet::demo(DEMO_MODEL_SEED, device)?,
        Some(p) => BiSeNet::load(p, device)?,
    };
    let names = params.classes.clone();
    let classes = names.iter().map(|n| bisenet::class_index_or_err(n)).collect::<Result<Vec<_>>>()?;
    Ok((Judges { id: IdLoss::new(backbone), parser, classes, size: params.size }, names))
}

/// The judges of `recipe`'s metrics: the inside share uses its
/// segmentation term's classes and size.
pub(super) fn judges_for(recipe: &Recipe, weights: &Weights, device: &Device) -> Result<(Judges, Vec<String>)> {
    let Some(seg) = term_names(recipe.terms()).iter().position(|n| n == "segmentation") else {
        return Err(Error::Config(format!(
            "recipe '{}' has no 'segmentation' term, whose face parts the inside share measures",
            recipe.file().display()
        )));
    };
    let described = term_library(recipe, seg).map_err(|e| Error::Config(e.to_string()))?.info().params.clone();
    judges(weights, device, &seg_params(&described, &recipe.terms()[seg].params)?)
}

/// The segmentation parameters the inside share uses: the recipe's values
/// over the defaults the plugin describes (so they are never repeated here).
fn seg_params(described: &[crate::plugin::ParamInfo], params: &str) -> Result<SegParams> {
    use yaml_serde::{Mapping, Value};
    let bad = |why: String| Error::Config(format!("the segmentation term's parameters: {why}"));
    let mut merged = Mapping::new();
    for p in described {
        let v: Value =
            yaml_serde::from_str(&p.default).map_err(|e| bad(format!("the plugin's default of '{}': {e}", p.name)))?;
        merged.insert(Value::String(p.name.clone()), v);
    }
    if !params.trim().is_empty() {
        let given: Mapping = yaml_serde::from_str(params).map_err(|e| bad(e.to_string()))?;
        merged.extend(given);
    }
    yaml_serde::from_value(Value::Mapping(merged))
        .map_err(|e| bad(format!("{e} (the plugin must describe 'classes' and 'size', or the recipe give them)")))
}

impl Judges {
    fn mask(&self, images: &Tensor) -> Result<Tensor> {
        let input = bisenet::preprocess_generator_image(images, (self.size, self.size))?;
        let logits = candle_core::Module::forward(&self.parser, &input)?;
        Ok(bisenet::soft_mask(&bisenet::probabilities(&logits)?, &self.classes)?.unsqueeze(1)?)
    }

    /// `(id similarity, inside share)` of `x` `[1, 3, H, W]` and edits `[A, 3, H, W]`.
    pub(super) fn judge(&self, x: &Tensor, edits: &Tensor) -> Result<Vec<(f64, f64)>> {
        let a = edits.dim(0)?;
        let (_, _, h, w) = x.dims4()?;
        let fx = self.id.extract_feats(x)?;
        let fe = self.id.extract_feats(edits)?;
        let id: Vec<f64> = fe.broadcast_mul(&fx)?.sum(1)?.to_dtype(DType::F64)?.to_vec1()?;
        let mx = self.mask(x)?.repeat((a, 1, 1, 1))?;
        let s = mx.maximum(&self.mask(edits)?)?;
        let s = crate::imageops::resample(&s, crate::imageops::Filter::Bilinear, (h, w))?;
        let d2 = edits.broadcast_sub(x)?.sqr()?;
        let inside = d2.broadcast_mul(&s)?.sum((1, 2, 3))?;
        let total = d2.sum((1, 2, 3))?;
        let share: Vec<f64> = (inside / (total + 1e-12)?)?.to_dtype(DType::F64)?.to_vec1()?;
        Ok(id.into_iter().zip(share).collect())
    }
}

/// Trains (or reuses) the four variants into `out/<slug>/`, measures them
/// on the recipe's first training seed, and returns the results.
#[allow(clippy::too_many_arguments)]
pub fn run(
    recipe: &Recipe,
    cfg: &Config,
    out: &Path,
    weights: &Weights,
    gen: &LoadedGenerator,
    clip: &ClipModel,
    device: &Device,
    progress: &mut dyn FnMut(Progress),
) -> Result<Ablation> {
    let variants = variants(recipe)?;
    let seed = recipe.raw().seeds[0];
    let (judges, classes) = judges_for(recipe, weights, device)?;
    let loss = ClipLoss::new(clip.clip.clone(), &clip.tokenizer, &[recipe.raw().prompt.as_str()], Resize::Auto)?;
    let noise = recipe.noise();
    let w = gen.w_plus(seed, recipe.raw().truncation as f64)?;
    let x = gen.image_with(&w, noise)?;
    let before = loss.similarity(&x)?.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?[0];
    let original = tensor_to_rgb(&x)?;

    let total = variants.len();
    let (mut metrics, mut images, mut folders) = (Vec::new(), Vec::new(), Vec::new());
    let trainer = Trainer { weights, device, stop: &cfg.stop };
    for (i, v) in variants.iter().enumerate() {
        if cfg.stop.requested() {
            return Err(Error::Config(format!("stopped before '{}'; run the same command again to continue", v.label)));
        }
        let folder = out.join(&v.slug);
        let label = &v.label;
        trainer.train_local(&variant_recipe(recipe, v)?, seed, &folder, cfg.steps, (i, total, label), progress)?;
        progress(Progress { done: i, total, what: format!("{label}: measuring") });
        let u = load_direction(&folder, device)?;
        let latents = cfg.alphas.iter().map(|&a| Ok((&w + (&u * a)?)?)).collect::<Result<Vec<_>>>()?;
        let mut row_metrics = Vec::new();
        let mut row_images = vec![original.clone()];
        for (chunk, alphas) in latents.chunks(4).zip(cfg.alphas.chunks(4)) {
            let edits = gen.image_with(&Tensor::cat(chunk, 0)?, noise)?;
            let after: Vec<f64> = loss.similarity(&edits)?.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?;
            let judged = judges.judge(&x, &edits)?;
            for (k, &alpha) in alphas.iter().enumerate() {
                row_metrics.push(Metric {
                    variant: v.label.clone(),
                    alpha,
                    clip_before: before,
                    clip_after: after[k],
                    id_similarity: judged[k].0,
                    inside_share: judged[k].1,
                });
                row_images.push(tensor_to_rgb(&edits.narrow(0, k, 1)?)?);
            }
        }
        metrics.push(row_metrics);
        images.push(row_images);
        folders.push(folder);
        progress(Progress { done: i + 1, total, what: format!("{label}: done") });
    }
    Ok(Ablation {
        variants,
        alphas: cfg.alphas.clone(),
        seed,
        prompt: recipe.raw().prompt.clone(),
        classes,
        metrics,
        images,
        folders,
        demo: gen.source.is_demo() || clip.source.is_demo() || weights.arcface.is_none() || weights.bisenet.is_none(),
    })
}

/// Files [`Ablation::write`] made.
#[derive(Debug, Clone)]
pub struct Outputs {
    /// `ablation.png`: the grid.
    pub png: PathBuf,
    /// `ablation.csv`: the metrics.
    pub csv: PathBuf,
}

impl Ablation {
    /// `ablation.csv` text: one row per variant and α.
    pub fn to_csv(&self) -> String {
        let mut s =
            csv_line(&["variant", "alpha", "clip_before", "clip_after", "clip_gain", "id_similarity", "inside_share"]);
        for m in self.metrics.iter().flatten() {
            s.push_str(&csv_line(&[
                m.variant.clone(),
                csv_number(m.alpha),
                csv_number(m.clip_before),
                csv_number(m.clip_after),
                csv_number(m.clip_after - m.clip_before),
                csv_number(m.id_similarity),
                csv_number(m.inside_share),
            ]));
        }
        s
    }

    /// The terminal table.
    pub fn to_table(&self) -> String {
        let header: Vec<String> =
            ["variant", "α", "CLIP gain", "ID sim", "inside share"].iter().map(|s| s.to_string()).collect();
        let rows: Vec<Vec<String>> = self
            .metrics
            .iter()
            .flatten()
            .map(|m| {
                vec![
                    m.variant.clone(),
                    format!("{}", m.alpha),
                    format!("{:+.4}", m.clip_after - m.clip_before),
                    format!("{:.4}", m.id_similarity),
                    format!("{:.3}", m.inside_share),
                ]
            })
            .collect();
        let mut s = format!(
            "ablation of \"{}\" on seed {} (inside share: {})\n",
            self.prompt,
            self.seed,
            self.classes.join(", ")
        );
        s.push_str(&text_table(&header, &rows));
        if self.demo {
            s.push_str(crate::demo::DEMO_LABEL);
            s.push('\n');
        }
        s
    }

    /// The grid: rows = variants, columns = original then each α.
    pub fn grid(&self, cell: u32) -> RgbImage {
        let cells: Vec<Vec<RgbImage>> = self
            .images
            .iter()
            .map(|row| row.iter().map(|im| image::imageops::thumbnail(im, cell, cell)).collect())
            .collect();
        let labels: Vec<String> = self.variants.iter().map(|v| v.label.clone()).collect();
        let mut cols = vec!["original".to_string()];
        cols.extend(self.alphas.iter().map(|a| format!("α = {a}")));
        let title = format!("Ablation: \"{}\" (seed {})", self.prompt, self.seed);
        grid(&cells, &labels, &cols, &title, self.demo.then_some(crate::demo::DEMO_LABEL))
    }

    /// Writes `ablation.png` and `ablation.csv` into `out`.
    pub fn write(&self, out: &Path, cell: u32) -> Result<Outputs> {
        let png = out.join("ablation.png");
        save_png_atomic(&self.grid(cell), &png)?;
        let csv = out.join("ablation.csv");
        write_atomic(&csv, &self.to_csv())?;
        Ok(Outputs { png, csv })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECIPE: &str = "\
prompt: a photo of a person with gray hair
steps: 2
terms:
  - plugin: clip
  - plugin: identity
    weight: 1.0
  - plugin: segmentation
    weight: 0.1
    params:
      classes: [hair]
  - plugin: colour-stats
    weight: 0.5
";

    #[test]
    fn four_variants_keep_other_terms() {
        let r = Recipe::parse(RECIPE, Path::new("a.yaml")).unwrap();
        let v = variants(&r).unwrap();
        let terms: Vec<Vec<usize>> = v.iter().map(|v| v.terms.clone()).collect();
        assert_eq!(terms, vec![vec![0, 3], vec![0, 1, 3], vec![0, 2, 3], vec![0, 1, 2, 3]]);
        assert_eq!(v[1].label, "CLIP + ID (λ_ID = 1)");
        assert_eq!(v[2].label, "CLIP + Seg (λ_S = 0.1)");
        let seg = variant_recipe(&r, &v[2]).expect("a variant of a valid recipe is valid");
        assert_eq!(seg.terms().len(), 3);
        assert_eq!(seg.raw().terms[1].plugin, "segmentation");
        assert_ne!(seg.training_hash(), r.training_hash());

        let no_id =
            Recipe::parse(&RECIPE.replace("  - plugin: identity\n    weight: 1.0\n", ""), Path::new("b.yaml")).unwrap();
        let e = variants(&no_id).unwrap_err().to_string();
        assert!(e.contains("no 'identity' term"), "{e}");
    }

    #[test]
    fn judges_measure_identity_and_inside_share() {
        let dev = Device::Cpu;
        let (j, names) = judges(&Weights::demo(), &dev, &SegParams { classes: vec!["hair".into()], size: 64 }).unwrap();
        assert_eq!(names, vec!["hair"]);
        let x = Tensor::randn(0f32, 0.5, (1, 3, 64, 64), &dev).unwrap();
        let edits = Tensor::cat(&[&(&x + 0.3).unwrap(), &x.affine(-1.0, 0.0).unwrap()], 0).unwrap();
        let m = j.judge(&x, &edits).unwrap();
        assert_eq!(m.len(), 2);
        for (id, share) in m {
            assert!(id.is_finite() && (-1.0 - 1e-6..=1.0 + 1e-6).contains(&id), "{id}");
            assert!(share.is_finite() && (0.0..=1.0 + 1e-6).contains(&share), "{share}");
        }
        // The original against itself: identity 1.
        let same = j.judge(&x, &x).unwrap();
        assert!((same[0].0 - 1.0).abs() < 1e-4, "{}", same[0].0);
    }

    #[test]
    fn segmentation_parameters_are_the_plugins_defaults_under_the_recipes_values() {
        use crate::plugin::ParamInfo;
        let described = [
            ParamInfo::new("classes", "list", "[hair, hat]", ""),
            ParamInfo::new("size", "integer", "128", ""),
            ParamInfo::new("mask", "soft | hard", "soft", ""),
        ];
        let p = seg_params(&described, "").unwrap();
        assert_eq!((p.classes, p.size), (vec!["hair".to_string(), "hat".to_string()], 128));
        let p = seg_params(&described, "size: 64\nmask: hard\n").unwrap();
        assert_eq!((p.classes, p.size), (vec!["hair".to_string(), "hat".to_string()], 64));
        let p = seg_params(&described[1..], "classes: [skin]").unwrap();
        assert_eq!((p.classes, p.size), (vec!["skin".to_string()], 128));
        let e = seg_params(&described[1..], "").unwrap_err().to_string();
        assert!(e.contains("classes"), "{e}");
    }
}

//! What the engine writes and reads back: checkpoints, the run folder's
//! outputs, previews and the CLIP metrics.

// Previews, checkpoints and outputs run every few steps, not inside one:
// their reads are allowed.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use super::events::{Level, Preview, PreviewRow, TrainEvent};
use super::Engine;
use crate::models::clip::{self, Clip, ClipLoss, ClipTokenizer};
use crate::outputs::{self, Direction, DirectionMeta, TermRecord, DIRECTION_FORMAT};
use crate::recipe::{Mode, Norm, RawAlpha, SeedRng};
use crate::render;
use crate::{Error, Result};

/// The checkpoint in a run folder.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// The trained direction(s) in a run folder.
pub const DIRECTION_FILE: &str = "direction.safetensors";
/// The `format` of a checkpoint.
const CHECKPOINT_FORMAT: &str = "lsd-checkpoint/1";

/// What a checkpoint was made with, besides the training settings: the
/// generator file and each loss term's build. `--resume` refuses a
/// checkpoint whose provenance differs, saying what differs.
#[derive(Debug, Clone)]
pub(super) struct Provenance {
    /// SHA-256 of the generator file, or `demo`.
    generator: String,
    /// Each term's name and build: `sha256:<hex>` of its plugin library, or
    /// `in-process`.
    terms: BTreeMap<String, String>,
}

impl Engine {
    /// The provenance of this run (hashes computed once).
    fn provenance(&mut self) -> Result<Provenance> {
        if let Some(p) = &self.provenance {
            return Ok(p.clone());
        }
        let generator = self.generator_checksum()?;
        let mut terms = BTreeMap::new();
        for t in &self.setup.terms {
            let build = match &t.imp {
                super::TermImpl::Plugin(l) => format!("sha256:{}", crate::torch::sha256_file(l.path())?),
                super::TermImpl::InProcess(_) => "in-process".to_string(),
            };
            terms.insert(t.name.clone(), build);
        }
        let p = Provenance { generator, terms };
        self.provenance = Some(p.clone());
        Ok(p)
    }

    /// [`Engine::checkpoint`] during training: a failure (a full disk) is a
    /// warning, not the end of the run. The last good checkpoint stays in
    /// place (writes are atomic) and the next interval tries again.
    pub(super) fn checkpoint_or_warn(&mut self) {
        if let Err(e) = self.checkpoint() {
            let next = self.step + self.recipe.raw().checkpoint_every.max(1);
            self.message(
                Level::Warn,
                format!(
                    "could not write the checkpoint of step {}: {e}; training goes on, the last good checkpoint is kept, and step {next} tries again",
                    self.step
                ),
            );
        }
    }

    /// Writes the checkpoint (trained tensor, optimiser state, step, loss
    /// history; the per-step random streams are re-derived from the seed),
    /// with what it was made with ([`Provenance`], the training settings).
    pub(super) fn checkpoint(&mut self) -> Result<()> {
        let path = super::checkpoint_path(self.recipe.output());
        let (opt, t) = self.opt.state();
        let history = self.history_tensor()?;
        let param = self.param.as_tensor().clone();
        let mut tensors: Vec<(&str, &Tensor)> = vec![("param", &param), ("history", &history)];
        for (k, v) in &opt {
            tensors.push((k.as_str(), v));
        }
        let mut meta = BTreeMap::new();
        meta.insert("format".into(), CHECKPOINT_FORMAT.into());
        meta.insert("step".into(), self.step.to_string());
        meta.insert("optimizer_steps".into(), t.to_string());
        meta.insert("seed".into(), self.recipe.raw().seed.to_string());
        meta.insert("training_hash".into(), self.recipe.training_hash());
        meta.insert("rng".into(), "chacha8: stream 0 initialises, stream s+1 draws step s".into());
        meta.insert("columns".into(), serde_json::to_string(&self.columns()).unwrap_or_default());
        meta.insert("training_recipe".into(), self.recipe.training_yaml());
        let prov = self.provenance()?;
        meta.insert("generator_sha256".into(), prov.generator);
        meta.insert("term_builds".into(), serde_json::to_string(&prov.terms).unwrap_or_default());
        outputs::write_tensors(&path, &tensors, &meta)?;
        self.send(TrainEvent::Checkpoint { step: self.step, path });
        Ok(())
    }

    /// Loads the run folder's checkpoint, if any.
    pub(super) fn resume(&mut self) -> Result<()> {
        let path = super::checkpoint_path(self.recipe.output());
        if !path.is_file() {
            self.message(Level::Info, format!("no checkpoint at {}: starting from step 0", path.display()));
            return Ok(());
        }
        let (tensors, meta) = outputs::read_tensors(&path, self.device())?;
        let bad = |reason: String| Error::Checkpoint { path: path.clone(), reason };
        if meta.get("format").map(String::as_str) != Some(CHECKPOINT_FORMAT) {
            return Err(bad("not an lsd-tui checkpoint".into()));
        }
        let differs = self.provenance_differences(&meta)?;
        if !differs.is_empty() {
            return Err(bad(format!(
                "it was made with {}; run without --resume to start over, or choose another --output",
                differs.join("; ")
            )));
        }
        let step: usize = meta.get("step").and_then(|s| s.parse().ok()).ok_or_else(|| bad("no step".into()))?;
        let t: u64 =
            meta.get("optimizer_steps").and_then(|s| s.parse().ok()).ok_or_else(|| bad("no optimizer_steps".into()))?;
        let param = tensors.get("param").ok_or_else(|| bad("no 'param' tensor".into()))?;
        if param.dims() != self.param.as_tensor().dims() {
            return Err(bad(format!(
                "'param' has shape {:?}, this run trains {:?}",
                param.dims(),
                self.param.as_tensor().dims()
            )));
        }
        self.param.set(&param.to_dtype(DType::F32)?)?;
        self.opt.restore(&tensors, t, self.param.as_tensor())?;
        self.history = match tensors.get("history") {
            Some(h) if h.elem_count() > 0 => h.to_dtype(DType::F64)?.to_vec2::<f64>()?,
            _ => Vec::new(),
        };
        self.history.truncate(step);
        self.step = step.min(self.recipe.raw().steps);
        Ok(())
    }

    /// What differs between this run and the checkpoint's metadata: the
    /// training settings (naming the keys when the checkpoint recorded
    /// them), the generator file, each term's build. Checkpoints written
    /// before the provenance was recorded are checked on what they have.
    fn provenance_differences(&mut self, meta: &BTreeMap<String, String>) -> Result<Vec<String>> {
        let mut out = Vec::new();
        if meta.get("training_hash") != Some(&self.recipe.training_hash()) {
            let keys = meta
                .get("training_recipe")
                .map(|old| crate::recipe::differing_keys(old, &self.recipe.training_yaml()))
                .unwrap_or_default();
            out.push(if keys.is_empty() {
                "a different recipe (its training settings changed)".to_string()
            } else {
                format!(
                    "a different recipe: {} changed",
                    keys.iter().map(|k| format!("'{k}'")).collect::<Vec<_>>().join(", ")
                )
            });
        }
        let now = self.provenance()?;
        if let Some(then) = meta.get("generator_sha256") {
            if *then != now.generator {
                let file =
                    self.setup.weights.generator.as_ref().map_or("demo".to_string(), |p| p.display().to_string());
                out.push(format!(
                    "a different generator file (sha256 {} then, {} now for '{file}')",
                    short(then),
                    short(&now.generator)
                ));
            }
        }
        if let Some(then) = meta.get("term_builds") {
            let then: BTreeMap<String, String> = serde_json::from_str(then).unwrap_or_default();
            for (name, build) in &now.terms {
                match then.get(name) {
                    Some(b) if b == build => {}
                    Some(b) => out.push(format!(
                        "a different build of loss term '{name}' ({} then, {} now)",
                        short(b),
                        short(build)
                    )),
                    None => out.push(format!("no loss term '{name}'")),
                }
            }
            for name in then.keys().filter(|n| !now.terms.contains_key(*n)) {
                out.push(format!("loss term '{name}', which this run does not have"));
            }
        }
        Ok(out)
    }

    fn history_tensor(&self) -> Result<Tensor> {
        let cols = self.columns().len();
        let flat: Vec<f64> = self.history.iter().flat_map(|r| r.iter().copied()).collect();
        Ok(Tensor::from_vec(flat, (self.history.len(), cols), &candle_core::Device::Cpu)?)
    }

    fn generator_checksum(&mut self) -> Result<String> {
        if let Some(s) = &self.generator_sha {
            return Ok(s.clone());
        }
        let s = match &self.setup.weights.generator {
            None => "demo".to_string(),
            Some(p) => crate::torch::sha256_file(p)?,
        };
        self.generator_sha = Some(s.clone());
        Ok(s)
    }

    /// The saved direction with its metadata.
    fn direction(&mut self) -> Result<Direction> {
        let raw = self.recipe.raw().clone();
        let alpha = match &raw.alpha {
            RawAlpha::Fixed(a) => format!("{a}"),
            RawAlpha::Range { min, max, min_abs } => format!("{{min: {min}, max: {max}, min_abs: {min_abs}}}"),
        };
        let meta = DirectionMeta {
            format: DIRECTION_FORMAT.into(),
            name: self.recipe.name().to_string(),
            recipe_hash: self.recipe.hash(),
            prompt: raw.prompt.clone(),
            mode: self.info(0).mode,
            terms: self
                .recipe
                .terms()
                .iter()
                .map(|t| TermRecord { plugin: t.plugin.clone(), weight: t.weight, params: t.params.clone() })
                .collect(),
            generator: String::from(raw.models.generator.clone()),
            generator_sha256: self.generator_checksum()?,
            truncation: raw.truncation,
            noise: raw.noise.name().into(),
            norm: match raw.norm {
                Norm::Layer => "layer",
                Norm::Total => "total",
                Norm::None => "none",
            }
            .into(),
            layers: self.recipe.layers().map(<[usize]>::to_vec).unwrap_or_default(),
            alpha,
            steps: self.step,
            seed: raw.seed,
            seeds: raw.seeds.clone(),
            seed_rng: match raw.seed_rng {
                SeedRng::Chacha => String::new(),
                SeedRng::Numpy => "numpy".into(),
            },
        };
        let direction = self.effective()?.detach();
        let latent = match &self.w0 {
            Some(w0) => Some((w0 + &direction)?),
            None => None,
        };
        Ok(Direction { direction, latent, meta })
    }

    /// Writes every output of the run folder, atomically; `full` adds the
    /// strips, the loss plot and the metrics (skipped for quick saves).
    pub(super) fn write_outputs(&mut self, started: Instant, full: bool) -> Result<()> {
        let out = self.recipe.output().to_path_buf();
        let d = self.direction()?;
        outputs::write_direction(&out.join(DIRECTION_FILE), &d)?;
        outputs::write_atomic(&out.join("recipe.yaml"), self.recipe.to_yaml().as_bytes())?;
        outputs::write_atomic(&out.join("losses.csv"), outputs::csv(&self.columns(), &self.history).as_bytes())?;
        self.checkpoint()?;
        if full {
            for &seed in &self.recipe.preview().seeds.clone() {
                let rows = self.preview_rows(seed)?;
                let img = self.strip(&rows)?;
                render::save_png_atomic(&img, &out.join(format!("strip-{}.png", self.image_label(seed))))?;
            }
            render::save_png_atomic(&self.loss_plot(), &out.join("losses.png"))?;
            let metrics = self.metrics(started)?;
            outputs::write_json(&out.join("metrics.json"), &metrics)?;
        }
        Ok(())
    }

    fn footer(&self) -> Option<&'static str> {
        self.info(0).demo.then_some(crate::demo::DEMO_LABEL)
    }

    /// A labelled strip: one row per direction, original then each α.
    fn strip(&self, rows: &[PreviewRow]) -> Result<image::RgbImage> {
        let mut cells = Vec::new();
        let mut labels = Vec::new();
        for (k, r) in rows.iter().enumerate() {
            let mut row = vec![r.original.clone()];
            row.extend(r.edits.iter().cloned());
            cells.push(row);
            let name = match crate::latents::index(r.seed) {
                Some(_) => self.image_label(r.seed),
                None => format!("seed {}", r.seed),
            };
            labels.push(if rows.len() > 1 { format!("{name} u{k}") } else { name });
        }
        let mut cols = vec!["original".to_string()];
        cols.extend(self.preview_alphas.iter().map(|a| format!("a={a}")));
        let title = format!("{}: \"{}\" (step {})", self.recipe.name(), self.recipe.raw().prompt, self.step);
        Ok(render::grid(&cells, &labels, &cols, &title, self.footer()))
    }

    fn loss_plot(&self) -> image::RgbImage {
        let cols = self.columns();
        let series = (1..cols.len() - super::TAIL_COLUMNS.len())
            .map(|c| render::Series {
                name: cols[c].clone(),
                points: self.history.iter().map(|r| (r[0], r[c])).collect(),
                band: None,
                color: render::PALETTE[(c - 1) % render::PALETTE.len()],
            })
            .collect();
        let spec = render::PlotSpec {
            title: format!("{}: losses", self.recipe.name()),
            x_label: "step".into(),
            y_label: "loss (unweighted; total weighted)".into(),
            log_y: false,
            series,
            size: (720, 420),
        };
        let img = render::line_plot(&spec);
        match self.footer() {
            Some(f) => render::add_footer(&img, f),
            None => img,
        }
    }

    /// The preview rows of one seed: one row per direction (latent mode:
    /// the seed's own offset), original and one edit per preview α.
    fn preview_rows(&self, seed: u64) -> Result<Vec<PreviewRow>> {
        let noise = self.noise();
        let u = self.effective()?.detach();
        let (w, dirs): (Tensor, Vec<Tensor>) = match (&self.w0, self.recipe.raw().mode) {
            (Some(w0), Mode::Latent) => {
                let i = self.train_keys().iter().position(|&s| s == seed).ok_or_else(|| {
                    Error::Config(format!(
                        "preview seed {seed} is not a training seed; latent mode only has offsets for those"
                    ))
                })?;
                (w0.narrow(0, i, 1)?, vec![u.narrow(0, i, 1)?])
            }
            _ => (self.w_plus(seed)?, (0..u.dim(0)?).map(|k| u.narrow(0, k, 1)).collect::<candle_core::Result<_>>()?),
        };
        let render_one = |lat: &Tensor| -> Result<image::RgbImage> {
            let img = self.gen.synthesis(lat, noise, false)?.image;
            render::tensor_to_rgb(&img)
        };
        let original = render_one(&w)?;
        let mut rows = Vec::new();
        for dir in dirs {
            let edits = self
                .preview_alphas
                .iter()
                .map(|&a| render_one(&(&w + (&dir * a as f64)?)?))
                .collect::<Result<Vec<_>>>()?;
            let label = match crate::latents::index(seed) {
                Some(_) => self.image_label(seed),
                None => format!("#{seed}"),
            };
            rows.push(PreviewRow { seed, label, original: original.clone(), edits });
        }
        Ok(rows)
    }

    /// Renders and sends previews of the current direction.
    pub(super) fn preview(&mut self) -> Result<()> {
        let mut rows = Vec::new();
        for &seed in &self.recipe.preview().seeds {
            rows.extend(self.preview_rows(seed)?);
        }
        self.send(TrainEvent::Preview(Preview { step: self.step, alphas: self.preview_alphas.clone(), rows }));
        Ok(())
    }

    /// The host's CLIP: the recipe's weights, or the demo CLIP.
    fn host_clip(&self) -> Result<(Clip, ClipTokenizer, String)> {
        let dev = self.device();
        match &self.setup.weights.clip {
            None => {
                let (c, t) = clip::demo(crate::demo::DEMO_MODEL_SEED, dev)?;
                Ok((c, t, "demo".into()))
            }
            Some(path) => {
                let dir = path.parent().unwrap_or(Path::new("."));
                let tensors = crate::torch::load(path)?;
                let cfg_file = dir.join("config.json");
                let cfg = if cfg_file.is_file() {
                    clip::Config::from_file(&cfg_file)?
                } else {
                    clip::Config::from_tensors(&tensors)?
                };
                let tok_file = dir.join("tokenizer.json");
                let tok =
                    if tok_file.is_file() { ClipTokenizer::from_file(&tok_file)? } else { ClipTokenizer::embedded()? };
                let c = Clip::new(&cfg, VarBuilder::from_tensors(tensors, DType::F32, dev))?;
                Ok((c, tok, path.display().to_string()))
            }
        }
    }

    /// `metrics.json`: final values and CLIP similarity before/after over α.
    fn metrics(&mut self, started: Instant) -> Result<serde_json::Value> {
        let cols = self.columns();
        let last = self.history.last().cloned();
        let mut finals = serde_json::Map::new();
        if let Some(row) = &last {
            for (c, v) in cols.iter().zip(row).skip(1) {
                finals.insert(c.clone(), serde_json::json!(v));
            }
        }
        let first = self.history.first().map(|r| r[1]);
        let elapsed = started.elapsed().as_secs_f64();
        let mut value = serde_json::json!({
            "recipe": self.recipe.name(),
            "prompt": self.recipe.raw().prompt,
            "steps": self.step,
            "total_steps": self.recipe.raw().steps,
            "elapsed_s": elapsed,
            "demo": self.info(0).demo,
            "initial_total": first,
            "final": finals,
        });
        if self.setup.metrics {
            let (c, tok, model) = self.host_clip()?;
            let loss = ClipLoss::new(c, &tok, &[self.recipe.raw().prompt.as_str()], clip::preprocess::Resize::Auto)?;
            let mut alphas = self.preview_alphas.clone();
            alphas.push(0.0);
            alphas.sort_by(|a, b| a.total_cmp(b));
            alphas.dedup();
            let u = self.effective()?.detach();
            let mut per_seed = serde_json::Map::new();
            let mut sums = vec![0f64; alphas.len()];
            let seeds = self.recipe.preview().seeds.clone();
            for &seed in &seeds {
                let (w, dir) = match (&self.w0, self.recipe.raw().mode) {
                    (Some(w0), Mode::Latent) => {
                        let i = self.train_keys().iter().position(|&s| s == seed).unwrap_or(0);
                        (w0.narrow(0, i, 1)?, u.narrow(0, i, 1)?)
                    }
                    _ => (self.w_plus(seed)?, u.narrow(0, 0, 1)?),
                };
                let lat = alphas.iter().map(|&a| Ok((&w + (&dir * a as f64)?)?)).collect::<Result<Vec<_>>>()?;
                let imgs = self.gen.synthesis(&Tensor::cat(&lat, 0)?, self.noise(), false)?.image;
                let sims: Vec<f64> = loss.similarity(&imgs)?.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?;
                for (s, v) in sums.iter_mut().zip(&sims) {
                    *s += v;
                }
                per_seed.insert(self.image_label(seed), serde_json::json!(sims));
            }
            let mean: Vec<f64> = sums.iter().map(|s| s / seeds.len().max(1) as f64).collect();
            let zero = alphas.iter().position(|&a| a == 0.0).unwrap_or(0);
            let typical = self.recipe.alpha().typical();
            let after_i = alphas
                .iter()
                .enumerate()
                .min_by(|a, b| (a.1 - typical).abs().total_cmp(&(b.1 - typical).abs()))
                .map_or(0, |x| x.0);
            value["clip_similarity"] = serde_json::json!({
                "model": model,
                "direction": 0,
                "alphas": alphas,
                "per_seed": per_seed,
                "mean": mean,
                "before": mean[zero],
                "after": mean[after_i],
                "after_alpha": alphas[after_i],
            });
        }
        Ok(value)
    }
}

/// The first 12 characters of a checksum, for messages (`sha256:` kept).
fn short(s: &str) -> &str {
    let keep = if s.starts_with("sha256:") { 19 } else { 12 };
    s.get(..keep).unwrap_or(s)
}

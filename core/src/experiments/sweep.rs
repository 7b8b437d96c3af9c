//! λ sweeps: one recipe trained over the grid of the values given for some
//! of its settings (`--set identity.weight=0.1,0.5,1 --set alpha=2,3`),
//! each run measured with the ablation's metrics, summarised in one table
//! and one labelled grid.
//!
//! A setting names a term's field by the term's plugin name
//! (`identity.weight`, `segmentation.params.size`) or any recipe key by its
//! path (`alpha`, `optimizer.lr`, `steps`); every combination is a recipe
//! checked as a file would be, so a bad key or value is refused before
//! anything trains. Each run trains into `runs/<slug>/` (reused when
//! finished, resumed when stopped: [`super::train`]) and keeps its own
//! measurement (`sweep-run.json`) and images, so the summary is computed
//! from folders alone: shards of a cluster job array (`--shard I/N`) are
//! joined by [`merge`] with no model loaded, to the same numbers.
//!
//! Metrics (see [`super::ablation`]) on the recipe's first training seed at
//! the run's α (the fixed α, or the bound of largest magnitude): CLIP gain,
//! ID similarity, inside share. The grid shows, per run, the original and
//! the edits at −α and +α.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use serde::{Deserialize, Serialize};

use super::ablation::judges_for;
use super::models::{ClipModel, LoadedGenerator};
use super::table::{csv_line, csv_number, text_table, write_atomic};
use super::train::{load_direction, train_or_reuse};
use super::{Progress, Stop};
use crate::engine::Weights;
use crate::models::clip::preprocess::Resize;
use crate::models::clip::ClipLoss;
use crate::recipe::Recipe;
use crate::render::{grid, save_png_atomic, tensor_to_rgb};
use crate::{Error, Result};

/// The plan of a sweep folder.
pub const SWEEP_FILE: &str = "sweep.json";
/// A run's measurement, in its folder.
pub const RUN_FILE: &str = "sweep-run.json";
/// The images of a run's grid row, in its folder.
const CELLS: [&str; 3] = ["sweep-original.png", "sweep-minus.png", "sweep-plus.png"];

/// One `--set KEY=V1,V2,…`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Setting {
    /// `identity.weight`, `alpha`, `optimizer.lr`, …
    pub key: String,
    /// The values, as written (YAML scalars).
    pub values: Vec<String>,
}

/// Parses `KEY=V1,V2,…`.
pub fn parse_setting(text: &str) -> Result<Setting> {
    let bad = |why: &str| Error::Config(format!("--set '{text}': {why}; write e.g. --set identity.weight=0.1,0.5,1"));
    let (key, values) = text.split_once('=').ok_or_else(|| bad("no '='"))?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(bad("the key is empty"));
    }
    let values: Vec<String> = values.split(',').map(|v| v.trim().to_string()).collect();
    if values.iter().any(String::is_empty) {
        return Err(bad("an empty value"));
    }
    Ok(Setting { key: key.to_string(), values })
}

/// One run of the grid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Point {
    /// Its folder name, e.g. `identity.weight=0.5,alpha=2`.
    pub slug: String,
    /// Its `(key, value)` for every setting, in setting order.
    pub values: Vec<(String, String)>,
}

/// Every combination, the first setting varying slowest.
pub fn points(settings: &[Setting]) -> Vec<Point> {
    let mut out = vec![Vec::new()];
    for s in settings {
        out = out
            .into_iter()
            .flat_map(|prefix: Vec<(String, String)>| {
                s.values.iter().map(move |v| {
                    let mut p = prefix.clone();
                    p.push((s.key.clone(), v.clone()));
                    p
                })
            })
            .collect();
    }
    out.into_iter()
        .map(|values| {
            let slug = values
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
                .chars()
                .map(|c| if c.is_alphanumeric() || "-_.=,+".contains(c) { c } else { '_' })
                .collect();
            Point { slug, values }
        })
        .collect()
}

/// `recipe` with `point`'s values, training into `folder` (checked as a
/// recipe file is: a bad key or value is an error naming it).
pub fn point_recipe(recipe: &Recipe, point: &Point, folder: &Path, steps: Option<usize>) -> Result<Recipe> {
    use yaml_serde::Value;
    let mut raw = yaml_serde::to_value(recipe.raw()).map_err(|e| Error::Config(format!("recipe: {e}")))?;
    for (key, text) in &point.values {
        let value: Value = yaml_serde::from_str(text).unwrap_or_else(|_| Value::String(text.clone()));
        let parts: Vec<&str> = key.split('.').collect();
        let term = recipe.raw().terms.iter().position(|t| t.plugin == parts[0]);
        let (mut node, rest) = match (term, parts.len()) {
            (Some(i), n) if n > 1 => (&mut raw["terms"][i], &parts[1..]),
            _ => (&mut raw, &parts[..]),
        };
        for p in rest {
            if !node.is_mapping() {
                *node = Value::Mapping(Default::default());
            }
            let map = node.as_mapping_mut().expect("a mapping");
            node = map.entry(Value::String((*p).to_string())).or_insert(Value::Null);
        }
        *node = value;
    }
    let text = yaml_serde::to_string(&raw).map_err(|e| Error::Config(format!("recipe: {e}")))?;
    let mut r = Recipe::parse(&text, recipe.file()).map_err(|e| {
        Error::Config(format!(
            "--set {}: {}",
            point.values.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "),
            e.message
        ))
    })?;
    if let Some(s) = steps {
        r.edit(|raw| raw.steps = s).map_err(|e| Error::Config(e.to_string()))?;
    }
    r.set_output(folder.to_path_buf());
    Ok(r)
}

/// What a sweep folder holds ([`SWEEP_FILE`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The base recipe's hash (before the settings).
    pub recipe_hash: String,
    /// The prompt.
    pub prompt: String,
    /// The settings.
    pub settings: Vec<Setting>,
    /// `--steps`, if given.
    pub steps: Option<usize>,
    /// `(I, N)` of a shard, `None` for the whole grid or a merge.
    pub shard: Option<(usize, usize)>,
    /// True when a demo network was used.
    pub demo: bool,
}

impl Plan {
    fn same_sweep(&self, other: &Plan) -> std::result::Result<(), String> {
        if self.recipe_hash != other.recipe_hash {
            return Err("different recipes".into());
        }
        if self.settings != other.settings || self.steps != other.steps {
            return Err("different --set or --steps".into());
        }
        Ok(())
    }
}

/// One measured run ([`RUN_FILE`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    /// The run's folder name.
    pub slug: String,
    /// The training hash of the run's recipe (a changed recipe is measured again).
    pub training_hash: String,
    /// The α measured at.
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

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The settings.
    pub settings: Vec<Setting>,
    /// Override of every run's step count.
    pub steps: Option<usize>,
    /// `(I, N)`: run only part I of N of the grid.
    pub shard: Option<(usize, usize)>,
    /// Asks the sweep to stop (see [`Stop`]).
    pub stop: Stop,
}

fn run_folder(out: &Path, slug: &str) -> PathBuf {
    out.join("runs").join(slug)
}

fn write_plan(out: &Path, plan: &Plan) -> Result<()> {
    let text = serde_json::to_string_pretty(plan).map_err(|e| Error::Config(e.to_string()))?;
    write_atomic(&out.join(SWEEP_FILE), &text)
}

fn read_plan(out: &Path) -> Result<Plan> {
    let path = out.join(SWEEP_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io("reading", &path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Config(format!("'{}': {e}", path.display())))
}

/// Trains and measures the grid (or its shard) into `out`, reusing
/// finished runs, and returns the summary of every run measured in `out`.
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
) -> Result<Summary> {
    if cfg.settings.is_empty() {
        return Err(Error::Config("a sweep needs at least one --set KEY=V1,V2".into()));
    }
    let all = points(&cfg.settings);
    // Check every combination before training any.
    let recipes = all
        .iter()
        .map(|p| point_recipe(recipe, p, &run_folder(out, &p.slug), cfg.steps))
        .collect::<Result<Vec<_>>>()?;
    let seed =
        *recipe.raw().seeds.first().ok_or_else(|| {
            Error::Config("a sweep measures on the recipe's first seed; list one under 'seeds'".into())
        })?;
    let demo = gen.source.is_demo() || clip.source.is_demo() || weights.arcface.is_none() || weights.bisenet.is_none();
    let plan = Plan {
        recipe_hash: recipe.hash(),
        prompt: recipe.raw().prompt.clone(),
        settings: cfg.settings.clone(),
        steps: cfg.steps,
        shard: cfg.shard,
        demo,
    };
    if out.join(SWEEP_FILE).is_file() {
        read_plan(out)?.same_sweep(&plan).map_err(|why| {
            Error::Config(format!("'{}' holds another sweep ({why}); use another --output", out.display()))
        })?;
    }
    write_plan(out, &plan)?;
    let mine: Vec<usize> = match cfg.shard {
        Some((i, n)) => super::seeds::shard(&(0..all.len()).collect::<Vec<_>>(), i, n),
        None => (0..all.len()).collect(),
    };
    let (judges, _) = judges_for(recipe, weights, device)?;
    let loss = ClipLoss::new(clip.clip.clone(), &clip.tokenizer, &[recipe.raw().prompt.as_str()], Resize::Auto)?;
    let total = mine.len();
    for (n, &i) in mine.iter().enumerate() {
        if cfg.stop.requested() {
            return Err(Error::Config(format!(
                "stopped before '{}'; run the same command again to continue",
                all[i].slug
            )));
        }
        let (p, r) = (&all[i], &recipes[i]);
        let folder = r.output().to_path_buf();
        let slug = p.slug.clone();
        let hash = r.training_hash();
        let trained = train_or_reuse(r.clone(), weights, device, &cfg.stop, &mut |s| {
            progress(Progress { done: n, total, what: format!("{slug}: step {}/{}", s.step, s.steps) })
        })?;
        let measured = read_measured(&folder).is_some_and(|m| m.training_hash == hash);
        if !(trained.reused && measured) {
            progress(Progress { done: n, total, what: format!("{slug}: measuring") });
            let noise = r.noise();
            let w = gen.w_plus(seed, r.raw().truncation as f64)?;
            let u = load_direction(&folder, device)?;
            let alpha = r.alpha().typical() as f64;
            let lat = Tensor::cat(&[w.clone(), (&w - (&u * alpha)?)?, (&w + (&u * alpha)?)?], 0)?;
            let images = gen.image_with(&lat, noise)?;
            let sims: Vec<f64> = loss.similarity(&images)?.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?;
            let x = images.narrow(0, 0, 1)?;
            let judged = judges.judge(&x, &images.narrow(0, 2, 1)?)?;
            for (k, name) in CELLS.iter().enumerate() {
                save_png_atomic(&tensor_to_rgb(&images.narrow(0, k, 1)?)?, &folder.join(name))?;
            }
            let m = Measured {
                slug: p.slug.clone(),
                training_hash: hash,
                alpha,
                clip_before: sims[0],
                clip_after: sims[2],
                id_similarity: judged[0].0,
                inside_share: judged[0].1,
            };
            let text = serde_json::to_string_pretty(&m).map_err(|e| Error::Config(e.to_string()))?;
            write_atomic(&folder.join(RUN_FILE), &text)?;
        }
        progress(Progress { done: n + 1, total, what: format!("{slug}: done") });
    }
    summarize(out)
}

fn read_measured(folder: &Path) -> Option<Measured> {
    serde_json::from_str(&std::fs::read_to_string(folder.join(RUN_FILE)).ok()?).ok()
}

/// The measured runs of a sweep folder, in grid order.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The plan.
    pub plan: Plan,
    /// `(point, its measurement)` of every measured run.
    pub rows: Vec<(Point, Measured)>,
    /// Slugs of the grid's runs not measured in this folder.
    pub missing: Vec<String>,
}

/// Reads a sweep folder's plan and every run measurement (no model).
pub fn summarize(out: &Path) -> Result<Summary> {
    let plan = read_plan(out)?;
    let (mut rows, mut missing) = (Vec::new(), Vec::new());
    for p in points(&plan.settings) {
        match read_measured(&run_folder(out, &p.slug)) {
            Some(m) => rows.push((p, m)),
            None => missing.push(p.slug),
        }
    }
    Ok(Summary { plan, rows, missing })
}

/// Joins shard folders into `dest`: checks they ran the same sweep, copies
/// their run folders, and summarises all of them.
pub fn merge(dest: &Path, shards: &[PathBuf]) -> Result<Summary> {
    let mut plan: Option<Plan> = None;
    for shard in shards {
        let p = read_plan(shard)?;
        if let Some(first) = &plan {
            first.same_sweep(&p).map_err(|why| {
                Error::Config(format!(
                    "'{}' and '{}' ran different sweeps ({why}); merge only shards of one sweep",
                    shards[0].display(),
                    shard.display()
                ))
            })?;
        }
        let same = shard.canonicalize().ok() == dest.canonicalize().ok();
        for point in points(&p.settings) {
            let (from, to) = (run_folder(shard, &point.slug), run_folder(dest, &point.slug));
            if !same && from.join(RUN_FILE).is_file() && !to.join(RUN_FILE).is_file() {
                super::generalize::copy_dir(&from, &to)?;
            }
        }
        plan.get_or_insert(p);
    }
    let mut plan = plan.ok_or_else(|| Error::Config("merge needs at least one shard folder".into()))?;
    plan.shard = None;
    write_plan(dest, &plan)?;
    summarize(dest)
}

impl Summary {
    /// The header of the tables: the settings' keys, then the metrics.
    fn header(&self) -> Vec<String> {
        let mut h: Vec<String> = self.plan.settings.iter().map(|s| s.key.clone()).collect();
        h.extend(
            ["edit_alpha", "clip_before", "clip_after", "clip_gain", "id_similarity", "inside_share"].map(String::from),
        );
        h
    }

    /// `sweep.csv`: one row per measured run.
    pub fn to_csv(&self) -> String {
        let mut out = csv_line(&self.header());
        for (p, m) in &self.rows {
            let mut line: Vec<String> = p.values.iter().map(|(_, v)| v.clone()).collect();
            line.extend(
                [m.alpha, m.clip_before, m.clip_after, m.clip_after - m.clip_before, m.id_similarity, m.inside_share]
                    .map(csv_number),
            );
            out.push_str(&csv_line(&line));
        }
        out
    }

    /// The table for the terminal (3 decimals).
    pub fn to_table(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|(p, m)| {
                let mut r: Vec<String> = p.values.iter().map(|(_, v)| v.clone()).collect();
                r.push(format!("{}", m.alpha));
                r.extend(
                    [m.clip_before, m.clip_after, m.clip_after - m.clip_before, m.id_similarity, m.inside_share]
                        .map(|v| format!("{v:.3}")),
                );
                r
            })
            .collect();
        let mut t = text_table(&self.header(), &rows);
        if !self.missing.is_empty() {
            t.push_str(&format!("{} run(s) not measured here: {}\n", self.missing.len(), self.missing.join(" ")));
        }
        if self.plan.demo {
            t.push_str(crate::demo::DEMO_LABEL);
            t.push('\n');
        }
        t
    }

    /// The grid: one row per measured run (labelled with its values), the
    /// original and the edits at −α and +α.
    pub fn grid(&self, out: &Path, cell: u32) -> Result<RgbImage> {
        let mut cells = Vec::new();
        let mut labels = Vec::new();
        for (p, m) in &self.rows {
            let folder = run_folder(out, &p.slug);
            let row = CELLS
                .iter()
                .map(|name| {
                    let path = folder.join(name);
                    let im = image::open(&path)
                        .map_err(|e| Error::Checkpoint {
                            path: path.clone(),
                            reason: format!("cannot read the image: {e}"),
                        })?
                        .to_rgb8();
                    Ok(image::imageops::thumbnail(&im, cell, cell))
                })
                .collect::<Result<Vec<_>>>()?;
            cells.push(row);
            labels.push(format!(
                "{} (a={})",
                p.values.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "),
                m.alpha
            ));
        }
        let cols = vec!["original".to_string(), "-a".into(), "+a".into()];
        let title = format!("Sweep: \"{}\"", self.plan.prompt);
        Ok(grid(&cells, &labels, &cols, &title, self.plan.demo.then_some(crate::demo::DEMO_LABEL)))
    }

    /// Writes `sweep.csv` and `sweep.png` into `out`.
    pub fn write(&self, out: &Path, cell: u32) -> Result<(PathBuf, PathBuf)> {
        let csv = out.join("sweep.csv");
        write_atomic(&csv, &self.to_csv())?;
        let png = out.join("sweep.png");
        save_png_atomic(&self.grid(out, cell)?, &png)?;
        Ok((csv, png))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECIPE: &str = "\
prompt: gray hair
steps: 3
alpha: 3
terms:
  - plugin: clip
  - plugin: identity
    weight: 1
  - plugin: segmentation
    weight: 0.1
    params:
      classes: [hair]
";

    #[test]
    fn settings_make_a_checked_grid_of_recipes() {
        let r = Recipe::parse(RECIPE, Path::new("s.yaml")).unwrap();
        let settings = vec![
            parse_setting("identity.weight=0.1, 0.5").unwrap(),
            parse_setting("alpha=2,3").unwrap(),
            parse_setting("optimizer.lr=0.05").unwrap(),
        ];
        let ps = points(&settings);
        assert_eq!(ps.len(), 4);
        assert_eq!(ps[1].slug, "identity.weight=0.1,alpha=3,optimizer.lr=0.05");
        let dir = Path::new("out/runs/x");
        let v = point_recipe(&r, &ps[2], dir, Some(7)).unwrap();
        assert_eq!(v.terms()[1].weight, 0.5);
        assert_eq!(v.terms()[2].weight, 0.1);
        assert_eq!(v.alpha().typical(), 2.0);
        assert_eq!(v.raw().optimizer.lr, 0.05);
        assert_eq!((v.raw().steps, v.output()), (7, dir));
        let p = Point { slug: "s".into(), values: vec![("segmentation.params.size".into(), "64".into())] };
        assert!(point_recipe(&r, &p, dir, None).unwrap().terms()[2].params.contains("size: 64"));
        // A bad key or value is refused, naming it.
        let p = Point { slug: "s".into(), values: vec![("alpah".into(), "2".into())] };
        let e = point_recipe(&r, &p, dir, None).unwrap_err().to_string();
        assert!(e.contains("alpah"), "{e}");
        let p = Point { slug: "s".into(), values: vec![("identity.weight".into(), "-1".into())] };
        assert!(point_recipe(&r, &p, dir, None).is_err());
        for bad in ["alpha", "=1", "alpha=1,,2", "a..b=1"] {
            assert!(parse_setting(bad).is_err(), "{bad}");
        }
    }
}

//! Generalisation of local directions to unseen images (report Fig. 8).
//!
//! One local direction is trained per training seed (each in its own run
//! folder `directions/seed-<S>/`, resumable and reused when finished). Each
//! direction is then applied over an α sweep to its own image ("trained")
//! and to every test seed's image ("unseen"), and the CLIP similarity to the
//! prompt is measured against the unedited image: `ΔCLIP(α) = cos(E(G(w +
//! α·u)), t) − cos(E(G(w)), t)`. The report's claim is that the unseen
//! curve follows the trained one.
//!
//! Directions made elsewhere (imported, SeFa's, another recipe's; see
//! [`crate::direction_io`]) are measured the same way without training:
//! each in its own folder `directions/given-<I>/`, on every test seed, so
//! all of their rows are "unseen".
//!
//! Every direction folder keeps its own measurements (`delta.csv`), so the
//! summary is computed from folders alone: shards of a cluster job array
//! (`--shard I/N`, one block of training seeds each) are joined by
//! [`merge`], with no model loaded.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::models::{ClipModel, LoadedGenerator};
use super::table::{csv_line, csv_number, read_csv, text_table, write_atomic};
use super::train::{load_direction, Trainer};
use super::Progress;
use crate::direction_io::GivenDirection;
use crate::engine::Weights;
use crate::models::clip::preprocess::Resize;
use crate::models::clip::ClipLoss;
use crate::recipe::Recipe;
use crate::render::{add_footer, line_plot, save_png_atomic, PlotSpec, Series, PALETTE};
use crate::{Error, Result};

/// The experiment's description file at the top of its folder.
pub const EXPERIMENT_FILE: &str = "generalize.json";
/// Each direction folder's measurements.
pub const DELTA_FILE: &str = "delta.csv";
const DELTA_KEY_FILE: &str = "delta-key.txt";
const DELTA_HEADER: [&str; 7] = ["direction_seed", "image_seed", "kind", "alpha", "clip_before", "clip_after", "delta"];

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Training seeds of this run (after `--shard`): one direction each.
    pub train_seeds: Vec<u64>,
    /// Seeds of the unseen images.
    pub test_seeds: Vec<u64>,
    /// α values to measure (0 is added).
    pub alphas: Vec<f64>,
    /// Override of the recipe's step count.
    pub steps: Option<usize>,
    /// Asks the run to stop (see [`super::Stop`]).
    pub stop: super::Stop,
    /// Images per generator call when measuring.
    pub batch: usize,
    /// `(I, N)` when this is shard `I` of `N`.
    pub shard: Option<(usize, usize)>,
    /// Directions to measure instead of training (`train_seeds` then holds
    /// the indices, into this list, of the ones this run measures).
    pub directions: Vec<GivenDirection>,
}

/// The description kept in [`EXPERIMENT_FILE`]; shards must agree on all
/// but `train_seeds` and `shard` to be merged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Experiment {
    /// The recipe's name.
    pub recipe: String,
    /// The prompt.
    pub prompt: String,
    /// Training hash of the recipe with the step override applied.
    pub training_hash: String,
    /// Steps per direction.
    pub steps: usize,
    /// Truncation ψ.
    pub truncation: f64,
    /// α values (sorted, with 0).
    pub alphas: Vec<f64>,
    /// Unseen image seeds.
    pub test_seeds: Vec<u64>,
    /// Training seeds held by this folder.
    pub train_seeds: Vec<u64>,
    /// `[I, N]` for a shard.
    pub shard: Option<(usize, usize)>,
    /// Generator and CLIP weights (`demo` or a path).
    pub models: Vec<String>,
    /// True when a demo network was used.
    pub demo: bool,
    /// The given directions' labels, when directions were measured rather
    /// than trained (`train_seeds` are then indices into this list).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub directions: Vec<String>,
}

impl Experiment {
    /// The prefix of the direction folders: `seed-` or `given-`.
    fn folder_prefix(&self) -> &'static str {
        if self.directions.is_empty() {
            "seed-"
        } else {
            "given-"
        }
    }

    fn compatible(&self, other: &Self) -> std::result::Result<(), String> {
        let fields: [(&str, bool); 7] = [
            ("given directions", self.directions == other.directions),
            ("prompt", self.prompt == other.prompt),
            ("training settings (recipe or --steps)", self.training_hash == other.training_hash),
            ("truncation", self.truncation == other.truncation),
            ("alphas", self.alphas == other.alphas),
            ("test seeds", self.test_seeds == other.test_seeds),
            ("models", self.models == other.models),
        ];
        match fields.iter().find(|f| !f.1) {
            Some((name, _)) => Err(format!("the {name} differ")),
            None => Ok(()),
        }
    }
}

/// One measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The training seed of the direction.
    pub direction_seed: u64,
    /// The image it was applied to.
    pub image_seed: u64,
    /// True for the direction's own training image.
    pub trained: bool,
    /// Edit strength.
    pub alpha: f64,
    /// Similarity of the unedited image.
    pub before: f64,
    /// Similarity of the edited image.
    pub after: f64,
}

impl Row {
    /// `after − before`.
    pub fn delta(&self) -> f64 {
        self.after - self.before
    }
}

/// Mean, standard deviation (n − 1) and count of one curve point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    /// Mean ΔCLIP.
    pub mean: f64,
    /// Sample standard deviation (0 for one value).
    pub std: f64,
    /// Number of values.
    pub n: usize,
}

fn stat(values: &[f64]) -> Stat {
    let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    let n = v.len();
    if n == 0 {
        return Stat { mean: f64::NAN, std: f64::NAN, n };
    }
    let mean = v.iter().sum::<f64>() / n as f64;
    let var = if n > 1 { v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64 } else { 0.0 };
    Stat { mean, std: var.sqrt(), n }
}

/// The summary over every direction folder: per α, trained and unseen.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The experiment description (train seeds = the folders found).
    pub experiment: Experiment,
    /// Every measurement.
    pub rows: Vec<Row>,
    /// `(α, trained, unseen)` in α order.
    pub curve: Vec<(f64, Stat, Stat)>,
}

/// Files a summary wrote.
#[derive(Debug, Clone)]
pub struct Outputs {
    /// `generalize.csv`: every measurement.
    pub rows: PathBuf,
    /// `summary.csv`: mean, std and n per α for trained and unseen images.
    pub summary: PathBuf,
    /// `generalize.png`: the plot.
    pub png: PathBuf,
}

fn direction_folder(out: &Path, prefix: &str, seed: u64) -> PathBuf {
    out.join("directions").join(format!("{prefix}{seed}"))
}

fn sorted_alphas(alphas: &[f64]) -> Vec<f64> {
    let mut a: Vec<f64> = alphas.iter().copied().chain([0.0]).collect();
    a.sort_by(f64::total_cmp);
    a.dedup();
    a
}

/// Trains (or reuses) one direction per training seed, measures each, and
/// writes the summary of every direction folder under `out`.
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
    if cfg.train_seeds.is_empty() && cfg.shard.is_none() {
        return Err(Error::Config(if cfg.directions.is_empty() {
            "generalize needs at least one training seed".into()
        } else {
            "generalize: no given direction to measure".into()
        }));
    }
    if cfg.test_seeds.is_empty() {
        return Err(Error::Config("generalize needs at least one test seed".into()));
    }
    let alphas = sorted_alphas(&cfg.alphas);
    let steps = cfg.steps.unwrap_or(recipe.raw().steps);
    let mut base = recipe.clone();
    base.edit(|raw| raw.steps = steps).map_err(|e| Error::Config(e.to_string()))?;
    let experiment = Experiment {
        recipe: recipe.name().to_string(),
        prompt: recipe.raw().prompt.clone(),
        training_hash: base.training_hash(),
        steps,
        truncation: recipe.raw().truncation as f64,
        alphas: alphas.clone(),
        test_seeds: cfg.test_seeds.clone(),
        train_seeds: cfg.train_seeds.clone(),
        shard: cfg.shard,
        models: vec![gen.source.describe(), clip.source.describe()],
        demo: gen.source.is_demo() || clip.source.is_demo(),
        directions: cfg.directions.iter().map(|d| d.label.clone()).collect(),
    };
    if let Ok(text) = std::fs::read_to_string(out.join(EXPERIMENT_FILE)) {
        if let Ok(old) = serde_json::from_str::<Experiment>(&text) {
            if let Err(why) = old.compatible(&experiment) {
                return Err(Error::Config(format!(
                    "'{}' holds a generalize run with other settings ({why}); use another --output folder",
                    out.display()
                )));
            }
        }
    }
    write_experiment(out, &experiment)?;

    let measure = Measure::new(recipe, gen, clip, &alphas, cfg.batch.max(1))?;
    let key = format!("{}|{:?}|{:?}|{}", experiment.training_hash, alphas, cfg.test_seeds, experiment.models.join("|"));
    if !cfg.directions.is_empty() {
        measure_given(&measure, cfg, out, &key, progress)?;
        return summarize(out);
    }
    let total = cfg.train_seeds.len();
    let trainer = Trainer { weights, device, stop: &cfg.stop };
    for (i, &seed) in cfg.train_seeds.iter().enumerate() {
        if cfg.stop.requested() {
            return Err(Error::Config(format!("stopped before seed {seed}; run the same command again to continue")));
        }
        let folder = direction_folder(out, "seed-", seed);
        let trained = trainer.train_local(&base, seed, &folder, None, (i, total, &format!("seed {seed}")), progress)?;
        let key_file = folder.join(DELTA_KEY_FILE);
        let fresh = std::fs::read_to_string(&key_file).ok().as_deref() == Some(key.as_str())
            && folder.join(DELTA_FILE).is_file()
            && trained.reused;
        if !fresh {
            progress(Progress { done: i, total, what: format!("seed {seed}: measuring") });
            let u = load_direction(&folder, device)?;
            let rows = measure.direction(seed, Some(seed), &u, &cfg.test_seeds)?;
            write_atomic(&folder.join(DELTA_FILE), &rows_csv(&rows))?;
            write_atomic(&key_file, &key)?;
        }
        progress(Progress { done: i + 1, total, what: format!("seed {seed}: done") });
    }
    summarize(out)
}

/// Measures the given directions `cfg.train_seeds` (indices into
/// `cfg.directions`) on every test seed; a folder already measured with the
/// same settings is kept.
fn measure_given(
    measure: &Measure,
    cfg: &Config,
    out: &Path,
    key: &str,
    progress: &mut dyn FnMut(Progress),
) -> Result<()> {
    let total = cfg.train_seeds.len();
    for (i, &index) in cfg.train_seeds.iter().enumerate() {
        if cfg.stop.requested() {
            return Err(Error::Config(format!(
                "stopped before direction {index}; run the same command again to continue"
            )));
        }
        let given = usize::try_from(index).ok().and_then(|i| cfg.directions.get(i)).ok_or_else(|| {
            Error::Config(format!("direction {index} does not exist: {} were given", cfg.directions.len()))
        })?;
        let folder = direction_folder(out, "given-", index);
        // The folder is this direction's only if its values are too.
        let key = format!("{key}|{}|{}", given.label, tensor_sha256(&given.direction)?);
        let key_file = folder.join(DELTA_KEY_FILE);
        let fresh = std::fs::read_to_string(&key_file).ok().as_deref() == Some(key.as_str())
            && folder.join(DELTA_FILE).is_file();
        if !fresh {
            progress(Progress { done: i, total, what: format!("{}: measuring", given.label) });
            let rows = measure.direction(index, None, &given.direction, &cfg.test_seeds)?;
            write_atomic(&folder.join(DELTA_FILE), &rows_csv(&rows))?;
            write_atomic(&key_file, &key)?;
        }
        progress(Progress { done: i + 1, total, what: format!("{}: done", given.label) });
    }
    Ok(())
}

/// Hex SHA-256 of a tensor's float32 values.
fn tensor_sha256(t: &Tensor) -> Result<String> {
    use sha2::Digest;
    let v = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let mut h = sha2::Sha256::new();
    for x in v {
        h.update(x.to_le_bytes());
    }
    Ok(hex::encode(h.finalize()))
}

fn write_experiment(out: &Path, e: &Experiment) -> Result<()> {
    let text = serde_json::to_string_pretty(e).map_err(|e| Error::Config(e.to_string()))?;
    write_atomic(&out.join(EXPERIMENT_FILE), &text)
}

/// Measures directions: the generator, CLIP against the prompt, and a cache
/// of the unedited similarities.
struct Measure<'a> {
    gen: &'a LoadedGenerator,
    loss: ClipLoss,
    alphas: Vec<f64>,
    psi: f64,
    noise: crate::models::stylegan2::Noise,
    batch: usize,
    before: std::cell::RefCell<HashMap<u64, f64>>,
}

impl<'a> Measure<'a> {
    fn new(recipe: &Recipe, gen: &'a LoadedGenerator, clip: &ClipModel, alphas: &[f64], batch: usize) -> Result<Self> {
        let loss = ClipLoss::new(clip.clip.clone(), &clip.tokenizer, &[recipe.raw().prompt.as_str()], Resize::Auto)?;
        Ok(Self {
            gen,
            loss,
            alphas: alphas.to_vec(),
            psi: recipe.raw().truncation as f64,
            noise: recipe.noise(),
            batch,
            before: Default::default(),
        })
    }

    fn sims(&self, latents: &[Tensor]) -> Result<Vec<f64>> {
        let mut out = Vec::with_capacity(latents.len());
        for chunk in latents.chunks(self.batch) {
            let images = self.gen.image_with(&Tensor::cat(chunk, 0)?, self.noise)?;
            out.extend(self.loss.similarity(&images)?.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?);
        }
        Ok(out)
    }

    fn before(&self, seed: u64) -> Result<f64> {
        if let Some(v) = self.before.borrow().get(&seed) {
            return Ok(*v);
        }
        let v = self.sims(&[self.gen.w_plus(seed, self.psi)?])?[0];
        self.before.borrow_mut().insert(seed, v);
        Ok(v)
    }

    /// Rows for direction `u` (keyed `seed`, trained on image `own` when
    /// there is one) on its own image and on every other test seed.
    fn direction(&self, seed: u64, own: Option<u64>, u: &Tensor, test_seeds: &[u64]) -> Result<Vec<Row>> {
        let images = own.into_iter().chain(test_seeds.iter().copied().filter(|&t| Some(t) != own));
        let mut rows = Vec::new();
        for image_seed in images {
            let w = self.gen.w_plus(image_seed, self.psi)?;
            let before = self.before(image_seed)?;
            let moving: Vec<f64> = self.alphas.iter().copied().filter(|&a| a != 0.0).collect();
            let latents = moving.iter().map(|&a| Ok((&w + (u * a)?)?)).collect::<Result<Vec<_>>>()?;
            let sims = self.sims(&latents)?;
            let mut by_alpha: BTreeMap<u64, f64> = moving.iter().zip(sims).map(|(a, s)| (a.to_bits(), s)).collect();
            by_alpha.insert(0f64.to_bits(), before);
            for &alpha in &self.alphas {
                rows.push(Row {
                    direction_seed: seed,
                    image_seed,
                    trained: Some(image_seed) == own,
                    alpha,
                    before,
                    after: by_alpha[&alpha.to_bits()],
                });
            }
        }
        Ok(rows)
    }
}

fn rows_csv(rows: &[Row]) -> String {
    let mut s = csv_line(&DELTA_HEADER);
    for r in rows {
        s.push_str(&csv_line(&[
            r.direction_seed.to_string(),
            r.image_seed.to_string(),
            if r.trained { "trained" } else { "unseen" }.to_string(),
            csv_number(r.alpha),
            csv_number(r.before),
            csv_number(r.after),
            csv_number(r.delta()),
        ]));
    }
    s
}

fn read_rows(path: &Path) -> Result<Vec<Row>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
    let bad = |line: usize, why: &str| Error::Config(format!("'{}' line {line}: {why}", path.display()));
    let mut rows = Vec::new();
    for (line, f) in read_csv(&text, path)?.into_iter().skip(1) {
        if f.len() != DELTA_HEADER.len() {
            return Err(bad(line, &format!("expected {} fields", DELTA_HEADER.len())));
        }
        let int = |s: &str| s.parse::<u64>().map_err(|_| bad(line, "bad seed"));
        let num = |s: &str| s.parse::<f64>().map_err(|_| bad(line, "bad number"));
        rows.push(Row {
            direction_seed: int(&f[0])?,
            image_seed: int(&f[1])?,
            trained: f[2] == "trained",
            alpha: num(&f[3])?,
            before: num(&f[4])?,
            after: num(&f[5])?,
        });
    }
    Ok(rows)
}

/// Keys of the direction folders (`<prefix><key>`) under `out` that hold
/// measurements.
fn measured_seeds(out: &Path, prefix: &str) -> Result<Vec<u64>> {
    let dir = out.join("directions");
    let mut seeds = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(_) => return Ok(seeds),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("listing", &dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(seed) = name.strip_prefix(prefix).and_then(|s| s.parse::<u64>().ok()) {
            if entry.path().join(DELTA_FILE).is_file() {
                seeds.push(seed);
            }
        }
    }
    seeds.sort_unstable();
    Ok(seeds)
}

/// Reads every direction folder's measurements under `out`, writes
/// `generalize.csv`, `summary.csv` and `generalize.png`, and returns the
/// summary. Loads no model.
pub fn summarize(out: &Path) -> Result<Summary> {
    let path = out.join(EXPERIMENT_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io("reading", &path, e))?;
    let mut experiment: Experiment =
        serde_json::from_str(&text).map_err(|e| Error::Config(format!("'{}': {e}", path.display())))?;
    let prefix = experiment.folder_prefix();
    let seeds = measured_seeds(out, prefix)?;
    let mut rows = Vec::new();
    for &s in &seeds {
        rows.extend(read_rows(&direction_folder(out, prefix, s).join(DELTA_FILE))?);
    }
    let curve = experiment
        .alphas
        .iter()
        .map(|&a| {
            let pick = |trained: bool| -> Vec<f64> {
                rows.iter().filter(|r| r.alpha == a && r.trained == trained).map(Row::delta).collect()
            };
            (a, stat(&pick(true)), stat(&pick(false)))
        })
        .collect();
    experiment.train_seeds = seeds;
    let summary = Summary { experiment, rows, curve };
    summary.write(out)?;
    Ok(summary)
}

impl Summary {
    /// `summary.csv` text.
    pub fn summary_csv(&self) -> String {
        let mut s = csv_line(&["alpha", "kind", "mean_delta", "std_delta", "n"]);
        for (a, t, u) in &self.curve {
            for (kind, st) in [("trained", t), ("unseen", u)] {
                s.push_str(&csv_line(&[
                    csv_number(*a),
                    kind.to_string(),
                    csv_number(st.mean),
                    csv_number(st.std),
                    st.n.to_string(),
                ]));
            }
        }
        s
    }

    /// The terminal table.
    pub fn to_table(&self) -> String {
        let header: Vec<String> =
            ["α", "trained mean", "± std", "n", "unseen mean", "± std", "n"].iter().map(|s| s.to_string()).collect();
        let rows: Vec<Vec<String>> = self
            .curve
            .iter()
            .map(|(a, t, u)| {
                vec![
                    format!("{a}"),
                    format!("{:+.4}", t.mean),
                    format!("{:.4}", t.std),
                    t.n.to_string(),
                    format!("{:+.4}", u.mean),
                    format!("{:.4}", u.std),
                    u.n.to_string(),
                ]
            })
            .collect();
        let e = &self.experiment;
        let mut s = format!(
            "ΔCLIP similarity to \"{}\": {} {}direction(s), {} unseen image(s)\n",
            e.prompt,
            e.train_seeds.len(),
            if e.directions.is_empty() { "" } else { "given " },
            e.test_seeds.len()
        );
        s.push_str(&text_table(&header, &rows));
        if e.demo {
            s.push_str(crate::demo::DEMO_LABEL);
            s.push('\n');
        }
        s
    }

    /// The plot: mean ± std of ΔCLIP against α, trained and unseen.
    pub fn plot(&self) -> image::RgbImage {
        let series = |name: &str, color, pick: fn(&(f64, Stat, Stat)) -> Stat| Series {
            name: name.into(),
            points: self.curve.iter().map(|c| (c.0, pick(c).mean)).collect(),
            band: Some(
                self.curve.iter().map(|c| (c.0, pick(c).mean - pick(c).std, pick(c).mean + pick(c).std)).collect(),
            ),
            color,
        };
        let e = &self.experiment;
        let spec = PlotSpec {
            title: format!("ΔCLIP vs α: \"{}\"", e.prompt),
            x_label: "α".into(),
            y_label: "ΔCLIP similarity (mean ± std)".into(),
            log_y: false,
            series: if e.directions.is_empty() {
                vec![
                    series(&format!("trained ({} images)", e.train_seeds.len()), PALETTE[0], |c| c.1),
                    series(&format!("unseen ({} images)", e.test_seeds.len()), PALETTE[1], |c| c.2),
                ]
            } else {
                // Given directions have no image of their own.
                vec![series(
                    &format!("{} given direction(s), {} images", e.train_seeds.len(), e.test_seeds.len()),
                    PALETTE[1],
                    |c| c.2,
                )]
            },
            size: (720, 440),
        };
        let img = line_plot(&spec);
        if e.demo {
            add_footer(&img, crate::demo::DEMO_LABEL)
        } else {
            img
        }
    }

    /// Writes `generalize.csv`, `summary.csv` and `generalize.png`.
    pub fn write(&self, out: &Path) -> Result<Outputs> {
        let rows = out.join("generalize.csv");
        write_atomic(&rows, &rows_csv(&self.rows))?;
        let summary = out.join("summary.csv");
        write_atomic(&summary, &self.summary_csv())?;
        let png = out.join("generalize.png");
        save_png_atomic(&self.plot(), &png)?;
        Ok(Outputs { rows, summary, png })
    }
}

/// Joins shard folders into `dest`: checks that they ran the same
/// experiment, copies their direction folders, and writes the summary of
/// all of them. A direction already in `dest` is kept.
pub fn merge(dest: &Path, shards: &[PathBuf]) -> Result<Summary> {
    if shards.is_empty() {
        return Err(Error::Config("merge needs at least one shard folder".into()));
    }
    let mut merged: Option<Experiment> = None;
    for shard in shards {
        let path = shard.join(EXPERIMENT_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io("reading", &path, e))?;
        let e: Experiment =
            serde_json::from_str(&text).map_err(|e| Error::Config(format!("'{}': {e}", path.display())))?;
        match &mut merged {
            None => merged = Some(e),
            Some(m) => {
                m.compatible(&e).map_err(|why| {
                    Error::Config(format!(
                        "'{}' and '{}' ran different experiments ({why}); merge only shards of one run",
                        shards[0].display(),
                        shard.display()
                    ))
                })?;
                m.train_seeds.extend(&e.train_seeds);
            }
        }
        let prefix = merged.as_ref().expect("set above").folder_prefix();
        for seed in measured_seeds(shard, prefix)? {
            let to = direction_folder(dest, prefix, seed);
            if shard.canonicalize().ok() != dest.canonicalize().ok() && !to.join(DELTA_FILE).is_file() {
                copy_dir(&direction_folder(shard, prefix, seed), &to)?;
            }
        }
    }
    let mut e = merged.expect("at least one shard was read");
    e.shard = None;
    e.train_seeds.sort_unstable();
    e.train_seeds.dedup();
    write_experiment(dest, &e)?;
    summarize(dest)
}

/// Copies a folder tree.
pub(super) fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| Error::io("creating folder", to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| Error::io("listing", from, e))? {
        let entry = entry.map_err(|e| Error::io("listing", from, e))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if src.is_dir() {
            copy_dir(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst).map_err(|e| Error::io("copying", &src, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(d: u64, i: u64, a: f64, delta: f64) -> Row {
        Row { direction_seed: d, image_seed: i, trained: d == i, alpha: a, before: 0.2, after: 0.2 + delta }
    }

    fn experiment(seeds: Vec<u64>, shard: Option<(usize, usize)>) -> Experiment {
        Experiment {
            recipe: "r".into(),
            prompt: "p, \"q\"".into(),
            training_hash: "h".into(),
            steps: 2,
            truncation: 0.7,
            alphas: vec![0.0, 1.0],
            test_seeds: vec![100, 101],
            train_seeds: seeds,
            shard,
            models: vec!["demo".into(), "demo".into()],
            demo: true,
            directions: Vec::new(),
        }
    }

    fn fake_shard(dir: &Path, seeds: &[u64], shard: (usize, usize)) {
        write_experiment(dir, &experiment(seeds.to_vec(), Some(shard))).unwrap();
        for &s in seeds {
            let rows: Vec<Row> = [s, 100, 101]
                .iter()
                .flat_map(|&i| [row(s, i, 0.0, 0.0), row(s, i, 1.0, if i == s { 0.02 } else { 0.01 })])
                .collect();
            write_atomic(&direction_folder(dir, "seed-", s).join(DELTA_FILE), &rows_csv(&rows)).unwrap();
        }
    }

    #[test]
    fn stats_and_csv_round_trip() {
        let s = stat(&[1.0, 2.0, 3.0, f64::NAN]);
        assert_eq!((s.mean, s.std, s.n), (2.0, 1.0, 3));
        assert_eq!(stat(&[5.0]).std, 0.0);
        assert!(stat(&[]).mean.is_nan());
        let rows = vec![row(1, 1, 0.5, 0.125), row(1, 7, 0.5, -0.25)];
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.csv");
        write_atomic(&p, &rows_csv(&rows)).unwrap();
        assert_eq!(read_rows(&p).unwrap(), rows);
    }

    #[test]
    fn shards_merge_into_one_summary() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, dest) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("all"));
        fake_shard(&a, &[1, 2], (0, 2));
        fake_shard(&b, &[3], (1, 2));
        let s = merge(&dest, &[a.clone(), b.clone()]).unwrap();
        assert_eq!(s.experiment.train_seeds, vec![1, 2, 3]);
        assert_eq!(s.experiment.shard, None);
        let (alpha, trained, unseen) = s.curve[1];
        assert_eq!(alpha, 1.0);
        assert_eq!(trained.n, 3);
        assert_eq!(unseen.n, 6);
        assert!((trained.mean - 0.02).abs() < 1e-12 && (unseen.mean - 0.01).abs() < 1e-12);
        assert_eq!(s.curve[0].1.mean, 0.0);
        for f in ["generalize.csv", "summary.csv", "generalize.png", EXPERIMENT_FILE] {
            assert!(dest.join(f).is_file(), "{f}");
        }
        assert!(s.to_table().contains("+0.0200"));
        // A shard of another experiment is refused.
        let c = dir.path().join("c");
        let mut other = experiment(vec![4], Some((0, 1)));
        other.alphas = vec![0.0, 2.0];
        write_experiment(&c, &other).unwrap();
        let e = merge(&dest, &[a, c]).unwrap_err().to_string();
        assert!(e.contains("alphas differ"), "{e}");
    }
}

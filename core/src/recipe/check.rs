//! Checking a [`RawRecipe`]: every value in range, every combination
//! meaningful, and the values the engine reads ([`Checked`]) derived from
//! it. Errors name the key and are located in the recipe text.

use std::path::{Path, PathBuf};

use super::error::RecipeError;
use super::locate;
use super::raw::{default_preview_every, default_preview_seeds};
use super::raw::{
    LatentSpace, Mode, Optimizer, RawAlpha, RawLayers, RawPreview, RawRecipe, RawTerm, Schedule, SeedRng, WeightsRef,
    ONE_HOT_TEMPERATURE,
};

/// The edit strength, checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Alpha {
    /// One α for every sample.
    Fixed(f32),
    /// Uniform in `[min, max]` with `|α| >= min_abs`.
    Range {
        /// Lower bound.
        min: f32,
        /// Upper bound.
        max: f32,
        /// Smallest |α| accepted.
        min_abs: f32,
    },
}

impl Alpha {
    /// Draws one α: the fixed value, or uniform in `[min, max]` with
    /// `|α| >= min_abs`.
    ///
    /// Rejection sampling first (the historical draw, so a run's random
    /// stream is unchanged), for at most [`ALPHA_REJECTIONS`] tries; then a
    /// direct draw from the admissible part of the range, so that a range
    /// whose admissible part is tiny (or unreachable by rejection, such as
    /// `{min: 0, max: 1, min_abs: 0.99999994}`) still returns at once. The
    /// bounds must be checked ([`super::Recipe::parse`] does): finite, `min < max`,
    /// `max - min` finite and `min_abs` below the largest |bound|.
    pub fn sample<R: rand::Rng + ?Sized>(&self, rng: &mut R) -> f32 {
        let (min, max, min_abs) = match *self {
            Alpha::Fixed(a) => return a,
            Alpha::Range { min, max, min_abs } => (min, max, min_abs),
        };
        for _ in 0..ALPHA_REJECTIONS {
            let a = rng.random_range(min..=max);
            if a.abs() >= min_abs {
                return a;
            }
        }
        // The admissible part: [min, -min_abs] and [min_abs, max], each
        // possibly empty; pick one in proportion to its length.
        let neg = (min <= -min_abs).then_some((min, (-min_abs).min(max)));
        let pos = (max >= min_abs).then_some((min_abs.max(min), max));
        let len = |p: Option<(f32, f32)>| p.map_or(0.0, |(a, b)| (b as f64 - a as f64).max(0.0));
        let (ln, lp) = (len(neg), len(pos));
        let pick = match (neg, pos) {
            (Some(n), Some(p)) => {
                if rng.random::<f64>() * (ln + lp) < ln {
                    n
                } else {
                    p
                }
            }
            (Some(n), None) => n,
            (None, Some(p)) => p,
            // Unreachable for checked bounds; the largest bound is admissible.
            (None, None) => return if max.abs() >= min.abs() { max } else { min },
        };
        if pick.0 < pick.1 {
            rng.random_range(pick.0..=pick.1)
        } else {
            pick.0
        }
    }

    /// A representative α for previews and metrics: the fixed value, or
    /// the bound of largest magnitude.
    pub fn typical(&self) -> f32 {
        match *self {
            Alpha::Fixed(a) => a,
            Alpha::Range { min, max, .. } => {
                if max.abs() >= min.abs() {
                    max
                } else {
                    min
                }
            }
        }
    }
}

/// A loss term, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    /// Plugin name or library path.
    pub plugin: String,
    /// λ.
    pub weight: f32,
    /// The plugin's parameters as YAML text (`{}` when none).
    pub params: String,
    /// The 1-based line where the params start in the recipe, so a plugin's
    /// own line numbers can be mapped back to the file: the plugin's line
    /// `n` is the recipe's line `params_line + n - 1` (0 when unknown).
    pub params_line: usize,
    /// Characters before the params text on its first line (flow style,
    /// `params: {classes: [hat]}`), so the plugin's column `m` on its line 1
    /// is the recipe's column `params_column + m`.
    pub params_column: usize,
    /// The indentation removed from the params block's lines 2…, so the
    /// plugin's column `m` there is the recipe's `params_indent + m`.
    pub params_indent: usize,
}

/// Preview settings, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Preview {
    /// Every N steps (0: at the end only).
    pub every: usize,
    /// α values of the edited columns.
    pub alphas: Vec<f32>,
    /// Preview seeds.
    pub seeds: Vec<u64>,
}

/// The values a [`RawRecipe`] means, once checked: what the engine reads.
/// Derived from the raw recipe by [`Ctx::check`] and by nothing else.
#[derive(Debug, Clone)]
pub(super) struct Checked {
    pub(super) name: String,
    pub(super) alpha: Alpha,
    pub(super) layers: Option<Vec<usize>>,
    pub(super) layer_preset: Option<crate::layers::LayerSpec>,
    pub(super) latents: Vec<PathBuf>,
    pub(super) terms: Vec<Term>,
    pub(super) preview: Preview,
    pub(super) output: PathBuf,
}

const MAX_STEPS: usize = 10_000_000;

/// Rejection-sampling tries of [`Alpha::sample`] before it draws directly
/// from the admissible range.
pub const ALPHA_REJECTIONS: usize = 64;

/// The text and file a recipe came from, for locating errors and
/// resolving relative paths.
pub(super) struct Ctx<'a> {
    pub(super) text: &'a str,
    pub(super) file: &'a Path,
}

impl Ctx<'_> {
    pub(super) fn error(&self, key: &str, message: impl Into<String>) -> RecipeError {
        let (line, column) = locate::locate(self.text, &locate::parse_path(key)).unwrap_or((0, 0));
        RecipeError { file: self.file.to_path_buf(), line, column, key: key.to_string(), message: message.into() }
    }

    pub(super) fn check(&self, raw: &RawRecipe) -> Result<Checked, RecipeError> {
        if raw.prompt.trim().is_empty() {
            return Err(self.error(
                "prompt",
                "the prompt is empty; write the edit in words, e.g. 'a photo of a person with gray hair'",
            ));
        }
        if !(raw.truncation.is_finite() && raw.truncation > 0.0 && raw.truncation <= 1.0) {
            return Err(self.error(
                "truncation",
                format!("expected ψ in (0, 1], got {}; 0.7 is usual, 1 disables truncation", raw.truncation),
            ));
        }
        if raw.directions == 0 || raw.directions > 64 {
            return Err(self.error("directions", format!("expected 1 to 64 directions, got {}", raw.directions)));
        }
        if raw.mode == Mode::Latent && raw.directions != 1 {
            return Err(self.error(
                "directions",
                "mode 'latent' trains the latent itself: set directions: 1 or use mode: direction",
            ));
        }
        if !(raw.diversity.is_finite() && raw.diversity >= 0.0) {
            return Err(self.error("diversity", format!("expected a weight >= 0, got {}", raw.diversity)));
        }
        if raw.steps == 0 || raw.steps > MAX_STEPS {
            return Err(self.error("steps", format!("expected 1 to {MAX_STEPS} steps, got {}", raw.steps)));
        }
        if raw.batch == 0 || raw.batch > 1024 {
            return Err(self.error("batch", format!("expected a batch of 1 to 1024, got {}", raw.batch)));
        }
        if raw.seeds.is_empty() && raw.latents.is_empty() {
            return Err(self
                .error("seeds", "give at least one training seed, e.g. seeds: [0], or a latent file under 'latents'"));
        }
        if let Some(s) = raw.seeds.iter().find(|&&s| crate::latents::index(s).is_some()) {
            return Err(self.error(
                "seeds",
                format!("seed {s} is reserved for latent files; use seeds below {}", crate::latents::KEY_BASE),
            ));
        }
        if raw.mode == Mode::Direction && !raw.resample && raw.batch > raw.seeds.len() + raw.latents.len() {
            return Err(self.error("batch", format!(
                "batch {} is larger than the {} training seed(s) and latent file(s); list more seeds or set resample: true to draw latents each step",
                raw.batch, raw.seeds.len() + raw.latents.len()
            )));
        }
        if !(raw.latent_l2.is_finite() && raw.latent_l2 >= 0.0) {
            return Err(self.error("latent_l2", format!("expected a weight >= 0, got {}", raw.latent_l2)));
        }
        if raw.mode == Mode::Direction && raw.latent_l2 != 0.0 {
            return Err(self.error(
                "latent_l2",
                "latent_l2 applies to mode: latent only (a direction's size is fixed by its norm); remove it",
            ));
        }
        if raw.diversity > 0.0 && raw.directions < 2 {
            return Err(self.error(
                "diversity",
                "the diversity term needs two or more directions; set directions: 2 or more, or remove diversity",
            ));
        }
        if !(raw.one_hot_temperature.is_finite() && raw.one_hot_temperature >= ONE_HOT_TEMPERATURE) {
            return Err(self.error("one_hot_temperature", format!(
                "expected a temperature >= {ONE_HOT_TEMPERATURE} (LELSD's floor; smaller values overflow the softmax), got {}",
                raw.one_hot_temperature
            )));
        }
        if raw.mode == Mode::Latent && raw.space == LatentSpace::W {
            return Err(
                self.error("space", "mode 'latent' optimises each W+ latent; remove space: w or use mode: direction")
            );
        }
        if raw.seed_rng == SeedRng::Numpy {
            if let Some(s) = raw
                .seeds
                .iter()
                .chain(raw.preview.iter().flat_map(|p| p.seeds.iter().flatten()))
                .find(|&&s| s > u32::MAX as u64)
            {
                return Err(self.error("seeds", format!("seed {s} does not fit in 32 bits, which seed_rng: numpy requires (NumPy refuses it); use seeds below 4294967296")));
            }
        }
        if raw.mode == Mode::Latent && raw.resample {
            return Err(self.error("resample", "mode 'latent' optimises fixed latents; remove resample: true"));
        }
        let alpha = self.check_alpha(&raw.alpha)?;
        let (layers, layer_preset) = match &raw.layers {
            Some(RawLayers::Text(text)) => {
                let spec = crate::layers::LayerSpec::parse(text).map_err(|e| self.error("layers", e))?;
                if spec.is_numeric() {
                    let list = spec.resolve(32).map_err(|e| self.error("layers", e))?;
                    (self.check_layers(Some(list.as_slice()))?, None)
                } else {
                    (None, Some(spec))
                }
            }
            Some(RawLayers::List(list)) => (self.check_layers(Some(list.as_slice()))?, None),
            None => (None, None),
        };
        let latents = raw.latents.iter().map(|p| self.relative(p)).collect();
        self.check_optimizer(&raw.optimizer, raw.steps)?;
        if raw.terms.is_empty() {
            return Err(self.error("terms", "no loss terms; add at least one, e.g. '- plugin: clip'"));
        }
        let terms = raw.terms.iter().enumerate().map(|(i, t)| self.check_term(i, t)).collect::<Result<Vec<_>, _>>()?;
        for (name, w) in raw.models.entries() {
            if let WeightsRef::Path(p) = w {
                let p = self.relative(p);
                // A regular file only: opening a FIFO or a device would block.
                let readable = std::fs::metadata(&p).and_then(|m| {
                    if m.is_file() {
                        std::fs::File::open(&p).map(drop)
                    } else {
                        Err(std::io::Error::other("not a regular file"))
                    }
                });
                if let Err(e) = readable {
                    return Err(self.error(&format!("models.{name}"), format!(
                        "cannot read weights '{}': {e}; check the path, or use a manifest name (lsd-tui weights list) or 'demo'",
                        p.display()
                    )));
                }
            }
        }
        let preview = self.check_preview(raw.preview.as_ref(), raw, alpha)?;
        let name = raw.name.clone().unwrap_or_else(|| {
            self.file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "recipe".into())
        });
        if name.is_empty() || name.contains(['/', '\\']) {
            return Err(self.error("name", "expected a non-empty name without slashes (it names the run folder)"));
        }
        let device = raw.device.as_str();
        let device_ok = device == "cpu"
            || device.strip_prefix("cuda:").is_some_and(|n| n.parse::<usize>().is_ok())
            || device == "cuda";
        if !device_ok {
            return Err(self.error("device", format!("unknown device '{device}'; expected 'cpu' or 'cuda:N'")));
        }
        let output = raw.output.clone().map(|p| self.relative(&p)).unwrap_or_else(|| PathBuf::from("runs").join(&name));
        Ok(Checked { name, alpha, layers, layer_preset, latents, terms, preview, output })
    }

    /// Paths in a recipe are relative to the recipe's folder.
    pub(super) fn relative(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            return p.to_path_buf();
        }
        match self.file.parent() {
            Some(dir) if !dir.as_os_str().is_empty() && self.file.exists() => dir.join(p),
            _ => p.to_path_buf(),
        }
    }

    fn check_alpha(&self, a: &RawAlpha) -> Result<Alpha, RecipeError> {
        match *a {
            RawAlpha::Fixed(v) => {
                if !v.is_finite() || v == 0.0 {
                    return Err(self.error("alpha", format!("expected a finite, non-zero α, got {v}")));
                }
                Ok(Alpha::Fixed(v))
            }
            RawAlpha::Range { min, max, min_abs } => {
                if !(min.is_finite() && max.is_finite() && min_abs.is_finite()) {
                    return Err(self.error("alpha", "α bounds must be finite numbers"));
                }
                if min >= max {
                    return Err(self.error("alpha.max", format!("expected max > min, got min {min}, max {max}")));
                }
                if min_abs < 0.0 {
                    return Err(self.error("alpha.min_abs", format!("expected min_abs >= 0, got {min_abs}")));
                }
                if !(max - min).is_finite() {
                    return Err(self.error("alpha", format!(
                        "the range [{min}, {max}] is too wide to sample (max - min overflows); α is a step in W, usually between -10 and 10"
                    )));
                }
                if min_abs >= min.abs().max(max.abs()) {
                    return Err(self.error(
                        "alpha.min_abs",
                        format!("min_abs {min_abs} excludes the whole range [{min}, {max}]; lower it"),
                    ));
                }
                Ok(Alpha::Range { min, max, min_abs })
            }
        }
    }

    fn check_layers(&self, layers: Option<&[usize]>) -> Result<Option<Vec<usize>>, RecipeError> {
        let Some(layers) = layers else { return Ok(None) };
        if layers.is_empty() {
            return Err(self.error("layers", "the layer list is empty; remove 'layers' to train all layers"));
        }
        // 18 is n_latent at 1024²; the generator checks the real bound at run time.
        if let Some(&bad) = layers.iter().find(|&&l| l >= 32) {
            return Err(
                self.error("layers", format!("layer {bad} does not exist; W+ has at most 18 layers (0..=17) at 1024²"))
            );
        }
        let mut sorted = layers.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        Ok(Some(sorted))
    }

    fn check_optimizer(&self, o: &Optimizer, steps: usize) -> Result<(), RecipeError> {
        if !(o.lr.is_finite() && o.lr > 0.0) {
            return Err(self.error("optimizer.lr", format!("expected a learning rate > 0, got {}", o.lr)));
        }
        if o.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            return Err(self.error("optimizer.betas", format!("expected two betas in [0, 1), got {:?}", o.betas)));
        }
        if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
            return Err(self.error("optimizer.weight_decay", "expected weight_decay >= 0"));
        }
        if !(0.0..1.0).contains(&o.momentum) {
            return Err(self.error("optimizer.momentum", format!("expected momentum in [0, 1), got {}", o.momentum)));
        }
        match o.schedule {
            Schedule::Step { every: 0, .. } => Err(self.error("optimizer.schedule", "a step schedule needs every >= 1")),
            Schedule::Step { gamma, .. } if !(gamma > 0.0 && gamma <= 1.0) => {
                Err(self.error("optimizer.schedule", format!("expected gamma in (0, 1], got {gamma}")))
            }
            Schedule::Halvings { count } if count == 0 || count >= steps => Err(self.error("optimizer.schedule", format!(
                "expected count between 1 and steps - 1 ({}), got {count}: the reference halves every steps / (count + 1) steps",
                steps.saturating_sub(1)
            ))),
            Schedule::Cosine { final_ratio, .. } if !(0.0..=1.0).contains(&final_ratio) => {
                Err(self.error("optimizer.schedule", format!("expected final_ratio in [0, 1], got {final_ratio}")))
            }
            _ => Ok(()),
        }
    }

    /// Checks the term at place `i` of the list, named in errors by its
    /// place in the text ([`RawTerm::source`]).
    fn check_term(&self, i: usize, t: &RawTerm) -> Result<Term, RecipeError> {
        let key = term_key(i, t);
        if t.plugin.trim().is_empty() {
            return Err(self.error(
                &format!("{key}.plugin"),
                "empty plugin name; use clip, identity, segmentation or a library path",
            ));
        }
        if !t.weight.is_finite() || t.weight < 0.0 {
            return Err(self.error(&format!("{key}.weight"), format!("expected a weight λ >= 0, got {}", t.weight)));
        }
        let value = match &t.params {
            None | Some(yaml_serde::Value::Null) => None,
            Some(v @ yaml_serde::Value::Mapping(_)) => Some(v),
            Some(_) => {
                return Err(self.error(
                    &format!("{key}.params"),
                    "expected a mapping of the plugin's parameters (see lsd-tui plugins)",
                ))
            }
        };
        let Some(value) = value else {
            return Ok(Term {
                plugin: t.plugin.clone(),
                weight: t.weight,
                params: "{}\n".into(),
                params_line: 0,
                params_column: 0,
                params_indent: 0,
            });
        };
        // The plugin gets the params exactly as written (so its line numbers
        // map to the file); if that text cannot be cut out cleanly, a
        // re-serialised copy (positions then only approximate).
        if let Some(line) = self.locate_line(&format!("{key}.params")) {
            if let Some((text, first, column, indent)) = params_source(self.text, line) {
                if yaml_serde::from_str::<yaml_serde::Value>(&text).ok().as_ref() == Some(value) {
                    return Ok(Term {
                        plugin: t.plugin.clone(),
                        weight: t.weight,
                        params: text,
                        params_line: first,
                        params_column: column,
                        params_indent: indent,
                    });
                }
            }
        }
        let params = yaml_serde::to_string(value).unwrap_or_default();
        let params_line = self.locate_line(&format!("{key}.params")).map(|l| l + 1).unwrap_or(0);
        Ok(Term { plugin: t.plugin.clone(), weight: t.weight, params, params_line, params_column: 0, params_indent: 0 })
    }

    fn locate_line(&self, key: &str) -> Option<usize> {
        let path = locate::parse_path(key);
        let (line, _) = locate::locate(self.text, &path)?;
        // Only accept an exact hit on the last key.
        let last = match path.last() {
            Some(locate::Seg::Key(k)) => k.clone(),
            _ => return Some(line),
        };
        let text_line = self.text.lines().nth(line - 1)?;
        text_line.contains(&format!("{last}:")).then_some(line)
    }

    fn check_preview(&self, p: Option<&RawPreview>, raw: &RawRecipe, alpha: Alpha) -> Result<Preview, RecipeError> {
        let typical = alpha.typical();
        // Latent mode: α interpolates from w₀ (0) to the optimised latent (1).
        let default_alphas = match raw.mode {
            Mode::Direction => vec![-typical, 0.0, typical],
            Mode::Latent => vec![0.5, 1.0],
        };
        let Some(p) = p else {
            return Ok(Preview {
                every: default_preview_every(),
                alphas: default_alphas,
                seeds: default_preview_seeds(raw),
            });
        };
        let alphas = p.alphas.clone().unwrap_or(default_alphas);
        if alphas.is_empty() || alphas.len() > 16 {
            return Err(self.error("preview.alphas", format!("expected 1 to 16 α values, got {}", alphas.len())));
        }
        if alphas.iter().any(|a| !a.is_finite()) {
            return Err(self.error("preview.alphas", "α values must be finite numbers"));
        }
        let seeds = p.seeds.clone().unwrap_or_else(|| default_preview_seeds(raw));
        if seeds.is_empty() || seeds.len() > 8 {
            return Err(self.error("preview.seeds", format!("expected 1 to 8 preview seeds, got {}", seeds.len())));
        }
        if raw.mode == Mode::Latent {
            if let Some(s) = seeds.iter().find(|s| !raw.seeds.contains(s) && crate::latents::index(**s).is_none()) {
                return Err(self.error("preview.seeds", format!(
                    "seed {s} is not a training seed; mode 'latent' optimises only the training seeds' latents, so preview those"
                )));
            }
        }
        Ok(Preview { every: p.every, alphas, seeds })
    }
}

/// The key of the term at place `i` of a raw recipe's list, as the
/// recipe text has it: `terms[N]` with N its place in the text.
pub(super) fn term_key(i: usize, t: &RawTerm) -> String {
    format!("terms[{}]", t.source.unwrap_or(i))
}

/// Cuts the value of the `params:` key on 1-based `line` out of `text`:
/// `(text, first line, column offset of line 1, indentation removed from
/// the other lines)`. Flow style (`params: {a: 1}`) starts on the key's
/// line; block style on the next line, with the common indentation removed.
/// Blank and comment lines are kept so that line numbers map one to one.
fn params_source(text: &str, line: usize) -> Option<(String, usize, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let key_line = *lines.get(line.checked_sub(1)?)?;
    let key_indent = indentation(key_line);
    let after = key_line.find("params:")? + "params:".len();
    let rest = &key_line[after..];
    let rest_trim = rest.trim_start_matches([' ', '\t']);
    let inline = !rest_trim.is_empty() && !rest_trim.starts_with('#');
    // The block: following lines indented deeper than the key (blank and
    // comment lines included).
    let mut end = line; // index of the first line after the block
    while end < lines.len() {
        let l = lines[end];
        let t = l.trim();
        if t.is_empty() || t.starts_with('#') || indentation(l) > key_indent {
            end += 1;
        } else {
            break;
        }
    }
    // Trailing blank/comment lines belong to no one.
    while end > line && {
        let t = lines[end - 1].trim();
        t.is_empty() || t.starts_with('#')
    } {
        end -= 1;
    }
    let block = &lines[line..end];
    let indent = block
        .iter()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|l| indentation(l))
        .min()
        .unwrap_or(0);
    // `indent` counts ASCII spaces only, so slicing there stays on a
    // character boundary; a line with less indentation (a comment, a flow
    // continuation) loses its spaces only.
    let dedent = |l: &&str| -> String {
        if indentation(l) >= indent {
            l[indent..].to_string()
        } else {
            l.trim_start_matches(' ').to_string()
        }
    };
    if inline {
        let column = after + (rest.len() - rest_trim.len());
        let mut out = vec![rest_trim.to_string()];
        out.extend(block.iter().map(dedent));
        Some((out.join("\n") + "\n", line, column, indent))
    } else {
        if block.is_empty() {
            return None;
        }
        let out: Vec<String> = block.iter().map(dedent).collect();
        Some((out.join("\n") + "\n", line + 1, indent, indent))
    }
}

/// YAML indentation: the leading ASCII spaces (tabs and other white space,
/// such as a non-breaking space, are content to YAML, and may be several
/// bytes long).
fn indentation(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

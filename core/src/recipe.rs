//! Recipes: one YAML file = one repeatable edit.
//!
//! Parsing has two steps, as in ripgrep's `LowArgs → HiArgs`: serde reads the
//! text into a plain [`RawRecipe`] (`deny_unknown_fields`, so a typo is an
//! error, not a silently ignored key), then [`Recipe::parse`] checks every
//! value and returns a [`RecipeError`] that names the file, the line and
//! column, the key, what was expected and what to do.
//!
//! What α means. A direction `u` is normalised after every optimiser step
//! according to [`Norm`]. The default, `norm: layer`, gives each trained
//! layer's 512-vector unit length, so `x_edit = G(w + α·u)` moves every
//! edited layer's style by exactly `α` in W — the same scale as classic
//! W-space editing, whichever layers are trained. (LELSD's reference code,
//! with `unit_norm`, divides its W+ directions `[K, L, D]` by their norm
//! over axis 1 — the layer axis, for each latent coordinate — instead of
//! the latent axis; that is not offered.) `norm: total` gives the
//! whole W+ direction unit Frobenius norm, so α is the distance travelled in
//! W+ and each layer moves by about `α/√layers`; `norm: none` leaves `u` free
//! (α is then only a scale). The constraint is applied once when `u` is
//! drawn (N(0, 1) from the recipe's seed, masked to the trained layers) and
//! after every optimiser step; the optimiser's moment estimates are not
//! projected. Untrained layers of `u` stay exactly zero.
//!
//! # The schema
//!
//! `tests/recipes/valid/full.yaml` shows every key with its default;
//! `examples/recipes/` holds the demo recipe and the report's cases. In
//! short: `prompt` and `steps` and `terms` are required; `models` names the
//! weights of `generator`, `clip`, `arcface`, `bisenet` (`demo` — the
//! default —, a manifest name such as `stylegan2-ffhq-1024`, or a path
//! relative to the recipe); `mode` is `direction` (K = `directions`
//! directions, a `diversity` term for K ≥ 2 — `diversity_kind`
//! `correlation`, LELSD's, by default — trained `direction_draw: one_hot`
//! (LELSD's relaxed one-hot mixture, one direction per step, the default)
//! or `all`; optional `layers`; `space: wplus` or `w`, one vector tied
//! across the layers) or
//! `latent` (StyleCLIP's per-image latent optimisation: every training
//! seed's latent is optimised, `batch`, `alpha` and `norm` do not apply,
//! `latent_l2` weighs `‖w − w₀‖²`); `alpha` is a number or `{min, max,
//! min_abs}`; `layers` is a list or presets and ranges (`coarse`, `medium`,
//! `fine`, `0-3,8`: [`crate::layers`]); `latents` lists latent files (a
//! photo's W+, [`crate::latents`]) trained on with the seeds;
//! `seeds` (one seed: a local direction) with `batch` latents
//! per step, or `resample: true` for `batch` fresh latents every step (a
//! global direction); `optimizer` (`adam`, `adamw`, `sgd`; `lr`, `betas`,
//! `weight_decay`, `momentum`, `schedule`: `constant`, `cosine`, `step` or
//! LELSD's `halvings`); `alpha_per` (`sample` or `step`); `seed_rng`
//! (`chacha` or `numpy`, NumPy's `RandomState(seed).randn`); `preview`
//! (`every`, `alphas`,
//! `seeds`); `checkpoint_every`; `output`; `device`; `precision` (`tf32`
//! or `fp32`, for a GPU).
//!
//! Each term's `params` are handed to its plugin exactly as written (cut
//! out of the file), so the plugin's own `line N column M` maps to the
//! recipe by [`Term::params_line`]. `lsd-tui run RECIPE --models demo`
//! runs any recipe on the demo networks (the report's cases name real
//! weights by manifest name; the demo recipe leaves `models` out).

//!
//! A [`Recipe`] holds one representation, its [`RawRecipe`]; the values the
//! engine reads (the name, α, the layers, the terms with their parameter
//! text, the preview, the run folder) are derived from it when it is
//! checked. An edit ([`Recipe::edit`]) changes the raw recipe and checks it
//! again, so the two never disagree. The code lives in `raw` (the YAML
//! types), `check` (the checks and the derived values), `yaml` (the resolved
//! YAML and its hashes), `error` (errors) and `locate` (key paths in the
//! text).

mod check;
mod error;
pub mod locate;
mod raw;
mod yaml;

use std::path::{Path, PathBuf};

pub use check::{Alpha, Preview, Term, ALPHA_REJECTIONS};
pub use error::RecipeError;
pub use raw::*;
pub use yaml::differing_keys;

use check::{Checked, Ctx};

/// A checked recipe, ready to run.
///
/// The raw recipe is private: it changes only through [`Recipe::edit`] (and
/// [`Recipe::set_output`]), which check it again and derive the values the
/// accessors return.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// The file it came from (or `<recipe>`).
    file: PathBuf,
    /// The text as given, where errors are located.
    text: String,
    /// The raw form, which is what `recipe.yaml` in a run folder holds.
    raw: RawRecipe,
    /// What `raw` means, derived from it by the checks.
    checked: Checked,
}

impl Recipe {
    /// Reads and checks a recipe file.
    pub fn load(path: &Path) -> Result<Self, RecipeError> {
        let text = std::fs::read_to_string(path).map_err(|e| RecipeError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read the recipe: {e}; check the path and its permissions"),
        })?;
        Self::parse(&text, path)
    }

    /// Checks recipe text; `file` is used in messages and for the default name.
    pub fn parse(text: &str, file: &Path) -> Result<Self, RecipeError> {
        let mut raw: RawRecipe = yaml_serde::from_str(text).map_err(|e| error::syntax_error(text, file, &e))?;
        for (i, t) in raw.terms.iter_mut().enumerate() {
            t.source = Some(i);
        }
        let checked = Ctx { text, file }.check(&raw)?;
        Ok(Recipe { file: file.to_path_buf(), text: text.to_string(), raw, checked })
    }

    /// Changes the raw recipe and checks it again, as if its file had said
    /// so: on an error the recipe is left as it was. Paths the edit writes
    /// are relative to the recipe's folder, as in the file (the run folder
    /// keeps the one already resolved unless the edit changes it).
    pub fn edit(&mut self, f: impl FnOnce(&mut RawRecipe)) -> Result<(), RecipeError> {
        let mut raw = self.raw.clone();
        f(&mut raw);
        let mut checked = self.ctx().check(&raw)?;
        if raw.output == self.raw.output {
            checked.output = self.checked.output.clone();
        }
        self.raw = raw;
        self.checked = checked;
        Ok(())
    }

    /// Sets the run folder to `dir`, a path as the command line gives it
    /// (not relative to the recipe's folder); the resolved recipe records it.
    pub fn set_output(&mut self, dir: PathBuf) {
        self.raw.output = Some(dir.clone());
        self.checked.output = dir;
    }

    /// Resolves a layer preset (`coarse`, `fine`, …) against a generator's
    /// `n_latent` W+ layers, and checks that every trained layer exists there.
    pub fn resolve_layers(&mut self, n_latent: usize) -> Result<(), RecipeError> {
        if let Some(spec) = &self.checked.layer_preset {
            let layers = spec.resolve(n_latent).map_err(|e| self.error_at("layers", e))?;
            self.checked.layers = Some(layers);
        }
        if let Some(layers) = &self.checked.layers {
            if let Some(&bad) = layers.iter().find(|&&x| x >= n_latent) {
                return Err(self.error_at(
                    "layers",
                    format!(
                        "layer {bad} does not exist: this generator's W+ has {n_latent} layers (0..={})",
                        n_latent - 1
                    ),
                ));
            }
        }
        Ok(())
    }

    fn ctx(&self) -> Ctx<'_> {
        Ctx { text: &self.text, file: &self.file }
    }

    /// The recipe as written (after edits): what `recipe.yaml` holds.
    pub fn raw(&self) -> &RawRecipe {
        &self.raw
    }

    /// The file it came from (or `<recipe>`).
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Display name: `name`, or the file's stem.
    pub fn name(&self) -> &str {
        &self.checked.name
    }

    /// The edit strength.
    pub fn alpha(&self) -> Alpha {
        self.checked.alpha
    }

    /// Trained W+ layers (sorted, unique); `None` = all, or a preset not
    /// resolved yet ([`Recipe::layer_preset`], see [`Recipe::resolve_layers`]).
    pub fn layers(&self) -> Option<&[usize]> {
        self.checked.layers.as_deref()
    }

    /// `layers` given with a preset (`coarse`, `medium`, `fine`), which
    /// [`Recipe::resolve_layers`] resolves against the loaded generator.
    pub fn layer_preset(&self) -> Option<&crate::layers::LayerSpec> {
        self.checked.layer_preset.as_ref()
    }

    /// The latent files (`latents`), resolved against the recipe's folder.
    pub fn latents(&self) -> &[PathBuf] {
        &self.checked.latents
    }

    /// The loss terms.
    pub fn terms(&self) -> &[Term] {
        &self.checked.terms
    }

    /// The key of the `i`-th term as the recipe text has it (`terms[N]`),
    /// for errors about it: after an edit dropped terms, N is not `i`.
    pub fn term_key(&self, i: usize) -> String {
        match self.raw.terms.get(i) {
            Some(t) => check::term_key(i, t),
            None => format!("terms[{i}]"),
        }
    }

    /// Preview settings.
    pub fn preview(&self) -> &Preview {
        &self.checked.preview
    }

    /// The run folder.
    pub fn output(&self) -> &Path {
        &self.checked.output
    }

    /// The 1-based `(line, column)` of a key path (e.g. `models.clip`), for
    /// errors found after parsing (a missing weight, a plugin's own error).
    pub fn locate(&self, key: &str) -> (usize, usize) {
        locate::locate(&self.text, &locate::parse_path(key)).unwrap_or((0, 0))
    }

    /// An error located at `key`.
    pub fn error_at(&self, key: &str, message: impl Into<String>) -> RecipeError {
        self.ctx().error(key, message)
    }

    /// The recipe text as given.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The generator noise the recipe trains with (`noise`, and `seed` for
    /// seeded noise).
    pub fn noise(&self) -> crate::models::stylegan2::Noise {
        self.raw.noise.noise(self.raw.seed)
    }

    /// True when any network is a demo network.
    pub fn uses_demo(&self) -> bool {
        self.raw.models.any_demo()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
prompt: a photo of a person with gray hair
steps: 10
alpha: 3
terms:
  - plugin: clip
  - plugin: segmentation
    weight: 0.1
    params:
      classes: [hair]
";

    #[test]
    fn parses_a_minimal_recipe_with_defaults() {
        let r = Recipe::parse(GOOD, Path::new("gray.yaml")).expect("valid");
        assert_eq!(r.name(), "gray");
        assert_eq!(r.alpha(), Alpha::Fixed(3.0));
        assert_eq!(r.preview().alphas, vec![-3.0, 0.0, 3.0]);
        assert_eq!(r.terms().len(), 2);
        assert_eq!(r.terms()[0].weight, 1.0);
        assert!(r.terms()[1].params.contains("hair"));
        assert_eq!(r.terms()[1].params_line, 9);
        assert!(r.uses_demo());
        assert_eq!(r.output(), PathBuf::from("runs/gray"));
    }

    #[test]
    fn hash_is_stable_and_sensitive() {
        let a = Recipe::parse(GOOD, Path::new("a.yaml")).unwrap();
        let b = Recipe::parse(GOOD, Path::new("a.yaml")).unwrap();
        let c = Recipe::parse(&GOOD.replace("steps: 10", "steps: 11"), Path::new("a.yaml")).unwrap();
        assert_eq!(a.hash(), b.hash());
        assert_ne!(a.hash(), c.hash());
    }

    #[test]
    fn precision_is_read_kept_and_left_out_of_the_training_hash() {
        let a = Recipe::parse(GOOD, Path::new("a.yaml")).unwrap();
        assert_eq!(a.raw().precision, None);
        assert!(!a.to_yaml().contains("precision"), "an unset precision is not written");
        let fp32 = Recipe::parse(&format!("{GOOD}\nprecision: fp32\n"), Path::new("a.yaml")).unwrap();
        assert_eq!(fp32.raw().precision, Some(crate::ops::Precision::Fp32));
        let again = Recipe::parse(&fp32.to_yaml(), Path::new("a.yaml")).unwrap();
        assert_eq!(again.raw().precision, Some(crate::ops::Precision::Fp32));
        assert_ne!(a.hash(), fp32.hash());
        assert_eq!(a.training_hash(), fp32.training_hash());
        let bad = Recipe::parse(&format!("{GOOD}\nprecision: bf16\n"), Path::new("a.yaml")).unwrap_err().to_string();
        assert!(bad.contains("tf32") && bad.contains("fp32"), "{bad}");
    }

    #[test]
    fn resolved_yaml_round_trips() {
        let a = Recipe::parse(GOOD, Path::new("a.yaml")).unwrap();
        let b = Recipe::parse(&a.to_yaml(), Path::new("a.yaml")).unwrap();
        assert_eq!(a.raw(), b.raw());
    }

    #[test]
    fn weights_refs_classify() {
        assert_eq!(WeightsRef::from("demo".to_string()), WeightsRef::Demo);
        assert_eq!(WeightsRef::from("clip-vit-b32".to_string()), WeightsRef::Named("clip-vit-b32".into()));
        assert!(matches!(WeightsRef::from("w/g.pt".to_string()), WeightsRef::Path(_)));
        assert!(matches!(WeightsRef::from("g.safetensors".to_string()), WeightsRef::Path(_)));
    }

    /// An expectation line of a file in `tests/recipes/invalid/`:
    /// `# expect: LINE:COL KEY | substring | substring …` (`-` for no key),
    /// and `# needs: plugins|binary` when only the binary can check it.
    pub(crate) struct Expect {
        pub line: usize,
        pub column: usize,
        pub key: String,
        pub contains: Vec<String>,
        pub needs: Option<String>,
    }

    pub(crate) fn read_expect(text: &str) -> Expect {
        let first = text.lines().next().and_then(|l| l.strip_prefix("# expect: ")).expect("an '# expect:' first line");
        let mut parts = first.split(" | ");
        let head = parts.next().expect("position and key");
        let (pos, key) = head.split_once(' ').expect("'L:C KEY'");
        let (l, c) = pos.split_once(':').expect("L:C");
        let needs = text.lines().nth(1).and_then(|l| l.strip_prefix("# needs: ")).map(str::to_string);
        Expect {
            line: l.parse().expect("a line"),
            column: c.parse().expect("a column"),
            key: if key == "-" { String::new() } else { key.to_string() },
            contains: parts.map(str::to_string).collect(),
            needs,
        }
    }

    fn recipes_dir(kind: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/recipes").join(kind)
    }

    fn yaml_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .expect("the recipes folder")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        files
    }

    #[test]
    fn invalid_recipes_are_located_and_explained() {
        let files = yaml_files(&recipes_dir("invalid"));
        assert!(files.len() >= 30, "only {} invalid recipes", files.len());
        let mut failures = Vec::new();
        let mut checked = 0;
        for path in &files {
            let text = std::fs::read_to_string(path).expect("readable");
            let want = read_expect(&text);
            if want.needs.is_some() {
                continue; // tui/tests/run.rs checks these through the binary.
            }
            checked += 1;
            let got = std::panic::catch_unwind(|| Recipe::load(path));
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            match got {
                Err(_) => failures.push(format!("{name}: PANICKED")),
                Ok(Ok(_)) => failures.push(format!("{name}: accepted")),
                Ok(Err(e)) => {
                    let shown = e.to_string();
                    let ok = e.line == want.line
                        && e.column == want.column
                        && e.key == want.key
                        && shown.contains(&name)
                        && want.contains.iter().all(|c| shown.contains(c.as_str()));
                    if !ok {
                        failures.push(format!(
                            "{name}: got {}:{} '{}' {shown:?}; want {}:{} '{}' containing {:?}",
                            e.line, e.column, e.key, want.line, want.column, want.key, want.contains
                        ));
                    }
                }
            }
        }
        assert!(checked >= 30, "only {checked} checked here");
        assert!(failures.is_empty(), "{} of {checked} failed:\n{}", failures.len(), failures.join("\n"));
    }

    #[test]
    fn valid_recipes_and_examples_parse() {
        let mut files = yaml_files(&recipes_dir("valid"));
        files.extend(yaml_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/recipes")));
        assert!(files.len() >= 5);
        for path in files {
            if let Err(e) = Recipe::load(&path) {
                panic!("{e}");
            }
        }
    }

    #[test]
    fn params_keep_their_text_and_position() {
        let text = "prompt: p\nsteps: 1\nterms:\n  - plugin: seg\n    params:\n      # comment\n      classes: [hair]\n\n      size: 64\n  - plugin: clip\n    params: {resize: bilinear}\n";
        let r = Recipe::parse(text, Path::new("p.yaml")).expect("valid");
        assert_eq!(r.terms()[0].params, "# comment\nclasses: [hair]\n\nsize: 64\n");
        assert_eq!((r.terms()[0].params_line, r.terms()[0].params_indent), (6, 6));
        assert_eq!(r.terms()[1].params, "{resize: bilinear}\n");
        assert_eq!((r.terms()[1].params_line, r.terms()[1].params_column), (11, 12));
    }

    /// Issue 15: a params line indented with spaces then a non-breaking
    /// space (valid YAML: the NBSP is content) made the params cutting slice
    /// inside the two-byte character and panic.
    #[test]
    fn issue_15_params_indented_with_a_non_breaking_space_do_not_panic() {
        for text in [
            "prompt: p\nsteps: 1\nterms:\n  - plugin: x\n    params: {a: 1,\n      b: 2,\n     \u{a0}c: 3}\n",
            "prompt: p\nsteps: 1\nterms:\n  - plugin: x\n    params:\n      a: 1\n     \u{a0}# not a comment\n",
            "prompt: p\nsteps: 1\nterms:\n  - plugin: x\n    params:\n      a: \"x\n     \u{a0}y\"\n",
        ] {
            let got = std::panic::catch_unwind(|| Recipe::parse(text, Path::new("nbsp.yaml")));
            let got = got.unwrap_or_else(|_| panic!("Recipe::parse panicked on {text:?}"));
            if let Ok(r) = got {
                // Whatever was cut out reads back as the same mapping.
                let parsed: yaml_serde::Value = yaml_serde::from_str(&r.terms()[0].params).expect("params are YAML");
                assert_eq!(Some(parsed), r.raw().terms[0].params, "{text:?}");
            }
        }
    }

    /// Issue 15: `alpha: {min: -3.0e38, max: 3.0e38}` passed validation and
    /// the sampler panicked at step 1 (`max - min` overflows in f32).
    #[test]
    fn issue_15_alpha_range_whose_width_overflows_is_refused() {
        let text = GOOD.replace("alpha: 3", "alpha: {min: -3.0e38, max: 3.0e38}");
        let e = Recipe::parse(&text, Path::new("wide.yaml")).expect_err("an overflowing range");
        assert_eq!(e.key, "alpha");
        assert!(e.message.contains("too wide"), "{e}");
        assert_eq!((e.line, e.column), (3, 1));
    }

    /// Issue 15: `alpha: {min: 0, max: 1, min_abs: 0.99999994}` is valid,
    /// but rejection sampling never drew an admissible α, so the engine
    /// spun for ever. The sampler must return an admissible α at once.
    #[test]
    fn issue_15_alpha_sampler_returns_for_a_nearly_empty_range() {
        use rand::SeedableRng;
        let text = GOOD.replace("alpha: 3", "alpha: {min: 0, max: 1, min_abs: 0.99999994}");
        let r = Recipe::parse(&text, Path::new("narrow.yaml")).expect("a valid range");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let t = std::time::Instant::now();
        for _ in 0..1000 {
            let a = r.alpha().sample(&mut rng);
            assert!((0.99999994..=1.0).contains(&a), "{a}");
        }
        assert!(t.elapsed() < std::time::Duration::from_secs(2), "{:?}", t.elapsed());
        // Both halves of a symmetric range are drawn, never inside min_abs.
        let sym = Alpha::Range { min: -2.0, max: 2.0, min_abs: 1.9999999 };
        let draws: Vec<f32> = (0..200).map(|_| sym.sample(&mut rng)).collect();
        assert!(draws.iter().all(|a| a.abs() >= 1.9999999 && a.abs() <= 2.0), "{draws:?}");
        assert!(draws.iter().any(|&a| a < 0.0) && draws.iter().any(|&a| a > 0.0));
    }

    /// The draw of an ordinary range is the historical rejection draw, so
    /// a checkpoint of an older build resumes onto the same α stream.
    #[test]
    fn alpha_sampler_keeps_the_rejection_stream() {
        use rand::{Rng, SeedableRng};
        let (min, max, min_abs) = (-3.0f32, 3.0f32, 1.0f32);
        let mut a = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut b = a.clone();
        for _ in 0..500 {
            let want = loop {
                let x = b.random_range(min..=max);
                if x.abs() >= min_abs {
                    break x;
                }
            };
            assert_eq!(Alpha::Range { min, max, min_abs }.sample(&mut a), want);
        }
    }

    #[test]
    fn seeds_parse() {
        assert_eq!(parse_seeds("3"), Ok(vec![3]));
        assert_eq!(parse_seeds("1, 2,5"), Ok(vec![1, 2, 5]));
        assert_eq!(parse_seeds("0..3,7"), Ok(vec![0, 1, 2, 7]));
        assert_eq!(parse_seeds("2..=4"), Ok(vec![2, 3, 4]));
        for bad in ["", "a", "3..3", "1,,2", "-1", "0..99999999"] {
            let e = parse_seeds(bad).expect_err(bad);
            assert!(e.contains("0..10"), "{e}");
        }
    }

    #[test]
    fn latents_and_layer_presets() {
        let text =
            "prompt: gray hair\nsteps: 5\nterms:\n  - plugin: clip\nseeds: []\nlatents: [me.npy]\nlayers: fine\n";
        let r = Recipe::parse(text, Path::new("p.yaml")).expect("valid");
        assert_eq!(r.latents(), vec![PathBuf::from("me.npy")]);
        assert_eq!(r.layers(), None);
        assert_eq!(r.layer_preset().map(|s| s.text()), Some("fine"));
        assert_eq!(r.preview().seeds, vec![crate::latents::key(0)]);
        // The resolved recipe keeps both, and reads back the same.
        let again = Recipe::parse(&r.to_yaml(), Path::new("p.yaml")).expect("round trip");
        assert_eq!(again.raw(), r.raw());
        // Numbers as text resolve at once; lists are unchanged; no latents, no key.
        let text = "prompt: x\nsteps: 5\nterms:\n  - plugin: clip\nlayers: 0-2,5\n";
        let r = Recipe::parse(text, Path::new("p.yaml")).expect("valid");
        assert_eq!((r.layers().map(<[usize]>::to_vec), r.layer_preset().cloned()), (Some(vec![0, 1, 2, 5]), None));
        assert!(!r.to_yaml().contains("latents"), "an empty list is not written, so old hashes stay");
        assert_eq!(r.preview().seeds, vec![0]);
    }

    #[test]
    fn an_edit_is_checked_and_keeps_raw_and_checked_values_together() {
        let mut r = Recipe::parse(GOOD, Path::new("gray.yaml")).expect("valid");
        let e = r.edit(|raw| raw.steps = 0).expect_err("0 steps is refused");
        assert_eq!((e.key.as_str(), e.line), ("steps", 2));
        assert_eq!(r.raw().steps, 10, "a refused edit leaves the recipe as it was");
        r.edit(|raw| raw.latents.push(PathBuf::from("/photos/me.npy"))).expect("valid");
        assert_eq!(r.latents(), [PathBuf::from("/photos/me.npy")]);
        assert_eq!(r.preview().seeds, vec![0, crate::latents::key(0)], "the first latent image is previewed");
        r.set_output(PathBuf::from("elsewhere"));
        r.edit(|raw| raw.alpha = RawAlpha::Fixed(2.0)).expect("valid");
        assert_eq!((r.alpha(), r.output()), (Alpha::Fixed(2.0), Path::new("elsewhere")));
        assert_eq!(r.raw().output, Some(PathBuf::from("elsewhere")));
    }

    #[test]
    fn a_term_kept_by_an_edit_is_located_at_its_own_line() {
        let mut r = Recipe::parse(GOOD, Path::new("gray.yaml")).expect("valid");
        r.edit(|raw| {
            raw.terms.remove(0);
        })
        .expect("one term is a recipe");
        assert_eq!(r.terms().len(), 1);
        assert_eq!(r.term_key(0), "terms[1]");
        let e = r.error_at(&format!("{}.plugin", r.term_key(0)), "no such plugin");
        assert_eq!(e.line, 6, "the segmentation term's line: {e}");
        assert_eq!(r.terms()[0].params_line, 9);
        let e = r.edit(|raw| raw.terms[0].weight = -1.0).expect_err("a negative weight is refused");
        assert_eq!((e.key.as_str(), e.line), ("terms[1].weight", 7));
    }
}

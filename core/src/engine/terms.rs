//! The loss terms of a run: in-process [`LossTerm`]s or plugin
//! [`LoadedTerm`]s behind one type, and loading them for a recipe with
//! errors located in the recipe file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Device;

use crate::demo::DEMO_MODEL_SEED;
use crate::plugin::{self, discovery, EditBatch, InitContext, LoadedTerm, LossTerm, Needs, TermOutput};
use crate::recipe::{Recipe, RecipeError, Term};
use crate::{Error, Result};

/// Where each network's weights come from, after the binary resolved the
/// recipe's names (`lsd_weights::resolve`): `None` is the seeded demo
/// network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Weights {
    /// StyleGAN2 generator.
    pub generator: Option<PathBuf>,
    /// CLIP (the `model.safetensors`; `tokenizer.json` is looked for next to it).
    pub clip: Option<PathBuf>,
    /// ArcFace IR-SE50.
    pub arcface: Option<PathBuf>,
    /// BiSeNet face parsing.
    pub bisenet: Option<PathBuf>,
}

impl Weights {
    /// Every network a demo network.
    pub fn demo() -> Self {
        Self::default()
    }

    /// The map a plugin's [`InitContext::weights`] gets: `generator`,
    /// `clip`, `arcface`, `bisenet`.
    pub fn context_map(&self) -> BTreeMap<String, Option<PathBuf>> {
        [("generator", &self.generator), ("clip", &self.clip), ("arcface", &self.arcface), ("bisenet", &self.bisenet)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    /// The plugin context for a run on `device`. Demo networks are drawn
    /// from [`DEMO_MODEL_SEED`], the seed the host's own demo networks use,
    /// so a plugin's demo CLIP is the host's.
    pub fn context(&self, device: &Device) -> InitContext {
        InitContext {
            device: plugin::device_name(device),
            weights: self.context_map(),
            seed: DEMO_MODEL_SEED,
            precision: crate::ops::precision().name().into(),
        }
    }
}

/// How a term is evaluated.
pub enum TermImpl {
    /// A term in this process: evaluated with [`plugin::differentiate`].
    InProcess(Box<dyn LossTerm>),
    /// A term from a plugin library.
    Plugin(LoadedTerm),
}

impl std::fmt::Debug for TermImpl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InProcess(_) => f.write_str("InProcess"),
            Self::Plugin(t) => write!(f, "Plugin({})", t.path().display()),
        }
    }
}

/// One weighted loss term of a run.
#[derive(Debug)]
pub struct EngineTerm {
    /// The name shown in events and `losses.csv` (unique within the run).
    pub name: String,
    /// λ.
    pub weight: f64,
    /// The term.
    pub imp: TermImpl,
}

impl EngineTerm {
    /// An in-process term.
    pub fn in_process(name: impl Into<String>, weight: f64, term: impl LossTerm + 'static) -> Self {
        Self { name: name.into(), weight, imp: TermImpl::InProcess(Box::new(term)) }
    }

    /// What the term asked for when it was built.
    pub fn needs(&self) -> Needs {
        match &self.imp {
            TermImpl::InProcess(t) => t.needs(),
            TermImpl::Plugin(t) => t.needs(),
        }
    }

    /// Value and input gradients on `batch`.
    pub fn evaluate(&self, batch: &EditBatch) -> Result<TermOutput> {
        match &self.imp {
            TermImpl::InProcess(t) => Ok(plugin::differentiate(t.as_ref(), batch)?),
            TermImpl::Plugin(t) => t.evaluate(batch),
        }
    }
}

/// Unique display names for the recipe's terms: the plugin's name (the
/// file stem for a path), with `#2`, `#3` for repeats.
pub fn term_names(terms: &[Term]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for t in terms {
        let base = if t.plugin.contains(std::path::is_separator) {
            Path::new(&t.plugin)
                .file_stem()
                .map(|s| s.to_string_lossy().trim_start_matches("lib").trim_start_matches("lsd_plugin_").to_string())
                .unwrap_or_else(|| t.plugin.clone())
        } else {
            t.plugin.clone()
        };
        let n = out.iter().filter(|o| o.split('#').next() == Some(base.as_str())).count();
        out.push(if n == 0 { base } else { format!("{base}#{}", n + 1) });
    }
    out
}

/// Loads every term of `recipe` as a plugin: a name is resolved with
/// [`discovery::resolve`] in `LSD_PLUGIN_PATH` and the executable's folder
/// (never in the recipe's folder: a recipe from elsewhere must not make us
/// run the libraries lying next to it), a path (relative to the recipe's
/// folder) loads that one file; each is instantiated with its parameters.
/// Errors are located in the recipe: a missing plugin at `terms[i].plugin`,
/// a plugin's parameter error at the parameter's own line (mapped with
/// [`Term::params_line`]).
pub fn load_plugin_terms(
    recipe: &Recipe,
    weights: &Weights,
    device: &Device,
) -> std::result::Result<Vec<EngineTerm>, RecipeError> {
    let ctx = weights.context(device);
    let names = term_names(recipe.terms());
    let mut out = Vec::new();
    for (i, (term, name)) in recipe.terms().iter().zip(names).enumerate() {
        let lib = term_library(recipe, i)?;
        let loaded = lib.instantiate(&term.params, &ctx).map_err(|e| params_error(recipe, i, term, &e))?;
        out.push(EngineTerm { name, weight: term.weight as f64, imp: TermImpl::Plugin(loaded) });
    }
    Ok(out)
}

/// The plugin library of term `i`: found by name in the plugin folders,
/// or the file it names (relative to the recipe's folder).
pub fn term_library(recipe: &Recipe, i: usize) -> std::result::Result<crate::plugin::PluginLibrary, RecipeError> {
    let term = &recipe.terms()[i];
    let names_a_file =
        term.plugin.contains(std::path::is_separator) || term.plugin.ends_with(std::env::consts::DLL_SUFFIX);
    let recipe_dir = recipe.file().parent().filter(|d| !d.as_os_str().is_empty());
    let plugin_ref = match recipe_dir {
        Some(d) if names_a_file && Path::new(&term.plugin).is_relative() => d.join(&term.plugin).display().to_string(),
        _ => term.plugin.clone(),
    };
    discovery::resolve(&plugin_ref, &[]).map_err(|e| {
        recipe.error_at(
            &format!("{}.plugin", recipe.term_key(i)),
            format!("{}; run `lsd-tui plugins` to list the plugins found", error_text(&e)),
        )
    })
}

fn error_text(e: &Error) -> String {
    match e {
        Error::Config(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A plugin's error about its parameters, located in the recipe: the
/// plugin reports `at line N column M` of its parameter text, which starts
/// at [`Term::params_line`] (column offset [`Term::params_column`]).
pub fn params_error(recipe: &Recipe, index: usize, term: &Term, e: &Error) -> RecipeError {
    let text = error_text(e);
    let key = format!("{}.params", recipe.term_key(index));
    let mut err = recipe.error_at(&key, text.clone());
    if let Some((n, m, span)) = find_line_column(&text) {
        if term.params_line > 0 {
            err.line = term.params_line + n - 1;
            err.column = if n == 1 { term.params_column + m } else { term.params_indent + m };
            let mut msg = text.clone();
            msg.replace_range(span, "");
            err.message = msg;
        }
    } else if let Some(field) = quoted_field(&text) {
        // No position: point at the named field when the recipe has it.
        let (line, column) = recipe.locate(&format!("{key}.{field}"));
        if line > 0 && line != err.line {
            err.line = line;
            err.column = column;
        }
    }
    err
}

/// `(line, column, byte range of " at line N column M")` in a serde_yaml style message.
fn find_line_column(text: &str) -> Option<(usize, usize, std::ops::Range<usize>)> {
    let start = text.find(" at line ")?;
    let rest = &text[start + " at line ".len()..];
    let n_end = rest.find(|c: char| !c.is_ascii_digit())?;
    let n: usize = rest[..n_end].parse().ok()?;
    let rest2 = rest[n_end..].strip_prefix(" column ")?;
    let m_end = rest2.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest2.len());
    let m: usize = rest2[..m_end].parse().ok()?;
    let end = start + " at line ".len() + n_end + " column ".len() + m_end;
    Some((n, m, start..end))
}

/// The first back-quoted word (`unknown field `featres``).
fn quoted_field(text: &str) -> Option<&str> {
    let a = text.find('`')?;
    let b = text[a + 1..].find('`')?;
    Some(&text[a + 1..a + 1 + b])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_positions_in_plugin_messages() {
        let m = "parameters of plugin 'x': unknown field `featres`, expected one of `a` at line 2 column 1; run";
        let (n, c, span) = find_line_column(m).expect("found");
        assert_eq!((n, c), (2, 1));
        assert_eq!(&m[span], " at line 2 column 1");
        assert_eq!(quoted_field(m), Some("featres"));
    }

    #[test]
    fn names_are_unique() {
        let t = |p: &str| Term {
            plugin: p.into(),
            weight: 1.0,
            params: String::new(),
            params_line: 0,
            params_column: 0,
            params_indent: 0,
        };
        let names = term_names(&[t("clip"), t("identity"), t("clip"), t("./x/liblsd_plugin_colour.so")]);
        assert_eq!(names, ["clip", "identity", "clip#2", "colour"]);
    }
}

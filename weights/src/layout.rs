//! Expected tensor layouts (names and shapes) of the real checkpoints, and
//! the comparison that names the first missing or mis-shaped tensor.
//!
//! The layouts in `weights/layouts/*.keys.json` are the key lists recorded
//! from the reference networks (copies of `tests/fixtures/<model>/*.keys.json`).
//! Three JSON shapes occur: `"keys": [{"name", "shape", "dtype"}, …]`,
//! `"keys": {"name": {"shape", "dtype"}, …}` and `"keys": {"name": shape, …}`;
//! all are read.

use std::collections::BTreeMap;
use std::path::Path;

use crate::{Error, Result};

/// The layout files compiled into the binary, by file name.
const BUILTIN: &[(&str, &str)] = &[
    ("ffhq-1024-config-f.keys.json", include_str!("../layouts/ffhq-1024-config-f.keys.json")),
    ("vit-b-32.keys.json", include_str!("../layouts/vit-b-32.keys.json")),
    ("arcface_ir_se50.keys.json", include_str!("../layouts/arcface_ir_se50.keys.json")),
    ("bisenet_19.keys.json", include_str!("../layouts/bisenet_19.keys.json")),
    ("ffhq-1024-ada.keys.json", include_str!("../layouts/ffhq-1024-ada.keys.json")),
];

/// Tensor names and shapes a checkpoint must contain, in a fixed order (the
/// first problem reported is the first in this order).
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// Where the layout came from (file name or checkpoint path).
    pub source: String,
    /// `(name, shape)` pairs.
    pub keys: Vec<(String, Vec<usize>)>,
}

/// How a set of tensors compares to a [`Layout`].
#[derive(Debug, Clone, PartialEq)]
pub enum LayoutStatus {
    /// Every expected tensor is present with the expected shape.
    Ok {
        /// Number of tensors matched.
        matched: usize,
        /// Tensors in the file that the layout does not list (ignored).
        extra: usize,
    },
    /// The first expected tensor that the file lacks.
    Missing {
        /// Full key looked up (prefix included).
        name: String,
    },
    /// The first tensor whose shape differs.
    BadShape {
        /// Full key (prefix included).
        name: String,
        /// Shape the layout lists.
        expected: Vec<usize>,
        /// Shape in the file.
        got: Vec<usize>,
    },
    /// The file could not be loaded as a checkpoint at all.
    Unloadable {
        /// The loader's message.
        reason: String,
    },
    /// No layout is known for this file, so none was checked.
    NotChecked,
}

impl LayoutStatus {
    /// Whether this is a pass (or nothing to check).
    pub fn passed(&self) -> bool {
        matches!(self, Self::Ok { .. } | Self::NotChecked)
    }
}

impl std::fmt::Display for LayoutStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ok { matched, extra } => write!(f, "layout ok ({matched} tensors, {extra} extra ignored)"),
            Self::Missing { name } => write!(f, "missing tensor '{name}'"),
            Self::BadShape { name, expected, got } => {
                write!(f, "tensor '{name}' has shape {got:?}, expected {expected:?}")
            }
            Self::Unloadable { reason } => write!(f, "does not load: {reason}"),
            Self::NotChecked => write!(f, "no layout to check"),
        }
    }
}

#[derive(serde::Deserialize)]
struct Json {
    keys: JsonKeys,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum JsonKeys {
    List(Vec<JsonKey>),
    Map(serde_json::Map<String, serde_json::Value>),
}

#[derive(serde::Deserialize)]
struct JsonKey {
    name: String,
    shape: Vec<usize>,
}

impl Layout {
    /// The built-in layout file `name` (e.g. `arcface_ir_se50.keys.json`).
    pub fn builtin(name: &str) -> Result<Self> {
        let (_, text) = BUILTIN.iter().find(|(n, _)| *n == name).ok_or_else(|| Error::Manifest {
            what: "layouts".into(),
            reason: format!("no layout file '{name}' in weights/layouts/"),
        })?;
        Self::from_json(text, name)
    }

    /// Parses a `*.keys.json` text; `source` names it in errors.
    pub fn from_json(text: &str, source: &str) -> Result<Self> {
        let bad = |reason: String| Error::Manifest { what: format!("layout '{source}'"), reason };
        let json: Json = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let keys = match json.keys {
            JsonKeys::List(v) => v.into_iter().map(|k| (k.name, k.shape)).collect(),
            JsonKeys::Map(m) => m
                .into_iter()
                .map(|(name, v)| {
                    // `{"shape": [...], "dtype": ...}`, or the shape alone.
                    let shape = serde_json::from_value::<Vec<usize>>(v.get("shape").unwrap_or(&v).clone())
                        .ok()
                        .ok_or_else(|| bad(format!("key '{name}' has no integer 'shape' list")))?;
                    Ok((name, shape))
                })
                .collect::<Result<Vec<_>>>()?,
        };
        Ok(Self { source: source.to_string(), keys })
    }

    /// The layout of an existing checkpoint (every tensor it holds, sorted by
    /// name): to check copies of a file against the original.
    pub fn from_checkpoint(path: &Path) -> Result<Self> {
        let shapes = load_shapes(path)
            .map_err(|reason| Error::Manifest { what: format!("layout from '{}'", path.display()), reason })?;
        Ok(Self { source: path.display().to_string(), keys: shapes.into_iter().collect() })
    }

    /// Compares tensor shapes (as loaded) against this layout, with `prefix`
    /// put before every layout key. Reports the first missing or mis-shaped
    /// tensor in layout order; tensors the layout does not list are ignored
    /// (optimizer state, `latent_avg`, `position_ids` buffers, …).
    pub fn compare(&self, shapes: &BTreeMap<String, Vec<usize>>, prefix: &str) -> LayoutStatus {
        for (name, expected) in &self.keys {
            let full = format!("{prefix}{name}");
            match shapes.get(&full) {
                None => return LayoutStatus::Missing { name: full },
                Some(got) if got != expected => {
                    return LayoutStatus::BadShape { name: full, expected: expected.clone(), got: got.clone() }
                }
                Some(_) => {}
            }
        }
        LayoutStatus::Ok { matched: self.keys.len(), extra: shapes.len().saturating_sub(self.keys.len()) }
    }

    /// Loads `path` with `lsd_core::torch::load` and compares it.
    pub fn check_file(&self, path: &Path, prefix: &str) -> LayoutStatus {
        match load_shapes(path) {
            Ok(shapes) => self.compare(&shapes, prefix),
            Err(reason) => LayoutStatus::Unloadable { reason },
        }
    }
}

/// Every tensor's shape in a checkpoint (torch zip/legacy or safetensors).
pub fn load_shapes(path: &Path) -> std::result::Result<BTreeMap<String, Vec<usize>>, String> {
    // The loader may panic on garbage input deep in a third-party parser;
    // a corrupt download must become a report, not a crash.
    let loaded = std::panic::catch_unwind(|| lsd_core::torch::load(path))
        .map_err(|_| "the checkpoint reader panicked on this file (corrupt or unsupported)".to_string())?;
    let tensors = loaded.map_err(|e| e.to_string())?;
    Ok(tensors.iter().map(|(k, t)| (k.clone(), t.dims().to_vec())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_layouts_parse_with_the_recorded_counts() {
        for (file, n) in [
            ("ffhq-1024-config-f.keys.json", 171),
            ("vit-b-32.keys.json", 398),
            ("arcface_ir_se50.keys.json", 397),
            ("bisenet_19.keys.json", 191),
            ("ffhq-1024-ada.keys.json", 182),
        ] {
            let l = Layout::builtin(file).expect(file);
            assert_eq!(l.keys.len(), n, "{file}");
        }
        let sg = Layout::builtin("ffhq-1024-config-f.keys.json").unwrap();
        assert_eq!(sg.keys[0], ("style.1.weight".to_string(), vec![512, 512]));
    }

    #[test]
    fn compare_names_first_problem() {
        let l = Layout { source: "t".into(), keys: vec![("a".into(), vec![2, 3]), ("b".into(), vec![4])] };
        let mut s = BTreeMap::new();
        s.insert("p.a".to_string(), vec![2, 3]);
        assert_eq!(l.compare(&s, "p."), LayoutStatus::Missing { name: "p.b".into() });
        s.insert("p.b".to_string(), vec![5]);
        assert_eq!(l.compare(&s, "p."), LayoutStatus::BadShape { name: "p.b".into(), expected: vec![4], got: vec![5] });
        s.insert("p.b".to_string(), vec![4]);
        s.insert("latent_avg".to_string(), vec![512]);
        assert_eq!(l.compare(&s, "p."), LayoutStatus::Ok { matched: 2, extra: 1 });
    }
}

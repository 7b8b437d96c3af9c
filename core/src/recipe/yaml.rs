//! The resolved recipe as YAML, its hashes, and how two of them differ.
//!
//! A run folder keeps [`Recipe::to_yaml`]; [`Recipe::training_hash`] is
//! what a checkpoint must match to be resumed.

use sha2::Digest;

use super::raw::default_device;
use super::Recipe;

impl Recipe {
    /// The resolved recipe as YAML (what a run folder keeps).
    pub fn to_yaml(&self) -> String {
        yaml_serde::to_string(self.raw()).unwrap_or_else(|e| format!("# could not serialise: {e}\n"))
    }

    /// A stable hash of the resolved recipe (hex SHA-256 of [`Recipe::to_yaml`]).
    pub fn hash(&self) -> String {
        hex::encode(sha2::Sha256::digest(self.to_yaml().as_bytes()))
    }

    /// A hash of the settings that decide the trained direction (the
    /// resolved recipe without `output`, `device`, `precision`, `preview`
    /// and `checkpoint_every`): a checkpoint only resumes a run with the same.
    pub fn training_hash(&self) -> String {
        hex::encode(sha2::Sha256::digest(self.training_yaml().as_bytes()))
    }

    /// The settings [`Recipe::training_hash`] hashes, as YAML.
    pub fn training_yaml(&self) -> String {
        let mut raw = self.raw().clone();
        raw.output = None;
        raw.device = default_device();
        raw.precision = None;
        raw.preview = None;
        raw.checkpoint_every = 0;
        raw.name = None;
        yaml_serde::to_string(&raw).unwrap_or_default()
    }
}

/// The keys (dotted, `optimizer.lr`) whose values differ between two
/// YAML mappings, such as two [`Recipe::training_yaml`] texts.
pub fn differing_keys(a: &str, b: &str) -> Vec<String> {
    fn walk(prefix: &str, a: Option<&yaml_serde::Value>, b: Option<&yaml_serde::Value>, out: &mut Vec<String>) {
        use yaml_serde::Value::Mapping;
        match (a, b) {
            (Some(Mapping(x)), Some(Mapping(y))) => {
                let mut keys: Vec<String> =
                    x.keys().chain(y.keys()).filter_map(|k| k.as_str().map(str::to_string)).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&key, x.get(k.as_str()), y.get(k.as_str()), out);
                }
            }
            (x, y) if x != y => out.push(if prefix.is_empty() { "(all)".into() } else { prefix.to_string() }),
            _ => {}
        }
    }
    let parse = |t: &str| yaml_serde::from_str::<yaml_serde::Value>(t).ok();
    let mut out = Vec::new();
    walk("", parse(a).as_ref(), parse(b).as_ref(), &mut out);
    out
}

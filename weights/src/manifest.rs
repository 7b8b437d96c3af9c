//! The checked-in manifest of known weights (`weights/manifest.toml`): what
//! each network is, where it lives on the Hugging Face hub, and the size,
//! SHA-256 and tensor layout every file must have.

use serde::Deserialize;

use crate::{Error, Result};

/// The manifest shipped with the binary.
const BUILTIN: &str = include_str!("../manifest.toml");

/// A list of known weights.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    /// The entries, in manifest order.
    pub weights: Vec<Entry>,
}

/// One network's weights.
#[derive(Debug, Clone, Deserialize)]
pub struct Entry {
    /// Short name used on the command line and in recipes.
    pub name: String,
    /// What the network is.
    pub description: String,
    /// Hub repository id (`owner/name`).
    pub repo: String,
    /// Branch, tag, commit or `refs/pr/N`.
    #[serde(default = "main")]
    pub revision: String,
    /// Licence note shown by `weights list`.
    pub licence: String,
    /// The files; the first is the weights file `resolve` returns.
    pub files: Vec<FileSpec>,
}

fn main() -> String {
    "main".to_string()
}

/// One file of an entry.
#[derive(Debug, Clone, Deserialize)]
pub struct FileSpec {
    /// Path of the file inside the hub repository.
    pub file: String,
    /// Pinned size in bytes (`None`: not pinned yet).
    pub size: Option<u64>,
    /// Pinned lowercase hex SHA-256 (`None`: not pinned yet).
    pub sha256: Option<String>,
    /// `torch-legacy`, `torch`, `network-pickle`, `safetensors` or `json`.
    pub format: String,
    /// The publisher's own download URL, for a file that is not on the
    /// hub: `weights fetch` then says where to put it instead of
    /// downloading it.
    #[serde(default)]
    pub url: Option<String>,
    /// File name in `weights/layouts/` listing the expected tensors.
    pub layout: Option<String>,
    /// Prefix put in front of every layout key when matching (`g_ema.`).
    #[serde(default)]
    pub prefix: String,
}

impl FileSpec {
    /// Whether both size and SHA-256 are pinned.
    pub fn pinned(&self) -> bool {
        self.size.is_some() && self.sha256.is_some()
    }

    /// The file name on disk (the last component of the hub path).
    pub fn local_name(&self) -> &str {
        self.file.rsplit('/').next().unwrap_or(&self.file)
    }
}

impl Manifest {
    /// The manifest compiled into the binary.
    pub fn builtin() -> Self {
        Self::parse(BUILTIN, "weights/manifest.toml").expect("the built-in manifest is checked by a unit test")
    }

    /// Parses and validates manifest text; `what` names it in errors.
    pub fn parse(text: &str, what: &str) -> Result<Self> {
        let m: Manifest =
            toml::from_str(text).map_err(|e| Error::Manifest { what: what.into(), reason: e.to_string() })?;
        m.validate(what)?;
        Ok(m)
    }

    fn validate(&self, what: &str) -> Result<()> {
        let bad = |reason: String| Err(Error::Manifest { what: what.into(), reason });
        for (i, e) in self.weights.iter().enumerate() {
            if self.weights[..i].iter().any(|o| o.name == e.name) {
                return bad(format!("duplicate name '{}'", e.name));
            }
            if e.files.is_empty() {
                return bad(format!("'{}' lists no files", e.name));
            }
            for f in &e.files {
                if f.size.is_some() != f.sha256.is_some() {
                    return bad(format!("'{}/{}': pin size and sha256 together", e.name, f.file));
                }
                if let Some(s) = &f.sha256 {
                    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
                        return bad(format!("'{}/{}': sha256 must be 64 lowercase hex digits", e.name, f.file));
                    }
                }
                if let Some(l) = &f.layout {
                    crate::layout::Layout::builtin(l)?;
                }
            }
        }
        Ok(())
    }

    /// The entry called `name`.
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.weights.iter().find(|e| e.name == name)
    }

    /// All names, comma-separated (for error messages).
    pub fn names(&self) -> String {
        self.weights.iter().map(|e| e.name.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// The entries named, in the order given; an unknown name is an error
    /// listing the known ones.
    pub fn select(&self, names: &[String]) -> Result<Vec<&Entry>> {
        names
            .iter()
            .map(|n| self.get(n).ok_or_else(|| Error::Unknown { name: n.clone(), known: self.names() }))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_manifest_parses_and_is_complete() {
        let m = Manifest::parse(BUILTIN, "builtin").expect("builtin manifest");
        let names: Vec<_> = m.weights.iter().map(|e| e.name.as_str()).collect();
        for n in ["stylegan2-ffhq-1024", "clip-vit-b32", "arcface-ir-se50", "bisenet-face-19"] {
            assert!(names.contains(&n), "{n} missing from manifest");
        }
        let sg = m.get("stylegan2-ffhq-1024").unwrap();
        assert_eq!(sg.files[0].size, Some(132_717_355));
        let clip = m.get("clip-vit-b32").unwrap();
        assert_eq!(clip.revision, "refs/pr/15");
        assert!(clip.files.iter().all(|f| !f.pinned()), "clip is not pinned: no invented numbers");
        assert_eq!(m.get("arcface-ir-se50").unwrap().files[0].size, Some(175_367_323));
        assert!(m.get("stylegan2-ffhq-1024").unwrap().licence.contains("non-commercial"));
        // NVIDIA's own snapshot: not on the hub, not pinned (no invented numbers).
        let ada = m.get("stylegan2-ada-ffhq-1024").unwrap();
        assert!(ada.files[0].url.as_deref().is_some_and(|u| u.ends_with("/stylegan2-ada-pytorch/pretrained/ffhq.pkl")));
        assert!(!ada.files[0].pinned());
        assert_eq!(ada.files[0].format, "network-pickle");
    }

    #[test]
    fn half_pinned_file_is_rejected() {
        let text = r#"
            [[weights]]
            name = "x"
            description = "d"
            repo = "a/b"
            licence = "MIT"
            [[weights.files]]
            file = "f.pth"
            size = 3
            format = "torch"
        "#;
        let err = Manifest::parse(text, "test").unwrap_err().to_string();
        assert!(err.contains("pin size and sha256 together"), "{err}");
    }
}

//! The local weights directory: where each file lives, what is present, and
//! turning a recipe's weight name (or path) into a file.
//!
//! Layout of the directory (`$LSD_WEIGHTS_DIR`, else `<platform cache
//! dir>/lsd-tui/weights`):
//!
//! ```text
//! <dir>/<name>/<file>           verified files, the only ones ever used
//! <dir>/<name>/<file>.sha256    SHA-256, size and mtime recorded when verified
//! <dir>/.hub/<repo folder>/blobs/<sha256 or etag>.part
//!                               in-progress downloads
//! ```
//!
//! A file is verified (size, then SHA-256) before its first use by
//! [`Store::resolve`], and the result remembered in its stamp under its
//! size and modification time: a file changed or replaced since is hashed
//! again.

use std::path::{Path, PathBuf};

use crate::manifest::{Entry, FileSpec, Manifest};
use crate::verify::read_stamp;
use crate::{Error, Result};

/// Environment variable naming the weights directory.
pub const WEIGHTS_DIR_ENV: &str = "LSD_WEIGHTS_DIR";

/// A weights directory together with the manifest describing it.
#[derive(Debug, Clone)]
pub struct Store {
    /// The weights directory.
    pub dir: PathBuf,
    /// The known weights.
    pub manifest: Manifest,
}

/// What `weights list` says about one file.
#[derive(Debug, Clone, PartialEq)]
pub enum FileState {
    /// Not downloaded; `partial` bytes of an interrupted download are kept.
    Missing {
        /// Bytes of a resumable partial download, if any.
        partial: Option<u64>,
    },
    /// Present and verified when it was fetched (or last checked): the
    /// recorded SHA-256 is the pinned one and the size is unchanged.
    Verified,
    /// Present, but the manifest pins no checksum; the recorded one is shown.
    NotPinned {
        /// SHA-256 recorded at fetch time, if any.
        sha256: Option<String>,
    },
    /// Present with the pinned size but not verified yet
    /// (`lsd-tui weights check` hashes it).
    Unverified,
    /// Present with the wrong size.
    WrongSize {
        /// The pinned size.
        expected: u64,
    },
}

/// One file of a [`Store::list`].
#[derive(Debug, Clone)]
pub struct FileListing {
    /// Manifest name of the entry.
    pub name: String,
    /// The file's manifest spec.
    pub spec: FileSpec,
    /// Where it is (or would be).
    pub path: PathBuf,
    /// Size on disk, if present.
    pub size: Option<u64>,
    /// Presence and verification.
    pub state: FileState,
}

impl Store {
    /// The store named by `LSD_WEIGHTS_DIR` (else the platform cache dir)
    /// with the built-in manifest.
    pub fn from_env() -> Result<Self> {
        Ok(Self { dir: default_dir()?, manifest: Manifest::builtin() })
    }

    /// A store at `dir` with `manifest` (tests, custom setups).
    pub fn new(dir: impl Into<PathBuf>, manifest: Manifest) -> Self {
        Self { dir: dir.into(), manifest }
    }

    /// Where `spec` of `entry` lives once fetched.
    pub fn path(&self, entry: &Entry, spec: &FileSpec) -> PathBuf {
        self.dir.join(&entry.name).join(spec.local_name())
    }

    /// hf-hub's cache directory (in-progress downloads).
    pub fn hub_dir(&self) -> PathBuf {
        self.dir.join(".hub")
    }

    /// The partial download of a pinned file, named after its pinned
    /// SHA-256 (the etag of a hub LFS file), never after a server value.
    pub fn partial_path(&self, entry: &Entry, spec: &FileSpec) -> Option<PathBuf> {
        let sha = spec.sha256.as_ref().filter(|s| crate::http::valid_etag(s))?;
        Some(self.blobs_dir(entry).join(format!("{sha}.part")))
    }

    /// Where the partial downloads of `entry`'s repository go.
    pub fn blobs_dir(&self, entry: &Entry) -> PathBuf {
        let repo = hf_hub::Repo::with_revision(entry.repo.clone(), hf_hub::RepoType::Model, entry.revision.clone());
        self.hub_dir().join(repo.folder_name()).join("blobs")
    }

    /// The state of every file of every entry (no hashing: cheap).
    pub fn list(&self) -> Vec<FileListing> {
        let mut out = Vec::new();
        for e in &self.manifest.weights {
            for spec in &e.files {
                let path = self.path(e, spec);
                let size = std::fs::metadata(&path).ok().filter(|m| m.is_file()).map(|m| m.len());
                let state = match size {
                    None => FileState::Missing {
                        partial: self.partial_path(e, spec).and_then(|p| std::fs::metadata(p).ok()).map(|m| m.len()),
                    },
                    Some(got) => file_state(&path, spec, got),
                };
                out.push(FileListing { name: e.name.clone(), spec: spec.clone(), path, size, state });
            }
        }
        out
    }

    /// The files of `entry` that are not on disk, as `(spec, expected path)`.
    pub fn missing<'e>(&self, entry: &'e Entry) -> Vec<(&'e FileSpec, PathBuf)> {
        entry.files.iter().map(|s| (s, self.path(entry, s))).filter(|(_, p)| !p.is_file()).collect()
    }

    /// Turns a recipe's weight reference into a file: a manifest name gives
    /// its first (weights) file, whose directory also holds the entry's other
    /// files (tokenizer, config); anything else is taken as a path.
    /// A known but missing weight is an error giving the fetch command.
    ///
    /// Each file of a manifest entry is verified against its pinned size
    /// and SHA-256 before it is first used, and again whenever its size or
    /// modification time changed since (see [`crate::verify::write_stamp`]);
    /// a file that fails is an error saying how to replace it.
    pub fn resolve(&self, name_or_path: &str) -> Result<PathBuf> {
        if let Some(entry) = self.manifest.get(name_or_path) {
            let missing = self.missing(entry);
            if !missing.is_empty() {
                return Err(Error::Missing { name: entry.name.clone(), missing: describe_missing(&missing) });
            }
            for spec in &entry.files {
                self.verified(entry, spec)?;
            }
            return Ok(self.path(entry, &entry.files[0]));
        }
        let path = Path::new(name_or_path);
        if path.is_file() {
            return Ok(path.to_path_buf());
        }
        let looks_like_path = name_or_path.contains(['/', '\\']) || path.extension().is_some();
        if looks_like_path {
            Err(Error::io(
                "opening weights",
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file (nor a known weight name)"),
            ))
        } else {
            Err(Error::Unknown { name: name_or_path.to_string(), known: self.manifest.names() })
        }
    }
}

impl Store {
    /// Verifies one present file of `entry` unless its stamp already
    /// vouches for it (same size and modification time), and stamps it.
    fn verified(&self, entry: &Entry, spec: &FileSpec) -> Result<()> {
        let path = self.path(entry, spec);
        if let Some((_, sha)) = read_stamp(&path) {
            if spec.sha256.as_ref().is_none_or(|pin| *pin == sha) {
                return Ok(());
            }
        }
        let status = crate::verify::verify(&path, spec, &mut crate::progress::Silent)?;
        match &status {
            crate::verify::ChecksumStatus::Ok { sha256 } | crate::verify::ChecksumStatus::NotPinned { sha256, .. } => {
                crate::verify::write_stamp(&path, sha256)
            }
            _ => Err(Error::Verification {
                path: path.clone(),
                problem: status.to_string(),
                action: format!(
                    "; it changed since it was fetched. Delete it and run `lsd-tui weights fetch {}`",
                    entry.name
                ),
            }),
        }
    }
}

fn file_state(path: &Path, spec: &FileSpec, got: u64) -> FileState {
    if let Some(expected) = spec.size {
        if got != expected {
            return FileState::WrongSize { expected };
        }
    }
    let stamp = read_stamp(path);
    match (&spec.sha256, stamp) {
        (None, stamp) => FileState::NotPinned { sha256: stamp.map(|(_, s)| s) },
        (Some(pin), Some((_, s))) if *pin == s => FileState::Verified,
        (Some(_), _) => FileState::Unverified,
    }
}

/// "a (expected at /x/a), b (…)" for error messages.
pub(crate) fn describe_missing(missing: &[(&FileSpec, PathBuf)]) -> String {
    missing.iter().map(|(s, p)| format!("{} (expected at {})", s.file, p.display())).collect::<Vec<_>>().join(", ")
}

/// `$LSD_WEIGHTS_DIR`, else `<platform cache dir>/lsd-tui/weights`.
pub fn default_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os(WEIGHTS_DIR_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    dirs::cache_dir().map(|d| d.join("lsd-tui").join("weights")).ok_or_else(|| Error::Manifest {
        what: "weights directory".into(),
        reason: format!("no platform cache directory on this system; set {WEIGHTS_DIR_ENV}"),
    })
}

/// [`Store::resolve`] on the default store: a manifest name (`arcface-ir-se50`)
/// or a path to a file. A known but missing weight is an error that gives the
/// `lsd-tui weights fetch NAME` command.
pub fn resolve(name_or_path: &str) -> Result<PathBuf> {
    Store::from_env()?.resolve(name_or_path)
}

//! Size and SHA-256 verification of weight files, and the `.sha256` side
//! file that records a verified download so that `list` need not re-hash.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::manifest::FileSpec;
use crate::progress::{Event, Progress};
use crate::{Error, Result};

/// Result of comparing a file with its pinned size and SHA-256.
#[derive(Debug, Clone, PartialEq)]
pub enum ChecksumStatus {
    /// Size and SHA-256 match the manifest.
    Ok {
        /// The SHA-256.
        sha256: String,
    },
    /// The manifest pins nothing for this file: here is what to pin.
    NotPinned {
        /// Size on disk.
        size: u64,
        /// SHA-256 on disk.
        sha256: String,
    },
    /// The size differs (truncated or wrong file); not hashed.
    SizeMismatch {
        /// Pinned size.
        expected: u64,
        /// Size on disk.
        got: u64,
    },
    /// Same size, different content.
    ShaMismatch {
        /// Pinned SHA-256.
        expected: String,
        /// SHA-256 on disk.
        got: String,
    },
}

impl ChecksumStatus {
    /// Whether the file is acceptable (verified, or nothing to verify against).
    pub fn passed(&self) -> bool {
        matches!(self, Self::Ok { .. } | Self::NotPinned { .. })
    }
}

impl std::fmt::Display for ChecksumStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ok { .. } => write!(f, "verified (size and sha256)"),
            Self::NotPinned { size, sha256 } => {
                write!(f, "not pinned (size = {size}, sha256 = \"{sha256}\" on disk; pin these in the manifest)")
            }
            Self::SizeMismatch { expected, got } => {
                write!(f, "size {got} bytes, expected {expected} (truncated or wrong file)")
            }
            Self::ShaMismatch { expected, got } => {
                write!(f, "sha256 {got}, expected {expected} (corrupt or wrong file)")
            }
        }
    }
}

/// The SHA-256 (lowercase hex) and size of a file, reporting progress.
pub fn hash_file(path: &Path, progress: &mut dyn Progress) -> Result<(u64, String)> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io("opening", path, e))?;
    let total = file.metadata().map_err(|e| Error::io("reading", path, e))?.len();
    let what = format!("verifying {}", path.display());
    progress.event(Event::Start { what: &what, total: Some(total) });
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io("reading", path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        done += n as u64;
        progress.event(Event::Position(done));
    }
    progress.event(Event::Finish);
    Ok((done, hex::encode(hasher.finalize())))
}

/// Verifies `path` against `spec`'s pinned size and SHA-256 (size first, so
/// a truncated file is reported without hashing it).
pub fn verify(path: &Path, spec: &FileSpec, progress: &mut dyn Progress) -> Result<ChecksumStatus> {
    let got = std::fs::metadata(path).map_err(|e| Error::io("reading", path, e))?.len();
    if let Some(expected) = spec.size {
        if got != expected {
            return Ok(ChecksumStatus::SizeMismatch { expected, got });
        }
    }
    let (size, sha256) = hash_file(path, progress)?;
    Ok(match &spec.sha256 {
        None => ChecksumStatus::NotPinned { size, sha256 },
        Some(expected) if *expected == sha256 => ChecksumStatus::Ok { sha256 },
        Some(expected) => ChecksumStatus::ShaMismatch { expected: expected.clone(), got: sha256 },
    })
}

/// The side file recording a verified download: `<file>.sha256`.
pub fn stamp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".sha256");
    PathBuf::from(s)
}

/// Records `sha256` next to `path` with the file's size and modification
/// time (`sha256sum` format plus two comment lines), durably. The stamp
/// vouches for the file only while both are unchanged.
pub fn write_stamp(path: &Path, sha256: &str) -> Result<()> {
    let stamp = stamp_path(path);
    let (size, mtime) = size_and_mtime(path).ok_or_else(|| {
        Error::io("reading", path, std::io::Error::new(std::io::ErrorKind::NotFound, "cannot stat the file"))
    })?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let text = format!("{sha256}  {name}\n# size {size}\n# mtime {mtime}\n");
    lsd_core::durable::write(&stamp, text.as_bytes())
        .map_err(|e| Error::io("writing", &stamp, std::io::Error::other(e.to_string())))
}

/// The file's size and modification time (`seconds.nanoseconds` since the
/// epoch), the key under which a verification is remembered.
fn size_and_mtime(path: &Path) -> Option<(u64, String)> {
    let m = std::fs::metadata(path).ok()?;
    let t = m.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some((m.len(), format!("{}.{:09}", t.as_secs(), t.subsec_nanos())))
}

/// The `(size, sha256)` recorded by [`write_stamp`], if any and if the file
/// still has that size and modification time (a stamp without a time, from
/// an older version, vouches for nothing).
pub fn read_stamp(path: &Path) -> Option<(u64, String)> {
    let text = std::fs::read_to_string(stamp_path(path)).ok()?;
    let sha = text.split_whitespace().next()?.to_string();
    let size: u64 = text.lines().find_map(|l| l.strip_prefix("# size "))?.trim().parse().ok()?;
    let mtime = text.lines().find_map(|l| l.strip_prefix("# mtime "))?.trim().to_string();
    let (on_disk, now) = size_and_mtime(path)?;
    (on_disk == size && now == mtime && sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()))
        .then_some((size, sha))
}

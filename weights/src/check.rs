//! `weights check`: a file is good when its size and SHA-256 are the pinned
//! ones AND it loads into the expected architecture (every tensor of the
//! layout present with its shape). Reports name the first problem.

use std::path::{Path, PathBuf};

use crate::layout::{Layout, LayoutStatus};
use crate::manifest::{Entry, FileSpec};
use crate::progress::Progress;
use crate::store::Store;
use crate::verify::{hash_file, verify, write_stamp, ChecksumStatus};
use crate::Result;

/// The verdict on one file.
#[derive(Debug, Clone)]
pub struct CheckReport {
    /// `name/file` for manifest files, else the path as given.
    pub label: String,
    /// The file checked.
    pub path: PathBuf,
    /// Size and checksum (`None`: the file is missing).
    pub checksum: Option<ChecksumStatus>,
    /// Tensor layout.
    pub layout: LayoutStatus,
    /// Which manifest entry the file was identified as, if any.
    pub identified_as: Option<String>,
    /// A path that matches nothing in the manifest: there was nothing to
    /// verify it against, which is not a pass.
    pub unknown: bool,
}

impl CheckReport {
    /// Whether the file is present, verified (or unpinned) and loads into
    /// the expected layout.
    pub fn passed(&self) -> bool {
        !self.unknown && self.checksum.as_ref().is_some_and(ChecksumStatus::passed) && self.layout.passed()
    }
}

impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = match (self.unknown, self.passed()) {
            (true, _) => "UNKNOWN (not in the manifest: nothing to verify it against)",
            (false, true) => "ok",
            (false, false) => "FAILED",
        };
        write!(f, "{}: {verdict} ({})", self.label, self.path.display())?;
        if let Some(id) = &self.identified_as {
            write!(f, "\n  identified as {id}")?;
        }
        match &self.checksum {
            None => write!(f, "\n  missing"),
            Some(c) => write!(f, "\n  checksum: {c}\n  tensors: {}", self.layout),
        }
    }
}

/// Checks `path` against an optional pinned `spec` and an optional `layout`
/// (keys matched with `prefix`). Without a spec the checksum is reported as
/// not pinned, with the values found.
pub fn check_file(
    path: &Path,
    spec: Option<&FileSpec>,
    layout: Option<&Layout>,
    prefix: &str,
    progress: &mut dyn Progress,
) -> Result<CheckReport> {
    let label = path.display().to_string();
    if !path.is_file() {
        return Ok(CheckReport {
            label,
            path: path.to_path_buf(),
            checksum: None,
            layout: LayoutStatus::NotChecked,
            identified_as: None,
            unknown: false,
        });
    }
    let checksum = match spec {
        Some(s) => verify(path, s, progress)?,
        None => {
            let (size, sha256) = hash_file(path, progress)?;
            ChecksumStatus::NotPinned { size, sha256 }
        }
    };
    let layout = layout.map_or(LayoutStatus::NotChecked, |l| l.check_file(path, prefix));
    Ok(CheckReport {
        label,
        path: path.to_path_buf(),
        checksum: Some(checksum),
        layout,
        identified_as: None,
        unknown: false,
    })
}

fn spec_layout(spec: &FileSpec) -> Result<Option<Layout>> {
    spec.layout.as_deref().map(Layout::builtin).transpose()
}

impl Store {
    /// Checks every file of `entry` in the weights directory. A verified
    /// file gets its stamp refreshed, so `list` shows it as verified.
    pub fn check_entry(&self, entry: &Entry, progress: &mut dyn Progress) -> Result<Vec<CheckReport>> {
        entry
            .files
            .iter()
            .map(|spec| {
                let path = self.path(entry, spec);
                let layout = spec_layout(spec)?;
                let mut r = check_file(&path, Some(spec), layout.as_ref(), &spec.prefix, progress)?;
                r.label = format!("{}/{}", entry.name, spec.file);
                if let Some(ChecksumStatus::Ok { sha256 } | ChecksumStatus::NotPinned { sha256, .. }) = &r.checksum {
                    write_stamp(&path, sha256)?;
                }
                Ok(r)
            })
            .collect()
    }

    /// Checks a file given by path: it is identified as a manifest file by
    /// its SHA-256, else by its file name (then checked against that entry's
    /// pins and layout); an unknown file only gets its checksum reported.
    pub fn check_path(&self, path: &Path, progress: &mut dyn Progress) -> Result<CheckReport> {
        if !path.is_file() {
            return check_file(path, None, None, "", progress);
        }
        let (_, sha256) = hash_file(path, progress)?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let files = || self.manifest.weights.iter().flat_map(|e| e.files.iter().map(move |f| (e, f)));
        if let Some((entry, spec)) = files().find(|(_, f)| f.sha256.as_deref() == Some(sha256.as_str())) {
            // Identified by content: the checksum is verified already.
            let layout = spec_layout(spec)?;
            let layout = layout.map_or(LayoutStatus::NotChecked, |l| l.check_file(path, &spec.prefix));
            return Ok(CheckReport {
                label: path.display().to_string(),
                path: path.to_path_buf(),
                checksum: Some(ChecksumStatus::Ok { sha256 }),
                layout,
                identified_as: Some(format!("{}/{} ({}) by its sha256", entry.name, spec.file, entry.repo)),
                unknown: false,
            });
        }
        let Some((entry, spec)) = files().find(|(_, f)| f.local_name() == name) else {
            let mut r = check_file(path, None, None, "", progress)?;
            r.identified_as = Some("nothing in the manifest (no matching sha256 or file name)".into());
            r.unknown = true;
            return Ok(r);
        };
        let layout = spec_layout(spec)?;
        let mut r = check_file(path, Some(spec), layout.as_ref(), &spec.prefix, progress)?;
        r.identified_as = Some(format!("{}/{} ({}) by its file name", entry.name, spec.file, entry.repo));
        Ok(r)
    }
}

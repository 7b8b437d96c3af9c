//! Downloading weights from the Hugging Face hub with `hf-hub`, resumably,
//! verifying size and SHA-256 before a file is ever used.
//!
//! What hf-hub 0.4's sync API does (src/api/sync.rs,
//! <https://github.com/huggingface/hf-hub/blob/v0.4.3/src/api/sync.rs>):
//! a `GET {endpoint}/{repo}/resolve/{revision}/{file}` with `Range: bytes=0-0`
//! and no redirects for the metadata (`x-repo-commit`, `x-linked-etag` or
//! `etag`, and the size from `Content-Range`), then a `GET` with
//! `Range: bytes={start}-` into `blobs/{etag}.part`, appending to what an
//! earlier, interrupted call left there (that is its resume), renaming to
//! `blobs/{etag}` and linking `snapshots/{commit}/{file}` to it.
//!
//! What it does not do, and this module adds: no size or checksum check of
//! the result (a server that ignores `Range` would even append a whole body
//! to the partial file), no configurable timeouts (ureq's 30 s connect
//! default, no read timeout), no `HF_TOKEN` variable (only the token file),
//! no offline mode, and the file is in place before anyone has verified it.
//! So: offline and unreachable hubs fail before any request with what is
//! missing (a short TCP connect probe stands in for a connect timeout),
//! the downloaded blob is verified and only then moved to
//! `<dir>/<name>/<file>`, and a bad blob is deleted with a message saying so.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};

use crate::manifest::{Entry, FileSpec};
use crate::progress::{Event, HubProgress, Progress};
use crate::store::{describe_missing, Store};
use crate::verify::{read_stamp, verify, write_stamp, ChecksumStatus};
use crate::{Error, Result};

/// The public hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// How to reach the hub.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Hub URL (`HF_ENDPOINT`, default `https://huggingface.co`).
    pub endpoint: String,
    /// Access token (`HF_TOKEN`, else `HUGGING_FACE_HUB_TOKEN`, else the
    /// hub's token file).
    pub token: Option<String>,
    /// Never touch the network (`--offline`, or `HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// Limit for the connection probe made before downloading.
    pub connect_timeout: Duration,
    /// How often hf-hub retries (resuming) a failed transfer within one fetch.
    pub retries: usize,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            endpoint: DEFAULT_ENDPOINT.to_string(),
            token: None,
            offline: false,
            connect_timeout: Duration::from_secs(5),
            retries: 3,
        }
    }
}

impl FetchOptions {
    /// Options from the environment: `HF_ENDPOINT`, `HF_TOKEN`
    /// (or `HUGGING_FACE_HUB_TOKEN`, or the token file under `HF_HOME`),
    /// `HF_HUB_OFFLINE`.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let token = var("HF_TOKEN").or_else(|| var("HUGGING_FACE_HUB_TOKEN")).or_else(|| {
            // `Cache::from_env` panics without a home directory; only ask it
            // when it can answer.
            (std::env::var_os("HF_HOME").is_some() || dirs::home_dir().is_some())
                .then(|| Cache::from_env().token())
                .flatten()
        });
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"));
        Self {
            endpoint: var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string()),
            token,
            offline,
            ..Self::default()
        }
    }
}

/// How a file came to be in place.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// It was already there and verified (from its stamp, or re-hashed).
    AlreadyPresent,
    /// It was downloaded; `resumed_from` bytes came from an earlier attempt.
    Downloaded {
        /// Bytes of the partial download that was continued (0: fresh).
        resumed_from: u64,
    },
}

/// One fetched file.
#[derive(Debug, Clone)]
pub struct FetchReport {
    /// Manifest name.
    pub name: String,
    /// File in the hub repository.
    pub file: String,
    /// Where it now is.
    pub path: PathBuf,
    /// Downloaded or already there.
    pub outcome: Outcome,
    /// The verification (always passed: failures are errors).
    pub checksum: ChecksumStatus,
}

/// The result for one file of a multi-file fetch.
#[derive(Debug)]
pub struct FileResult {
    /// Manifest name.
    pub name: String,
    /// File in the hub repository.
    pub file: String,
    /// What happened.
    pub result: Result<FetchReport>,
}

impl Store {
    /// Fetches every file of `entries`. Fails at once, before any request,
    /// when offline or when the hub cannot be reached and something is
    /// missing (listing what); otherwise fetches each file and reports each.
    pub fn fetch(&self, entries: &[&Entry], opts: &FetchOptions, progress: &mut dyn Progress) -> Result<Vec<FileResult>> {
        let missing: Vec<(&Entry, &FileSpec, PathBuf)> = entries
            .iter()
            .flat_map(|e| self.missing(e).into_iter().map(move |(s, p)| (*e, s, p)))
            .collect();
        if !missing.is_empty() {
            let list: Vec<_> = missing.iter().map(|(_, s, p)| (*s, p.clone())).collect();
            let mut names: Vec<&str> = missing.iter().map(|(e, _, _)| e.name.as_str()).collect();
            names.dedup();
            if opts.offline {
                return Err(Error::Offline { missing: describe_missing(&list), names: names.join(" ") });
            }
            if let Err(reason) = probe(&opts.endpoint, opts.connect_timeout) {
                return Err(Error::Unreachable {
                    endpoint: opts.endpoint.clone(),
                    reason,
                    missing: describe_missing(&list),
                });
            }
        }
        let mut out = Vec::new();
        for e in entries {
            for spec in &e.files {
                let result = self.fetch_file(e, spec, opts, progress);
                out.push(FileResult { name: e.name.clone(), file: spec.file.clone(), result });
            }
        }
        Ok(out)
    }

    /// Fetches one file: keeps a verified copy, otherwise downloads (resuming
    /// a partial download), verifies, and moves it into place.
    pub fn fetch_file(&self, entry: &Entry, spec: &FileSpec, opts: &FetchOptions, progress: &mut dyn Progress) -> Result<FetchReport> {
        let dest = self.path(entry, spec);
        let report = |outcome, checksum| FetchReport {
            name: entry.name.clone(),
            file: spec.file.clone(),
            path: dest.clone(),
            outcome,
            checksum,
        };

        if dest.is_file() {
            if let Some(status) = stamped_status(&dest, spec) {
                return Ok(report(Outcome::AlreadyPresent, status));
            }
            let status = verify(&dest, spec, progress)?;
            if status.passed() {
                stamp(&dest, &status)?;
                return Ok(report(Outcome::AlreadyPresent, status));
            }
            if opts.offline {
                return Err(Error::Verification {
                    path: dest.clone(),
                    problem: status.to_string(),
                    action: format!("; kept it (offline): run `lsd-tui weights fetch {}` with network access to replace it", entry.name),
                });
            }
            remove(&dest)?;
            let note = format!("{}: {status}; deleted it, downloading again", dest.display());
            progress.event(Event::Note(&note));
        }
        if opts.offline {
            return Err(Error::Offline {
                missing: describe_missing(&[(spec, dest.clone())]),
                names: entry.name.clone(),
            });
        }

        let mut resumed_from = 0;
        if let (Some(part), Some(size)) = (self.partial_path(entry, spec), spec.size) {
            let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
            if have >= size {
                // hf-hub would ask for `bytes={size}-` (an error) or refuse
                // the part file; a complete part is finished here instead.
                let status = verify(&part, spec, progress)?;
                if status.passed() {
                    return self.install(&part, &dest, status).map(|s| report(Outcome::Downloaded { resumed_from: have }, s));
                }
                remove(&part)?;
            } else if have > 0 {
                resumed_from = have;
                let note = format!("resuming {} at byte {have} of {size}", spec.file);
                progress.event(Event::Note(&note));
            }
        }

        let api = ApiBuilder::from_cache(Cache::new(self.hub_dir()))
            .with_endpoint(opts.endpoint.trim_end_matches('/').to_string())
            .with_token(opts.token.clone())
            .with_progress(false)
            .with_retries(opts.retries)
            .with_user_agent("lsd-tui", env!("CARGO_PKG_VERSION"))
            .build()
            .map_err(|e| Error::Download { url: opts.endpoint.clone(), reason: e.to_string(), resume: String::new() })?;
        let repo = api.repo(Repo::with_revision(entry.repo.clone(), RepoType::Model, entry.revision.clone()));
        let url = repo.url(&spec.file);
        let hub_progress = HubProgress { inner: &mut *progress, what: format!("downloading {}/{}", entry.name, spec.file), pos: 0 };
        let pointer = repo
            .download_with_progress(&spec.file, hub_progress)
            .map_err(|e| self.map_api_error(e, &url, entry, spec))?;

        // The snapshot entry is a symlink into blobs/; verify and move the blob.
        let blob = std::fs::canonicalize(&pointer).map_err(|e| Error::io("reading", &pointer, e))?;
        let status = verify(&blob, spec, progress)?;
        if !status.passed() {
            remove(&blob)?;
            let _ = std::fs::remove_file(&pointer);
            return Err(Error::Verification {
                path: dest.clone(),
                problem: format!("downloaded from {url}: {status}"),
                action: format!(
                    "; the bad download was deleted. Run `lsd-tui weights fetch {}` again; if it fails the same way the mirror's file changed",
                    entry.name
                ),
            });
        }
        let status = self.install(&blob, &dest, status)?;
        let _ = std::fs::remove_file(&pointer);
        Ok(report(Outcome::Downloaded { resumed_from }, status))
    }

    /// Moves a verified file to `dest` and stamps it.
    fn install(&self, from: &Path, dest: &Path, status: ChecksumStatus) -> Result<ChecksumStatus> {
        let parent = dest.parent().expect("weights paths are <dir>/<name>/<file>");
        std::fs::create_dir_all(parent).map_err(|e| Error::io("creating", parent, e))?;
        std::fs::rename(from, dest).map_err(|e| Error::io("moving the download to", dest, e))?;
        stamp(dest, &status)?;
        Ok(status)
    }

    fn map_api_error(&self, e: ApiError, url: &str, entry: &Entry, spec: &FileSpec) -> Error {
        let resume = || match self.partial_path(entry, spec) {
            Some(p) => match std::fs::metadata(&p) {
                Ok(m) if m.len() > 0 => format!(
                    "; {} bytes kept in {}: run `lsd-tui weights fetch {}` again to resume",
                    m.len(),
                    p.display(),
                    entry.name
                ),
                _ => String::new(),
            },
            None => format!("; a partial download may be kept under {}: run the fetch again to resume", self.hub_dir().display()),
        };
        let download = |reason: String| Error::Download { url: url.to_string(), reason, resume: resume() };
        match e {
            ApiError::RequestError(err) => match *err {
                ureq::Error::Status(status, _) => {
                    let hint = match status {
                        401 | 403 => format!("; access denied to {}: set HF_TOKEN to a token that can read it", entry.repo),
                        404 => format!(
                            "; no file '{}' in {} at revision '{}': the mirror moved or was deleted (update weights/manifest.toml)",
                            spec.file, entry.repo, entry.revision
                        ),
                        416 => "; the server refused the resume range: delete the partial download and fetch again".to_string(),
                        s if s >= 500 => "; the hub failed: try again later".to_string(),
                        _ => String::new(),
                    };
                    Error::Http { url: url.to_string(), status, hint }
                }
                ureq::Error::Transport(t) => download(format!("{t}")),
            },
            ApiError::TooManyRetries(inner) => match self.map_api_error(*inner, url, entry, spec) {
                Error::Download { url, reason, resume } => {
                    Error::Download { url, reason: format!("{reason} (after retrying)"), resume }
                }
                other => other,
            },
            ApiError::MissingHeader(h) | ApiError::InvalidHeader(h) => {
                download(format!("the server sent no valid '{h}' header: is HF_ENDPOINT a Hugging Face hub?"))
            }
            ApiError::LockAcquisition(p) => download(format!("another process is downloading this file (lock {})", p.display())),
            other => download(other.to_string()),
        }
    }
}

/// The status a valid stamp vouches for, without hashing.
fn stamped_status(path: &Path, spec: &FileSpec) -> Option<ChecksumStatus> {
    let (size, sha256) = read_stamp(path)?;
    match (&spec.sha256, spec.size) {
        (Some(pin), Some(psize)) if *pin == sha256 && psize == size => Some(ChecksumStatus::Ok { sha256 }),
        (None, _) => Some(ChecksumStatus::NotPinned { size, sha256 }),
        _ => None,
    }
}

fn stamp(path: &Path, status: &ChecksumStatus) -> Result<()> {
    let size = std::fs::metadata(path).map_err(|e| Error::io("reading", path, e))?.len();
    match status {
        ChecksumStatus::Ok { sha256 } | ChecksumStatus::NotPinned { sha256, .. } => write_stamp(path, size, sha256),
        _ => Ok(()),
    }
}

fn remove(path: &Path) -> Result<()> {
    std::fs::remove_file(path).map_err(|e| Error::io("deleting", path, e))?;
    let _ = std::fs::remove_file(crate::verify::stamp_path(path));
    Ok(())
}

/// Opens (and drops) a TCP connection to the endpoint's host within
/// `timeout`, so that a machine without network fails at once instead of
/// waiting on hf-hub's fixed 30 s connect timeout. Skipped behind a proxy,
/// where the direct connection is not the one that matters.
pub fn probe(endpoint: &str, timeout: Duration) -> std::result::Result<(), String> {
    let proxied = ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
        .iter()
        .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()));
    if proxied {
        return Ok(());
    }
    let (scheme, rest) = endpoint.split_once("://").ok_or_else(|| format!("'{endpoint}' is not a URL"))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let default_port = if scheme.eq_ignore_ascii_case("http") { 80 } else { 443 };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, p.parse::<u16>().map_err(|_| format!("bad port in '{endpoint}'"))?),
        _ => (authority, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<_> = (host, port).to_socket_addrs().map_err(|e| format!("cannot resolve {host}: {e}"))?.collect();
    let mut last = format!("no address for {host}");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(_) => return Ok(()),
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(last)
}

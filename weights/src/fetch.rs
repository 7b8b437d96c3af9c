//! Downloading weights from the Hugging Face hub, resumably, verifying size
//! and SHA-256 before a file is ever used.
//!
//! The transfer speaks the hub's file-resolution protocol (the one of
//! hf-hub 0.4's sync API) through [`crate::http`], which adds what hf-hub
//! lacks: a read timeout (a stalled server fails the fetch with a clear
//! error after [`FetchOptions::stall_timeout`] instead of hanging, and the
//! bytes received are kept for the next attempt) and checks of the etag and
//! commit the server sends (hf-hub makes file paths of them). hf-hub itself
//! still provides the token file and the cache folder naming.
//!
//! Around the transfer: offline and unreachable hubs fail before any
//! request with what is missing (a short TCP connect probe), the download
//! goes to `<dir>/.hub/<repo folder>/blobs/<sha256 or etag>.part` (resumed
//! with `Range` by the next fetch), is verified, and only then moved to
//! `<dir>/<name>/<file>` (durably: flushed, renamed, folder flushed) and
//! stamped; a bad download is deleted with a message saying so.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hf_hub::Cache;

use crate::http::{Client, Failure};
use crate::manifest::{Entry, FileSpec};
use crate::progress::{Event, Progress};
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
    /// How often a failed transfer is retried (resuming) within one fetch.
    pub retries: usize,
    /// A transfer that receives no byte for this long fails (resumable).
    pub stall_timeout: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            endpoint: DEFAULT_ENDPOINT.to_string(),
            token: None,
            offline: false,
            connect_timeout: Duration::from_secs(5),
            retries: 3,
            stall_timeout: Duration::from_secs(30),
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
        let offline = var("HF_HUB_OFFLINE")
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"));
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
    pub fn fetch(
        &self,
        entries: &[&Entry],
        opts: &FetchOptions,
        progress: &mut dyn Progress,
    ) -> Result<Vec<FileResult>> {
        let missing: Vec<(&Entry, &FileSpec, PathBuf)> = entries
            .iter()
            .flat_map(|e| self.missing(e).into_iter().map(move |(s, p)| (*e, s, p)))
            // Files published outside the hub are never downloaded.
            .filter(|(_, s, _)| s.url.is_none())
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
    pub fn fetch_file(
        &self,
        entry: &Entry,
        spec: &FileSpec,
        opts: &FetchOptions,
        progress: &mut dyn Progress,
    ) -> Result<FetchReport> {
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
                    action: format!(
                        "; kept it (offline): run `lsd-tui weights fetch {}` with network access to replace it",
                        entry.name
                    ),
                });
            }
            remove(&dest)?;
            let note = format!("{}: {status}; deleted it, downloading again", dest.display());
            progress.event(Event::Note(&note));
        }
        if let Some(url) = &spec.url {
            return Err(Error::ByHand { name: entry.name.clone(), url: url.clone(), path: dest.clone() });
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
                // A complete (or overlong) part: finish it here.
                let status = verify(&part, spec, progress)?;
                if status.passed() {
                    return self
                        .install(&part, &dest, status)
                        .map(|s| report(Outcome::Downloaded { resumed_from: have }, s));
                }
                remove(&part)?;
            } else if have > 0 {
                resumed_from = have;
                let note = format!("resuming {} at byte {have} of {size}", spec.file);
                progress.event(Event::Note(&note));
            }
        }

        let client =
            Client::new(opts.token.clone(), opts.connect_timeout.max(Duration::from_secs(10)), opts.stall_timeout);
        let url = self.url(entry, spec, opts);
        let meta = client.metadata(&url).map_err(|e| self.failure(e, &url, entry, spec, None))?;
        if let Some(size) = spec.size {
            if meta.size != size {
                return Err(Error::Verification {
                    path: dest.clone(),
                    problem: format!("the hub's file at {url} has {} bytes, the manifest pins {size}", meta.size),
                    action: "; nothing was downloaded. The mirror's file changed: update weights/manifest.toml".into(),
                });
            }
        }
        // Named after the pinned checksum, else the (checked) etag: never
        // after an unchecked server value.
        let part = match self.partial_path(entry, spec) {
            Some(p) => p,
            None => self.blobs_dir(entry).join(format!("{}.part", meta.etag)),
        };
        let blobs = part.parent().expect("partial downloads live in blobs/");
        std::fs::create_dir_all(blobs).map_err(|e| Error::io("creating", blobs, e))?;
        let what = format!("downloading {}/{}", entry.name, spec.file);
        progress.event(Event::Start { what: &what, total: Some(meta.size) });
        let mut attempt = 0;
        loop {
            let mut on_disk = |n: u64| progress.event(Event::Position(n));
            match client.download(&url, &part, meta.size, &mut on_disk) {
                Ok(()) => break,
                Err(e) if attempt < opts.retries && !matches!(e, Failure::Status(_)) => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(300 * (1 << attempt.min(5))));
                }
                Err(e) => {
                    progress.event(Event::Finish);
                    return Err(self.failure(e, &url, entry, spec, Some((&part, attempt > 0))));
                }
            }
        }
        progress.event(Event::Finish);

        let status = verify(&part, spec, progress)?;
        if !status.passed() {
            remove(&part)?;
            return Err(Error::Verification {
                path: dest.clone(),
                problem: format!("downloaded from {url}: {status}"),
                action: format!(
                    "; the bad download was deleted. Run `lsd-tui weights fetch {}` again; if it fails the same way the mirror's file changed",
                    entry.name
                ),
            });
        }
        let status = self.install(&part, &dest, status)?;
        Ok(report(Outcome::Downloaded { resumed_from }, status))
    }

    /// The hub URL of a file (`{endpoint}/{repo}/resolve/{revision}/{file}`,
    /// the revision URL-encoded as hf-hub does).
    fn url(&self, entry: &Entry, spec: &FileSpec, opts: &FetchOptions) -> String {
        let repo = hf_hub::Repo::with_revision(entry.repo.clone(), hf_hub::RepoType::Model, entry.revision.clone());
        format!("{}/{}/resolve/{}/{}", opts.endpoint.trim_end_matches('/'), repo.url(), repo.url_revision(), spec.file)
    }

    /// Moves a verified file to `dest` durably and stamps it.
    fn install(&self, from: &Path, dest: &Path, status: ChecksumStatus) -> Result<ChecksumStatus> {
        lsd_core::durable::rename(from, dest)
            .map_err(|e| Error::io("moving the download to", dest, std::io::Error::other(e.to_string())))?;
        stamp(dest, &status)?;
        Ok(status)
    }

    /// The error of a failed request, saying what was kept for resuming.
    fn failure(&self, e: Failure, url: &str, entry: &Entry, spec: &FileSpec, part: Option<(&Path, bool)>) -> Error {
        let resume = match part.map(|(p, _)| (p, std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))) {
            Some((p, n)) if n > 0 => format!(
                "; {n} bytes kept in {}: run `lsd-tui weights fetch {}` again to resume",
                p.display(),
                entry.name
            ),
            _ => String::new(),
        };
        let retried = if part.is_some_and(|(_, r)| r) { " (after retrying)" } else { "" };
        match e {
            Failure::Status(status) => {
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
                Error::Http { url: url.to_string(), status, hint: format!("{hint}{resume}") }
            }
            Failure::Stalled(d) => Error::Download {
                url: url.to_string(),
                reason: format!("the server sent nothing for {} s{retried}", d.as_secs()),
                resume,
            },
            Failure::Protocol(m) | Failure::Transport(m) => {
                Error::Download { url: url.to_string(), reason: format!("{m}{retried}"), resume }
            }
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
    match status {
        ChecksumStatus::Ok { sha256 } | ChecksumStatus::NotPinned { sha256, .. } => write_stamp(path, sha256),
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

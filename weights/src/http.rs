//! The hub's file-resolution protocol, spoken with a `ureq` agent that has
//! read timeouts, and with every server-supplied value checked before use.
//!
//! It is the protocol of hf-hub 0.4's sync API
//! (<https://github.com/huggingface/hf-hub/blob/v0.4.3/src/api/sync.rs>,
//! `metadata` and `download_tempfile`): `GET {endpoint}/{repo}/resolve/
//! {revision}/{file}` with `Range: bytes=0-0` and no redirects gives
//! `x-repo-commit`, `x-linked-etag` (or `etag`) and, from `Content-Range`,
//! the size; relative redirects are followed, an absolute one (a CDN) is
//! asked for the size; then `GET` with `Range: bytes={start}-` appends to a
//! partial file. Two things hf-hub cannot do are why this is ours:
//! - a stalled transfer: hf-hub's agent has no read timeout, so a server
//!   that stops sending hangs the fetch for ever. Here every read of the
//!   socket times out after [`super::FetchOptions::stall_timeout`], and the
//!   bytes received so far stay in the partial file for the next attempt;
//! - hf-hub turns the server's etag and commit into file paths
//!   (`blobs/{etag}`, `snapshots/{commit}`) unchecked, so a hostile
//!   `HF_ENDPOINT` answering `etag: ../../x` writes outside the cache. Here
//!   both are checked ([`valid_etag`], [`valid_commit`]) and neither names
//!   a file: the partial download is named after the pinned SHA-256, or a
//!   checked etag.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

/// What the hub says about a file before the download.
#[derive(Debug, Clone, PartialEq)]
pub struct Metadata {
    /// The revision's commit (checked: 40 or 64 hex digits).
    pub commit: String,
    /// The etag, quotes and `W/` removed (checked: see [`valid_etag`]).
    pub etag: String,
    /// The file's size in bytes.
    pub size: u64,
}

/// Why a request failed.
#[derive(Debug)]
pub enum Failure {
    /// An HTTP error status.
    Status(u16),
    /// No bytes arrived for the stall timeout.
    Stalled(Duration),
    /// The server answered something a hub would not (missing or unsafe
    /// header, bad range).
    Protocol(String),
    /// The connection failed, or a local file could not be written.
    Transport(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Status(s) => write!(f, "HTTP {s}"),
            Self::Stalled(d) => write!(f, "the transfer stalled: no data for {} s", d.as_secs()),
            Self::Protocol(m) | Self::Transport(m) => f.write_str(m),
        }
    }
}

/// An etag the hub may send: a git blob id or an LFS SHA-256, i.e. 1 to
/// 128 ASCII letters and digits (anything else could name a path).
pub fn valid_etag(etag: &str) -> bool {
    (1..=128).contains(&etag.len()) && etag.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// A commit id: 40 (SHA-1) or 64 (SHA-256) hex digits.
pub fn valid_commit(commit: &str) -> bool {
    matches!(commit.len(), 40 | 64) && commit.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A client for one endpoint.
pub struct Client {
    agent: ureq::Agent,
    no_redirects: ureq::Agent,
    token: Option<String>,
    user_agent: String,
    stall: Duration,
}

impl Client {
    /// A client whose reads time out after `stall` without data and whose
    /// connections after `connect`.
    pub fn new(token: Option<String>, connect: Duration, stall: Duration) -> Self {
        let builder = || {
            ureq::AgentBuilder::new()
                .try_proxy_from_env(true)
                .timeout_connect(connect)
                .timeout_read(stall)
                .timeout_write(stall)
        };
        Self {
            agent: builder().redirect_auth_headers(ureq::RedirectAuthHeaders::SameHost).build(),
            no_redirects: builder().redirects(0).build(),
            token,
            user_agent: format!("lsd-tui/{}", env!("CARGO_PKG_VERSION")),
            stall,
        }
    }

    fn get(&self, agent: &ureq::Agent, url: &str, range: &str) -> ureq::Request {
        let mut r = agent.get(url).set("User-Agent", &self.user_agent).set("Range", range);
        if let Some(t) = &self.token {
            r = r.set("Authorization", &format!("Bearer {t}"));
        }
        r
    }

    fn call(&self, req: ureq::Request) -> Result<ureq::Response, Failure> {
        match req.call() {
            Ok(r) => Ok(r),
            Err(ureq::Error::Status(s, _)) => Err(Failure::Status(s)),
            Err(ureq::Error::Transport(t)) => Err(self.transport(&t.to_string(), t.kind() == ureq::ErrorKind::Io)),
        }
    }

    /// A transport error: a read timeout is a stall.
    fn transport(&self, text: &str, io: bool) -> Failure {
        let lower = text.to_ascii_lowercase();
        if io && (lower.contains("timed out") || lower.contains("timeout") || lower.contains("would block")) {
            Failure::Stalled(self.stall)
        } else {
            Failure::Transport(text.to_string())
        }
    }

    /// The file's commit, etag and size (hf-hub's `metadata`).
    pub fn metadata(&self, url: &str) -> Result<Metadata, Failure> {
        let mut current = url.to_string();
        let mut response = self.call(self.get(&self.no_redirects, &current, "bytes=0-0"))?;
        // Relative redirects (a renamed repo) stay on the hub.
        for _ in 0..5 {
            if !(300..400).contains(&response.status()) {
                break;
            }
            let Some(location) = response.header("Location").map(str::to_string) else { break };
            if location.contains("://") {
                break;
            }
            current = join_location(&current, &location)?;
            response = self.call(self.get(&self.no_redirects, &current, "bytes=0-0"))?;
        }
        let header = |name: &'static str| response.header(name).map(str::to_string);
        let etag = header("x-linked-etag").or_else(|| header("etag")).ok_or_else(|| {
            Failure::Protocol("the server sent no 'etag' header: is HF_ENDPOINT a Hugging Face hub?".into())
        })?;
        let etag = etag.trim().trim_start_matches("W/").replace('"', "");
        if !valid_etag(&etag) {
            return Err(Failure::Protocol(format!(
                "the server sent the etag '{}', which is not a hub etag (letters and digits); refusing it",
                etag.escape_debug()
            )));
        }
        let commit = header("x-repo-commit").ok_or_else(|| {
            Failure::Protocol("the server sent no 'x-repo-commit' header: is HF_ENDPOINT a Hugging Face hub?".into())
        })?;
        if !valid_commit(&commit) {
            return Err(Failure::Protocol(format!(
                "the server sent the commit '{}', which is not a commit id (40 or 64 hex digits); refusing it",
                commit.escape_debug()
            )));
        }
        let response = if (300..400).contains(&response.status()) {
            let location =
                header("Location").ok_or_else(|| Failure::Protocol("a redirect without a location".into()))?;
            self.call(self.get(&self.agent, &location, "bytes=0-0"))?
        } else {
            response
        };
        let size = response
            .header("Content-Range")
            .and_then(|r| r.rsplit('/').next())
            .and_then(|n| n.trim().parse::<u64>().ok())
            .ok_or_else(|| Failure::Protocol("the server sent no valid 'Content-Range' header".into()))?;
        Ok(Metadata { commit, etag, size })
    }

    /// Appends the rest of the file at `url` to `part` (which holds the
    /// first bytes already) until it has `size` bytes, calling `progress`
    /// with the bytes on disk. A stall or a cut connection leaves what was
    /// received in `part`.
    pub fn download(&self, url: &str, part: &Path, size: u64, progress: &mut dyn FnMut(u64)) -> Result<(), Failure> {
        let io = |e: std::io::Error| Failure::Transport(format!("writing '{}': {e}", part.display()));
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(part).map_err(io)?;
        let mut have = file.metadata().map_err(io)?.len();
        if have > size {
            file.set_len(0).map_err(io)?;
            have = 0;
        }
        progress(have);
        if have == size {
            return Ok(());
        }
        let response = self.call(self.get(&self.agent, url, &format!("bytes={have}-")))?;
        if response.status() == 200 && have > 0 {
            // The server ignored the range: start over rather than append
            // the whole body to the bytes we have.
            file.set_len(0).map_err(io)?;
            have = 0;
        } else if response.status() != 200 && response.status() != 206 {
            return Err(Failure::Status(response.status()));
        }
        let mut reader = response.into_reader().take(size - have);
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) => {
                    return Err(Failure::Stalled(self.stall))
                }
                Err(e) => return Err(self.transport(&e.to_string(), true)),
            };
            file.write_all(&buf[..n]).map_err(io)?;
            have += n as u64;
            progress(have);
        }
        file.sync_all().map_err(io)?;
        if have < size {
            return Err(Failure::Transport(format!("the connection closed after {have} of {size} bytes")));
        }
        Ok(())
    }
}

/// `location` (a path) on the scheme and host of `url`.
fn join_location(url: &str, location: &str) -> Result<String, Failure> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| Failure::Protocol(format!("'{url}' is not a URL")))?;
    let host = rest.split('/').next().unwrap_or(rest);
    if !location.starts_with('/') {
        return Err(Failure::Protocol(format!("unexpected redirect to '{location}'")));
    }
    Ok(format!("{scheme}://{host}{location}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_values_that_could_name_a_path_are_refused() {
        let sha = "a".repeat(64);
        assert!(valid_etag(&sha) && valid_etag("0123abcd"));
        for bad in ["", "../../x", "a/b", "a\\b", ".", "..", "x y", "é", &"a".repeat(129)] {
            assert!(!valid_etag(bad), "{bad:?}");
        }
        assert!(valid_commit(&"0".repeat(40)) && valid_commit(&"f".repeat(64)));
        for bad in ["", "main", "../0123", &"g".repeat(40), &"0".repeat(41)] {
            assert!(!valid_commit(bad), "{bad:?}");
        }
        assert_eq!(join_location("http://h:1/a/b", "/c/d").ok(), Some("http://h:1/c/d".into()));
    }
}

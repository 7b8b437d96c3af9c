//! The error type of lsd-weights: every variant names the file or weight it
//! concerns and, where there is one, the command that fixes it.

use std::path::PathBuf;

/// Everything that can go wrong while resolving, fetching, verifying or
/// converting weights.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{op} '{path}': {source}")]
    Io {
        /// What was being done: "reading", "writing", …
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// The manifest (or a layout file) is malformed.
    #[error("weights manifest {what}: {reason}")]
    Manifest {
        /// Which manifest or layout.
        what: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A name is neither a manifest entry nor an existing file.
    #[error("'{name}' is neither a known weight nor an existing file; known weights: {known}")]
    Unknown {
        /// The name or path given.
        name: String,
        /// The manifest names, comma-separated.
        known: String,
    },

    /// A file published outside the hub, which is not downloaded.
    #[error("'{name}' is published outside the Hugging Face hub, so it is not downloaded here: download {url} to '{path}' yourself, then run `lsd-tui weights check {name}`")]
    ByHand {
        /// The manifest name.
        name: String,
        /// The publisher's URL.
        url: String,
        /// Where the file belongs.
        path: std::path::PathBuf,
    },
    /// A known weight has not been downloaded (or is incomplete).
    #[error("weight '{name}' is not downloaded (missing: {missing}); run `lsd-tui weights fetch {name}`")]
    Missing {
        /// The manifest name.
        name: String,
        /// The missing files, with where they were expected.
        missing: String,
    },

    /// `--offline` was given (or HF_HUB_OFFLINE is set) and files are missing.
    #[error("offline: not downloading; missing: {missing}. Run `lsd-tui weights fetch {names}` with network access, or copy the files there")]
    Offline {
        /// The missing files, with where they were expected.
        missing: String,
        /// The manifest names to fetch.
        names: String,
    },

    /// The hub endpoint cannot be reached at all.
    #[error(
        "cannot reach {endpoint} ({reason}); missing: {missing}. Check the network (or HF_ENDPOINT), or use --offline"
    )]
    Unreachable {
        /// The endpoint URL.
        endpoint: String,
        /// The connection error.
        reason: String,
        /// The files that were to be downloaded.
        missing: String,
    },

    /// The hub answered with an HTTP error status.
    #[error("{url}: HTTP {status}{hint}")]
    Http {
        /// The file URL.
        url: String,
        /// The status code.
        status: u16,
        /// What it probably means, starting with "; ".
        hint: String,
    },

    /// The download failed part-way (connection cut, bad headers, …).
    #[error("downloading {url} failed: {reason}{resume}")]
    Download {
        /// The file URL.
        url: String,
        /// The underlying error.
        reason: String,
        /// Whether a partial file was kept for resuming, starting with "; ".
        resume: String,
    },

    /// A file's size or SHA-256 is not the pinned one.
    #[error("'{path}' failed verification: {problem}{action}")]
    Verification {
        /// The file.
        path: PathBuf,
        /// "size 10 bytes, expected 12" or "sha256 …, expected …".
        problem: String,
        /// What was done about it ("; the bad file was deleted, …"), may be empty.
        action: String,
    },

    /// Conversion to safetensors failed or is not available.
    #[error("converting '{input}': {reason}")]
    Convert {
        /// The input checkpoint.
        input: PathBuf,
        /// What went wrong, and what to do.
        reason: String,
    },
}

/// The result type of lsd-weights.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An I/O error with the file it concerns.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { op, path: path.into(), source }
    }
}

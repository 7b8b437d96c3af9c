//! The error type of lsd-core.

use std::path::PathBuf;

/// Everything that can go wrong inside lsd-core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

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

    /// A checkpoint file is not in a format we can read.
    #[error("'{path}': {reason}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong with it, and what to do.
        reason: String,
    },

    /// A tensor the model needs is missing from the weights.
    #[error("missing tensor '{name}' in the weights{hint}")]
    MissingTensor {
        /// The key that was looked up.
        name: String,
        /// Extra context (e.g. the closest key present), starting with "; ".
        hint: String,
    },

    /// A tensor has a shape the model cannot use.
    #[error("tensor '{name}' has shape {got:?}, expected {expected}")]
    BadShape {
        /// The key.
        name: String,
        /// What the model expects, in words.
        expected: String,
        /// The shape found.
        got: Vec<usize>,
    },

    /// A configuration value is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// A fixture directory is malformed (missing file or case input).
    #[error("fixture '{path}': {reason}")]
    Fixture {
        /// The fixture directory or file.
        path: PathBuf,
        /// What is missing or wrong.
        reason: String,
    },

    /// A tokenizer could not encode a text.
    #[error("could not tokenize '{text}': {reason}")]
    Tokenize {
        /// The text.
        text: String,
        /// The tokenizer's error.
        reason: String,
    },
}

/// The result type of lsd-core.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An I/O error with the file it concerns.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { op, path: path.into(), source }
    }
}

//! The error type of the plugin SDK.

/// What can go wrong in a loss term or at the boundary.
///
/// A plugin that builds on lsd-core's models gets lsd-core's errors through
/// `?` as well (lsd-core converts them into [`Error::Other`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A tensor has a shape the term cannot use.
    #[error("tensor '{name}' has shape {got:?}, expected {expected}")]
    BadShape {
        /// The tensor.
        name: String,
        /// What was expected, in words.
        expected: String,
        /// The shape found.
        got: Vec<usize>,
    },

    /// A configuration value (a parameter, the load context) is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// Any other error of a term's own code.
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

/// The result type of the plugin SDK.
pub type Result<T> = std::result::Result<T, Error>;

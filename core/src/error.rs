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

    /// A file could not be used as a plugin library (missing, not loadable,
    /// not a plugin).
    #[error("plugin '{path}': {reason}")]
    PluginLoad {
        /// The library file.
        path: PathBuf,
        /// What is wrong, and what to do.
        reason: String,
    },

    /// A plugin was built with a different toolchain, lsd-core, Candle or
    /// feature set than the host; it was not called.
    #[error("{}", plugin_mismatch(path, package, fields, rebuild))]
    PluginMismatch {
        /// The library file.
        path: PathBuf,
        /// The plugin's cargo package.
        package: String,
        /// `[field, host value, plugin value]` for every fingerprint field.
        fields: Vec<[String; 3]>,
        /// The command that rebuilds the plugin to match.
        rebuild: String,
    },

    /// A plugin returned an error, or panicked, in one of its calls.
    #[error("plugin '{plugin}' {} in {call}: {reason}", if *panicked { "panicked" } else { "failed" })]
    PluginCall {
        /// The plugin's name.
        plugin: String,
        /// Which call: `describe`, `init`, `needs`, `loss`.
        call: &'static str,
        /// Its message.
        reason: String,
        /// Whether it was a panic (caught inside the plugin).
        panicked: bool,
    },

    /// A loss term failed with an error of its own code.
    #[error(transparent)]
    Term(Box<dyn std::error::Error + Send + Sync>),

    /// Another run holds the lock of the run folder.
    #[error(
        "run folder '{}' is in use by {}; wait for that run to end (or stop it), or choose another output folder",
        path.display(),
        pid.map_or_else(|| "another process".to_string(), |p| format!("process {p}"))
    )]
    RunFolderInUse {
        /// The run folder.
        path: PathBuf,
        /// The process holding it, when it wrote its PID.
        pid: Option<u32>,
    },
}

/// The message of [`Error::PluginMismatch`]: host and plugin values side by
/// side, differing rows marked, then the rebuild command.
fn plugin_mismatch(path: &std::path::Path, package: &str, fields: &[[String; 3]], rebuild: &str) -> String {
    let w0 = fields.iter().map(|r| r[0].len()).max().unwrap_or(0).max(5);
    let w1 = fields.iter().map(|r| r[1].len()).max().unwrap_or(0).max(4);
    let mut s = format!(
        "plugin '{}' (package '{package}') was built for a different lsd-core ABI and was not loaded\n",
        path.display()
    );
    s.push_str(&format!("      {:w0$}  {:w1$}  plugin\n", "field", "host"));
    for [name, host, plugin] in fields {
        let mark = if host == plugin { " " } else { "≠" };
        s.push_str(&format!("    {mark} {name:w0$}  {host:w1$}  {plugin}\n"));
    }
    s.push_str(&format!("rebuild it with:\n    {rebuild}"));
    s
}

/// The result type of lsd-core.
pub type Result<T> = std::result::Result<T, Error>;

impl From<lsd_plugin_api::Error> for Error {
    /// The SDK's own variants map to the same variants here; an error a term
    /// wrapped ([`lsd_plugin_api::Error::Other`]) comes back as it was, or as
    /// [`Error::Term`].
    fn from(e: lsd_plugin_api::Error) -> Self {
        match e {
            lsd_plugin_api::Error::Candle(e) => Self::Candle(e),
            lsd_plugin_api::Error::BadShape { name, expected, got } => Self::BadShape { name, expected, got },
            lsd_plugin_api::Error::Config(m) => Self::Config(m),
            lsd_plugin_api::Error::Other(e) => match e.downcast::<Error>() {
                Ok(ours) => *ours,
                Err(other) => Self::Term(other),
            },
        }
    }
}

impl From<Error> for lsd_plugin_api::Error {
    /// So that a plugin built on lsd-core's models can use `?` on them in
    /// its [`crate::plugin::LossTerm`].
    fn from(e: Error) -> Self {
        match e {
            Error::Candle(e) => Self::Candle(e),
            Error::BadShape { name, expected, got } => Self::BadShape { name, expected, got },
            Error::Config(m) => Self::Config(m),
            other => Self::Other(Box::new(other)),
        }
    }
}

impl Error {
    /// An I/O error with the file it concerns.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { op, path: path.into(), source }
    }
}

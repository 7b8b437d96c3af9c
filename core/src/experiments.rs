//! The report's experiments as library code: each one measures, returns its
//! numbers, and writes a table (CSV and terminal text) and a labelled PNG.
//! The `lsd-tui` subcommands `similarity`, `generalize`, `ablation` and
//! `merge` are thin wrappers that parse flags, resolve weight names and draw
//! progress.
//!
//! - [`ablation`]: the regulariser ablation grid and metrics (Fig. 9).
//! - [`similarity`]: the prompt × image CLIP similarity table (Fig. 5).
//! - [`generalize`]: local directions applied to unseen images, ΔCLIP
//!   against α (Fig. 8), with sharding and [`generalize::merge`].
//!
//! Every experiment runs on the demo networks in seconds (their numbers mean
//! nothing, and every output says so) and on real weights on a GPU.

pub mod ablation;
pub mod generalize;
pub mod models;
pub mod seeds;
pub mod similarity;
pub mod table;
pub mod train;

/// How far a long experiment has got, for a progress bar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Units finished.
    pub done: usize,
    /// Units in all.
    pub total: usize,
    /// What was just finished, in words.
    pub what: String,
}

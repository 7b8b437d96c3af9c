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
pub mod sweep;
pub mod table;
pub mod train;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Asks a running experiment to stop: the direction being trained writes
/// its checkpoint and outputs (the engine's `Stop`), and the experiment
/// returns an error before starting the next one. Running it again reuses
/// the finished directions and resumes the stopped one. The binary requests
/// it on SIGTERM, SIGINT and SIGHUP.
#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    /// Not requested yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests the stop (from any thread).
    pub fn request(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// True once requested.
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

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

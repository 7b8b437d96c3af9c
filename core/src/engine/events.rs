//! What the training engine says, and what it is told.
//!
//! The engine runs on its own thread. It sends [`TrainEvent`]s over one
//! channel and reads [`Control`]s from another; the TUI and the headless
//! runner are two consumers of the same events. The engine never blocks on
//! a consumer (unbounded channel), and a consumer drains then draws.

use std::path::PathBuf;
use std::time::Duration;

/// An RGB image, 8 bits per channel, row-major (the `image` crate's type).
pub type Rgb = image::RgbImage;

/// A run's fixed facts, sent once when it starts.
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// The recipe's name (file stem).
    pub recipe: String,
    /// The text prompt.
    pub prompt: String,
    /// `direction` or `latent`.
    pub mode: String,
    /// `cpu`, `cuda:0`, …
    pub device: String,
    /// Steps the run will take in total.
    pub total_steps: usize,
    /// The step the run starts from (non-zero when resumed).
    pub start_step: usize,
    /// The loss terms' names, in the order of [`StepStats::terms`].
    pub terms: Vec<String>,
    /// True when any model is a demo model: every view says so.
    pub demo: bool,
    /// The run's output folder.
    pub output: PathBuf,
}

/// One optimisation step's numbers.
#[derive(Debug, Clone)]
pub struct StepStats {
    /// 1-based step number.
    pub step: usize,
    /// Each term's unweighted value, in [`RunInfo::terms`] order.
    pub terms: Vec<f64>,
    /// The weighted total that was minimised.
    pub total: f64,
    /// The gradient norm with respect to the trained parameters.
    pub grad_norm: f64,
    /// Smoothed steps per second.
    pub steps_per_sec: f64,
    /// Wall time of each phase of the step, in seconds, in order: the
    /// originals, the edited images, each term (by name), the backward pass
    /// through the generator, the update. For `lsd-tui bench --profile`.
    pub timings: Vec<(String, f64)>,
}

/// The original and edited images of one preview seed.
#[derive(Debug, Clone)]
pub struct PreviewRow {
    /// The seed the latent came from (a [`crate::latents::key`] for a
    /// latent file's image).
    pub seed: u64,
    /// How the image is named: `#3` for a seed, the file's label for a
    /// latent file.
    pub label: String,
    /// `G(w)`.
    pub original: Rgb,
    /// `G(w + α·u)` for each α of [`Preview::alphas`].
    pub edits: Vec<Rgb>,
}

/// Preview images rendered from the current direction.
#[derive(Debug, Clone)]
pub struct Preview {
    /// The step they were rendered at.
    pub step: usize,
    /// The α values of the edited columns.
    pub alphas: Vec<f32>,
    /// One row per preview seed.
    pub rows: Vec<PreviewRow>,
}

/// How serious a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Progress and facts.
    Info,
    /// Something the user should look at.
    Warn,
    /// Something failed.
    Error,
}

/// Everything the engine reports.
#[derive(Debug, Clone)]
pub enum TrainEvent {
    /// The run started (sent first).
    Started(RunInfo),
    /// A one-off slow phase before the first step (kernel JIT, model load).
    WarmUp {
        /// What is happening.
        what: String,
    },
    /// A step finished.
    Step(StepStats),
    /// New preview images.
    Preview(Preview),
    /// A message for the log pane.
    Message {
        /// Severity.
        level: Level,
        /// The text.
        text: String,
    },
    /// A checkpoint was written.
    Checkpoint {
        /// The step it holds.
        step: usize,
        /// Where.
        path: PathBuf,
    },
    /// The engine is paused, or resumed.
    Paused(bool),
    /// The run ended normally; outputs are in the folder.
    Finished {
        /// The run folder.
        output: PathBuf,
        /// Wall time of the run.
        elapsed: Duration,
    },
    /// The run stopped on an error (the last good direction was kept).
    Failed {
        /// What went wrong, with what to do.
        error: String,
    },
}

/// Commands to the engine.
#[derive(Debug, Clone, PartialEq)]
pub enum Control {
    /// Stop stepping until [`Control::Resume`].
    Pause,
    /// Continue after a pause.
    Resume,
    /// Write a checkpoint and the outputs, then end the run.
    Stop,
    /// Write a checkpoint and the outputs now, and go on.
    SaveNow,
    /// Render previews at these α values from now on (and now).
    SetPreviewAlphas(Vec<f32>),
}

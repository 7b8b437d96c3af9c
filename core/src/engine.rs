//! The training engine: runs a recipe on its own thread.
//!
//! The engine sends [`events::TrainEvent`]s and reads [`events::Control`]s;
//! [`EngineHandle`] bundles both channels and the thread. The TUI and the
//! headless runner are two consumers of the same handle.

pub mod events;

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender};
use std::thread::JoinHandle;

use crate::Result;

/// What a finished (or stopped) run leaves behind.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The run folder with every output.
    pub output: PathBuf,
    /// The last completed step.
    pub steps: usize,
    /// True when the run was stopped before its last step.
    pub stopped_early: bool,
}

/// A running engine: its event stream, its control channel and its thread.
pub struct EngineHandle {
    /// Events from the engine, in order. Never blocks the engine.
    pub events: Receiver<events::TrainEvent>,
    /// Commands to the engine.
    pub control: Sender<events::Control>,
    /// The engine thread; joins to the run's outcome.
    pub thread: JoinHandle<Result<RunSummary>>,
}

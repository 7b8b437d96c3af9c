//! Training one direction into its own folder for an experiment, reusing
//! the folder when it already holds the finished direction.
//!
//! A finished run gets a marker file ([`DONE_FILE`]) holding the recipe's
//! training hash ([`Recipe::training_hash`]: everything that decides the
//! direction). A later run of the same experiment skips every folder whose
//! marker matches, resumes one that has a checkpoint but no marker (the
//! engine's `--resume`), and retrains one whose marker differs (the recipe
//! or `--steps` changed).

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::table::write_atomic;
use super::Stop;
use crate::engine::events::{Control, TrainEvent};
use crate::engine::{self, Setup, Weights, DIRECTION_FILE};
use crate::outputs::read_direction;
use crate::recipe::{RawPreview, Recipe};
use crate::{Error, Result};

/// The marker a finished experiment run leaves in its folder.
pub const DONE_FILE: &str = "experiment-done.json";

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Done {
    training_hash: String,
    steps: usize,
}

/// Where a training step has got, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepProgress {
    /// 1-based step just finished.
    pub step: usize,
    /// Steps in all.
    pub steps: usize,
    /// Its weighted total loss.
    pub total: f64,
}

/// What [`train_or_reuse`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trained {
    /// The run folder (holds [`DIRECTION_FILE`]).
    pub folder: PathBuf,
    /// True when a finished direction was found and not retrained.
    pub reused: bool,
}

/// True when `folder` holds the finished direction of `recipe`.
pub fn is_done(recipe: &Recipe, folder: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(folder.join(DONE_FILE)) else { return false };
    let want = Done { training_hash: recipe.training_hash(), steps: recipe.raw().steps };
    serde_json::from_str::<Done>(&text).is_ok_and(|d| d == want) && folder.join(DIRECTION_FILE).is_file()
}

/// Trains `recipe` into `recipe.output()` with its terms loaded as plugins,
/// or reuses the folder when it already holds the finished direction.
/// Runs on the calling thread's behalf (the engine's own thread, joined).
/// Once `stop` is requested the engine writes its checkpoint and outputs
/// and this returns an error that says how to resume.
pub fn train_or_reuse(
    recipe: Recipe,
    weights: &Weights,
    device: &Device,
    stop: &Stop,
    progress: &mut dyn FnMut(StepProgress),
) -> Result<Trained> {
    let folder = recipe.output().to_path_buf();
    if is_done(&recipe, &folder) {
        return Ok(Trained { folder, reused: true });
    }
    let terms = engine::load_plugin_terms(&recipe, weights, device).map_err(|e| Error::Config(e.to_string()))?;
    let done = Done { training_hash: recipe.training_hash(), steps: recipe.raw().steps };
    let steps = recipe.raw().steps;
    let setup = Setup {
        device: device.clone(),
        weights: weights.clone(),
        terms,
        resume: engine::checkpoint_path(&folder).is_file(),
        stop_after: None,
        // The experiments measure the directions themselves.
        metrics: false,
        warm_up: None,
    };
    let (event_tx, events) = mpsc::channel();
    let (control, control_rx) = mpsc::channel();
    let worker = std::thread::Builder::new()
        .name("lsd-experiment-engine".into())
        .spawn(move || engine::run(recipe, setup, &event_tx, &control_rx))
        .map_err(|e| Error::io("starting the engine thread for", &folder, e))?;
    let mut stop_sent = false;
    loop {
        let event = events.recv_timeout(std::time::Duration::from_millis(100));
        if stop.requested() && !stop_sent {
            stop_sent = true;
            let _ = control.send(Control::Stop);
        }
        match event {
            Ok(TrainEvent::Step(s)) => progress(StepProgress { step: s.step, steps, total: s.total }),
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let summary =
        worker.join().map_err(|_| Error::Config("the training engine panicked; see the message above".into()))??;
    if summary.stopped_early {
        return Err(Error::Config(format!(
            "training into '{}' stopped at step {} of {steps}; rerun to resume it",
            folder.display(),
            summary.steps
        )));
    }
    let text = serde_json::to_string_pretty(&done).map_err(|e| Error::Config(e.to_string()))?;
    write_atomic(&folder.join(DONE_FILE), &text)?;
    Ok(Trained { folder, reused: false })
}

/// What an experiment trains its local directions with.
#[derive(Clone, Copy)]
pub struct Trainer<'a> {
    /// The weights of the recipe's networks.
    pub weights: &'a Weights,
    /// The device.
    pub device: &'a Device,
    /// Stops the run being trained (its checkpoint is kept).
    pub stop: &'a Stop,
}

impl Trainer<'_> {
    /// Trains the local direction of `recipe` on `seed` into `folder`
    /// ([`local_variant`], with `steps` steps when given), or reuses the
    /// folder when it holds that direction already ([`train_or_reuse`]).
    /// Each step is reported as run `done` of `total`: `LABEL: step s/n`.
    pub fn train_local(
        &self,
        recipe: &Recipe,
        seed: u64,
        folder: &Path,
        steps: Option<usize>,
        (done, total, label): (usize, usize, &str),
        progress: &mut dyn FnMut(super::Progress),
    ) -> Result<Trained> {
        let variant = local_variant(recipe, seed, folder, steps)?;
        train_or_reuse(variant, self.weights, self.device, self.stop, &mut |s| {
            progress(super::Progress { done, total, what: format!("{label}: step {}/{}", s.step, s.steps) })
        })
    }
}

/// The first trained direction `[1, L, D]` of a run folder.
pub fn load_direction(folder: &Path, device: &Device) -> Result<Tensor> {
    let d = read_direction(&folder.join(DIRECTION_FILE), device)?;
    Ok(d.direction.narrow(0, 0, 1)?)
}

/// A copy of `recipe` that trains a local direction on `seed` into
/// `folder`, with `steps` steps when given, previewing that seed.
pub fn local_variant(recipe: &Recipe, seed: u64, folder: &Path, steps: Option<usize>) -> Result<Recipe> {
    let mut r = recipe.clone();
    r.edit(|raw| {
        raw.seeds = vec![seed];
        raw.batch = 1;
        raw.resample = false;
        if let Some(s) = steps {
            raw.steps = s;
        }
        // The variant previews its own seed. Without preview settings that
        // is the default, unless latent files add their first image.
        if raw.preview.is_some() || !raw.latents.is_empty() {
            raw.preview.get_or_insert_with(RawPreview::default).seeds = Some(vec![seed]);
        }
    })
    .map_err(|e| Error::Config(e.to_string()))?;
    r.set_output(folder.to_path_buf());
    Ok(r)
}

//! The headless view of a run: the engine's events as a progress bar (on a
//! terminal) or as plain log lines (in a pipe, a log file, CI).
//!
//! It is the second consumer of [`EngineHandle`] next to the TUI. The only
//! control it sends is `Stop`, when SIGTERM, SIGINT or SIGHUP arrives: the
//! engine then writes a checkpoint and the outputs and ends, and the run
//! ends with the signal's exit status (see [`crate::exit`]). The TUI hands
//! its run over to [`follow_events`] when it can no longer draw.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use color_eyre::eyre::{eyre, Result};
use indicatif::{ProgressBar, ProgressStyle};
use lsd_core::engine::events::{Control, Level, RunInfo, StepStats, TrainEvent};
use lsd_core::engine::{EngineHandle, RunSummary};

use ratatui_image::picker::ProtocolType;

use crate::exit::{self, Signal, Signals};
use crate::tui::images::{self, Graphics};
use crate::tui::GraphicsMode;

/// How a run ended (headless or in the TUI).
#[derive(Debug)]
pub enum Outcome {
    /// Finished, or stopped early by the user (`summary.stopped_early`),
    /// with outputs written.
    Finished(RunSummary),
    /// Failed, with the engine's message (not yet printed).
    Failed(String),
    /// A signal stopped the run.
    Signalled {
        /// Which one.
        signal: Signal,
        /// Whether the checkpoint and outputs were written.
        saved: bool,
        /// What the engine returned, when it ended in time.
        summary: Option<RunSummary>,
    },
    /// The user left the TUI while the run was going; the engine may still be
    /// running, so the process must end now.
    Quit {
        /// Whether the newest checkpoint holds the last step.
        saved: bool,
    },
}

/// `name 0.1234` for each term.
fn terms_text(info: Option<&RunInfo>, s: &StepStats) -> String {
    let names = info.map(|i| i.terms.as_slice()).unwrap_or(&[]);
    s.terms
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{} {v:.4}", names.get(i).map(String::as_str).unwrap_or("term")))
        .collect::<Vec<_>>()
        .join("  ")
}

/// Follows the run to its end. `bar`: draw an indicatif progress bar
/// (stdout is a terminal); otherwise print log lines, about twenty per run
/// plus the first and last step. A signal stops the run (see the module).
pub fn follow(handle: EngineHandle, bar: bool, signals: &Signals) -> Result<Outcome> {
    let EngineHandle { events, control, thread } = handle;
    let followed = follow_events(&events, &control, signals, bar, None, None);
    drop(control);
    let joined = thread.join().map_err(|_| eyre!("the engine thread panicked"))?;
    Ok(outcome(joined, followed))
}

/// What [`follow_events`] saw.
#[derive(Debug, Default)]
pub struct Followed {
    /// The engine's failure message.
    pub failed: Option<String>,
    /// The signal that stopped the run.
    pub signal: Option<Signal>,
    /// True once the engine said `Finished` (outputs written).
    pub finished: bool,
}

/// The outcome from what the engine thread returned and what was seen.
pub fn outcome(joined: lsd_core::Result<RunSummary>, seen: Followed) -> Outcome {
    match (joined, seen) {
        (Ok(summary), Followed { failed: None, signal: Some(signal), .. }) if summary.stopped_early => {
            Outcome::Signalled { signal, saved: true, summary: Some(summary) }
        }
        (Ok(summary), Followed { failed: None, .. }) => Outcome::Finished(summary),
        (Ok(_), Followed { failed: Some(e), .. }) => Outcome::Failed(e),
        (Err(e), Followed { failed, .. }) => Outcome::Failed(failed.unwrap_or_else(|| e.to_string())),
    }
}

/// Prints the engine's events until its channel closes; sends `Stop` on
/// the first signal. `info`: the run's facts when its `Started` event was
/// already taken, and `signalled`: the signal already being handled (the
/// TUI handing over).
pub fn follow_events(
    events: &Receiver<TrainEvent>,
    control: &Sender<Control>,
    signals: &Signals,
    bar: bool,
    mut info: Option<RunInfo>,
    signalled: Option<Signal>,
) -> Followed {
    let mut seen = Followed { signal: signalled, ..Followed::default() };
    let pb = bar.then(|| {
        let pb = ProgressBar::new(1);
        pb.set_style(
            ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {msg} ({elapsed} < {eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        pb.enable_steady_tick(Duration::from_millis(200));
        pb
    });
    let say = |line: String| match &pb {
        Some(pb) => pb.println(line),
        None => exit::say(line),
    };
    loop {
        let got = events.recv_timeout(Duration::from_millis(100));
        if let Some(sig) = signals.take() {
            if seen.signal.is_some() {
                exit::warn(format!("{sig} again: ending now; the newest checkpoint is kept"));
                std::process::exit(sig.exit_code());
            }
            if !seen.finished {
                seen.signal = Some(sig);
                let _ = control.send(Control::Stop);
                say(format!("{sig}: stopping: writing a checkpoint and the outputs (send {sig} again to end at once)"));
            }
        }
        let event = match got {
            Ok(event) => event,
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => continue,
        };
        match event {
            TrainEvent::Started(i) => {
                say(format!("run '{}': \"{}\" ({} mode) on {}", i.recipe, i.prompt, i.mode, i.device));
                say(format!(
                    "terms: {}; steps {}..{}; output {}",
                    i.terms.join(", "),
                    i.start_step,
                    i.total_steps,
                    i.output.display()
                ));
                if let Some(pb) = &pb {
                    pb.set_length(i.total_steps as u64);
                    pb.set_position(i.start_step as u64);
                }
                info = Some(i);
            }
            TrainEvent::WarmUp { what } => match &pb {
                Some(pb) => pb.set_message(format!("warming up: {what}")),
                None => say(format!("warming up: {what}")),
            },
            TrainEvent::Step(s) => {
                let total = info.as_ref().map_or(s.step, |i| i.total_steps);
                let text = format!(
                    "total {:.4}  {}  |g| {:.3e}  {:.2} steps/s",
                    s.total,
                    terms_text(info.as_ref(), &s),
                    s.grad_norm,
                    s.steps_per_sec
                );
                match &pb {
                    Some(pb) => {
                        pb.set_position(s.step as u64);
                        pb.set_message(text);
                    }
                    None => {
                        let every = (total / 20).max(1);
                        let start = info.as_ref().map_or(0, |i| i.start_step);
                        if s.step == start + 1 || s.step % every == 0 || s.step == total {
                            say(format!("step {}/{total}  {text}", s.step));
                        }
                    }
                }
            }
            TrainEvent::Preview(_) => {}
            TrainEvent::Message { level, text } => {
                let tag = match level {
                    Level::Info => "info",
                    Level::Warn => "warning",
                    Level::Error => "error",
                };
                say(format!("{tag}: {text}"));
            }
            TrainEvent::Checkpoint { step, path } => {
                if pb.is_none() {
                    say(format!("checkpoint: step {step} -> {}", path.display()));
                }
            }
            TrainEvent::Paused(p) => say(if p { "paused".into() } else { "resumed".into() }),
            TrainEvent::Finished { output, elapsed } => {
                if let Some(pb) = &pb {
                    pb.finish_and_clear();
                }
                seen.finished = true;
                say(format!("done in {:.1} s: outputs in {}", elapsed.as_secs_f64(), output.display()));
            }
            TrainEvent::Failed { error } => {
                if let Some(pb) = &pb {
                    pb.abandon();
                }
                seen.failed = Some(error);
            }
        }
    }
    if pb.is_some() {
        // The bar's last line fills the terminal's width and leaves the
        // cursor in the last column, where an inline image would be drawn
        // off the screen: start a fresh line.
        exit::say("");
    }
    seen
}

/// The strips a finished run wrote, in preview-seed order.
pub fn strips(output: &std::path::Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(output).map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default();
    files.retain(|p| {
        p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("strip-") && n.ends_with(".png"))
    });
    files.sort();
    files
}

/// The graphics for the strips printed after a headless run on a terminal:
/// the same choice the TUI makes (see [`crate::tui::images`]), asked with
/// the terminal in raw mode for a moment.
pub fn inline_graphics(mode: GraphicsMode) -> Option<Graphics> {
    if matches!(mode, GraphicsMode::None | GraphicsMode::Halfblocks) {
        return images::detect(mode);
    }
    crossterm::terminal::enable_raw_mode().ok()?;
    let graphics = images::detect(mode);
    let _ = crossterm::terminal::disable_raw_mode();
    graphics
}

/// Prints an image inline in the terminal with viuer, in the protocol
/// `graphics` chose: sixel, kitty or iTerm2 when the terminal takes them
/// directly, half blocks otherwise (viuer cannot wrap images in tmux's
/// passthrough envelope); nothing for `--graphics none`. Failures are
/// reported and otherwise ignored: the file is on disk.
pub fn show_inline(path: &std::path::Path, graphics: Option<&Graphics>) {
    let Some(g) = graphics else { return };
    let mut conf = viuer::Config {
        width: Some(80),
        absolute_offset: false,
        use_kitty: false,
        use_iterm: false,
        use_sixel: false,
        ..Default::default()
    };
    match g.protocol {
        _ if g.passthrough => {}
        ProtocolType::Sixel => conf.use_sixel = true,
        ProtocolType::Kitty => conf.use_kitty = true,
        ProtocolType::Iterm2 => conf.use_iterm = true,
        ProtocolType::Halfblocks => {}
    }
    // viuer asks the terminal once (and remembers): ask with echo off, or
    // the answer lands on the screen before viuer reads it.
    if (conf.use_sixel || conf.use_kitty) && crossterm::terminal::enable_raw_mode().is_ok() {
        if conf.use_sixel {
            viuer::is_sixel_supported();
        } else {
            viuer::get_kitty_support();
        }
        let _ = crossterm::terminal::disable_raw_mode();
    }
    let shown = image::open(path)
        .map_err(|e| e.to_string())
        .and_then(|img| viuer::print(&img, &conf).map(|_| ()).map_err(|e| e.to_string()));
    match shown {
        // xterm leaves the cursor on the sixel's last row.
        Ok(()) if conf.use_sixel => exit::say(""),
        Ok(()) => {}
        Err(e) => exit::warn(format!("(could not show {} inline: {e})", path.display())),
    }
}

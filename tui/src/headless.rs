//! The headless view of a run: the engine's events as a progress bar (on a
//! terminal) or as plain log lines (in a pipe, a log file, CI).
//!
//! It is the second consumer of [`EngineHandle`] next to the TUI: it only
//! reads events, and never sends controls.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use color_eyre::eyre::{eyre, Result};
use indicatif::{ProgressBar, ProgressStyle};
use lsd_core::engine::events::{Level, RunInfo, StepStats, TrainEvent};
use lsd_core::engine::{EngineHandle, RunSummary};

/// How a headless run ended.
#[derive(Debug)]
pub enum Outcome {
    /// Finished (or stopped early, with outputs written).
    Finished(RunSummary),
    /// Failed; the message was printed.
    Failed(String),
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
/// plus the first and last step.
pub fn follow(handle: EngineHandle, bar: bool) -> Result<Outcome> {
    let EngineHandle { events, control, thread } = handle;
    let mut info: Option<RunInfo> = None;
    let mut failed: Option<String> = None;
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
        None => {
            println!("{line}");
            let _ = std::io::stdout().flush();
        }
    };
    for event in events.iter() {
        match event {
            TrainEvent::Started(i) => {
                say(format!("run '{}': \"{}\" ({} mode) on {}", i.recipe, i.prompt, i.mode, i.device));
                say(format!("terms: {}; steps {}..{}; output {}", i.terms.join(", "), i.start_step, i.total_steps, i.output.display()));
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
                let text = format!("total {:.4}  {}  |g| {:.3e}  {:.2} steps/s", s.total, terms_text(info.as_ref(), &s), s.grad_norm, s.steps_per_sec);
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
                say(format!("done in {:.1} s: outputs in {}", elapsed.as_secs_f64(), output.display()));
            }
            TrainEvent::Failed { error } => {
                if let Some(pb) = &pb {
                    pb.abandon();
                }
                eprintln!("error: {error}");
                failed = Some(error);
            }
        }
    }
    drop(control);
    let joined = thread.join().map_err(|_| eyre!("the engine thread panicked"))?;
    Ok(match (joined, failed) {
        (Ok(summary), None) => Outcome::Finished(summary),
        (Ok(_), Some(e)) => Outcome::Failed(e),
        (Err(e), msg) => Outcome::Failed(msg.unwrap_or_else(|| e.to_string())),
    })
}

/// The strips a finished run wrote, in preview-seed order.
pub fn strips(output: &std::path::Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(output)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("strip-") && n.ends_with(".png")));
    files.sort();
    files
}

/// Prints an image inline in the terminal (sixel, kitty, iTerm or blocks,
/// whatever viuer finds); failures are ignored — the file is on disk.
pub fn show_inline(path: &std::path::Path) {
    let conf = viuer::Config { width: Some(80), absolute_offset: false, ..Default::default() };
    if let Err(e) = viuer::print_from_file(path, &conf) {
        eprintln!("(could not show {} inline: {e})", path.display());
    }
}

//! How a command ends: exit statuses a scheduler can trust, the signals
//! that stop a run, and printing that never panics.
//!
//! A shell loop, Slurm or systemd reads the exit status to decide whether a
//! run is finished. So 0 means one thing only: the run reached its last step
//! (or a command that is not a run did its work). Everything else has its own
//! status, and a run stopped by a signal ends with 128 + the signal's number,
//! as a shell reports a process the signal killed:
//!
//! | status | meaning |
//! |---|---|
//! | 0 | finished: the run reached its last step |
//! | 1 | failed: an error (the message says what) |
//! | 2 | a bad command line or recipe: nothing ran |
//! | 3 | stopped by the user before the last step (`q`, `--stop-after`); `--resume` continues |
//! | 129 | SIGHUP: the terminal hung up (checkpoint and outputs written first) |
//! | 130 | SIGINT (Ctrl-C in a headless run) |
//! | 143 | SIGTERM (a scheduler's stop, `kill`) |
//!
//! After a signal the run is checkpointed and its outputs written before the
//! process exits; a second signal ends it at once (keeping the newest
//! checkpoint), with that signal's status. A signal within
//! [`REPEAT_GRACE`] of the first counts as the same one: a stop often
//! arrives twice (Slurm signals every process of a job, and a batch
//! script passes its own signal on; Ctrl-C reaches a shell and its child).
//!
//! After a hang-up the terminal is gone and every write to it fails; `say`
//! and `warn` drop what cannot be written instead of panicking as `println!`
//! would.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The run reached its last step, or the command did its work.
pub const FINISHED: i32 = 0;
/// An error ended the command.
pub const FAILED: i32 = 1;
/// A bad command line or recipe: nothing ran (clap uses 2 as well).
pub const USAGE: i32 = 2;
/// Stopped by the user before the last step; `--resume` continues.
pub const STOPPED: i32 = 3;

/// The `--help` text that lists the exit statuses.
pub const HELP: &str = "\
Exit status:
  0    finished: the run reached its last step (or the command did its work)
  1    failed: an error; the message says what
  2    a bad command line or recipe; nothing ran
  3    stopped by the user before the last step (q, --stop-after); --resume continues
  129  SIGHUP: the terminal hung up; checkpoint and outputs written; --resume continues
  130  SIGINT; checkpoint and outputs written; --resume continues
  143  SIGTERM (a scheduler's stop, kill); checkpoint and outputs written; --resume continues
A second signal, 2 s or more after the first, ends the process at once (the newest
checkpoint is kept), with its status.";

/// A signal that stops a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// The terminal hung up (or a real SIGHUP).
    Hup,
    /// Ctrl-C outside the TUI, or `kill -INT`.
    Int,
    /// A scheduler's or `kill`'s stop.
    Term,
}

impl Signal {
    /// Every signal a run handles.
    pub const ALL: [Signal; 3] = [Signal::Term, Signal::Hup, Signal::Int];

    /// `SIGHUP`, `SIGINT`, `SIGTERM`.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Hup => "SIGHUP",
            Signal::Int => "SIGINT",
            Signal::Term => "SIGTERM",
        }
    }

    /// The signal's number.
    pub fn number(self) -> i32 {
        match self {
            Signal::Hup => signal_hook::consts::SIGHUP,
            Signal::Int => signal_hook::consts::SIGINT,
            Signal::Term => signal_hook::consts::SIGTERM,
        }
    }

    /// 128 + the signal's number: 129, 130, 143.
    pub fn exit_code(self) -> i32 {
        128 + self.number()
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Signals within this time of the first are the same stop, sent twice.
pub const REPEAT_GRACE: Duration = Duration::from_secs(2);

/// SIGTERM, SIGHUP and SIGINT, as flags to check.
///
/// Whoever takes a signal stops the run on the first one and ends the
/// process at once on a second one ([`Signals::take`] drops repeats within
/// [`REPEAT_GRACE`]). A SIGHUP the process was started with ignored
/// (`nohup`) stays ignored.
pub struct Signals {
    flags: Vec<(Signal, Arc<AtomicBool>)>,
    first: Mutex<Option<Instant>>,
}

impl Signals {
    /// Registers the handlers.
    pub fn install() -> std::io::Result<Self> {
        let mut flags = Vec::new();
        for sig in Signal::ALL {
            if sig == Signal::Hup && ignored(sig) {
                continue;
            }
            let flag = Arc::new(AtomicBool::new(false));
            signal_hook::flag::register(sig.number(), Arc::clone(&flag))?;
            flags.push((sig, flag));
        }
        Ok(Self { flags, first: Mutex::new(None) })
    }

    /// No handlers (tests).
    #[cfg(test)]
    pub fn none() -> Self {
        Self { flags: Vec::new(), first: Mutex::new(None) }
    }

    /// A flag set by hand (tests).
    #[cfg(test)]
    pub fn manual(sig: Signal, flag: Arc<AtomicBool>) -> Self {
        Self { flags: vec![(sig, flag)], first: Mutex::new(None) }
    }

    /// The signal that arrived since the last call, if any; `None` for a
    /// repeat within [`REPEAT_GRACE`] of the first.
    pub fn take(&self) -> Option<Signal> {
        let sig = self.flags.iter().find(|(_, f)| f.swap(false, Ordering::AcqRel)).map(|(s, _)| *s)?;
        let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        match *first {
            Some(t) if t.elapsed() < REPEAT_GRACE => None,
            Some(_) => Some(sig),
            None => {
                *first = Some(Instant::now());
                Some(sig)
            }
        }
    }
}

/// True when the process started with `sig` ignored (`nohup` ignores SIGHUP).
fn ignored(sig: Signal) -> bool {
    // SAFETY: sigaction with a null new action only reads the current
    // disposition into `old`, which is a zeroed, valid `sigaction`.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig.number(), std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

/// Prints a line on stdout; drops it when stdout is gone (a hung-up
/// terminal, a closed pipe).
pub fn say(line: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Prints a line on stderr; drops it when stderr is gone.
pub fn warn(line: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// The command line that continues this run: the one given, with
/// `--stop-after N` dropped and `--resume` added.
pub fn resume_command() -> String {
    resume_command_from(std::env::args())
}

fn resume_command_from(args: impl IntoIterator<Item = String>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut args = args.into_iter();
    let mut resume = false;
    while let Some(a) = args.next() {
        if a == "--stop-after" {
            args.next();
            continue;
        }
        if a.starts_with("--stop-after=") {
            continue;
        }
        resume |= a == "--resume";
        out.push(a);
    }
    if !resume {
        out.push("--resume".into());
    }
    out.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ")
}

/// `a` as one shell word.
pub fn shell_quote(a: &str) -> String {
    let plain = !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c));
    if plain {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_exit_with_128_plus_their_number() {
        assert_eq!(Signal::Hup.exit_code(), 129);
        assert_eq!(Signal::Int.exit_code(), 130);
        assert_eq!(Signal::Term.exit_code(), 143);
        for s in Signal::ALL {
            assert!(HELP.contains(&format!("{}  {}", s.exit_code(), s.name())), "{s} missing from the help");
        }
    }

    #[test]
    fn a_repeat_within_the_grace_time_is_the_same_stop() {
        let flag = Arc::new(AtomicBool::new(true));
        let signals = Signals::manual(Signal::Term, Arc::clone(&flag));
        assert_eq!(signals.take(), Some(Signal::Term));
        assert_eq!(signals.take(), None);
        flag.store(true, Ordering::Release);
        assert_eq!(signals.take(), None, "a repeat right after the first");
        *signals.first.lock().unwrap() = Some(Instant::now() - REPEAT_GRACE);
        flag.store(true, Ordering::Release);
        assert_eq!(signals.take(), Some(Signal::Term), "a second signal later");
    }

    #[test]
    fn the_resume_command_drops_stop_after_and_adds_resume() {
        let args = |s: &[&str]| s.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        assert_eq!(
            resume_command_from(args(&["lsd-tui", "run", "my recipe.yaml", "--stop-after", "5", "--models", "demo"])),
            "lsd-tui run 'my recipe.yaml' --models demo --resume"
        );
        assert_eq!(
            resume_command_from(args(&["lsd-tui", "demo", "--resume", "--stop-after=3"])),
            "lsd-tui demo --resume"
        );
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}

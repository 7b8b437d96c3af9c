//! Where the TUI runs: straight in a terminal, inside tmux, or inside GNU
//! screen; and, inside tmux, noticing when a client attaches.
//!
//! tmux redraws a pane from its own screen when a client attaches, and
//! images sent through passthrough are not part of that screen: they must
//! be sent again. An attach changes the size only sometimes, so a resize
//! event cannot be relied on; [`AttachWatch`] asks tmux once a second
//! instead (`session_attached`, `session_last_attached`).

use std::process::{Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

/// Where the TUI runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Place {
    /// Straight in a terminal (maybe over SSH).
    #[default]
    Direct,
    /// Inside tmux: `Some` when this process is in a tmux pane it can ask
    /// (`$TMUX` is set), `None` when only `$TERM` says tmux (a tmux on the
    /// other side of SSH).
    Tmux(Option<Tmux>),
    /// Inside GNU screen.
    Screen,
}

impl Place {
    /// From the environment.
    pub fn detect() -> Self {
        let var = |k| std::env::var(k).unwrap_or_default();
        if !var("TMUX").is_empty() {
            return Place::Tmux(Tmux::here());
        }
        if !var("STY").is_empty() {
            return Place::Screen;
        }
        if var("TERM").starts_with("tmux") || var("TERM_PROGRAM") == "tmux" {
            return Place::Tmux(None);
        }
        Place::Direct
    }
}

/// The tmux pane this process runs in.
#[derive(Debug, Clone, PartialEq)]
pub struct Tmux {
    /// `$TMUX_PANE` (`%3`).
    pub pane: String,
    /// The server's version (`3.3a`).
    pub version: String,
}

impl Tmux {
    /// This process's pane, when tmux answers.
    pub fn here() -> Option<Self> {
        let pane = std::env::var("TMUX_PANE").ok().filter(|p| !p.is_empty())?;
        let mut t = Self { pane, version: String::new() };
        t.version = t.format("#{version}")?;
        Some(t)
    }

    /// Runs `tmux ARGS`; its stdout when it succeeded.
    fn tmux(args: &[&str]) -> Option<String> {
        let out = Command::new("tmux").args(args).stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    }

    /// A tmux format expanded for this pane.
    pub fn format(&self, f: &str) -> Option<String> {
        Self::tmux(&["display-message", "-p", "-t", &self.pane, f])
    }

    /// True when at least one client is attached to the session.
    pub fn attached(&self) -> bool {
        self.format("#{session_attached}").and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| n > 0)
    }

    /// True when the pane may pass escape sequences through. Turns
    /// `allow-passthrough` on for this pane when it is off (as the README
    /// asks users to do in `~/.tmux.conf`); false when that fails (tmux
    /// older than 3.3 has no such option and passes everything).
    pub fn passthrough(&self) -> bool {
        match Self::tmux(&["show-options", "-pqv", "-t", &self.pane, "allow-passthrough"]).as_deref() {
            Some("on" | "all") => true,
            Some(_) => Self::tmux(&["set-option", "-p", "-t", &self.pane, "allow-passthrough", "on"]).is_some(),
            None => true,
        }
    }

    /// The attached client's cell size in pixels, when tmux knows it.
    pub fn client_cell(&self) -> Option<(u16, u16)> {
        let s = self.format("#{client_cell_width} #{client_cell_height}")?;
        let mut it = s.split(' ').filter_map(|n| n.parse::<u16>().ok());
        let (w, h) = (it.next()?, it.next()?);
        (w > 0 && h > 0).then_some((w, h))
    }

    /// The attached client's terminal as tmux names it (`XTerm(379)`).
    pub fn client_termtype(&self) -> Option<String> {
        self.format("#{client_termtype}").filter(|t| !t.is_empty())
    }
}

/// A client attached or detached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// A client attached (also: another one did).
    Attached,
    /// The last client detached.
    Detached,
}

/// Asks tmux once a second whether a client attached since last time.
pub struct AttachWatch {
    rx: Receiver<Attach>,
}

impl AttachWatch {
    /// Starts watching `tmux`'s session.
    pub fn start(tmux: Tmux) -> Self {
        let (tx, rx) = channel();
        let spawned = std::thread::Builder::new().name("lsd-tui-tmux".into()).spawn(move || {
            let read = || tmux.format("#{session_attached} #{session_last_attached}");
            let mut last = read();
            loop {
                std::thread::sleep(Duration::from_secs(1));
                let now = read();
                // tmux gone (the server was killed): the hang-up ends the run.
                let Some(text) = &now else { return };
                if now != last {
                    let attached = text.split(' ').next().and_then(|n| n.parse::<u32>().ok()).unwrap_or(0);
                    let ev = if attached > 0 { Attach::Attached } else { Attach::Detached };
                    if tx.send(ev).is_err() {
                        return;
                    }
                    last = now;
                }
            }
        });
        if spawned.is_err() {
            let (_, rx) = channel();
            return Self { rx };
        }
        Self { rx }
    }

    /// The newest change since the last call.
    pub fn take(&self) -> Option<Attach> {
        self.rx.try_iter().last()
    }
}

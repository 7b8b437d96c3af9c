//! The terminal front end: watch a direction being trained, steer the run.
//!
//! [`run`] takes an [`EngineHandle`], draws the run (header, loss curves,
//! preview images, messages) and turns keys into [`Control`]s. The engine
//! never waits on the UI: its events arrive on an unbounded channel, and the
//! loop drains that channel, then draws at most every [`FRAME`].
//!
//! The terminal is restored on every way out: a normal return, an error (a
//! guard restores it in `Drop`), a panic (ratatui's hook, installed after
//! color-eyre's), and SIGTERM / SIGHUP / SIGINT, which first ask the engine
//! to stop and write its checkpoint and outputs, and wait up to
//! [`TuiOptions::stop_timeout`] for it.
//!
//! Pieces: [`app`] (state, keys, engine events), [`ui`] (drawing),
//! [`history`] (loss series), [`images`] (graphics protocol, tile encoding).

pub mod app;
pub mod history;
pub mod images;
pub mod ui;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use color_eyre::eyre::{Result, WrapErr};
use crossterm::event::{self as term_event, Event as TermEvent};
use lsd_core::engine::events::TrainEvent;
use lsd_core::engine::{EngineHandle, RunSummary};
use ratatui::backend::Backend;
use ratatui::layout::Rect;
use ratatui::Terminal;

use app::{Action, App, Event};

/// The shortest time between two draws (about 30 frames per second).
pub const FRAME: Duration = Duration::from_millis(33);

/// At most this many engine events are handled between two looks at the keyboard.
const DRAIN_LIMIT: usize = 20_000;

/// Which terminal graphics protocol draws the previews.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum GraphicsMode {
    /// Ask the terminal (works over SSH and inside tmux); half blocks if it does not answer.
    #[default]
    Auto,
    /// DEC sixel graphics (xterm -ti vt340, foot, WezTerm, mlterm, recent Konsole…).
    Sixel,
    /// The kitty graphics protocol (kitty, Ghostty).
    Kitty,
    /// iTerm2's inline images (iTerm2, WezTerm).
    Iterm2,
    /// Unicode half blocks with 24-bit colour: works everywhere, coarse.
    Halfblocks,
    /// No images (the strips are still written to the output folder).
    None,
}

/// How the TUI runs.
#[derive(Debug, Clone)]
pub struct TuiOptions {
    /// The preview graphics protocol.
    pub graphics: GraphicsMode,
    /// How long to wait for the engine's checkpoint and outputs after a
    /// stop (quit with save, SIGTERM, SIGHUP) before leaving anyway.
    pub stop_timeout: Duration,
}

impl Default for TuiOptions {
    fn default() -> Self {
        Self { graphics: GraphicsMode::Auto, stop_timeout: Duration::from_secs(15) }
    }
}

/// How the TUI ended.
#[derive(Debug, Clone)]
pub enum TuiOutcome {
    /// The run ended normally (or was stopped and saved): outputs are in
    /// `output`.
    Finished {
        /// The run folder.
        output: PathBuf,
        /// What the engine thread returned (`None` if it had not ended in time).
        summary: Option<RunSummary>,
    },
    /// The run stopped on an error.
    Failed {
        /// The engine's message.
        error: String,
    },
    /// The user quit while the run was still going. `saved`: the newest
    /// checkpoint holds the last step (false after "quit without saving" or
    /// when the engine did not answer in time). The engine may still be running.
    Quit {
        /// Whether the last step is checkpointed.
        saved: bool,
    },
    /// A signal ended the TUI after asking the engine to stop.
    Signalled {
        /// `SIGTERM`, `SIGHUP` or `SIGINT`.
        signal: &'static str,
        /// Whether the checkpoint and outputs were written in time.
        saved: bool,
        /// What the engine thread returned (`None` if it had not ended in time).
        summary: Option<RunSummary>,
    },
}

/// How long [`run`] waits for the engine thread to end after it said it finished.
const JOIN_WAIT: Duration = Duration::from_secs(5);

/// Fills in the engine's summary once its thread has ended.
fn with_summary(outcome: TuiOutcome, thread: JoinHandle<lsd_core::Result<RunSummary>>) -> TuiOutcome {
    let join = |thread: JoinHandle<lsd_core::Result<RunSummary>>| {
        let end = Instant::now() + JOIN_WAIT;
        while !thread.is_finished() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        // A thread still running is left to the process's end.
        thread.is_finished().then(|| thread.join().ok().and_then(|r| r.ok())).flatten()
    };
    match outcome {
        TuiOutcome::Finished { output, .. } => TuiOutcome::Finished { output, summary: join(thread) },
        TuiOutcome::Signalled { signal, saved, .. } => TuiOutcome::Signalled { signal, saved, summary: join(thread) },
        other => other,
    }
}

/// Runs the TUI on the current terminal until the user quits, the run ends
/// and the user quits, or a signal arrives.
pub fn run(handle: EngineHandle, opts: &TuiOptions) -> Result<TuiOutcome> {
    let signals = Signals::install().wrap_err("could not install the SIGTERM/SIGHUP handlers")?;
    let guard = TerminalGuard;
    let mut terminal = ratatui::try_init().wrap_err("could not set the terminal up (is stdout a terminal?)")?;
    // The query answers arrive on stdin: ask before reading key events.
    let picker = images::pick(opts.graphics);
    let EngineHandle { events, control, thread } = handle;
    let mut app = App::new(control, picker, opts.stop_timeout);
    let mut gpu = GpuMemory::new();
    let mut input = ThreadedInput::start();
    let outcome = run_loop(&mut terminal, &mut app, &events, &mut input, &signals, &mut gpu);
    drop(input);
    drop(guard);
    Ok(with_summary(outcome?, thread))
}

/// Restores the terminal when dropped (early returns and errors).
struct TerminalGuard;

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Where key presses come from (the terminal, or a script in tests).
pub trait Input {
    /// Waits up to `timeout` for a key or resize; `None` when none came.
    fn poll(&mut self, timeout: Duration) -> Result<Option<TermEvent>>;
}

/// Terminal events read on their own thread.
///
/// crossterm's reader spins forever on a hung-up terminal (an SSH drop
/// makes `read` return nothing, which its loop never leaves), so it must not
/// run on the thread that has to notice the hang-up and save the run.
/// It polls with a short timeout rather than blocking in `read`, because
/// crossterm's event reader is one global lock that the drawing thread also
/// needs (ratatui's `clear` asks the terminal for the cursor position).
/// It stops when dropped, so that it does not eat the terminal's answers to
/// whatever queries the terminal after the TUI (an inline image printer).
struct ThreadedInput {
    rx: Receiver<std::io::Result<TermEvent>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ThreadedInput {
    fn start() -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::Builder::new().name("lsd-tui-input".into()).spawn(move || loop {
            if stopped.load(Ordering::Acquire) {
                return;
            }
            let ev = match term_event::poll(Duration::from_millis(50)) {
                Ok(false) => continue,
                Ok(true) => term_event::read(),
                Err(e) => Err(e),
            };
            let failed = ev.is_err();
            if tx.send(ev).is_err() || failed {
                return;
            }
        });
        Self { rx, stop, thread: thread.ok() }
    }
}

impl Drop for ThreadedInput {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let Some(thread) = self.thread.take() else { return };
        // On a hung-up terminal crossterm spins and never returns: leave it.
        let end = Instant::now() + Duration::from_millis(500);
        while !thread.is_finished() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        if thread.is_finished() {
            let _ = thread.join();
        }
    }
}

impl Input for ThreadedInput {
    fn poll(&mut self, timeout: Duration) -> Result<Option<TermEvent>> {
        match self.rx.recv_timeout(timeout) {
            Ok(ev) => Ok(Some(ev?)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                Err(color_eyre::eyre::eyre!("the terminal's input closed"))
            }
        }
    }
}

/// SIGTERM, SIGHUP and SIGINT, as flags the loop checks.
///
/// A second signal of the same kind while the first is being handled ends
/// the process at once (`register_conditional_shutdown`).
pub struct Signals {
    flags: Vec<(&'static str, Arc<AtomicBool>)>,
}

impl Signals {
    /// Registers the handlers.
    pub fn install() -> std::io::Result<Self> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut flags = Vec::new();
        for (name, sig) in [("SIGTERM", SIGTERM), ("SIGHUP", SIGHUP), ("SIGINT", SIGINT)] {
            let flag = Arc::new(AtomicBool::new(false));
            signal_hook::flag::register_conditional_shutdown(sig, 1, Arc::clone(&flag))?;
            signal_hook::flag::register(sig, Arc::clone(&flag))?;
            flags.push((name, flag));
        }
        Ok(Self { flags })
    }

    /// No handlers (tests).
    #[cfg(test)]
    pub fn none() -> Self {
        Self { flags: Vec::new() }
    }

    /// A flag set by hand (tests).
    #[cfg(test)]
    pub fn manual(name: &'static str, flag: Arc<AtomicBool>) -> Self {
        Self { flags: vec![(name, flag)] }
    }

    fn take(&self) -> Option<&'static str> {
        self.flags.iter().find(|(_, f)| f.swap(false, Ordering::AcqRel)).map(|(n, _)| *n)
    }
}

/// The loop: keys, engine events, signals, images, then at most one draw per [`FRAME`].
pub fn run_loop<B: Backend>(
    terminal: &mut Terminal<B>,
    app: &mut App,
    events: &Receiver<TrainEvent>,
    input: &mut dyn Input,
    signals: &Signals,
    gpu: &mut GpuMemory,
) -> Result<TuiOutcome>
where
    B::Error: Send + Sync + 'static,
{
    let mut last_draw: Option<Instant> = None;
    let mut engine_open = true;
    // After SIGHUP the terminal is gone: no more reading or drawing.
    let mut terminal_gone = false;
    loop {
        let now = Instant::now();
        let wait = last_draw.map(|t| (t + FRAME).saturating_duration_since(now)).unwrap_or(Duration::ZERO);
        let wait = wait.max(Duration::from_millis(1));
        if terminal_gone {
            // Nothing to draw: just wait for the engine's last events.
            std::thread::sleep(Duration::from_millis(20));
        } else {
            // Wait for a key at most until the next frame, then take every key that is waiting.
            let mut next = input.poll(wait);
            while let Ok(Some(ev)) = next {
                let action = match ev {
                    TermEvent::Key(key) => app.update(Event::Key(key)),
                    TermEvent::Resize(..) => {
                        app.full_redraw = true;
                        app.dirty = true;
                        Action::Continue
                    }
                    _ => Action::Continue,
                };
                if let Action::Exit(outcome) = action {
                    return Ok(outcome);
                }
                next = input.poll(Duration::ZERO);
            }
            if let Err(e) = &next {
                // stdin closed under us: behave as after SIGHUP.
                terminal_gone = true;
                if let Action::Exit(o) = app.update(Event::Signal("SIGHUP")) {
                    return Ok(o);
                }
            }
        }
        if let Some(name) = signals.take() {
            terminal_gone |= name == "SIGHUP";
            if let Action::Exit(o) = app.update(Event::Signal(name)) {
                return Ok(o);
            }
        }
        // Drain the engine's events, then draw once.
        let mut n = 0;
        while engine_open && n < DRAIN_LIMIT {
            match events.try_recv() {
                Ok(ev) => {
                    n += 1;
                    if let Action::Exit(o) = app.update(Event::Train(ev)) {
                        return Ok(o);
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    engine_open = false;
                    if let Action::Exit(o) = app.update(Event::EngineGone) {
                        return Ok(o);
                    }
                }
            }
        }
        if let Some(info) = &app.info {
            gpu.ensure_started(&info.device);
        }
        if let Some((used, total)) = gpu.latest() {
            if app.gpu_memory != Some((used, total)) {
                app.update(Event::GpuMemory(used, total));
            }
        }
        if let Action::Exit(o) = app.update(Event::Tick(Instant::now())) {
            return Ok(o);
        }
        if terminal_gone {
            continue;
        }
        let due = last_draw.is_none_or(|t| t.elapsed() >= FRAME);
        if due && (app.dirty || app.full_redraw) {
            if draw(terminal, app).is_err() {
                // The terminal went away (a hang-up that sent no signal to
                // this process): save and leave as after SIGHUP.
                terminal_gone = true;
                if let Action::Exit(o) = app.update(Event::Signal("SIGHUP")) {
                    return Ok(o);
                }
            }
            last_draw = Some(Instant::now());
        }
    }
}

/// Lays the images out for the current size, then draws one frame.
fn draw<B: Backend>(terminal: &mut Terminal<B>, app: &mut App) -> std::result::Result<(), B::Error> {
    let size = terminal.size()?;
    app.sync_images(Rect::new(0, 0, size.width, size.height));
    if app.full_redraw {
        terminal.clear()?;
        app.full_redraw = false;
    }
    terminal.draw(|f| app.render(f))?;
    app.dirty = false;
    Ok(())
}

/// GPU memory from `nvidia-smi`, read every few seconds on its own thread
/// once the run says it is on CUDA (the engine's events do not carry it).
#[derive(Default)]
pub struct GpuMemory {
    rx: Option<Receiver<(u64, u64)>>,
    started: bool,
    latest: Option<(u64, u64)>,
}

impl GpuMemory {
    /// Not polling yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts polling for `device` (`cuda:N`); does nothing for other devices.
    fn ensure_started(&mut self, device: &str) {
        if self.started {
            return;
        }
        self.started = true;
        let Some(index) = device.strip_prefix("cuda").map(|s| s.trim_start_matches(':').to_string()) else { return };
        let index = if index.is_empty() { "0".to_string() } else { index };
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new().name("lsd-tui-gpu".into()).spawn(move || loop {
            let out = Command::new("nvidia-smi")
                .args(["--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits", "-i", &index])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output();
            // No nvidia-smi: no memory figure, and no more tries.
            let Ok(out) = out else { return };
            let text = String::from_utf8_lossy(&out.stdout);
            let mut nums = text.lines().next().unwrap_or("").split(',').filter_map(|s| s.trim().parse::<u64>().ok());
            if let (Some(used), Some(total)) = (nums.next(), nums.next()) {
                if tx.send((used, total)).is_err() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_secs(2));
        });
        self.rx = spawned.ok().map(|_| rx);
    }

    fn latest(&mut self) -> Option<(u64, u64)> {
        if let Some(rx) = &self.rx {
            while let Ok(v) = rx.try_recv() {
                self.latest = Some(v);
            }
        }
        self.latest
    }
}

//! The terminal front end: watch a direction being trained, steer the run.
//!
//! [`run`] takes an [`EngineHandle`], draws the run (header, loss curves,
//! preview images, messages) and turns keys into [`Control`]s. The engine
//! never waits on the UI: its events arrive on an unbounded channel, and the
//! loop drains that channel, then draws at most every [`FRAME`].
//!
//! Made for a remote box, over SSH and inside tmux or GNU screen, where the
//! terminal comes and goes:
//!
//! - Only a real hang-up ends the run: SIGHUP, or the tty itself hung up (an
//!   I/O error of the hang-up kind, or `poll(2)` saying so, see
//!   [`terminal`]). Then the engine is asked to stop, which writes a
//!   checkpoint and the outputs, and the process exits with 129.
//! - Any other error is shown in the log pane, written to the run's
//!   `tui.log`, and worked around: a key reader that fails is restarted; a
//!   draw that fails makes the TUI draw less ([`app::Fallback`]: fewer
//!   images, no images, then no TUI at all and the headless log lines), and
//!   training goes on.
//! - Inside tmux, a client attaching redraws the whole screen, images
//!   included, and asks the terminal again which graphics reach it
//!   ([`tmux::AttachWatch`]); so do a resize and Ctrl-L.
//!
//! The terminal is restored on every way out: a normal return, an error (a
//! guard restores it in `Drop`), a panic (a hook installed after
//! color-eyre's), and SIGTERM / SIGHUP / SIGINT, which first ask the engine
//! to stop and write its checkpoint and outputs, and wait up to
//! [`TuiOptions::stop_timeout`] for it.
//!
//! Pieces: [`app`] (state, keys, engine events), [`ui`] (drawing),
//! [`history`] (loss series), [`images`] (graphics protocol, tile encoding),
//! [`terminal`] (set-up, hang-ups, queries), [`tmux`] (multiplexers).

pub mod app;
pub mod history;
pub mod images;
pub mod terminal;
#[cfg(test)]
mod tests;
pub mod tmux;
pub mod ui;

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
use images::Graphics;

use crate::exit::{Signal, Signals};
use crate::headless::{self, Outcome};

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
    /// A signal (or a hang-up) ended the TUI after asking the engine to stop.
    Signalled {
        /// Which one.
        signal: Signal,
        /// Whether the checkpoint and outputs were written in time.
        saved: bool,
    },
    /// Drawing kept failing: the TUI gave the terminal back, and the run
    /// goes on headless.
    Headless,
}

/// How long [`run`] waits for the engine thread to end after it said it finished.
const JOIN_WAIT: Duration = Duration::from_secs(5);

/// What the engine thread returned, if it ends within [`JOIN_WAIT`].
fn join(thread: JoinHandle<lsd_core::Result<RunSummary>>) -> Option<lsd_core::Result<RunSummary>> {
    let end = Instant::now() + JOIN_WAIT;
    while !thread.is_finished() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    // A thread still running is left to the process's end.
    thread.is_finished().then(|| thread.join().ok()).flatten()
}

/// How a TUI run ended, and the graphics it drew with last.
pub struct Ended {
    /// The run's outcome.
    pub outcome: Outcome,
    /// The graphics in use at the end (`None`: no images).
    pub graphics: Option<Graphics>,
}

/// Runs the TUI on the current terminal until the user quits, the run ends
/// and the user quits, or a signal or hang-up arrives.
pub fn run(handle: EngineHandle, opts: &TuiOptions, signals: &Signals) -> Result<Ended> {
    let guard = TerminalGuard;
    let mut tty = terminal::init().wrap_err("could not set the terminal up (is stdout a terminal?)")?;
    // The query answers arrive on stdin: ask before reading key events.
    let graphics = images::detect(opts.graphics);
    let EngineHandle { events, control, thread } = handle;
    let mut app = App::new(control, graphics, opts.stop_timeout);
    app.note_graphics();
    let mut gpu = GpuMemory::new();
    let watch = match tmux::Place::detect() {
        tmux::Place::Tmux(Some(t)) => Some(tmux::AttachWatch::start(t)),
        _ => None,
    };
    let mut input = ThreadedInput::start(opts.graphics, watch);
    let outcome = run_loop(&mut tty, &mut app, &events, &mut input, signals, &mut gpu);
    drop(input);
    // ratatui's `Terminal` shows the cursor when dropped and prints an
    // error when that fails, which panics once stderr is the hung-up tty.
    if tty.show_cursor().is_err() {
        std::mem::forget(tty);
    }
    drop(guard);
    write_problems(&mut app);
    if let (n @ 1.., Some(info)) = (app.problem_count, &app.info) {
        crate::exit::warn(format!("the terminal had {n} problem(s); see {}", info.output.join("tui.log").display()));
    }
    let graphics = app.previews.graphics().cloned();
    let outcome = match outcome? {
        TuiOutcome::Headless => {
            let signalled = match &app.stopping {
                Some((app::Stopping::Signal(s), _)) => Some(*s),
                _ => None,
            };
            crate::exit::say("lsd-tui: the terminal kept failing to draw; following the run with log lines");
            let control = app.control();
            let followed = headless::follow_events(&events, &control, signals, false, app.info.clone(), signalled);
            drop(control);
            drop(app);
            let joined = thread.join().map_err(|_| color_eyre::eyre::eyre!("the engine thread panicked"))?;
            headless::outcome(joined, followed)
        }
        TuiOutcome::Finished { output } => match join(thread) {
            Some(Ok(summary)) => Outcome::Finished(summary),
            Some(Err(e)) => Outcome::Failed(e.to_string()),
            None => Outcome::Finished(RunSummary {
                output,
                steps: app.step(),
                stopped_early: app.state != app::RunState::Done,
            }),
        },
        TuiOutcome::Failed { error } => Outcome::Failed(error),
        TuiOutcome::Quit { saved } => Outcome::Quit { saved },
        TuiOutcome::Signalled { signal, saved } => {
            let summary = if saved { join(thread).and_then(|r| r.ok()) } else { None };
            Outcome::Signalled { signal, saved, summary }
        }
    };
    Ok(Ended { outcome, graphics })
}

/// Appends the app's terminal problems to the run's `tui.log` (not in unit
/// tests, whose fake runs have no folder).
fn write_problems(app: &mut App) {
    if app.problems.is_empty() || cfg!(test) {
        return;
    }
    let Some(info) = &app.info else { return };
    let step = app.last.as_ref().map_or(info.start_step, |s| s.step);
    let text: String = app.problems.drain(..).map(|p| format!("{} UTC, step {step}: {p}\n", utc_now())).collect();
    let _ = std::fs::create_dir_all(&info.output);
    // Best effort: the problem is in the log pane already.
    let _ =
        std::fs::OpenOptions::new().create(true).append(true).open(info.output.join("tui.log")).and_then(|mut f| {
            use std::io::Write;
            f.write_all(text.as_bytes())
        });
}

/// `2025-01-31 23:59:59`, now, in UTC.
fn utc_now() -> String {
    utc(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

/// Seconds since 1970 as `2025-01-31 23:59:59` (UTC).
fn utc(secs: u64) -> String {
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rest / 3600, rest % 3600 / 60, rest % 60)
}

/// Restores the terminal when dropped (early returns and errors).
struct TerminalGuard;

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        terminal::restore();
    }
}

/// The terminal side of the loop: key presses, and what the loop needs to
/// know about the terminal (a script in tests).
pub trait Input {
    /// Waits up to `timeout` for a key or resize; `None` when none came.
    fn poll(&mut self, timeout: Duration) -> Result<Option<TermEvent>>;

    /// True when the terminal has hung up (no signal needed).
    fn hung_up(&mut self) -> bool {
        false
    }

    /// Starts reading keys again after [`Input::poll`] failed.
    fn restart(&mut self) {}

    /// A tmux client attached or detached since the last call.
    fn attach(&mut self) -> Option<tmux::Attach> {
        None
    }

    /// Asks the terminal again which graphics reach it; `None` when it
    /// cannot be asked (not detected automatically, or a test).
    fn redetect(&mut self) -> Option<Option<Graphics>> {
        None
    }
}

/// Terminal events read on their own thread.
///
/// crossterm's reader spins forever on a hung-up terminal (an SSH drop
/// makes `read` return nothing, which its loop never leaves), so it must not
/// run on the thread that has to notice the hang-up and save the run.
/// It polls with a short timeout rather than blocking in `read`, so that it
/// can be stopped: when dropped (it must not eat the terminal's answers to
/// whatever queries the terminal after the TUI: an inline image printer),
/// and while the graphics query is asked again.
struct ThreadedInput {
    reader: Option<Reader>,
    mode: GraphicsMode,
    watch: Option<tmux::AttachWatch>,
}

struct Reader {
    rx: Receiver<std::io::Result<TermEvent>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Reader {
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

impl Drop for Reader {
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

impl ThreadedInput {
    fn start(mode: GraphicsMode, watch: Option<tmux::AttachWatch>) -> Self {
        Self { reader: Some(Reader::start()), mode, watch }
    }
}

impl Input for ThreadedInput {
    fn poll(&mut self, timeout: Duration) -> Result<Option<TermEvent>> {
        let Some(reader) = &self.reader else {
            std::thread::sleep(timeout);
            return Ok(None);
        };
        match reader.rx.recv_timeout(timeout) {
            Ok(ev) => Ok(Some(ev?)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                Err(color_eyre::eyre::eyre!("the terminal's key reader stopped"))
            }
        }
    }

    fn hung_up(&mut self) -> bool {
        terminal::tty_hung_up()
    }

    fn restart(&mut self) {
        self.reader = None;
        self.reader = Some(Reader::start());
    }

    fn attach(&mut self) -> Option<tmux::Attach> {
        self.watch.as_ref().and_then(tmux::AttachWatch::take)
    }

    fn redetect(&mut self) -> Option<Option<Graphics>> {
        if self.mode != GraphicsMode::Auto {
            return None;
        }
        // Nobody else may read stdin while the answers come.
        self.reader = None;
        let graphics = images::detect(self.mode);
        self.reader = Some(Reader::start());
        Some(graphics)
    }
}

/// How often the loop checks the tty for a hang-up that came without a signal.
const HANGUP_CHECK: Duration = Duration::from_millis(500);

/// Key reader failures in a row after which keys are given up on.
const MAX_INPUT_RESTARTS: u32 = 5;

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
    let mut last_hangup_check = Instant::now();
    let mut engine_open = true;
    // After a hang-up the terminal is gone: no more reading or drawing.
    let mut terminal_gone = false;
    let mut input_failures = 0u32;
    let mut keys_off = false;
    macro_rules! hang_up {
        ($why:expr) => {{
            terminal_gone = true;
            app.problem(format!("the terminal hung up ({}): saving and exiting", $why));
            if let Action::Exit(o) = app.update(Event::Signal(Signal::Hup)) {
                write_problems(app);
                return Ok(o);
            }
        }};
    }
    loop {
        write_problems(app);
        let now = Instant::now();
        let wait = last_draw.map(|t| (t + FRAME).saturating_duration_since(now)).unwrap_or(Duration::ZERO);
        let wait = wait.max(Duration::from_millis(1));
        if terminal_gone || keys_off {
            // Nothing to read: just wait for the next frame or the engine's last events.
            std::thread::sleep(if terminal_gone { Duration::from_millis(20) } else { wait });
        } else {
            // Wait for a key at most until the next frame, then take every key that is waiting.
            let mut next = input.poll(wait);
            while let Ok(Some(ev)) = next {
                input_failures = 0;
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
            if let Err(e) = next {
                if terminal::is_hangup(e.as_ref()) || input.hung_up() {
                    hang_up!(format!("reading keys: {e:#}"));
                } else {
                    input_failures += 1;
                    if input_failures > MAX_INPUT_RESTARTS {
                        keys_off = true;
                        app.problem(format!("reading keys failed {MAX_INPUT_RESTARTS} times ({e:#}); keys are off, training goes on (stop it with SIGTERM)"));
                    } else {
                        app.problem(format!("reading keys failed: {e:#}; reading them again"));
                        std::thread::sleep(Duration::from_millis(100 << input_failures.min(4)));
                        input.restart();
                    }
                }
            }
        }
        if !terminal_gone && last_hangup_check.elapsed() >= HANGUP_CHECK {
            last_hangup_check = Instant::now();
            if input.hung_up() {
                hang_up!("the tty reports a hang-up");
            }
        }
        if !terminal_gone {
            on_attach(app, input);
        }
        if let Some(sig) = signals.take() {
            terminal_gone |= sig == Signal::Hup;
            if let Action::Exit(o) = app.update(Event::Signal(sig)) {
                write_problems(app);
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
                        write_problems(app);
                        return Ok(o);
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    engine_open = false;
                    if let Action::Exit(o) = app.update(Event::EngineGone) {
                        write_problems(app);
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
            write_problems(app);
            return Ok(o);
        }
        if terminal_gone {
            continue;
        }
        let due = last_draw.is_none_or(|t| t.elapsed() >= FRAME);
        if due && (app.dirty || app.full_redraw) {
            if let Err(e) = draw(terminal, app) {
                if terminal::is_hangup(&e) || input.hung_up() {
                    hang_up!(format!("drawing: {e}"));
                } else if app.draw_failed(&e.to_string()) == app::Fallback::Headless {
                    write_problems(app);
                    return Ok(TuiOutcome::Headless);
                }
            }
            last_draw = Some(Instant::now());
        }
    }
}

/// A tmux client attached: repaint everything (tmux dropped the images),
/// and ask the terminal now looked at which graphics reach it.
fn on_attach(app: &mut App, input: &mut dyn Input) {
    let Some(tmux::Attach::Attached) = input.attach() else { return };
    app.full_redraw = true;
    app.dirty = true;
    if app.fallback != app::Fallback::Full {
        return;
    }
    let Some(graphics) = input.redetect() else { return };
    if graphics.as_ref() != app.previews.graphics() {
        app.previews.set_graphics(graphics);
        app.note_graphics();
    }
}

/// Lays the images out for the current size, then draws one frame.
fn draw<B: Backend>(terminal: &mut Terminal<B>, app: &mut App) -> std::result::Result<(), B::Error> {
    let size = terminal.size()?;
    app.sync_images(Rect::new(0, 0, size.width, size.height));
    if app.full_redraw {
        // Without asking the terminal anything (see `terminal`).
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

//! The app's state and how it changes: engine events, keys, ticks.
//!
//! Nothing here touches the terminal. Keys become [`Control`]s sent to the
//! engine and changes of state; [`App::update`] returns an [`Action`] that
//! tells the loop whether to go on or to end with an outcome.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use lsd_core::engine::events::{Control, Level, Preview, RunInfo, StepStats, TrainEvent};
use ratatui::layout::{Rect, Size};
use ratatui_image::protocol::Protocol;
use ratatui_image::FontSize;

use super::history::LossHistory;
use super::images::{EncodeJob, Encoder, Graphics, TileGrid, DEFAULT_FONT};
use super::TuiOutcome;
use crate::exit::Signal;

/// Messages kept for the log pane.
pub const MAX_MESSAGES: usize = 500;

/// The factors ←/→ step through; the recipe's α values are factor 1.
pub const ALPHA_FACTORS: [f32; 9] = [0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];
const ALPHA_BASE: usize = 3;

/// Something that happened.
#[derive(Debug)]
pub enum Event {
    /// A key was pressed.
    Key(KeyEvent),
    /// The engine said something.
    Train(TrainEvent),
    /// The engine's channel closed.
    EngineGone,
    /// SIGTERM, SIGHUP or SIGINT arrived (SIGHUP also for a hang-up
    /// noticed without the signal).
    Signal(Signal),
    /// GPU memory in use and in total, MiB.
    GpuMemory(u64, u64),
    /// Time passed.
    Tick(Instant),
}

/// What the loop does next.
#[derive(Debug)]
pub enum Action {
    /// Keep going.
    Continue,
    /// Restore the terminal and return this.
    Exit(TuiOutcome),
}

/// Where the run is.
#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    /// No `Started` event yet.
    Starting,
    /// A slow phase before the first step.
    WarmUp(String),
    /// Stepping.
    Running,
    /// Paused by the user.
    Paused,
    /// Ended normally.
    Done,
    /// Ended on an error.
    Failed(String),
}

impl RunState {
    /// A run that can still be stopped (and has something to save).
    pub fn active(&self) -> bool {
        matches!(self, RunState::Starting | RunState::WarmUp(_) | RunState::Running | RunState::Paused)
    }
}

/// A modal on top of the screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlay {
    /// Nothing.
    None,
    /// The key list.
    Help,
    /// "Save before quitting?"
    ConfirmQuit,
}

/// Why the app is waiting for the engine to end.
#[derive(Debug, Clone, PartialEq)]
pub enum Stopping {
    /// The user chose "save and quit".
    Quit,
    /// A signal arrived.
    Signal(Signal),
}

/// A message in the log pane.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Severity.
    pub level: Level,
    /// The step it arrived at (0 before the first).
    pub step: usize,
    /// The text.
    pub text: String,
}

/// The preview images and their encoded tiles.
pub struct Previews {
    /// The latest preview from the engine.
    pub current: Option<Preview>,
    /// The α values the recipe started with (factor 1 on the ←/→ ladder).
    pub base_alphas: Option<Vec<f32>>,
    /// Index into [`ALPHA_FACTORS`].
    pub factor: usize,
    /// α values asked for and not yet shown.
    pub requested: Option<Vec<f32>>,
    graphics: Option<Arc<Graphics>>,
    encoder: Option<Encoder>,
    /// Show only this many seeds (after a drawing error, see [`Fallback`]).
    pub max_rows: Option<usize>,
    /// Encoded tiles, row-major, of `generation` at `size`.
    pub tiles: Vec<Option<Protocol>>,
    /// Tiles of the current generation still being encoded.
    pub pending: usize,
    generation: u64,
    size: Option<Size>,
    /// The last encoder error.
    pub error: Option<String>,
}

impl Previews {
    fn new(graphics: Option<Graphics>) -> Self {
        let encoder = graphics.is_some().then(Encoder::new);
        Self {
            current: None,
            base_alphas: None,
            factor: ALPHA_BASE,
            requested: None,
            graphics: graphics.map(Arc::new),
            encoder,
            max_rows: None,
            tiles: Vec::new(),
            pending: 0,
            generation: 0,
            size: None,
            error: None,
        }
    }

    /// How the previews are drawn (`None`: no images).
    pub fn graphics(&self) -> Option<&Graphics> {
        self.graphics.as_deref()
    }

    /// Draws with `graphics` from now on: every tile is encoded again.
    pub fn set_graphics(&mut self, graphics: Option<Graphics>) {
        if self.encoder.is_none() && graphics.is_some() {
            self.encoder = Some(Encoder::new());
        }
        self.graphics = graphics.map(Arc::new);
        self.tiles.clear();
        self.size = None;
        self.pending = 0;
        self.error = None;
    }

    /// The font size tiles are laid out with.
    pub fn font_size(&self) -> FontSize {
        self.graphics.as_ref().map(|g| g.font).unwrap_or(DEFAULT_FONT)
    }

    /// Rows (seeds) and columns (original + one per α) of the current preview.
    pub fn shape(&self) -> (usize, usize) {
        let rows = |n: usize| self.max_rows.map_or(n, |m| n.min(m));
        self.current.as_ref().map(|p| (rows(p.rows.len()), 1 + p.alphas.len())).unwrap_or((0, 0))
    }

    /// Width over height of the preview images.
    pub fn aspect(&self) -> f64 {
        self.current
            .as_ref()
            .and_then(|p| p.rows.first())
            .map(|r| f64::from(r.original.width().max(1)) / f64::from(r.original.height().max(1)))
            .unwrap_or(1.0)
    }

    /// The encoded tile at (`row`, `col`), when it is ready and of the current size.
    pub fn tile(&self, row: usize, col: usize) -> Option<&Protocol> {
        let (_, cols) = self.shape();
        self.tiles.get(row * cols + col).and_then(Option::as_ref)
    }

    /// Re-encodes every tile at `size` (a new preview, or a new layout).
    fn submit(&mut self, size: Size) {
        let (rows, cols) = self.shape();
        let (Some(encoder), Some(graphics), Some(preview)) = (&self.encoder, &self.graphics, &self.current) else {
            return;
        };
        self.generation += 1;
        self.size = Some(size);
        // Keep showing the old tiles until the new ones arrive only when
        // they have the same shape; a resize makes them the wrong size.
        if self.tiles.len() != rows * cols {
            self.tiles = (0..rows * cols).map(|_| None).collect();
        }
        self.pending = 0;
        for (r, row) in preview.rows.iter().take(rows).enumerate() {
            for (c, image) in std::iter::once(&row.original).chain(&row.edits).take(cols).enumerate() {
                let graphics = Arc::clone(graphics);
                encoder.submit(EncodeJob {
                    graphics,
                    generation: self.generation,
                    index: r * cols + c,
                    image: image.clone(),
                    size,
                });
                self.pending += 1;
            }
        }
    }

    /// Takes the finished tiles; true when any arrived.
    fn collect(&mut self, wait: Option<Duration>) -> bool {
        let mut any = false;
        loop {
            let Some(encoder) = &self.encoder else { return any };
            let next = match wait {
                Some(t) if self.pending > 0 => encoder.recv_timeout(t),
                _ => encoder.try_recv(),
            };
            let Some(done) = next else { return any };
            if done.generation != self.generation {
                continue;
            }
            self.pending = self.pending.saturating_sub(1);
            any = true;
            match done.protocol {
                Ok(p) => {
                    if let Some(slot) = self.tiles.get_mut(done.index) {
                        *slot = Some(p);
                    }
                }
                Err(e) => self.error = Some(e),
            }
        }
    }
}

/// The whole state of the terminal app.
pub struct App {
    /// The run's facts (after `Started`).
    pub info: Option<RunInfo>,
    /// Where the run is.
    pub state: RunState,
    /// The newest step's numbers.
    pub last: Option<StepStats>,
    /// Loss curves.
    pub history: LossHistory,
    /// Log-scale y axis.
    pub log_scale: bool,
    /// Whole-run view instead of the following window.
    pub whole_run: bool,
    /// Log pane.
    pub messages: VecDeque<Message>,
    /// Previews.
    pub previews: Previews,
    /// The modal on top.
    pub overlay: Overlay,
    /// A pause or resume was asked for and not yet confirmed.
    pub pause_requested: Option<bool>,
    /// The step of the newest checkpoint.
    pub saved_step: Option<usize>,
    /// The newest checkpoint's path.
    pub saved_path: Option<PathBuf>,
    /// GPU memory (used, total) in MiB.
    pub gpu_memory: Option<(u64, u64)>,
    /// Waiting for the engine to end, and until when.
    pub stopping: Option<(Stopping, Instant)>,
    /// The run's output folder once it finished.
    pub finished: Option<(PathBuf, Duration)>,
    /// How long to wait for the engine after `Stop`.
    pub stop_timeout: Duration,
    /// Something changed since the last draw.
    pub dirty: bool,
    /// The next draw must repaint every cell (graphics moved or were covered).
    pub full_redraw: bool,
    /// How far drawing has fallen back after errors.
    pub fallback: Fallback,
    /// Terminal problems not yet written to the run's `tui.log`.
    pub problems: Vec<String>,
    /// Terminal problems in all.
    pub problem_count: usize,
    control: Sender<Control>,
}

/// How much the TUI draws after drawing errors that were not a hang-up:
/// each error steps down once, and training goes on at every step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fallback {
    /// Everything.
    Full,
    /// Fewer images: the first seed's tiles only, in half blocks (text
    /// cells, no image escape sequences).
    Fewer,
    /// No images.
    NoImages,
    /// No TUI: the terminal is given back and the run goes on with the
    /// headless log lines.
    Headless,
}

impl Fallback {
    /// The next step down.
    pub fn next(self) -> Self {
        match self {
            Fallback::Full => Fallback::Fewer,
            Fallback::Fewer => Fallback::NoImages,
            Fallback::NoImages | Fallback::Headless => Fallback::Headless,
        }
    }
}

impl App {
    /// A new app that sends commands on `control` and draws previews with
    /// `graphics` (`None`: no images).
    pub fn new(control: Sender<Control>, graphics: Option<Graphics>, stop_timeout: Duration) -> Self {
        Self {
            info: None,
            state: RunState::Starting,
            last: None,
            history: LossHistory::new(),
            log_scale: false,
            whole_run: false,
            messages: VecDeque::new(),
            previews: Previews::new(graphics),
            fallback: Fallback::Full,
            problems: Vec::new(),
            problem_count: 0,
            overlay: Overlay::None,
            pause_requested: None,
            saved_step: None,
            saved_path: None,
            gpu_memory: None,
            stopping: None,
            finished: None,
            stop_timeout,
            dirty: true,
            full_redraw: false,
            control,
        }
    }

    /// The current step (the start step before the first).
    pub fn step(&self) -> usize {
        self.last.as_ref().map(|s| s.step).or(self.info.as_ref().map(|i| i.start_step)).unwrap_or(0)
    }

    /// Steps taken since the newest checkpoint (0 when none taken).
    pub fn unsaved_steps(&self) -> usize {
        let start = self.info.as_ref().map(|i| i.start_step).unwrap_or(0);
        self.step().saturating_sub(self.saved_step.unwrap_or(start).max(start))
    }

    /// Handles one event.
    pub fn update(&mut self, event: Event) -> Action {
        match event {
            Event::Key(key) => self.handle_key_event(key),
            Event::Train(ev) => self.on_train_event(ev),
            Event::EngineGone => self.on_engine_gone(),
            Event::Signal(name) => self.on_signal(name),
            Event::GpuMemory(used, total) => {
                self.gpu_memory = Some((used, total));
                self.dirty = true;
                Action::Continue
            }
            Event::Tick(now) => self.on_tick(now),
        }
    }

    /// The engine's control channel (for the headless hand-over).
    pub fn control(&self) -> Sender<Control> {
        self.control.clone()
    }

    /// Logs which graphics draw the previews, and why.
    pub fn note_graphics(&mut self) {
        let text = match self.previews.graphics() {
            Some(g) => format!("graphics: {} ({})", g.name(), g.why),
            None => "graphics: none (--graphics none)".to_string(),
        };
        self.log(Level::Info, text);
    }

    fn send(&self, c: Control) {
        // A closed channel means the engine has ended; its last event says how.
        let _ = self.control.send(c);
    }

    fn log(&mut self, level: Level, text: impl Into<String>) {
        if self.messages.len() == MAX_MESSAGES {
            self.messages.pop_front();
        }
        let step = self.step();
        self.messages.push_back(Message { level, step, text: text.into() });
        self.dirty = true;
    }

    /// Records a terminal problem: shown in the log pane and written to the
    /// run's `tui.log`.
    pub fn problem(&mut self, text: impl Into<String>) {
        let text = text.into();
        self.log(Level::Error, text.clone());
        self.problems.push(text);
        self.problem_count += 1;
    }

    /// Drawing failed with `error` (not a hang-up): shows and logs it, and
    /// draws less from now on. Returns the new [`Fallback`].
    pub fn draw_failed(&mut self, error: &str) -> Fallback {
        self.fallback = self.fallback.next();
        let what = match self.fallback {
            Fallback::Full => unreachable!("next() always steps down"),
            Fallback::Fewer => {
                self.previews.max_rows = Some(1);
                let why = format!("half blocks after a drawing error: {error}");
                self.previews.set_graphics(self.previews.graphics().is_some().then(|| Graphics::halfblocks(why)));
                "fewer images (first seed, half blocks)"
            }
            Fallback::NoImages => {
                self.previews.set_graphics(None);
                "no images"
            }
            Fallback::Headless => "no TUI: headless log lines",
        };
        self.problem(format!("drawing failed: {error}; training goes on with {what}"));
        self.full_redraw = true;
        self.dirty = true;
        self.fallback
    }

    /// A key press.
    pub fn handle_key_event(&mut self, key: KeyEvent) -> Action {
        if key.kind == KeyEventKind::Release {
            return Action::Continue;
        }
        self.dirty = true;
        let ctrl_c = key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
        match self.overlay {
            Overlay::Help => {
                if ctrl_c {
                    return self.quit();
                }
                self.set_overlay(Overlay::None);
                return Action::Continue;
            }
            Overlay::ConfirmQuit => {
                return match key.code {
                    KeyCode::Char('y') | KeyCode::Char('Y') | KeyCode::Enter => {
                        self.set_overlay(Overlay::None);
                        self.stop(Stopping::Quit)
                    }
                    KeyCode::Char('n') | KeyCode::Char('N') => {
                        Action::Exit(TuiOutcome::Quit { saved: self.unsaved_steps() == 0 })
                    }
                    _ if ctrl_c => Action::Exit(TuiOutcome::Quit { saved: self.unsaved_steps() == 0 }),
                    _ => {
                        self.set_overlay(Overlay::None);
                        Action::Continue
                    }
                };
            }
            Overlay::None => {}
        }
        if ctrl_c {
            return self.quit();
        }
        if key.code == KeyCode::Char('l') && key.modifiers.contains(KeyModifiers::CONTROL) {
            // Repaint every cell: images lost by a tmux re-attach come back.
            self.full_redraw = true;
            return Action::Continue;
        }
        match key.code {
            KeyCode::Char(' ') => self.toggle_pause(),
            KeyCode::Char('s') => self.save_now(),
            KeyCode::Left => self.step_alpha(-1),
            KeyCode::Right => self.step_alpha(1),
            KeyCode::Char('l') => self.log_scale = !self.log_scale,
            KeyCode::Char('w') => self.whole_run = !self.whole_run,
            KeyCode::Char('?') | KeyCode::Char('h') | KeyCode::F(1) => self.set_overlay(Overlay::Help),
            KeyCode::Char('q') | KeyCode::Esc => return self.quit(),
            _ => {}
        }
        Action::Continue
    }

    fn set_overlay(&mut self, o: Overlay) {
        if self.overlay != o {
            self.overlay = o;
            // A modal drawn over sixel pixels leaves holes when it goes.
            self.full_redraw = true;
        }
    }

    fn toggle_pause(&mut self) {
        if !self.state.active() || self.stopping.is_some() {
            return;
        }
        let paused = self.pause_requested.unwrap_or(self.state == RunState::Paused);
        self.send(if paused { Control::Resume } else { Control::Pause });
        self.pause_requested = Some(!paused);
    }

    fn save_now(&mut self) {
        if !self.state.active() || self.stopping.is_some() {
            self.log(Level::Info, "the run has ended; its outputs are saved");
            return;
        }
        self.send(Control::SaveNow);
        self.log(Level::Info, "saving a checkpoint…");
    }

    fn step_alpha(&mut self, by: isize) {
        let Some(base) = self.previews.base_alphas.clone() else {
            self.log(Level::Info, "no preview yet: α can change once the first one arrives");
            return;
        };
        if !self.state.active() {
            return;
        }
        let i = (self.previews.factor as isize + by).clamp(0, ALPHA_FACTORS.len() as isize - 1) as usize;
        if i == self.previews.factor {
            return;
        }
        self.previews.factor = i;
        let alphas: Vec<f32> = base.iter().map(|a| a * ALPHA_FACTORS[i]).collect();
        self.send(Control::SetPreviewAlphas(alphas.clone()));
        self.previews.requested = Some(alphas);
    }

    fn quit(&mut self) -> Action {
        if self.stopping.is_some() {
            // A second q while saving: leave now.
            return Action::Exit(TuiOutcome::Quit { saved: self.unsaved_steps() == 0 });
        }
        if !self.state.active() {
            return Action::Exit(self.ended_outcome());
        }
        // A run still going has not written its outputs (a periodic
        // checkpoint is not the outputs): always ask.
        self.set_overlay(Overlay::ConfirmQuit);
        Action::Continue
    }

    /// Sends `Stop` and waits (in [`App::on_tick`]) for the engine to end.
    fn stop(&mut self, why: Stopping) -> Action {
        if !self.state.active() {
            return match why {
                Stopping::Quit => Action::Exit(self.ended_outcome()),
                Stopping::Signal(signal) => Action::Exit(TuiOutcome::Signalled { signal, saved: true }),
            };
        }
        self.send(Control::Stop);
        self.log(Level::Info, "stopping: writing a checkpoint and the outputs…");
        self.stopping = Some((why, Instant::now() + self.stop_timeout));
        Action::Continue
    }

    fn ended_outcome(&self) -> TuiOutcome {
        match (&self.state, &self.finished) {
            (RunState::Failed(e), _) => TuiOutcome::Failed { error: e.clone() },
            (_, Some((output, _))) => TuiOutcome::Finished { output: output.clone() },
            _ => TuiOutcome::Quit { saved: self.unsaved_steps() == 0 },
        }
    }

    /// The outcome once the engine ended while stopping.
    fn stopped_outcome(&self) -> Option<Action> {
        let (why, _) = self.stopping.as_ref()?;
        if self.state.active() {
            return None;
        }
        Some(Action::Exit(match why {
            Stopping::Quit => self.ended_outcome(),
            Stopping::Signal(signal) => {
                TuiOutcome::Signalled { signal: *signal, saved: self.finished.is_some() || self.unsaved_steps() == 0 }
            }
        }))
    }

    /// An engine event.
    pub fn on_train_event(&mut self, ev: TrainEvent) -> Action {
        self.dirty = true;
        match ev {
            TrainEvent::Started(info) => {
                self.saved_step = None;
                self.state = RunState::Running;
                self.info = Some(info);
            }
            TrainEvent::WarmUp { what } => self.state = RunState::WarmUp(what),
            TrainEvent::Step(stats) => {
                if matches!(self.state, RunState::WarmUp(_) | RunState::Starting) {
                    self.state = RunState::Running;
                }
                let mut values = stats.terms.clone();
                values.push(stats.total);
                self.history.push(stats.step, values);
                self.last = Some(stats);
            }
            TrainEvent::Preview(p) => self.on_preview(p),
            TrainEvent::Message { level, text } => self.log(level, text),
            TrainEvent::Checkpoint { step, path } => {
                self.log(Level::Info, format!("checkpoint at step {step}: {}", path.display()));
                self.saved_step = Some(step);
                self.saved_path = Some(path);
            }
            TrainEvent::Paused(p) => {
                self.pause_requested = None;
                if self.state.active() {
                    self.state = if p { RunState::Paused } else { RunState::Running };
                }
            }
            TrainEvent::Finished { output, elapsed } => {
                self.log(
                    Level::Info,
                    format!("finished in {}: outputs in {}", fmt_duration(elapsed), output.display()),
                );
                self.state = RunState::Done;
                self.finished = Some((output, elapsed));
            }
            TrainEvent::Failed { error } => {
                self.log(Level::Error, format!("failed: {error}"));
                self.state = RunState::Failed(error);
            }
        }
        self.stopped_outcome().unwrap_or(Action::Continue)
    }

    fn on_preview(&mut self, p: Preview) {
        if self.previews.base_alphas.is_none() {
            self.previews.base_alphas = Some(p.alphas.clone());
        }
        if self.previews.requested.as_ref().is_some_and(|r| alphas_equal(r, &p.alphas)) {
            self.previews.requested = None;
        }
        let same_shape = self.previews.current.as_ref().is_some_and(|c| {
            c.rows.len() == p.rows.len()
                && c.alphas.len() == p.alphas.len()
                && c.rows.first().map(|r| r.original.dimensions()) == p.rows.first().map(|r| r.original.dimensions())
        });
        self.previews.current = Some(p);
        if let (true, Some(size)) = (same_shape, self.previews.size) {
            self.previews.submit(size);
        } else {
            // The layout changes with the shape; the next sync lays out afresh.
            self.previews.size = None;
            self.previews.tiles.clear();
            self.full_redraw = true;
        }
    }

    fn on_engine_gone(&mut self) -> Action {
        if self.state.active() {
            self.state = RunState::Failed("the engine stopped without a word (see the log above)".into());
            self.dirty = true;
        }
        self.stopped_outcome().unwrap_or(Action::Continue)
    }

    fn on_signal(&mut self, name: Signal) -> Action {
        if let Some((Stopping::Signal(_), _)) = self.stopping {
            // A second signal: leave now.
            return Action::Exit(TuiOutcome::Signalled { signal: name, saved: self.unsaved_steps() == 0 });
        }
        self.log(Level::Warn, format!("{name}: saving and exiting"));
        self.stopping = None;
        self.stop(Stopping::Signal(name))
    }

    /// Time passed: gives up waiting for the engine after the stop timeout.
    pub fn on_tick(&mut self, now: Instant) -> Action {
        if let Some((why, deadline)) = &self.stopping {
            if now >= *deadline {
                let saved = self.unsaved_steps() == 0;
                return Action::Exit(match why {
                    Stopping::Quit => TuiOutcome::Quit { saved },
                    Stopping::Signal(signal) => TuiOutcome::Signalled { signal: *signal, saved },
                });
            }
        }
        Action::Continue
    }

    /// Lays the previews out for a screen of `area` and queues the tiles
    /// that need encoding; collects the finished ones. Call before drawing.
    pub fn sync_images(&mut self, area: Rect) {
        if self.previews.collect(None) {
            self.dirty = true;
        }
        let Some(grid) = self.tile_grid(area) else { return };
        if self.previews.size != Some(grid.tile) {
            if self.previews.size.is_some() {
                self.full_redraw = true;
                self.previews.tiles.clear();
            }
            self.previews.submit(grid.tile);
        }
    }

    /// Waits up to `timeout` for every queued tile (tests and snapshots).
    #[cfg(test)]
    pub fn settle_images(&mut self, timeout: Duration) {
        let end = Instant::now() + timeout;
        while self.previews.pending > 0 && Instant::now() < end {
            self.previews.collect(Some(Duration::from_millis(20)));
        }
        self.dirty = true;
    }

    /// The preview tile grid on a screen of `area`.
    pub fn tile_grid(&self, area: Rect) -> Option<TileGrid> {
        let (rows, cols) = self.previews.shape();
        let pane = super::ui::layout(area, self).preview?;
        let inner = super::ui::inner(pane);
        TileGrid::new(inner, rows, cols, self.previews.aspect(), self.previews.font_size())
    }
}

fn alphas_equal(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-4 * x.abs().max(1.0))
}

/// `1h02m`, `3m05s`, `12s`.
pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

//! Preview images: choosing the graphics protocol that really reaches the
//! terminal being looked at, laying the preview tiles out, and resizing +
//! encoding them on a worker thread.
//!
//! The protocol is found by asking the terminal ([`detect`]): a kitty
//! graphics query, the device attributes (sixel is attribute 4) and the cell
//! size in pixels, because the environment variables that name a terminal do
//! not survive SSH. The answer is read with a deadline ([`QUERY_TIMEOUT`]) on
//! the calling thread, so a terminal that never answers costs that long once
//! and leaves nothing behind. Inside a multiplexer what counts is what gets
//! through it to the outer terminal ([`choose`] has the whole table):
//!
//! - tmux passes escape sequences through (`allow-passthrough`, tmux ≥ 3.3)
//!   when they are wrapped in its passthrough envelope: kitty graphics and
//!   iTerm2 images go that way, and so does sixel into an outer terminal that
//!   has it. tmux ≥ 3.4 built with sixel draws sixel itself (it then lists
//!   attribute 4 in its own answer), and gets raw sixel. Images sent through
//!   passthrough are not part of tmux's screen, so whenever tmux redraws the
//!   pane (a client attaches, the window is resized) the TUI sends them
//!   again. A session with no client attached has no outer terminal to ask:
//!   it starts with half blocks, and asks again once a client attaches.
//! - GNU screen passes no images: half blocks.
//!
//! ratatui-image's own tmux sixel envelope leaves the sixel's final escape
//! undoubled, which ends tmux's envelope early and leaves the outer
//! terminal with an unterminated image that it drops: every tile blank.
//! [`Graphics::encode`] builds the envelope itself ([`tmux_wrap`]).
//!
//! Resizing and encoding (sixel encoding of a large tile takes tens of
//! milliseconds) happen on one worker thread, like ratatui-image's
//! `ThreadProtocol`: the UI sends [`EncodeJob`]s and collects finished
//! [`Protocol`]s, then renders them with the stateless [`ratatui_image::Image`]
//! widget, so drawing never waits on an encoder. Jobs carry a generation;
//! the worker skips jobs a newer generation has made stale.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use image::{DynamicImage, RgbImage};
use ratatui::layout::{Rect, Size};
use ratatui_image::picker::cap_parser::{Parser, QueryStdioOptions, Response};
use ratatui_image::picker::ProtocolType;
use ratatui_image::protocol::halfblocks::Halfblocks;
use ratatui_image::protocol::iterm2::Iterm2;
use ratatui_image::protocol::kitty::Kitty;
use ratatui_image::protocol::sixel::Sixel;
use ratatui_image::protocol::Protocol;
use ratatui_image::{FilterType, FontSize, Resize};

use super::terminal;
use super::tmux::Place;
use super::GraphicsMode;

/// How long the terminal gets to answer the capability query.
pub const QUERY_TIMEOUT: Duration = Duration::from_millis(1500);

/// The cell size assumed when the terminal does not say (half blocks only
/// need the proportion).
pub const DEFAULT_FONT: FontSize = FontSize::new(10, 20);

/// How the previews are drawn, and why.
#[derive(Debug, Clone)]
pub struct Graphics {
    /// The protocol.
    pub protocol: ProtocolType,
    /// One cell's size in pixels.
    pub font: FontSize,
    /// Wrap every image in tmux's passthrough envelope.
    pub passthrough: bool,
    /// Draw half blocks in the 256-colour palette, not 24-bit colour
    /// (GNU screen 4 has no 24-bit colour).
    pub palette256: bool,
    /// Why this protocol, in a few words (shown in the header and the log).
    pub why: String,
}

impl PartialEq for Graphics {
    fn eq(&self, o: &Self) -> bool {
        (self.protocol, self.font.width, self.font.height, self.passthrough, self.palette256, &self.why)
            == (o.protocol, o.font.width, o.font.height, o.passthrough, o.palette256, &o.why)
    }
}

impl Graphics {
    /// Half blocks, for `why`.
    pub fn halfblocks(why: impl Into<String>) -> Self {
        Self {
            protocol: ProtocolType::Halfblocks,
            font: DEFAULT_FONT,
            passthrough: false,
            palette256: false,
            why: why.into(),
        }
    }

    /// `sixel`, `kitty via tmux`, `halfblocks`…
    pub fn name(&self) -> String {
        let base = match self.protocol {
            ProtocolType::Halfblocks => "halfblocks",
            ProtocolType::Sixel => "sixel",
            ProtocolType::Kitty => "kitty",
            ProtocolType::Iterm2 => "iterm2",
        };
        if self.passthrough {
            format!("{base} via tmux passthrough")
        } else {
            base.to_string()
        }
    }

    /// Resizes `image` to fit `size` cells and encodes it.
    pub fn encode(&self, image: DynamicImage, size: Size) -> Result<Protocol, String> {
        let resize = Resize::Scale(Some(FilterType::Triangle));
        let area = resize.size_for(&image, self.font, size);
        let image = resize.resize(&image, self.font, area, None);
        let e = |e: ratatui_image::errors::Errors| e.to_string();
        Ok(match self.protocol {
            ProtocolType::Halfblocks => Protocol::Halfblocks(Halfblocks::new(image, area).map_err(e)?),
            ProtocolType::Sixel => {
                let mut sixel = Sixel::new(image, area, false).map_err(e)?;
                if self.passthrough {
                    sixel.data = tmux_wrap(&sixel.data);
                }
                Protocol::Sixel(sixel)
            }
            ProtocolType::Kitty => {
                static NEXT_ID: AtomicU32 = AtomicU32::new(0);
                let id = (std::process::id() << 12) ^ NEXT_ID.fetch_add(1, Ordering::Relaxed);
                Protocol::Kitty(Kitty::new(image, area, id.max(1), self.passthrough, false).map_err(e)?)
            }
            ProtocolType::Iterm2 => Protocol::ITerm2(Iterm2::new(image, area, self.passthrough).map_err(e)?),
        })
    }
}

/// The nearest colour of the xterm 256-colour palette (its 6×6×6 cube and
/// its grey ramp) to `rgb`.
pub fn palette256(rgb: [u8; 3]) -> u8 {
    const LEVELS: [u8; 6] = [0, 95, 135, 175, 215, 255];
    let level = |c: u8| {
        LEVELS.iter().enumerate().min_by_key(|(_, &l)| (i32::from(l) - i32::from(c)).abs()).map_or(0, |(i, _)| i)
    };
    let (r, g, b) = (level(rgb[0]), level(rgb[1]), level(rgb[2]));
    let cube = [LEVELS[r], LEVELS[g], LEVELS[b]];
    let mean = (u32::from(rgb[0]) + u32::from(rgb[1]) + u32::from(rgb[2])) / 3;
    let grey_i = ((mean.saturating_sub(3)) / 10).min(23) as u8;
    let grey = 8 + 10 * grey_i;
    let dist = |c: [u8; 3]| rgb.iter().zip(c).map(|(&a, b)| (i32::from(a) - i32::from(b)).pow(2)).sum::<i32>();
    if dist([grey; 3]) < dist(cube) {
        232 + grey_i
    } else {
        16 + 36 * r as u8 + 6 * g as u8 + b as u8
    }
}

/// `seq` in tmux's passthrough envelope: `ESC P tmux;` + `seq` with every
/// escape doubled + `ESC \`.
pub fn tmux_wrap(seq: &str) -> String {
    format!("\x1bPtmux;{}\x1b\\", seq.replace('\x1b', "\x1b\x1b"))
}

/// What a terminal said to the graphics query.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Answer {
    /// It answered the kitty graphics query.
    pub kitty: bool,
    /// It lists sixel among its device attributes.
    pub sixel: bool,
    /// Its cell size in pixels (width, height).
    pub cell: Option<(u16, u16)>,
}

/// Everything [`choose`] decides from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Probe {
    /// Where the TUI runs.
    pub place: Place,
    /// What tmux said about this pane, when it could be asked.
    pub tmux: Option<TmuxState>,
    /// tmux's own answer lists sixel (tmux ≥ 3.4 built with sixel).
    pub tmux_sixel: bool,
    /// The terminal's (in tmux: the outer terminal's) answer; `None` when
    /// none came in time or none was asked.
    pub outer: Option<Answer>,
    /// The cell size from elsewhere (the tty's window size, tmux's client).
    pub cell: Option<(u16, u16)>,
    /// The environment or tmux names an iTerm2-compatible terminal.
    pub iterm2: bool,
}

/// The pane's tmux, as [`choose`] needs it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TmuxState {
    /// The server's version (`3.3a`).
    pub version: String,
    /// At least one client is attached.
    pub attached: bool,
    /// The pane may pass escape sequences through.
    pub passthrough: bool,
}

/// Asks the terminal (see the module) and chooses the protocol for `mode`;
/// `None` for `--graphics none`. The terminal must be in raw mode and
/// nothing else may be reading stdin.
pub fn detect(mode: GraphicsMode) -> Option<Graphics> {
    match mode {
        GraphicsMode::None => None,
        GraphicsMode::Halfblocks => Some(Graphics::halfblocks("--graphics halfblocks")),
        _ => Some(choose(mode, &probe())),
    }
}

/// Queries the terminal and, inside tmux, tmux.
pub fn probe() -> Probe {
    let place = Place::detect();
    let mut p = Probe {
        place: place.clone(),
        iterm2: iterm2_from_env(),
        cell: terminal::cell_pixels_from_winsize(),
        ..Probe::default()
    };
    match &place {
        Place::Screen => {}
        Place::Direct => p.outer = query(false, true),
        Place::Tmux(t) => {
            // tmux answers the device attributes itself, client or not.
            p.tmux_sixel = query(false, false).is_some_and(|a| a.sixel);
            if let Some(tmux) = t {
                let state = TmuxState {
                    version: tmux.version.clone(),
                    attached: tmux.attached(),
                    passthrough: tmux.passthrough(),
                };
                // The environment is the one tmux started with, maybe in
                // another terminal: the attached client's type counts.
                p.iterm2 = false;
                if state.attached {
                    p.cell = p.cell.or(tmux.client_cell());
                    p.iterm2 = tmux.client_termtype().is_some_and(|t| names_iterm2(&t));
                    if state.passthrough {
                        p.outer = query(true, true);
                    }
                }
                p.tmux = Some(state);
            } else {
                // tmux on the other side of SSH: only passthrough can tell.
                p.outer = query(true, true);
            }
        }
    }
    p
}

/// Sends the graphics query (in tmux's envelope when `wrap`; with the
/// kitty query when `kitty`, which tmux and screen would take for a title)
/// and reads the answers until the status report that ends them.
fn query(wrap: bool, kitty: bool) -> Option<Answer> {
    let text = if kitty {
        Parser::query(wrap, QueryStdioOptions::default())
    } else {
        // Device attributes and the status report, unwrapped.
        "\x1b[c\x1b[5n".to_string()
    };
    let mut parser = Parser::new();
    let mut answer = Answer::default();
    let mut any = false;
    let done = terminal::ask(&text, QUERY_TIMEOUT, |b| {
        for r in parser.push(char::from(b)) {
            any = true;
            match r {
                Response::Kitty => answer.kitty = true,
                Response::Sixel => answer.sixel = true,
                Response::CellSize(Some(c)) => answer.cell = Some(c),
                Response::Status => return true,
                _ => {}
            }
        }
        false
    });
    (done.unwrap_or(false) || any).then_some(answer)
}

fn names_iterm2(s: &str) -> bool {
    ["iTerm", "WezTerm", "mintty", "vscode", "Tabby", "Hyper", "rio", "WarpTerminal"].iter().any(|n| s.contains(n))
}

fn iterm2_from_env() -> bool {
    let var = |k| std::env::var(k).unwrap_or_default();
    names_iterm2(&var("TERM_PROGRAM")) || var("LC_TERMINAL").contains("iTerm") || !var("ITERM_SESSION_ID").is_empty()
}

/// The protocol for `mode` given what the probe found, and why.
pub fn choose(mode: GraphicsMode, p: &Probe) -> Graphics {
    let in_tmux = matches!(p.place, Place::Tmux(_));
    let cell = p.outer.and_then(|a| a.cell).or(p.cell);
    let font = cell.map(|(w, h)| FontSize::new(w, h));
    let with = |protocol, passthrough, why: String| match font {
        Some(font) => Graphics { protocol, font, passthrough, palette256: false, why },
        None => Graphics::halfblocks(format!("{why}, but the terminal did not give its cell size in pixels")),
    };
    let forced = |protocol: ProtocolType, flag: &str| {
        let passthrough = in_tmux && !(protocol == ProtocolType::Sixel && p.tmux_sixel);
        Graphics {
            protocol,
            font: font.unwrap_or(DEFAULT_FONT),
            passthrough,
            palette256: false,
            why: format!("--graphics {flag}"),
        }
    };
    match mode {
        GraphicsMode::None | GraphicsMode::Halfblocks => {
            return Graphics::halfblocks(format!("--graphics {mode:?}").to_lowercase())
        }
        GraphicsMode::Sixel => return forced(ProtocolType::Sixel, "sixel"),
        GraphicsMode::Kitty => return forced(ProtocolType::Kitty, "kitty"),
        GraphicsMode::Iterm2 => return forced(ProtocolType::Iterm2, "iterm2"),
        GraphicsMode::Auto => {}
    }
    match &p.place {
        Place::Screen => {
            Graphics { palette256: true, ..Graphics::halfblocks("GNU screen passes no images through (256 colours)") }
        }
        Place::Direct => match p.outer {
            Some(a) if a.kitty => {
                with(ProtocolType::Kitty, false, "the terminal answered the kitty graphics query".into())
            }
            Some(a) if a.sixel => with(ProtocolType::Sixel, false, "the terminal lists sixel".into()),
            _ if p.iterm2 => with(ProtocolType::Iterm2, false, "the terminal is iTerm2-compatible".into()),
            Some(_) => Graphics::halfblocks("the terminal has no sixel, kitty or iTerm2 graphics"),
            None => Graphics::halfblocks("the terminal did not answer the graphics query in time"),
        },
        Place::Tmux(_) => {
            let version = p.tmux.as_ref().map(|t| format!("tmux {}", t.version)).unwrap_or_else(|| "tmux".into());
            if p.tmux.as_ref().is_some_and(|t| !t.attached) {
                return Graphics::halfblocks(format!("{version} has no client attached; images once one attaches"));
            }
            if p.tmux.as_ref().is_some_and(|t| !t.passthrough) {
                return Graphics::halfblocks(format!("{version} has allow-passthrough off and would not turn it on"));
            }
            match p.outer {
                Some(a) if a.kitty => {
                    with(ProtocolType::Kitty, true, "the terminal outside tmux answered the kitty query".into())
                }
                _ if p.iterm2 => {
                    with(ProtocolType::Iterm2, true, "the terminal outside tmux is iTerm2-compatible".into())
                }
                Some(a) if a.sixel && p.tmux_sixel => {
                    with(ProtocolType::Sixel, false, format!("{version} draws sixel itself"))
                }
                Some(a) if a.sixel => with(
                    ProtocolType::Sixel,
                    true,
                    format!("the terminal outside tmux lists sixel; {version} has no sixel of its own"),
                ),
                Some(_) => Graphics::halfblocks(format!(
                    "the terminal outside {version} has no sixel, kitty or iTerm2 graphics"
                )),
                None => {
                    Graphics::halfblocks(format!("the terminal outside {version} did not answer through passthrough"))
                }
            }
        }
    }
}

/// Where the preview tiles go inside the preview pane.
///
/// Each seed's tiles (original, then one per α) sit on one line with a label
/// line above; when the pane is tall and narrow (80×24), a seed's tiles wrap
/// onto several lines, each with its own labels, if that makes them larger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileGrid {
    /// The pane's inner area.
    pub area: Rect,
    /// Columns left of the tiles for the seed labels.
    pub gutter: u16,
    /// One tile's size in cells.
    pub tile: Size,
    /// Seeds (rows).
    pub rows: usize,
    /// Original plus one per α (columns).
    pub cols: usize,
    /// Lines each seed's tiles take.
    pub wrap: usize,
}

impl TileGrid {
    /// Lays out `rows × cols` tiles of images with aspect `aspect`
    /// (width / height) in `area`. `None` when the area is too small for a
    /// recognisable tile.
    pub fn new(area: Rect, rows: usize, cols: usize, aspect: f64, font: FontSize) -> Option<Self> {
        if rows == 0 || cols == 0 || area.height < 3 {
            return None;
        }
        let gutter: u16 = if rows > 1 { 6 } else { 0 };
        let (fw, fh) = (f64::from(font.width.max(1)), f64::from(font.height.max(1)));
        let mut best: Option<Self> = None;
        for wrap in 1..=cols {
            let per_line = cols.div_ceil(wrap) as u16;
            let lines = (rows * wrap) as u16;
            // One label line on top, or one above every line once wrapped.
            let label_lines = if wrap == 1 { 1 } else { lines };
            let (Some(avail_w), Some(avail_h)) =
                (area.width.checked_sub(gutter + per_line - 1), area.height.checked_sub(label_lines))
            else {
                continue;
            };
            let (max_w, max_h) = (avail_w / per_line, avail_h / lines);
            // The widest tile whose image, kept in proportion, fits max_h rows.
            let w_for_h = (f64::from(max_h) * fh * aspect / fw).floor() as u16;
            let w = max_w.min(w_for_h);
            let h = ((f64::from(w) * fw / (aspect * fh)).ceil() as u16).min(max_h);
            if w < 4 || h < 2 {
                continue;
            }
            if best.is_none_or(|b| w > b.tile.width) {
                best = Some(Self { area, gutter, tile: Size::new(w, h), rows, cols, wrap });
            }
        }
        best
    }

    fn per_line(&self) -> usize {
        self.cols.div_ceil(self.wrap)
    }

    /// True when every tile line has its own labels (wrapped layout).
    pub fn labels_every_line(&self) -> bool {
        self.wrap > 1
    }

    /// The label line's area above tile (`row`, `col`).
    pub fn label(&self, row: usize, col: usize) -> Rect {
        let t = self.tile_rect(row, col);
        Rect::new(t.x, t.y - 1, t.width, 1)
    }

    /// The area of tile (`row`, `col`).
    pub fn tile_rect(&self, row: usize, col: usize) -> Rect {
        let line = (row * self.wrap + col / self.per_line()) as u16;
        let pos = (col % self.per_line()) as u16;
        let x = self.area.x + self.gutter + pos * (self.tile.width + 1);
        let y = if self.wrap == 1 {
            self.area.y + 1 + line * self.tile.height
        } else {
            self.area.y + 1 + line * (self.tile.height + 1)
        };
        Rect::new(x, y, self.tile.width, self.tile.height)
    }

    /// The gutter area of row `row`.
    pub fn gutter_rect(&self, row: usize) -> Rect {
        let first = self.tile_rect(row, 0);
        let last = self.tile_rect(row, self.cols - 1);
        Rect::new(self.area.x, first.y, self.gutter, last.bottom() - first.y)
    }
}

/// One tile to resize and encode.
pub struct EncodeJob {
    /// How to encode it.
    pub graphics: Arc<Graphics>,
    /// The generation it belongs to.
    pub generation: u64,
    /// Index of the tile (row-major).
    pub index: usize,
    /// The full-size image.
    pub image: RgbImage,
    /// The cell area to fit.
    pub size: Size,
}

/// A finished tile.
pub struct Encoded {
    /// The generation it belongs to.
    pub generation: u64,
    /// Index of the tile (row-major).
    pub index: usize,
    /// The encoded image, or the encoder's error.
    pub protocol: Result<Protocol, String>,
}

/// The resize + encode worker thread.
pub struct Encoder {
    jobs: Option<Sender<EncodeJob>>,
    done: Receiver<Encoded>,
    latest: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    /// Starts the worker.
    pub fn new() -> Self {
        let (jobs, job_rx) = channel::<EncodeJob>();
        let (done_tx, done) = channel();
        let latest = Arc::new(AtomicU64::new(0));
        let seen = Arc::clone(&latest);
        let thread = std::thread::Builder::new()
            .name("lsd-tui-encode".into())
            .spawn(move || {
                for job in job_rx {
                    if job.generation < seen.load(Ordering::Acquire) {
                        continue; // a newer preview or size replaced it
                    }
                    let protocol = job.graphics.encode(DynamicImage::ImageRgb8(job.image), job.size);
                    let out = Encoded { generation: job.generation, index: job.index, protocol };
                    if done_tx.send(out).is_err() {
                        break;
                    }
                }
            })
            .ok();
        Self { jobs: Some(jobs), done, latest, thread }
    }

    /// Queues `job`, marking its generation as the newest.
    pub fn submit(&self, job: EncodeJob) {
        self.latest.fetch_max(job.generation, Ordering::AcqRel);
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(job);
        }
    }

    /// Finished tiles, without waiting.
    pub fn try_recv(&self) -> Option<Encoded> {
        self.done.try_recv().ok()
    }

    /// A finished tile, waiting up to `timeout` (tests).
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Encoded> {
        self.done.recv_timeout(timeout).ok()
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        // Closing the job channel ends the worker after its current job.
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_reaches_the_terminal_decides_the_protocol() {
        let xterm = Some(Answer { kitty: false, sixel: true, cell: Some((10, 20)) });
        let kitty = Some(Answer { kitty: true, sixel: false, cell: Some((9, 18)) });
        let plain = Some(Answer { kitty: false, sixel: false, cell: Some((9, 18)) });
        let auto = |place: Place, outer, tmux_sixel| {
            choose(GraphicsMode::Auto, &Probe { place, outer, tmux_sixel, ..Probe::default() })
        };

        let g = auto(Place::Direct, xterm, false);
        assert_eq!((g.protocol, g.passthrough, g.font.width), (ProtocolType::Sixel, false, 10));
        assert_eq!(auto(Place::Direct, kitty, false).protocol, ProtocolType::Kitty);
        assert_eq!(auto(Place::Direct, plain, false).protocol, ProtocolType::Halfblocks);
        let silent = auto(Place::Direct, None, false);
        assert!(silent.protocol == ProtocolType::Halfblocks && silent.why.contains("did not answer"), "{silent:?}");
        // Sixel without a cell size cannot be laid out.
        let no_cell = auto(Place::Direct, Some(Answer { sixel: true, ..Answer::default() }), false);
        assert!(no_cell.protocol == ProtocolType::Halfblocks && no_cell.why.contains("cell size"), "{no_cell:?}");

        let screen = auto(Place::Screen, xterm, false);
        assert!(screen.protocol == ProtocolType::Halfblocks && screen.why.contains("screen"), "{screen:?}");

        // tmux over SSH (only $TERM says so): passthrough.
        let g = auto(Place::Tmux(None), xterm, false);
        assert_eq!((g.protocol, g.passthrough), (ProtocolType::Sixel, true));
        assert!(g.why.contains("no sixel of its own"), "{g:?}");
        let g = auto(Place::Tmux(None), xterm, true);
        assert_eq!((g.protocol, g.passthrough), (ProtocolType::Sixel, false), "tmux ≥ 3.4 draws sixel itself");
        let g = auto(Place::Tmux(None), kitty, false);
        assert_eq!((g.protocol, g.passthrough), (ProtocolType::Kitty, true));
        let g = auto(Place::Tmux(None), None, false);
        assert_eq!(g.protocol, ProtocolType::Halfblocks);

        // A tmux pane this process can ask: no client yet, then one with sixel.
        let state = |attached, passthrough| Some(TmuxState { version: "3.3a".into(), attached, passthrough });
        let pane = |tmux, outer| {
            choose(GraphicsMode::Auto, &Probe { place: Place::Tmux(None), tmux, outer, ..Probe::default() })
        };
        let g = pane(state(false, true), None);
        assert!(g.protocol == ProtocolType::Halfblocks && g.why.contains("tmux 3.3a has no client attached"), "{g:?}");
        let g = pane(state(true, true), xterm);
        assert_eq!((g.protocol, g.passthrough), (ProtocolType::Sixel, true));
        let g = pane(state(true, false), xterm);
        assert!(g.protocol == ProtocolType::Halfblocks && g.why.contains("allow-passthrough"), "{g:?}");

        // Forced protocols keep tmux's envelope unless tmux draws sixel itself.
        let forced =
            |mode, tmux_sixel| choose(mode, &Probe { place: Place::Tmux(None), tmux_sixel, ..Probe::default() });
        assert!(forced(GraphicsMode::Kitty, false).passthrough);
        assert!(forced(GraphicsMode::Sixel, false).passthrough);
        assert!(!forced(GraphicsMode::Sixel, true).passthrough);
        assert_eq!(forced(GraphicsMode::Sixel, false).why, "--graphics sixel");
    }

    #[test]
    fn palette_colours_are_the_nearest() {
        assert_eq!(palette256([0, 0, 0]), 16);
        assert_eq!(palette256([255, 255, 255]), 231);
        assert_eq!(palette256([255, 0, 0]), 196);
        assert_eq!(palette256([128, 128, 128]), 244);
        assert_eq!(palette256([0, 95, 175]), 25);
    }

    #[test]
    fn the_tmux_envelope_doubles_every_escape() {
        assert_eq!(tmux_wrap("\x1bPq#0\x1b\\"), "\x1bPtmux;\x1b\x1bPq#0\x1b\x1b\\\x1b\\");
    }

    #[test]
    fn tiles_fit_the_area_and_keep_the_aspect() {
        let area = Rect::new(10, 5, 60, 20);
        let g = TileGrid::new(area, 2, 4, 1.0, FontSize::new(10, 20)).expect("room for tiles");
        // A square image at a 1:2 cell takes twice as many columns as rows.
        assert!((i32::from(g.tile.width) - 2 * i32::from(g.tile.height)).abs() <= 1, "{g:?}");
        for r in 0..2 {
            for c in 0..4 {
                let t = g.tile_rect(r, c);
                assert!(t.right() <= area.right() && t.bottom() <= area.bottom(), "{t:?} in {area:?}");
            }
        }
        // A tall, narrow pane wraps one seed's four tiles onto two lines.
        let tall = TileGrid::new(Rect::new(0, 0, 38, 14), 1, 4, 1.0, FontSize::new(10, 20)).expect("room");
        assert_eq!(tall.wrap, 2, "{tall:?}");
        assert!(tall.tile.width > 8, "{tall:?}");
        let t = tall.tile_rect(0, 3);
        assert!(t.bottom() <= 14 && t.right() <= 38, "{t:?}");
        assert!(TileGrid::new(Rect::new(0, 0, 10, 3), 1, 4, 1.0, FontSize::new(10, 20)).is_none());
    }
}

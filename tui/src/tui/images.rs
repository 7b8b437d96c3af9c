//! Preview images: picking the terminal's graphics protocol, laying the
//! preview tiles out, and resizing + encoding them on a worker thread.
//!
//! The protocol is found by querying the terminal (ratatui-image's
//! [`Picker::from_query_stdio_with_options`]), because the environment
//! variables that name a terminal do not survive SSH. Inside tmux the query
//! and the images go through tmux's passthrough. A terminal that does not
//! answer within [`QUERY_TIMEOUT`] gets half-block characters.
//!
//! Resizing and encoding (sixel encoding of a large tile takes tens of
//! milliseconds) happen on one worker thread, like ratatui-image's
//! `ThreadProtocol`: the UI sends [`EncodeJob`]s and collects finished
//! [`Protocol`]s, then renders them with the stateless [`ratatui_image::Image`]
//! widget, so drawing never waits on an encoder. Jobs carry a generation;
//! the worker skips jobs a newer generation has made stale.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use image::{DynamicImage, RgbImage};
use ratatui::layout::{Rect, Size};
use ratatui_image::picker::cap_parser::QueryStdioOptions;
use ratatui_image::picker::{Picker, ProtocolType};
use ratatui_image::protocol::Protocol;
use ratatui_image::{FilterType, FontSize, Resize};

use super::GraphicsMode;

/// How long the terminal gets to answer the capability query.
pub const QUERY_TIMEOUT: Duration = Duration::from_millis(1500);

/// Builds the picker for `mode` (`None` for `--graphics none`).
///
/// Must run after the terminal is in raw mode and on the alternate screen,
/// and before terminal events are read (the answers arrive on stdin).
pub fn pick(mode: GraphicsMode) -> Option<Picker> {
    let query = || {
        let options = QueryStdioOptions { timeout: QUERY_TIMEOUT, ..QueryStdioOptions::default() };
        Picker::from_query_stdio_with_options(options).unwrap_or_else(|_| Picker::halfblocks())
    };
    let forced = |protocol| {
        // The query still gives the font size, which the forced protocol needs.
        let mut picker = query();
        picker.set_protocol_type(protocol);
        Some(picker)
    };
    match mode {
        GraphicsMode::None => None,
        GraphicsMode::Halfblocks => Some(Picker::halfblocks()),
        GraphicsMode::Auto => Some(query()),
        GraphicsMode::Sixel => forced(ProtocolType::Sixel),
        GraphicsMode::Kitty => forced(ProtocolType::Kitty),
        GraphicsMode::Iterm2 => forced(ProtocolType::Iterm2),
    }
}

/// A short name for a protocol, for the header.
pub fn protocol_name(picker: Option<&Picker>) -> &'static str {
    match picker.map(Picker::protocol_type) {
        None => "no graphics",
        Some(ProtocolType::Halfblocks) => "halfblocks",
        Some(ProtocolType::Sixel) => "sixel",
        Some(ProtocolType::Kitty) => "kitty",
        Some(ProtocolType::Iterm2) => "iterm2",
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

impl Encoder {
    /// Starts the worker for `picker`.
    pub fn new(picker: Picker) -> Self {
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
                    let protocol = picker
                        .new_protocol(
                            DynamicImage::ImageRgb8(job.image),
                            job.size,
                            Resize::Scale(Some(FilterType::Triangle)),
                        )
                        .map_err(|e| e.to_string());
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

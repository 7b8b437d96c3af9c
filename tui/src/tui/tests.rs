//! TUI tests: layout snapshots at 80×24 and 200×60, the sixel stream the
//! app writes (decoded here and compared with the preview), the half-block
//! fallback, keys → controls, and the loop against a fake engine.
//!
//! Snapshots live in `snapshots/`; `UPDATE_SNAPSHOTS=1 cargo test -p lsd-tui`
//! rewrites them (then read the diff).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

use crossterm::event::{Event as TermEvent, KeyCode, KeyEvent, KeyModifiers};
use image::{imageops::FilterType, DynamicImage, Rgb, RgbImage};
use lsd_core::demo::DEMO_LABEL;
use lsd_core::engine::events::{Control, Level, Preview, PreviewRow, RunInfo, StepStats, TrainEvent};
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::Color;
use ratatui::Terminal;
use ratatui_image::picker::ProtocolType;

use super::app::{Action, App, Event, Overlay, RunState};
use super::images::{Graphics, DEFAULT_FONT};
use super::{run_loop, GpuMemory, Input, TuiOutcome};
use crate::exit::{Signal, Signals};

// ---------- fixtures ----------

fn info(demo: bool) -> RunInfo {
    RunInfo {
        recipe: "demo".into(),
        prompt: "a face with gray hair".into(),
        mode: "direction".into(),
        device: "cpu".into(),
        total_steps: 500,
        start_step: 0,
        terms: vec!["clip".into(), "id".into(), "seg".into()],
        demo,
        output: PathBuf::from("runs/demo"),
    }
}

fn stats(step: usize) -> StepStats {
    let t = step as f64;
    let clip = 0.3 + 0.6 * (-t / 60.0).exp();
    let id = 0.02 + 0.05 * (1.0 - (-t / 80.0).exp());
    let seg = 0.01 + 0.01 * (t / 7.0).sin().abs();
    StepStats {
        step,
        terms: vec![clip, id, seg],
        total: clip + 0.5 * id + 0.2 * seg,
        grad_norm: 0.05,
        steps_per_sec: 4.0,
        timings: Vec::new(),
    }
}

/// A 64×64 picture, different for every `kind`: gradients and a disc.
fn picture(kind: u32) -> RgbImage {
    RgbImage::from_fn(64, 64, |x, y| {
        let (cx, cy) = (16 + 10 * kind as i32 % 40, 20 + 7 * kind as i32 % 30);
        let d2 = (x as i32 - cx).pow(2) + (y as i32 - cy).pow(2);
        if d2 < 100 {
            Rgb([250, 250, (60 * kind % 256) as u8])
        } else {
            Rgb([(x * 4) as u8, (y * 4) as u8, (40 + 50 * kind) as u8])
        }
    })
}

fn preview(step: usize, alphas: &[f32], seeds: &[u64]) -> Preview {
    let rows = seeds
        .iter()
        .enumerate()
        .map(|(r, &seed)| {
            let base = 10 * r as u32;
            PreviewRow {
                seed,
                label: format!("#{seed}"),
                original: picture(base),
                edits: (0..alphas.len()).map(|i| picture(base + 1 + i as u32)).collect(),
            }
        })
        .collect();
    Preview { step, alphas: alphas.to_vec(), rows }
}

fn halfblocks() -> Option<Graphics> {
    Some(Graphics::halfblocks("a test"))
}

fn sixel_picker() -> Option<Graphics> {
    Some(Graphics {
        protocol: ProtocolType::Sixel,
        font: DEFAULT_FONT,
        passthrough: false,
        palette256: false,
        why: "a test".into(),
    })
}

fn key(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
}

fn code(k: KeyCode) -> KeyEvent {
    KeyEvent::new(k, KeyModifiers::NONE)
}

/// An app 120 steps into a demo run with messages and a preview.
fn busy_app(picker: Option<Graphics>, seeds: &[u64]) -> (App, Receiver<Control>) {
    let (tx, rx) = channel();
    let mut app = App::new(tx, picker, Duration::from_secs(5));
    app.update(Event::Train(TrainEvent::Started(info(true))));
    for s in 1..=120 {
        app.update(Event::Train(TrainEvent::Step(stats(s))));
        if s == 100 {
            app.update(Event::Train(TrainEvent::Preview(preview(100, &[-3.0, 0.0, 3.0], seeds))));
            app.update(Event::Train(TrainEvent::Checkpoint {
                step: 100,
                path: "runs/demo/checkpoint.safetensors".into(),
            }));
        }
    }
    app.update(Event::Train(TrainEvent::Message {
        level: Level::Warn,
        text: "id loss rising; consider a larger id weight".into(),
    }));
    (app, rx)
}

fn draw(app: &mut App, w: u16, h: u16) -> Buffer {
    let mut terminal = Terminal::new(TestBackend::new(w, h)).expect("test backend");
    app.sync_images(Rect::new(0, 0, w, h));
    app.settle_images(Duration::from_secs(20));
    terminal.draw(|f| app.render(f)).expect("draw");
    terminal.backend().buffer().clone()
}

/// The buffer as text, one line per row (escape sequences elided).
fn text(buf: &Buffer) -> String {
    let mut out = String::new();
    for y in 0..buf.area.height {
        let mut line = String::new();
        for x in 0..buf.area.width {
            let s = buf[(x, y)].symbol();
            line.push_str(if s.contains('\x1b') { "▣" } else { s });
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn check_snapshot(name: &str, actual: &str) {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/src/tui/snapshots")).join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() || !path.exists() {
        std::fs::write(&path, actual).expect("write snapshot");
        eprintln!("wrote snapshot {}", path.display());
        return;
    }
    let expected = std::fs::read_to_string(&path).expect("read snapshot");
    assert!(
        expected == actual,
        "snapshot {name} differs (UPDATE_SNAPSHOTS=1 to accept):\n--- expected\n{expected}\n--- actual\n{actual}"
    );
}

// ---------- layout snapshots ----------

#[test]
fn compact_80x24_snapshot() {
    let (mut app, _rx) = busy_app(halfblocks(), &[7]);
    let buf = draw(&mut app, 80, 24);
    let t = text(&buf);
    assert!(t.contains(DEMO_LABEL), "demo label missing:\n{t}");
    for want in [
        "step 120/500",
        "4.0 steps/s",
        "ETA 1m35s",
        "running",
        "Loss",
        "Preview · step 100",
        "original",
        "α -3",
        "α +3",
        "id loss rising",
        "checkpoint at step 100",
        "q quit",
    ] {
        assert!(t.contains(want), "{want:?} missing:\n{t}");
    }
    check_snapshot("compact_80x24.txt", &t);
}

#[test]
fn large_200x60_snapshot() {
    let (mut app, _rx) = busy_app(halfblocks(), &[7, 8]);
    let buf = draw(&mut app, 200, 60);
    let t = text(&buf);
    assert!(t.contains(DEMO_LABEL));
    for want in ["output runs/demo", "saved at step 100", "graphics halfblocks", "#7", "#8", "total"] {
        assert!(t.contains(want), "{want:?} missing:\n{t}");
    }
    // Every tile drew: 2 seeds × 4 columns of images.
    let grid = app.tile_grid(buf.area).expect("tiles fit");
    for r in 0..2 {
        for c in 0..4 {
            let rect = grid.tile_rect(r, c);
            assert!(matches!(buf[(rect.x, rect.y)].bg, Color::Rgb(..)), "tile {r},{c} not drawn");
        }
    }
    // A large screen gives larger tiles than a compact one.
    assert!(grid.tile.width >= 16, "{grid:?}");
    check_snapshot("large_200x60.txt", &t);
}

#[test]
fn overlays_and_states_draw() {
    let (mut app, _rx) = busy_app(halfblocks(), &[7]);
    app.update(Event::Key(key('?')));
    let t = text(&draw(&mut app, 80, 24));
    assert!(t.contains("log-scale loss axis"), "{t}");
    app.update(Event::Key(key('x'))); // any key closes the help
    app.update(Event::Key(key('q')));
    assert_eq!(app.overlay, Overlay::ConfirmQuit);
    let t = text(&draw(&mut app, 80, 24));
    assert!(t.contains("Save the run (checkpoint and outputs) and quit?"), "{t}");
    check_snapshot("confirm_quit_80x24.txt", &t);
    app.update(Event::Key(code(KeyCode::Esc)));
    app.update(Event::Key(key('l')));
    let t = text(&draw(&mut app, 80, 24));
    assert!(t.contains("· log"), "{t}");
    app.update(Event::Train(TrainEvent::Failed {
        error: "loss became NaN at step 121; lower the learning rate".into(),
    }));
    let t = text(&draw(&mut app, 80, 24));
    assert!(t.contains("failed") && t.contains("lower the learning rate"), "{t}");
    // A long prompt is cut so the state stays in view.
    let mut long = info(true);
    long.prompt = "a photo of a person with long, curly, silver-gray hair in the evening light".into();
    app.update(Event::Train(TrainEvent::Started(long)));
    let t = text(&draw(&mut app, 80, 24));
    let first = t.lines().next().unwrap_or_default();
    assert!(first.contains("running") && first.contains('…'), "{first}");
    // Tiny terminals get a message, not a panic.
    let t = text(&draw(&mut app, 40, 10));
    assert!(t.contains("too small"), "{t}");
}

/// A warm-up before step 1 (first-use kernel compilation on a GPU) shows
/// as its own state, and step 1 ends it.
#[test]
fn a_warm_up_shows_until_the_first_step() {
    let (tx, _rx) = channel();
    let mut app = App::new(tx, halfblocks(), Duration::from_secs(5));
    app.update(Event::Train(TrainEvent::Started(info(false))));
    app.update(Event::Train(TrainEvent::WarmUp { what: "kernel compilation".into() }));
    assert!(matches!(app.state, RunState::WarmUp(_)));
    let t = text(&draw(&mut app, 80, 24));
    let top: Vec<&str> = t.lines().take(2).collect();
    assert!(top[0].contains("warming up"), "{t}");
    assert!(top[1].contains("warming up (kernel compilation)"), "{t}");
    app.update(Event::Train(TrainEvent::Step(stats(1))));
    assert_eq!(app.state, RunState::Running);
    let t = text(&draw(&mut app, 80, 24));
    assert!(!t.contains("warming up") && t.lines().next().unwrap_or_default().contains("running"), "{t}");
}

#[test]
fn no_graphics_mode_lists_the_preview() {
    let (mut app, _rx) = busy_app(None, &[7]);
    let t = text(&draw(&mut app, 80, 24));
    assert!(t.contains("graphics off") && t.contains("-3 0 +3"), "{t}");
}

// ---------- sixel ----------

/// A decoded sixel image: `None` where no sixel set a pixel.
struct Decoded {
    width: usize,
    height: usize,
    pixels: Vec<Option<[u8; 3]>>,
}

/// Decodes the first DCS sixel sequence in `s` (colour model 2, RGB %).
fn decode_sixel(s: &str) -> Decoded {
    let start = s.find("\x1bP").expect("a DCS introducer");
    let body = &s[start + 2..];
    let q = body.find('q').expect("the sixel 'q' final byte");
    let params = &body[..q];
    assert!(params.chars().all(|c| c.is_ascii_digit() || c == ';'), "bad DCS parameters {params:?}");
    let end = body.find("\x1b\\").expect("a string terminator");
    let data: Vec<char> = body[q + 1..end].chars().collect();
    let mut palette = vec![[0u8; 3]; 256];
    let (mut colour, mut x, mut y) = (0usize, 0usize, 0usize);
    let (mut width, mut height) = (0usize, 0usize);
    let mut pixels: Vec<Option<[u8; 3]>> = Vec::new();
    let mut i = 0;
    let number = |i: &mut usize| {
        let mut n = 0usize;
        while *i < data.len() && data[*i].is_ascii_digit() {
            n = n * 10 + data[*i].to_digit(10).unwrap_or(0) as usize;
            *i += 1;
        }
        n
    };
    let numbers = |i: &mut usize| {
        let mut v = vec![number(i)];
        while *i < data.len() && data[*i] == ';' {
            *i += 1;
            v.push(number(i));
        }
        v
    };
    while i < data.len() {
        let c = data[i];
        i += 1;
        let mut repeat = 1;
        let sixel = match c {
            '"' => {
                let v = numbers(&mut i);
                assert!(v.len() == 4, "raster attributes {v:?}");
                (width, height) = (v[2], v[3]);
                pixels = vec![None; width * height];
                continue;
            }
            '#' => {
                let v = numbers(&mut i);
                colour = v[0];
                if v.len() > 1 {
                    assert_eq!(v, [v[0], 2, v[2], v[3], v[4]], "colour model must be RGB");
                    let pct = |p: usize| ((p * 255 + 50) / 100) as u8;
                    palette[colour] = [pct(v[2]), pct(v[3]), pct(v[4])];
                }
                continue;
            }
            '$' => {
                x = 0;
                continue;
            }
            '-' => {
                x = 0;
                y += 6;
                continue;
            }
            '!' => {
                repeat = number(&mut i);
                let c = data[i];
                i += 1;
                c
            }
            '?'..='~' => c,
            other => panic!("unexpected {other:?} in sixel data"),
        };
        let bits = sixel as u32 - 63;
        for _ in 0..repeat {
            for b in 0..6 {
                if bits & (1 << b) != 0 && x < width && y + b < height {
                    pixels[(y + b) * width + x] = Some(palette[colour]);
                }
            }
            x += 1;
        }
    }
    assert!(width > 0 && height > 0, "no raster attributes");
    Decoded { width, height, pixels }
}

/// Mean absolute error per channel over 4×4 blocks (sixel output is
/// dithered, so single pixels differ; block means should not).
fn block_error(d: &Decoded, want: &RgbImage) -> f64 {
    let (w, h) = want.dimensions();
    let (mut sum, mut n) = (0.0, 0.0);
    for by in (0..h - 3).step_by(4) {
        for bx in (0..w - 3).step_by(4) {
            for ch in 0..3 {
                let (mut a, mut b) = (0.0, 0.0);
                for y in by..by + 4 {
                    for x in bx..bx + 4 {
                        let p = d.pixels[y as usize * d.width + x as usize].expect("every image pixel set");
                        a += f64::from(p[ch]);
                        b += f64::from(want.get_pixel(x, y)[ch]);
                    }
                }
                sum += (a - b).abs() / 16.0;
                n += 1.0;
            }
        }
    }
    sum / n
}

#[test]
fn sixel_stream_decodes_to_the_preview() {
    let (mut app, _rx) = busy_app(sixel_picker(), &[7]);
    let buf = draw(&mut app, 200, 60);
    let grid = app.tile_grid(buf.area).expect("tiles fit");
    let p = app.previews.current.clone().expect("a preview");
    let images: Vec<&RgbImage> = std::iter::once(&p.rows[0].original).chain(&p.rows[0].edits).collect();
    let (box_w, box_h) = (u32::from(grid.tile.width) * 10, u32::from(grid.tile.height) * 20);
    for (c, image) in images.iter().enumerate() {
        let rect = grid.tile_rect(0, c);
        let cell = buf[(rect.x, rect.y)].symbol();
        assert!(cell.contains("\x1bP"), "tile {c}: no sixel at {rect:?}");
        let d = decode_sixel(cell);
        assert_eq!((d.width as u32, d.height as u32), (box_w, box_h), "tile {c}: sixel size");
        let want = DynamicImage::ImageRgb8((*image).clone()).resize(box_w, box_h, FilterType::Triangle).to_rgb8();
        let err = block_error(&d, &want);
        eprintln!(
            "tile {c}: {}×{} sixel, image {}×{}, block error {err:.2}",
            d.width,
            d.height,
            want.width(),
            want.height()
        );
        assert!(err < 4.0, "tile {c}: sixel differs from the preview (block error {err:.2})");
        // The check can fail: another tile's picture is far off.
        let other = DynamicImage::ImageRgb8(images[(c + 1) % images.len()].clone())
            .resize(box_w, box_h, FilterType::Triangle)
            .to_rgb8();
        assert!(block_error(&d, &other) > 4.0 * err.max(1.0), "tile {c}: a wrong picture also matches");
    }
}

// ---------- half blocks ----------

#[test]
fn halfblocks_render_the_preview_colours() {
    let (mut app, _rx) = busy_app(halfblocks(), &[7]);
    let buf = draw(&mut app, 80, 24);
    let grid = app.tile_grid(buf.area).expect("tiles fit");
    let p = app.previews.current.clone().expect("a preview");
    let (w, h) = (u32::from(grid.tile.width), u32::from(grid.tile.height));
    // What half blocks show: the image fitted to the tile's pixels, then one
    // pixel per cell column and two per row.
    let fitted = DynamicImage::ImageRgb8(p.rows[0].original.clone()).resize(w * 10, h * 20, FilterType::Triangle);
    let mut canvas = image::RgbaImage::new(w * 10, h * 20);
    image::imageops::overlay(&mut canvas, &fitted.to_rgba8(), 0, 0);
    let small = DynamicImage::ImageRgba8(canvas).resize_exact(w, h * 2, FilterType::Triangle).to_rgb8();
    let rect = grid.tile_rect(0, 0);
    let (mut err, mut n) = (0.0, 0.0);
    for y in 0..h {
        for x in 0..w {
            let cell = &buf[(rect.x + x as u16, rect.y + y as u16)];
            let (Color::Rgb(fr, fg, fb), Color::Rgb(br, bg, bb)) = (cell.fg, cell.bg) else {
                panic!("cell {x},{y} is not a 24-bit half block: {cell:?}")
            };
            // '▀': fg is the top pixel; '▄': fg is the bottom one.
            let (top, bottom) = match cell.symbol() {
                "▄" => ([br, bg, bb], [fr, fg, fb]),
                "▀" | " " => ([fr, fg, fb], [br, bg, bb]),
                s => panic!("unexpected half-block symbol {s:?}"),
            };
            for (got, want) in [(top, small.get_pixel(x, 2 * y)), (bottom, small.get_pixel(x, 2 * y + 1))] {
                if cell.symbol() == " " && got != want.0 {
                    continue; // a space shows its background only
                }
                for ch in 0..3 {
                    err += (f64::from(got[ch]) - f64::from(want[ch])).abs();
                    n += 1.0;
                }
            }
        }
    }
    let err = err / n;
    assert!(err < 3.0, "half blocks differ from the preview: mean error {err:.2}");
}

// ---------- keys → controls ----------

#[test]
fn keys_send_controls() {
    let (mut app, rx) = busy_app(halfblocks(), &[7]);
    let drain = |rx: &Receiver<Control>| rx.try_iter().collect::<Vec<_>>();
    app.update(Event::Key(key(' ')));
    assert_eq!(drain(&rx), [Control::Pause]);
    app.update(Event::Train(TrainEvent::Paused(true)));
    assert_eq!(app.state, RunState::Paused);
    app.update(Event::Key(key(' ')));
    assert_eq!(drain(&rx), [Control::Resume]);
    app.update(Event::Key(key('s')));
    assert_eq!(drain(&rx), [Control::SaveNow]);
    app.update(Event::Key(code(KeyCode::Right)));
    assert_eq!(drain(&rx), [Control::SetPreviewAlphas(vec![-4.5, 0.0, 4.5])]);
    app.update(Event::Key(code(KeyCode::Left)));
    app.update(Event::Key(code(KeyCode::Left)));
    assert_eq!(
        drain(&rx),
        [Control::SetPreviewAlphas(vec![-3.0, 0.0, 3.0]), Control::SetPreviewAlphas(vec![-2.25, 0.0, 2.25])]
    );
    assert!(!app.log_scale);
    app.update(Event::Key(key('l')));
    assert!(app.log_scale);
    // Unsaved steps: q asks; y stops the engine and waits for it.
    assert!(matches!(app.update(Event::Key(key('q'))), Action::Continue));
    assert_eq!(app.overlay, Overlay::ConfirmQuit);
    assert!(matches!(app.update(Event::Key(key('y'))), Action::Continue));
    assert_eq!(drain(&rx), [Control::Stop]);
    app.update(Event::Train(TrainEvent::Checkpoint { step: 120, path: "runs/demo/checkpoint.safetensors".into() }));
    let end =
        app.update(Event::Train(TrainEvent::Finished { output: "runs/demo".into(), elapsed: Duration::from_secs(30) }));
    assert!(
        matches!(end, Action::Exit(TuiOutcome::Finished { ref output, .. }) if output == &PathBuf::from("runs/demo")),
        "{end:?}"
    );
}

#[test]
fn quit_asks_while_running_and_not_after_the_end() {
    // Checkpointed up to the last step: still asks, since the outputs are not written.
    let (mut app, rx) = busy_app(halfblocks(), &[7]);
    app.update(Event::Train(TrainEvent::Checkpoint { step: 120, path: "c".into() }));
    assert!(matches!(app.update(Event::Key(key('q'))), Action::Continue));
    assert_eq!(app.overlay, Overlay::ConfirmQuit);
    let a = app.update(Event::Key(key('n')));
    assert!(matches!(a, Action::Exit(TuiOutcome::Quit { saved: true })), "{a:?}");
    assert!(rx.try_recv().is_err(), "n sends nothing");
    let (mut app, _rx) = busy_app(halfblocks(), &[7]);
    app.update(Event::Key(key('q')));
    let a = app.update(Event::Key(key('n')));
    assert!(matches!(a, Action::Exit(TuiOutcome::Quit { saved: false })), "{a:?}");
    // After the end, q leaves at once.
    let (mut app, _rx) = busy_app(halfblocks(), &[7]);
    app.update(Event::Train(TrainEvent::Finished { output: "runs/demo".into(), elapsed: Duration::from_secs(9) }));
    let a = app.update(Event::Key(key('q')));
    assert!(matches!(a, Action::Exit(TuiOutcome::Finished { .. })), "{a:?}");
}

// ---------- the loop against a fake engine ----------

/// Keys from a script, one per poll, after the engine has had time to run.
struct Script(Vec<(Duration, TermEvent)>);

impl Input for Script {
    fn poll(&mut self, timeout: Duration) -> color_eyre::Result<Option<TermEvent>> {
        if let Some((delay, _)) = self.0.first() {
            if *delay > Duration::ZERO {
                let d = (*delay).min(timeout.max(Duration::from_millis(1)));
                std::thread::sleep(d);
                self.0[0].0 -= d;
                return Ok(None);
            }
            return Ok(Some(self.0.remove(0).1));
        }
        std::thread::sleep(timeout);
        Ok(None)
    }
}

/// A fake engine: steps until paused, answers controls like the real one.
/// Returns every control it received.
fn fake_engine(
    events: Sender<TrainEvent>,
    control: Receiver<Control>,
    answer_stop: bool,
) -> std::thread::JoinHandle<Vec<Control>> {
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let _ = events.send(TrainEvent::Started(info(true)));
        let _ = events.send(TrainEvent::WarmUp { what: "compiling kernels".into() });
        let (mut step, mut paused) = (0, false);
        loop {
            while let Ok(c) = control.try_recv() {
                seen.push(c.clone());
                match c {
                    Control::Pause => {
                        paused = true;
                        let _ = events.send(TrainEvent::Paused(true));
                    }
                    Control::Resume => {
                        paused = false;
                        let _ = events.send(TrainEvent::Paused(false));
                    }
                    Control::Stop if answer_stop => {
                        let _ = events
                            .send(TrainEvent::Checkpoint { step, path: "runs/demo/checkpoint.safetensors".into() });
                        let _ = events
                            .send(TrainEvent::Finished { output: "runs/demo".into(), elapsed: Duration::from_secs(1) });
                        return seen;
                    }
                    Control::Stop => return seen, // silent: dropped channel
                    Control::SetPreviewAlphas(a) => {
                        let _ = events.send(TrainEvent::Preview(preview(step, &a, &[1])));
                    }
                    Control::SaveNow => {
                        let _ = events.send(TrainEvent::Checkpoint { step, path: "c".into() });
                    }
                }
            }
            if !paused && step < 100_000 {
                step += 1;
                if events.send(TrainEvent::Step(stats(step))).is_err() {
                    return seen;
                }
                if step % 50 == 1 {
                    let _ = events.send(TrainEvent::Preview(preview(step, &[-3.0, 0.0, 3.0], &[1])));
                }
            }
            std::thread::sleep(Duration::from_millis(FAKE_STEP_MS.load(std::sync::atomic::Ordering::Relaxed)));
        }
    })
}

/// Milliseconds between fake steps.
static FAKE_STEP_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

#[test]
fn loop_pauses_saves_and_quits_against_a_fake_engine() {
    let (ev_tx, ev_rx) = channel();
    let (c_tx, c_rx) = channel();
    let engine = fake_engine(ev_tx, c_rx, true);
    let mut app = App::new(c_tx, halfblocks(), Duration::from_secs(5));
    let ms = Duration::from_millis;
    let mut input = Script(vec![
        (ms(300), TermEvent::Key(key(' '))),
        (ms(300), TermEvent::Key(code(KeyCode::Right))),
        (ms(200), TermEvent::Key(key('q'))),
        (ms(50), TermEvent::Key(key('y'))),
    ]);
    let mut terminal = Terminal::new(TestBackend::new(80, 24)).expect("backend");
    let outcome =
        run_loop(&mut terminal, &mut app, &ev_rx, &mut input, &Signals::none(), &mut GpuMemory::new()).expect("loop");
    assert!(
        matches!(outcome, TuiOutcome::Finished { ref output, .. } if output == &PathBuf::from("runs/demo")),
        "{outcome:?}"
    );
    let seen = engine.join().expect("engine thread");
    assert_eq!(seen, [Control::Pause, Control::SetPreviewAlphas(vec![-4.5, 0.0, 4.5]), Control::Stop]);
    assert!(app.step() > 10, "the run advanced: step {}", app.step());
    let t = text(terminal.backend().buffer());
    assert!(t.contains("paused") || t.contains("saving"), "{t}");
}

#[test]
fn a_signal_stops_and_saves_the_run() {
    let (ev_tx, ev_rx) = channel();
    let (c_tx, c_rx) = channel();
    let engine = fake_engine(ev_tx, c_rx, true);
    let mut app = App::new(c_tx, halfblocks(), Duration::from_secs(5));
    let flag = Arc::new(AtomicBool::new(false));
    let f = Arc::clone(&flag);
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        f.store(true, std::sync::atomic::Ordering::Release);
    });
    let mut terminal = Terminal::new(TestBackend::new(80, 24)).expect("backend");
    let mut input = Script(vec![]);
    let outcome = run_loop(
        &mut terminal,
        &mut app,
        &ev_rx,
        &mut input,
        &Signals::manual(Signal::Hup, flag),
        &mut GpuMemory::new(),
    )
    .expect("loop");
    assert!(matches!(outcome, TuiOutcome::Signalled { signal: Signal::Hup, saved: true, .. }), "{outcome:?}");
    assert_eq!(engine.join().expect("engine thread"), [Control::Stop]);
}

#[test]
fn a_silent_engine_is_not_waited_on_forever() {
    let (ev_tx, ev_rx) = channel();
    let (c_tx, c_rx) = channel();
    // The engine ends without Finished; keep its sender alive so the loop must time out.
    let keep = ev_tx.clone();
    let engine = fake_engine(ev_tx, c_rx, false);
    let mut app = App::new(c_tx, halfblocks(), Duration::from_millis(300));
    let flag = Arc::new(AtomicBool::new(true));
    let mut terminal = Terminal::new(TestBackend::new(80, 24)).expect("backend");
    let t0 = std::time::Instant::now();
    let outcome = run_loop(
        &mut terminal,
        &mut app,
        &ev_rx,
        &mut Script(vec![]),
        &Signals::manual(Signal::Term, flag),
        &mut GpuMemory::new(),
    )
    .expect("loop");
    assert!(matches!(outcome, TuiOutcome::Signalled { signal: Signal::Term, .. }), "{outcome:?}");
    assert!(t0.elapsed() < Duration::from_secs(3));
    engine.join().expect("engine thread");
    drop(keep);
}

// ---------- remote terminals: tmux passthrough, drawing errors, hang-ups (issue 14) ----------

/// The regression of issue 14's second report: ratatui-image's tmux sixel
/// envelope left the sixel's final escape undoubled, so tmux ended its
/// envelope early and every tile stayed blank in xterm. In ours every
/// escape inside is doubled, and unwrapping gives back the plain sixel.
#[test]
fn issue_14_sixel_through_tmux_passthrough_is_one_whole_envelope() {
    let mut g = sixel_picker().expect("graphics");
    let image = DynamicImage::ImageRgb8(picture(3));
    let plain = match g.encode(image.clone(), ratatui::layout::Size::new(12, 6)).expect("encodes") {
        ratatui_image::protocol::Protocol::Sixel(s) => s.data,
        _ => panic!("not sixel"),
    };
    g.passthrough = true;
    let wrapped = match g.encode(image, ratatui::layout::Size::new(12, 6)).expect("encodes") {
        ratatui_image::protocol::Protocol::Sixel(s) => s.data,
        _ => panic!("not sixel"),
    };
    let inner = wrapped.strip_prefix("\x1bPtmux;").and_then(|w| w.strip_suffix("\x1b\\")).expect("one envelope");
    // No lone escape inside: tmux would end the envelope there.
    assert!(!inner.replace("\x1b\x1b", "").contains('\x1b'), "an undoubled escape inside the envelope");
    assert_eq!(inner.replace("\x1b\x1b", "\x1b"), plain);
    assert!(plain.ends_with("\x1b\\"), "the sixel keeps its terminator");
}

/// A backend whose draws fail with `error()` the first `fails` times.
struct Failing {
    inner: TestBackend,
    fails: usize,
    error: fn() -> std::io::Error,
}

impl ratatui::backend::Backend for Failing {
    type Error = std::io::Error;
    fn draw<'a, I: Iterator<Item = (u16, u16, &'a ratatui::buffer::Cell)>>(
        &mut self,
        content: I,
    ) -> std::io::Result<()> {
        if self.fails > 0 {
            self.fails -= 1;
            return Err((self.error)());
        }
        let Ok(()) = self.inner.draw(content);
        Ok(())
    }
    fn hide_cursor(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn show_cursor(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn get_cursor_position(&mut self) -> std::io::Result<ratatui::layout::Position> {
        Ok(ratatui::layout::Position::ORIGIN)
    }
    fn set_cursor_position<P: Into<ratatui::layout::Position>>(&mut self, _: P) -> std::io::Result<()> {
        Ok(())
    }
    fn clear(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn clear_region(&mut self, _: ratatui::backend::ClearType) -> std::io::Result<()> {
        Ok(())
    }
    fn size(&self) -> std::io::Result<ratatui::layout::Size> {
        let Ok(s) = self.inner.size();
        Ok(s)
    }
    fn window_size(&mut self) -> std::io::Result<ratatui::backend::WindowSize> {
        let Ok(s) = self.inner.window_size();
        Ok(s)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn failing(fails: usize, error: fn() -> std::io::Error) -> Terminal<Failing> {
    Terminal::new(Failing { inner: TestBackend::new(80, 24), fails, error }).expect("backend")
}

#[test]
fn drawing_errors_draw_less_and_training_goes_on() {
    let (ev_tx, ev_rx) = channel();
    let (c_tx, c_rx) = channel();
    let engine = fake_engine(ev_tx, c_rx, true);
    let mut app = App::new(c_tx, sixel_picker(), Duration::from_secs(5));
    let ms = Duration::from_millis;
    let mut input = Script(vec![(ms(800), TermEvent::Key(key('q'))), (ms(50), TermEvent::Key(key('y')))]);
    let mut terminal = failing(2, || std::io::Error::other("sixel too large for the terminal"));
    let outcome =
        run_loop(&mut terminal, &mut app, &ev_rx, &mut input, &Signals::none(), &mut GpuMemory::new()).expect("loop");
    assert!(matches!(outcome, TuiOutcome::Finished { .. }), "{outcome:?}");
    engine.join().expect("engine thread");
    assert_eq!(app.fallback, super::app::Fallback::NoImages);
    assert!(app.previews.graphics().is_none());
    assert!(app.step() > 10, "training stopped: step {}", app.step());
    let log: Vec<&str> = app.messages.iter().map(|m| m.text.as_str()).collect();
    assert!(log.iter().any(|m| m.contains("drawing failed: sixel too large") && m.contains("fewer images")), "{log:?}");
    assert!(log.iter().any(|m| m.contains("no images")), "{log:?}");
    let t = text(terminal.backend().inner.buffer());
    assert!(t.contains("images off after drawing errors"), "{t}");
}

#[test]
fn a_terminal_that_keeps_failing_hands_the_run_to_the_headless_view() {
    let (ev_tx, ev_rx) = channel();
    let (c_tx, c_rx) = channel();
    let _engine = fake_engine(ev_tx, c_rx, true);
    let mut app = App::new(c_tx, halfblocks(), Duration::from_secs(5));
    let mut terminal = failing(usize::MAX, || std::io::Error::from(std::io::ErrorKind::WouldBlock));
    let outcome =
        run_loop(&mut terminal, &mut app, &ev_rx, &mut Script(vec![]), &Signals::none(), &mut GpuMemory::new())
            .expect("loop");
    assert!(matches!(outcome, TuiOutcome::Headless), "{outcome:?}");
    assert_eq!(app.fallback, super::app::Fallback::Headless);
    assert_eq!(app.problems.len(), 3, "{:?}", app.problems);
    drop(app); // closes the control channel: the fake engine ends
}

#[test]
fn a_hang_up_while_drawing_saves_and_ends_as_sighup() {
    let (ev_tx, ev_rx) = channel();
    let (c_tx, c_rx) = channel();
    let engine = fake_engine(ev_tx, c_rx, true);
    let mut app = App::new(c_tx, halfblocks(), Duration::from_secs(5));
    let mut terminal = failing(usize::MAX, || std::io::Error::from_raw_os_error(libc::EIO));
    let outcome =
        run_loop(&mut terminal, &mut app, &ev_rx, &mut Script(vec![]), &Signals::none(), &mut GpuMemory::new())
            .expect("loop");
    assert!(matches!(outcome, TuiOutcome::Signalled { signal: Signal::Hup, saved: true }), "{outcome:?}");
    assert_eq!(engine.join().expect("engine thread"), [Control::Stop]);
    assert_eq!(app.fallback, super::app::Fallback::Full, "a hang-up is not a drawing error");
}

/// Keys that fail once with a non-hang-up error, then work.
struct FlakyKeys {
    failed: bool,
    restarts: usize,
    inner: Script,
}

impl Input for FlakyKeys {
    fn poll(&mut self, timeout: Duration) -> color_eyre::Result<Option<TermEvent>> {
        if !self.failed {
            self.failed = true;
            return Err(color_eyre::eyre::eyre!("the key reader hit a bad byte"));
        }
        self.inner.poll(timeout)
    }
    fn restart(&mut self) {
        self.restarts += 1;
    }
}

#[test]
fn a_key_reader_error_is_shown_and_the_reader_restarted() {
    let (ev_tx, ev_rx) = channel();
    let (c_tx, c_rx) = channel();
    let engine = fake_engine(ev_tx, c_rx, true);
    let mut app = App::new(c_tx, halfblocks(), Duration::from_secs(5));
    let ms = Duration::from_millis;
    let mut input = FlakyKeys {
        failed: false,
        restarts: 0,
        inner: Script(vec![(ms(300), TermEvent::Key(key('q'))), (ms(50), TermEvent::Key(key('y')))]),
    };
    let mut terminal = Terminal::new(TestBackend::new(80, 24)).expect("backend");
    let outcome =
        run_loop(&mut terminal, &mut app, &ev_rx, &mut input, &Signals::none(), &mut GpuMemory::new()).expect("loop");
    assert!(matches!(outcome, TuiOutcome::Finished { .. }), "{outcome:?}");
    engine.join().expect("engine thread");
    assert_eq!(input.restarts, 1);
    assert!(app.messages.iter().any(|m| m.text.contains("reading keys failed: the key reader hit a bad byte")));
}

#[test]
fn tui_log_times_are_utc_dates() {
    assert_eq!(super::utc(0), "1970-01-01 00:00:00");
    assert_eq!(super::utc(951_782_400 + 3661), "2000-02-29 01:01:01");
    assert_eq!(super::utc(1_735_689_599), "2024-12-31 23:59:59");
}

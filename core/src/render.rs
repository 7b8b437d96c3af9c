//! Terminal-free PNG drawing for labelled outputs.
//!
//! The training engine (preview strips, loss plots) and the report's
//! experiments (similarity heat map, generalisation plot, ablation grid) write
//! pictures that must be readable on their own, on a machine with no fonts
//! installed and no display. Everything here draws into an [`RgbImage`] with
//! the public-domain 8×8 bitmap font of the `font8x8` crate, scaled by an
//! integer factor, so the output is the same on every platform.
//!
//! Nothing here panics on odd data: non-finite values are skipped in plots,
//! shown as `NaN` in heat maps, and mapped to black in images.

use std::path::Path;

use candle_core::{DType, Tensor};
use image::{Rgb, RgbImage};

use crate::{Error, Result};

/// Height and width in pixels of one glyph at scale 1.
pub const GLYPH: u32 = 8;

/// Black, for text and axes.
pub const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
/// White, the background of every figure.
pub const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
/// Gray, for grid lines and missing values.
pub const GRAY: Rgb<u8> = Rgb([160, 160, 160]);
/// Dark red, for the demo-model footer and warnings.
pub const WARN: Rgb<u8> = Rgb([180, 20, 20]);

/// Distinct series colours (the "tab10" palette), in order of use.
pub const PALETTE: [Rgb<u8>; 8] = [
    Rgb([31, 119, 180]),
    Rgb([255, 127, 14]),
    Rgb([44, 160, 44]),
    Rgb([214, 39, 40]),
    Rgb([148, 103, 189]),
    Rgb([140, 86, 75]),
    Rgb([227, 119, 194]),
    Rgb([127, 127, 127]),
];

/// Space around and between figure parts, in pixels.
const PAD: u32 = 8;

/// Converts a generator image with values in `[-1, 1]` to 8-bit RGB.
///
/// Accepts `[3, H, W]` or `[1, 3, H, W]` of any float dtype on any device.
/// Values are clamped to `[-1, 1]` and mapped linearly to `0..=255`
/// (`-1 → 0`, `1 → 255`); NaN maps to 0.
pub fn tensor_to_rgb(img: &Tensor) -> Result<RgbImage> {
    let dims = img.dims().to_vec();
    let img = match dims.as_slice() {
        [3, _, _] => img.clone(),
        [1, 3, _, _] => img.squeeze(0)?,
        _ => {
            return Err(Error::BadShape {
                name: "image".into(),
                expected: "[3, H, W] or [1, 3, H, W]".into(),
                got: dims,
            })
        }
    };
    let (_, h, w) = img.dims3()?;
    let data = img.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let plane = h * w;
    let to_u8 = |v: f32| -> u8 {
        if v.is_nan() {
            0
        } else {
            ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8
        }
    };
    let mut out = RgbImage::new(w as u32, h as u32);
    for (i, px) in out.pixels_mut().enumerate() {
        *px = Rgb([to_u8(data[i]), to_u8(data[plane + i]), to_u8(data[2 * plane + i])]);
    }
    Ok(out)
}

/// The 8×8 bitmap of a character: ASCII, Latin-1 and Greek (so `α`, `λ`,
/// `Δ`, `±`, `²` work); anything else is drawn as `?`.
fn glyph(c: char) -> [u8; 8] {
    use font8x8::legacy::{BASIC_LEGACY, GREEK_LEGACY, LATIN_LEGACY};
    let c = match c {
        '−' | '–' | '—' => '-',
        '…' => '~',
        '·' => '\u{b7}',
        _ => c,
    };
    let u = c as u32;
    match u {
        0x20..=0x7e => BASIC_LEGACY[u as usize],
        0xa0..=0xff => LATIN_LEGACY[(u - 0xa0) as usize],
        0x390..=0x3c9 => GREEK_LEGACY[(u - 0x390) as usize],
        _ => BASIC_LEGACY[b'?' as usize],
    }
}

/// Width in pixels of `text` drawn at `scale` (the widest line if it has
/// several).
pub fn text_width(text: &str, scale: u32) -> u32 {
    let chars = text.split('\n').map(|l| l.chars().count()).max().unwrap_or(0) as u32;
    chars * GLYPH * scale.max(1)
}

/// Height in pixels of `text` drawn at `scale` (one glyph row per line).
pub fn text_height(text: &str, scale: u32) -> u32 {
    text.split('\n').count() as u32 * GLYPH * scale.max(1)
}

/// Draws `text` with its top-left corner at `(x, y)`, each font pixel
/// becoming a `scale × scale` square. `\n` starts a new line. Pixels outside
/// the image are skipped, so text may run off any edge.
pub fn draw_text(img: &mut RgbImage, x: i32, y: i32, text: &str, color: Rgb<u8>, scale: u32) {
    let s = scale.max(1) as i32;
    let g = GLYPH as i32;
    for (line_no, line) in text.split('\n').enumerate() {
        let y0 = y + line_no as i32 * g * s;
        for (i, c) in line.chars().enumerate() {
            let x0 = x + i as i32 * g * s;
            for (row, bits) in glyph(c).iter().enumerate() {
                for col in 0..8 {
                    // font8x8 stores the leftmost pixel in bit 0.
                    if bits & (1 << col) != 0 {
                        fill_rect(
                            img,
                            x0 + col * s,
                            y0 + row as i32 * s,
                            s as u32,
                            s as u32,
                            color,
                        );
                    }
                }
            }
        }
    }
}

/// Fills a rectangle, clipped to the image.
pub fn fill_rect(img: &mut RgbImage, x: i32, y: i32, w: u32, h: u32, color: Rgb<u8>) {
    let (iw, ih) = (img.width() as i64, img.height() as i64);
    let x0 = (x as i64).clamp(0, iw);
    let y0 = (y as i64).clamp(0, ih);
    let x1 = (x as i64 + w as i64).clamp(0, iw);
    let y1 = (y as i64 + h as i64).clamp(0, ih);
    for yy in y0..y1 {
        for xx in x0..x1 {
            img.put_pixel(xx as u32, yy as u32, color);
        }
    }
}

/// Mixes `color` into the pixel at `(x, y)` with opacity `a` in `[0, 1]`,
/// if it is inside the image.
fn blend(img: &mut RgbImage, x: i32, y: i32, color: Rgb<u8>, a: f32) {
    if x < 0 || y < 0 || x as u32 >= img.width() || y as u32 >= img.height() {
        return;
    }
    let p = img.get_pixel_mut(x as u32, y as u32);
    for k in 0..3 {
        p.0[k] = (p.0[k] as f32 * (1.0 - a) + color.0[k] as f32 * a).round() as u8;
    }
}

/// Draws a line of the given thickness (Bresenham, square pen), clipped to
/// the image.
pub fn draw_line(
    img: &mut RgbImage,
    from: (i32, i32),
    to: (i32, i32),
    color: Rgb<u8>,
    thickness: u32,
) {
    let (mut x0, mut y0) = from;
    let (x1, y1) = to;
    let dx = (x1 - x0).abs();
    let dy = -(y1 - y0).abs();
    let sx = if x0 < x1 { 1 } else { -1 };
    let sy = if y0 < y1 { 1 } else { -1 };
    let mut err = dx + dy;
    let t = thickness.max(1);
    let off = (t as i32 - 1) / 2;
    // Bounded by the line's length in pixels; guards against huge inputs.
    for _ in 0..=(dx - dy).min(1 << 16) {
        fill_rect(img, x0 - off, y0 - off, t, t, color);
        if x0 == x1 && y0 == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x0 += sx;
        }
        if e2 <= dx {
            err += dx;
            y0 += sy;
        }
    }
}

/// Splits `text` into lines of at most `max_chars` characters, breaking at
/// spaces where possible and inside words only when a word is too long.
pub fn wrap(text: &str, max_chars: usize) -> Vec<String> {
    let max = max_chars.max(1);
    let mut lines = Vec::new();
    let mut cur = String::new();
    for word in text.split_whitespace() {
        let mut word: Vec<char> = word.chars().collect();
        loop {
            let cur_len = cur.chars().count();
            let sep = usize::from(cur_len > 0);
            if cur_len + sep + word.len() <= max {
                if sep == 1 {
                    cur.push(' ');
                }
                cur.extend(word.iter());
                break;
            }
            if cur_len > 0 {
                lines.push(std::mem::take(&mut cur));
                continue;
            }
            let rest = word.split_off(max);
            lines.push(word.iter().collect());
            word = rest;
        }
    }
    if !cur.is_empty() || lines.is_empty() {
        lines.push(cur);
    }
    lines
}

/// Draws `text` centred horizontally on `cx`.
fn draw_centred(img: &mut RgbImage, cx: i32, y: i32, text: &str, color: Rgb<u8>, scale: u32) {
    let x = cx - text_width(text, scale) as i32 / 2;
    draw_text(img, x, y, text, color, scale);
}

/// The title block drawn at the top of every figure (scale 2) and the footer
/// at the bottom (scale 1, in [`WARN`]), wrapped to the figure's width.
struct Frame {
    title: Vec<String>,
    footer: Vec<String>,
}

impl Frame {
    fn new(title: &str, footer: Option<&str>, width: u32) -> Self {
        let title_chars = (width.saturating_sub(2 * PAD) / (2 * GLYPH)).max(8) as usize;
        let foot_chars = (width.saturating_sub(2 * PAD) / GLYPH).max(8) as usize;
        let title = if title.is_empty() { vec![] } else { wrap(title, title_chars) };
        let footer =
            footer.filter(|f| !f.is_empty()).map(|f| wrap(f, foot_chars)).unwrap_or_default();
        Self { title, footer }
    }
    fn top(&self) -> u32 {
        if self.title.is_empty() {
            PAD
        } else {
            PAD + self.title.len() as u32 * (2 * GLYPH + 4) + PAD
        }
    }
    fn bottom(&self) -> u32 {
        if self.footer.is_empty() {
            PAD
        } else {
            PAD + self.footer.len() as u32 * (GLYPH + 2) + PAD
        }
    }
    fn draw(&self, img: &mut RgbImage) {
        let cx = img.width() as i32 / 2;
        for (i, l) in self.title.iter().enumerate() {
            draw_centred(img, cx, (PAD + i as u32 * (2 * GLYPH + 4)) as i32, l, BLACK, 2);
        }
        let y0 = img.height() - self.bottom() + PAD;
        for (i, l) in self.footer.iter().enumerate() {
            draw_text(img, PAD as i32, (y0 + i as u32 * (GLYPH + 2)) as i32, l, WARN, 1);
        }
    }
}

/// A labelled grid of images: `cells[row][col]`, one label per row on the
/// left, one per column on top, a title above and an optional footer below
/// (where "DEMO MODEL (random weights)" goes when demo models made the
/// images).
///
/// Every cell gets the size of the largest image; smaller images are centred
/// in their cell. Rows may have different lengths. Labels are wrapped to fit.
pub fn grid(
    cells: &[Vec<RgbImage>],
    row_labels: &[String],
    col_labels: &[String],
    title: &str,
    footer: Option<&str>,
) -> RgbImage {
    let n_rows = cells.len() as u32;
    let n_cols = cells.iter().map(Vec::len).max().unwrap_or(0).max(col_labels.len()) as u32;
    let cell_w = cells.iter().flatten().map(|c| c.width()).max().unwrap_or(0).max(GLYPH);
    let cell_h = cells.iter().flatten().map(|c| c.height()).max().unwrap_or(0).max(GLYPH);
    let gap = PAD / 2;

    let col_chars = (cell_w / GLYPH).max(1) as usize;
    let col_lines: Vec<Vec<String>> = col_labels.iter().map(|l| wrap(l, col_chars)).collect();
    let head_h = col_lines.iter().map(|l| l.len() as u32).max().unwrap_or(0) * (GLYPH + 2);
    let row_chars = 24usize;
    let row_lines: Vec<Vec<String>> = row_labels.iter().map(|l| wrap(l, row_chars)).collect();
    let label_w = row_lines
        .iter()
        .flat_map(|ls| ls.iter().map(|l| text_width(l, 1)))
        .max()
        .map_or(0, |w| w + PAD);

    let body_w = label_w + n_cols * cell_w + n_cols.saturating_sub(1) * gap;
    let body_h = head_h + n_rows * cell_h + n_rows.saturating_sub(1) * gap;
    let min_w = text_width(title, 2).min(600).max(footer.map_or(0, |f| text_width(f, 1).min(600)));
    let width = (body_w.max(min_w) + 2 * PAD).max(2 * PAD + GLYPH);
    let frame = Frame::new(title, footer, width);
    let height = frame.top() + body_h + frame.bottom();

    let mut img = RgbImage::from_pixel(width, height, WHITE);
    frame.draw(&mut img);
    let x0 = (width - body_w) / 2 + label_w;
    let y0 = frame.top();
    for (c, lines) in col_lines.iter().enumerate() {
        let cx = x0 + c as u32 * (cell_w + gap) + cell_w / 2;
        let top = y0 + head_h - lines.len() as u32 * (GLYPH + 2);
        for (i, l) in lines.iter().enumerate() {
            draw_centred(&mut img, cx as i32, (top + i as u32 * (GLYPH + 2)) as i32, l, BLACK, 1);
        }
    }
    for (r, row) in cells.iter().enumerate() {
        let ry = y0 + head_h + r as u32 * (cell_h + gap);
        if let Some(lines) = row_lines.get(r) {
            let ty = ry + cell_h.saturating_sub(lines.len() as u32 * (GLYPH + 2)) / 2;
            for (i, l) in lines.iter().enumerate() {
                let y = (ty + i as u32 * (GLYPH + 2)) as i32;
                draw_text(&mut img, (x0 - label_w) as i32, y, l, BLACK, 1);
            }
        }
        for (c, cell) in row.iter().enumerate() {
            let cx = x0 + c as u32 * (cell_w + gap) + (cell_w - cell.width()) / 2;
            let cy = ry + (cell_h - cell.height()) / 2;
            image::imageops::replace(&mut img, cell, cx as i64, cy as i64);
        }
    }
    img
}

/// One line of a [`line_plot`].
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend entry.
    pub name: String,
    /// `(x, y)` points, joined in order; a non-finite point breaks the line.
    pub points: Vec<(f64, f64)>,
    /// Optional shaded band as `(x, low, high)`, e.g. mean − std and
    /// mean + std; drawn under the line in a light tint of `color`.
    pub band: Option<Vec<(f64, f64, f64)>>,
    /// Line colour (see [`PALETTE`]).
    pub color: Rgb<u8>,
}

/// What a [`line_plot`] draws.
#[derive(Debug, Clone)]
pub struct PlotSpec {
    /// Title above the plot.
    pub title: String,
    /// Label under the x axis.
    pub x_label: String,
    /// Label left of the y axis (drawn vertically).
    pub y_label: String,
    /// Logarithmic y axis; values ≤ 0 are then skipped.
    pub log_y: bool,
    /// The lines.
    pub series: Vec<Series>,
    /// Image size `(width, height)` in pixels.
    pub size: (u32, u32),
}

/// "Nice" tick values (1, 2 or 5 × 10^k apart) covering `[lo, hi]`, about
/// `target` of them.
fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    let span = hi - lo;
    if !(span.is_finite() && span > 0.0) {
        return vec![lo];
    }
    let raw = span / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step =
        [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).take(50).map(|k| k as f64 * step).collect()
}

/// A short label for a tick value.
fn fmt_tick(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.0e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    }
}

/// The data range `[lo, hi]` of the finite values, widened when empty or
/// flat so that it can always be drawn.
fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 * (1.0 + lo.abs()) {
        let d = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        return (lo - d, hi + d);
    }
    let m = 0.05 * (hi - lo);
    (lo - m, hi + m)
}

/// A line plot with axes, ticks, tick labels, axis labels, a legend and
/// optional mean ± std bands. Non-finite values are skipped (a line breaks
/// there); with no finite data at all the axes are drawn with "no data".
pub fn line_plot(spec: &PlotSpec) -> RgbImage {
    let (w, h) = (spec.size.0.max(160), spec.size.1.max(120));
    let mut img = RgbImage::from_pixel(w, h, WHITE);
    let frame = Frame::new(&spec.title, None, w);
    frame.draw(&mut img);

    // y transform: values → plotted coordinate (log10 when log_y).
    let ty = |v: f64| -> f64 {
        if spec.log_y {
            if v > 0.0 {
                v.log10()
            } else {
                f64::NAN
            }
        } else {
            v
        }
    };
    let xs = spec
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0).chain(s.band.iter().flatten().map(|b| b.0)));
    let ys = spec.series.iter().flat_map(|s| {
        s.points
            .iter()
            .map(|p| ty(p.1))
            .chain(s.band.iter().flatten().flat_map(|b| [ty(b.1), ty(b.2)]))
    });
    let (x_lo, x_hi) = range(xs);
    let (y_lo, y_hi) = range(ys);
    let y_ticks: Vec<(f64, String)> = if spec.log_y {
        let mut t: Vec<(f64, String)> = ((y_lo.ceil() as i64)..=(y_hi.floor() as i64))
            .take(40)
            .map(|k| (k as f64, fmt_tick(10f64.powi(k as i32))))
            .collect();
        if t.len() < 2 {
            t = nice_ticks(y_lo, y_hi, 4)
                .into_iter()
                .map(|k| (k, fmt_tick(10f64.powf(k))))
                .collect();
        }
        t
    } else {
        nice_ticks(y_lo, y_hi, 5).into_iter().map(|v| (v, fmt_tick(v))).collect()
    };
    let x_ticks = nice_ticks(x_lo, x_hi, 6);

    let tick_w = y_ticks.iter().map(|t| text_width(&t.1, 1)).max().unwrap_or(0);
    let left = PAD + GLYPH + PAD + tick_w + PAD;
    let right = w - PAD * 2;
    let top = frame.top() + PAD;
    let bottom = h.saturating_sub(frame.bottom() + 2 * GLYPH + 3 * PAD).max(top + 20);
    let (pw, ph) = ((right - left) as f64, (bottom - top) as f64);
    let px = |x: f64| left as f64 + (x - x_lo) / (x_hi - x_lo) * pw;
    let py = |y: f64| bottom as f64 - (y - y_lo) / (y_hi - y_lo) * ph;

    // Grid lines and ticks.
    for (v, label) in &y_ticks {
        let y = py(*v).round() as i32;
        draw_line(&mut img, (left as i32, y), (right as i32, y), Rgb([232, 232, 232]), 1);
        draw_line(&mut img, (left as i32 - 4, y), (left as i32, y), BLACK, 1);
        let tx = left as i32 - 6 - text_width(label, 1) as i32;
        draw_text(&mut img, tx, y - GLYPH as i32 / 2, label, BLACK, 1);
    }
    for v in &x_ticks {
        let x = px(*v).round() as i32;
        draw_line(&mut img, (x, top as i32), (x, bottom as i32), Rgb([232, 232, 232]), 1);
        draw_line(&mut img, (x, bottom as i32), (x, bottom as i32 + 4), BLACK, 1);
        draw_centred(&mut img, x, bottom as i32 + 6, &fmt_tick(*v), BLACK, 1);
    }

    // Bands, then lines, so lines stay on top.
    for s in &spec.series {
        let Some(band) = &s.band else { continue };
        let pts: Vec<(f64, f64, f64)> = band
            .iter()
            .map(|b| (px(b.0), py(ty(b.1)), py(ty(b.2))))
            .filter(|b| b.0.is_finite() && b.1.is_finite() && b.2.is_finite())
            .collect();
        let n_pairs = pts.len().saturating_sub(1);
        for (k, pair) in pts.windows(2).enumerate() {
            let (a, b) = (pair[0], pair[1]);
            let (xa, xb) = (a.0.round() as i32, b.0.round() as i32);
            // Neighbouring segments share an end column: tint it once.
            let end = if k + 1 == n_pairs { xa.max(xb) } else { xa.max(xb) - 1 };
            for x in xa.min(xb)..=end {
                let t = if xb == xa { 0.0 } else { (x - xa) as f64 / (xb - xa) as f64 };
                let y1 = a.1 + t * (b.1 - a.1);
                let y2 = a.2 + t * (b.2 - a.2);
                for y in (y1.min(y2).round() as i32)..=(y1.max(y2).round() as i32) {
                    if y >= top as i32
                        && y <= bottom as i32
                        && x >= left as i32
                        && x <= right as i32
                    {
                        blend(&mut img, x, y, s.color, 0.2);
                    }
                }
            }
        }
    }
    for s in &spec.series {
        let mut prev: Option<(i32, i32)> = None;
        for &(x, y) in &s.points {
            let (fx, fy) = (px(x), py(ty(y)));
            if !(fx.is_finite() && fy.is_finite()) {
                prev = None;
                continue;
            }
            let p = (fx.round() as i32, fy.round() as i32);
            match prev {
                Some(q) => draw_line(&mut img, q, p, s.color, 2),
                None => fill_rect(&mut img, p.0 - 1, p.1 - 1, 3, 3, s.color),
            }
            prev = Some(p);
        }
    }

    // Axes, axis labels, legend.
    draw_line(&mut img, (left as i32, top as i32), (left as i32, bottom as i32), BLACK, 1);
    draw_line(&mut img, (left as i32, bottom as i32), (right as i32, bottom as i32), BLACK, 1);
    let cx = (left + right) as i32 / 2;
    draw_centred(&mut img, cx, (bottom + GLYPH + 2 * PAD) as i32, &spec.x_label, BLACK, 1);
    draw_vertical_label(&mut img, PAD as i32, (top + bottom) as i32 / 2, &spec.y_label);
    let has_data =
        spec.series.iter().any(|s| s.points.iter().any(|p| p.0.is_finite() && ty(p.1).is_finite()));
    if !has_data {
        draw_centred(&mut img, cx, (top + bottom) as i32 / 2, "no data", GRAY, 2);
    }
    draw_legend(&mut img, right, top, &spec.series);
    img
}

/// Draws `text` rotated a quarter turn anticlockwise, centred vertically on
/// `cy`, with its left edge at `x`.
fn draw_vertical_label(img: &mut RgbImage, x: i32, cy: i32, text: &str) {
    if text.is_empty() {
        return;
    }
    let mut tmp = RgbImage::from_pixel(text_width(text, 1), GLYPH, WHITE);
    draw_text(&mut tmp, 0, 0, text, BLACK, 1);
    let rot = image::imageops::rotate270(&tmp);
    let y = cy - rot.height() as i32 / 2;
    for (rx, ry, p) in rot.enumerate_pixels() {
        if *p != WHITE {
            blend(img, x + rx as i32, y + ry as i32, *p, 1.0);
        }
    }
}

/// A boxed legend in the top-right corner of the plot area.
fn draw_legend(img: &mut RgbImage, right: u32, top: u32, series: &[Series]) {
    if series.is_empty() {
        return;
    }
    let text_w = series.iter().map(|s| text_width(&s.name, 1)).max().unwrap_or(0);
    let (bw, bh) = (text_w + 3 * PAD + 14, series.len() as u32 * (GLYPH + 4) + PAD);
    let (bx, by) = (right.saturating_sub(bw + 4) as i32, top as i32 + 4);
    fill_rect(img, bx, by, bw, bh, WHITE);
    for (x0, y0, x1, y1) in [(0, 0, bw, 0), (0, bh, bw, bh), (0, 0, 0, bh), (bw, 0, bw, bh)] {
        draw_line(img, (bx + x0 as i32, by + y0 as i32), (bx + x1 as i32, by + y1 as i32), GRAY, 1);
    }
    for (i, s) in series.iter().enumerate() {
        let y = by + PAD as i32 / 2 + i as i32 * (GLYPH as i32 + 4);
        fill_rect(img, bx + PAD as i32, y + 3, 14, 3, s.color);
        draw_text(img, bx + 2 * PAD as i32 + 14, y, &s.name, BLACK, 1);
    }
}

/// `img` with a footer strip added below it: `text` in [`WARN`] colour,
/// wrapped to the image's width. Used to label plots made from demo models.
pub fn add_footer(img: &RgbImage, text: &str) -> RgbImage {
    let frame = Frame::new("", Some(text), img.width().max(2 * PAD + 8 * GLYPH));
    let extra = frame.bottom() - PAD;
    let mut out =
        RgbImage::from_pixel(img.width().max(2 * PAD + 8 * GLYPH), img.height() + extra, WHITE);
    image::imageops::replace(&mut out, img, 0, 0);
    frame.draw(&mut out);
    out
}

/// A point on the "viridis" colour map, `t` in `[0, 1]` (dark blue → yellow);
/// perceptually ordered and readable in grayscale.
pub fn colormap(t: f64) -> Rgb<u8> {
    const STOPS: [[f64; 3]; 5] = [
        [68.0, 1.0, 84.0],
        [59.0, 82.0, 139.0],
        [33.0, 145.0, 140.0],
        [94.0, 201.0, 98.0],
        [253.0, 231.0, 37.0],
    ];
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 };
    let f = t * (STOPS.len() - 1) as f64;
    let i = (f.floor() as usize).min(STOPS.len() - 2);
    let u = f - i as f64;
    let c = |k: usize| (STOPS[i][k] * (1.0 - u) + STOPS[i + 1][k] * u).round() as u8;
    Rgb([c(0), c(1), c(2)])
}

/// A heat map of `values[row][col]` with the numbers written in the cells,
/// images as column headers (e.g. generated-image thumbnails), text row
/// labels (e.g. prompts), a colour scale on the right, a title and an
/// optional footer.
///
/// Colours span the finite values' min..max; non-finite cells are gray and
/// read `NaN`.
pub fn heat_map(
    values: &[Vec<f64>],
    row_labels: &[String],
    col_headers: &[RgbImage],
    title: &str,
    footer: Option<&str>,
) -> RgbImage {
    heat_map_in(values, row_labels, col_headers, title, footer, None)
}

/// [`heat_map`] with the colour scale fixed to `range` (`(low, high)`,
/// values outside take the end colours) instead of the values' min..max, so
/// that maps of different runs compare (the report's Fig. 5 uses
/// `[0.1, 0.3]`).
pub fn heat_map_in(
    values: &[Vec<f64>],
    row_labels: &[String],
    col_headers: &[RgbImage],
    title: &str,
    footer: Option<&str>,
    range: Option<(f64, f64)>,
) -> RgbImage {
    let n_rows = values.len() as u32;
    let n_cols = values.iter().map(Vec::len).max().unwrap_or(0).max(col_headers.len()) as u32;
    let head_h = col_headers.iter().map(|c| c.height()).max().unwrap_or(0);
    let cell_w = col_headers.iter().map(|c| c.width() + 2).max().unwrap_or(0).max(7 * GLYPH);
    let cell_h = 3 * GLYPH;
    let row_lines: Vec<Vec<String>> = row_labels.iter().map(|l| wrap(l, 40)).collect();
    let lines_max = row_lines.iter().map(Vec::len).max().unwrap_or(1).max(1) as u32;
    let cell_h = cell_h.max(lines_max * (GLYPH + 2) + 4);
    let label_w = row_lines
        .iter()
        .flat_map(|ls| ls.iter().map(|l| text_width(l, 1)))
        .max()
        .map_or(0, |w| w + PAD);

    let (lo, hi) = {
        let f = values.iter().flatten().copied().filter(|v| v.is_finite());
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for v in f {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        match range {
            Some(r) => r,
            None if lo > hi => (0.0, 1.0),
            None => (lo, hi),
        }
    };
    let norm = |v: f64| if hi > lo { ((v - lo) / (hi - lo)).clamp(0.0, 1.0) } else { 0.5 };

    let scale_labels = [fmt_cell(hi), fmt_cell(lo)];
    let scale_w =
        2 * PAD + 16 + PAD + scale_labels.iter().map(|l| text_width(l, 1)).max().unwrap_or(0);
    let body_w = label_w + n_cols * cell_w + scale_w;
    let body_h = head_h + PAD / 2 + n_rows * cell_h;
    let min_w = text_width(title, 2).min(600).max(footer.map_or(0, |f| text_width(f, 1).min(600)));
    let width = body_w.max(min_w) + 2 * PAD;
    let frame = Frame::new(title, footer, width);
    let height = frame.top() + body_h.max(4 * GLYPH) + frame.bottom();
    let mut img = RgbImage::from_pixel(width, height, WHITE);
    frame.draw(&mut img);

    let x0 = PAD + label_w;
    let y0 = frame.top();
    for (c, head) in col_headers.iter().enumerate() {
        let hx = x0 + c as u32 * cell_w + (cell_w - head.width()) / 2;
        image::imageops::replace(&mut img, head, hx as i64, (y0 + head_h - head.height()) as i64);
    }
    let grid_y = y0 + head_h + PAD / 2;
    for r in 0..n_rows as usize {
        let ry = grid_y + r as u32 * cell_h;
        if let Some(lines) = row_lines.get(r) {
            let ty = ry + (cell_h - lines.len() as u32 * (GLYPH + 2)) / 2;
            for (i, l) in lines.iter().enumerate() {
                draw_text(&mut img, PAD as i32, (ty + i as u32 * (GLYPH + 2)) as i32, l, BLACK, 1);
            }
        }
        for c in 0..n_cols as usize {
            let v = values[r].get(c).copied().unwrap_or(f64::NAN);
            let color = if v.is_finite() { colormap(norm(v)) } else { GRAY };
            let cx = x0 + c as u32 * cell_w;
            fill_rect(&mut img, cx as i32, ry as i32, cell_w - 1, cell_h - 1, color);
            let lum =
                0.299 * color.0[0] as f64 + 0.587 * color.0[1] as f64 + 0.114 * color.0[2] as f64;
            let ink = if lum > 140.0 { BLACK } else { WHITE };
            let label = if v.is_finite() { fmt_cell(v) } else { "NaN".into() };
            let ty = ry as i32 + (cell_h as i32 - GLYPH as i32) / 2;
            draw_centred(&mut img, (cx + cell_w / 2) as i32, ty, &label, ink, 1);
        }
    }

    // Colour scale: a vertical bar from hi (top) to lo (bottom).
    let bx = (x0 + n_cols * cell_w + 2 * PAD) as i32;
    let bar_h = (n_rows * cell_h).max(2 * GLYPH);
    for i in 0..bar_h {
        let t = 1.0 - i as f64 / (bar_h - 1).max(1) as f64;
        fill_rect(&mut img, bx, (grid_y + i) as i32, 16, 1, colormap(t));
    }
    let lx = bx + 16 + PAD as i32;
    draw_text(&mut img, lx, grid_y as i32, &scale_labels[0], BLACK, 1);
    draw_text(&mut img, lx, (grid_y + bar_h - GLYPH) as i32, &scale_labels[1], BLACK, 1);
    img
}

/// A heat-map cell's number: three decimals, or scientific when tiny/huge.
fn fmt_cell(v: f64) -> String {
    if v != 0.0 && !(1e-3..1e4).contains(&v.abs()) {
        format!("{v:.2e}")
    } else {
        format!("{v:.3}")
    }
}

/// Writes `img` as a PNG at `path` atomically and durably
/// ([`crate::durable`]): a reader never sees a half-written picture, and a
/// written one survives a crash. The folder is created if needed.
pub fn save_png_atomic(img: &RgbImage, path: &Path) -> Result<()> {
    crate::durable::write_with(path, |tmp| img.save_with_format(tmp, image::ImageFormat::Png))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn count(img: &RgbImage, color: Rgb<u8>) -> usize {
        img.pixels().filter(|p| **p == color).count()
    }

    #[test]
    fn tensor_to_rgb_maps_and_clamps() {
        // Channel r: -1, 0, 1, 2 (clamped), g: NaN, -5 (clamped), 0.5, -0.5.
        let data = vec![
            -1.0f32,
            0.0,
            1.0,
            2.0, //
            f32::NAN,
            -5.0,
            0.5,
            -0.5, //
            0.0,
            0.0,
            0.0,
            0.0,
        ];
        let t = Tensor::from_vec(data, (1, 3, 2, 2), &Device::Cpu).unwrap();
        let img = tensor_to_rgb(&t).unwrap();
        assert_eq!(img.dimensions(), (2, 2));
        let r: Vec<u8> = img.pixels().map(|p| p.0[0]).collect();
        let g: Vec<u8> = img.pixels().map(|p| p.0[1]).collect();
        assert_eq!(r, vec![0, 128, 255, 255]);
        assert_eq!(g, vec![0, 0, 191, 64]);
        let three = tensor_to_rgb(&t.squeeze(0).unwrap()).unwrap();
        assert_eq!(three, img);
        assert!(
            tensor_to_rgb(&Tensor::zeros((2, 3, 2, 2), DType::F32, &Device::Cpu).unwrap()).is_err()
        );
        assert!(
            tensor_to_rgb(&Tensor::zeros((4, 2, 2), DType::F32, &Device::Cpu).unwrap()).is_err()
        );
    }

    #[test]
    fn text_draws_pixels_inside_its_box() {
        let mut img = RgbImage::from_pixel(64, 32, WHITE);
        draw_text(&mut img, 2, 3, "Aα", BLACK, 2);
        let inked: Vec<(u32, u32)> = img
            .enumerate_pixels()
            .filter(|(_, _, p)| **p == BLACK)
            .map(|(x, y, _)| (x, y))
            .collect();
        assert!(inked.len() > 20, "only {} pixels drawn", inked.len());
        let w = text_width("Aα", 2);
        assert_eq!(w, 32);
        assert!(inked.iter().all(|&(x, y)| (2..2 + w).contains(&x) && (3..3 + 16).contains(&y)));
        // Off-image text is clipped, not a panic.
        draw_text(&mut img, -100, 30, "clipped text", BLACK, 3);
        draw_text(&mut img, 60, -4, "x", BLACK, 1);
        // Different characters draw differently.
        let mut a = RgbImage::from_pixel(8, 8, WHITE);
        let mut b = a.clone();
        draw_text(&mut a, 0, 0, "A", BLACK, 1);
        draw_text(&mut b, 0, 0, "B", BLACK, 1);
        assert_ne!(a, b);
        assert_eq!(text_height("a\nb", 1), 16);
        assert_eq!(text_width("abc\nde", 1), 24);
    }

    #[test]
    fn wrap_breaks_at_spaces_and_long_words() {
        assert_eq!(wrap("a photo of a person", 8), vec!["a photo", "of a", "person"]);
        assert_eq!(wrap("abcdefghij", 4), vec!["abcd", "efgh", "ij"]);
        assert_eq!(wrap("", 4), vec![""]);
    }

    #[test]
    fn grid_size_grows_by_one_cell_per_column_and_row() {
        let cell = RgbImage::from_pixel(20, 16, Rgb([10, 200, 30]));
        let labels = |n: usize| (0..n).map(|i| format!("α={i}")).collect::<Vec<_>>();
        let make = |rows: usize, cols: usize| {
            grid(&vec![vec![cell.clone(); cols]; rows], &labels(rows), &labels(cols), "", None)
        };
        let a = make(2, 3);
        let b = make(2, 4);
        let c = make(3, 3);
        assert_eq!(b.width() - a.width(), 20 + PAD / 2);
        assert_eq!(b.height(), a.height());
        assert_eq!(c.height() - a.height(), 16 + PAD / 2);
        assert_eq!(c.width(), a.width());
        // Every cell's pixels are copied in.
        assert_eq!(count(&a, Rgb([10, 200, 30])), 2 * 3 * 20 * 16);
        // A footer adds height and red text.
        let f =
            grid(&vec![vec![cell.clone(); 3]; 2], &labels(2), &labels(3), "T", Some("DEMO MODEL"));
        assert!(f.height() > a.height());
        assert!(count(&f, WARN) > 0);
        // Empty input still makes a (small) picture.
        let e = grid(&[], &[], &[], "empty", None);
        assert!(e.width() > 0 && e.height() > 0);
    }

    fn spec(series: Vec<Series>, log_y: bool) -> PlotSpec {
        PlotSpec {
            title: "loss".into(),
            x_label: "step".into(),
            y_label: "value".into(),
            log_y,
            series,
            size: (320, 200),
        }
    }

    #[test]
    fn plot_draws_series_colours_and_bands() {
        let red = Rgb([250, 0, 0]);
        let blue = Rgb([0, 0, 250]);
        let s1 = Series {
            name: "a".into(),
            points: (0..10).map(|i| (i as f64, (i * i) as f64 + 1.0)).collect(),
            band: Some((0..10).map(|i| (i as f64, i as f64, (i * i) as f64 + 5.0)).collect()),
            color: red,
        };
        let s2 = Series {
            name: "b".into(),
            points: vec![(0.0, 3.0), (9.0, 40.0)],
            band: None,
            color: blue,
        };
        for log in [false, true] {
            let img = line_plot(&spec(vec![s1.clone(), s2.clone()], log));
            assert_eq!(img.dimensions(), (320, 200));
            assert!(count(&img, red) > 30, "red series missing (log={log})");
            assert!(count(&img, blue) > 30, "blue series missing (log={log})");
            // The band is a light tint of red: pixels neither white nor red.
            let tinted = img
                .pixels()
                .filter(|p| p.0[0] > 200 && p.0[1] > 150 && p.0[1] < 240 && p.0[2] < 240)
                .count();
            assert!(tinted > 50, "band missing (log={log})");
        }
    }

    #[test]
    fn plot_and_heat_map_survive_nan() {
        let green = Rgb([0, 220, 0]);
        let nan = Series {
            name: "nan".into(),
            points: vec![
                (0.0, f64::NAN),
                (1.0, 2.0),
                (f64::INFINITY, 1.0),
                (2.0, 3.0),
                (3.0, -1.0),
            ],
            band: Some(vec![(0.0, f64::NAN, 1.0), (1.0, 1.0, 2.0)]),
            color: green,
        };
        let img = line_plot(&spec(vec![nan.clone()], false));
        assert!(count(&img, green) > 0);
        let _ = line_plot(&spec(vec![nan], true));
        let all_nan = Series {
            name: "x".into(),
            points: vec![(f64::NAN, f64::NAN)],
            band: None,
            color: green,
        };
        let img = line_plot(&spec(vec![all_nan], false));
        assert_eq!(count(&img, green), 14 * 3, "only the legend swatch should be green");
        let _ = line_plot(&spec(vec![], false));
        let footed = add_footer(&img, "DEMO MODEL (random weights)");
        assert!(footed.height() > img.height() && count(&footed, WARN) > 0);

        let thumbs = vec![RgbImage::from_pixel(32, 32, Rgb([1, 2, 3])); 3];
        let values = vec![vec![0.1, f64::NAN, 0.3], vec![0.2, 0.25, f64::INFINITY]];
        let labels = vec!["a photo of a person with gray hair".to_string(), "b".to_string()];
        let hm = heat_map(&values, &labels, &thumbs, "CLIP similarity", Some("DEMO"));
        assert!(count(&hm, Rgb([1, 2, 3])) == 3 * 32 * 32, "thumbnails missing");
        assert!(count(&hm, GRAY) > 0, "NaN cells should be gray");
        assert!(count(&hm, colormap(1.0)) > 0 && count(&hm, colormap(0.0)) > 0);
        let flat = heat_map(&[vec![0.5, 0.5]], &["p".into()], &[], "", None);
        assert!(flat.width() > 0);
        // A fixed scale [0.1, 0.3]: 0.15 and 0.25 get the colours a quarter
        // and three quarters along, not the scale's ends.
        let fixed = heat_map_in(&[vec![0.15, 0.25]], &["p".into()], &[], "", None, Some((0.1, 0.3)));
        let free = heat_map(&[vec![0.15, 0.25]], &["p".into()], &[], "", None);
        for t in [0.25, 0.75] {
            assert!(count(&fixed, colormap(t)) > count(&free, colormap(t)) + 50, "cell of colour {t}");
        }
        assert!(count(&free, colormap(0.0)) > count(&fixed, colormap(0.0)) + 50);
    }

    #[test]
    fn save_png_atomic_round_trips_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/out.png");
        let mut img = RgbImage::from_pixel(5, 4, WHITE);
        img.put_pixel(1, 2, Rgb([9, 8, 7]));
        save_png_atomic(&img, &path).unwrap();
        save_png_atomic(&img, &path).unwrap();
        let back = image::open(&path).unwrap().to_rgb8();
        assert_eq!(back, img);
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}

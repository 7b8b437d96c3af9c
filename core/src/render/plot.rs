//! Line plots with axes, ticks, labels and a legend.

use image::{Rgb, RgbImage};

use super::draw::{blend, draw_line, fill_rect};
use super::figure::Frame;
use super::text::{draw_centred, draw_text, text_width, GLYPH};
use super::{BLACK, GRAY, PAD, WHITE};

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
    /// Line colour (see [`super::PALETTE`]).
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
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
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
    let xs = spec.series.iter().flat_map(|s| s.points.iter().map(|p| p.0).chain(s.band.iter().flatten().map(|b| b.0)));
    let ys = spec
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| ty(p.1)).chain(s.band.iter().flatten().flat_map(|b| [ty(b.1), ty(b.2)])));
    let (x_lo, x_hi) = range(xs);
    let (y_lo, y_hi) = range(ys);
    let y_ticks: Vec<(f64, String)> = if spec.log_y {
        let mut t: Vec<(f64, String)> = ((y_lo.ceil() as i64)..=(y_hi.floor() as i64))
            .take(40)
            .map(|k| (k as f64, fmt_tick(10f64.powi(k as i32))))
            .collect();
        if t.len() < 2 {
            t = nice_ticks(y_lo, y_hi, 4).into_iter().map(|k| (k, fmt_tick(10f64.powf(k)))).collect();
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
                    if y >= top as i32 && y <= bottom as i32 && x >= left as i32 && x <= right as i32 {
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
    let has_data = spec.series.iter().any(|s| s.points.iter().any(|p| p.0.is_finite() && ty(p.1).is_finite()));
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

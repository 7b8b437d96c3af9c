//! Heat maps with the numbers written in their cells, on the "viridis"
//! colour map.

use image::{Rgb, RgbImage};

use super::draw::fill_rect;
use super::figure::Frame;
use super::text::{draw_centred, draw_text, text_width, wrap, GLYPH};
use super::{BLACK, GRAY, PAD, WHITE};

/// A point on the "viridis" colour map, `t` in `[0, 1]` (dark blue → yellow);
/// perceptually ordered and readable in grayscale.
pub fn colormap(t: f64) -> Rgb<u8> {
    const STOPS: [[f64; 3]; 5] =
        [[68.0, 1.0, 84.0], [59.0, 82.0, 139.0], [33.0, 145.0, 140.0], [94.0, 201.0, 98.0], [253.0, 231.0, 37.0]];
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
    let label_w = row_lines.iter().flat_map(|ls| ls.iter().map(|l| text_width(l, 1))).max().map_or(0, |w| w + PAD);

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
    let scale_w = 2 * PAD + 16 + PAD + scale_labels.iter().map(|l| text_width(l, 1)).max().unwrap_or(0);
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
            let lum = 0.299 * color.0[0] as f64 + 0.587 * color.0[1] as f64 + 0.114 * color.0[2] as f64;
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

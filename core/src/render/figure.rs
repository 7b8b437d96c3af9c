//! Figures: the title and footer frame every figure has, labelled image
//! grids, and a footer added below an image.

use image::RgbImage;

use super::text::{draw_centred, draw_text, text_width, wrap, GLYPH};
use super::{BLACK, PAD, WARN, WHITE};

/// The title block drawn at the top of every figure (scale 2) and the footer
/// at the bottom (scale 1, in [`WARN`]), wrapped to the figure's width.
pub(super) struct Frame {
    title: Vec<String>,
    footer: Vec<String>,
}

impl Frame {
    pub(super) fn new(title: &str, footer: Option<&str>, width: u32) -> Self {
        let title_chars = (width.saturating_sub(2 * PAD) / (2 * GLYPH)).max(8) as usize;
        let foot_chars = (width.saturating_sub(2 * PAD) / GLYPH).max(8) as usize;
        let title = if title.is_empty() { vec![] } else { wrap(title, title_chars) };
        let footer = footer.filter(|f| !f.is_empty()).map(|f| wrap(f, foot_chars)).unwrap_or_default();
        Self { title, footer }
    }
    pub(super) fn top(&self) -> u32 {
        if self.title.is_empty() {
            PAD
        } else {
            PAD + self.title.len() as u32 * (2 * GLYPH + 4) + PAD
        }
    }
    pub(super) fn bottom(&self) -> u32 {
        if self.footer.is_empty() {
            PAD
        } else {
            PAD + self.footer.len() as u32 * (GLYPH + 2) + PAD
        }
    }
    pub(super) fn draw(&self, img: &mut RgbImage) {
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
    let label_w = row_lines.iter().flat_map(|ls| ls.iter().map(|l| text_width(l, 1))).max().map_or(0, |w| w + PAD);

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

/// `img` with a footer strip added below it: `text` in [`WARN`] colour,
/// wrapped to the image's width. Used to label plots made from demo models.
pub fn add_footer(img: &RgbImage, text: &str) -> RgbImage {
    let frame = Frame::new("", Some(text), img.width().max(2 * PAD + 8 * GLYPH));
    let extra = frame.bottom() - PAD;
    let mut out = RgbImage::from_pixel(img.width().max(2 * PAD + 8 * GLYPH), img.height() + extra, WHITE);
    image::imageops::replace(&mut out, img, 0, 0);
    frame.draw(&mut out);
    out
}

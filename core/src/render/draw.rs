//! Drawing primitives: filled rectangles, blended pixels and thick lines,
//! clipped to the image.

use image::{Rgb, RgbImage};

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
pub(super) fn blend(img: &mut RgbImage, x: i32, y: i32, color: Rgb<u8>, a: f32) {
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
pub fn draw_line(img: &mut RgbImage, from: (i32, i32), to: (i32, i32), color: Rgb<u8>, thickness: u32) {
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

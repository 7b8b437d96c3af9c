//! The text renderer: the public-domain 8×8 bitmap font of the `font8x8`
//! crate (ASCII, Latin-1 and Greek), scaled by an integer factor, so that
//! labels look the same on every platform with no fonts installed.

use image::{Rgb, RgbImage};

use super::draw::fill_rect;

/// Height and width in pixels of one glyph at scale 1.
pub const GLYPH: u32 = 8;

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
                        fill_rect(img, x0 + col * s, y0 + row as i32 * s, s as u32, s as u32, color);
                    }
                }
            }
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
pub(super) fn draw_centred(img: &mut RgbImage, cx: i32, y: i32, text: &str, color: Rgb<u8>, scale: u32) {
    let x = cx - text_width(text, scale) as i32 / 2;
    draw_text(img, x, y, text, color, scale);
}

//! Animated α sweeps: the frames of an edit as α moves, written as a
//! looping GIF (the `image` crate's encoder), atomically.

use std::path::Path;

use image::{Delay, Frame, RgbImage};

use crate::{Error, Result};

/// α values of a sweep from `from` to `to` and back (`frames` one way,
/// ends included once), so the loop has no jump.
pub fn ping_pong(from: f32, to: f32, frames: usize) -> Vec<f32> {
    let n = frames.max(2);
    let there: Vec<f32> = (0..n).map(|i| from + (to - from) * i as f32 / (n - 1) as f32).collect();
    let mut out = there.clone();
    out.extend(there[1..n - 1].iter().rev());
    out
}

/// The bytes of a looping GIF of `frames` (all the same size), `delay_ms`
/// per frame.
pub fn gif_bytes(frames: &[RgbImage], delay_ms: u32) -> Result<Vec<u8>> {
    use image::codecs::gif::{GifEncoder, Repeat};
    let bad = |e: image::ImageError| Error::Config(format!("cannot encode the GIF: {e}"));
    let mut out = Vec::new();
    {
        let mut enc = GifEncoder::new_with_speed(&mut out, 10);
        enc.set_repeat(Repeat::Infinite).map_err(bad)?;
        for f in frames {
            let rgba = image::DynamicImage::ImageRgb8(f.clone()).to_rgba8();
            enc.encode_frame(Frame::from_parts(rgba, 0, 0, Delay::from_numer_denom_ms(delay_ms, 1))).map_err(bad)?;
        }
    }
    Ok(out)
}

/// Writes a looping GIF of `frames` to `path`, atomically.
pub fn write_gif(frames: &[RgbImage], delay_ms: u32, path: &Path) -> Result<()> {
    if frames.is_empty() {
        return Err(Error::Config("an animation needs at least one frame".into()));
    }
    crate::durable::write(path, &gif_bytes(frames, delay_ms)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_loops_and_gif_holds_every_frame() {
        assert_eq!(ping_pong(-2.0, 2.0, 5), vec![-2.0, -1.0, 0.0, 1.0, 2.0, 1.0, 0.0, -1.0]);
        let frames: Vec<RgbImage> = (0..3u8).map(|i| RgbImage::from_pixel(8, 6, image::Rgb([i * 100, 0, 0]))).collect();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.gif");
        write_gif(&frames, 80, &p).unwrap();
        use image::AnimationDecoder;
        let dec = image::codecs::gif::GifDecoder::new(std::io::Cursor::new(std::fs::read(&p).unwrap())).unwrap();
        let back = dec.into_frames().collect_frames().unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back[2].buffer().dimensions(), (8, 6));
        // The palette is quantised: close, not exact.
        let red = back[2].buffer().get_pixel(3, 3)[0];
        assert!(red.abs_diff(200) <= 8, "{red}");
    }
}

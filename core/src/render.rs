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
//!
//! The parts: `text` (the bitmap font), `draw` (rectangles, lines),
//! `figure` (title and footer frame, image grids), `plot` (line plots) and
//! `heat` (heat maps); this file converts tensors to images and saves them.

mod draw;
mod figure;
mod heat;
mod plot;
mod text;

use std::path::Path;

use candle_core::{DType, Tensor};
use image::{Rgb, RgbImage};

use crate::{Error, Result};

pub use draw::{draw_line, fill_rect};
pub use figure::{add_footer, grid};
pub use heat::{colormap, heat_map, heat_map_in};
pub use plot::{line_plot, PlotSpec, Series};
pub use text::{draw_text, text_height, text_width, wrap, GLYPH};

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
        assert!(tensor_to_rgb(&Tensor::zeros((2, 3, 2, 2), DType::F32, &Device::Cpu).unwrap()).is_err());
        assert!(tensor_to_rgb(&Tensor::zeros((4, 2, 2), DType::F32, &Device::Cpu).unwrap()).is_err());
    }

    #[test]
    fn text_draws_pixels_inside_its_box() {
        let mut img = RgbImage::from_pixel(64, 32, WHITE);
        draw_text(&mut img, 2, 3, "Aα", BLACK, 2);
        let inked: Vec<(u32, u32)> =
            img.enumerate_pixels().filter(|(_, _, p)| **p == BLACK).map(|(x, y, _)| (x, y)).collect();
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
        let f = grid(&vec![vec![cell.clone(); 3]; 2], &labels(2), &labels(3), "T", Some("DEMO MODEL"));
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
        let s2 = Series { name: "b".into(), points: vec![(0.0, 3.0), (9.0, 40.0)], band: None, color: blue };
        for log in [false, true] {
            let img = line_plot(&spec(vec![s1.clone(), s2.clone()], log));
            assert_eq!(img.dimensions(), (320, 200));
            assert!(count(&img, red) > 30, "red series missing (log={log})");
            assert!(count(&img, blue) > 30, "blue series missing (log={log})");
            // The band is a light tint of red: pixels neither white nor red.
            let tinted = img.pixels().filter(|p| p.0[0] > 200 && p.0[1] > 150 && p.0[1] < 240 && p.0[2] < 240).count();
            assert!(tinted > 50, "band missing (log={log})");
        }
    }

    #[test]
    fn plot_and_heat_map_survive_nan() {
        let green = Rgb([0, 220, 0]);
        let nan = Series {
            name: "nan".into(),
            points: vec![(0.0, f64::NAN), (1.0, 2.0), (f64::INFINITY, 1.0), (2.0, 3.0), (3.0, -1.0)],
            band: Some(vec![(0.0, f64::NAN, 1.0), (1.0, 1.0, 2.0)]),
            color: green,
        };
        let img = line_plot(&spec(vec![nan.clone()], false));
        assert!(count(&img, green) > 0);
        let _ = line_plot(&spec(vec![nan], true));
        let all_nan = Series { name: "x".into(), points: vec![(f64::NAN, f64::NAN)], band: None, color: green };
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
        let names: Vec<_> =
            std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}

//! The prompt × image CLIP similarity table (report Fig. 5).
//!
//! Each seed gives one generated image; each prompt one CLIP text embedding;
//! the table holds their cosine similarities. It shows how much (or how
//! little) CLIP's similarity moves between images and prompts, which sets
//! the scale for the ΔCLIP numbers of the generalisation experiment.
//!
//! Given directions (trained, imported or SeFa's, [`crate::direction_io`]),
//! each image becomes one column per direction and α: `w + α·u`, labelled
//! `seed 3 smile.safetensors α=+2`. Does a direction move CLIP towards a
//! prompt? The rows answer it.

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use image::RgbImage;
use serde::Serialize;

use super::models::{ClipModel, LoadedGenerator};
use super::table::{csv_line, csv_number, ellipsize, text_table, write_atomic};
use super::Progress;
use crate::direction_io::GivenDirection;
use crate::models::clip::preprocess::Resize;
use crate::models::clip::ClipLoss;
use crate::render::{heat_map_in, save_png_atomic, tensor_to_rgb};
use crate::{Error, Result};

/// What to measure.
#[derive(Debug, Clone)]
pub struct Config {
    /// Text prompts (table rows).
    pub prompts: Vec<String>,
    /// Image seeds (table columns).
    pub seeds: Vec<u64>,
    /// Latent files (more columns, after the seeds'; labelled by file
    /// name; see [`crate::latents`]).
    pub latents: Vec<PathBuf>,
    /// Truncation ψ (1 = none).
    pub truncation: f64,
    /// Side of the thumbnails in the heat map, in pixels.
    pub thumb: u32,
    /// The heat map's colour scale `(low, high)`; `None`: the values' range.
    pub scale: Option<(f64, f64)>,
    /// Directions applied to every image (none: the images as they are).
    pub directions: Vec<GivenDirection>,
    /// The α of each edited column, for every direction.
    pub alphas: Vec<f64>,
}

/// The measured table and the images it was measured on.
#[derive(Debug, Clone)]
pub struct Similarity {
    /// The configuration.
    pub config: Config,
    /// `values[prompt][seed]`: cosine similarity of the normalised CLIP
    /// embeddings, in `[-1, 1]`.
    pub values: Vec<Vec<f64>>,
    /// The generated image of each column, full size.
    pub images: Vec<RgbImage>,
    /// The label of each column: `seed N`, or a latent file's label.
    pub labels: Vec<String>,
    /// Generator weights (`demo` or a path).
    pub generator: String,
    /// CLIP weights (`demo` or a path).
    pub clip: String,
    /// True when a demo network was used: the numbers mean nothing.
    pub demo: bool,
}

/// The files [`Similarity::write`] made.
#[derive(Debug, Clone)]
pub struct Outputs {
    /// `similarity.csv`: one row per prompt, one column per seed, then the mean.
    pub csv: PathBuf,
    /// `similarity.png`: the heat map with thumbnails as column headers.
    pub png: PathBuf,
    /// `similarity.json`: the configuration, models and values.
    pub json: PathBuf,
    /// `images/seed-<N>.png`, one per seed.
    pub images: Vec<PathBuf>,
}

/// Generates one image per seed and measures its CLIP similarity to every
/// prompt. `progress` is called after each image.
pub fn run(
    cfg: &Config,
    gen: &LoadedGenerator,
    clip: &ClipModel,
    progress: &mut dyn FnMut(Progress),
) -> Result<Similarity> {
    if cfg.prompts.is_empty() || (cfg.seeds.is_empty() && cfg.latents.is_empty()) {
        return Err(Error::Config("similarity needs at least one prompt and one seed or latent file".into()));
    }
    let g = gen.generator.config();
    let mut columns: Vec<(String, Tensor)> = Vec::new();
    for &seed in &cfg.seeds {
        columns.push((format!("seed {seed}"), gen.w(seed, cfg.truncation)?));
    }
    for l in crate::latents::load_all(&cfg.latents, g.n_latent(), g.style_dim, gen.generator.device())? {
        columns.push((l.label, l.w_plus));
    }
    let columns = edited_columns(columns, &cfg.directions, &cfg.alphas)?;
    let prompts: Vec<&str> = cfg.prompts.iter().map(String::as_str).collect();
    let loss = ClipLoss::new(clip.clip.clone(), &clip.tokenizer, &prompts, Resize::Auto)?;
    let mut values = vec![Vec::with_capacity(columns.len()); prompts.len()];
    let mut images = Vec::with_capacity(columns.len());
    for (i, (label, w)) in columns.iter().enumerate() {
        let image = gen.image(w)?;
        let sims = loss.similarity(&image)?.squeeze(0)?.to_dtype(candle_core::DType::F64)?;
        for (row, v) in values.iter_mut().zip(sims.to_vec1::<f64>()?) {
            row.push(v);
        }
        images.push(tensor_to_rgb(&image)?);
        progress(Progress { done: i + 1, total: columns.len(), what: label.clone() });
    }
    Ok(Similarity {
        config: cfg.clone(),
        values,
        images,
        labels: columns.into_iter().map(|(l, _)| l).collect(),
        generator: gen.source.describe(),
        clip: clip.source.describe(),
        demo: gen.source.is_demo() || clip.source.is_demo(),
    })
}

/// Each image `(label, w)` once per direction and α, `w + α·u`; the images
/// as they are when there are no directions.
fn edited_columns(
    images: Vec<(String, Tensor)>,
    directions: &[GivenDirection],
    alphas: &[f64],
) -> Result<Vec<(String, Tensor)>> {
    if directions.is_empty() {
        return Ok(images);
    }
    if alphas.is_empty() {
        return Err(Error::Config("similarity with directions needs at least one α".into()));
    }
    let mut out = Vec::with_capacity(images.len() * directions.len() * alphas.len());
    for (label, w) in &images {
        for d in directions {
            let u = d.direction.to_device(w.device())?.to_dtype(w.dtype())?;
            for &a in alphas {
                // A seed's W `[1, D]` goes onto every layer of W+ `[1, L, D]`.
                out.push((format!("{label} {} α={a:+}", d.label), w.broadcast_add(&(&u * a)?)?));
            }
        }
    }
    Ok(out)
}

/// Mean of the finite values (NaN when there are none).
pub fn mean(values: &[f64]) -> f64 {
    let f: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if f.is_empty() {
        f64::NAN
    } else {
        f.iter().sum::<f64>() / f.len() as f64
    }
}

#[derive(Serialize)]
struct Json<'a> {
    prompts: &'a [String],
    seeds: &'a [u64],
    /// The column labels, seeds first, then latent files (each once per
    /// direction and α when directions were given).
    columns: &'a [String],
    /// The given directions' labels.
    directions: Vec<&'a str>,
    /// The α of the edited columns.
    alphas: &'a [f64],
    truncation: f64,
    generator: &'a str,
    clip: &'a str,
    demo: bool,
    /// `[prompt][seed]`
    values: &'a [Vec<f64>],
}

impl Similarity {
    /// The table as CSV: `prompt,seed <N>…,mean`.
    pub fn to_csv(&self) -> String {
        let mut header = vec!["prompt".to_string()];
        header.extend(self.labels.iter().cloned());
        header.push("mean".into());
        let mut out = csv_line(&header);
        for (p, row) in self.config.prompts.iter().zip(&self.values) {
            let mut line = vec![p.clone()];
            line.extend(row.iter().map(|v| csv_number(*v)));
            line.push(csv_number(mean(row)));
            out.push_str(&csv_line(&line));
        }
        out
    }

    /// The table for the terminal (prompts cut to 40 characters, 3 decimals).
    pub fn to_table(&self) -> String {
        let mut header = vec!["prompt \\ seed".to_string()];
        header.extend(self.labels.iter().map(|l| l.strip_prefix("seed ").unwrap_or(l).to_string()));
        header.push("mean".into());
        let rows: Vec<Vec<String>> = self
            .config
            .prompts
            .iter()
            .zip(&self.values)
            .map(|(p, row)| {
                let mut r = vec![ellipsize(p, 40)];
                r.extend(row.iter().map(|v| format!("{v:.3}")));
                r.push(format!("{:.3}", mean(row)));
                r
            })
            .collect();
        let mut t = text_table(&header, &rows);
        if self.demo {
            t.push_str(crate::demo::DEMO_LABEL);
            t.push('\n');
        }
        t
    }

    /// The heat map: prompts × seeds, thumbnails as column headers.
    pub fn heat_map(&self) -> RgbImage {
        let side = self.config.thumb.max(8);
        let thumbs: Vec<RgbImage> =
            self.images.iter().zip(&self.labels).map(|(im, label)| labelled_thumb(im, side, label)).collect();
        let title = format!("CLIP similarity (cosine), truncation {}", self.config.truncation);
        let footer = self.demo.then_some(crate::demo::DEMO_LABEL);
        heat_map_in(&self.values, &self.config.prompts, &thumbs, &title, footer, self.config.scale)
    }

    /// Writes `similarity.csv`, `similarity.png`, `similarity.json` and
    /// `images/seed-<N>.png` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<Outputs> {
        let csv = dir.join("similarity.csv");
        write_atomic(&csv, &self.to_csv())?;
        let png = dir.join("similarity.png");
        save_png_atomic(&self.heat_map(), &png)?;
        let json = dir.join("similarity.json");
        let body = Json {
            prompts: &self.config.prompts,
            seeds: &self.config.seeds,
            columns: &self.labels,
            directions: self.config.directions.iter().map(|d| d.label.as_str()).collect(),
            alphas: if self.config.directions.is_empty() { &[] } else { &self.config.alphas },
            truncation: self.config.truncation,
            generator: &self.generator,
            clip: &self.clip,
            demo: self.demo,
            values: &self.values,
        };
        let text = serde_json::to_string_pretty(&body).map_err(|e| Error::Config(format!("similarity.json: {e}")))?;
        write_atomic(&json, &text)?;
        let mut images = Vec::new();
        for (label, im) in self.labels.iter().zip(&self.images) {
            // `seed 3` → `seed-3.png`; a latent file's label as is.
            let p = dir.join("images").join(format!("{}.png", label.replace(' ', "-")));
            save_png_atomic(im, &p)?;
            images.push(p);
        }
        Ok(Outputs { csv, png, json, images })
    }
}

/// A thumbnail of `im` (fitting `side × side`) with `label` centred under it.
pub fn labelled_thumb(im: &RgbImage, side: u32, label: &str) -> RgbImage {
    use crate::render::{draw_text, text_width, BLACK, GLYPH, WHITE};
    let t = image::imageops::thumbnail(im, side, side);
    let w = t.width().max(text_width(label, 1));
    let mut out = RgbImage::from_pixel(w, t.height() + GLYPH + 4, WHITE);
    image::imageops::replace(&mut out, &t, i64::from((w - t.width()) / 2), 0);
    let x = (w - text_width(label, 1)) / 2;
    draw_text(&mut out, x as i32, (t.height() + 3) as i32, label, BLACK, 1);
    out
}

/// `[1, 3, H, W]` images of a batch of seeds, for callers that want the
/// tensors rather than the table.
pub fn images(gen: &LoadedGenerator, seeds: &[u64], truncation: f64) -> Result<Vec<Tensor>> {
    seeds.iter().map(|&s| gen.image(&gen.w(s, truncation)?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiments::models::Source;
    use candle_core::Device;

    #[test]
    fn demo_table_has_the_right_shape_and_range() {
        let dev = Device::Cpu;
        let gen = LoadedGenerator::load(&Source::Demo, &dev).unwrap();
        let clip = ClipModel::load(&Source::Demo, &dev).unwrap();
        let cfg = Config {
            prompts: vec!["a photo of a person with gray hair".into(), "a, \"quoted\" prompt".into()],
            seeds: vec![0, 1, 2],
            latents: Vec::new(),
            truncation: 0.7,
            thumb: 32,
            scale: None,
            directions: Vec::new(),
            alphas: Vec::new(),
        };
        let mut calls = 0;
        let s = run(&cfg, &gen, &clip, &mut |p| {
            calls += 1;
            assert_eq!(p.total, 3);
        })
        .unwrap();
        assert_eq!(calls, 3);
        assert_eq!(s.values.len(), 2);
        assert!(s.values.iter().all(|r| r.len() == 3));
        assert!(s.values.iter().flatten().all(|v| v.is_finite() && (-1.0..=1.0).contains(v)));
        // Different images give different similarities.
        assert_ne!(s.values[0][0], s.values[0][1]);
        assert!(s.demo);
        let csv = s.to_csv();
        assert_eq!(csv.lines().count(), 3);
        assert!(csv.starts_with("prompt,seed 0,seed 1,seed 2,mean\n"));
        assert!(s.to_table().contains(crate::demo::DEMO_LABEL));

        let dir = tempfile::tempdir().unwrap();
        let out = s.write(dir.path()).unwrap();
        let png = image::open(&out.png).unwrap().to_rgb8();
        assert!(png.width() > 3 * 32 && png.height() > 32);
        assert_eq!(out.images.len(), 3);
        assert!(out.json.is_file());
        // Same seeds, same numbers.
        let again = run(&cfg, &gen, &clip, &mut |_| {}).unwrap();
        assert_eq!(again.values, s.values);
    }

    #[test]
    fn a_latent_file_is_a_column_labelled_by_its_name() {
        let dev = Device::Cpu;
        let gen = LoadedGenerator::load(&Source::Demo, &dev).unwrap();
        let clip = ClipModel::load(&Source::Demo, &dev).unwrap();
        // Seed 1's W+, saved as an inversion encoder would save a photo's.
        let dir = tempfile::tempdir().unwrap();
        let w = gen.w_plus(1, 0.7).unwrap().squeeze(0).unwrap();
        let path = dir.path().join("my photo.npy");
        crate::npy::write(&path, w.dims(), &w.flatten_all().unwrap().to_vec1::<f32>().unwrap()).unwrap();
        let cfg = Config {
            prompts: vec!["gray hair".into()],
            seeds: vec![1],
            latents: vec![path],
            truncation: 0.7,
            thumb: 16,
            scale: None,
            directions: Vec::new(),
            alphas: Vec::new(),
        };
        let s = run(&cfg, &gen, &clip, &mut |_| {}).unwrap();
        assert_eq!(s.labels, ["seed 1", "my_photo"]);
        assert_eq!(s.values[0][0], s.values[0][1], "the same latent gives the same similarity");
        assert!(s.to_csv().starts_with("prompt,seed 1,my_photo,mean\n"));
        let out = s.write(dir.path()).unwrap();
        assert!(out.images[1].ends_with("images/my_photo.png"), "{:?}", out.images);
    }

    #[test]
    fn given_directions_make_one_column_per_direction_and_alpha() {
        let dev = Device::Cpu;
        let gen = LoadedGenerator::load(&Source::Demo, &dev).unwrap();
        let clip = ClipModel::load(&Source::Demo, &dev).unwrap();
        let g = gen.generator.config();
        let (l, d) = (g.n_latent(), g.style_dim);
        // Direction 0 is zero (edits nothing); direction 1 moves every layer.
        let mut data = vec![0f32; l * d];
        data.extend((0..l * d).map(|i| ((i * 7919 % 13) as f32 - 6.0) / 6.0));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("two.safetensors");
        let direction = Tensor::from_vec(data, (2, l, d), &dev).unwrap();
        let meta = crate::direction_io::external_meta("two", "test", "demo", "demo", &(0..l).collect::<Vec<_>>());
        crate::outputs::write_direction(&file, &crate::outputs::Direction { direction, latent: None, meta }).unwrap();
        let directions = crate::direction_io::load_given(&[file.display().to_string()], l, d, &dev).unwrap();
        let plain = Config {
            prompts: vec!["gray hair".into(), "a smile".into()],
            seeds: vec![4],
            latents: Vec::new(),
            truncation: 0.7,
            thumb: 16,
            scale: None,
            directions: Vec::new(),
            alphas: Vec::new(),
        };
        let before = run(&plain, &gen, &clip, &mut |_| {}).unwrap();
        let cfg = Config { directions, alphas: vec![0.0, 2.0], ..plain };
        let s = run(&cfg, &gen, &clip, &mut |_| {}).unwrap();
        assert_eq!(
            s.labels,
            [
                "seed 4 two.safetensors@0 α=+0",
                "seed 4 two.safetensors@0 α=+2",
                "seed 4 two.safetensors@1 α=+0",
                "seed 4 two.safetensors@1 α=+2"
            ]
        );
        for (row, base) in s.values.iter().zip(&before.values) {
            // α = 0 and the zero direction leave the image as it was.
            assert_eq!([row[0], row[1], row[2]], [base[0]; 3]);
            assert_ne!(row[3], base[0], "a real direction at α = 2 changes the image");
        }
        let out = s.write(dir.path()).unwrap();
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.json).unwrap()).unwrap();
        assert_eq!(json["directions"], serde_json::json!(["two.safetensors@0", "two.safetensors@1"]));
        assert_eq!(json["alphas"], serde_json::json!([0.0, 2.0]));
        let e = run(&Config { alphas: Vec::new(), ..cfg }, &gen, &clip, &mut |_| {}).unwrap_err().to_string();
        assert!(e.contains("at least one α"), "{e}");
    }
}

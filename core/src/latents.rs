//! Latent files: a real photo's W+ latent, as an inversion encoder (e4e,
//! pSp, ReStyle) saves it, used wherever a seed names an image.
//!
//! A file is `.npy` ([`crate::npy`]), `.pt` / `.pth` (the restricted torch
//! reader, [`crate::torch`]) or `.safetensors`, holding one tensor (or one
//! named `latent`, `latents`, `w_plus`, `w` or `wp`) of shape `[L, D]` (one
//! image's W+), `[N, L, D]` (N images) or `[D]` (one W, broadcast to every
//! layer), where `L × D` is the loaded generator's W+. Each image is
//! labelled by the file's stem (`me`), with its index for a file of several
//! (`me[2]`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::{Error, Result};

/// The first of the keys that stand for latent-file images where the
/// training engine names images by seed: image `i` of a recipe's `latents`
/// (in file order) is `KEY_BASE + i`. Seeds this large are refused.
pub const KEY_BASE: u64 = u64::MAX - (1 << 24);

/// The key of latent image `i` ([`KEY_BASE`]).
pub fn key(i: usize) -> u64 {
    KEY_BASE + i as u64
}

/// The latent image a key stands for, or `None` for a seed.
pub fn index(key: u64) -> Option<usize> {
    (key >= KEY_BASE).then(|| (key - KEY_BASE) as usize)
}

/// Names under which a checkpoint-style file may hold its latent when it
/// holds several tensors.
const LATENT_KEYS: [&str; 5] = ["latent", "latents", "w_plus", "w", "wp"];

/// One image given by its latent.
#[derive(Debug, Clone)]
pub struct LatentImage {
    /// The label shown in previews and used in file names: the file stem,
    /// plus `[i]` for a file of several latents.
    pub label: String,
    /// The file it came from.
    pub path: PathBuf,
    /// W+ `[1, L, D]`, f32.
    pub w_plus: Tensor,
}

/// Reads every latent of `path` for a generator whose W+ is `[n_latent,
/// style_dim]`, onto `device`.
pub fn load(path: &Path, n_latent: usize, style_dim: usize, device: &Device) -> Result<Vec<LatentImage>> {
    let t = read_tensor(path)?.to_dtype(DType::F32)?.to_device(device)?;
    let expected = || {
        format!(
            "[{n_latent}, {style_dim}] (one W+), [N, {n_latent}, {style_dim}] (N images) or [{style_dim}] (one W) for this generator"
        )
    };
    let bad = |got: &[usize]| Error::Checkpoint {
        path: path.to_path_buf(),
        reason: format!(
            "the latent has shape {got:?}; expected {}; was it inverted for a generator of another size?",
            expected()
        ),
    };
    let all = match *t.dims() {
        [d] if d == style_dim => t.reshape((1, 1, d))?.broadcast_as((1, n_latent, d))?.contiguous()?,
        [l, d] if (l, d) == (n_latent, style_dim) => t.unsqueeze(0)?,
        [n, l, d] if (l, d) == (n_latent, style_dim) && n > 0 => t,
        _ => return Err(bad(t.dims())),
    };
    let n = all.dim(0)?;
    let stem = label_of(path);
    (0..n)
        .map(|i| {
            let label = if n == 1 { stem.clone() } else { format!("{stem}[{i}]") };
            Ok(LatentImage { label, path: path.to_path_buf(), w_plus: all.narrow(0, i, 1)?.contiguous()? })
        })
        .collect()
}

/// Reads every file of `paths` ([`load`]), in order.
pub fn load_all(paths: &[PathBuf], n_latent: usize, style_dim: usize, device: &Device) -> Result<Vec<LatentImage>> {
    let mut out = Vec::new();
    for p in paths {
        out.extend(load(p, n_latent, style_dim, device)?);
    }
    Ok(out)
}

/// A file's label: its stem, with characters that are unsafe in a file
/// name replaced by `_`.
pub fn label_of(path: &Path) -> String {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "latent".into());
    stem.chars().map(|c| if c.is_alphanumeric() || "-_.+".contains(c) { c } else { '_' }).collect()
}

/// The one tensor of a latent file, on the CPU.
fn read_tensor(path: &Path) -> Result<Tensor> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    if ext == "npy" {
        let a = crate::npy::read(path)?;
        return Ok(Tensor::from_vec(a.data, a.shape, &Device::Cpu)?);
    }
    if !path.is_file() {
        return Err(Error::Checkpoint {
            path: path.to_path_buf(),
            reason: "no such file; give a latent saved as .npy, .pt or .safetensors".into(),
        });
    }
    pick(path, crate::torch::load(path)?)
}

/// The latent among a file's tensors: the only one, or the one under a
/// [`LATENT_KEYS`] name.
fn pick(path: &Path, mut tensors: HashMap<String, Tensor>) -> Result<Tensor> {
    if tensors.len() == 1 {
        return Ok(tensors.into_values().next().expect("one tensor"));
    }
    if let Some(k) = LATENT_KEYS.iter().find(|k| tensors.contains_key(**k)) {
        return Ok(tensors.remove(*k).expect("present"));
    }
    let mut names: Vec<_> = tensors.into_keys().collect();
    names.sort();
    Err(Error::Checkpoint {
        path: path.to_path_buf(),
        reason: format!(
            "{} tensors ({}) and none named {}; save the latent alone, or under one of those names",
            names.len(),
            names.iter().take(8).map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", "),
            LATENT_KEYS.map(|k| format!("'{k}'")).join(", ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_npy(dir: &Path, name: &str, shape: &[usize]) -> PathBuf {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
        let p = dir.join(name);
        crate::npy::write(&p, shape, &data).unwrap();
        p
    }

    #[test]
    fn every_accepted_shape_becomes_w_plus_with_labels() {
        let dir = tempfile::tempdir().unwrap();
        let (l, d) = (6, 4);
        let one = load(&write_npy(dir.path(), "me.npy", &[l, d]), l, d, &Device::Cpu).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].label, "me");
        assert_eq!(one[0].w_plus.dims(), &[1, l, d]);
        assert_eq!(one[0].w_plus.flatten_all().unwrap().to_vec1::<f32>().unwrap()[5], 2.5);

        let three = load(&write_npy(dir.path(), "family photo.npy", &[3, l, d]), l, d, &Device::Cpu).unwrap();
        let labels: Vec<_> = three.iter().map(|x| x.label.as_str()).collect();
        assert_eq!(labels, ["family_photo[0]", "family_photo[1]", "family_photo[2]"]);
        assert_eq!(
            three[2].w_plus.get(0).unwrap().get(0).unwrap().to_vec1::<f32>().unwrap(),
            vec![24.0, 24.5, 25.0, 25.5]
        );

        // One W is broadcast to every layer.
        let w = load(&write_npy(dir.path(), "w.npy", &[d]), l, d, &Device::Cpu).unwrap();
        let rows = w[0].w_plus.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        assert!(rows.iter().all(|r| r == &rows[0]) && rows.len() == l);

        // safetensors, under a known name beside other tensors.
        let t = Tensor::ones((1, l, d), DType::F32, &Device::Cpu).unwrap();
        let other = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        let p = dir.path().join("inv.safetensors");
        crate::outputs::write_tensors(&p, &[("latent", &t), ("loss", &other)], &Default::default()).unwrap();
        assert_eq!(load(&p, l, d, &Device::Cpu).unwrap()[0].label, "inv");
    }

    #[test]
    fn wrong_shapes_and_ambiguous_files_say_what_is_expected() {
        let dir = tempfile::tempdir().unwrap();
        let e = load(&write_npy(dir.path(), "x.npy", &[14, 4]), 6, 4, &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("[14, 4]") && e.contains("[6, 4] (one W+)") && e.contains("[4] (one W)"), "{e}");
        let e = load(&write_npy(dir.path(), "y.npy", &[2, 6, 5]), 6, 4, &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("[N, 6, 4]"), "{e}");
        let a = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        let p = dir.path().join("two.safetensors");
        crate::outputs::write_tensors(&p, &[("a", &a), ("b", &a)], &Default::default()).unwrap();
        let e = load(&p, 6, 4, &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("'a', 'b'") && e.contains("'latent'"), "{e}");
        let e = load(&dir.path().join("missing.pt"), 6, 4, &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("no such file"), "{e}");
    }

    /// `torch.save(latents, "x.pt")` of a bare `[2, L, D]` tensor, as the
    /// inversion encoders write it, read by the restricted torch reader.
    #[test]
    fn a_torch_file_of_the_bare_tensor_loads() {
        use crate::fuzzing::hostile::{zip, Pickle};
        let (l, d) = (3, 4);
        let mut pkl = Pickle::default();
        pkl.op(b"\x80\x02").tensor("0", 2 * 12, 0, &[2, 3, 4], &[12, 4, 1], false).op(b".");
        let data: Vec<u8> = (0..24).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("inverted.pt");
        std::fs::write(&p, zip(&pkl.0, &[("0", data)], false)).unwrap();
        let imgs = load(&p, l, d, &Device::Cpu).unwrap();
        assert_eq!(imgs.iter().map(|x| x.label.as_str()).collect::<Vec<_>>(), ["inverted[0]", "inverted[1]"]);
        assert_eq!(
            imgs[1].w_plus.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            (12..24).map(|i| i as f32).collect::<Vec<_>>()
        );
    }
}

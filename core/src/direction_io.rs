//! Directions from other methods, in our direction format, and ours out as
//! `.npy`.
//!
//! - [`import_npy`]: an InterFaceGAN boundary (`[1, 512]` or `[512]`, a
//!   unit normal in W), GANSpace components (`[K, 512]` in W) or any W+
//!   direction (`[18, 512]`, `[K, 18, 512]`) becomes `[K, L, D]`: a W
//!   direction is copied onto each chosen layer (all by default), so `α`
//!   moves each of those layers by `α·|v|`.
//! - [`external_meta`]: the metadata of a direction that was not trained by
//!   a recipe (imported, or SeFa's), so `lsd-tui apply` knows its generator.
//! - [`export_npy`]: a direction file's `[K, L, D]` as `<f4` `.npy`.
//! - [`read_one`] and [`load_given`]: directions out of direction files
//!   (`FILE` for all of a file's, `FILE@K` for one), for `apply`,
//!   `similarity` and `generalize`, whatever made them.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::outputs::{read_direction, DirectionMeta, DIRECTION_FORMAT};
use crate::{Error, Result};

/// Reads a `.npy` direction for a generator with W+ `[n_latent,
/// style_dim]`; W directions go onto `layers` (every layer when `None`).
pub fn import_npy(
    path: &Path,
    n_latent: usize,
    style_dim: usize,
    layers: Option<&[usize]>,
    device: &Device,
) -> Result<Tensor> {
    let a = crate::npy::read(path)?;
    let (l, d) = (n_latent, style_dim);
    let bad = || {
        Error::Checkpoint {
        path: path.to_path_buf(),
        reason: format!(
            "the array has shape {:?}; expected a W direction [{d}] or [K, {d}] (InterFaceGAN, GANSpace), or W+ [{l}, {d}] or [K, {l}, {d}] for this generator",
            a.shape
        ),
    }
    };
    let w_plus = |k: usize, data: Vec<f32>| Ok::<_, Error>(Tensor::from_vec(data, (k, l, d), device)?);
    match a.shape[..] {
        [ll, dd] if (ll, dd) == (l, d) => w_plus(1, a.data),
        [k, ll, dd] if (ll, dd) == (l, d) && k > 0 => w_plus(k, a.data),
        [dd] if dd == d => broadcast(&a.data, 1, l, d, layers, device),
        [k, dd] if dd == d && k > 0 => broadcast(&a.data, k, l, d, layers, device),
        _ => Err(bad()),
    }
}

/// `K` W directions `[K·D]` copied onto `layers` of W+ `[K, L, D]`.
fn broadcast(data: &[f32], k: usize, l: usize, d: usize, layers: Option<&[usize]>, device: &Device) -> Result<Tensor> {
    let mut out = vec![0f32; k * l * d];
    for dir in 0..k {
        for layer in 0..l {
            if layers.is_none_or(|ls| ls.contains(&layer)) {
                out[(dir * l + layer) * d..(dir * l + layer + 1) * d].copy_from_slice(&data[dir * d..(dir + 1) * d]);
            }
        }
    }
    Ok(Tensor::from_vec(out, (k, l, d), device)?)
}

/// Writes `direction` `[K, L, D]` as a `<f4` `.npy` file, atomically.
pub fn export_npy(direction: &Tensor, path: &Path) -> Result<()> {
    let data = direction.to_device(&Device::Cpu)?.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    crate::npy::write(path, direction.dims(), &data)
}

/// Metadata for a direction made without a recipe: `name` and a
/// description in place of the prompt, the generator as named (`demo`, a
/// manifest name or a path) and its checksum, the layers it acts on.
pub fn external_meta(
    name: &str,
    description: &str,
    generator: &str,
    generator_sha256: &str,
    layers: &[usize],
) -> DirectionMeta {
    DirectionMeta {
        format: DIRECTION_FORMAT.into(),
        name: name.into(),
        recipe_hash: String::new(),
        prompt: description.into(),
        mode: "direction".into(),
        terms: Vec::new(),
        generator: generator.into(),
        generator_sha256: generator_sha256.into(),
        truncation: 0.7,
        noise: "stored".into(),
        norm: "none".into(),
        layers: layers.to_vec(),
        alpha: "3".into(),
        steps: 0,
        seed: 0,
        seeds: Vec::new(),
        seed_rng: String::new(),
    }
}

/// A direction file's directions `[K, L, D]` and metadata; a `mode:
/// latent` run's file is refused.
fn read_directions(path: &Path, device: &Device) -> Result<crate::outputs::Direction> {
    let d = read_direction(path, device)?;
    if d.meta.mode == "latent" {
        return Err(Error::Checkpoint {
            path: path.to_path_buf(),
            reason: "holds per-image latents of a 'mode: latent' run, not a direction; give a direction run's file"
                .into(),
        });
    }
    Ok(d)
}

/// Refuses direction `index` of a file of `k`.
fn check_index(path: &Path, k: usize, index: usize) -> Result<()> {
    if index >= k {
        return Err(Error::Checkpoint {
            path: path.to_path_buf(),
            reason: format!("has {k} direction(s) (0..{}); direction {index} does not exist", k - 1),
        });
    }
    Ok(())
}

/// Direction `index` of a direction file, `[1, L, D]`, and the file's
/// metadata with its name (`name@K` in a file of several directions).
pub fn read_one(path: &Path, index: usize, device: &Device) -> Result<(Tensor, DirectionMeta)> {
    let d = read_directions(path, device)?;
    let k = d.direction.dim(0)?;
    check_index(path, k, index)?;
    let mut meta = d.meta;
    if k > 1 {
        meta.name = format!("{}@{index}", meta.name);
    }
    Ok((d.direction.narrow(0, index, 1)?, meta))
}

/// One direction named on a command line.
#[derive(Debug, Clone)]
pub struct GivenDirection {
    /// The file name, with `@K` in a file of several directions.
    pub label: String,
    /// `[1, L, D]`.
    pub direction: Tensor,
    /// The file's metadata.
    pub meta: DirectionMeta,
}

/// Splits `FILE@K` into the file and `K`; a plain `FILE` gives `None`.
pub fn parse_ref(text: &str) -> (PathBuf, Option<usize>) {
    match text.rsplit_once('@') {
        Some((file, k)) if !file.is_empty() => match k.parse() {
            Ok(k) => (PathBuf::from(file), Some(k)),
            Err(_) => (PathBuf::from(text), None),
        },
        _ => (PathBuf::from(text), None),
    }
}

/// The directions `refs` name (`FILE`: every direction of the file,
/// `FILE@K`: the K-th), checked against a generator with W+ `[n_latent,
/// style_dim]`.
pub fn load_given(refs: &[String], n_latent: usize, style_dim: usize, device: &Device) -> Result<Vec<GivenDirection>> {
    let mut out = Vec::new();
    for r in refs {
        let (path, index) = parse_ref(r);
        let d = read_directions(&path, device)?;
        let (k, l, dim) = d.direction.dims3()?;
        if (l, dim) != (n_latent, style_dim) {
            return Err(Error::Checkpoint {
                path: path.clone(),
                reason: format!(
                    "its directions are W+ [{l}, {dim}], but the generator's W+ is [{n_latent}, {style_dim}]; give a direction made for this generator"
                ),
            });
        }
        let picked: Vec<usize> = match index {
            Some(i) => {
                check_index(&path, k, i)?;
                vec![i]
            }
            None => (0..k).collect(),
        };
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| r.clone());
        for i in picked {
            let label = if k > 1 { format!("{name}@{i}") } else { name.clone() };
            out.push(GivenDirection { label, direction: d.direction.narrow(0, i, 1)?, meta: d.meta.clone() });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn w_directions_go_onto_the_chosen_layers_and_export_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("boundary.npy");
        crate::npy::write(&p, &[1, 3], &[1.0, 2.0, 3.0]).unwrap();
        let t = import_npy(&p, 4, 3, Some(&[1, 3]), &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[1, 4, 3]);
        assert_eq!(
            t.squeeze(0).unwrap().to_vec2::<f32>().unwrap(),
            vec![vec![0.0; 3], vec![1.0, 2.0, 3.0], vec![0.0; 3], vec![1.0, 2.0, 3.0]]
        );
        crate::npy::write(&p, &[2, 3], &[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]).unwrap();
        let t = import_npy(&p, 4, 3, None, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[2, 4, 3]);
        assert_eq!(t.get(1).unwrap().get(2).unwrap().to_vec1::<f32>().unwrap(), vec![0.0, 1.0, 0.0]);
        // W+ as is, and out again.
        let wp: Vec<f32> = (0..12).map(|i| i as f32).collect();
        crate::npy::write(&p, &[4, 3], &wp).unwrap();
        let t = import_npy(&p, 4, 3, None, &Device::Cpu).unwrap();
        let out = dir.path().join("out.npy");
        export_npy(&t, &out).unwrap();
        let back = crate::npy::read(&out).unwrap();
        assert_eq!((back.shape, back.data), (vec![1, 4, 3], wp));
        crate::npy::write(&p, &[5, 2], &[0.0; 10]).unwrap();
        let e = import_npy(&p, 4, 3, None, &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("[5, 2]") && e.contains("[K, 3]") && e.contains("[4, 3]"), "{e}");
    }

    #[test]
    fn given_directions_are_picked_labelled_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sefa.safetensors");
        let data: Vec<f32> = (0..3 * 4 * 2).map(|i| i as f32).collect();
        let direction = Tensor::from_vec(data, (3, 4, 2), &Device::Cpu).unwrap();
        let meta = external_meta("sefa", "SeFa", "demo", "demo", &[0, 1, 2, 3]);
        crate::outputs::write_direction(&p, &crate::outputs::Direction { direction, latent: None, meta }).unwrap();
        let file = p.display().to_string();

        let all = load_given(std::slice::from_ref(&file), 4, 2, &Device::Cpu).unwrap();
        let labels: Vec<&str> = all.iter().map(|g| g.label.as_str()).collect();
        assert_eq!(labels, ["sefa.safetensors@0", "sefa.safetensors@1", "sefa.safetensors@2"]);
        assert_eq!(all[2].direction.dims(), &[1, 4, 2]);
        assert_eq!(all[2].direction.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0], 16.0);

        let one = load_given(&[format!("{file}@1")], 4, 2, &Device::Cpu).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].label, "sefa.safetensors@1");
        assert_eq!(one[0].direction.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0], 8.0);
        let (u, meta) = read_one(&p, 1, &Device::Cpu).unwrap();
        assert_eq!(u.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0], 8.0);
        assert_eq!(meta.name, "sefa@1");

        let e = load_given(&[format!("{file}@3")], 4, 2, &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("has 3 direction(s)") && e.contains("sefa.safetensors"), "{e}");
        let e = load_given(std::slice::from_ref(&file), 18, 512, &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("[4, 2]") && e.contains("[18, 512]"), "{e}");
        assert_eq!(parse_ref("a@b.safetensors"), (PathBuf::from("a@b.safetensors"), None));
        assert_eq!(parse_ref("x.safetensors@12"), (PathBuf::from("x.safetensors"), Some(12)));
    }
}

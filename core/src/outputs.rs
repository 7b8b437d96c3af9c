//! What a run writes, and how: every file is written atomically and
//! durably ([`crate::durable`]: a temporary file in the same folder,
//! flushed, renamed over the target, the folder flushed), so a reader — or
//! a killed run — never sees half a file.
//!
//! - [`write_atomic`]: the primitive.
//! - [`write_tensors`] / [`read_tensors`]: safetensors with string metadata
//!   (the `safetensors` crate; f32, f64 and u32 tensors).
//! - [`DirectionMeta`], [`write_direction`], [`read_direction`]:
//!   `direction.safetensors`, the trained direction(s) with the facts needed
//!   to reuse them (`lsd-tui apply`): recipe hash, prompt, terms and weights,
//!   generator weights and their checksum (or `demo`).
//! - [`csv`] writes `losses.csv`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Writes `bytes` to `path` atomically and durably ([`crate::durable`]).
/// Creates the parent folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::durable::write(path, bytes)
}

/// The lock file of a run folder.
pub const LOCK_FILE: &str = ".lsd-run.lock";

/// The exclusive lock of a run folder, held while a run writes it: a
/// second run on the same folder (from this process or another) is refused
/// with the first one's PID. An OS file lock (`flock`), so it is released
/// whatever way its process ends; the file stays, holding the last PID.
#[derive(Debug)]
pub struct RunLock {
    folder: PathBuf,
    #[allow(dead_code)] // held for its lock
    file: std::fs::File,
}

impl RunLock {
    /// Locks `folder` (created if needed), or says who holds it.
    pub fn acquire(folder: &Path) -> Result<Self> {
        use std::io::{Read, Seek, Write};
        std::fs::create_dir_all(folder).map_err(|e| Error::io("creating folder", folder, e))?;
        let path = folder.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io("opening", &path, e))?;
        if !try_lock(&file).map_err(|e| Error::io("locking", &path, e))? {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(Error::RunFolderInUse { path: folder.to_path_buf(), pid: text.trim().parse().ok() });
        }
        let pid = format!("{}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(pid.as_bytes()))
            .map_err(|e| Error::io("writing", &path, e))?;
        Ok(Self { folder: folder.to_path_buf(), file })
    }

    /// The locked folder.
    pub fn folder(&self) -> &Path {
        &self.folder
    }
}

/// Takes an exclusive lock without waiting: `Ok(false)` when another open
/// file holds it.
#[cfg(unix)]
fn try_lock(file: &std::fs::File) -> std::io::Result<bool> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: `flock` on a file descriptor we own; no memory is involved.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == std::io::ErrorKind::WouldBlock {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Elsewhere: the standard library's lock (the same semantics).
#[cfg(not(unix))]
fn try_lock(file: &std::fs::File) -> std::io::Result<bool> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(std::fs::TryLockError::WouldBlock) => Ok(false),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// A tensor's bytes (little-endian) and safetensors dtype; f16/bf16 are
/// widened to f32.
fn tensor_bytes(t: &Tensor) -> Result<(Dtype, Vec<u8>)> {
    let t = t.to_device(&Device::Cpu)?.flatten_all()?;
    Ok(match t.dtype() {
        DType::F64 => (Dtype::F64, t.to_vec1::<f64>()?.iter().flat_map(|v| v.to_le_bytes()).collect()),
        DType::U32 => (Dtype::U32, t.to_vec1::<u32>()?.iter().flat_map(|v| v.to_le_bytes()).collect()),
        _ => (Dtype::F32, t.to_dtype(DType::F32)?.to_vec1::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect()),
    })
}

/// Serialises named tensors and metadata into safetensors bytes.
pub fn tensors_to_bytes(tensors: &[(&str, &Tensor)], metadata: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let mut owned = Vec::new();
    for (name, t) in tensors {
        let (dtype, bytes) = tensor_bytes(t)?;
        owned.push((name.to_string(), dtype, t.dims().to_vec(), bytes));
    }
    let views = owned
        .iter()
        .map(|(n, d, s, b)| Ok((n.clone(), TensorView::new(*d, s.clone(), b)?)))
        .collect::<std::result::Result<Vec<_>, safetensors::SafeTensorError>>()
        .map_err(|e| Error::Config(format!("cannot serialise tensors: {e}")))?;
    let meta: HashMap<String, String> = metadata.clone().into_iter().collect();
    safetensors::tensor::serialize(views, Some(meta))
        .map_err(|e| Error::Config(format!("cannot serialise tensors: {e}")))
}

/// Writes named tensors with string metadata as a safetensors file,
/// atomically.
pub fn write_tensors(path: &Path, tensors: &[(&str, &Tensor)], metadata: &BTreeMap<String, String>) -> Result<()> {
    write_atomic(path, &tensors_to_bytes(tensors, metadata)?)
}

/// Reads a safetensors file written by [`write_tensors`]: its tensors (on
/// `device`, in their stored dtype) and its metadata.
pub fn read_tensors(path: &Path, device: &Device) -> Result<(HashMap<String, Tensor>, BTreeMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("reading", path, e))?;
    let bad = |reason: String| Error::Checkpoint { path: path.to_path_buf(), reason };
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(format!("bad header: {e}")))?;
    let metadata: BTreeMap<String, String> = header.metadata().clone().unwrap_or_default().into_iter().collect();
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let data = view.data();
        let t = match view.dtype() {
            Dtype::F32 => {
                let v: Vec<f32> = data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                Tensor::from_vec(v, shape, device)?
            }
            Dtype::F64 => {
                let v: Vec<f64> = data
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect();
                Tensor::from_vec(v, shape, device)?
            }
            Dtype::U32 => {
                let v: Vec<u32> = data.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                Tensor::from_vec(v, shape, device)?
            }
            other => return Err(bad(format!("tensor '{name}' has dtype {other:?}; expected F32, F64 or U32"))),
        };
        out.insert(name, t);
    }
    Ok((out, metadata))
}

/// The `format` value of a direction file.
pub const DIRECTION_FORMAT: &str = "lsd-direction/1";

/// One loss term as recorded in a direction file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TermRecord {
    /// Plugin name or path.
    pub plugin: String,
    /// λ.
    pub weight: f32,
    /// Its parameters, YAML text.
    pub params: String,
}

/// The metadata of `direction.safetensors`.
///
/// Stored as flat string entries of the safetensors header (JSON values for
/// the structured ones), so that any safetensors reader shows them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectionMeta {
    /// [`DIRECTION_FORMAT`].
    pub format: String,
    /// The recipe's name.
    pub name: String,
    /// SHA-256 of the resolved recipe ([`crate::recipe::Recipe::hash`]).
    pub recipe_hash: String,
    /// The text prompt.
    pub prompt: String,
    /// `direction` or `latent`.
    pub mode: String,
    /// The loss terms and their weights.
    pub terms: Vec<TermRecord>,
    /// The generator weights as the recipe named them (`demo`, a manifest
    /// name, or a path).
    pub generator: String,
    /// SHA-256 of the generator weights file, or `demo`.
    pub generator_sha256: String,
    /// Truncation ψ.
    pub truncation: f32,
    /// Generator noise (`stored`, `seeded`, `zero`).
    pub noise: String,
    /// How `u` is normalised (`layer`, `total`, `none`).
    pub norm: String,
    /// Trained W+ layers (empty = all).
    pub layers: Vec<usize>,
    /// The training α, as YAML text (`3` or `{min: …, max: …, min_abs: …}`).
    pub alpha: String,
    /// Steps trained.
    pub steps: usize,
    /// The run's seed.
    pub seed: u64,
    /// The training seeds.
    pub seeds: Vec<u64>,
    /// How seeds become z: `numpy`, or empty for the default ChaCha8.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub seed_rng: String,
}

impl DirectionMeta {
    /// Flat string entries for the safetensors header.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let value = serde_json::to_value(self).unwrap_or_default();
        let mut out = BTreeMap::new();
        if let serde_json::Value::Object(map) = value {
            for (k, v) in map {
                let s = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                out.insert(k, s);
            }
        }
        out
    }

    /// Reads the entries written by [`DirectionMeta::to_map`].
    pub fn from_map(map: &BTreeMap<String, String>) -> Result<Self> {
        let mut obj = serde_json::Map::new();
        for (k, v) in map {
            // Structured values were stored as JSON; plain strings as is.
            let parsed = match k.as_str() {
                "terms" | "layers" | "steps" | "seed" | "seeds" | "truncation" => {
                    serde_json::from_str(v).unwrap_or(serde_json::Value::String(v.clone()))
                }
                _ => serde_json::Value::String(v.clone()),
            };
            obj.insert(k.clone(), parsed);
        }
        serde_json::from_value(serde_json::Value::Object(obj))
            .map_err(|e| Error::Config(format!("direction metadata: {e}; was the file written by lsd-tui run?")))
    }
}

/// A saved direction: `direction` `[K, L, D]` (in latent mode, the per-seed
/// offsets `[N, L, D]`, with `latent` `[N, L, D]` the optimised latents).
#[derive(Debug, Clone)]
pub struct Direction {
    /// The direction(s).
    pub direction: Tensor,
    /// Latent mode only: the optimised latents.
    pub latent: Option<Tensor>,
    /// The metadata.
    pub meta: DirectionMeta,
}

/// Writes `direction.safetensors` atomically.
pub fn write_direction(path: &Path, d: &Direction) -> Result<()> {
    let mut tensors: Vec<(&str, &Tensor)> = vec![("direction", &d.direction)];
    if let Some(l) = &d.latent {
        tensors.push(("latent", l));
    }
    write_tensors(path, &tensors, &d.meta.to_map())
}

/// Reads a file written by [`write_direction`].
pub fn read_direction(path: &Path, device: &Device) -> Result<Direction> {
    let (mut tensors, meta) = read_tensors(path, device)?;
    let bad = |reason: &str| Error::Checkpoint { path: path.to_path_buf(), reason: reason.into() };
    if meta.get("format").map(String::as_str) != Some(DIRECTION_FORMAT) {
        return Err(bad(&format!(
            "not an lsd-tui direction file (metadata 'format' is not '{DIRECTION_FORMAT}'); give the direction.safetensors of a run folder"
        )));
    }
    let direction = tensors.remove("direction").ok_or_else(|| bad("no 'direction' tensor"))?;
    Ok(Direction { direction, latent: tensors.remove("latent"), meta: DirectionMeta::from_map(&meta)? })
}

/// A CSV text: a header row and numeric rows (shortest round-trip floats).
pub fn csv(header: &[String], rows: &[Vec<f64>]) -> String {
    use crate::experiments::table::csv_line;
    let mut s = csv_line(header);
    for row in rows {
        s.push_str(&csv_line(&row.iter().map(|v| format!("{v}")).collect::<Vec<_>>()));
    }
    s
}

/// Writes pretty JSON atomically.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let mut text =
        serde_json::to_string_pretty(value).map_err(|e| Error::Config(format!("cannot encode JSON: {e}")))?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> DirectionMeta {
        DirectionMeta {
            format: DIRECTION_FORMAT.into(),
            name: "gray".into(),
            recipe_hash: "ab".into(),
            prompt: "gray hair".into(),
            mode: "direction".into(),
            terms: vec![TermRecord { plugin: "clip".into(), weight: 1.0, params: "{}\n".into() }],
            generator: "demo".into(),
            generator_sha256: "demo".into(),
            truncation: 0.7,
            noise: "stored".into(),
            norm: "layer".into(),
            layers: vec![1, 2],
            alpha: "3".into(),
            steps: 10,
            seed: 4,
            seeds: vec![0, 1],
            seed_rng: "numpy".into(),
        }
    }

    #[test]
    fn direction_round_trips_with_metadata() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("creating", "tempdir", e))?;
        let path = dir.path().join("sub/direction.safetensors");
        let t = Tensor::new(&[[[1f32, -2.5], [0.25, 3.0]]], &Device::Cpu)?;
        write_direction(&path, &Direction { direction: t.clone(), latent: None, meta: meta() })?;
        let back = read_direction(&path, &Device::Cpu)?;
        assert_eq!(back.meta, meta());
        assert_eq!(back.direction.to_vec3::<f32>()?, t.to_vec3::<f32>()?);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().expect("parent"))
            .map_err(|e| Error::io("listing", dir.path(), e))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        Ok(())
    }

    #[test]
    fn f64_tensors_and_csv() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("creating", "tempdir", e))?;
        let path = dir.path().join("h.safetensors");
        let h = Tensor::new(&[[0.1f64, 1e-17]], &Device::Cpu)?;
        write_tensors(&path, &[("h", &h)], &BTreeMap::new())?;
        let (t, _) = read_tensors(&path, &Device::Cpu)?;
        assert_eq!(t["h"].to_vec2::<f64>()?, vec![vec![0.1, 1e-17]]);
        assert_eq!(csv(&["a".into(), "b".into()], &[vec![1.0, 0.5]]), "a,b\n1,0.5\n");
        let err = read_direction(&path, &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("not an lsd-tui direction"), "{err}");
        Ok(())
    }
}

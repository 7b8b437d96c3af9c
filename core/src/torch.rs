//! Reading PyTorch checkpoints without executing pickle code.
//!
//! `torch.load` unpickles, and unpickling can call any Python function the
//! file names, so a downloaded `.pt` is a program. This module reads the
//! three containers real checkpoints come in and only ever *interprets* a
//! fixed whitelist of pickle globals (module `pickle`):
//! - the torch zip format (PyTorch ≥ 1.6): `<dir>/data.pkl` plus one member
//!   `<dir>/data/<key>` per storage (`_load` in
//!   [torch/serialization.py](https://github.com/pytorch/pytorch/blob/main/torch/serialization.py));
//! - the legacy stream format (PyTorch < 1.6, e.g. rosinality's converted
//!   StyleGAN2 weights, the ArcFace IR-SE50 and BiSeNet face-parsing
//!   checkpoints), see module `legacy`;
//! - safetensors;
//! - plain pickles of persistent-class networks: NVIDIA's StyleGAN2-ADA
//!   snapshots (`network-snapshot-*.pkl`, `ffhq.pkl`), whose storages are
//!   nested legacy streams inside the pickle. Each network is read as a
//!   record (class name, plain attributes, parameters and buffers under
//!   their `state_dict()` names, see [`load_network`]); the Python source it
//!   embeds, which the upstream loader executes, is never looked at.
//!
//! The format is chosen by content, not by extension. Tensors are strided
//! views of storages (`_rebuild_tensor_v2(storage, offset, size, stride)`);
//! they are materialised contiguously on the CPU whatever their strides
//! (converted TensorFlow weights are transposed views), and only the storages
//! that selected tensors use are read.

mod legacy;
mod pickle;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};

use crate::{Error, Result};
use pickle::{Budget, Obj, PidStyle, StorageDtype, TensorRef, Unpickled, Value};

/// Name, element type and shape of one tensor of a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Flattened key (`g_ema.style.1.weight`).
    pub name: String,
    /// Element type of the tensor as [`load`] returns it.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<usize>,
}

/// What [`convert_to_safetensors`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvertSummary {
    /// Number of tensors written.
    pub tensors: usize,
    /// Number of non-tensor leaves (ints, strings, `argparse.Namespace`, …)
    /// that were dropped.
    pub skipped: usize,
    /// Size of the written file in bytes.
    pub bytes: u64,
    /// SHA-256 of the input file, hex.
    pub source_sha256: String,
}

/// The container format of a checkpoint file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Torch zip archive (`torch.save` since PyTorch 1.6).
    TorchZip,
    /// Legacy `torch.save` stream (before PyTorch 1.6).
    TorchLegacy,
    /// safetensors.
    Safetensors,
    /// A plain pickle of persistent-class networks (StyleGAN2-ADA `.pkl`).
    NetworkPickle,
}

/// A plain attribute of a pickled network object.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    /// `None`.
    None,
    /// A bool.
    Bool(bool),
    /// An int (or an integer NumPy scalar).
    Int(i64),
    /// A float (or a floating-point NumPy scalar).
    Float(f64),
    /// A string.
    Str(String),
    /// Anything else (a dict, a list, …), not looked into.
    Other,
}

impl Attr {
    /// The value as a float, for ints and floats.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Self::Int(i) => Some(*i as f64),
            Self::Float(f) => Some(*f),
            _ => None,
        }
    }
}

/// One persistent-class object of a network pickle (a `torch.nn.Module`
/// of StyleGAN2-ADA's `training/networks.py`), read as data.
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    /// The class name the file gives (`Generator`, `SynthesisLayer`, …).
    pub class_name: String,
    /// The plain attributes of its state (`conv_clamp`, `w_dim`, …), in file
    /// order; private ones (`_parameters`, `_init_kwargs`, …) are left out.
    pub attrs: Vec<(String, Attr)>,
    /// Its sub-modules (`_modules`), in registration order.
    pub children: Vec<(String, Network)>,
}

impl Network {
    /// The attribute `name`, if the object has it.
    pub fn attr(&self, name: &str) -> Option<&Attr> {
        self.attrs.iter().find(|(n, _)| n == name).map(|(_, a)| a)
    }

    /// The sub-module at the dotted `path` (`synthesis.b8.conv0`).
    pub fn get(&self, path: &str) -> Option<&Network> {
        path.split('.').try_fold(self, |net, step| net.children.iter().find(|(n, _)| n == step).map(|(_, c)| c))
    }
}

/// Loads every tensor of a checkpoint (torch zip, legacy torch or
/// safetensors, told apart by content) onto the CPU, flattening nested
/// dicts and lists with `.`: rosinality's `{'g_ema': {...}, 'latent_avg': T}`
/// gives `g_ema.style.1.weight`, …, `latent_avg`. Non-tensor leaves (ints,
/// strings, `argparse.Namespace`, an OrderedDict's `_metadata`) are skipped.
/// A tensor at the root of the file is returned under the empty name.
pub fn load(path: &Path) -> Result<HashMap<String, Tensor>> {
    load_with_key(path, None)
}

/// Like [`load`], but with `Some(key)` returns only the tensors under `key`
/// (a dotted path such as `g_ema`), with `key.` stripped from their names; only
/// their storages are read. Errors if nothing lies under `key`.
pub fn load_with_key(path: &Path, key: Option<&str>) -> Result<HashMap<String, Tensor>> {
    Ok(read(path, key)?.0.into_iter().collect())
}

/// Loads the network object `key` of a network pickle (`G_ema` of a
/// StyleGAN2-ADA snapshot): its record ([`Network`]) and its parameters and
/// buffers under their `state_dict()` names (`mapping.fc0.weight`,
/// `synthesis.b4.const`, …). Only that network's storages are materialised;
/// the other objects of the file (`G`, `D`, `augment_pipe`) are parsed as
/// data and dropped. Nothing in the file is executed.
pub fn load_network(path: &Path, key: &str) -> Result<(Network, HashMap<String, Tensor>)> {
    let err = |reason: String| Error::Checkpoint { path: path.to_path_buf(), reason };
    if detect(path)? != Format::NetworkPickle {
        return Err(err(format!("not a network pickle; '{key}' is read from a StyleGAN2-ADA .pkl snapshot")));
    }
    let mut budget = budget_for(path)?;
    let (mut file, _) = open_torch(path, &mut budget).map_err(err)?;
    let u = file.object();
    let value = match u.obj(&u.root) {
        Some(Obj::Dict(items)) => {
            items.iter().rev().find(|(k, _)| matches!(k, Value::Str(s) if &**s == key)).map(|(_, v)| v.clone())
        }
        _ => None,
    };
    let Some(value) = value else {
        let tops = top_keys(u);
        return Err(err(format!("the pickle has no '{key}'; its top-level keys are: {tops}")));
    };
    let network = network_record(u, &value, key).map_err(err)?;
    let (entries, _) = flatten(u, &mut budget).map_err(err)?;
    let entries = select(entries, Some(key)).map_err(err)?;
    let tensors = build_tensors(path, &mut file, entries, &mut budget).map_err(err)?;
    Ok((network, tensors.into_iter().collect()))
}

/// The string keys of a pickle's root dict, for error messages.
fn top_keys(u: &Unpickled) -> String {
    match u.obj(&u.root) {
        Some(Obj::Dict(items)) => items
            .iter()
            .filter_map(|(k, _)| match k {
                Value::Str(s) => Some(s.chars().take(64).collect::<String>()),
                _ => None,
            })
            .take(20)
            .collect::<Vec<_>>()
            .join(", "),
        _ => "(the root is not a dict)".into(),
    }
}

/// The record of the persistent object `v` and its sub-modules. Each
/// object is visited once: a shared or cyclic module graph (which no saved
/// network has) is refused.
fn network_record(u: &Unpickled, v: &Value, name: &str) -> std::result::Result<Network, String> {
    fn visit(
        u: &Unpickled,
        v: &Value,
        name: &str,
        seen: &mut HashSet<usize>,
        depth: usize,
    ) -> std::result::Result<Network, String> {
        if depth > MAX_DEPTH {
            return Err(format!("network objects nested deeper than {MAX_DEPTH} levels"));
        }
        let (Value::Obj(i), Some(Obj::Persistent { class_name, state })) = (v, u.obj(v)) else {
            return Err(format!("'{name}' is {}, not a pickled network object", pickle::describe(v)));
        };
        if !seen.insert(*i) {
            return Err(format!("the network object '{name}' appears twice in the module tree"));
        }
        let Some(Obj::Dict(items)) = u.obj(state) else { return Err(format!("'{name}' has no state dict")) };
        let mut attrs = Vec::new();
        let mut children = Vec::new();
        for (k, val) in items {
            let Value::Str(k) = k else { continue };
            if &**k == "_modules" {
                let Some(Obj::Dict(mods)) = u.obj(val) else { return Err(format!("'{name}._modules' is not a dict")) };
                for (mk, mv) in mods {
                    let Value::Str(mk) = mk else { return Err(format!("'{name}' has a sub-module without a name")) };
                    if matches!(mv, Value::None) {
                        continue;
                    }
                    let child = format!("{name}.{mk}");
                    children.push((mk.to_string(), visit(u, mv, &child, seen, depth + 1)?));
                }
                continue;
            }
            if k.starts_with('_') {
                continue;
            }
            let attr = match val {
                Value::None => Attr::None,
                Value::Bool(b) => Attr::Bool(*b),
                Value::Int(n) => Attr::Int(*n),
                Value::Float(f) => Attr::Float(*f),
                Value::Str(s) => Attr::Str(s.to_string()),
                _ => Attr::Other,
            };
            attrs.push((k.to_string(), attr));
        }
        Ok(Network { class_name: class_name.to_string(), attrs, children })
    }
    visit(u, v, name, &mut HashSet::new(), 0)
}

/// Names, dtypes and shapes of a checkpoint's tensors, in file order,
/// without reading tensor data (torch formats) — for listing a file.
pub fn inspect(path: &Path) -> Result<Vec<TensorInfo>> {
    let err = |reason: String| Error::Checkpoint { path: path.to_path_buf(), reason };
    match detect(path)? {
        Format::Safetensors => Ok(read(path, None)?
            .0
            .into_iter()
            .map(|(name, t)| TensorInfo { name, dtype: t.dtype(), shape: t.dims().to_vec() })
            .collect()),
        Format::TorchZip | Format::TorchLegacy | Format::NetworkPickle => {
            let mut budget = budget_for(path)?;
            let (ckpt, _) = open_torch(path, &mut budget).map_err(err)?;
            let (entries, _) = flatten(ckpt.object(), &mut budget).map_err(err)?;
            Ok(entries
                .into_iter()
                .map(|(name, t)| TensorInfo {
                    name,
                    dtype: candle_dtype(t.storage.dtype),
                    shape: t.size.iter().map(|&d| d as usize).collect(),
                })
                .collect())
        }
    }
}

/// Tells the container format from the first bytes of the file (falling
/// back to the `.safetensors` extension).
pub fn detect(path: &Path) -> Result<Format> {
    let err = |reason: String| Error::Checkpoint { path: path.to_path_buf(), reason };
    let mut f = File::open(path).map_err(|e| Error::io("reading", path, e))?;
    let mut head = [0u8; 512];
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(Error::io("reading", path, e)),
        }
    }
    let head = &head[..n];
    if head.starts_with(b"PK\x03\x04") {
        return Ok(Format::TorchZip);
    }
    if legacy::sniff(head) {
        return Ok(Format::TorchLegacy);
    }
    if head.len() >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]) {
        return Ok(Format::NetworkPickle);
    }
    if head.len() > 262 && &head[257..262] == b"ustar" {
        return Err(err("this is the tar-based torch.save format of PyTorch before 0.4, which \
                        is not supported; re-save it with a current torch.save"
            .into()));
    }
    let st_header = head.len() > 8 && head[8] == b'{';
    if st_header || path.extension().is_some_and(|e| e == "safetensors") {
        return Ok(Format::Safetensors);
    }
    Err(err("unknown file format: neither a torch checkpoint (zip or legacy), a network pickle nor safetensors".into()))
}

/// The `__metadata__` of a safetensors file (empty when it has none),
/// read from the header alone.
pub fn safetensors_metadata(path: &Path) -> Result<HashMap<String, String>> {
    let err = |reason: String| Error::Checkpoint { path: path.to_path_buf(), reason };
    let mut f = File::open(path).map_err(|e| Error::io("reading", path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|_| err("bad safetensors file: shorter than its header length".into()))?;
    let n = u64::from_le_bytes(len);
    // The crate's own limit on a header.
    if n > 100_000_000 {
        return Err(err(format!("bad safetensors file: a header of {n} bytes")));
    }
    let mut header = Vec::new();
    f.take(n).read_to_end(&mut header).map_err(|e| Error::io("reading", path, e))?;
    if header.len() as u64 != n {
        return Err(err("bad safetensors file: the header is truncated".into()));
    }
    check_safetensors_header(&[&len[..], &header].concat()).map_err(err)?;
    let json: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| err(format!("bad safetensors header: {e}")))?;
    Ok(json
        .get("__metadata__")
        .and_then(|m| m.as_object())
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
        .unwrap_or_default())
}

/// SHA-256 of a file's content, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(|e| Error::io("reading", path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io("reading", path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Converts a checkpoint into a safetensors file holding only its tensors
/// (flattened names as [`load`] gives them), with metadata `format`,
/// `source_file` and `source_sha256`. The output is written atomically and
/// durably ([`crate::durable`]), so it never exists half-written.
pub fn convert_to_safetensors(input: &Path, output: &Path) -> Result<ConvertSummary> {
    let (tensors, skipped) = read(input, None)?;
    let (bytes, source_sha256) = write_converted(input, output, &tensors, Vec::new())?;
    Ok(ConvertSummary { tensors: tensors.len(), skipped, bytes, source_sha256 })
}

/// Writes `tensors` converted from `input` to the safetensors file
/// `output`, atomically and durably ([`crate::durable`]), with metadata
/// `format` = `pt`, `source_file`, `source_sha256` and `extra`. Returns
/// the output's size and the input's SHA-256.
pub fn write_converted(
    input: &Path,
    output: &Path,
    tensors: &[(String, Tensor)],
    extra: Vec<(String, String)>,
) -> Result<(u64, String)> {
    if output.file_name().is_none() {
        return Err(Error::Checkpoint {
            path: output.to_path_buf(),
            reason: "the output path has no file name".into(),
        });
    }
    let source_sha256 = sha256_file(input)?;
    let source_file = input.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut metadata = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("source_file".to_string(), source_file),
        ("source_sha256".to_string(), source_sha256.clone()),
    ]);
    metadata.extend(extra);
    crate::durable::write_with(output, |tmp| {
        safetensors::serialize_to_file(tensors.iter().map(|(k, t)| (k.as_str(), t)), Some(metadata), tmp)
            .map_err(|e| format!("writing safetensors failed: {e}"))
    })?;
    let bytes = std::fs::metadata(output).map_err(|e| Error::io("reading", output, e))?.len();
    Ok((bytes, source_sha256))
}

/// The pickled object of a torch file, and how to get at its storages.
enum TorchFile {
    Zip {
        archive: zip::ZipArchive<File>,
        prefix: String,
        object: Unpickled,
    },
    Legacy(legacy::Legacy),
    /// A plain pickle: every storage is inside it.
    Plain(Unpickled),
}

impl TorchFile {
    fn object(&self) -> &Unpickled {
        match self {
            Self::Zip { object, .. } | Self::Plain(object) => object,
            Self::Legacy(l) => &l.object,
        }
    }
}

/// The memory budget of loading `path` (see [`Budget`]).
fn budget_for(path: &Path) -> Result<Budget> {
    let len = std::fs::metadata(path).map_err(|e| Error::io("reading", path, e))?.len();
    Ok(Budget::for_file(len))
}

/// What identifies a tensor's data: two entries with the same view of the
/// same storage are the same tensor (a tied weight, or a hostile file that
/// names one memoised tensor 100 000 times), built once and shared.
type ViewKey = (String, u64, Vec<u64>, Vec<u64>, Option<(u64, u64)>);

fn view_key(t: &TensorRef) -> ViewKey {
    (t.storage.key.clone(), t.offset, t.size.clone(), t.stride.clone(), t.storage.view)
}

/// Reads the tensors (optionally only those under `key`) and counts the
/// skipped non-tensor leaves. Entries keep file order.
fn read(path: &Path, key: Option<&str>) -> Result<(Vec<(String, Tensor)>, usize)> {
    let err = |reason: String| Error::Checkpoint { path: path.to_path_buf(), reason };
    let mut budget = budget_for(path)?;
    if detect(path)? == Format::Safetensors {
        let (all, skipped) = read_safetensors(path, &mut budget).map_err(err)?;
        return Ok((select(all, key).map_err(err)?, skipped));
    }
    let (mut file, _) = open_torch(path, &mut budget).map_err(err)?;
    let (entries, skipped) = flatten(file.object(), &mut budget).map_err(err)?;
    let entries = select(entries, key).map_err(err)?;
    Ok((build_tensors(path, &mut file, entries, &mut budget).map_err(err)?, skipped))
}

/// Reads the storages `entries` use and materialises the tensors, in
/// entry order.
fn build_tensors(
    path: &Path,
    file: &mut TorchFile,
    entries: Vec<(String, TensorRef)>,
    budget: &mut Budget,
) -> std::result::Result<Vec<(String, Tensor)>, String> {
    // Only the storages the selected tensors use are read; those inside
    // the pickle are already in memory.
    let wanted: HashSet<String> =
        entries.iter().filter(|(_, t)| t.storage.inline.is_none()).map(|(_, t)| t.storage.key.clone()).collect();
    let storages = match file {
        TorchFile::Zip { archive, prefix, .. } => read_zip_storages(archive, prefix, &entries, &wanted, budget)?,
        TorchFile::Legacy(l) => {
            let dtypes = storage_dtypes(&l.object);
            l.read_storages(path, &dtypes, &wanted, budget)?
        }
        TorchFile::Plain(_) => HashMap::new(),
    };

    // Each storage is dropped after its last distinct tensor, to keep the
    // peak memory near one copy of the weights.
    let mut uses: HashMap<&str, usize> = HashMap::new();
    let mut distinct: HashSet<ViewKey> = HashSet::new();
    for (_, t) in &entries {
        if distinct.insert(view_key(t)) {
            *uses.entry(t.storage.key.as_str()).or_default() += 1;
        }
    }
    let mut storages = storages;
    let mut built: HashMap<ViewKey, Tensor> = HashMap::new();
    let mut out = Vec::with_capacity(entries.len());
    for (name, t) in &entries {
        let vk = view_key(t);
        if let Some(tensor) = built.get(&vk) {
            out.push((name.clone(), tensor.clone()));
            continue;
        }
        let key = t.storage.key.as_str();
        let bytes = match &t.storage.inline {
            Some(inline) => inline.bytes(),
            None => storages.get(key).ok_or_else(|| format!("storage '{key}' was not read"))?,
        };
        let tensor = materialise(t, bytes, budget).map_err(|e| format!("tensor '{name}': {e}"))?;
        out.push((name.clone(), tensor.clone()));
        built.insert(vk, tensor);
        let left = uses.get_mut(key).expect("every entry's storage was counted");
        *left -= 1;
        if *left == 0 {
            storages.remove(key);
        }
    }
    Ok(out)
}

/// Keeps the entries under `key` (with the prefix stripped), or all.
fn select<T>(entries: Vec<(String, T)>, key: Option<&str>) -> std::result::Result<Vec<(String, T)>, String> {
    let Some(key) = key else { return Ok(entries) };
    let prefix = format!("{key}.");
    let mut tops: Vec<String> = Vec::new();
    for (n, _) in &entries {
        let top = n.split('.').next().unwrap_or_default().to_string();
        if !tops.contains(&top) && tops.len() < 20 {
            tops.push(top);
        }
    }
    let picked: Vec<(String, T)> =
        entries.into_iter().filter_map(|(n, t)| n.strip_prefix(&prefix).map(|s| (s.to_string(), t))).collect();
    if picked.is_empty() {
        return Err(format!("no tensors under the key '{key}'; the top-level keys are: {}", tops.join(", ")));
    }
    Ok(picked)
}

/// Opens a torch zip or legacy file and runs its object pickle.
fn open_torch(path: &Path, budget: &mut Budget) -> std::result::Result<(TorchFile, Format), String> {
    let format = detect(path).map_err(|e| e.to_string())?;
    match format {
        Format::TorchLegacy => Ok((TorchFile::Legacy(legacy::read_head(path, budget)?), format)),
        Format::TorchZip => {
            let file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
            let mut archive = zip::ZipArchive::new(file).map_err(|e| format!("broken zip archive: {e}"))?;
            let names: Vec<String> = archive
                .file_names()
                .map(|n| n.map(|n| n.into_owned()))
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| format!("broken zip archive: {e}"))?;
            let pkl =
                names.iter().filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1).min().ok_or_else(
                    || {
                        if names.iter().any(|n| n.ends_with("constants.pkl")) {
                            "this is a TorchScript archive (torch.jit.save), not a torch.save \
                         checkpoint; save the model's state_dict() with torch.save instead"
                                .to_string()
                        } else {
                            "zip archive without a '<dir>/data.pkl' member: not a torch.save checkpoint".to_string()
                        }
                    },
                )?;
            let prefix = pkl.trim_end_matches("/data.pkl").to_string();
            if let Ok(bo) = archive.by_name(&format!("{prefix}/byteorder")) {
                // "little" or "big": never more than a few bytes, whatever
                // the member's header claims (it may be a deflate bomb).
                let mut s = Vec::new();
                let _ = bo.take(16).read_to_end(&mut s);
                if s.trim_ascii() == b"big" {
                    return Err("the checkpoint stores big-endian tensors, which are not supported".into());
                }
            }
            let object = {
                let member = archive.by_name(pkl).map_err(|e| format!("cannot read {pkl}: {e}"))?;
                // Values and strings are charged to the budget; the cap on
                // the bytes read also bounds the time a bomb of cheap
                // opcodes (FRAME, PROTO) can take.
                let mut input = pickle::Input::new(member.take(budget.left()), 0);
                pickle::unpickle(&mut input, PidStyle::Zip, budget).map_err(|e| format!("{pkl}: {e}"))?
            };
            Ok((TorchFile::Zip { archive, prefix, object }, format))
        }
        Format::NetworkPickle => {
            let file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
            let mut input = pickle::Input::new(std::io::BufReader::new(file).take(budget.left()), 0);
            let object = pickle::unpickle(&mut input, PidStyle::Plain, budget)?;
            Ok((TorchFile::Plain(object), format))
        }
        Format::Safetensors => Err("not a torch checkpoint".into()),
    }
}

/// Reads the zip members of the wanted storages.
fn read_zip_storages(
    archive: &mut zip::ZipArchive<File>,
    prefix: &str,
    entries: &[(String, TensorRef)],
    wanted: &HashSet<String>,
    budget: &mut Budget,
) -> std::result::Result<HashMap<String, Vec<u8>>, String> {
    let mut out = HashMap::new();
    for (_, t) in entries {
        let s = &t.storage;
        if out.contains_key(&s.key) || !wanted.contains(&s.key) {
            continue;
        }
        let name = format!("{prefix}/data/{}", s.key);
        let member = archive.by_name(&name).map_err(|e| {
            format!("storage member '{name}' is missing from the zip archive ({e}); the file is truncated or incompletely written")
        })?;
        let size = member.size();
        let need = s.numel.checked_mul(s.dtype.size() as u64).ok_or("storage size overflows")?;
        if size < need {
            return Err(format!("storage member '{name}' has {size} bytes, the tensor needs {need}"));
        }
        // Only the bytes the storage needs: the header's size may be that
        // of a deflate bomb.
        budget.charge(need, &format!("storage member '{name}'"))?;
        let mut input = pickle::Input::new(member, 0);
        let bytes = input.bytes_exact(need).map_err(|e| format!("reading '{name}': {e}"))?;
        out.insert(s.key.clone(), bytes);
    }
    Ok(out)
}

/// Element type of every storage the object refers to, by key.
fn storage_dtypes(u: &Unpickled) -> HashMap<String, StorageDtype> {
    let mut out = HashMap::new();
    for o in &u.objs {
        if let Obj::Storage(s) = o {
            out.entry(s.key.clone()).or_insert(s.dtype);
        }
    }
    out
}

/// Maximum nesting of containers in a checkpoint.
const MAX_DEPTH: usize = 100;

/// Longest flattened tensor name accepted (real ones are under 200 bytes).
const MAX_NAME: usize = 16 << 10;

/// One step of the path from the root to a value: a dict key or a list index.
#[derive(Clone, Copy)]
enum Step<'a> {
    Key(&'a Value),
    Index(usize),
}

impl Step<'_> {
    /// An upper bound of the step's length once written out.
    fn len_bound(&self) -> usize {
        match self {
            Step::Key(Value::Str(s)) => s.len(),
            // Lossy UTF-8 turns each bad byte into a 3-byte U+FFFD.
            Step::Key(Value::Bytes(b)) => 3 * b.len(),
            Step::Key(_) => 20,
            Step::Index(_) => 20,
        }
    }

    fn write(&self, out: &mut String) {
        use std::fmt::Write as _;
        match self {
            Step::Key(Value::Str(s)) => out.push_str(s),
            Step::Key(Value::Int(n)) => {
                let _ = write!(out, "{n}");
            }
            Step::Key(Value::Bytes(b)) => out.push_str(&String::from_utf8_lossy(b)),
            Step::Key(_) => {}
            Step::Index(n) => {
                let _ = write!(out, "{n}");
            }
        }
    }
}

/// Flattens the object into `(dotted name, tensor)` in file order, and
/// counts the skipped non-tensor leaves.
///
/// Names are written out only for tensor leaves, from the path of keys
/// walked so far: building them at every level would copy a long key reused
/// at every depth of a nested dict over and over (quadratic in the file).
/// Each name is charged to `budget`.
fn flatten(u: &Unpickled, budget: &mut Budget) -> std::result::Result<(Vec<(String, TensorRef)>, usize), String> {
    struct Walk<'a, 'b> {
        u: &'a Unpickled,
        budget: &'b mut Budget,
        expanded: Vec<bool>,
        path: Vec<Step<'a>>,
        /// Upper bound of the dotted name of `path`.
        path_len: usize,
        out: Vec<(String, TensorRef)>,
        seen: HashSet<String>,
        skipped: usize,
    }
    impl<'a> Walk<'a, '_> {
        fn name(&self) -> String {
            let mut name = String::with_capacity(self.path_len);
            for (i, step) in self.path.iter().enumerate() {
                if i > 0 {
                    name.push('.');
                }
                step.write(&mut name);
            }
            name
        }

        fn descend(&mut self, step: Step<'a>, v: &'a Value, depth: usize) -> std::result::Result<(), String> {
            let add = step.len_bound() + 1;
            self.path.push(step);
            self.path_len += add;
            let r = self.visit(v, depth + 1);
            self.path.pop();
            self.path_len -= add;
            r
        }

        fn visit(&mut self, v: &'a Value, depth: usize) -> std::result::Result<(), String> {
            if depth > MAX_DEPTH {
                return Err(format!("containers nested deeper than {MAX_DEPTH} levels"));
            }
            let Value::Obj(i) = v else {
                self.skipped += 1;
                return Ok(());
            };
            let i = *i;
            let Some(obj) = self.u.objs.get(i) else { return Err("dangling object".into()) };
            if let Obj::Tensor(t) = obj {
                if self.path_len > MAX_NAME {
                    return Err(format!("a tensor name is longer than {MAX_NAME} bytes"));
                }
                let name = self.name();
                // The name (kept twice), and the entry's share of the maps
                // that deduplicate views.
                let cost = 2 * name.len() + 128 + 32 * t.size.len();
                self.budget.charge(cost as u64, "the tensor names")?;
                if self.seen.insert(name.clone()) {
                    self.out.push((name, t.clone()));
                }
                return Ok(());
            }
            // A container is expanded once: shared or cyclic references
            // cannot make the walk explode.
            if std::mem::replace(&mut self.expanded[i], true) {
                return Ok(());
            }
            match obj {
                Obj::Dict(items) => {
                    for (k, v) in items {
                        if !matches!(k, Value::Str(_) | Value::Int(_) | Value::Bytes(_)) {
                            self.skipped += 1;
                            continue;
                        }
                        self.descend(Step::Key(k), v, depth)?;
                    }
                }
                // A pickled module: its `state_dict()` names, i.e. its own
                // parameters, then its persistent buffers, then its
                // sub-modules', without the `_parameters`/`_modules` steps.
                Obj::Persistent { state, .. } => {
                    let Some(Obj::Dict(fields)) = self.u.obj(state) else { return Ok(()) };
                    let field = |name: &str| {
                        fields.iter().rev().find(|(k, _)| matches!(k, Value::Str(s) if &**s == name)).map(|(_, v)| v)
                    };
                    let transient: Vec<&Value> = match field("_non_persistent_buffers_set").and_then(|v| self.u.obj(v))
                    {
                        Some(Obj::Set(items) | Obj::List(items)) => items.iter().collect(),
                        _ => Vec::new(),
                    };
                    for part in ["_parameters", "_buffers", "_modules"] {
                        let Some(Obj::Dict(items)) = field(part).and_then(|v| self.u.obj(v)) else { continue };
                        for (k, v) in items {
                            let Value::Str(name) = k else {
                                self.skipped += 1;
                                continue;
                            };
                            let dropped =
                                part == "_buffers" && transient.iter().any(|t| matches!(t, Value::Str(s) if s == name));
                            if dropped || matches!(v, Value::None) {
                                continue;
                            }
                            self.descend(Step::Key(k), v, depth)?;
                        }
                    }
                }
                Obj::List(items) | Obj::Tuple(items) => {
                    for (n, v) in items.iter().enumerate() {
                        self.descend(Step::Index(n), v, depth)?;
                    }
                }
                _ => self.skipped += 1,
            }
            Ok(())
        }
    }
    let mut w = Walk {
        u,
        budget,
        expanded: vec![false; u.objs.len()],
        path: Vec::new(),
        path_len: 0,
        out: Vec::new(),
        seen: HashSet::new(),
        skipped: 0,
    };
    w.visit(&u.root, 0)?;
    Ok((w.out, w.skipped))
}

/// The dtype [`materialise`] produces for a storage type (candle has no i8
/// or bool: they widen to i16 and become u8).
fn candle_dtype(d: StorageDtype) -> DType {
    match d {
        StorageDtype::F32 => DType::F32,
        StorageDtype::F16 => DType::F16,
        StorageDtype::BF16 => DType::BF16,
        StorageDtype::F64 => DType::F64,
        StorageDtype::I64 => DType::I64,
        StorageDtype::I32 => DType::I32,
        StorageDtype::I16 | StorageDtype::I8 => DType::I16,
        StorageDtype::U8 | StorageDtype::Bool => DType::U8,
    }
}

/// Copies a strided view out of its storage into a contiguous CPU tensor.
///
/// Element `(i_0, …, i_n)` of the view is storage element
/// `offset + Σ i_k · stride_k` (torch's `as_strided`); any strides are
/// allowed as long as every addressed element lies inside the storage.
fn materialise(t: &TensorRef, storage: &[u8], budget: &mut Budget) -> std::result::Result<Tensor, String> {
    let es = t.storage.dtype.size() as u64;
    let view_offset = t.storage.view.map_or(0, |(off, _)| off);
    let base = view_offset.checked_add(t.offset).ok_or("offset overflows")?;
    let mut numel: u64 = 1;
    for &d in &t.size {
        numel = numel.checked_mul(d).ok_or("element count overflows")?;
    }
    let shape: Vec<usize> = t
        .size
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| "dimension too large"))
        .collect::<std::result::Result<_, _>>()?;
    let storage_numel = storage.len() as u64 / es;
    if numel > 0 {
        let mut last = base;
        for (&d, &s) in t.size.iter().zip(&t.stride) {
            last = (d - 1).checked_mul(s).and_then(|x| x.checked_add(last)).ok_or("strides overflow")?;
        }
        if last >= storage_numel {
            return Err(format!(
                "view (offset {}, size {:?}, stride {:?}) reaches element {last} of a storage of {storage_numel}",
                t.offset, t.size, t.stride
            ));
        }
        // Overlapping views (stride 0) could expand a tiny storage into an
        // enormous tensor; real checkpoints do not hold such tensors.
        if numel > storage_numel.max(1 << 24) {
            return Err(format!("view of {numel} elements expands a storage of {storage_numel}"));
        }
    }
    let nbytes = usize::try_from(numel * es).map_err(|_| "tensor too large")?;
    // The tensor's own bytes (an i8 widens to i16), charged before the copy.
    let widened = if t.storage.dtype == StorageDtype::I8 { 2 * numel } else { numel * es };
    budget.charge(widened, "the tensor")?;
    let runs = |f: &mut dyn FnMut(&[u8])| for_each_run(t, base, numel, storage, f);
    // Decoded straight into the tensor's typed buffer, which candle then
    // owns: one copy of the data, not two.
    fn typed<T: candle_core::WithDType>(
        numel: u64,
        es: usize,
        shape: &[usize],
        runs: impl Fn(&mut dyn FnMut(&[u8])),
        decode: impl Fn(&[u8]) -> T,
    ) -> std::result::Result<Tensor, String> {
        let mut out: Vec<T> = Vec::new();
        out.try_reserve_exact(numel as usize).map_err(|_| format!("cannot allocate {numel} elements"))?;
        runs(&mut |bytes: &[u8]| out.extend(bytes.chunks_exact(es).map(&decode)));
        Tensor::from_vec(out, shape, &Device::Cpu).map_err(|e| e.to_string())
    }
    let arr = |b: &[u8]| -> [u8; 8] {
        let mut a = [0u8; 8];
        a[..b.len()].copy_from_slice(b);
        a
    };
    let es = es as usize;
    match t.storage.dtype {
        StorageDtype::F32 => {
            typed(numel, es, &shape, runs, |b| f32::from_le_bytes(arr(b)[..4].try_into().expect("4 bytes")))
        }
        StorageDtype::F64 => typed(numel, es, &shape, runs, |b| f64::from_le_bytes(arr(b))),
        StorageDtype::I64 => typed(numel, es, &shape, runs, |b| i64::from_le_bytes(arr(b))),
        StorageDtype::I32 => {
            typed(numel, es, &shape, runs, |b| i32::from_le_bytes(arr(b)[..4].try_into().expect("4 bytes")))
        }
        StorageDtype::I16 => typed(numel, es, &shape, runs, |b| i16::from_le_bytes([b[0], b[1]])),
        StorageDtype::I8 => typed(numel, es, &shape, runs, |b| b[0] as i8 as i16),
        StorageDtype::U8 => typed(numel, es, &shape, runs, |b| b[0]),
        StorageDtype::Bool => typed(numel, es, &shape, runs, |b| (b[0] != 0) as u8),
        StorageDtype::F16 | StorageDtype::BF16 => {
            let mut data: Vec<u8> = Vec::new();
            data.try_reserve_exact(nbytes).map_err(|_| format!("cannot allocate {nbytes} bytes"))?;
            runs(&mut |bytes: &[u8]| data.extend_from_slice(bytes));
            to_tensor(data, t.storage.dtype, &shape)
        }
    }
}

/// Calls `f` with the bytes of the view's elements in row-major order, in
/// runs as long as the strides allow. The view must have been checked to
/// lie inside `storage` (as [`materialise`] does).
fn for_each_run(t: &TensorRef, base: u64, numel: u64, storage: &[u8], f: &mut dyn FnMut(&[u8])) {
    if numel == 0 {
        return;
    }
    let es = t.storage.dtype.size();
    // Row-major strides, to spot views that are already contiguous.
    let mut contiguous = true;
    let mut expect = 1u64;
    for (&d, &s) in t.size.iter().zip(&t.stride).rev() {
        if d != 1 && s != expect {
            contiguous = false;
        }
        expect = expect.saturating_mul(d);
    }
    let start = base as usize * es;
    if contiguous {
        f(&storage[start..start + numel as usize * es]);
        return;
    }
    // Odometer over all dimensions but the last; the last is copied as a
    // run when its stride is 1.
    let nd = t.size.len();
    let (inner_n, inner_s) = (t.size[nd - 1] as usize, t.stride[nd - 1] as usize);
    let outer = numel / t.size[nd - 1];
    let mut idx = vec![0u64; nd - 1];
    let mut pos = base as usize;
    for _ in 0..outer {
        if inner_s == 1 {
            f(&storage[pos * es..(pos + inner_n) * es]);
        } else {
            for j in 0..inner_n {
                let p = (pos + j * inner_s) * es;
                f(&storage[p..p + es]);
            }
        }
        let mut k = nd - 1;
        while k > 0 {
            k -= 1;
            idx[k] += 1;
            pos += t.stride[k] as usize;
            if idx[k] < t.size[k] {
                break;
            }
            pos -= (t.size[k] * t.stride[k]) as usize;
            idx[k] = 0;
        }
    }
}

/// Builds a CPU tensor from little-endian bytes of a storage dtype.
fn to_tensor(data: Vec<u8>, dtype: StorageDtype, shape: &[usize]) -> std::result::Result<Tensor, String> {
    let data = match dtype {
        StorageDtype::I8 => data.iter().flat_map(|&b| (b as i8 as i16).to_le_bytes()).collect(),
        StorageDtype::Bool => data.iter().map(|&b| (b != 0) as u8).collect(),
        _ => data,
    };
    Tensor::from_raw_buffer(&data, candle_dtype(dtype), shape, &Device::Cpu).map_err(|e| e.to_string())
}

/// Reads every tensor of a safetensors file.
fn read_safetensors(path: &Path, budget: &mut Budget) -> std::result::Result<(Vec<(String, Tensor)>, usize), String> {
    use safetensors::Dtype as S;
    let buf = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    budget.charge(buf.len() as u64, "the file")?;
    check_safetensors_header(&buf)?;
    let st = safetensors::SafeTensors::deserialize(&buf).map_err(|e| format!("bad safetensors file: {e}"))?;
    let mut out = Vec::new();
    for (name, view) in st.iter() {
        let dtype = match view.dtype() {
            S::F32 => StorageDtype::F32,
            S::F16 => StorageDtype::F16,
            S::BF16 => StorageDtype::BF16,
            S::F64 => StorageDtype::F64,
            S::I64 => StorageDtype::I64,
            S::I32 => StorageDtype::I32,
            S::I16 => StorageDtype::I16,
            S::I8 => StorageDtype::I8,
            S::U8 => StorageDtype::U8,
            S::BOOL => StorageDtype::Bool,
            other => return Err(format!("tensor '{name}' has unsupported dtype {other:?}")),
        };
        let widened = if dtype == StorageDtype::I8 { 2 * view.data().len() } else { view.data().len() };
        budget.charge(widened as u64 + 256, "the tensors")?;
        let t = to_tensor(view.data().to_vec(), dtype, view.shape()).map_err(|e| format!("tensor '{name}': {e}"))?;
        out.push((name.to_string(), t));
    }
    Ok((out, 0))
}

/// Most dimensions a safetensors tensor may have (candle's limit is lower
/// in practice; real checkpoints have at most 5).
const MAX_RANK: usize = 64;

/// Refuses a safetensors header with an array longer than [`MAX_RANK`]
/// before the `safetensors` crate parses it: a `shape` of a million ones is
/// valid for a 1-byte tensor, and would cost 8 bytes of memory per byte of
/// header in every copy of the shape. A quick scan, aware of JSON strings.
fn check_safetensors_header(buf: &[u8]) -> std::result::Result<(), String> {
    let Some(n) = buf.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))) else {
        return Ok(()); // the crate reports the short file
    };
    let end = usize::try_from(n).unwrap_or(usize::MAX).saturating_add(8).min(buf.len());
    let header = &buf[8..end];
    let (mut in_str, mut escaped) = (false, false);
    let mut counts: Vec<usize> = Vec::new();
    for &b in header {
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' => counts.push(1),
            b']' => {
                counts.pop();
            }
            b',' => {
                if let Some(c) = counts.last_mut() {
                    *c += 1;
                    if *c > MAX_RANK {
                        return Err(format!(
                            "bad safetensors file: an array in the header has more than {MAX_RANK} entries"
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::PathBuf;

    use super::*;

    fn fixture(rel: &str) -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures")).join(rel)
    }

    /// Raw little-endian bytes of a CPU tensor, for bit-exact comparison.
    fn raw(t: &Tensor) -> Vec<u8> {
        use safetensors::View;
        t.data().into_owned()
    }

    /// Asserts two tensor maps have the same keys, dtypes, shapes and bits.
    fn assert_identical(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) {
        let mut ka: Vec<_> = a.keys().collect();
        let mut kb: Vec<_> = b.keys().collect();
        ka.sort();
        kb.sort();
        assert_eq!(ka, kb);
        for (k, ta) in a {
            let tb = &b[k];
            assert_eq!(ta.dtype(), tb.dtype(), "{k}");
            assert_eq!(ta.dims(), tb.dims(), "{k}");
            assert!(raw(ta) == raw(tb), "tensor '{k}' differs");
        }
    }

    #[test]
    fn stylegan2_zip_and_converted_legacy_agree() {
        let zip = fixture("stylegan2/generator.pt");
        let leg = fixture("stylegan2/generator.convert_weight_layout.pt");
        assert_eq!(detect(&zip).unwrap(), Format::TorchZip);
        assert_eq!(detect(&leg).unwrap(), Format::TorchLegacy);
        let a = load(&zip).unwrap();
        let b = load(&leg).unwrap();
        assert_identical(&a, &b);
        assert_eq!(a["latent_avg"].dims(), &[64]);
        assert!(a.keys().all(|k| !k.contains("_metadata")), "an OrderedDict's _metadata leaked");
        assert!(a.keys().all(|k| k == "latent_avg" || k.starts_with("g_ema.")));
        assert!(a.contains_key("g_ema.style.1.weight"));
        // The converted file really holds non-contiguous views.
        let mut budget = budget_for(&leg).unwrap();
        let (file, _) = open_torch(&leg, &mut budget).unwrap();
        let (entries, _) = flatten(file.object(), &mut budget).unwrap();
        let strided = entries.iter().filter(|(_, t)| {
            let n = t.stride.len();
            n >= 2 && t.stride[n - 1] != 1
        });
        assert!(strided.count() > 0, "expected transposed views in the converted file");
        // Key selection strips the prefix and only returns that subtree.
        let g = load_with_key(&leg, Some("g_ema")).unwrap();
        assert_eq!(g.len(), a.len() - 1);
        assert!(raw(&g["style.1.weight"]) == raw(&a["g_ema.style.1.weight"]));
        let e = load_with_key(&leg, Some("g")).unwrap_err().to_string();
        assert!(e.contains("g_ema") && e.contains("latent_avg"), "{e}");
    }

    #[test]
    fn arcface_and_bisenet_zip_equal_legacy() {
        for model in ["arcface", "bisenet"] {
            let a = load(&fixture(&format!("{model}/model.pth"))).unwrap();
            let b = load(&fixture(&format!("{model}/model_legacy.pth"))).unwrap();
            assert_identical(&a, &b);
            let nbt: Vec<_> = a.iter().filter(|(k, _)| k.ends_with("num_batches_tracked")).collect();
            assert!(!nbt.is_empty(), "{model}: no num_batches_tracked");
            assert!(nbt.iter().all(|(_, t)| t.dtype() == DType::I64 && t.dims().is_empty()));
            assert!(a.values().filter(|t| t.dtype() == DType::F32).count() > 10);
            let info = inspect(&fixture(&format!("{model}/model_legacy.pth"))).unwrap();
            assert_eq!(info.len(), a.len());
            assert!(info.iter().all(|i| a[&i.name].dims() == i.shape.as_slice() && a[&i.name].dtype() == i.dtype));
        }
    }

    #[test]
    fn clip_safetensors_loads() {
        let p = fixture("clip/model.safetensors");
        assert_eq!(detect(&p).unwrap(), Format::Safetensors);
        let t = load(&p).unwrap();
        assert!(t.len() > 10);
        assert!(t.values().any(|t| t.dtype() == DType::F16));
        let reference = candle_core::safetensors::load(&p, &Device::Cpu).unwrap();
        assert_identical(&t, &reference);
    }

    #[test]
    fn convert_round_trips_with_provenance() {
        let dir = tempfile::tempdir().unwrap();
        let src = fixture("stylegan2/generator.convert_weight_layout.pt");
        let out = dir.path().join("g.safetensors");
        let summary = convert_to_safetensors(&src, &out).unwrap();
        let original = load(&src).unwrap();
        assert_eq!(summary.tensors, original.len());
        assert_eq!(summary.source_sha256, sha256_file(&src).unwrap());
        assert_eq!(summary.source_sha256.len(), 64);
        assert_eq!(summary.bytes, std::fs::metadata(&out).unwrap().len());
        assert_identical(&load(&out).unwrap(), &original);
        let buf = std::fs::read(&out).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&buf).unwrap();
        let meta = meta.metadata().clone().unwrap();
        assert_eq!(meta["source_sha256"], summary.source_sha256);
        assert_eq!(meta["source_file"], "generator.convert_weight_layout.pt");
        // Nothing but the output is left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // A failed conversion leaves no output behind.
        let bad = dir.path().join("bad.pt");
        std::fs::write(&bad, b"PK\x03\x04garbage").unwrap();
        assert!(convert_to_safetensors(&bad, &dir.path().join("bad.safetensors")).is_err());
        assert!(!dir.path().join("bad.safetensors").exists());
    }

    #[test]
    fn sha256_matches_known_digest() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("abc");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(sha256_file(&p).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    /// A minimal pickle writer for hand-built checkpoints.
    #[derive(Default)]
    struct P(Vec<u8>);
    impl P {
        fn op(&mut self, b: &[u8]) -> &mut Self {
            self.0.extend_from_slice(b);
            self
        }
        fn s(&mut self, s: &str) -> &mut Self {
            self.0.push(0x8c);
            self.0.push(s.len() as u8);
            self.op(s.as_bytes())
        }
        fn int(&mut self, i: i32) -> &mut Self {
            self.0.push(b'J');
            self.op(&i.to_le_bytes())
        }
        fn global(&mut self, m: &str, n: &str) -> &mut Self {
            self.op(format!("c{m}\n{n}\n").as_bytes())
        }
        fn tuple_of_ints(&mut self, xs: &[i32]) -> &mut Self {
            self.op(b"(");
            for &x in xs {
                self.int(x);
            }
            self.op(b"t")
        }
        /// `('storage', <ty>Storage, key, location, numel[, view])`, the
        /// view only in legacy files (`Some(None)` pickles `None`).
        fn pid(&mut self, ty: &str, key: &str, loc: &str, numel: i32, view: Option<Option<(&str, i32, i32)>>) {
            self.op(b"(").s("storage").global("torch", &format!("{ty}Storage")).s(key).s(loc).int(numel);
            match view {
                None => {}
                Some(None) => {
                    self.op(b"N");
                }
                Some(Some((k, off, n))) => {
                    self.s(k).int(off).int(n).op(b"\x87");
                }
            }
            self.op(b"tQ");
        }
        /// `_rebuild_tensor_v2(<storage>, off, size, stride, False, OrderedDict())`.
        fn tensor_of(&mut self, storage: impl FnOnce(&mut Self), off: i32, size: &[i32], stride: &[i32]) -> &mut Self {
            self.global("torch._utils", "_rebuild_tensor_v2").op(b"(");
            storage(self);
            self.int(off).tuple_of_ints(size).tuple_of_ints(stride);
            self.op(b"\x89").global("collections", "OrderedDict").op(b")R").op(b"tR")
        }
        /// A float32 tensor of a zip-format storage.
        fn tensor(&mut self, key: &str, numel: i32, off: i32, size: &[i32], stride: &[i32]) -> &mut Self {
            self.tensor_of(|p| p.pid("Float", key, "cpu", numel, None), off, size, stride)
        }
    }

    /// Writes a torch zip archive with the given pickle and storages.
    fn write_zip(path: &Path, pkl: &[u8], storages: &[(&str, Vec<u8>)]) {
        let mut z = zip::ZipWriter::new(File::create(path).unwrap());
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        z.start_file("archive/data.pkl", opts).unwrap();
        z.write_all(pkl).unwrap();
        for (k, data) in storages {
            z.start_file(format!("archive/data/{k}"), opts).unwrap();
            z.write_all(data).unwrap();
        }
        z.finish().unwrap();
    }

    fn f32_bytes(xs: impl IntoIterator<Item = f32>) -> Vec<u8> {
        xs.into_iter().flat_map(f32::to_le_bytes).collect()
    }

    #[test]
    fn training_checkpoint_with_non_tensor_leaves_loads() {
        // {'g': {'w': T[2,3] (transposed view of a 3x2 storage), 'b': T[3] at offset 6},
        //  'g_optim': {'state': {0: {'step': 5, 'exp_avg': T[2]}},
        //              'param_groups': [{'lr': 0.002, 'params': [0]}]},
        //  'args': Namespace(size=256, name='x'), 'iter': 1000, 'name': 'run'}
        let mut p = P::default();
        p.op(b"\x80\x02}q\x00(");
        p.s("g").op(b"}(").s("w").tensor("0", 9, 0, &[2, 3], &[1, 2]);
        p.s("b").tensor("0", 9, 6, &[3], &[1]).op(b"u");
        p.s("g_optim").op(b"}(").s("state").op(b"}").int(0).op(b"}(").s("step").int(5);
        p.s("exp_avg").tensor("1", 2, 0, &[2], &[1]).op(b"us");
        p.s("param_groups").op(b"]}(").s("lr").op(b"G").op(&0.002f64.to_be_bytes());
        p.s("params").op(b"]").int(0).op(b"aua").op(b"u");
        p.s("args").global("argparse", "Namespace").op(b")\x81}(").s("size").int(256).s("name").s("x").op(b"ub");
        p.s("iter").int(1000).s("name").s("run").op(b"u.");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.pt");
        write_zip(&path, &p.0, &[("0", f32_bytes((0..9).map(|i| i as f32))), ("1", f32_bytes([7.0, 8.0]))]);
        let t = load(&path).unwrap();
        let mut keys: Vec<_> = t.keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["g.b", "g.w", "g_optim.state.0.exp_avg"]);
        // storage [0 1 2 3 4 5 ...] viewed with strides (1, 2): rows [0 2 4], [1 3 5].
        assert_eq!(t["g.w"].to_vec2::<f32>().unwrap(), [[0., 2., 4.], [1., 3., 5.]]);
        assert_eq!(t["g.b"].to_vec1::<f32>().unwrap(), [6., 7., 8.]);
        assert_eq!(t["g_optim.state.0.exp_avg"].to_vec1::<f32>().unwrap(), [7., 8.]);
        let g = load_with_key(&path, Some("g")).unwrap();
        assert_eq!(g.len(), 2);
        let (_, skipped) = read(&path, None).unwrap();
        assert!(skipped >= 4, "{skipped}");
    }

    #[test]
    fn materialises_arbitrary_strides() {
        // A [2, 3, 4] tensor stored as the permutation (2, 0, 1) of a
        // contiguous [4, 2, 3] storage starting at element 5.
        let storage: Vec<u8> = f32_bytes((0..5 + 24).map(|i| i as f32));
        let t = TensorRef {
            storage: pickle::StorageRef {
                key: "0".into(),
                dtype: StorageDtype::F32,
                numel: 29,
                view: None,
                inline: None,
            },
            offset: 5,
            size: vec![2, 3, 4],
            stride: vec![3, 1, 6],
        };
        let got = materialise(&t, &storage, &mut Budget::for_file(0)).unwrap().to_vec3::<f32>().unwrap();
        for i in 0..2 {
            for j in 0..3 {
                for k in 0..4 {
                    assert_eq!(got[i][j][k], (5 + i * 3 + j + k * 6) as f32);
                }
            }
        }
        // Out-of-bounds views are errors, not panics.
        let oob = TensorRef { offset: 6, ..t.clone() };
        assert!(materialise(&oob, &storage, &mut Budget::for_file(0)).is_err());
        // Stride-0 expansion beyond any sane size is refused.
        let bomb = TensorRef { offset: 0, size: vec![1 << 40], stride: vec![0], ..t };
        assert!(materialise(&bomb, &storage, &mut Budget::for_file(0)).is_err());
    }

    #[test]
    fn malicious_globals_are_rejected_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&[u8], &str); 3] = [
            (b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.", "os.system"),
            (b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93X\x01\x00\x00\x001\x85R.", "builtins.eval"),
            (b"\x80\x02}(X\x01\x00\x00\x00acposix\nsystem\n)Ru.", "posix.system"),
        ];
        for (pkl, name) in cases {
            let path = dir.path().join("evil.pt");
            write_zip(&path, pkl, &[]);
            let e = load(&path).unwrap_err().to_string();
            assert!(e.contains(name) && e.contains("not a plain state dict"), "{e}");
            // The same pickle in a legacy stream.
            let mut leg = Vec::new();
            leg.extend_from_slice(b"\x80\x02\x8a\x0a");
            leg.extend_from_slice(&[0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19]);
            leg.extend_from_slice(b".\x80\x02M\xe9\x03.\x80\x02}.");
            leg.extend_from_slice(pkl);
            let lp = dir.path().join("evil_legacy.pt");
            std::fs::write(&lp, &leg).unwrap();
            let e = load(&lp).unwrap_err().to_string();
            assert!(e.contains(name), "{e}");
        }
    }

    #[test]
    fn truncated_files_error_without_panicking() {
        let dir = tempfile::tempdir().unwrap();
        for rel in ["stylegan2/generator.convert_weight_layout.pt", "arcface/model.pth", "clip/model.safetensors"] {
            let full = std::fs::read(fixture(rel)).unwrap();
            let n = full.len();
            // Dense in the first 16 KiB (header pickles), sparse after.
            let mut cuts: Vec<usize> = (0..n.min(16384)).step_by(61).collect();
            cuts.extend((1..60).map(|i| n * i / 60));
            cuts.extend([n - 1, n - 8]);
            let path = dir.path().join("cut");
            for cut in cuts {
                std::fs::write(&path, &full[..cut]).unwrap();
                assert!(load(&path).is_err(), "{rel} truncated at {cut} loaded");
            }
        }
    }

    #[test]
    fn corrupted_headers_never_panic() {
        let full = std::fs::read(fixture("arcface/model_legacy.pth")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flip");
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..300 {
            let mut buf = full.clone();
            for _ in 0..3 {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let at = (state >> 33) as usize % 8192;
                buf[at] ^= (state >> 20) as u8 | 1;
            }
            std::fs::write(&path, &buf).unwrap();
            let _ = load(&path);
        }
    }

    #[test]
    fn zip_missing_a_storage_is_a_clear_error() {
        let src = fixture("stylegan2/generator.pt");
        let mut archive = zip::ZipArchive::new(File::open(&src).unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("partial.pt");
        let mut z = zip::ZipWriter::new(File::create(&path).unwrap());
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        for i in 0..archive.len() {
            let mut f = archive.by_index(i).unwrap();
            let name = f.name().unwrap().into_owned();
            if name == "generator/data/3" {
                continue;
            }
            let mut buf = Vec::new();
            f.read_to_end(&mut buf).unwrap();
            z.start_file(name, opts).unwrap();
            z.write_all(&buf).unwrap();
        }
        z.finish().unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("generator/data/3") && e.contains("missing"), "{e}");
    }

    #[test]
    fn unknown_content_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pt");
        std::fs::write(&path, b"hello world, not a checkpoint").unwrap();
        assert!(load(&path).is_err());
        std::fs::write(&path, b"").unwrap();
        assert!(load(&path).is_err());
        assert!(load(&dir.path().join("absent.pt")).is_err());
    }

    #[test]
    fn legacy_views_dtypes_and_storage_order() {
        let mut p = P::default();
        p.op(b"\x80\x02}(");
        p.s("h").tensor_of(|p| p.pid("Half", "k1", "cpu", 4, Some(None)), 1, &[2], &[1]);
        p.s("v").tensor_of(|p| p.pid("Float", "k2", "cuda:0", 6, Some(Some(("k2v", 2, 3)))), 1, &[2], &[1]);
        p.s("m").tensor_of(|p| p.pid("Bool", "k3", "cpu", 3, Some(None)), 0, &[3], &[1]);
        p.s("c").tensor_of(|p| p.pid("Char", "k4", "cpu", 2, Some(None)), 0, &[2], &[1]);
        p.s("p").global("torch._utils", "_rebuild_parameter").op(b"(");
        p.tensor_of(|p| p.pid("Float", "k2", "cuda:0", 6, Some(None)), 0, &[2, 3], &[1, 2]);
        p.op(b"\x88").global("collections", "OrderedDict").op(b")RtR");
        p.s("n").int(3).op(b"u.");
        let mut f = Vec::new();
        f.extend_from_slice(b"\x80\x02\x8a\x0a");
        f.extend_from_slice(&[0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19]);
        f.extend_from_slice(b".\x80\x02M\xe9\x03.\x80\x02}(X\x0d\x00\x00\x00little_endian\x88u.");
        f.extend_from_slice(&p.0);
        // Storage data follows in the order of this list, not of first use.
        let mut keys = P::default();
        keys.op(b"\x80\x02](").s("k3").s("k1").s("k4").s("k2").op(b"e.");
        f.extend_from_slice(&keys.0);
        let record = |f: &mut Vec<u8>, n: u64, bytes: &[u8]| {
            f.extend_from_slice(&n.to_le_bytes());
            f.extend_from_slice(bytes);
        };
        record(&mut f, 3, &[0, 2, 1]);
        record(&mut f, 4, &[0x00, 0x3c, 0x00, 0x40, 0x00, 0x42, 0x00, 0x44]);
        record(&mut f, 2, &[(-3i8) as u8, 5]);
        record(&mut f, 6, &f32_bytes((0..6).map(|i| i as f32)));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("legacy.pt");
        std::fs::write(&path, &f).unwrap();
        assert_eq!(detect(&path).unwrap(), Format::TorchLegacy);
        let t = load(&path).unwrap();
        assert_eq!(t.len(), 5);
        assert_eq!(t["h"].dtype(), DType::F16);
        assert_eq!(t["h"].to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap(), [2., 3.]);
        assert_eq!(t["v"].to_vec1::<f32>().unwrap(), [3., 4.]);
        assert_eq!(t["m"].to_vec1::<u8>().unwrap(), [0, 1, 1]);
        assert_eq!(t["c"].dtype(), DType::I16);
        assert_eq!(t["c"].to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap(), [-3., 5.]);
        assert_eq!(t["p"].to_vec2::<f32>().unwrap(), [[0., 2., 4.], [1., 3., 5.]]);
        // A storage record claiming more data than the file holds.
        let mut bad = f.clone();
        let at = bad.len() - 24 - 8;
        bad[at..at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
        std::fs::write(&path, &bad).unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("truncated") && e.contains("k2"), "{e}");
    }

    #[test]
    fn zip_files_agree_with_candles_reader() {
        // An independent reader of contiguous zip checkpoints as an oracle.
        for rel in ["arcface/model.pth", "bisenet/model.pth"] {
            let ours = load(&fixture(rel)).unwrap();
            let theirs: HashMap<String, Tensor> =
                candle_core::pickle::read_all(fixture(rel)).unwrap().into_iter().collect();
            assert_identical(&ours, &theirs);
        }
    }

    /// The fixture's `generator.keys.json`: `G_ema`'s state-dict names and shapes.
    fn ada_keys() -> Vec<(String, Vec<usize>)> {
        let text = std::fs::read_to_string(fixture("stylegan2-ada/generator.keys.json")).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut out: Vec<(String, Vec<usize>)> = json["state_dict_keys_of_G_ema"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect()))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn network_pickle_g_ema_is_read_as_data() {
        let path = fixture("stylegan2-ada/network.pkl");
        assert_eq!(detect(&path).unwrap(), Format::NetworkPickle);
        let (net, tensors) = load_network(&path, "G_ema").unwrap();
        let mut got: Vec<(String, Vec<usize>)> = tensors.iter().map(|(k, t)| (k.clone(), t.dims().to_vec())).collect();
        got.sort();
        assert_eq!(got, ada_keys());
        assert!(tensors.values().all(|t| t.dtype() == DType::F32));
        // Plain attributes, NumPy scalars among them, and the module tree.
        assert_eq!(net.class_name, "Generator");
        assert_eq!(net.attr("w_dim"), Some(&Attr::Int(128)));
        assert_eq!(net.attr("num_ws"), Some(&Attr::Int(10)));
        let conv = net.get("synthesis.b8.conv0").unwrap();
        assert_eq!(conv.class_name, "SynthesisLayer");
        assert_eq!(conv.attr("conv_clamp").and_then(Attr::as_f64), Some(256.0));
        assert_eq!(conv.attr("up").and_then(Attr::as_f64), Some(2.0));
        let affine = net.get("synthesis.b8.conv0.affine").unwrap();
        let gain = affine.attr("weight_gain").and_then(Attr::as_f64).unwrap();
        assert!((gain - 1.0 / 128f64.sqrt()).abs() < 1e-12, "{gain}");
        assert!(net.attrs.iter().all(|(k, _)| !k.starts_with('_')));
        // The same names through the generic reader, and the other networks.
        let all = load(&path).unwrap();
        assert!(all.keys().any(|k| k.starts_with("D.")) && all.keys().any(|k| k.starts_with("G.")));
        let g_ema = load_with_key(&path, Some("G_ema")).unwrap();
        assert_eq!(g_ema.len(), tensors.len());
        for (k, t) in &tensors {
            assert_eq!(raw(t), raw(&g_ema[k]), "{k}");
            assert_eq!(raw(t), raw(&all[&format!("G_ema.{k}")]), "{k}");
        }
        let listed = inspect(&path).unwrap();
        assert!(listed.iter().any(|i| i.name == "G_ema.synthesis.b4.const" && i.shape == [64, 4, 4]));
        let e = load_network(&path, "nothing").unwrap_err().to_string();
        assert!(e.contains("'nothing'") && e.contains("G_ema"), "{e}");
        let e = load_network(&path, "training_set_kwargs").unwrap_err().to_string();
        assert!(e.contains("not a pickled network object"), "{e}");
    }

    /// The bytes of `network.pkl` with `from` replaced by `to` (first
    /// occurrence). The reader ignores the protocol-4 frame sizes, so
    /// lengths may change.
    fn patched(from: &[u8], to: &[u8]) -> Vec<u8> {
        let bytes = std::fs::read(fixture("stylegan2-ada/network.pkl")).unwrap();
        let at = bytes.windows(from.len()).position(|w| w == from).expect("the pattern is in the file");
        [&bytes[..at], to, &bytes[at + from.len()..]].concat()
    }

    /// Where the first nested storage stream lies: (offset of its BINBYTES
    /// length, offset of its data, its length).
    fn first_stream(bytes: &[u8]) -> (usize, usize, usize) {
        let name = b"_load_from_bytes";
        let at = bytes.windows(name.len()).position(|w| w == name).unwrap();
        let b = at + bytes[at..].iter().position(|&c| c == b'B').unwrap();
        let len = u32::from_le_bytes(bytes[b + 1..b + 5].try_into().unwrap()) as usize;
        (b + 1, b + 5, len)
    }

    #[test]
    fn hostile_network_pickles_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("evil.pkl");
        let expect = |bytes: &[u8], needles: &[&str]| {
            std::fs::write(&path, bytes).unwrap();
            let e = load_network(&path, "G_ema").unwrap_err().to_string();
            for n in needles {
                assert!(e.contains(n), "'{n}' not in: {e}");
            }
        };
        // The persistent-object reducer swapped for another global.
        let persist = b"\x8c\x17torch_utils.persistence\x94\x8c\x1b_reconstruct_persistent_obj";
        expect(&patched(persist, b"\x8c\x08builtins\x94\x8c\x04exec"), &["builtins.exec", "refusing"]);
        expect(
            &patched(persist, b"\x8c\x17torch_utils.persistence\x94\x8c\x0c_load_source"),
            &["torch_utils.persistence._load_source"],
        );
        // A non-class persistent object.
        expect(&patched(b"\x8c\x05class", b"\x8c\x06module"), &["type \"module\"", "only 'class'"]);
        // The storage reducer swapped for another global.
        expect(&patched(b"\x8c\x10_load_from_bytes", b"\x8c\x04load"), &["torch.storage.load"]);
        let bytes = std::fs::read(fixture("stylegan2-ada/network.pkl")).unwrap();
        let (len_at, data_at, len) = first_stream(&bytes);
        // A corrupt stream: a broken magic number.
        let mut corrupt = bytes.clone();
        corrupt[data_at + 5] ^= 0xff;
        expect(&corrupt, &["storage stream #0", "magic number"]);
        // Truncated: the stream loses its last 4 bytes (its length says so).
        let mut cut = bytes[..data_at + len - 4].to_vec();
        cut[len_at..len_at + 4].copy_from_slice(&(len as u32 - 4).to_le_bytes());
        cut.extend_from_slice(&bytes[data_at + len..]);
        expect(&cut, &["storage stream #0", "truncated"]);
        // Oversized: the element count claims far more than the stream holds.
        let mut big = bytes.clone();
        let count_at = data_at + len - 4 * 1024 - 8;
        assert_eq!(u64::from_le_bytes(big[count_at..count_at + 8].try_into().unwrap()), 1024);
        big[count_at..count_at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
        expect(&big, &["storage stream #0", "claims 1152921504606846976 elements"]);
        // Extra bytes after the storage's data.
        let mut extra = bytes[..data_at + len].to_vec();
        extra.extend_from_slice(&[0u8; 16]);
        extra[len_at..len_at + 4].copy_from_slice(&(len as u32 + 16).to_le_bytes());
        extra.extend_from_slice(&bytes[data_at + len..]);
        expect(&extra, &["storage stream #0", "16 unexpected bytes"]);
        // A BINBYTES length past the end of the file.
        let mut past = bytes.clone();
        past[len_at..len_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        expect(&past, &["more than a checkpoint of this size can need"]);
        past[len_at..len_at + 4].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
        expect(&past, &["truncated"]);
        // A stream nested in a stream.
        let mut inner = fuzzing_stream_in_stream();
        let mut p = P::default();
        p.op(b"\x80\x04}(").s("G_ema").global("torch.storage", "_load_from_bytes");
        p.op(b"B").op(&(inner.len() as u32).to_le_bytes());
        p.0.append(&mut inner);
        p.op(b"\x85Ru.");
        expect(&p.0, &["storage stream inside a storage stream"]);
        // Cut anywhere, the file errors without panicking.
        let n = bytes.len();
        for i in 1..40 {
            std::fs::write(&path, &bytes[..n * i / 40]).unwrap();
            assert!(load_network(&path, "G_ema").is_err(), "cut at {}", n * i / 40);
        }
    }

    /// A legacy storage stream whose storage object is itself a
    /// `_load_from_bytes` of another stream.
    fn fuzzing_stream_in_stream() -> Vec<u8> {
        let inner = crate::fuzzing::hostile::storage_stream("1", &[1.0, 2.0]);
        let mut obj = P::default();
        obj.op(b"\x80\x02").global("torch.storage", "_load_from_bytes");
        obj.op(b"B").op(&(inner.len() as u32).to_le_bytes()).op(&inner).op(b"\x85R.");
        crate::fuzzing::hostile::legacy(&obj.0, &[])
    }

    #[test]
    fn built_network_pickle_reads_its_records_and_scalars() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("small.pkl");
        std::fs::write(&path, crate::fuzzing::hostile::network_pickle()).unwrap();
        let (net, tensors) = load_network(&path, "G_ema").unwrap();
        let mut names: Vec<_> = tensors.keys().cloned().collect();
        names.sort();
        assert_eq!(names, ["fc0.bias", "w_avg", "weight"]);
        assert_eq!(tensors["weight"].to_vec2::<f32>().unwrap(), [[0.0, 0.25, 0.5], [0.75, 1.0, 1.25]]);
        assert_eq!(net.attr("conv_clamp"), Some(&Attr::Int(256)));
        assert_eq!(net.get("fc0").unwrap().attr("weight_gain"), Some(&Attr::Float(0.5)));
        assert_eq!(net.get("fc0").unwrap().attr("activation"), Some(&Attr::Str("lrelu".into())));
        let d = load_with_key(&path, Some("D")).unwrap();
        assert_eq!(d["weight"].to_vec1::<f32>().unwrap(), [0.0, 0.25, 0.5, 0.75]);
    }
}

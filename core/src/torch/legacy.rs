//! The legacy (pre-PyTorch-1.6, `_use_new_zipfile_serialization=False`)
//! `torch.save` container: a plain stream of pickles followed by raw storage
//! bytes.
//!
//! Layout, as written by `_legacy_save` and read by `_legacy_load` in
//! `torch/serialization.py`
//! (<https://github.com/pytorch/pytorch/blob/main/torch/serialization.py>):
//! 1. pickle: the magic number `0x1950a86a20f9469cfc6c`;
//! 2. pickle: the protocol version `1001`;
//! 3. pickle: a `sys_info` dict (`little_endian`, `type_sizes`, …);
//! 4. pickle: the object itself, whose persistent ids are
//!    `('storage', StorageType, root_key, location, numel, view_metadata)`;
//! 5. pickle: the list of storage keys, in the order their data follows;
//! 6. per key: an 8-byte little-endian element count, then
//!    `count * element_size` raw little-endian bytes
//!    (`_set_from_file` / `THPStorage_readFileRaw`).
//!
//! The same stream, holding a single storage, is how a plainly pickled
//! storage travels (`torch.storage._load_from_bytes`, in network pickles):
//! [`storage_from_bytes`].

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;
use std::rc::Rc;

use super::pickle::{self, Budget, Inline, Input, Obj, PidStyle, StorageDtype, StorageRef, Unpickled, Value};

/// `torch.serialization.MAGIC_NUMBER`, little-endian as pickle's LONG1 has it.
const MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
/// `torch.serialization.PROTOCOL_VERSION`.
const PROTOCOL_VERSION: i64 = 1001;

/// The parsed head of a legacy file: the object and where each storage's
/// data lies.
pub(crate) struct Legacy {
    pub object: Unpickled,
    /// Storage keys in file order.
    keys: Vec<String>,
    /// Byte offset of the first storage record.
    data_start: u64,
    file_len: u64,
}

/// Does the file start with the legacy magic number (a pickled int,
/// optionally after a protocol-4 FRAME)?
pub(crate) fn sniff(head: &[u8]) -> bool {
    if head.len() < 2 || head[0] != 0x80 || !(2..=5).contains(&head[1]) {
        return false;
    }
    let rest = if head.get(2) == Some(&0x95) { head.get(11..).unwrap_or(&[]) } else { &head[2..] };
    rest.len() >= 12 && rest[0] == 0x8a && rest[1] == 10 && rest[2..12] == MAGIC
}

/// Reads the pickles at the start of a legacy file (not the tensor data).
pub(crate) fn read_head(path: &Path, budget: &mut Budget) -> Result<Legacy, String> {
    let file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let file_len = file.metadata().map_err(|e| format!("cannot stat: {e}"))?.len();
    let mut input = Input::new(BufReader::new(file), 0);
    let (object, keys) = parse_head(&mut input, budget, false)?;
    Ok(Legacy { object, keys, data_start: input.pos(), file_len })
}

/// The five pickles of a legacy stream: checks the magic number, the
/// protocol version and the byte order, and returns the object and the
/// storage keys in the order their data follows. `nested`: the stream is a
/// storage inside a pickle (see [`storage_from_bytes`]).
fn parse_head<R: Read>(
    input: &mut Input<R>,
    budget: &mut Budget,
    nested: bool,
) -> Result<(Unpickled, Vec<String>), String> {
    let mut next = |input: &mut Input<R>| {
        if nested {
            pickle::unpickle_nested(input, PidStyle::Legacy, budget)
        } else {
            pickle::unpickle(input, PidStyle::Legacy, budget)
        }
    };
    let magic = next(input)?;
    match &magic.root {
        Value::BigInt(b) if b[..] == MAGIC => {}
        _ => return Err("not a torch checkpoint: the legacy magic number is wrong".into()),
    }
    let version = next(input)?;
    match version.root {
        Value::Int(PROTOCOL_VERSION) => {}
        _ => return Err("unsupported legacy torch protocol version (expected 1001)".into()),
    }
    let sys_info = next(input)?;
    if let Some(Obj::Dict(items)) = sys_info.obj(&sys_info.root) {
        let big =
            items.iter().any(|(k, v)| matches!((k, v), (Value::Str(k), Value::Bool(false)) if &**k == "little_endian"));
        if big {
            return Err("the file was written on a big-endian machine, which is not supported; \
                        re-save it on a little-endian one"
                .into());
        }
    }
    let object = next(input)?;
    let keys_pickle = next(input)?;
    let keys = match keys_pickle.obj(&keys_pickle.root) {
        Some(Obj::List(items)) => items
            .iter()
            .map(|k| match k {
                Value::Str(s) => Ok(s.to_string()),
                Value::Int(i) => Ok(i.to_string()),
                _ => Err("storage key list holds a non-string".to_string()),
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => return Err("the storage key list after the object is missing".into()),
    };
    Ok((object, keys))
}

/// The storage of `torch.storage._load_from_bytes(blob)`: `blob` is a
/// complete legacy stream whose object is one storage, followed by that
/// storage's data and nothing else. The bytes stay in `blob` (no copy);
/// the storage's size is checked against them exactly.
pub(crate) fn storage_from_bytes(blob: &Rc<[u8]>, budget: &mut Budget) -> Result<StorageRef, String> {
    let mut input = Input::new(&blob[..], 0);
    let (object, keys) = parse_head(&mut input, budget, true)?;
    let mut storage = match object.obj(&object.root) {
        Some(Obj::Storage(s)) => s.clone(),
        _ => return Err(format!("its object is {}, not a storage", pickle::describe(&object.root))),
    };
    if keys.len() != 1 || keys[0] != storage.key {
        return Err(format!("it lists {} storages; a storage stream holds exactly its own", keys.len()));
    }
    let at = input.pos();
    let count = u64::from_le_bytes(input.array()?);
    if count != storage.numel {
        return Err(format!("the data at byte {at} claims {count} elements, the storage has {}", storage.numel));
    }
    let start = input.pos();
    let left = blob.len() as u64 - start;
    let len = count.checked_mul(storage.dtype.size() as u64).ok_or("the storage size overflows")?;
    if len > left {
        return Err(format!("truncated: the storage needs {len} bytes of data, {left} follow"));
    }
    if len < left {
        return Err(format!("{} unexpected bytes after the storage's {len} bytes of data", left - len));
    }
    let (start, len) = (start as usize, len as usize);
    storage.inline = Some(Inline { blob: blob.clone(), start, len });
    Ok(storage)
}

impl Legacy {
    /// Reads the raw bytes of the storages named in `wanted`, skipping the
    /// others. `dtypes` gives each key's element type (from the object's
    /// persistent ids).
    pub(crate) fn read_storages(
        &self,
        path: &Path,
        dtypes: &HashMap<String, StorageDtype>,
        wanted: &HashSet<String>,
        budget: &mut Budget,
    ) -> Result<HashMap<String, Vec<u8>>, String> {
        let file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
        let mut reader = BufReader::new(file);
        reader.seek(std::io::SeekFrom::Start(self.data_start)).map_err(|e| format!("cannot seek: {e}"))?;
        let mut input = Input::new(reader, self.data_start);
        let mut out = HashMap::new();
        for key in &self.keys {
            if out.len() == wanted.len() {
                break;
            }
            let dtype =
                dtypes.get(key).ok_or_else(|| format!("storage '{key}' is listed but no tensor refers to it"))?;
            let at = input.pos();
            let count = u64::from_le_bytes(input.array()?);
            let nbytes = count
                .checked_mul(dtype.size() as u64)
                .filter(|n| input.pos().checked_add(*n).is_some_and(|end| end <= self.file_len))
                .ok_or_else(|| {
                    format!(
                        "truncated: storage '{key}' at byte {at} claims {count} elements of {} \
                         bytes, past the end of the file ({} bytes)",
                        dtype.size(),
                        self.file_len
                    )
                })?;
            if wanted.contains(key) && !out.contains_key(key) {
                budget.charge(nbytes, &format!("storage '{key}'"))?;
                let bytes = input.bytes_exact(nbytes)?;
                out.insert(key.clone(), bytes);
            } else {
                let skip = i64::try_from(nbytes).map_err(|_| "storage too large")?;
                input.inner_mut().seek_relative(skip).map_err(|e| format!("cannot seek: {e}"))?;
                input.advance(nbytes);
            }
        }
        if let Some(missing) = wanted.iter().find(|k| !out.contains_key(*k)) {
            return Err(format!("storage '{missing}' is not in the file's storage list"));
        }
        Ok(out)
    }
}

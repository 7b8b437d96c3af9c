//! A restricted pickle virtual machine (protocols 2–5) that builds a plain
//! data tree and never runs code.
//!
//! Python's pickle format is a small stack machine whose `GLOBAL` +
//! `REDUCE` opcodes call arbitrary importable functions; that is how a
//! malicious checkpoint runs `os.system`. Here every `GLOBAL` is looked up in
//! a fixed whitelist of the callables `torch.save` emits for state dicts
//! (tensor rebuilders, storage types, `OrderedDict`, …) and each of them is
//! *interpreted*, not executed; any other global is an error that names it.
//! Reference for the opcodes: CPython's `Lib/pickletools.py`
//! (<https://github.com/python/cpython/blob/main/Lib/pickletools.py>); for the
//! globals torch emits: `torch/_tensor.py` (`__reduce_ex__`) and
//! `torch/_utils.py` (`_rebuild_tensor_v2`).
//!
//! NVIDIA's StyleGAN2-ADA network pickles add a few more globals, read the
//! same way: `torch_utils.persistence._reconstruct_persistent_obj(meta)` is a
//! record ([`Obj::Persistent`]: the class name and the module's state; the
//! module source the upstream loader would execute is data here, and
//! dropped), each storage is `torch.storage._load_from_bytes(b)` over a
//! nested legacy `torch.save` stream (parsed by `legacy::storage_from_bytes`,
//! never more than one level deep), plus `dnnlib.util.EasyDict` (a dict)
//! and NumPy scalars and dtypes.
//!
//! Containers live in an arena ([`Obj`], addressed by index) so that the
//! memo can share them and mutations after memoisation (a dict is memoised
//! empty, then filled by `SETITEMS`) are seen through every reference.

use std::collections::HashMap;
use std::io::Read;
use std::rc::Rc;

/// Element type of a torch storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StorageDtype {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl StorageDtype {
    /// Bytes per element.
    pub(crate) fn size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }

    /// The torch storage class name (`FloatStorage`, …) -> dtype.
    fn from_storage_name(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => Self::F32,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "DoubleStorage" => Self::F64,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ShortStorage" => Self::I16,
            "CharStorage" => Self::I8,
            "ByteStorage" | "UntypedStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }
}

/// A reference to (a view of) a torch storage, from a persistent id.
#[derive(Debug, Clone)]
pub(crate) struct StorageRef {
    /// Key of the root storage (zip member name / legacy storage key).
    pub key: String,
    /// Element type.
    pub dtype: StorageDtype,
    /// Element count of the root storage.
    pub numel: u64,
    /// Legacy storage views: element offset into the root storage and
    /// element count of the view.
    pub view: Option<(u64, u64)>,
    /// The root storage's bytes when they were inside the pickle itself
    /// (`torch.storage._load_from_bytes`), not in a zip member or after
    /// the pickles of a legacy file.
    pub inline: Option<Inline>,
}

/// Storage bytes held inside a pickled `bytes` value: `len` bytes from
/// `start`, checked to lie inside `blob` when built.
#[derive(Clone)]
pub(crate) struct Inline {
    pub blob: Rc<[u8]>,
    pub start: usize,
    pub len: usize,
}

impl Inline {
    /// The storage's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.blob[self.start..self.start + self.len]
    }
}

impl std::fmt::Debug for Inline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Inline({} bytes at {} of a {}-byte blob)", self.len, self.start, self.blob.len())
    }
}

/// A tensor: a strided view of a storage (`_rebuild_tensor_v2` arguments).
#[derive(Debug, Clone)]
pub(crate) struct TensorRef {
    pub storage: StorageRef,
    /// Element offset into the storage (view).
    pub offset: u64,
    pub size: Vec<u64>,
    pub stride: Vec<u64>,
}

/// The whitelisted globals, as inert tokens.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Global {
    RebuildTensor,
    RebuildParameter,
    RebuildFromTypeV2,
    OrderedDict,
    Storage(StorageDtype),
    /// `torch.float32` and friends, `torch.Tensor`, `torch.nn.Parameter`:
    /// values that are passed around but never called.
    Token(Rc<str>),
    Namespace,
    Set,
    FrozenSet,
    TorchSize,
    CodecsEncode,
    /// `torch_utils.persistence._reconstruct_persistent_obj`.
    PersistentObj,
    /// `torch.storage._load_from_bytes`.
    LoadFromBytes,
    /// `dnnlib.util.EasyDict`.
    EasyDict,
    /// `numpy.dtype`.
    NumpyDtype,
    /// `numpy.core.multiarray.scalar` (`numpy._core` since NumPy 2).
    NumpyScalar,
}

/// A pickle value. Containers are indices into the arena.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer wider than 64 bits, little-endian two's complement.
    BigInt(Rc<[u8]>),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Global(Global),
    Obj(usize),
}

/// An arena object.
#[derive(Debug)]
pub(crate) enum Obj {
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Set(Vec<Value>),
    Storage(StorageRef),
    Tensor(TensorRef),
    /// An object we do not look into (`argparse.Namespace`, a legacy
    /// pickled module): surfaced as a non-tensor leaf. The name is kept for
    /// debugging output.
    Opaque(#[allow(dead_code)] &'static str),
    /// A persistent-class object of a network pickle, as a record: its
    /// class name (`Generator`, `SynthesisLayer`, …) and its state (the
    /// module's `__dict__`, a dict). Nothing of it is run.
    Persistent {
        class_name: Rc<str>,
        state: Value,
    },
    /// A NumPy dtype (`f8`, `i4`, …), for the scalars built from it.
    NpDtype {
        code: Rc<str>,
        big_endian: bool,
    },
}

/// Result of running one pickle.
pub(crate) struct Unpickled {
    pub root: Value,
    pub objs: Vec<Obj>,
}

impl Unpickled {
    /// The arena object a value refers to, if it is a container.
    pub(crate) fn obj(&self, v: &Value) -> Option<&Obj> {
        match v {
            Value::Obj(i) => self.objs.get(*i),
            _ => None,
        }
    }
}

/// How to read persistent ids: the zip format has 5-tuples, the legacy
/// format 6-tuples with view metadata; a plain pickle (a network pickle)
/// has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PidStyle {
    Zip,
    Legacy,
    Plain,
}

/// Counts the bytes read so that errors can give an offset.
pub(crate) struct Input<R> {
    inner: R,
    pos: u64,
}

impl<R: Read> Input<R> {
    pub(crate) fn new(inner: R, pos: u64) -> Self {
        Self { inner, pos }
    }

    /// Absolute byte offset of the next byte.
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    pub(crate) fn inner_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    pub(crate) fn advance(&mut self, n: u64) {
        self.pos += n;
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut buf = [0u8; N];
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| format!("truncated at byte {}: needed {N} more bytes ({e})", self.pos))?;
        self.pos += N as u64;
        Ok(buf)
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    /// Reads `n` bytes without trusting `n` for the allocation (a hostile
    /// length prefix must not allocate before the bytes exist).
    pub(crate) fn bytes(&mut self, n: u64) -> Result<Vec<u8>, String> {
        let mut buf = Vec::with_capacity(n.min(1 << 20) as usize);
        let got = (&mut self.inner)
            .take(n)
            .read_to_end(&mut buf)
            .map_err(|e| format!("read error at byte {}: {e}", self.pos))?;
        if (got as u64) < n {
            return Err(format!("truncated at byte {}: needed {n} bytes, only {got} left", self.pos + got as u64));
        }
        self.pos += n;
        Ok(buf)
    }

    /// Reads exactly `n` bytes into a buffer allocated at once: for data
    /// whose length was already checked against the file (storages), so
    /// that a large read does not grow a buffer by doubling.
    pub(crate) fn bytes_exact(&mut self, n: u64) -> Result<Vec<u8>, String> {
        let len = usize::try_from(n).map_err(|_| format!("{n} bytes do not fit in memory"))?;
        let mut buf = Vec::new();
        buf.try_reserve_exact(len).map_err(|_| format!("cannot allocate {n} bytes"))?;
        buf.resize(len, 0);
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| format!("truncated at byte {}: needed {n} bytes ({e})", self.pos))?;
        self.pos += n;
        Ok(buf)
    }

    /// A newline-terminated line (text opcodes), at most 1 KiB.
    fn line(&mut self) -> Result<String, String> {
        let start = self.pos;
        let mut out = Vec::new();
        loop {
            let b = self.byte()?;
            if b == b'\n' {
                break;
            }
            if out.len() >= 1024 {
                return Err(format!("line starting at byte {start} is longer than 1 KiB"));
            }
            out.push(b);
        }
        String::from_utf8(out).map_err(|_| format!("line at byte {start} is not UTF-8"))
    }
}

/// Resolves `module.name` against the whitelist.
fn resolve_global(module: &str, name: &str) -> Option<Global> {
    Some(match (module, name) {
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => Global::RebuildTensor,
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => Global::RebuildParameter,
        ("torch._tensor", "_rebuild_from_type_v2") => Global::RebuildFromTypeV2,
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch" | "torch.cuda", n) if StorageDtype::from_storage_name(n).is_some() => {
            Global::Storage(StorageDtype::from_storage_name(n)?)
        }
        (
            "torch",
            "float32" | "float" | "float16" | "half" | "bfloat16" | "float64" | "double" | "int64" | "long" | "int32"
            | "int" | "int16" | "short" | "int8" | "uint8" | "bool" | "Tensor",
        )
        | ("torch.nn.parameter", "Parameter") => Global::Token(format!("{module}.{name}").into()),
        ("torch", "Size") => Global::TorchSize,
        ("argparse", "Namespace") => Global::Namespace,
        ("builtins" | "__builtin__", "set") => Global::Set,
        ("builtins" | "__builtin__", "frozenset") => Global::FrozenSet,
        ("_codecs", "encode") => Global::CodecsEncode,
        ("torch_utils.persistence", "_reconstruct_persistent_obj") => Global::PersistentObj,
        ("torch.storage", "_load_from_bytes") => Global::LoadFromBytes,
        ("dnnlib.util", "EasyDict") => Global::EasyDict,
        ("numpy", "dtype") => Global::NumpyDtype,
        ("numpy.core.multiarray" | "numpy._core.multiarray", "scalar") => Global::NumpyScalar,
        _ => return None,
    })
}

/// The message for a global outside the whitelist.
fn rejected_global(module: &str, name: &str) -> String {
    format!(
        "refusing to load: the pickle references the global `{module}.{name}`, which a plain \
         state dict never needs (loading it would run arbitrary code). This file is not a plain \
         state dict of tensors; re-save it from Python as one, e.g. \
         `torch.save({{k: v.contiguous() for k, v in sd.items()}}, 'out.pt')` or \
         `safetensors.torch.save_file(...)`, or convert it in a trusted environment with \
         `lsd-tui weights convert`"
    )
}

/// Upper bound on stack + memo + arena size, against memory blow-ups from
/// hostile input that is still linear in size but with a large constant.
const MAX_ITEMS: usize = 1 << 24;

/// Bytes charged to the [`Budget`] per pickle value created or copied: a
/// [`Value`] (24 bytes) plus its share of the containers and memo that
/// hold it (measured: about 34 bytes per value on nested dicts).
const ITEM_COST: u64 = 32;

/// What a whole load may allocate, in bytes, charged as it goes: pickle
/// values and strings, storage bytes read, tensors built, tensor names.
///
/// Each value of a checkpoint is bounded by the file anyway; what a hostile
/// file can do is make the reader *repeat* work: point 100 000 times at one
/// memoised 64 MiB tensor, reuse a 1 MB key at every level of a nested
/// dict, or hide a 1000:1 deflate bomb in a zip member. A single budget for
/// the whole load, proportional to the file's size, bounds all of them at
/// once: a real checkpoint needs about twice its size (storages, then
/// tensors), [`Budget::for_file`] allows three times plus a constant.
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    left: u64,
    limit: u64,
}

/// The constant part of [`Budget::for_file`].
pub(crate) const BUDGET_BASE: u64 = 48 << 20;

impl Budget {
    /// A budget of `limit` bytes.
    pub(crate) fn new(limit: u64) -> Self {
        Self { left: limit, limit }
    }

    /// The budget of a load of a file of `len` bytes: `3 × len + 48 MiB`.
    pub(crate) fn for_file(len: u64) -> Self {
        Self::new(len.saturating_mul(3).saturating_add(BUDGET_BASE))
    }

    /// Bytes still available.
    pub(crate) fn left(&self) -> u64 {
        self.left
    }

    /// Takes `bytes` from the budget, or says what exceeded it.
    pub(crate) fn charge(&mut self, bytes: u64, what: &str) -> Result<(), String> {
        if bytes > self.left {
            return Err(format!(
                "{what} would take the load past {} bytes, more than a checkpoint of this size \
                 can need; the file is corrupt or built to exhaust memory",
                self.limit
            ));
        }
        self.left -= bytes;
        Ok(())
    }
}

struct Machine<'a, R> {
    input: &'a mut Input<R>,
    budget: &'a mut Budget,
    /// Whether this pickle is itself a storage stream inside a pickle
    /// (which may not hold another).
    nested: bool,
    /// Storage streams read so far (their storages' keys are made unique
    /// with it).
    streams: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    objs: Vec<Obj>,
    pid_style: PidStyle,
    /// Number of values created so far, checked against [`MAX_ITEMS`].
    items: usize,
}

/// Runs one pickle from `input`, stopping right after its `STOP` opcode so
/// that the caller can continue reading the stream (legacy format).
pub(crate) fn unpickle<R: Read>(
    input: &mut Input<R>,
    pid_style: PidStyle,
    budget: &mut Budget,
) -> Result<Unpickled, String> {
    run(input, pid_style, budget, false)
}

/// [`unpickle`] for the pickles of a storage stream inside a pickle
/// (`torch.storage._load_from_bytes`): the same machine, except that
/// another storage stream is refused, so nesting stops at one level.
pub(crate) fn unpickle_nested<R: Read>(
    input: &mut Input<R>,
    pid_style: PidStyle,
    budget: &mut Budget,
) -> Result<Unpickled, String> {
    run(input, pid_style, budget, true)
}

fn run<R: Read>(
    input: &mut Input<R>,
    pid_style: PidStyle,
    budget: &mut Budget,
    nested: bool,
) -> Result<Unpickled, String> {
    let mut m = Machine {
        input,
        budget,
        nested,
        streams: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        objs: Vec::new(),
        pid_style,
        items: 0,
    };
    loop {
        let at = m.input.pos();
        let op = m.input.byte()?;
        match m.step(op) {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => return Err(format!("pickle opcode 0x{op:02x} at byte {at}: {e}")),
        }
    }
    let root = m.pop()?;
    Ok(Unpickled { root, objs: m.objs })
}

fn int_of(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::Bool(b) => Some(*b as i64),
        _ => None,
    }
}

fn str_of(v: &Value) -> Option<String> {
    match v {
        Value::Str(s) => Some(s.to_string()),
        Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

/// An IEEE half-precision value.
fn f16_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let frac = (h & 0x3ff) as f64;
    sign * match exp {
        0 => frac * 2f64.powi(-24),
        31 if frac == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        e => (1.0 + frac / 1024.0) * 2f64.powi(e - 15),
    }
}

/// Decodes a little-endian two's-complement integer of any width.
fn long_value(bytes: Vec<u8>) -> Value {
    if bytes.is_empty() {
        return Value::Int(0);
    }
    if bytes.len() <= 8 {
        let neg = bytes[bytes.len() - 1] & 0x80 != 0;
        let mut buf = if neg { [0xffu8; 8] } else { [0u8; 8] };
        buf[..bytes.len()].copy_from_slice(&bytes);
        Value::Int(i64::from_le_bytes(buf))
    } else {
        Value::BigInt(bytes.into())
    }
}

impl<R: Read> Machine<'_, R> {
    fn bump(&mut self, n: usize) -> Result<(), String> {
        self.items = self.items.saturating_add(n);
        if self.items > MAX_ITEMS {
            return Err(format!("more than {MAX_ITEMS} pickle values; refusing to continue"));
        }
        self.budget.charge((n as u64).saturating_mul(ITEM_COST), "the pickle's values")
    }

    /// Reads `n` bytes of a string or bytes value, charged to the budget
    /// before anything is allocated.
    fn data(&mut self, n: u64) -> Result<Vec<u8>, String> {
        self.budget.charge(n, "a pickled string")?;
        self.input.bytes(n)
    }

    fn push(&mut self, v: Value) -> Result<(), String> {
        self.bump(1)?;
        self.stack.push(v);
        Ok(())
    }

    fn new_obj(&mut self, o: Obj) -> Result<Value, String> {
        self.bump(1)?;
        self.objs.push(o);
        Ok(Value::Obj(self.objs.len() - 1))
    }

    fn pop(&mut self) -> Result<Value, String> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err("stack underflow".into());
        }
        self.stack.pop().ok_or_else(|| "stack underflow".into())
    }

    /// The top of the stack; like `pop`, it cannot see below the last MARK.
    fn top(&self) -> Result<&Value, String> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err("stack underflow".into());
        }
        self.stack.last().ok_or_else(|| "stack underflow".into())
    }

    /// Pops everything above the last MARK, and the mark.
    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let m = self.marks.pop().ok_or("no MARK on the stack")?;
        if m > self.stack.len() {
            return Err("MARK above the stack top".into());
        }
        Ok(self.stack.split_off(m))
    }

    fn memo_put(&mut self, key: u32) -> Result<(), String> {
        let v = self.top()?.clone();
        self.bump(1)?;
        self.memo.insert(key, v);
        Ok(())
    }

    fn memo_get(&mut self, key: u32) -> Result<(), String> {
        let v = self.memo.get(&key).cloned().ok_or_else(|| format!("memo key {key} missing"))?;
        self.push(v)
    }

    fn obj_mut(&mut self, v: &Value) -> Result<&mut Obj, String> {
        match v {
            Value::Obj(i) => self.objs.get_mut(*i).ok_or_else(|| "dangling object".into()),
            other => Err(format!("expected a container, found {}", describe(other))),
        }
    }

    fn tuple(&mut self, items: Vec<Value>) -> Result<(), String> {
        let v = self.new_obj(Obj::Tuple(items))?;
        self.push(v)
    }

    /// A copy of a tuple's (or list's) items. Copies count against
    /// [`MAX_ITEMS`] so that re-using one huge memoised list as an argument
    /// many times cannot make the run quadratic.
    fn tuple_items(&mut self, v: &Value) -> Result<Vec<Value>, String> {
        let items = match v {
            Value::Obj(i) => match self.objs.get(*i) {
                Some(Obj::Tuple(t) | Obj::List(t)) => t.clone(),
                _ => return Err(format!("expected a tuple, found {}", describe(v))),
            },
            _ => return Err(format!("expected a tuple, found {}", describe(v))),
        };
        self.bump(items.len())?;
        Ok(items)
    }

    fn set_items(&mut self, target: &Value, items: Vec<Value>) -> Result<(), String> {
        if !items.len().is_multiple_of(2) {
            return Err("odd number of items for SETITEMS".into());
        }
        self.bump(items.len())?;
        match self.obj_mut(target)? {
            Obj::Dict(d) => {
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.push((k, v));
                }
                Ok(())
            }
            _ => Err("SETITEM(S) on something that is not a dict".into()),
        }
    }

    fn append_items(&mut self, target: &Value, items: Vec<Value>) -> Result<(), String> {
        self.bump(items.len())?;
        match self.obj_mut(target)? {
            Obj::List(l) | Obj::Set(l) => {
                l.extend(items);
                Ok(())
            }
            _ => Err("APPEND(S)/ADDITEMS on something that is not a list or set".into()),
        }
    }

    /// One opcode; `Ok(true)` on STOP.
    fn step(&mut self, op: u8) -> Result<bool, String> {
        match op {
            0x80 => {
                let proto = self.input.byte()?;
                if !(2..=5).contains(&proto) {
                    return Err(format!("unsupported pickle protocol {proto} (2 to 5 are read)"));
                }
            }
            0x95 => {
                self.input.array::<8>()?;
            }
            b'.' => return Ok(true),
            b'(' => {
                self.bump(1)?;
                self.marks.push(self.stack.len());
            }
            b'0' => {
                self.pop()?;
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let v = self.top()?.clone();
                self.push(v)?;
            }
            b'N' => self.push(Value::None)?,
            0x88 => self.push(Value::Bool(true))?,
            0x89 => self.push(Value::Bool(false))?,
            b'J' => {
                let v = i32::from_le_bytes(self.input.array()?);
                self.push(Value::Int(v as i64))?;
            }
            b'K' => {
                let v = self.input.byte()?;
                self.push(Value::Int(v as i64))?;
            }
            b'M' => {
                let v = u16::from_le_bytes(self.input.array()?);
                self.push(Value::Int(v as i64))?;
            }
            0x8a => {
                let n = self.input.byte()? as u64;
                let b = self.data(n)?;
                self.push(long_value(b))?;
            }
            0x8b => {
                let n = i32::from_le_bytes(self.input.array()?);
                let n = u64::try_from(n).map_err(|_| "negative LONG4 length")?;
                let b = self.data(n)?;
                self.push(long_value(b))?;
            }
            b'G' => {
                let v = f64::from_be_bytes(self.input.array()?);
                self.push(Value::Float(v))?;
            }
            b'X' | 0x8c | 0x8d | b'T' | b'U' => {
                let n = match op {
                    b'X' | b'T' => u32::from_le_bytes(self.input.array()?) as u64,
                    0x8d => u64::from_le_bytes(self.input.array()?),
                    _ => self.input.byte()? as u64,
                };
                let b = self.data(n)?;
                // BINSTRING/SHORT_BINSTRING are Python 2 `str`: bytes that
                // are text in practice.
                let s = String::from_utf8(b).or_else(|e| {
                    if matches!(op, b'T' | b'U') {
                        Ok(String::from_utf8_lossy(e.as_bytes()).into_owned())
                    } else {
                        Err("string is not valid UTF-8".to_string())
                    }
                })?;
                self.push(Value::Str(s.into()))?;
            }
            b'B' | b'C' | 0x8e | 0x96 => {
                let n = match op {
                    b'B' => u32::from_le_bytes(self.input.array()?) as u64,
                    b'C' => self.input.byte()? as u64,
                    _ => u64::from_le_bytes(self.input.array()?),
                };
                let b = self.data(n)?;
                self.push(Value::Bytes(b.into()))?;
            }
            b'}' => {
                let v = self.new_obj(Obj::Dict(Vec::new()))?;
                self.push(v)?;
            }
            b']' => {
                let v = self.new_obj(Obj::List(Vec::new()))?;
                self.push(v)?;
            }
            b')' => self.tuple(Vec::new())?,
            0x8f => {
                let v = self.new_obj(Obj::Set(Vec::new()))?;
                self.push(v)?;
            }
            b'd' => {
                let items = self.pop_mark()?;
                let v = self.new_obj(Obj::Dict(Vec::new()))?;
                self.set_items(&v, items)?;
                self.push(v)?;
            }
            b'l' => {
                let items = self.pop_mark()?;
                let v = self.new_obj(Obj::List(items))?;
                self.push(v)?;
            }
            b't' => {
                let items = self.pop_mark()?;
                self.tuple(items)?;
            }
            0x91 => {
                let items = self.pop_mark()?;
                let v = self.new_obj(Obj::Set(items))?;
                self.push(v)?;
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let floor = self.marks.last().copied().unwrap_or(0);
                if self.stack.len() < floor + n {
                    return Err("stack underflow".into());
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.tuple(items)?;
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                let d = self.top()?.clone();
                self.set_items(&d, vec![k, v])?;
            }
            b'u' => {
                let items = self.pop_mark()?;
                let d = self.top()?.clone();
                self.set_items(&d, items)?;
            }
            b'a' => {
                let v = self.pop()?;
                let l = self.top()?.clone();
                self.append_items(&l, vec![v])?;
            }
            b'e' | 0x90 => {
                let items = self.pop_mark()?;
                let l = self.top()?.clone();
                self.append_items(&l, items)?;
            }
            b'q' => {
                let k = self.input.byte()? as u32;
                self.memo_put(k)?;
            }
            b'r' => {
                let k = u32::from_le_bytes(self.input.array()?);
                self.memo_put(k)?;
            }
            0x94 => {
                let k = u32::try_from(self.memo.len()).map_err(|_| "memo too large")?;
                self.memo_put(k)?;
            }
            b'p' | b'g' => {
                let line = self.input.line()?;
                let k: u32 = line.trim().parse().map_err(|_| format!("bad memo key {line:?}"))?;
                if op == b'p' {
                    self.memo_put(k)?;
                } else {
                    self.memo_get(k)?;
                }
            }
            b'h' => {
                let k = self.input.byte()? as u32;
                self.memo_get(k)?;
            }
            b'j' => {
                let k = u32::from_le_bytes(self.input.array()?);
                self.memo_get(k)?;
            }
            b'c' => {
                let module = self.input.line()?;
                let name = self.input.line()?;
                let g = resolve_global(&module, &name).ok_or_else(|| rejected_global(&module, &name))?;
                self.push(Value::Global(g))?;
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (Value::Str(module), Value::Str(name)) = (&module, &name) else {
                    return Err("STACK_GLOBAL needs two strings".into());
                };
                let g = resolve_global(module, name).ok_or_else(|| rejected_global(module, name))?;
                self.push(Value::Global(g))?;
            }
            b'R' => {
                let args = self.pop()?;
                let func = self.pop()?;
                let v = self.call(&func, &args, 0)?;
                self.push(v)?;
            }
            0x81 => {
                let args = self.pop()?;
                let cls = self.pop()?;
                let v = self.new_object(&cls, &args)?;
                self.push(v)?;
            }
            0x92 => {
                let _kwargs = self.pop()?;
                let args = self.pop()?;
                let cls = self.pop()?;
                let v = self.new_object(&cls, &args)?;
                self.push(v)?;
            }
            b'b' => {
                // The state of an object: an OrderedDict's `_metadata`, a
                // Namespace's attributes. Nothing we keep needs it but a
                // NumPy dtype's byte order (`(3, '<', …)`).
                let state = self.pop()?;
                let target = self.top()?.clone();
                let big = match self.objs.get(match state {
                    Value::Obj(i) => i,
                    _ => usize::MAX,
                }) {
                    Some(Obj::Tuple(t)) => matches!(t.get(1), Some(Value::Str(o)) if &**o == ">"),
                    _ => false,
                };
                if let Value::Obj(i) = target {
                    if let Some(Obj::NpDtype { big_endian, .. }) = self.objs.get_mut(i) {
                        *big_endian = big;
                    }
                }
            }
            b'Q' => {
                let pid = self.pop()?;
                let v = self.persistent_load(&pid)?;
                self.push(v)?;
            }
            b'P' => return Err("text persistent ids (protocol 0) are not supported".into()),
            0x82..=0x84 => return Err("extension registry opcodes are not supported".into()),
            0x97 | 0x98 => return Err("out-of-band buffers are not supported".into()),
            b'i' | b'o' => return Err("INST/OBJ opcodes (protocol 0/1 objects) are not supported".into()),
            b'I' | b'L' | b'F' | b'S' | b'V' => {
                return Err("text opcodes of pickle protocol 0 are not supported".into())
            }
            _ => return Err("unknown opcode".into()),
        }
        Ok(false)
    }

    /// `cls.__new__(cls, *args)` for the few classes allowed.
    fn new_object(&mut self, cls: &Value, args: &Value) -> Result<Value, String> {
        match cls {
            Value::Global(Global::Namespace) => self.new_obj(Obj::Opaque("argparse.Namespace")),
            Value::Global(Global::OrderedDict | Global::EasyDict) => self.new_obj(Obj::Dict(Vec::new())),
            Value::Global(Global::Set | Global::FrozenSet) => self.new_obj(Obj::Set(Vec::new())),
            Value::Global(Global::TorchSize) => self.call(cls, args, 0),
            other => Err(format!("cannot instantiate {}", describe(other))),
        }
    }

    /// Interprets a call of a whitelisted global.
    fn call(&mut self, func: &Value, args: &Value, depth: u32) -> Result<Value, String> {
        let Value::Global(g) = func else {
            return Err(format!("cannot call {}", describe(func)));
        };
        let a = self.tuple_items(args)?;
        match g {
            Global::RebuildTensor => self.rebuild_tensor(&a),
            Global::RebuildParameter => match a.first() {
                Some(t @ Value::Obj(i)) if matches!(self.objs.get(*i), Some(Obj::Tensor(_))) => Ok(t.clone()),
                _ => Err("_rebuild_parameter expects a tensor".into()),
            },
            Global::RebuildFromTypeV2 => {
                // (func, type, args, state): a tensor subclass; rebuild the
                // plain tensor with `func(*args)` and drop type and state.
                if depth > 0 || a.len() < 3 {
                    return Err("malformed _rebuild_from_type_v2".into());
                }
                let (f, inner) = (a[0].clone(), a[2].clone());
                self.call(&f, &inner, depth + 1)
            }
            Global::OrderedDict => {
                let d = self.new_obj(Obj::Dict(Vec::new()))?;
                if let Some(pairs) = a.first() {
                    let mut flat = Vec::new();
                    for p in self.tuple_items(pairs)? {
                        let kv = self.tuple_items(&p)?;
                        if kv.len() != 2 {
                            return Err("OrderedDict item is not a pair".into());
                        }
                        flat.extend(kv);
                    }
                    self.set_items(&d, flat)?;
                }
                Ok(d)
            }
            Global::Set | Global::FrozenSet => {
                let items = match a.first() {
                    Some(v) => self.tuple_items(v)?,
                    None => Vec::new(),
                };
                self.new_obj(Obj::Set(items))
            }
            Global::TorchSize => match a.first() {
                Some(v) => {
                    let items = self.tuple_items(v)?;
                    self.new_obj(Obj::Tuple(items))
                }
                None => self.new_obj(Obj::Tuple(Vec::new())),
            },
            Global::CodecsEncode => {
                let len = match a.first() {
                    Some(Value::Str(s)) => s.len(),
                    Some(Value::Bytes(b)) => b.len(),
                    _ => return Err("_codecs.encode expects a string".into()),
                };
                // Charged before the copy: a memoised string may be encoded many times.
                self.budget.charge(len as u64, "_codecs.encode")?;
                let s = a.first().and_then(str_of).ok_or("_codecs.encode expects a string")?;
                let enc = match a.get(1) {
                    Some(Value::Str(e)) if e.len() <= 32 => e.to_ascii_lowercase(),
                    _ => String::new(),
                };
                let bytes: Vec<u8> = if enc == "latin1" || enc == "latin-1" || enc == "iso-8859-1" {
                    s.chars()
                        .map(|c| u8::try_from(c as u32).map_err(|_| "character outside latin-1"))
                        .collect::<Result<_, _>>()?
                } else {
                    s.into_bytes()
                };
                Ok(Value::Bytes(bytes.into()))
            }
            Global::Namespace => self.new_obj(Obj::Opaque("argparse.Namespace")),
            Global::EasyDict => {
                let d = self.new_obj(Obj::Dict(Vec::new()))?;
                if let Some(src) = a.first() {
                    let items = match self.objs.get(match src {
                        Value::Obj(i) => *i,
                        _ => usize::MAX,
                    }) {
                        Some(Obj::Dict(items)) => items.iter().flat_map(|(k, v)| [k.clone(), v.clone()]).collect(),
                        _ => return Err("EasyDict expects a dict".into()),
                    };
                    self.set_items(&d, items)?;
                }
                Ok(d)
            }
            Global::PersistentObj => self.persistent_obj(&a),
            Global::LoadFromBytes => {
                if self.nested {
                    return Err(
                        "a storage stream inside a storage stream; a network pickle nests them one level deep".into()
                    );
                }
                let Some(Value::Bytes(blob)) = a.first() else {
                    return Err("torch.storage._load_from_bytes expects bytes".into());
                };
                let blob = blob.clone();
                let n = self.streams;
                self.streams += 1;
                let mut storage = super::legacy::storage_from_bytes(&blob, self.budget)
                    .map_err(|e| format!("the storage stream #{n} ({} bytes) inside the pickle: {e}", blob.len()))?;
                storage.key = format!("stream{n}.{}", storage.key);
                self.new_obj(Obj::Storage(storage))
            }
            Global::NumpyDtype => {
                let code = match a.first() {
                    Some(Value::Str(s)) if s.len() <= 16 => s.clone(),
                    _ => return Err("numpy.dtype expects a short type code".into()),
                };
                self.new_obj(Obj::NpDtype { code, big_endian: false })
            }
            Global::NumpyScalar => self.numpy_scalar(&a),
            Global::Storage(_) | Global::Token(_) => Err(format!("cannot call {}", describe(func))),
        }
    }

    /// The value of a string key of a dict object, if any (the last one,
    /// as a Python dict keeps).
    fn dict_get(&self, d: &Value, key: &str) -> Option<Value> {
        match self.objs.get(match d {
            Value::Obj(i) => *i,
            _ => return None,
        })? {
            Obj::Dict(items) => {
                items.iter().rev().find(|(k, _)| matches!(k, Value::Str(s) if &**s == key)).map(|(_, v)| v.clone())
            }
            _ => None,
        }
    }

    /// `_reconstruct_persistent_obj(meta)`: the record of `meta`'s class
    /// name and state. `meta['module_src']` (the Python source the upstream
    /// loader executes) is never looked at.
    fn persistent_obj(&mut self, a: &[Value]) -> Result<Value, String> {
        let meta = a.first().ok_or("_reconstruct_persistent_obj expects its meta dict")?;
        if !matches!(self.obj_mut(meta), Ok(Obj::Dict(_))) {
            return Err(format!("_reconstruct_persistent_obj expects a dict, found {}", describe(meta)));
        }
        match self.dict_get(meta, "type") {
            Some(Value::Str(t)) if &*t == "class" => {}
            Some(Value::Str(t)) => {
                let shown: String = t.chars().take(40).collect();
                return Err(format!("persistent object of type {shown:?}; only 'class' objects are read"));
            }
            _ => return Err("persistent object without a 'type'".into()),
        }
        let class_name = match self.dict_get(meta, "class_name") {
            Some(Value::Str(s)) if !s.is_empty() && s.len() <= 256 => s,
            _ => return Err("persistent object without a 'class_name' string".into()),
        };
        let state = self.dict_get(meta, "state").ok_or("persistent object without a 'state'")?;
        if !matches!(self.obj_mut(&state), Ok(Obj::Dict(_))) {
            return Err(format!("the state of the persistent {class_name} is {}, not a dict", describe(&state)));
        }
        self.new_obj(Obj::Persistent { class_name, state })
    }

    /// `numpy.core.multiarray.scalar(dtype, bytes)`: a float, int or bool;
    /// other kinds become an opaque leaf.
    fn numpy_scalar(&mut self, a: &[Value]) -> Result<Value, String> {
        let (code, big) = match a.first().and_then(|v| match v {
            Value::Obj(i) => self.objs.get(*i),
            _ => None,
        }) {
            Some(Obj::NpDtype { code, big_endian }) => (code.clone(), *big_endian),
            _ => return Err("numpy scalar without a numpy.dtype".into()),
        };
        let bytes = match a.get(1) {
            Some(Value::Bytes(b)) => b.clone(),
            _ => return Err("numpy scalar without its bytes".into()),
        };
        let code = code.trim_start_matches(['<', '>', '=', '|']);
        let (kind, size) = code.split_at(code.len().min(1));
        let Ok(size) = size.parse::<usize>() else { return self.new_obj(Obj::Opaque("numpy scalar")) };
        if !matches!(kind, "f" | "i" | "u" | "b") || !matches!(size, 1 | 2 | 4 | 8) {
            return self.new_obj(Obj::Opaque("numpy scalar"));
        }
        if bytes.len() != size {
            return Err(format!("numpy scalar of dtype {code} has {} bytes, not {size}", bytes.len()));
        }
        let mut le = [0u8; 8];
        le[..size].copy_from_slice(&bytes);
        if big {
            le[..size].reverse();
        }
        let signed = |n: usize| {
            let v = u64::from_le_bytes(le);
            let shift = 64 - 8 * n as u32;
            ((v << shift) as i64) >> shift
        };
        Ok(match (kind, size) {
            ("f", 8) => Value::Float(f64::from_le_bytes(le)),
            ("f", 4) => Value::Float(f32::from_le_bytes([le[0], le[1], le[2], le[3]]) as f64),
            ("f", 2) => Value::Float(f16_to_f64(u16::from_le_bytes([le[0], le[1]]))),
            ("i", n) => Value::Int(signed(n)),
            ("u", 8) => match i64::try_from(u64::from_le_bytes(le)) {
                Ok(v) => Value::Int(v),
                Err(_) => return self.new_obj(Obj::Opaque("numpy scalar")),
            },
            ("u", _) => Value::Int(u64::from_le_bytes(le) as i64),
            ("b", 1) => Value::Bool(le[0] != 0),
            _ => return self.new_obj(Obj::Opaque("numpy scalar")),
        })
    }

    fn nonneg(v: Option<&Value>, what: &str) -> Result<u64, String> {
        v.and_then(int_of)
            .and_then(|i| u64::try_from(i).ok())
            .ok_or_else(|| format!("{what} must be a non-negative integer"))
    }

    /// `_rebuild_tensor_v2(storage, storage_offset, size, stride, ...)`.
    fn rebuild_tensor(&mut self, a: &[Value]) -> Result<Value, String> {
        if a.len() < 4 {
            return Err("_rebuild_tensor needs (storage, offset, size, stride)".into());
        }
        let storage = match self.objs.get(match &a[0] {
            Value::Obj(i) => *i,
            _ => usize::MAX,
        }) {
            Some(Obj::Storage(s)) => s.clone(),
            _ => return Err(format!("tensor storage is {}, not a storage", describe(&a[0]))),
        };
        let offset = Self::nonneg(a.get(1), "storage offset")?;
        let mut dims = |v: &Value, what: &str| -> Result<Vec<u64>, String> {
            self.tuple_items(v)?.iter().map(|d| Self::nonneg(Some(d), what)).collect()
        };
        let size = dims(&a[2], "a size")?;
        let stride = dims(&a[3], "a stride")?;
        if size.len() != stride.len() || size.len() > 64 {
            return Err(format!("size {size:?} and stride {stride:?} do not match"));
        }
        self.new_obj(Obj::Tensor(TensorRef { storage, offset, size, stride }))
    }

    /// `('storage', StorageType, key, location, numel[, view_metadata])`,
    /// or a legacy `('module', …)` container reference.
    fn persistent_load(&mut self, pid: &Value) -> Result<Value, String> {
        let t = self.tuple_items(pid)?;
        // Compared in place: a hostile pid may repeat a huge memoised string.
        let kind = match t.first() {
            Some(Value::Str(s)) => Some(&**s),
            Some(Value::Bytes(b)) => std::str::from_utf8(b).ok(),
            _ => None,
        };
        if self.pid_style == PidStyle::Plain {
            return Err("a persistent id in a plain pickle; only torch.save files have them".into());
        }
        if kind == Some("module") && self.pid_style == PidStyle::Legacy {
            return self.new_obj(Obj::Opaque("pickled nn.Module"));
        }
        if kind != Some("storage") {
            let shown: String = kind.unwrap_or("?").chars().take(40).collect();
            return Err(format!("unknown persistent id type {shown:?}"));
        }
        let want = match self.pid_style {
            PidStyle::Zip => 5,
            PidStyle::Legacy | PidStyle::Plain => 6,
        };
        if t.len() != want {
            return Err(format!("storage persistent id has {} fields, expected {want}", t.len()));
        }
        let Value::Global(Global::Storage(dtype)) = t[1] else {
            return Err(format!("storage type is {}", describe(&t[1])));
        };
        let key = match &t[2] {
            Value::Int(i) => i.to_string(),
            Value::Str(s) if s.len() <= 256 => s.to_string(),
            Value::Bytes(b) if b.len() <= 256 => String::from_utf8_lossy(b).into_owned(),
            Value::Str(_) | Value::Bytes(_) => return Err("storage key longer than 256 bytes".into()),
            _ => return Err("storage key is not a string".into()),
        };
        if key.is_empty() || key.len() > 256 || key.contains(['/', '\\']) {
            return Err(format!("bad storage key {key:?}"));
        }
        let numel = Self::nonneg(t.get(4), "storage size")?;
        let view = match t.get(5) {
            None | Some(Value::None) => None,
            Some(v) => {
                let vm = self.tuple_items(v)?;
                if vm.len() != 3 {
                    return Err("storage view metadata is not (key, offset, size)".into());
                }
                Some((Self::nonneg(vm.get(1), "view offset")?, Self::nonneg(vm.get(2), "view size")?))
            }
        };
        self.new_obj(Obj::Storage(StorageRef { key, dtype, numel, view, inline: None }))
    }
}

/// A short description of a value for error messages.
pub(crate) fn describe(v: &Value) -> String {
    match v {
        Value::None => "None".into(),
        Value::Bool(_) => "a bool".into(),
        Value::Int(_) | Value::BigInt(_) => "an int".into(),
        Value::Float(f) => format!("the float {f}"),
        Value::Str(_) => "a string".into(),
        Value::Bytes(_) => "bytes".into(),
        Value::Global(g) => format!("the global {g:?}"),
        Value::Obj(_) => "an object".into(),
    }
}

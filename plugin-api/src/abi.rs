//! The C-ABI types that cross the plugin boundary.
//!
//! Everything here is `#[repr(C)]` plain data: pointers to bytes and `f32`s,
//! lengths, integers and `extern "C"` function pointers. No Rust type whose
//! layout depends on the compiler (`String`, `Vec`, `Tensor`, trait objects)
//! ever crosses. Memory is never freed on the other side: inputs are
//! borrowed for the duration of a call, and outputs are copied into the
//! host's memory through the [`Sink`] callbacks while the call runs.
//!
//! The layout of [`PluginDeclaration`] up to and including `manifest_dir` is
//! frozen for all API versions, so a host can always read a plugin's
//! fingerprint (and say how to rebuild it) before it trusts anything else.
//! Everything after it may change with [`API_VERSION`].

use std::ffi::c_void;

use super::adapter;
use super::api::Plugin;

/// The name of the one symbol every plugin exports.
pub const DECLARATION_SYMBOL: &str = "lsd_plugin_declaration";

/// The first bytes of every [`PluginDeclaration`]: tells a plugin's
/// declaration from an unrelated symbol that happens to share its name, and
/// which frozen prefix follows.
pub const MAGIC: [u8; 8] = *b"LSDPLUG2";

/// The magic of declarations built before the prefix held its own size and
/// the layout hash (API version 1). The host still reads their fingerprint,
/// field by field, to say what to rebuild.
pub const MAGIC_V1: [u8; 8] = *b"LSDPLUG\0";

/// The version of the boundary: the layout of everything after the frozen
/// prefix of [`PluginDeclaration`], of [`VTable`], [`FfiBatch`], [`Sink`],
/// and the meaning of the JSON texts. Bump it on any change to those.
///
/// Version 3: a tensor view ([`FfiTensor`]) says where its data lives (host
/// memory, or a CUDA device pointer with its ordinal and stream) and its
/// element type; the load context carries the process-wide precision.
///
/// Version 4: the loss value comes back as a one-element tensor view in
/// [`SLOT_VALUE`], on the device when the gradients are, instead of an
/// `f64` through a callback of its own (which made the plugin wait for its
/// device); [`Sink`] has no `value` callback. Plugins built for an older
/// version are refused.
pub const API_VERSION: u32 = 4;

/// `rustc --version` of the compiler that built this copy of lsd-plugin-api.
pub const RUSTC_VERSION: &str = env!("LSD_RUSTC_VERSION");

/// The version of this copy of lsd-plugin-api.
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The candle-core version this copy of lsd-plugin-api was built against, read
/// from the lock file by `core/build.rs` (`unknown` if it found none).
pub const CANDLE_VERSION: &str = env!("LSD_CANDLE_VERSION");

/// The lsd-plugin-api cargo features enabled in this build, comma-separated.
pub const FEATURES: &str = if cfg!(feature = "cuda") { "cuda" } else { "" };

/// A borrowed UTF-8 string: pointer and length, no terminator.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RStr {
    /// First byte.
    pub ptr: *const u8,
    /// Length in bytes.
    pub len: usize,
}

impl RStr {
    /// Borrows a `'static` string; usable in a `static` initialiser.
    pub const fn new(s: &'static str) -> Self {
        Self { ptr: s.as_ptr(), len: s.len() }
    }

    /// Borrows any string. The result must not outlive `s`.
    pub fn borrow(s: &str) -> Self {
        Self { ptr: s.as_ptr(), len: s.len() }
    }

    /// The text, with invalid UTF-8 replaced.
    ///
    /// # Safety
    /// `ptr` must point to `len` readable bytes that stay valid and
    /// unchanged for the duration of the call (or `len` must be 0).
    pub unsafe fn to_string_lossy(&self) -> String {
        if self.len == 0 || self.ptr.is_null() {
            return String::new();
        }
        // SAFETY: the caller guarantees `len` readable bytes at `ptr`.
        let bytes = unsafe { std::slice::from_raw_parts(self.ptr, self.len) };
        String::from_utf8_lossy(bytes).into_owned()
    }
}

/// The ABI fingerprint as it sits in a declaration. See
/// the host's `Fingerprint` (lsd-core) for the owned, comparable form.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct FfiFingerprint {
    /// [`API_VERSION`] of the plugin's lsd-plugin-api.
    pub api_version: u32,
    /// [`LAYOUT_HASH`] of the plugin's lsd-plugin-api: catches a change to the
    /// boundary's types that forgot to bump [`API_VERSION`].
    pub layout_hash: u64,
    /// [`RUSTC_VERSION`].
    pub rustc: RStr,
    /// [`SDK_VERSION`].
    pub sdk: RStr,
    /// [`CANDLE_VERSION`].
    pub candle: RStr,
    /// [`FEATURES`].
    pub features: RStr,
}

impl FfiFingerprint {
    /// The fingerprint of the copy of lsd-plugin-api this is compiled into. In a
    /// plugin, `export_plugin!` evaluates it in the plugin's crate, so it
    /// describes what the plugin was built with.
    pub const fn current() -> Self {
        Self {
            api_version: API_VERSION,
            layout_hash: LAYOUT_HASH,
            rustc: RStr::new(RUSTC_VERSION),
            sdk: RStr::new(SDK_VERSION),
            candle: RStr::new(CANDLE_VERSION),
            features: RStr::new(FEATURES),
        }
    }
}

/// Status codes of the [`VTable`] functions.
pub type Status = i32;
/// The call succeeded.
pub const STATUS_OK: Status = 0;
/// The call failed; the message was sent through [`Sink::text`].
pub const STATUS_ERROR: Status = 1;
/// The plugin panicked; the panic message was sent through [`Sink::text`].
pub const STATUS_PANIC: Status = 2;

/// What a [`Sink::tensor`] call carries: the loss value or a gradient.
pub type Slot = u32;
/// Gradient with respect to `x_edit`.
pub const SLOT_X_EDIT: Slot = 0;
/// Gradient with respect to `w`.
pub const SLOT_W: Slot = 1;
/// Gradient with respect to `u`.
pub const SLOT_U: Slot = 2;
/// Gradient with respect to the `index`-th feature map of `x_edit`.
pub const SLOT_FEATURE_EDIT: Slot = 3;
/// The loss value, a tensor of one element (any rank), `index` 0.
pub const SLOT_VALUE: Slot = 4;

/// What an [`FfiTensor`]'s `data` is.
pub type ViewKind = u32;
/// `data` is a host address.
pub const VIEW_HOST: ViewKind = 0;
/// `data` is a CUDA device pointer (`CUdeviceptr`) in the primary context
/// of device `ordinal`, written by work queued on `stream`.
pub const VIEW_DEVICE: ViewKind = 1;

/// Element type of an [`FfiTensor`].
pub type ViewDType = u32;
/// 32-bit floats, the only element type that crosses today.
pub const DTYPE_F32: ViewDType = 0;

/// A borrowed dense row-major tensor: in host memory, or on a CUDA device
/// (see [`crate::view`] for who decides which, and how each is copied).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct FfiTensor {
    /// [`VIEW_HOST`] or [`VIEW_DEVICE`].
    pub kind: ViewKind,
    /// [`DTYPE_F32`].
    pub dtype: ViewDType,
    /// The first element: a host address, or a `CUdeviceptr`.
    pub data: *const c_void,
    /// Number of elements (the product of `dims`).
    pub len: usize,
    /// The dimensions (always in host memory).
    pub dims: *const usize,
    /// Number of dimensions.
    pub rank: usize,
    /// The CUDA device ordinal of a device view; -1 for a host view.
    pub ordinal: i32,
    /// The `CUstream` whose queued work writes the data of a device view
    /// (the reader orders its copy after it); null for a host view.
    pub stream: *mut c_void,
}

impl FfiTensor {
    /// Borrows host `data` with shape `dims`. The result must not outlive
    /// either.
    pub fn borrow(data: &[f32], dims: &[usize]) -> Self {
        Self {
            kind: VIEW_HOST,
            dtype: DTYPE_F32,
            data: data.as_ptr().cast(),
            len: data.len(),
            dims: dims.as_ptr(),
            rank: dims.len(),
            ordinal: -1,
            stream: std::ptr::null_mut(),
        }
    }

    /// The dimensions.
    ///
    /// # Safety
    /// `dims` must point to `rank` readable `usize`s valid for `'a` (or
    /// `rank` must be 0).
    pub unsafe fn dims<'a>(&self) -> &'a [usize] {
        // SAFETY: forwarded to the caller.
        unsafe { slice(self.dims, self.rank) }
    }

    /// The elements and the dimensions of a host view; `None` for a device
    /// view or another element type.
    ///
    /// # Safety
    /// For a host view, `data` must point to `len` readable `f32`s and
    /// `dims` to `rank` readable `usize`s (either may dangle when its length
    /// is 0), valid for `'a`.
    pub unsafe fn parts<'a>(&self) -> Option<(&'a [f32], &'a [usize])> {
        if self.kind != VIEW_HOST || self.dtype != DTYPE_F32 {
            return None;
        }
        // SAFETY: forwarded to the caller.
        unsafe { Some((slice(self.data.cast::<f32>(), self.len), self.dims())) }
    }
}

/// A slice from a pointer and a length, accepting a null or dangling
/// pointer when the length is 0.
///
/// # Safety
/// When `len > 0`, `ptr` must point to `len` readable, initialised `T`s
/// valid for `'a`.
pub unsafe fn slice<'a, T>(ptr: *const T, len: usize) -> &'a [T] {
    if len == 0 || ptr.is_null() {
        &[]
    } else {
        // SAFETY: forwarded to the caller.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }
}

/// The batch as the host lends it to a plugin for one `evaluate` call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct FfiBatch {
    /// Original images `[N, 3, H, W]`.
    pub x: FfiTensor,
    /// Edited images `[N, 3, H, W]`.
    pub x_edit: FfiTensor,
    /// Latents `[N, L, D]`.
    pub w: FfiTensor,
    /// Directions `[K, L, D]`.
    pub u: FfiTensor,
    /// `α` per sample (`N` values).
    pub alpha: *const f32,
    /// Length of `alpha`.
    pub n_alpha: usize,
    /// Row of `u` that edited each sample (`N` values).
    pub direction: *const u32,
    /// Length of `direction`.
    pub n_direction: usize,
    /// The text prompt.
    pub prompt: RStr,
    /// 1 when the feature maps below are present, 0 otherwise.
    pub has_features: u32,
    /// Feature maps of `x`.
    pub features_x: *const FfiTensor,
    /// Length of `features_x`.
    pub n_features_x: usize,
    /// Feature maps of `x_edit`.
    pub features_edit: *const FfiTensor,
    /// Length of `features_edit`.
    pub n_features_edit: usize,
    /// 1 when `keys` holds one key per sample ([`super::EditBatch::keys`]).
    pub has_keys: u32,
    /// The samples' original keys.
    pub keys: *const u64,
    /// Length of `keys`.
    pub n_keys: usize,
}

/// Host callbacks through which a plugin returns everything it produces.
/// The plugin calls them only on the calling thread, before the call
/// returns; the host copies what it receives, so the plugin keeps ownership
/// of its memory and frees it itself.
#[repr(C)]
pub struct Sink {
    /// Opaque host state, passed back to each callback.
    pub ctx: *mut c_void,
    /// A text: a JSON answer, or the message of an error or panic.
    pub text: unsafe extern "C" fn(ctx: *mut c_void, text: RStr),
    /// The loss value ([`SLOT_VALUE`]) or a gradient, in `slot` (a
    /// `SLOT_*` constant) at `index`.
    pub tensor: unsafe extern "C" fn(ctx: *mut c_void, slot: Slot, index: u32, t: FfiTensor),
}

/// The plugin's functions. The host reads this only after the fingerprint
/// matched. `term` is the opaque handle `init` returned.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct VTable {
    /// Sends the parameter list as JSON (`Vec<ParamInfo>`) through `sink.text`.
    pub describe: unsafe extern "C" fn(sink: *const Sink) -> Status,
    /// Parses `params` (YAML) and `context` (JSON `InitContext`), builds the
    /// term, and stores its handle in `*term`.
    pub init: unsafe extern "C" fn(params: RStr, context: RStr, term: *mut *mut c_void, sink: *const Sink) -> Status,
    /// Sends what the term needs (JSON `Needs`) through `sink.text`.
    pub needs: unsafe extern "C" fn(term: *const c_void, sink: *const Sink) -> Status,
    /// Computes the loss and its gradients and sends them through `sink`.
    pub evaluate: unsafe extern "C" fn(term: *const c_void, batch: *const FfiBatch, sink: *const Sink) -> Status,
    /// Drops the term.
    pub drop_term: unsafe extern "C" fn(term: *mut c_void),
}

/// What `lsd_plugin_declaration` points to: a `static` in the plugin.
///
/// The host reads the frozen prefix field by field from raw memory (never
/// as a whole struct): it checks the pointer's alignment, then the magic,
/// then `size`, and only then the fingerprint; the rest of the struct is
/// read only once the fingerprint (API version and [`LAYOUT_HASH`]) and
/// `size` equal its own.
#[repr(C)]
pub struct PluginDeclaration {
    // ---- frozen prefix: never changes, whatever the API version ----
    /// Always [`MAGIC`].
    pub magic: [u8; 8],
    /// `size_of::<PluginDeclaration>()` in the plugin's build.
    pub size: u64,
    /// What the plugin was built with.
    pub fingerprint: FfiFingerprint,
    /// The plugin's cargo package name (for the rebuild command).
    pub package: RStr,
    /// The directory of the plugin's `Cargo.toml` when it was built.
    pub manifest_dir: RStr,
    // ---- read only after the fingerprint matched ----
    /// The plugin's name, as recipes refer to it.
    pub name: RStr,
    /// The plugin's version.
    pub version: RStr,
    /// One line on what the term does.
    pub description: RStr,
    /// The plugin's functions.
    pub vtable: VTable,
}

// SAFETY: a declaration is immutable and its pointers refer to `'static`
// strings and functions, so sharing it between threads is sound.
unsafe impl Sync for PluginDeclaration {}

impl PluginDeclaration {
    /// The declaration of plugin `T`, with the fingerprint of the lsd-plugin-api
    /// it is compiled with. [`crate::export_plugin!`] calls this in the plugin crate
    /// with that crate's `CARGO_PKG_NAME` and `CARGO_MANIFEST_DIR`.
    pub const fn new<T: Plugin>(package: &'static str, manifest_dir: &'static str) -> Self {
        Self {
            magic: MAGIC,
            size: std::mem::size_of::<PluginDeclaration>() as u64,
            fingerprint: FfiFingerprint::current(),
            package: RStr::new(package),
            manifest_dir: RStr::new(manifest_dir),
            name: RStr::new(T::NAME),
            version: RStr::new(T::VERSION),
            description: RStr::new(T::DESCRIPTION),
            vtable: VTable {
                describe: adapter::describe::<T>,
                init: adapter::init::<T>,
                needs: adapter::needs::<T>,
                evaluate: adapter::evaluate::<T>,
                drop_term: adapter::drop_term::<T>,
            },
        }
    }
}

/// Bytes of the frozen prefix of [`PluginDeclaration`] (through
/// `manifest_dir`): what a host reads before it trusts anything else.
pub const FROZEN_PREFIX_SIZE: usize =
    std::mem::offset_of!(PluginDeclaration, manifest_dir) + std::mem::size_of::<RStr>();

/// FNV-1a, usable in `const` context, for [`LAYOUT_HASH`].
struct Fnv(u64);

impl Fnv {
    const fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    const fn bytes(self, b: &[u8]) -> Self {
        let mut h = self.0;
        let mut i = 0;
        while i < b.len() {
            h ^= b[i] as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
            i += 1;
        }
        // A separator, so that ("ab", "c") and ("a", "bc") differ.
        Self((h ^ 0xff).wrapping_mul(0x0000_0100_0000_01b3))
    }

    const fn num(self, n: usize) -> Self {
        let b = (n as u64).to_le_bytes();
        self.bytes(&b)
    }
}

/// Hashes each listed type's name, size and alignment, and each field's
/// name, type (as written) and offset; and checks at compile time that the
/// written types are the fields' real types.
macro_rules! layout_hash {
    ($($ty:ident { $($field:ident: $fty:ty),* $(,)? })*) => {{
        // Never called: only type-checked, so a type written here that is
        // not the field's real type is a compile error.
        $( let _ = |v: &$ty| { $( let _: &$fty = &v.$field; )* }; )*
        let h = Fnv::new();
        $(
            let h = h.bytes(stringify!($ty).as_bytes())
                .num(std::mem::size_of::<$ty>())
                .num(std::mem::align_of::<$ty>());
            $(
                let h = h.bytes(stringify!($field).as_bytes())
                    .bytes(stringify!($fty).as_bytes())
                    .num(std::mem::offset_of!($ty, $field));
            )*
        )*
        h.0
    }};
}

/// A hash of the layout of every type that crosses the boundary (sizes,
/// alignments, field names, types and offsets). It is part of the
/// fingerprint, so a plugin built from a different layout is refused even
/// when [`API_VERSION`] was not bumped. List every field of a new type or
/// field here (a field left out still changes its struct's size).
pub const LAYOUT_HASH: u64 = layout_hash! {
    RStr { ptr: *const u8, len: usize }
    FfiFingerprint {
        api_version: u32,
        layout_hash: u64,
        rustc: RStr,
        sdk: RStr,
        candle: RStr,
        features: RStr,
    }
    FfiTensor {
        kind: ViewKind,
        dtype: ViewDType,
        data: *const c_void,
        len: usize,
        dims: *const usize,
        rank: usize,
        ordinal: i32,
        stream: *mut c_void,
    }
    FfiBatch {
        x: FfiTensor,
        x_edit: FfiTensor,
        w: FfiTensor,
        u: FfiTensor,
        alpha: *const f32,
        n_alpha: usize,
        direction: *const u32,
        n_direction: usize,
        prompt: RStr,
        has_features: u32,
        features_x: *const FfiTensor,
        n_features_x: usize,
        features_edit: *const FfiTensor,
        n_features_edit: usize,
        has_keys: u32,
        keys: *const u64,
        n_keys: usize,
    }
    Sink {
        ctx: *mut c_void,
        text: unsafe extern "C" fn(ctx: *mut c_void, text: RStr),
        tensor: unsafe extern "C" fn(ctx: *mut c_void, slot: Slot, index: u32, t: FfiTensor),
    }
    VTable {
        describe: unsafe extern "C" fn(sink: *const Sink) -> Status,
        init: unsafe extern "C" fn(params: RStr, context: RStr, term: *mut *mut c_void, sink: *const Sink) -> Status,
        needs: unsafe extern "C" fn(term: *const c_void, sink: *const Sink) -> Status,
        evaluate: unsafe extern "C" fn(term: *const c_void, batch: *const FfiBatch, sink: *const Sink) -> Status,
        drop_term: unsafe extern "C" fn(term: *mut c_void),
    }
    PluginDeclaration {
        magic: [u8; 8],
        size: u64,
        fingerprint: FfiFingerprint,
        package: RStr,
        manifest_dir: RStr,
        name: RStr,
        version: RStr,
        description: RStr,
        vtable: VTable,
    }
};

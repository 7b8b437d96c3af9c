//! The host side of the boundary: opening a plugin library, checking its
//! fingerprint, building terms and evaluating them.

// Code on a training step's path: no host reads but the step's one
// (`readback`, clippy.toml).
#![deny(clippy::disallowed_methods)]

use std::ffi::c_void;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{Device, Tensor};
use libloading::Library;

use super::abi::{
    FfiBatch, FfiFingerprint, FfiTensor, PluginDeclaration, RStr, Sink, Slot, Status, VTable, API_VERSION,
    CANDLE_VERSION, DECLARATION_SYMBOL, FEATURES, FROZEN_PREFIX_SIZE, LAYOUT_HASH, MAGIC, MAGIC_V1, RUSTC_VERSION,
    SDK_VERSION, SLOT_FEATURE_EDIT, SLOT_U, SLOT_VALUE, SLOT_W, SLOT_X_EDIT, STATUS_OK, STATUS_PANIC,
};
use crate::{Error, Result};
use lsd_plugin_api::view::{crossing, receive, Side, Site, Staged};
use lsd_plugin_api::{EditBatch, InitContext, Needs, ParamInfo, PluginInfo, TermOutput};

/// What a side of the boundary was built with. Host and plugin must agree
/// on every field.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Fingerprint {
    /// The plugin API version ([`API_VERSION`]).
    pub api_version: u32,
    /// The layout hash of the boundary's types ([`LAYOUT_HASH`]); 0 for a
    /// plugin built before it existed.
    pub layout_hash: u64,
    /// `rustc --version`.
    pub rustc: String,
    /// The lsd-plugin-api version.
    pub sdk: String,
    /// The candle-core version.
    pub candle: String,
    /// Enabled lsd-core features, comma-separated.
    pub features: String,
}

impl Fingerprint {
    /// The host's own fingerprint.
    pub fn host() -> Self {
        Self {
            api_version: API_VERSION,
            layout_hash: LAYOUT_HASH,
            rustc: RUSTC_VERSION.into(),
            sdk: SDK_VERSION.into(),
            candle: CANDLE_VERSION.into(),
            features: FEATURES.into(),
        }
    }

    fn layout(&self) -> String {
        if self.layout_hash == 0 {
            "(none)".into()
        } else {
            format!("{:016x}", self.layout_hash)
        }
    }

    /// `(field, self, other)` for each field, in display order.
    pub fn fields(&self, other: &Self) -> Vec<(&'static str, String, String)> {
        let show = |s: &str| {
            if s.is_empty() {
                "(none)".to_string()
            } else {
                s.to_string()
            }
        };
        vec![
            ("api", self.api_version.to_string(), other.api_version.to_string()),
            ("layout", self.layout(), other.layout()),
            ("rustc", self.rustc.clone(), other.rustc.clone()),
            ("lsd-plugin-api", self.sdk.clone(), other.sdk.clone()),
            ("candle", self.candle.clone(), other.candle.clone()),
            ("features", show(&self.features), show(&other.features)),
        ]
    }

    /// Whether `self` (the host) accepts a plugin with fingerprint `other`.
    /// An `unknown` candle version on either side never matches.
    pub fn accepts(&self, other: &Self) -> bool {
        self == other && self.candle != "unknown"
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let features = if self.features.is_empty() { "no features" } else { &self.features };
        write!(
            f,
            "api {} (layout {}), {}, lsd-plugin-api {}, candle {}, {}",
            self.api_version,
            self.layout(),
            self.rustc,
            self.sdk,
            self.candle,
            features
        )
    }
}

/// The command that rebuilds a plugin so that its fingerprint matches the
/// host's.
pub(crate) fn rebuild_command(host: &Fingerprint, plugin: &Fingerprint, manifest_dir: &str) -> String {
    // `rustc 1.85.0 (hash date)` → `+1.85.0`; nightlies and betas are named
    // differently by rustup, so for them we say which compiler in words.
    let release = host.rustc.split_whitespace().nth(1).unwrap_or("");
    let toolchain = if !release.is_empty() && release.chars().all(|c| c.is_ascii_digit() || c == '.') {
        format!(" +{release}")
    } else {
        String::new()
    };
    let profile = if cfg!(debug_assertions) { "" } else { " --release" };
    let features = if host.features.is_empty() { String::new() } else { format!(" --features {}", host.features) };
    let mut cmd = format!(
        "cargo{toolchain} build{profile}{features} --manifest-path {}",
        Path::new(manifest_dir).join("Cargo.toml").display()
    );
    if toolchain.is_empty() && host.rustc != plugin.rustc {
        cmd.push_str(&format!("   (with the compiler that reports '{}')", host.rustc));
    }
    if host.sdk != plugin.sdk {
        cmd.push_str(&format!("\n    after changing its lsd-plugin-api dependency to version {}", host.sdk));
    }
    cmd
}

/// The library and its checked declaration, shared by everything built
/// from it; the library is unloaded only when the last holder drops.
struct Shared {
    path: PathBuf,
    /// The checked declaration, a `static` inside `library`.
    decl: *const PluginDeclaration,
    /// Last field, so it is dropped last. Never read: holding it is what
    /// keeps the code and the declaration alive.
    #[allow(dead_code)]
    library: Library,
}

// SAFETY: `decl` points to an immutable `static` in the library, which stays
// loaded while `Shared` lives; `Library` is Send + Sync.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl Shared {
    fn vtable(&self) -> &VTable {
        // SAFETY: `decl` was checked in `open` (alignment, magic, size and
        // fingerprint, layout hash included, equal to this build's; the
        // functions non-null) and the library is loaded.
        unsafe { &(*self.decl).vtable }
    }
}

/// A plugin library whose fingerprint matched the host's.
#[derive(Clone)]
pub struct PluginLibrary {
    shared: Arc<Shared>,
    info: PluginInfo,
    fingerprint: Fingerprint,
    package: String,
}

impl fmt::Debug for PluginLibrary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginLibrary").field("path", &self.shared.path).field("info", &self.info).finish()
    }
}

/// Loads a library so that it is never unmapped, even after the last
/// `Library` handle is dropped (`RTLD_NODELETE` / module pinning).
///
/// A plugin links its own copy of Candle, whose CPU backend starts worker
/// threads (rayon, gemm) that live as long as the process and run the
/// plugin's code. Unmapping that code under them would crash at the next
/// wake-up, so a plugin's code stays mapped; the `Arc<Library>` lifetime
/// rule still holds everywhere above this function.
///
/// # Safety
/// Loading a library runs its initialisers: `path` must be trusted code.
unsafe fn load_pinned(path: &Path) -> std::result::Result<Library, libloading::Error> {
    #[cfg(unix)]
    {
        use libloading::os::unix::{Library as UnixLibrary, RTLD_LOCAL, RTLD_NOW};
        #[cfg(any(target_os = "linux", target_os = "android"))]
        const RTLD_NODELETE: std::ffi::c_int = 0x1000;
        #[cfg(any(target_os = "macos", target_os = "ios"))]
        const RTLD_NODELETE: std::ffi::c_int = 0x80;
        #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "macos", target_os = "ios")))]
        const RTLD_NODELETE: std::ffi::c_int = 0;
        // SAFETY: forwarded to the caller.
        let lib = unsafe { UnixLibrary::open(Some(path), RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE)? };
        Ok(lib.into())
    }
    #[cfg(windows)]
    {
        // SAFETY: forwarded to the caller.
        let lib = unsafe { libloading::os::windows::Library::new(path)? };
        lib.pin()?;
        Ok(lib.into())
    }
}

/// Reads bytes at addresses: the process's own memory when a library is
/// opened, a byte buffer standing in for it in tests and fuzzing.
pub(crate) trait Memory {
    /// Copies the `out.len()` bytes at `addr` into `out`; false when they
    /// cannot be read.
    fn read(&self, addr: usize, out: &mut [u8]) -> bool;
}

/// The memory of this process.
struct ProcessMemory(());

impl ProcessMemory {
    /// # Safety
    /// Every non-null address read through it must be readable for the
    /// length read: it reads a plugin declaration inside a loaded library,
    /// and the strings it points to, after the checks of [`read_head`].
    unsafe fn new() -> Self {
        Self(())
    }
}

impl Memory for ProcessMemory {
    fn read(&self, addr: usize, out: &mut [u8]) -> bool {
        if addr == 0 || addr.checked_add(out.len()).is_none() {
            return false;
        }
        // SAFETY: the contract of `ProcessMemory::new`; byte copies have no
        // alignment requirement.
        unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, out.as_mut_ptr(), out.len()) };
        true
    }
}

/// A byte buffer as memory: `bytes[0]` sits at address `base`. Addresses
/// outside it are unreadable.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BufferMemory<'a> {
    /// The address of `bytes[0]`.
    pub base: usize,
    /// The contents.
    pub bytes: &'a [u8],
}

impl Memory for BufferMemory<'_> {
    fn read(&self, addr: usize, out: &mut [u8]) -> bool {
        let Some(at) = addr.checked_sub(self.base) else { return false };
        match at.checked_add(out.len()).and_then(|end| self.bytes.get(at..end)) {
            Some(src) => {
                out.copy_from_slice(src);
                true
            }
            None => false,
        }
    }
}

/// The longest string a declaration may point to (names, versions, paths).
const MAX_DECL_STR: usize = 64 << 10;
/// The largest declaration size accepted before the sizes are compared.
const MAX_DECL_SIZE: u64 = 64 << 10;

/// What the frozen prefix of a declaration says.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DeclHead {
    /// `size_of::<PluginDeclaration>()` in the plugin's build (the size of
    /// the version-1 prefix for a version-1 plugin).
    pub size: u64,
    /// What the plugin was built with.
    pub fingerprint: Fingerprint,
    /// Its cargo package.
    pub package: String,
    /// Its manifest directory.
    pub manifest_dir: String,
}

fn read_array<const N: usize>(mem: &dyn Memory, addr: usize, what: &str) -> std::result::Result<[u8; N], String> {
    let mut b = [0u8; N];
    if mem.read(addr, &mut b) {
        Ok(b)
    } else {
        Err(format!("cannot read the declaration's {what} at {addr:#x}"))
    }
}

fn read_usize(mem: &dyn Memory, addr: usize, what: &str) -> std::result::Result<usize, String> {
    read_array::<{ std::mem::size_of::<usize>() }>(mem, addr, what).map(usize::from_ne_bytes)
}

/// An [`RStr`] at `addr`, read field by field; its length is bounded before
/// its bytes are read.
fn read_rstr(mem: &dyn Memory, addr: usize, what: &str) -> std::result::Result<String, String> {
    let ptr = read_usize(mem, addr + std::mem::offset_of!(RStr, ptr), what)?;
    let len = read_usize(mem, addr + std::mem::offset_of!(RStr, len), what)?;
    if len == 0 {
        return Ok(String::new());
    }
    if len > MAX_DECL_STR {
        return Err(format!("the declaration's {what} claims {len} bytes (at most {MAX_DECL_STR})"));
    }
    if ptr == 0 {
        return Err(format!("the declaration's {what} is a null pointer with length {len}"));
    }
    let mut bytes = vec![0u8; len];
    if !mem.read(ptr, &mut bytes) {
        return Err(format!("cannot read the declaration's {what} at {ptr:#x}"));
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The prefix of a version-1 declaration (magic [`MAGIC_V1`]), only to
/// read its fingerprint for the mismatch message.
#[repr(C)]
struct V1Prefix {
    magic: [u8; 8],
    fingerprint: V1Fingerprint,
    package: RStr,
    manifest_dir: RStr,
}

#[repr(C)]
struct V1Fingerprint {
    api_version: u32,
    rustc: RStr,
    lsd_core: RStr,
    candle: RStr,
    features: RStr,
}

/// Reads the frozen prefix of the declaration at `addr`, checking, in
/// order: the address (non-null, aligned), the magic, the declared size
/// (at least the prefix), and each string's length before its bytes.
/// Nothing is read as a whole struct, and nothing past the prefix.
pub(crate) fn read_head(mem: &dyn Memory, addr: usize) -> std::result::Result<DeclHead, String> {
    use std::mem::{align_of, offset_of};
    if addr == 0 {
        return Err(format!("`{DECLARATION_SYMBOL}` returned a null pointer"));
    }
    let align = align_of::<PluginDeclaration>();
    if !addr.is_multiple_of(align) {
        return Err(format!(
            "`{DECLARATION_SYMBOL}` returned {addr:#x}, which is not aligned to {align} bytes: \
             not an lsd-tui plugin declaration"
        ));
    }
    let magic = read_array::<8>(mem, addr, "magic")?;
    if magic == MAGIC_V1 {
        let f = addr + offset_of!(V1Prefix, fingerprint);
        let fingerprint = Fingerprint {
            api_version: u32::from_ne_bytes(read_array(
                mem,
                f + offset_of!(V1Fingerprint, api_version),
                "api version",
            )?),
            layout_hash: 0,
            rustc: read_rstr(mem, f + offset_of!(V1Fingerprint, rustc), "rustc version")?,
            sdk: read_rstr(mem, f + offset_of!(V1Fingerprint, lsd_core), "lsd-core version")?,
            candle: read_rstr(mem, f + offset_of!(V1Fingerprint, candle), "candle version")?,
            features: read_rstr(mem, f + offset_of!(V1Fingerprint, features), "features")?,
        };
        return Ok(DeclHead {
            size: std::mem::size_of::<V1Prefix>() as u64,
            fingerprint,
            package: read_rstr(mem, addr + offset_of!(V1Prefix, package), "package")?,
            manifest_dir: read_rstr(mem, addr + offset_of!(V1Prefix, manifest_dir), "manifest dir")?,
        });
    }
    if magic != MAGIC {
        return Err(format!("`{DECLARATION_SYMBOL}` does not point to an lsd-tui plugin declaration"));
    }
    let size = u64::from_ne_bytes(read_array(mem, addr + offset_of!(PluginDeclaration, size), "size")?);
    if size < FROZEN_PREFIX_SIZE as u64 || size > MAX_DECL_SIZE {
        return Err(format!(
            "the declaration says it is {size} bytes long; its fixed part alone is {FROZEN_PREFIX_SIZE}: \
             not a valid lsd-tui plugin declaration"
        ));
    }
    let f = addr + offset_of!(PluginDeclaration, fingerprint);
    let fingerprint = Fingerprint {
        api_version: u32::from_ne_bytes(read_array(mem, f + offset_of!(FfiFingerprint, api_version), "api version")?),
        layout_hash: u64::from_ne_bytes(read_array(mem, f + offset_of!(FfiFingerprint, layout_hash), "layout hash")?),
        rustc: read_rstr(mem, f + offset_of!(FfiFingerprint, rustc), "rustc version")?,
        sdk: read_rstr(mem, f + offset_of!(FfiFingerprint, sdk), "lsd-plugin-api version")?,
        candle: read_rstr(mem, f + offset_of!(FfiFingerprint, candle), "candle version")?,
        features: read_rstr(mem, f + offset_of!(FfiFingerprint, features), "features")?,
    };
    Ok(DeclHead {
        size,
        fingerprint,
        package: read_rstr(mem, addr + offset_of!(PluginDeclaration, package), "package")?,
        manifest_dir: read_rstr(mem, addr + offset_of!(PluginDeclaration, manifest_dir), "manifest dir")?,
    })
}

/// After the fingerprint matched: checks that the declaration has this
/// build's size and non-null functions, and reads name, version and
/// description.
pub(crate) fn read_rest(
    mem: &dyn Memory,
    addr: usize,
    head: &DeclHead,
) -> std::result::Result<(String, String, String), String> {
    use std::mem::{offset_of, size_of};
    let ours = size_of::<PluginDeclaration>() as u64;
    if head.size != ours {
        return Err(format!(
            "the declaration is {} bytes, this host's is {ours}: the plugin was built from a \
             different lsd-core; rebuild it against this one",
            head.size
        ));
    }
    let v = addr + offset_of!(PluginDeclaration, vtable);
    for (what, at) in [
        ("describe", offset_of!(VTable, describe)),
        ("init", offset_of!(VTable, init)),
        ("needs", offset_of!(VTable, needs)),
        ("evaluate", offset_of!(VTable, evaluate)),
        ("drop_term", offset_of!(VTable, drop_term)),
    ] {
        if read_usize(mem, v + at, what)? == 0 {
            return Err(format!("the declaration's `{what}` function is a null pointer"));
        }
    }
    Ok((
        read_rstr(mem, addr + offset_of!(PluginDeclaration, name), "name")?,
        read_rstr(mem, addr + offset_of!(PluginDeclaration, version), "version")?,
        read_rstr(mem, addr + offset_of!(PluginDeclaration, description), "description")?,
    ))
}

/// The bytes of a declaration placed at address `base`, its strings right
/// after it and its functions fake non-null pointers: what the reader's
/// tests and the declaration fuzz target start from.
pub(crate) fn declaration_image(base: usize, fingerprint: &Fingerprint, size: u64) -> Vec<u8> {
    use std::mem::{offset_of, size_of};
    let decl = size_of::<PluginDeclaration>();
    let mut img = vec![0u8; decl];
    let put = |img: &mut Vec<u8>, at: usize, bytes: &[u8]| img[at..at + bytes.len()].copy_from_slice(bytes);
    let rstr = |img: &mut Vec<u8>, at: usize, text: &str| {
        let ptr = base + img.len();
        img.extend_from_slice(text.as_bytes());
        let (p, l) = (ptr.to_ne_bytes(), text.len().to_ne_bytes());
        img[at + offset_of!(RStr, ptr)..][..p.len()].copy_from_slice(&p);
        img[at + offset_of!(RStr, len)..][..l.len()].copy_from_slice(&l);
    };
    put(&mut img, offset_of!(PluginDeclaration, magic), &MAGIC);
    put(&mut img, offset_of!(PluginDeclaration, size), &size.to_ne_bytes());
    let f = offset_of!(PluginDeclaration, fingerprint);
    put(&mut img, f + offset_of!(FfiFingerprint, api_version), &fingerprint.api_version.to_ne_bytes());
    put(&mut img, f + offset_of!(FfiFingerprint, layout_hash), &fingerprint.layout_hash.to_ne_bytes());
    rstr(&mut img, f + offset_of!(FfiFingerprint, rustc), &fingerprint.rustc);
    rstr(&mut img, f + offset_of!(FfiFingerprint, sdk), &fingerprint.sdk);
    rstr(&mut img, f + offset_of!(FfiFingerprint, candle), &fingerprint.candle);
    rstr(&mut img, f + offset_of!(FfiFingerprint, features), &fingerprint.features);
    rstr(&mut img, offset_of!(PluginDeclaration, package), "lsd-plugin-image");
    rstr(&mut img, offset_of!(PluginDeclaration, manifest_dir), "/src/image");
    rstr(&mut img, offset_of!(PluginDeclaration, name), "image");
    rstr(&mut img, offset_of!(PluginDeclaration, version), "0.0.1");
    rstr(&mut img, offset_of!(PluginDeclaration, description), "a declaration in a buffer");
    let v = offset_of!(PluginDeclaration, vtable);
    for at in (v..v + size_of::<VTable>()).step_by(size_of::<usize>()) {
        put(&mut img, at, &1usize.to_ne_bytes());
    }
    img
}

/// Refuses a declaration whose fingerprint differs from the host's, with
/// both side by side and the command that rebuilds the plugin.
pub(crate) fn check_fingerprint(path: &Path, head: &DeclHead) -> Result<()> {
    let host = Fingerprint::host();
    if host.accepts(&head.fingerprint) {
        return Ok(());
    }
    let rows = host.fields(&head.fingerprint).into_iter().map(|(name, h, p)| [name.to_string(), h, p]).collect();
    Err(Error::PluginMismatch {
        path: path.to_path_buf(),
        package: head.package.clone(),
        fields: rows,
        rebuild: rebuild_command(&host, &head.fingerprint, &head.manifest_dir),
    })
}

impl PluginLibrary {
    /// Opens the plugin library at `path` and checks it.
    ///
    /// In order: the file must exist; it must load; it must export
    /// `lsd_plugin_declaration`; the declaration must start with the magic
    /// bytes; its fingerprint must equal the host's. Only then is any other
    /// function of the plugin called (`describe`, for the parameter list).
    ///
    /// Loading runs the library's initialisers, as any dynamic library does:
    /// only open files you trust.
    ///
    /// A relative path is taken relative to the current directory, also a
    /// bare file name: given a name without a slash, the dynamic loader
    /// would search its own path (`LD_LIBRARY_PATH`, the system folders)
    /// instead, and load another file than the one checked here, or none.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let given = path.as_ref();
        let path = std::path::absolute(given).map_err(|e| Error::PluginLoad {
            path: given.to_path_buf(),
            reason: format!("cannot make the path absolute: {e}"),
        })?;
        let path = path.as_path();
        let fail = |reason: String| Error::PluginLoad { path: path.to_path_buf(), reason };
        if !path.exists() {
            return Err(fail("no such file; check the path, or run `lsd-tui plugins` to see what was found".into()));
        }
        // SAFETY: see the doc comment: the user chose to load this file.
        let library =
            unsafe { load_pinned(path) }.map_err(|e| fail(format!("cannot load it as a dynamic library: {e}")))?;
        // SAFETY: the symbol's type is the one `export_plugin!` defines; a
        // library that uses the name for something else is caught by the
        // checks of `read_head` (for a data symbol, reading its first bytes
        // is the risk we take; for a function of another signature, the
        // call is).
        let decl = unsafe {
            let get = library
                .get::<extern "C" fn() -> *const PluginDeclaration>(DECLARATION_SYMBOL.as_bytes())
                .map_err(|_| {
                    fail(format!(
                        "not an lsd-tui plugin: it exports no `{DECLARATION_SYMBOL}` symbol \
                         (a plugin ends with `lsd_plugin_api::export_plugin!(YourTerm);`)"
                    ))
                })?;
            get()
        };
        // SAFETY: `decl` came from the library we just loaded, which stays
        // loaded while `mem` is used; `read_head` checks alignment, magic and
        // size before it reads further, and bounds every string it follows.
        let mem = unsafe { ProcessMemory::new() };
        let head = read_head(&mem, decl as usize).map_err(fail)?;
        check_fingerprint(path, &head)?;
        let DeclHead { fingerprint, package, .. } = head.clone();
        let (name, version, description) = read_rest(&mem, decl as usize, &head).map_err(fail)?;
        let shared = Arc::new(Shared { path: path.to_path_buf(), decl, library });
        let mut lib =
            Self { shared, info: PluginInfo { name, version, description, params: Vec::new() }, fingerprint, package };
        let describe = lib.shared.vtable().describe;
        // SAFETY: the sink is valid for the call.
        let json = lib.call("describe", |sink| unsafe { describe(sink) })?.text;
        lib.info.params = serde_json::from_str::<Vec<ParamInfo>>(&json)
            .map_err(|e| lib.call_error("describe", format!("bad parameter list: {e}"), false))?;
        Ok(lib)
    }

    /// Where the library was loaded from.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Name, version, description and parameters.
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// The plugin's fingerprint (equal to the host's).
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    /// The plugin's cargo package name.
    pub fn package(&self) -> &str {
        &self.package
    }

    /// Builds a term from YAML parameters (empty for all defaults). The
    /// context's precision is replaced by the process-wide one
    /// ([`crate::ops::precision`]), which every term is told.
    pub fn instantiate(&self, params_yaml: &str, context: &InitContext) -> Result<LoadedTerm> {
        let context_device = context.device.clone();
        // The precision is process-wide: every term is told the host's.
        let context = InitContext { precision: crate::ops::precision().name().into(), ..context.clone() };
        let context = serde_json::to_string(&context)
            .map_err(|e| Error::Config(format!("cannot encode the plugin context: {e}")))?;
        let init = self.shared.vtable().init;
        let mut handle: *mut c_void = std::ptr::null_mut();
        let out = &mut handle as *mut *mut c_void;
        // SAFETY: the strings and `out` outlive the call; the sink is valid.
        self.call("init", |sink| unsafe { init(RStr::borrow(params_yaml), RStr::borrow(&context), out, sink) })?;
        if handle.is_null() {
            return Err(self.call_error("init", "returned no term".into(), false));
        }
        // From here on the handle is owned by `LoadedTerm`, whose Drop frees it.
        let mut term = LoadedTerm {
            shared: self.shared.clone(),
            handle,
            name: self.info.name.clone(),
            needs: Needs::default(),
            side: Side {
                site: Site::named(&context_device),
                cuda: self.fingerprint.features.split(',').any(|f| f == "cuda"),
            },
        };
        let needs = self.shared.vtable().needs;
        // SAFETY: the handle is live; the sink is valid for the call.
        let json = self.call("needs", |sink| unsafe { needs(handle, sink) })?.text;
        term.needs =
            serde_json::from_str(&json).map_err(|e| self.call_error("needs", format!("bad answer: {e}"), false))?;
        Ok(term)
    }

    fn call_error(&self, call: &'static str, reason: String, panicked: bool) -> Error {
        Error::PluginCall { plugin: self.info.name.clone(), call, reason, panicked }
    }

    fn call(&self, call: &'static str, f: impl FnOnce(*const Sink) -> Status) -> Result<Collected> {
        call_plugin(&self.info.name, call, &Device::Cpu, f)
    }
}

/// Everything a plugin sent back during one call.
struct Collected {
    text: String,
    /// The device the host's copies of the tensors go to.
    device: Device,
    tensors: Vec<(Slot, u32, Tensor)>,
    /// A tensor that could not be received, and why.
    bad_tensor: Option<String>,
}

unsafe extern "C" fn sink_text(ctx: *mut c_void, text: RStr) {
    // The callbacks must not unwind into the plugin; nothing here panics
    // short of allocation failure (which aborts), but catch to be sure.
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: `ctx` is the `Mutex<Collected>` of `call_plugin`, alive for
        // the call; `text` is valid for this callback.
        let (c, t) = unsafe { (&*ctx.cast::<Mutex<Collected>>(), text.to_string_lossy()) };
        if let Ok(mut c) = c.lock() {
            c.text.push_str(&t);
        }
    });
}

unsafe extern "C" fn sink_tensor(ctx: *mut c_void, slot: Slot, index: u32, t: FfiTensor) {
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: as in `sink_text`.
        let c = unsafe { &*ctx.cast::<Mutex<Collected>>() };
        if let Ok(mut c) = c.lock() {
            // SAFETY: `t` is valid for this callback, and is copied (to host
            // memory, or device to device) before it returns.
            match unsafe { receive(&t, &c.device) } {
                Ok(tensor) => c.tensors.push((slot, index, tensor)),
                Err(e) => c.bad_tensor = Some(format!("sent an unusable tensor {slot}/{index}: {e}")),
            }
        }
    });
}

/// Calls into a plugin with a fresh sink and turns its status into a result.
fn call_plugin(
    plugin: &str,
    call: &'static str,
    device: &Device,
    f: impl FnOnce(*const Sink) -> Status,
) -> Result<Collected> {
    let collected =
        Mutex::new(Collected { text: String::new(), device: device.clone(), tensors: Vec::new(), bad_tensor: None });
    let sink =
        Sink { ctx: (&collected as *const Mutex<Collected>).cast_mut().cast(), text: sink_text, tensor: sink_tensor };
    let status = f(&sink);
    let collected = collected.into_inner().unwrap_or_else(|p| p.into_inner());
    if status == STATUS_OK {
        return Ok(collected);
    }
    let reason = if collected.text.is_empty() { "no message".into() } else { collected.text };
    Err(Error::PluginCall { plugin: plugin.to_string(), call, reason, panicked: status == STATUS_PANIC })
}

/// A loss term living in a plugin. It keeps its library loaded.
pub struct LoadedTerm {
    shared: Arc<Shared>,
    handle: *mut c_void,
    name: String,
    needs: Needs,
    /// Where the plugin computes (the device it was told) and whether it
    /// was built with CUDA: decides how tensors cross ([`crossing`]).
    side: Side,
}

// SAFETY: the handle is a `Box<Hosted<T>>` with `T: LossTerm: Send + Sync`,
// and the adapter only takes `&` to it in `needs`/`evaluate`.
unsafe impl Send for LoadedTerm {}
// SAFETY: as above.
unsafe impl Sync for LoadedTerm {}

impl fmt::Debug for LoadedTerm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedTerm")
            .field("name", &self.name)
            .field("path", &self.shared.path)
            .field("needs", &self.needs)
            .finish()
    }
}

impl Drop for LoadedTerm {
    fn drop(&mut self) {
        let drop_term = self.shared.vtable().drop_term;
        // SAFETY: the handle came from this library's `init` and is dropped
        // once; the library is still loaded (we hold `shared`).
        unsafe { drop_term(self.handle) };
    }
}

impl LoadedTerm {
    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the term asked for when it was loaded.
    pub fn needs(&self) -> Needs {
        self.needs
    }

    /// The library file the term came from.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Evaluates the term on the host's batch: the inputs are lent as `f32`
    /// views — device pointers when host and plugin compute on the same CUDA
    /// device, host copies otherwise ([`crossing`]) — the plugin computes the
    /// loss and its gradients in its own graph, and the gradients come back
    /// as new host tensors on `x_edit`'s device, in the dtype of the input
    /// they belong to. Nothing is attached to the host's graph; chain with
    /// [`super::surrogate`].
    pub fn evaluate(&self, batch: &EditBatch) -> Result<TermOutput> {
        batch.validate()?;
        let device = batch.x_edit.device();
        let how = crossing(Side::this(device), self.side);
        let stage = |t: &Tensor| -> Result<Staged> { Ok(Staged::new(t, how)?) };
        let (x, x_edit, w, u) = (stage(&batch.x)?, stage(&batch.x_edit)?, stage(&batch.w)?, stage(&batch.u)?);
        let (fx, fe) = match (&batch.features, self.needs.features) {
            (Some(f), true) => (
                f.x.iter().map(stage).collect::<Result<Vec<_>>>()?,
                f.x_edit.iter().map(stage).collect::<Result<Vec<_>>>()?,
            ),
            (None, true) => {
                return Err(Error::Config(format!(
                    "loss term '{}' needs the generator's feature maps, but the batch has none",
                    self.name
                )))
            }
            (_, false) => (Vec::new(), Vec::new()),
        };
        let fx_views: Vec<FfiTensor> = fx.iter().map(Staged::view).collect();
        let fe_views: Vec<FfiTensor> = fe.iter().map(Staged::view).collect();
        let direction: Vec<u32> = batch.direction.iter().map(|&d| d as u32).collect();
        let ffi = FfiBatch {
            x: x.view(),
            x_edit: x_edit.view(),
            w: w.view(),
            u: u.view(),
            alpha: batch.alpha.as_ptr(),
            n_alpha: batch.alpha.len(),
            direction: direction.as_ptr(),
            n_direction: direction.len(),
            prompt: RStr::borrow(&batch.prompt),
            has_features: u32::from(self.needs.features),
            features_x: fx_views.as_ptr(),
            n_features_x: fx_views.len(),
            features_edit: fe_views.as_ptr(),
            n_features_edit: fe_views.len(),
            has_keys: u32::from(batch.keys.is_some()),
            keys: batch.keys.as_ref().map_or(std::ptr::null(), |k| k.as_ptr()),
            n_keys: batch.keys.as_ref().map_or(0, Vec::len),
        };
        let evaluate = self.shared.vtable().evaluate;
        let handle = self.handle.cast_const();
        // SAFETY: every buffer `ffi` points to lives until the end of this
        // function; the handle is live; the sink is valid for the call.
        let got = call_plugin(&self.name, "loss", device, |sink| unsafe { evaluate(handle, &ffi, sink) })?;
        term_output(&self.name, self.needs, batch, got)
    }
}

/// Checks what plugin `name` (which asked for `needs`) sent back from one
/// `loss` call on `batch`, and assembles it: the value, a one-element tensor
/// left where it arrived (unread), and each gradient in its input's dtype.
fn term_output(name: &str, needs: Needs, batch: &EditBatch, got: Collected) -> Result<TermOutput> {
    let bad = |reason: String| Error::PluginCall { plugin: name.to_string(), call: "loss", reason, panicked: false };
    if let Some(reason) = got.bad_tensor {
        return Err(bad(reason));
    }
    let n_features = if needs.features { batch.features.as_ref().map_or(0, |f| f.x_edit.len()) } else { 0 };
    let mut value = None;
    let (mut grad_x_edit, mut grad_w, mut grad_u) = (None, None, None);
    let mut grad_features_edit = vec![None; n_features];
    for (slot, index, t) in got.tensors {
        let (target, input, name) = match slot {
            SLOT_VALUE if index == 0 && t.elem_count() == 1 => {
                value = Some(t.reshape(())?);
                continue;
            }
            SLOT_VALUE => {
                return Err(bad(format!("sent a loss value {index} of shape {:?}, expected one element", t.dims())))
            }
            SLOT_X_EDIT => (&mut grad_x_edit, &batch.x_edit, "x_edit".to_string()),
            SLOT_W => (&mut grad_w, &batch.w, "w".to_string()),
            SLOT_U => (&mut grad_u, &batch.u, "u".to_string()),
            SLOT_FEATURE_EDIT if (index as usize) < n_features => {
                let maps = &batch.features.as_ref().expect("n_features > 0 implies features").x_edit;
                let j = index as usize;
                (&mut grad_features_edit[j], &maps[j], format!("features.x_edit[{j}]"))
            }
            _ => return Err(bad(format!("sent a gradient for unknown input {slot}/{index}"))),
        };
        if t.dims() != input.dims() {
            return Err(bad(format!("gradient of {name} has shape {:?}, the input has {:?}", t.dims(), input.dims())));
        }
        *target = Some(t.to_dtype(input.dtype())?);
    }
    let value = value.ok_or_else(|| bad("returned no loss value".into()))?;
    Ok(TermOutput { value, grad_x_edit, grad_w, grad_u, grad_features_edit })
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use std::cell::Cell;
    use std::mem::{offset_of, size_of};

    use super::*;

    const BASE: usize = 0x10_0000;

    /// A buffer memory that remembers the furthest byte read.
    struct Watched<'a> {
        mem: BufferMemory<'a>,
        furthest: Cell<usize>,
    }

    impl Memory for Watched<'_> {
        fn read(&self, addr: usize, out: &mut [u8]) -> bool {
            self.furthest.set(self.furthest.get().max(addr + out.len()));
            self.mem.read(addr, out)
        }
    }

    fn image() -> Vec<u8> {
        declaration_image(BASE, &Fingerprint::host(), size_of::<PluginDeclaration>() as u64)
    }

    fn head(bytes: &[u8], addr: usize) -> (std::result::Result<DeclHead, String>, usize) {
        let w = Watched { mem: BufferMemory { base: BASE, bytes }, furthest: Cell::new(0) };
        let r = read_head(&w, addr);
        (r, w.furthest.get())
    }

    #[test]
    fn a_good_declaration_reads_back() {
        let img = image();
        let (h, _) = head(&img, BASE);
        let h = h.expect("reads");
        assert_eq!(h.fingerprint, Fingerprint::host());
        assert_eq!(h.package, "lsd-plugin-image");
        let mem = BufferMemory { base: BASE, bytes: &img };
        let (name, version, _) = read_rest(&mem, BASE, &h).expect("the rest");
        assert_eq!((name.as_str(), version.as_str()), ("image", "0.0.1"));
    }

    /// Issue 15: the declaration was dereferenced as a whole struct before
    /// its magic was checked, with no alignment or size check.
    #[test]
    fn issue_15_alignment_magic_and_size_are_checked_before_anything_else() {
        let img = image();
        let mut shifted = vec![0u8; 1];
        shifted.extend_from_slice(&img);
        let (r, furthest) = head(&shifted, BASE + 1);
        assert!(r.expect_err("misaligned").contains("not aligned"));
        assert_eq!(furthest, 0, "nothing is read at a misaligned address");

        let mut bad = img.clone();
        bad[0] ^= 1;
        let (r, furthest) = head(&bad, BASE);
        assert!(r.expect_err("bad magic").contains("does not point to an lsd-tui plugin declaration"));
        assert_eq!(furthest, BASE + 8, "only the magic is read");

        let mut small = img.clone();
        let at = offset_of!(PluginDeclaration, size);
        small[at..at + 8].copy_from_slice(&16u64.to_ne_bytes());
        let (r, furthest) = head(&small, BASE);
        assert!(r.expect_err("too small").contains("16 bytes long"));
        assert_eq!(furthest, BASE + at + 8, "nothing past the size is read");

        // A declaration cut short by the end of the readable memory.
        let (r, _) = head(&img[..offset_of!(PluginDeclaration, fingerprint) + 4], BASE);
        assert!(r.expect_err("cut").contains("cannot read"));

        // A string that claims a huge length is refused before it is read.
        let mut long = img.clone();
        let at = offset_of!(PluginDeclaration, package) + offset_of!(RStr, len);
        long[at..at + size_of::<usize>()].copy_from_slice(&usize::MAX.to_ne_bytes());
        let (r, furthest) = head(&long, BASE);
        assert!(r.expect_err("long").contains("claims"));
        assert!(furthest < BASE + long.len());

        // A size that is not this build's is refused after the fingerprint.
        let mut other = img.clone();
        let at = offset_of!(PluginDeclaration, size);
        other[at..at + 8].copy_from_slice(&(size_of::<PluginDeclaration>() as u64 + 8).to_ne_bytes());
        let (h, _) = head(&other, BASE);
        let mem = BufferMemory { base: BASE, bytes: &other };
        let e = read_rest(&mem, BASE, &h.expect("the prefix reads")).expect_err("another size");
        assert!(e.contains("rebuild"), "{e}");
    }

    /// Issue 15: nothing in the fingerprint was tied to the struct layouts,
    /// so a layout change without an API-version bump was accepted.
    #[test]
    fn issue_15_a_layout_change_without_an_api_bump_is_refused() {
        let host = Fingerprint::host();
        assert_ne!(host.layout_hash, 0);
        let changed = Fingerprint { layout_hash: host.layout_hash ^ 1, ..host.clone() };
        let img = declaration_image(BASE, &changed, size_of::<PluginDeclaration>() as u64);
        let (h, _) = head(&img, BASE);
        let fp = h.expect("the prefix reads").fingerprint;
        assert_eq!(fp.api_version, host.api_version);
        assert!(!host.accepts(&fp));
        let rows = host.fields(&fp);
        assert!(rows.iter().any(|(f, h, p)| *f == "layout" && h != p), "{rows:?}");
    }

    /// A plugin built for API version 3 (its loss value sent as an `f64`
    /// through a callback of its own) is refused before any call, with both
    /// fingerprints and the rebuild command.
    #[test]
    fn an_api_3_plugin_is_refused_with_a_rebuild_command() {
        let host = Fingerprint::host();
        assert_eq!(host.api_version, 4);
        // What an API-3 build of this lsd-plugin-api declared: same prefix,
        // older version, and the layout hash of the older sink.
        let old = Fingerprint { api_version: 3, layout_hash: host.layout_hash ^ 0x5a5a, ..host.clone() };
        let img = declaration_image(BASE, &old, size_of::<PluginDeclaration>() as u64);
        let (h, _) = head(&img, BASE);
        let h = h.expect("the frozen prefix of an API-3 declaration reads");
        assert_eq!(h.fingerprint.api_version, 3);
        let err = check_fingerprint(Path::new("/p/liblsd_plugin_old.so"), &h).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::PluginMismatch { .. }), "{msg}");
        assert!(msg.contains("liblsd_plugin_old.so") && msg.contains("not loaded"), "{msg}");
        let api_row = msg.lines().find(|l| l.contains(" api ")).expect("an api row");
        assert!(api_row.contains('≠') && api_row.contains('4') && api_row.contains('3'), "{api_row}");
        assert!(msg.contains("rebuild it with") && msg.contains("cargo"), "{msg}");
        assert!(check_fingerprint(Path::new("/p/x.so"), &DeclHead { fingerprint: host, ..h }).is_ok());
    }

    /// A plugin built before this prefix (magic `LSDPLUG\0`) is read with
    /// its own layout, so the message can still say what to rebuild.
    #[test]
    fn a_version_1_declaration_is_reported_as_a_mismatch() {
        let mut img = vec![0u8; size_of::<V1Prefix>()];
        img[..8].copy_from_slice(&MAGIC_V1);
        let f = offset_of!(V1Prefix, fingerprint);
        img[f..f + 4].copy_from_slice(&1u32.to_ne_bytes());
        let (h, _) = head(&img, BASE);
        let h = h.expect("reads");
        assert_eq!((h.fingerprint.api_version, h.fingerprint.layout_hash), (1, 0));
        assert!(!Fingerprint::host().accepts(&h.fingerprint));
    }

    /// The value arrives as a one-element tensor and stays a tensor; a
    /// missing value, or one of several elements, is refused by name.
    #[test]
    fn the_loss_value_arrives_as_a_tensor_and_is_checked() -> Result<()> {
        let dev = Device::Cpu;
        let z = |dims: &[usize]| Tensor::zeros(dims, candle_core::DType::F32, &dev);
        let batch =
            EditBatch::new(z(&[1, 3, 2, 2])?, z(&[1, 3, 2, 2])?, z(&[1, 2, 4])?, z(&[1, 2, 4])?, vec![1.0], "")?;
        let got = |tensors: Vec<(Slot, u32, Tensor)>| Collected {
            text: String::new(),
            device: dev.clone(),
            tensors,
            bad_tensor: None,
        };
        let gx = (z(&[1, 3, 2, 2])? + 0.5)?;
        let out = term_output(
            "p",
            Needs::default(),
            &batch,
            got(vec![(SLOT_VALUE, 0, Tensor::new(&[0.25f32], &dev)?), (SLOT_X_EDIT, 0, gx)]),
        )?;
        assert_eq!(out.value.dims(), &[] as &[usize]);
        assert_eq!(out.value_f64()?, 0.25);
        assert!(out.grad_x_edit.is_some() && out.grad_w.is_none());

        let two = term_output("p", Needs::default(), &batch, got(vec![(SLOT_VALUE, 0, z(&[2])?)]));
        let msg = two.unwrap_err().to_string();
        assert!(msg.contains("'p'") && msg.contains("loss value 0 of shape [2]"), "{msg}");
        let none = term_output("p", Needs::default(), &batch, got(vec![(SLOT_X_EDIT, 0, z(&[1, 3, 2, 2])?)]));
        let msg = none.unwrap_err().to_string();
        assert!(msg.contains("returned no loss value"), "{msg}");
        Ok(())
    }
}

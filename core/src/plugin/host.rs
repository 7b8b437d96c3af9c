//! The host side of the boundary: opening a plugin library, checking its
//! fingerprint, building terms and evaluating them.

use std::ffi::c_void;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::Tensor;
use libloading::Library;

use super::abi::{
    FfiBatch, FfiFingerprint, FfiTensor, PluginDeclaration, RStr, Sink, Slot, Status, VTable,
    API_VERSION, CANDLE_VERSION, DECLARATION_SYMBOL, FEATURES, LSD_CORE_VERSION, MAGIC,
    RUSTC_VERSION, SLOT_FEATURE_EDIT, SLOT_U, SLOT_W, SLOT_X_EDIT, STATUS_OK, STATUS_PANIC,
};
use super::api::{to_host, EditBatch, InitContext, Needs, ParamInfo, PluginInfo};
use super::grad::TermOutput;
use crate::{Error, Result};

/// What a side of the boundary was built with. Host and plugin must agree
/// on every field.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Fingerprint {
    /// The plugin API version ([`API_VERSION`]).
    pub api_version: u32,
    /// `rustc --version`.
    pub rustc: String,
    /// The lsd-core version.
    pub lsd_core: String,
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
            rustc: RUSTC_VERSION.into(),
            lsd_core: LSD_CORE_VERSION.into(),
            candle: CANDLE_VERSION.into(),
            features: FEATURES.into(),
        }
    }

    /// Reads a declaration's fingerprint.
    ///
    /// # Safety
    /// The strings in `f` must be valid for the call.
    unsafe fn from_ffi(f: &FfiFingerprint) -> Self {
        // SAFETY: forwarded to the caller.
        unsafe {
            Self {
                api_version: f.api_version,
                rustc: f.rustc.to_string_lossy(),
                lsd_core: f.lsd_core.to_string_lossy(),
                candle: f.candle.to_string_lossy(),
                features: f.features.to_string_lossy(),
            }
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
            ("rustc", self.rustc.clone(), other.rustc.clone()),
            ("lsd-core", self.lsd_core.clone(), other.lsd_core.clone()),
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
            "api {}, {}, lsd-core {}, candle {}, {}",
            self.api_version, self.rustc, self.lsd_core, self.candle, features
        )
    }
}

/// The command that rebuilds a plugin so that its fingerprint matches the
/// host's.
fn rebuild_command(host: &Fingerprint, plugin: &Fingerprint, manifest_dir: &str) -> String {
    // `rustc 1.85.0 (hash date)` → `+1.85.0`; nightlies and betas are named
    // differently by rustup, so for them we say which compiler in words.
    let release = host.rustc.split_whitespace().nth(1).unwrap_or("");
    let toolchain =
        if !release.is_empty() && release.chars().all(|c| c.is_ascii_digit() || c == '.') {
            format!(" +{release}")
        } else {
            String::new()
        };
    let profile = if cfg!(debug_assertions) { "" } else { " --release" };
    let features = if host.features.is_empty() {
        String::new()
    } else {
        format!(" --features {}", host.features)
    };
    let mut cmd = format!(
        "cargo{toolchain} build{profile}{features} --manifest-path {}",
        Path::new(manifest_dir).join("Cargo.toml").display()
    );
    if toolchain.is_empty() && host.rustc != plugin.rustc {
        cmd.push_str(&format!("   (with the compiler that reports '{}')", host.rustc));
    }
    if host.lsd_core != plugin.lsd_core {
        cmd.push_str(&format!(
            "\n    after changing its lsd-core dependency to version {}",
            host.lsd_core
        ));
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
        // SAFETY: `decl` was checked in `open` and the library is loaded.
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
        f.debug_struct("PluginLibrary")
            .field("path", &self.shared.path)
            .field("info", &self.info)
            .finish()
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
        #[cfg(not(any(
            target_os = "linux",
            target_os = "android",
            target_os = "macos",
            target_os = "ios"
        )))]
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
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let fail = |reason: String| Error::PluginLoad { path: path.to_path_buf(), reason };
        if !path.exists() {
            return Err(fail(
                "no such file; check the path, or run `lsd-tui plugins` to see what was found"
                    .into(),
            ));
        }
        // SAFETY: see the doc comment: the user chose to load this file.
        let library = unsafe { load_pinned(path) }
            .map_err(|e| fail(format!("cannot load it as a dynamic library: {e}")))?;
        // SAFETY: the symbol's type is the one `export_plugin!` defines; a
        // library that uses the name for something else is caught by the
        // magic check below (for a data symbol, reading 8 bytes is the risk
        // we take; for a function of another signature, the call is).
        let decl = unsafe {
            let get = library
                .get::<extern "C" fn() -> *const PluginDeclaration>(DECLARATION_SYMBOL.as_bytes())
                .map_err(|_| {
                    fail(format!(
                        "not an lsd-tui plugin: it exports no `{DECLARATION_SYMBOL}` symbol \
                         (a plugin ends with `lsd_core::export_plugin!(YourTerm);`)"
                    ))
                })?;
            get()
        };
        if decl.is_null() {
            return Err(fail(format!("`{DECLARATION_SYMBOL}` returned a null pointer")));
        }
        // SAFETY: non-null, points into the loaded library; the frozen prefix
        // (magic, fingerprint, package, manifest_dir) has the same layout in
        // every API version.
        let (magic, fingerprint, package, manifest_dir) = unsafe {
            let d = &*decl;
            if d.magic != MAGIC {
                return Err(fail(format!(
                    "`{DECLARATION_SYMBOL}` does not point to an lsd-tui plugin declaration"
                )));
            }
            (
                d.magic,
                Fingerprint::from_ffi(&d.fingerprint),
                d.package.to_string_lossy(),
                d.manifest_dir.to_string_lossy(),
            )
        };
        debug_assert_eq!(magic, MAGIC);
        let host = Fingerprint::host();
        if !host.accepts(&fingerprint) {
            let rows = host
                .fields(&fingerprint)
                .into_iter()
                .map(|(name, h, p)| [name.to_string(), h, p])
                .collect();
            return Err(Error::PluginMismatch {
                path: path.to_path_buf(),
                package: package.clone(),
                fields: rows,
                rebuild: rebuild_command(&host, &fingerprint, &manifest_dir),
            });
        }
        // SAFETY: the fingerprint matched, so the rest of the declaration has
        // this build's layout.
        let (name, version, description) = unsafe {
            let d = &*decl;
            (d.name.to_string_lossy(), d.version.to_string_lossy(), d.description.to_string_lossy())
        };
        let shared = Arc::new(Shared { path: path.to_path_buf(), decl, library });
        let mut lib = Self {
            shared,
            info: PluginInfo { name, version, description, params: Vec::new() },
            fingerprint,
            package,
        };
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

    /// Builds a term from YAML parameters (empty for all defaults).
    pub fn instantiate(&self, params_yaml: &str, context: &InitContext) -> Result<LoadedTerm> {
        let context = serde_json::to_string(context)
            .map_err(|e| Error::Config(format!("cannot encode the plugin context: {e}")))?;
        let init = self.shared.vtable().init;
        let mut handle: *mut c_void = std::ptr::null_mut();
        let out = &mut handle as *mut *mut c_void;
        // SAFETY: the strings and `out` outlive the call; the sink is valid.
        self.call("init", |sink| unsafe {
            init(RStr::borrow(params_yaml), RStr::borrow(&context), out, sink)
        })?;
        if handle.is_null() {
            return Err(self.call_error("init", "returned no term".into(), false));
        }
        // From here on the handle is owned by `LoadedTerm`, whose Drop frees it.
        let mut term = LoadedTerm {
            shared: self.shared.clone(),
            handle,
            name: self.info.name.clone(),
            needs: Needs::default(),
        };
        let needs = self.shared.vtable().needs;
        // SAFETY: the handle is live; the sink is valid for the call.
        let json = self.call("needs", |sink| unsafe { needs(handle, sink) })?.text;
        term.needs = serde_json::from_str(&json)
            .map_err(|e| self.call_error("needs", format!("bad answer: {e}"), false))?;
        Ok(term)
    }

    fn call_error(&self, call: &'static str, reason: String, panicked: bool) -> Error {
        Error::PluginCall { plugin: self.info.name.clone(), call, reason, panicked }
    }

    fn call(&self, call: &'static str, f: impl FnOnce(*const Sink) -> Status) -> Result<Collected> {
        call_plugin(&self.info.name, call, f)
    }
}

/// Everything a plugin sent back during one call.
#[derive(Default)]
struct Collected {
    text: String,
    value: Option<f64>,
    tensors: Vec<(Slot, u32, Vec<f32>, Vec<usize>)>,
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

unsafe extern "C" fn sink_value(ctx: *mut c_void, value: f64) {
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: as in `sink_text`.
        let c = unsafe { &*ctx.cast::<Mutex<Collected>>() };
        if let Ok(mut c) = c.lock() {
            c.value = Some(value);
        }
    });
}

unsafe extern "C" fn sink_tensor(ctx: *mut c_void, slot: Slot, index: u32, t: FfiTensor) {
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: as in `sink_text`; `t` is valid for this callback, and is
        // copied before it returns.
        let (c, (data, dims)) = unsafe { (&*ctx.cast::<Mutex<Collected>>(), t.parts()) };
        if let Ok(mut c) = c.lock() {
            c.tensors.push((slot, index, data.to_vec(), dims.to_vec()));
        }
    });
}

/// Calls into a plugin with a fresh sink and turns its status into a result.
fn call_plugin(
    plugin: &str,
    call: &'static str,
    f: impl FnOnce(*const Sink) -> Status,
) -> Result<Collected> {
    let collected = Mutex::new(Collected::default());
    let sink = Sink {
        ctx: (&collected as *const Mutex<Collected>).cast_mut().cast(),
        text: sink_text,
        value: sink_value,
        tensor: sink_tensor,
    };
    let status = f(&sink);
    let collected = collected.into_inner().unwrap_or_else(|p| p.into_inner());
    if status == STATUS_OK {
        return Ok(collected);
    }
    let reason = if collected.text.is_empty() { "no message".into() } else { collected.text };
    Err(Error::PluginCall {
        plugin: plugin.to_string(),
        call,
        reason,
        panicked: status == STATUS_PANIC,
    })
}

/// A loss term living in a plugin. It keeps its library loaded.
pub struct LoadedTerm {
    shared: Arc<Shared>,
    handle: *mut c_void,
    name: String,
    needs: Needs,
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

    /// Evaluates the term on the host's batch: the inputs are copied to host
    /// memory as `f32`, the plugin computes the loss and its gradients in its
    /// own graph, and the gradients come back as new host tensors on
    /// `x_edit`'s device, in the dtype of the input they belong to. Nothing
    /// is attached to the host's graph; chain with [`super::surrogate`].
    pub fn evaluate(&self, batch: &EditBatch) -> Result<TermOutput> {
        batch.validate()?;
        let host = |t: &Tensor| to_host(t);
        let (x, x_edit, w, u) =
            (host(&batch.x)?, host(&batch.x_edit)?, host(&batch.w)?, host(&batch.u)?);
        let (fx, fe) = match (&batch.features, self.needs.features) {
            (Some(f), true) => (
                f.x.iter().map(host).collect::<Result<Vec<_>>>()?,
                f.x_edit.iter().map(host).collect::<Result<Vec<_>>>()?,
            ),
            (None, true) => {
                return Err(Error::Config(format!(
                    "loss term '{}' needs the generator's feature maps, but the batch has none",
                    self.name
                )))
            }
            (_, false) => (Vec::new(), Vec::new()),
        };
        let view = |(d, s): &(Vec<f32>, Vec<usize>)| FfiTensor::borrow(d, s);
        let fx_views: Vec<FfiTensor> = fx.iter().map(view).collect();
        let fe_views: Vec<FfiTensor> = fe.iter().map(view).collect();
        let direction: Vec<u32> = batch.direction.iter().map(|&d| d as u32).collect();
        let ffi = FfiBatch {
            x: view(&x),
            x_edit: view(&x_edit),
            w: view(&w),
            u: view(&u),
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
        let got = call_plugin(&self.name, "loss", |sink| unsafe { evaluate(handle, &ffi, sink) })?;
        self.output(batch, got)
    }

    /// Checks what the plugin sent and rebuilds it as host tensors.
    fn output(&self, batch: &EditBatch, got: Collected) -> Result<TermOutput> {
        let bad = |reason: String| Error::PluginCall {
            plugin: self.name.clone(),
            call: "loss",
            reason,
            panicked: false,
        };
        let value = got.value.ok_or_else(|| bad("returned no loss value".into()))?;
        let n_features = if self.needs.features {
            batch.features.as_ref().map_or(0, |f| f.x_edit.len())
        } else {
            0
        };
        let mut out = TermOutput {
            value,
            grad_x_edit: None,
            grad_w: None,
            grad_u: None,
            grad_features_edit: vec![None; n_features],
        };
        for (slot, index, data, dims) in got.tensors {
            let (target, input, name) = match slot {
                SLOT_X_EDIT => (&mut out.grad_x_edit, &batch.x_edit, "x_edit".to_string()),
                SLOT_W => (&mut out.grad_w, &batch.w, "w".to_string()),
                SLOT_U => (&mut out.grad_u, &batch.u, "u".to_string()),
                SLOT_FEATURE_EDIT if (index as usize) < n_features => {
                    let maps =
                        &batch.features.as_ref().expect("n_features > 0 implies features").x_edit;
                    let j = index as usize;
                    (&mut out.grad_features_edit[j], &maps[j], format!("features.x_edit[{j}]"))
                }
                _ => return Err(bad(format!("sent a gradient for unknown input {slot}/{index}"))),
            };
            if dims != input.dims() {
                return Err(bad(format!(
                    "gradient of {name} has shape {dims:?}, the input has {:?}",
                    input.dims()
                )));
            }
            let t = Tensor::from_vec(data, dims, batch.x_edit.device())?.to_dtype(input.dtype())?;
            *target = Some(t);
        }
        Ok(out)
    }
}

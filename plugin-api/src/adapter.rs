//! The plugin side of the boundary: the `extern "C"` functions that
//! [`crate::export_plugin!`] puts in a plugin's declaration.
//!
//! They run inside the plugin, with the plugin's own copy of lsd-plugin-api,
//! Candle and std. Each one:
//! - turns the borrowed plain data it receives into the plugin's own values
//!   (tensors are copied from the host's views — host memory, or device
//!   memory on the same CUDA device, see [`crate::view`] — onto the plugin's
//!   device, the differentiable ones as fresh leaf variables — see
//!   [`super::differentiate`]);
//! - runs the author's code under `catch_unwind`, so that a panic becomes a
//!   [`STATUS_PANIC`] with its message instead of unwinding into the host
//!   (which would abort the process: these are `extern "C"`);
//! - sends every result through the host's [`Sink`] callbacks, which copy
//!   it, so no memory changes owner across the boundary.

use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

use candle_core::{Device, Tensor};

use super::abi::{
    slice, FfiBatch, FfiTensor, RStr, Sink, Status, SLOT_FEATURE_EDIT, SLOT_U, SLOT_VALUE, SLOT_W, SLOT_X_EDIT,
    STATUS_ERROR, STATUS_OK, STATUS_PANIC, VIEW_DEVICE,
};
use super::api::{EditBatch, FeatureMaps, InitContext, Plugin};
use super::grad::differentiate;
use super::view::{crossing, receive, Side, Site, Staged};
use crate::{Error, Result};

/// A term as the plugin keeps it behind the opaque handle.
struct Hosted<T> {
    term: T,
    device: Device,
    /// Set after a panic: the term's state may be half-updated, so it is not
    /// used again.
    poisoned: AtomicBool,
}

thread_local! {
    /// Whether this thread is inside [`guard`] (its panics are reported, not printed).
    static GUARDED: Cell<bool> = const { Cell::new(false) };
    /// The message of the last panic caught on this thread.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs (once per copy of lsd-plugin-api) a panic hook that records the
/// message and location of panics raised inside [`guard`] instead of
/// printing them — the host may own the terminal — and defers to the
/// previous hook otherwise. In a cdylib this is the plugin's own std, so the
/// host's hook is untouched.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if GUARDED.with(Cell::get) {
                let msg = payload_message(info.payload());
                let msg = match info.location() {
                    Some(l) => format!("{msg} (at {}:{}:{})", l.file(), l.line(), l.column()),
                    None => msg,
                };
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(msg));
            } else {
                previous(info);
            }
        }));
    });
}

fn payload_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-text payload".into()
    }
}

/// Sends `text` through the sink.
///
/// # Safety
/// `sink` must be null or point to a valid [`Sink`] whose callbacks may be
/// called now.
unsafe fn send_text(sink: *const Sink, text: &str) {
    // SAFETY: the caller guarantees `sink` is valid or null.
    if let Some(s) = unsafe { sink.as_ref() } {
        // SAFETY: the callback copies the text before returning.
        unsafe { (s.text)(s.ctx, RStr::borrow(text)) };
    }
}

/// Runs `f`, catching panics, and reports errors and panics through `sink`.
///
/// # Safety
/// `sink` must be null or point to a valid [`Sink`].
unsafe fn guard(sink: *const Sink, f: impl FnOnce() -> Result<()>) -> Status {
    install_panic_hook();
    let was = GUARDED.with(|g| g.replace(true));
    let outcome = panic::catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(was));
    match outcome {
        Ok(Ok(())) => STATUS_OK,
        Ok(Err(e)) => {
            // SAFETY: forwarded to the caller.
            unsafe { send_text(sink, &e.to_string()) };
            STATUS_ERROR
        }
        Err(payload) => {
            let msg = LAST_PANIC.with(|p| p.borrow_mut().take()).unwrap_or_else(|| payload_message(payload.as_ref()));
            // Dropping the payload could itself panic (a payload with a
            // panicking Drop); leak it rather than risk unwinding out.
            std::mem::forget(payload);
            // SAFETY: forwarded to the caller.
            unsafe { send_text(sink, &msg) };
            STATUS_PANIC
        }
    }
}

/// Sends the parameter list as JSON.
///
/// # Safety
/// `sink` must point to a valid [`Sink`].
pub(crate) unsafe extern "C" fn describe<T: Plugin>(sink: *const Sink) -> Status {
    // SAFETY: `sink` is valid per the contract.
    unsafe {
        guard(sink, || {
            let json = serde_json::to_string(&T::params())
                .map_err(|e| Error::Config(format!("cannot encode the parameter list: {e}")))?;
            send_text(sink, &json);
            Ok(())
        })
    }
}

/// Builds a term from YAML parameters and a JSON context.
///
/// # Safety
/// `params` and `context` must be valid strings for the call, `term` must
/// point to writable storage for one pointer, `sink` to a valid [`Sink`].
pub(crate) unsafe extern "C" fn init<T: Plugin>(
    params: RStr,
    context: RStr,
    term: *mut *mut c_void,
    sink: *const Sink,
) -> Status {
    // SAFETY: per the contract.
    unsafe {
        guard(sink, || {
            let params = params.to_string_lossy();
            let context: InitContext = serde_json::from_str(&context.to_string_lossy())
                .map_err(|e| Error::Config(format!("bad plugin context from the host: {e}")))?;
            let device = context.device()?;
            let built = T::from_yaml(&params, &context)?;
            let hosted = Box::new(Hosted { term: built, device, poisoned: AtomicBool::new(false) });
            *term = Box::into_raw(hosted).cast();
            Ok(())
        })
    }
}

/// Sends the term's [`super::Needs`] as JSON.
///
/// # Safety
/// `term` must be a live handle from [`init`] of the same `T`; `sink` a
/// valid [`Sink`].
pub(crate) unsafe extern "C" fn needs<T: Plugin>(term: *const c_void, sink: *const Sink) -> Status {
    // SAFETY: per the contract.
    unsafe {
        guard(sink, || {
            let hosted = &*term.cast::<Hosted<T>>();
            let json = serde_json::to_string(&hosted.term.needs())
                .map_err(|e| Error::Config(format!("cannot encode the term's needs: {e}")))?;
            send_text(sink, &json);
            Ok(())
        })
    }
}

/// A plugin-side tensor from a borrowed view (host memory or device).
///
/// # Safety
/// `t` must describe valid memory for the call.
unsafe fn tensor(t: &FfiTensor, device: &Device) -> Result<Tensor> {
    // SAFETY: forwarded to the caller.
    unsafe { receive(t, device) }
}

/// Rebuilds the batch from host memory, as the plugin's own tensors.
///
/// # Safety
/// Every pointer in `b` must be valid for the call.
unsafe fn batch(b: &FfiBatch, device: &Device) -> Result<EditBatch> {
    // SAFETY: forwarded to the caller.
    unsafe {
        let features = if b.has_features != 0 {
            let maps = |p: *const FfiTensor, n: usize| -> Result<Vec<Tensor>> {
                slice(p, n).iter().map(|t| tensor(t, device)).collect()
            };
            Some(FeatureMaps {
                x: maps(b.features_x, b.n_features_x)?,
                x_edit: maps(b.features_edit, b.n_features_edit)?,
            })
        } else {
            None
        };
        let batch = EditBatch {
            x: tensor(&b.x, device)?,
            x_edit: tensor(&b.x_edit, device)?,
            w: tensor(&b.w, device)?,
            u: tensor(&b.u, device)?,
            alpha: slice(b.alpha, b.n_alpha).to_vec(),
            direction: slice(b.direction, b.n_direction).iter().map(|&d| d as usize).collect(),
            prompt: b.prompt.to_string_lossy(),
            features,
            keys: (b.has_keys != 0).then(|| slice(b.keys, b.n_keys).to_vec()),
        };
        batch.validate()?;
        Ok(batch)
    }
}

/// Computes the loss and its gradients and sends them to the host.
///
/// # Safety
/// `term` must be a live handle from [`init`] of the same `T`; `batch` must
/// point to a valid [`FfiBatch`] whose buffers stay valid for the call;
/// `sink` to a valid [`Sink`].
pub(crate) unsafe extern "C" fn evaluate<T: Plugin>(
    term: *const c_void,
    batch_ptr: *const FfiBatch,
    sink: *const Sink,
) -> Status {
    // SAFETY: per the contract.
    unsafe {
        let hosted = &*term.cast::<Hosted<T>>();
        if hosted.poisoned.load(Ordering::Relaxed) {
            send_text(sink, "the term panicked in an earlier call; load it again");
            return STATUS_ERROR;
        }
        let status = guard(sink, || {
            let b = batch(&*batch_ptr, &hosted.device)?;
            let out = differentiate(&hosted.term, &b)?;
            let s = &*sink;
            // Answer the way the host asked: device views back only when
            // the host lent device views of this very device.
            let host = &(*batch_ptr).x_edit;
            let host = Side {
                site: if host.kind == VIEW_DEVICE { Site::Cuda(host.ordinal.max(0) as usize) } else { Site::Host },
                cuda: host.kind == VIEW_DEVICE,
            };
            let how = crossing(Side::this(&hosted.device), host);
            let send = |slot, index, g: Option<&Tensor>| -> Result<()> {
                if let Some(g) = g {
                    let staged = Staged::new(g, how)?;
                    (s.tensor)(s.ctx, slot, index, staged.view());
                }
                Ok(())
            };
            // The value crosses like a gradient, so on a GPU nothing here
            // waits for the device.
            send(SLOT_VALUE, 0, Some(&out.value))?;
            send(SLOT_X_EDIT, 0, out.grad_x_edit.as_ref())?;
            send(SLOT_W, 0, out.grad_w.as_ref())?;
            send(SLOT_U, 0, out.grad_u.as_ref())?;
            for (j, g) in out.grad_features_edit.iter().enumerate() {
                send(SLOT_FEATURE_EDIT, j as u32, g.as_ref())?;
            }
            Ok(())
        });
        if status == STATUS_PANIC {
            hosted.poisoned.store(true, Ordering::Relaxed);
        }
        status
    }
}

/// Drops a term.
///
/// # Safety
/// `term` must be a handle from [`init`] of the same `T`, not used again.
pub(crate) unsafe extern "C" fn drop_term<T: Plugin>(term: *mut c_void) {
    if term.is_null() {
        return;
    }
    // A panicking Drop must not unwind into the host; there is nobody to
    // report it to, so it is swallowed (and the hook keeps it quiet).
    install_panic_hook();
    let was = GUARDED.with(|g| g.replace(true));
    // SAFETY: `term` came from `Box::into_raw` in `init` and is dropped once.
    let _ = panic::catch_unwind(AssertUnwindSafe(|| unsafe { drop(Box::from_raw(term.cast::<Hosted<T>>())) }));
    GUARDED.with(|g| g.set(was));
    LAST_PANIC.with(|p| p.borrow_mut().take());
}

/// Exports a [`Plugin`](crate::Plugin) type from a `cdylib`.
///
/// ```text
/// lsd_plugin_api::export_plugin!(ColourStats);
/// ```
///
/// expands to the one C-ABI symbol `lsd_plugin_declaration`, which returns
/// a pointer to a `static` [`PluginDeclaration`](crate::abi::PluginDeclaration)
/// carrying the ABI fingerprint of the lsd-plugin-api the plugin is compiled with,
/// the plugin crate's package name and manifest directory (for the rebuild
/// command), and the adapter functions. Use it once per library.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        /// The plugin declaration read by the lsd-tui host.
        #[unsafe(no_mangle)]
        pub extern "C" fn lsd_plugin_declaration() -> *const $crate::abi::PluginDeclaration {
            static DECLARATION: $crate::abi::PluginDeclaration =
                $crate::abi::PluginDeclaration::new::<$plugin>(env!("CARGO_PKG_NAME"), env!("CARGO_MANIFEST_DIR"));
            &DECLARATION
        }
    };
}

//! Test-only plugin that declares a wrong ABI fingerprint (rustc and
//! candle versions no compiler reports). The host must refuse it without
//! calling any of its functions: each one counts its calls in the exported
//! `LSD_TEST_VTABLE_CALLS`, which the test reads after the refusal.

use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};

use lsd_plugin_api::abi::{FfiBatch, PluginDeclaration, RStr, Sink, Status, VTable, STATUS_ERROR};
use lsd_plugin_testing::ProbeTerm;

/// How many times the host called one of this plugin's functions.
#[unsafe(no_mangle)]
pub static LSD_TEST_VTABLE_CALLS: AtomicUsize = AtomicUsize::new(0);

fn called() -> Status {
    LSD_TEST_VTABLE_CALLS.fetch_add(1, Ordering::SeqCst);
    STATUS_ERROR
}

unsafe extern "C" fn describe(_: *const Sink) -> Status {
    called()
}

unsafe extern "C" fn init(_: RStr, _: RStr, _: *mut *mut c_void, _: *const Sink) -> Status {
    called()
}

unsafe extern "C" fn needs(_: *const c_void, _: *const Sink) -> Status {
    called()
}

unsafe extern "C" fn evaluate(_: *const c_void, _: *const FfiBatch, _: *const Sink) -> Status {
    called()
}

unsafe extern "C" fn drop_term(_: *mut c_void) {
    called();
}

static DECLARATION: PluginDeclaration = {
    let mut d = PluginDeclaration::new::<ProbeTerm>(env!("CARGO_PKG_NAME"), env!("CARGO_MANIFEST_DIR"));
    d.fingerprint.rustc = RStr::new("rustc 0.0.0 (wrong 1970-01-01)");
    d.fingerprint.candle = RStr::new("0.0.0-wrong");
    d.vtable = VTable { describe, init, needs, evaluate, drop_term };
    d
};

/// The declaration, as `export_plugin!` would write it, but with the wrong
/// fingerprint and counting functions.
#[unsafe(no_mangle)]
pub extern "C" fn lsd_plugin_declaration() -> *const PluginDeclaration {
    &DECLARATION
}

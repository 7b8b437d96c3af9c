//! Test-only dynamic library that follows the plugin file-name convention
//! but exports no plugin declaration: the host must say so clearly.

/// Some unrelated exported function.
#[unsafe(no_mangle)]
pub extern "C" fn lsd_test_not_a_plugin() -> i32 {
    42
}

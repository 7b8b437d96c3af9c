//! Loss plugins: the host that loads plugin libraries (`cdylib`s, via
//! `libloading`) and evaluates them, and, re-exported, the API a plugin
//! author writes against.
//!
//! # For plugin authors
//!
//! The API lives in its own crate, `lsd-plugin-api` (`plugin-api/`), which
//! links Candle and nothing else of lsd-tui; everything of it is re-exported
//! here, so `lsd_core::plugin::LossTerm` and `lsd_core::export_plugin!` name
//! the same items. A plugin is ordinary Candle code: a type implementing
//! [`LossTerm`] (`loss(&self, &EditBatch) -> Result<Tensor>`, a scalar) and
//! [`Plugin`] (name, version, description, typed parameters, constructor),
//! exported with one line, `lsd_plugin_api::export_plugin!(MyTerm);`.
//! `docs/plugins.md` walks through `examples/plugins/colour-stats`.
//!
//! # Design of the boundary
//!
//! A `cdylib` links its own copy of every crate it uses: its own std, its
//! own lsd-plugin-api and its own Candle, with their own statics. Candle's tensor
//! ids come from a global counter (`candle-core/src/tensor.rs`, `TensorId`)
//! and gradients are stored by id (`GradStore`), so a tensor created by the
//! plugin's Candle could carry an id that the host's Candle has also handed
//! out; if plugin tensors joined the host's autograd graph, the backward
//! pass could silently mix up gradients. Rust has no stable ABI either, so
//! even passing a `Tensor` by value is undefined behaviour unless both
//! sides agree on every layout. The design therefore never lets a Rust
//! value cross:
//!
//! 1. **One C symbol, checked first.** A plugin exports
//!    `lsd_plugin_declaration()`, returning a pointer to a `static`
//!    `#[repr(C)]` [`abi::PluginDeclaration`]. Its first fields — magic
//!    bytes, the ABI [`Fingerprint`] (API version, rustc version, lsd-plugin-api
//!    version, Candle version, its features), the plugin's package name
//!    and manifest directory — have a layout frozen for all versions. The
//!    host reads them, and refuses the library unless every fingerprint
//!    field equals its own, printing both side by side with the `cargo
//!    build` command that rebuilds the plugin. No other function of the
//!    plugin is called before that check. The fingerprint is computed at
//!    compile time of each side: `export_plugin!` expands in the plugin crate
//!    but reads constants of the plugin's own copy of lsd-plugin-api, which
//!    `plugin-api/build.rs` fills from `$RUSTC --version` and the lock file (see
//!    there for how the Candle version is found, and why).
//! 2. **Plain data only.** After the check, the host calls the function
//!    pointers of the declaration's [`abi::VTable`]. Inputs are borrowed
//!    `#[repr(C)]` views ([`abi::FfiTensor`]: kind, pointer, dims, element
//!    type, CUDA ordinal and stream) of `f32` buffers, valid for the call:
//!    device pointers when host and plugin compute on the same CUDA device,
//!    host memory otherwise ([`lsd_plugin_api::view::crossing`]). Outputs go
//!    back through host callbacks ([`abi::Sink`]) that copy them before
//!    returning, so memory never changes owner and no allocator crosses.
//!    Parameters travel as YAML text, the load context and the metadata as
//!    JSON text.
//! 3. **Gradients computed inside, chained outside.** The adapter that
//!    `export_plugin!` generates rebuilds the batch as the plugin's own
//!    tensors on the plugin's device, with `x_edit`, `w`, `u` and the
//!    feature maps of `x_edit` as fresh leaf `Var`s, runs the author's
//!    `loss`, runs `backward` inside the plugin, and returns the value and
//!    the gradient with respect to each input it was given
//!    ([`TermOutput`]; `None` where the loss does not depend on an input).
//!    The host turns them into constant tensors and chains all terms through
//!    the generator with one vector–Jacobian surrogate
//!    `Σ_i λ_i (⟨g_x,i, x_edit⟩ + ⟨g_w,i, w⟩ + ⟨g_u,i, u⟩ + Σ_j ⟨g_f,ij, f_j⟩)`
//!    ([`surrogate`]), whose backward in the host graph is exactly
//!    `Σ_i λ_i ∂ℓ_i/∂θ`. In-process terms go through the same
//!    [`differentiate`], so both paths compute the same thing.
//! 4. **Panics stay inside.** Every adapter function runs the author's code
//!    under `catch_unwind` and returns a status; a panic becomes
//!    [`Error::PluginCall`](crate::Error::PluginCall) with `panicked: true`
//!    and the panic message and location (recorded by a panic hook in the
//!    plugin's own std, which keeps the host's terminal clean). A term that
//!    panicked is poisoned and refuses further calls. A library without the
//!    symbol, with the wrong magic, or that cannot be loaded, is an
//!    [`Error::PluginLoad`](crate::Error::PluginLoad).
//! 5. **Lifetimes.** A [`PluginLibrary`] and every [`LoadedTerm`] built from
//!    it hold an `Arc` of the loaded library; the term is dropped by the
//!    plugin (`drop_term`) before the last `Arc` goes. On top of that the
//!    library is opened with `RTLD_NODELETE` (pinned on Windows) so its code
//!    is never unmapped: the plugin's Candle starts worker threads (rayon,
//!    gemm) that outlive any handle and run the plugin's code.
//!
//! # Invariants
//!
//! - The host calls nothing but `lsd_plugin_declaration` before the
//!   fingerprint matched; the frozen prefix of the declaration never
//!   changes, and [`abi::API_VERSION`] is bumped on any other change to the
//!   ABI types or the JSON texts.
//! - No `Tensor`, `Var`, `String`, `Vec`, `Box` or trait object crosses the
//!   boundary; only `#[repr(C)]` structs of pointers, lengths, integers and
//!   `extern "C"` function pointers.
//! - Plugin tensors never enter the host graph and host tensors never enter
//!   the plugin graph: every input is copied into fresh plugin leaves, every
//!   gradient is copied into fresh host tensors with no history.
//! - No `extern "C"` function unwinds: the adapter catches panics, and the
//!   host's callbacks catch theirs.
//! - Borrowed buffers are valid only during the call that lends them, and
//!   sink callbacks are only called on the calling thread, before the call
//!   returns.
//! - Everything built from a library keeps the library loaded.
//!
//! The price is a copy of the images and feature maps each way per step:
//! device to device on a shared CUDA device, through host memory otherwise.
//!
//! # Discovery
//!
//! [`discovery`]: libraries named `<prefix>lsd_plugin_*<suffix>` in the
//! directories of `LSD_PLUGIN_PATH` and next to the executable, or any
//! path a recipe names; [`discovery::list`] and [`discovery::check`] back
//! `lsd-tui plugins` and `lsd-tui plugins check PATH`.
//!
//! # Testing plugins
//!
//! The dev-only crate `lsd-plugin-testing` (`plugin-testing/`) builds a
//! plugin crate from inside a test and compares the gradients through the
//! loaded library with the in-process gradients and finite differences.

pub mod discovery;
pub(crate) mod host;

use crate::ops::{set_precision, Precision};
use crate::{Error, Result};

pub use host::{Fingerprint, LoadedTerm, PluginLibrary};
/// The plugin SDK itself, for its `Error` and `Result` (what a
/// [`LossTerm`] returns).
pub use lsd_plugin_api as sdk;
pub use lsd_plugin_api::{
    abi, device_name, differentiate, parse_device, parse_params, surrogate, EditBatch, FeatureMaps, InitContext,
    LossTerm, Needs, OriginalCache, ParamInfo, Plugin, PluginInfo, TermOutput,
};

/// Sets this copy of lsd-core's process-wide precision to the one the host
/// sent in `context`, and returns it. A plugin that runs lsd-core's networks
/// calls it first thing in [`Plugin::new`]: the plugin library has its own
/// copy of lsd-core, whose setting the host's `set_precision` does not reach.
pub fn adopt_precision(context: &InitContext) -> Result<Precision> {
    let precision = context
        .precision
        .parse::<Precision>()
        .map_err(|e| Error::Config(format!("the plugin context's precision: {e}; the host sends tf32 or fp32")))?;
    set_precision(precision);
    Ok(precision)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::precision;

    #[test]
    fn a_plugin_adopts_the_precision_of_its_context() {
        let before = precision();
        for p in [Precision::Tf32, Precision::Fp32] {
            let ctx = InitContext { precision: p.name().into(), ..InitContext::default() };
            assert_eq!(adopt_precision(&ctx).expect("a valid precision"), p);
            assert_eq!(precision(), p);
        }
        let bad = InitContext { precision: "bf16".into(), ..InitContext::default() };
        let msg = adopt_precision(&bad).unwrap_err().to_string();
        assert!(msg.contains("bf16") && msg.contains("tf32"), "{msg}");
        set_precision(before);
    }

    #[test]
    fn the_user_folder_follows_xdg_and_an_installation_finds_its_lib_folder() {
        use std::path::PathBuf;
        let user = |data: Option<&str>, home: Option<&str>| {
            discovery::user_plugin_dir_from(data.map(Into::into), home.map(Into::into))
        };
        assert_eq!(user(Some("/data"), Some("/home/u")), Some(PathBuf::from("/data/lsd-tui/plugins")));
        assert_eq!(
            user(Some("relative"), Some("/home/u")),
            Some(PathBuf::from("/home/u/.local/share/lsd-tui/plugins"))
        );
        assert_eq!(user(None, Some("/home/u")), Some(PathBuf::from("/home/u/.local/share/lsd-tui/plugins")));
        assert_eq!(user(None, None), None);
        let prefix = tempfile::tempdir().expect("tempdir");
        let (bin, lib) = (prefix.path().join("bin"), prefix.path().join(discovery::INSTALLED_PLUGIN_DIR));
        std::fs::create_dir_all(&bin).expect("bin");
        assert_eq!(
            discovery::search_dirs_from(None, Some(bin.clone())),
            std::slice::from_ref(&bin),
            "no lib folder, nothing added"
        );
        std::fs::create_dir_all(&lib).expect("lib");
        assert_eq!(discovery::search_dirs_from(None, Some(bin.clone())), [bin, lib]);
    }
}

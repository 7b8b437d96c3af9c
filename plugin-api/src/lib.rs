//! The SDK for lsd-tui loss plugins: what a plugin author writes against.
//!
//! A plugin is ordinary Candle code: a type implementing [`LossTerm`]
//! (`loss(&self, &EditBatch) -> Result<Tensor>`, a scalar) and [`Plugin`]
//! (name, version, description, typed parameters, constructor), exported
//! with one line, `lsd_plugin_api::export_plugin!(MyTerm);`. The batch gives
//! the original images `x` (constants), the edited images `x_edit`, the
//! latents `w`, the directions `u`, `α`, the prompt, and — when
//! [`LossTerm::needs`] asks at load time — the generator's feature maps of
//! `x` and `x_edit`. `examples/plugins/colour-stats` is a complete example,
//! walked through in `docs/plugins.md`.
//!
//! This crate links Candle and nothing else of lsd-tui: no networks, no
//! training engine, no recipes. A plugin that runs one of lsd-tui's networks
//! (the built-in CLIP, identity and segmentation terms) depends on lsd-core
//! as well, for the model.
//!
//! It also holds the plugin's side of the boundary: the C-ABI types
//! ([`abi`]), the adapter that [`export_plugin!`] puts behind them, and the
//! gradient contract ([`differentiate`], [`surrogate`]). The host side —
//! loading a library and checking its fingerprint — is lsd-core's
//! `plugin` module, which re-exports everything here.

#![deny(missing_docs)]
// A term runs inside a training step: no host reads here, so a step reads
// the device once, in the host (lsd-core's `readback`, clippy.toml).
#![deny(clippy::disallowed_methods)]

pub mod abi;
mod adapter;
mod api;
mod cache;
mod error;
mod grad;
pub mod view;

pub use api::{
    device_name, parse_device, parse_params, EditBatch, FeatureMaps, InitContext, LossTerm, Needs, ParamInfo, Plugin,
    PluginInfo, DEMO_MODEL_SEED,
};
pub use cache::OriginalCache;
pub use error::{Error, Result};
pub use grad::{differentiate, surrogate, TermOutput};

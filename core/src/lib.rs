//! lsd-core: the models, weight loaders, image operations, training engine,
//! recipes and plugin API of lsd-tui.
//!
//! Nothing here knows about terminals or networks: a model is built from a
//! `VarBuilder`, and turning a name into a file on disk happens at the edge
//! (the `lsd-tui` binary or the `lsd-weights` crate).
#![deny(missing_docs)]

pub mod animate;
pub mod demo;
pub mod direction_io;
pub mod durable;
pub mod engine;
pub mod error;
pub mod experiments;
pub mod fixture;
#[doc(hidden)]
pub mod fuzzing;
pub mod imageops;
pub mod latents;
pub mod layers;
pub mod models;
pub mod npy;
pub mod numpy_rng;
pub mod ops;
pub mod optim;
pub mod outputs;
pub mod plugin;
pub mod readback;
pub mod recipe;
pub mod render;
pub mod sefa;
pub mod torch;

pub use error::{Error, Result};
/// Exports a loss-term type from a plugin library (see [`plugin`]).
pub use lsd_plugin_api::export_plugin;

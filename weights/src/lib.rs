//! lsd-weights: the manifest of known weights, and fetching, verifying,
//! checking and converting them, with no Python anywhere.
//!
//! - [`Manifest`]: the checked-in `weights/manifest.toml` (name, hub repo,
//!   revision, files with size, SHA-256, format and tensor layout, licence).
//! - [`Store`]: the local weights directory (`LSD_WEIGHTS_DIR`, else the
//!   platform cache dir): [`Store::list`], [`Store::fetch`],
//!   [`Store::check_entry`], [`Store::check_path`], [`Store::resolve`].
//! - [`resolve`]: a recipe's weight name or path to a file; a missing weight
//!   is an error giving the fetch command.
//! - [`convert`]: torch checkpoint to safetensors.
//!
//! The library never draws: progress goes to a [`Progress`] the caller
//! supplies. Downloads speak the hub protocol of the `hf-hub` crate with a
//! read timeout and checked server values; see [`fetch`] and [`http`].
#![deny(missing_docs)]

pub mod check;
pub mod convert;
pub mod error;
pub mod fetch;
pub mod http;
pub mod layout;
pub mod manifest;
pub mod progress;
pub mod store;
pub mod verify;

pub use check::{check_file, CheckReport};
pub use convert::{convert, ConvertSummary};
pub use error::{Error, Result};
pub use fetch::{FetchOptions, FetchReport, FileResult, Outcome};
pub use layout::{Layout, LayoutStatus};
pub use manifest::{Entry, FileSpec, Manifest};
pub use progress::{Event, Progress, Silent};
pub use store::{default_dir, resolve, FileListing, FileState, Store};
pub use verify::ChecksumStatus;

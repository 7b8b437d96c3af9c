//! The training engine: runs a recipe on its own thread (work in progress).

pub mod events;

//! The four networks of the method, each differentiable to its input.

// Code on a training step's path: no host reads but the step's one
// (`readback`, clippy.toml).
#![deny(clippy::disallowed_methods)]

pub mod arcface;
pub mod bisenet;
pub mod clip;
pub mod stylegan2;

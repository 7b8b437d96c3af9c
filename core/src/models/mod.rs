//! The four networks of the method, each differentiable to its input.

pub mod arcface;
pub mod bisenet;
pub mod clip;
pub mod stylegan2;

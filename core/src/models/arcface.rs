//! arcface (work in progress).

//! bisenet (work in progress).

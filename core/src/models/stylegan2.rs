//! stylegan2 (work in progress).

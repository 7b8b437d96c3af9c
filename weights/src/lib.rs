//! lsd-weights: the manifest of known weights, fetching, verifying and converting (work in progress).

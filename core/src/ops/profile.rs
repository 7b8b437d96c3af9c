//! Time per op family, for `lsd-tui bench --profile`.
//!
//! Off by default: a disabled [`scope`] costs one relaxed atomic load. CPU
//! kernels run synchronously, so wall time inside a scope is the op's time.
//! Each dynamic library carries its own copy of these counters, so a
//! plugin's ops are counted in the plugin (and reported by the host as the
//! plugin's time).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// The op families the profile reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Convolutions (forward and input gradient).
    Conv,
    /// Stride-2 transposed convolutions.
    ConvTranspose,
    /// FIR filters (`upfirdn2d`) and their adjoints.
    Fir,
    /// Fused element-wise ops (modulate, demodulation, bias/noise/activation).
    Elementwise,
    /// Constant-weight linear layers.
    Linear,
}

impl Family {
    /// Every family, in report order.
    pub const ALL: [Family; 5] =
        [Family::Conv, Family::ConvTranspose, Family::Fir, Family::Elementwise, Family::Linear];

    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Family::Conv => "conv",
            Family::ConvTranspose => "conv_transpose",
            Family::Fir => "fir",
            Family::Elementwise => "elementwise",
            Family::Linear => "linear",
        }
    }
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; 5] =
    [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
static CALLS: [AtomicU64; 5] =
    [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// Turns the counters on or off (they keep their values).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether profiling is on (`lsd-tui bench --profile`).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Zeroes every counter.
pub fn reset() {
    for (n, c) in NANOS.iter().zip(&CALLS) {
        n.store(0, Ordering::Relaxed);
        c.store(0, Ordering::Relaxed);
    }
}

/// `(family, seconds, calls)` accumulated since the last [`reset`].
pub fn snapshot() -> Vec<(Family, f64, u64)> {
    Family::ALL
        .iter()
        .map(|&f| {
            let i = f as usize;
            (f, NANOS[i].load(Ordering::Relaxed) as f64 * 1e-9, CALLS[i].load(Ordering::Relaxed))
        })
        .collect()
}

/// A running timer; adds its elapsed time to its family when dropped.
#[must_use = "the time is counted when the scope is dropped"]
pub struct Scope {
    family: Family,
    start: Option<Instant>,
}

/// Starts timing one call of `family` (a no-op while profiling is off).
pub fn scope(family: Family) -> Scope {
    let start = ENABLED.load(Ordering::Relaxed).then(Instant::now);
    Scope { family, start }
}

impl Drop for Scope {
    fn drop(&mut self) {
        if let Some(start) = self.start {
            let i = self.family as usize;
            NANOS[i].fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
            CALLS[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

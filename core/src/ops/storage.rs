//! Borrowing a CPU tensor's data as a slice, for the CPU kernels of the
//! custom ops.

use candle_core::{bail, CpuStorage, Layout, WithDType};

/// The contiguous elements of `storage` under `layout`; an error for a
/// strided layout (the op wrappers make their inputs contiguous first).
pub(crate) fn slice<'a, T: WithDType>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &'static str,
) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&storage.as_slice::<T>()?[start..end]),
        None => bail!("{op}: the input is not contiguous"),
    }
}

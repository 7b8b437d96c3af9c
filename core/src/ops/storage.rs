//! Borrowing a CPU tensor's data as a slice, for the CPU kernels of the
//! custom ops.

use candle_core::{bail, CpuStorage, Layout, Storage, Tensor, WithDType};

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

/// Runs `f` on the contiguous elements of the CPU tensor `t` (copied to a
/// contiguous layout first when needed): for constant operands a custom op
/// holds rather than takes as an argument.
pub(crate) fn with_slice<T: WithDType, R>(
    t: &Tensor,
    op: &'static str,
    f: impl FnOnce(&[T]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(slice(cpu, layout, op)?),
        _ => bail!("{op}: a constant operand is not on the CPU"),
    }
}

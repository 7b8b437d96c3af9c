//! The GPU memory a run takes, for `bench` and the device check.
//!
//! On CUDA, Candle's tensors (and the op layer's outputs and cuDNN
//! workspace) are allocated stream-ordered (`cuMemAllocAsync`) from the
//! device's current memory pool, which keeps high-water marks of what was
//! in use and of what it held from the driver. The used mark is the number
//! to hold against PyTorch's `torch.cuda.max_memory_allocated()`; the
//! reserved mark against its `max_memory_reserved()`. Plugins run their own
//! copy of Candle on the same primary context and allocate from the same
//! pool, so their tensors count too. Memory the libraries take outside the
//! pool (cuBLAS and cuDNN handles, loaded modules) shows only in the
//! device-wide figure.

use candle_core::{Device, Result};

/// Bytes of GPU memory, read from the pool Candle allocates from and from
/// the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    /// The most bytes allocated from the pool at once since the last
    /// [`reset_peak`] (or since the process started).
    pub peak_used: u64,
    /// The most bytes the pool held from the driver at once since then:
    /// allocations plus freed blocks kept for reuse.
    pub peak_reserved: u64,
    /// In use on the whole device now, by every process and context.
    pub device_used: u64,
    /// The device's memory.
    pub device_total: u64,
}

/// Opens a device by name (`cpu`, `cuda:N`, as
/// [`crate::plugin::parse_device`]) and, on CUDA, lets its memory pool keep
/// what is freed ([`keep_freed_memory`]). Every command opens its device
/// here.
pub fn open_device(name: &str) -> crate::error::Result<Device> {
    let device = crate::plugin::parse_device(name)?;
    keep_freed_memory(&device)?;
    Ok(device)
}

/// Lets `device`'s memory pool keep the memory freed to it instead of
/// handing it back to the driver at every synchronisation, which is the
/// pool's default (a release threshold of 0 bytes). A step synchronises
/// once, at its read, and then allocates the same few GiB again: with the
/// default, the pool would map them afresh every step. PyTorch's caching
/// allocator keeps freed memory the same way. False where there is no pool.
pub fn keep_freed_memory(device: &Device) -> Result<bool> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => super::cuda::memory::keep_freed_memory(d),
        _ => Ok(false),
    }
}

/// Restarts the high-water marks of `device`'s pool, so that a later
/// [`read`] covers only what ran since. False where there is nothing to
/// restart: the CPU, or a CUDA device without stream-ordered allocation.
pub fn reset_peak(device: &Device) -> Result<bool> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => super::cuda::memory::reset_peak(d),
        _ => Ok(false),
    }
}

/// The memory `device` takes; `None` on the CPU (the host's resident size
/// is `/proc`'s to tell) and on a CUDA device without a memory pool.
pub fn read(device: &Device) -> Result<Option<DeviceMemory>> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => super::cuda::memory::read(d),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_has_no_device_pool() {
        assert!(!keep_freed_memory(&Device::Cpu).unwrap());
        assert!(!reset_peak(&Device::Cpu).unwrap());
        assert!(matches!(open_device("cpu").unwrap(), Device::Cpu));
        assert!(open_device("gpu:0").is_err());
        assert_eq!(read(&Device::Cpu).unwrap(), None);
    }
}

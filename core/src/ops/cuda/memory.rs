//! The high-water marks of the memory pool a CUDA device's tensors come
//! from (see [`crate::ops::memory`]).

use candle_core::cuda::cudarc::driver::sys;
use candle_core::cuda::{CudaDevice, WrapErr};

use crate::ops::memory::DeviceMemory;

type R<T> = candle_core::Result<T>;

/// The pool `cuMemAllocAsync` on `dev`'s stream allocates from; `None`
/// where the device allocates synchronously (no pool, no marks).
fn pool(dev: &CudaDevice) -> R<Option<sys::CUmemoryPool>> {
    let stream = dev.cuda_stream();
    let ctx = stream.context();
    if !ctx.has_async_alloc() {
        return Ok(None);
    }
    ctx.bind_to_thread().w()?;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: `pool` is a valid out-pointer and the device comes from a live
    // context.
    unsafe { sys::cuDeviceGetMemPool(&mut pool, ctx.cu_device()) }.result().w()?;
    Ok(Some(pool))
}

fn attribute(pool: sys::CUmemoryPool, attr: sys::CUmemPool_attribute) -> R<u64> {
    let mut value: sys::cuuint64_t = 0;
    // SAFETY: the four memory-size attributes are `cuuint64_t`s, and `pool`
    // is the device's live pool.
    unsafe { sys::cuMemPoolGetAttribute(pool, attr, (&mut value as *mut sys::cuuint64_t).cast()) }.result().w()?;
    Ok(value)
}

pub(crate) fn keep_freed_memory(dev: &CudaDevice) -> R<bool> {
    let Some(pool) = pool(dev)? else { return Ok(false) };
    let mut threshold: sys::cuuint64_t = u64::MAX;
    let attr = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD;
    // SAFETY: the release threshold is a `cuuint64_t`; `pool` is live.
    unsafe { sys::cuMemPoolSetAttribute(pool, attr, (&mut threshold as *mut sys::cuuint64_t).cast()) }.result().w()?;
    Ok(true)
}

pub(crate) fn reset_peak(dev: &CudaDevice) -> R<bool> {
    let Some(pool) = pool(dev)? else { return Ok(false) };
    for attr in [
        sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
        sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH,
    ] {
        // A high-water mark can only be set to zero, which restarts it.
        let mut zero: sys::cuuint64_t = 0;
        // SAFETY: as in `attribute`.
        unsafe { sys::cuMemPoolSetAttribute(pool, attr, (&mut zero as *mut sys::cuuint64_t).cast()) }.result().w()?;
    }
    Ok(true)
}

pub(crate) fn read(dev: &CudaDevice) -> R<Option<DeviceMemory>> {
    let Some(pool) = pool(dev)? else { return Ok(None) };
    let (free, total) = dev.cuda_stream().context().mem_get_info().w()?;
    Ok(Some(DeviceMemory {
        peak_used: attribute(pool, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH)?,
        peak_reserved: attribute(pool, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH)?,
        device_used: (total - free) as u64,
        device_total: total as u64,
    }))
}

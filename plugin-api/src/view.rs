//! How a tensor crosses the boundary: through host memory, or device to
//! device when host and plugin compute on the same CUDA device.
//!
//! Every crossing copies (the receiver never holds the sender's memory past
//! the call). Which copy is a pure decision, [`crossing`], of where each
//! side computes and whether both were built with CUDA:
//!
//! - both on the same CUDA device, both built with CUDA: the view is a
//!   device pointer ([`VIEW_DEVICE`]) in that device's primary context —
//!   the one every Candle `CudaDevice` of that ordinal shares — and the
//!   receiver copies it device to device, ordered after the work queued on
//!   the sender's stream, and orders the sender's stream after the copy, so
//!   that the sender may free the buffer as soon as the call returns. No
//!   host synchronisation happens;
//! - anything else (the CPU, two different devices, a side built without
//!   CUDA): the sender copies to host memory and the receiver uploads it
//!   ([`VIEW_HOST`]), as before.
//!
//! The CUDA-only part is the few lines of [`Staged::new`] and [`receive`]
//! behind `#[cfg(feature = "cuda")]`; the decision and the descriptor are
//! plain code, tested on the CPU.

use candle_core::{DType, Device, DeviceLocation, Tensor};

use crate::abi::{FfiTensor, DTYPE_F32, VIEW_DEVICE, VIEW_HOST};
use crate::{Error, Result};

/// Where one side of the boundary computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// The CPU.
    Host,
    /// CUDA device `ordinal`.
    Cuda(usize),
    /// Another accelerator (Metal): always crossed through host memory.
    Other,
}

impl Site {
    /// The site of an open device.
    pub fn of(device: &Device) -> Self {
        match device.location() {
            DeviceLocation::Cpu => Self::Host,
            DeviceLocation::Cuda { gpu_id } => Self::Cuda(gpu_id),
            DeviceLocation::Metal { .. } => Self::Other,
        }
    }

    /// The site a device name (`cpu`, `cuda`, `cuda:N`, `metal:N`) names,
    /// without opening it.
    pub fn named(name: &str) -> Self {
        match name.split_once(':') {
            None if name == "cpu" => Self::Host,
            None if name == "cuda" => Self::Cuda(0),
            Some(("cuda", n)) => n.parse().map_or(Self::Other, Self::Cuda),
            _ => Self::Other,
        }
    }
}

/// One side of a crossing: where it computes, and whether its copy of this
/// crate was built with CUDA (a plugin's `features` fingerprint field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Side {
    /// Where it computes.
    pub site: Site,
    /// Whether it can read and write device pointers.
    pub cuda: bool,
}

impl Side {
    /// This build computing on `device`.
    pub fn this(device: &Device) -> Self {
        Self { site: Site::of(device), cuda: cfg!(feature = "cuda") }
    }
}

/// The path a tensor takes across the boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crossing {
    /// Copied to host memory, uploaded by the receiver.
    Host,
    /// Copied device to device on CUDA device `ordinal`.
    Device {
        /// The device both sides compute on.
        ordinal: usize,
    },
}

/// How tensors go from `from` to `to`: device to device only when both
/// compute on the same CUDA device and both were built with CUDA.
pub fn crossing(from: Side, to: Side) -> Crossing {
    match (from.site, to.site) {
        (Site::Cuda(a), Site::Cuda(b)) if a == b && from.cuda && to.cuda => Crossing::Device { ordinal: a },
        _ => Crossing::Host,
    }
}

/// A tensor made ready to lend as an [`FfiTensor`]: its `f32` elements in
/// host memory, or (CUDA builds) a contiguous `f32` copy on the device
/// whose pointer the view lends. Keep it alive while the view is in use.
#[derive(Debug)]
pub struct Staged {
    dims: Vec<usize>,
    data: Data,
}

#[derive(Debug)]
enum Data {
    Host(Vec<f32>),
    #[cfg(feature = "cuda")]
    Device {
        /// Holds the memory `ptr` points into.
        _tensor: Tensor,
        ptr: u64,
        ordinal: usize,
        stream: usize,
    },
}

impl Staged {
    /// Stages `t` for a crossing of kind `how`.
    pub fn new(t: &Tensor, how: Crossing) -> Result<Self> {
        let dims = t.dims().to_vec();
        match how {
            Crossing::Host => {
                // The host path copies through host memory by definition;
                // on a GPU it is the fallback for mismatched devices.
                #[allow(clippy::disallowed_methods, reason = "the host crossing is a read by definition")]
                let data = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                Ok(Self { dims, data: Data::Host(data) })
            }
            #[cfg(feature = "cuda")]
            Crossing::Device { .. } => {
                let tensor = t.to_dtype(DType::F32)?.contiguous()?;
                let (ptr, ordinal, stream) = cuda::pointer(&tensor)?;
                Ok(Self { dims, data: Data::Device { _tensor: tensor, ptr, ordinal, stream } })
            }
            #[cfg(not(feature = "cuda"))]
            Crossing::Device { ordinal } => Err(Error::Config(format!(
                "a device-to-device crossing on cuda:{ordinal} needs a build with the `cuda` feature"
            ))),
        }
    }

    /// The view, valid while `self` lives.
    pub fn view(&self) -> FfiTensor {
        match &self.data {
            Data::Host(data) => FfiTensor::borrow(data, &self.dims),
            #[cfg(feature = "cuda")]
            Data::Device { ptr, ordinal, stream, .. } => FfiTensor {
                kind: VIEW_DEVICE,
                dtype: DTYPE_F32,
                data: *ptr as usize as *const std::ffi::c_void,
                len: self.dims.iter().product(),
                dims: self.dims.as_ptr(),
                rank: self.dims.len(),
                ordinal: *ordinal as i32,
                stream: *stream as *mut std::ffi::c_void,
            },
        }
    }
}

/// What a view says, read into owned values: for checks, messages and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewInfo {
    /// [`VIEW_HOST`] or [`VIEW_DEVICE`] (or an unknown value from a bad peer).
    pub kind: u32,
    /// The element type code.
    pub dtype: u32,
    /// The data address or device pointer.
    pub data: usize,
    /// The dimensions.
    pub dims: Vec<usize>,
    /// The element count the view claims.
    pub len: usize,
    /// The CUDA ordinal (-1 for host).
    pub ordinal: i32,
    /// The stream handle.
    pub stream: usize,
}

impl FfiTensor {
    /// Reads the descriptor (not the data).
    ///
    /// # Safety
    /// `dims` must point to `rank` readable `usize`s (or `rank` be 0).
    pub unsafe fn info(&self) -> ViewInfo {
        ViewInfo {
            kind: self.kind,
            dtype: self.dtype,
            data: self.data as usize,
            // SAFETY: forwarded to the caller.
            dims: unsafe { self.dims() }.to_vec(),
            len: self.len,
            ordinal: self.ordinal,
            stream: self.stream as usize,
        }
    }
}

/// Builds the receiver's own tensor on `device` from a borrowed view: an
/// upload for a host view, a device-to-device copy for a device view.
///
/// # Safety
/// The view must describe memory that is valid for the call: `len`
/// readable `f32`s at `data` (in host memory, or on the view's device), and
/// `rank` readable dims.
pub unsafe fn receive(view: &FfiTensor, device: &Device) -> Result<Tensor> {
    // SAFETY: forwarded to the caller.
    let info = unsafe { view.info() };
    let bad = |what: String| Error::Config(format!("a tensor view from the other side {what}"));
    if info.dtype != DTYPE_F32 {
        return Err(bad(format!("has element type {}, expected f32 ({DTYPE_F32})", info.dtype)));
    }
    if info.dims.iter().product::<usize>() != info.len {
        return Err(bad(format!("claims {} elements for shape {:?}", info.len, info.dims)));
    }
    match info.kind {
        VIEW_HOST => {
            // SAFETY: forwarded to the caller.
            let (data, dims) = unsafe { view.parts() }.expect("a host f32 view, checked above");
            Ok(Tensor::from_slice(data, dims, device)?)
        }
        VIEW_DEVICE => {
            if Site::of(device) != Site::Cuda(info.ordinal.max(0) as usize) || info.ordinal < 0 {
                return Err(bad(format!("is on cuda:{} but this side computes on {device:?}", info.ordinal)));
            }
            #[cfg(feature = "cuda")]
            {
                // SAFETY: forwarded to the caller; the device matches.
                unsafe { cuda::receive(view, &info.dims, device) }
            }
            #[cfg(not(feature = "cuda"))]
            Err(bad("is a device pointer, and this side was built without the `cuda` feature; \
                     rebuild it with `--features cuda`"
                .into()))
        }
        other => Err(bad(format!("has unknown kind {other}"))),
    }
}

/// The CUDA half: pointers out of Candle tensors, and the stream-ordered
/// device-to-device copy (cudarc's raw driver calls through Candle's
/// `CudaDevice`/`CudaStorage`).
#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::{result, sys, CudaSlice, DevicePtr, DevicePtrMut, DriverError};
    use candle_core::cuda_backend::{CudaDevice, CudaStorage};
    use candle_core::op::BackpropOp;
    use candle_core::{Device, Storage, Tensor};

    use crate::abi::FfiTensor;
    use crate::{Error, Result};

    fn driver(e: DriverError) -> Error {
        Error::Other(Box::new(e))
    }

    fn cuda_device(device: &Device) -> Result<&CudaDevice> {
        match device {
            Device::Cuda(d) => Ok(d),
            other => Err(Error::Config(format!("expected a CUDA device, got {other:?}"))),
        }
    }

    /// The device pointer of a contiguous `f32` CUDA tensor (its offset
    /// included), its device's ordinal, and the stream its work is queued on.
    pub(super) fn pointer(t: &Tensor) -> Result<(u64, usize, usize)> {
        let dev = cuda_device(t.device())?;
        let stream = dev.cuda_stream();
        let (storage, layout) = t.storage_and_layout();
        let Storage::Cuda(s) = &*storage else {
            return Err(Error::Config("a CUDA tensor without CUDA storage".into()));
        };
        let slice = s.as_cuda_slice::<f32>()?;
        let (ptr, _read) = slice.device_ptr(&stream);
        let offset = (layout.start_offset() * std::mem::size_of::<f32>()) as u64;
        Ok((ptr + offset, stream.context().ordinal(), stream.cu_stream() as usize))
    }

    /// Makes `waiter` wait for the work queued so far on `first`.
    ///
    /// # Safety
    /// Both must be live streams of the current context.
    unsafe fn order(first: sys::CUstream, waiter: sys::CUstream) -> Result<()> {
        let event = result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING).map_err(driver)?;
        // SAFETY: the event was just created; the streams are live (caller).
        unsafe {
            result::event::record(event, first).map_err(driver)?;
            result::stream::wait_event(waiter, event, sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT)
                .map_err(driver)?;
            // The wait is queued; destroying the event now is allowed.
            result::event::destroy(event).map_err(driver)
        }
    }

    /// Copies the device view into a fresh tensor on `device`: the copy is
    /// queued on `device`'s stream after the work queued on the view's
    /// stream, and the view's stream then waits for the copy, so its owner
    /// may free (stream-ordered) the memory once the call returns.
    ///
    /// # Safety
    /// The view must point to `len` `f32`s on this device, written by work
    /// queued on its `stream`, a live stream of the device's primary context.
    pub(super) unsafe fn receive(view: &FfiTensor, dims: &[usize], device: &Device) -> Result<Tensor> {
        let dev = cuda_device(device)?;
        let stream = dev.cuda_stream();
        let (src, theirs, ours) = (view.data as usize as u64, view.stream as sys::CUstream, stream.cu_stream());
        // SAFETY: every element is written by the copy below before any read.
        let mut dst: CudaSlice<f32> = unsafe { stream.alloc::<f32>(view.len) }.map_err(driver)?;
        {
            let (dst_ptr, _write) = dst.device_ptr_mut(&stream);
            // SAFETY: the caller vouches for the view; `dst` holds `len`
            // elements; the streams are ordered around the copy.
            unsafe {
                if theirs != ours {
                    order(theirs, ours)?;
                }
                result::memcpy_dtod_async(dst_ptr, src, view.len * std::mem::size_of::<f32>(), ours).map_err(driver)?;
                if theirs != ours {
                    order(ours, theirs)?;
                }
            }
        }
        let storage = CudaStorage::wrap_cuda_slice(dst, dev.clone());
        Ok(Tensor::from_storage(Storage::Cuda(storage), dims, BackpropOp::none(), false))
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use std::ffi::c_void;

    use super::*;
    use crate::abi::{FfiBatch, RStr, Sink, Slot};

    const CPU: Side = Side { site: Site::Host, cuda: false };

    fn cuda(ordinal: usize, built_with_cuda: bool) -> Side {
        Side { site: Site::Cuda(ordinal), cuda: built_with_cuda }
    }

    #[test]
    fn the_same_cuda_device_crosses_device_to_device() {
        assert_eq!(crossing(cuda(0, true), cuda(0, true)), Crossing::Device { ordinal: 0 });
        assert_eq!(crossing(cuda(3, true), cuda(3, true)), Crossing::Device { ordinal: 3 });
    }

    #[test]
    fn everything_else_crosses_through_host_memory() {
        assert_eq!(crossing(CPU, CPU), Crossing::Host);
        // Different ordinals.
        assert_eq!(crossing(cuda(0, true), cuda(1, true)), Crossing::Host);
        // A CUDA host and a plugin built without CUDA, either way round.
        assert_eq!(crossing(cuda(0, true), cuda(0, false)), Crossing::Host);
        assert_eq!(crossing(cuda(0, false), cuda(0, true)), Crossing::Host);
        // A CUDA host and a plugin computing on the CPU.
        assert_eq!(crossing(cuda(0, true), Side { site: Site::Host, cuda: true }), Crossing::Host);
        assert_eq!(crossing(Side { site: Site::Other, cuda: true }, cuda(0, true)), Crossing::Host);
    }

    #[test]
    fn sites_are_read_from_device_names_without_opening_them() {
        assert_eq!(Site::named("cpu"), Site::Host);
        assert_eq!(Site::named("cuda"), Site::Cuda(0));
        assert_eq!(Site::named("cuda:2"), Site::Cuda(2));
        assert_eq!(Site::named("metal:0"), Site::Other);
        assert_eq!(Site::named("cuda:x"), Site::Other);
        assert_eq!(Site::of(&Device::Cpu), Site::Host);
        assert_eq!(Side::this(&Device::Cpu), Side { site: Site::Host, cuda: cfg!(feature = "cuda") });
    }

    #[test]
    fn a_host_crossing_stages_the_elements_and_reads_back() -> Result<()> {
        let t = Tensor::arange(0f32, 6.0, &Device::Cpu)?.reshape((2, 3))?.t()?;
        let staged = Staged::new(&t, Crossing::Host)?;
        let view = staged.view();
        // SAFETY: `staged` lives.
        let back = unsafe { receive(&view, &Device::Cpu) }?;
        assert_eq!(back.dims(), [3, 2]);
        assert_eq!(back.to_vec2::<f32>()?, t.to_vec2::<f32>()?);
        Ok(())
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_device_crossing_needs_a_cuda_build() {
        let t = Tensor::zeros(2, DType::F32, &Device::Cpu).expect("a tensor");
        let msg = Staged::new(&t, Crossing::Device { ordinal: 0 }).unwrap_err().to_string();
        assert!(msg.contains("`cuda` feature"), "{msg}");
    }

    /// A device view as the host lends it: a fake device pointer and
    /// stream, never dereferenced.
    fn device_view(dims: &[usize]) -> FfiTensor {
        FfiTensor {
            kind: VIEW_DEVICE,
            dtype: DTYPE_F32,
            data: 0x7f00_dead_0000usize as *const c_void,
            len: dims.iter().product(),
            dims: dims.as_ptr(),
            rank: dims.len(),
            ordinal: 1,
            stream: 0x2usize as *mut c_void,
        }
    }

    /// The descriptor crosses unchanged through the C calling convention,
    /// as part of a batch (host to plugin) and through a sink callback
    /// (plugin to host).
    #[test]
    fn a_device_view_round_trips_through_the_abi() {
        let dims = [2usize, 3, 4, 4];
        let view = device_view(&dims);
        // SAFETY: `dims` lives.
        let sent = unsafe { view.info() };
        assert_eq!(
            sent,
            ViewInfo {
                kind: VIEW_DEVICE,
                dtype: DTYPE_F32,
                data: 0x7f00_dead_0000,
                dims: dims.to_vec(),
                len: 96,
                ordinal: 1,
                stream: 2
            }
        );

        extern "C" fn read_batch(b: *const FfiBatch, out: *mut ViewInfo) {
            // SAFETY: the test passes a valid batch and output.
            unsafe { *out = (*b).x_edit.info() };
        }
        let host = [0f32; 2];
        let host_dims = [2usize];
        let h = FfiTensor::borrow(&host, &host_dims);
        let batch = FfiBatch {
            x: h,
            x_edit: view,
            w: h,
            u: h,
            alpha: std::ptr::null(),
            n_alpha: 0,
            direction: std::ptr::null(),
            n_direction: 0,
            prompt: RStr::borrow(""),
            has_features: 0,
            features_x: std::ptr::null(),
            n_features_x: 0,
            features_edit: std::ptr::null(),
            n_features_edit: 0,
            has_keys: 0,
            keys: std::ptr::null(),
            n_keys: 0,
        };
        let mut got = ViewInfo { kind: 9, dtype: 9, data: 0, dims: vec![], len: 0, ordinal: 0, stream: 0 };
        read_batch(&batch, &mut got);
        assert_eq!(got, sent);

        unsafe extern "C" fn text(_: *mut c_void, _: RStr) {}
        unsafe extern "C" fn tensor(ctx: *mut c_void, _: Slot, _: u32, t: FfiTensor) {
            // SAFETY: `ctx` is the test's `ViewInfo`; `t`'s dims are alive.
            unsafe { *ctx.cast::<ViewInfo>() = t.info() };
        }
        let mut got = ViewInfo { kind: 9, dtype: 9, data: 0, dims: vec![], len: 0, ordinal: 0, stream: 0 };
        let sink = Sink { ctx: (&mut got as *mut ViewInfo).cast(), text, tensor };
        // SAFETY: the callback's contract holds.
        unsafe { (sink.tensor)(sink.ctx, 0, 0, view) };
        assert_eq!(got, sent);
    }

    #[test]
    fn bad_views_are_refused_with_what_is_wrong() {
        let dims = [2usize, 3];
        let mut v = device_view(&dims);
        // SAFETY: nothing is dereferenced: every case fails its checks first.
        let msg = unsafe { receive(&v, &Device::Cpu) }.unwrap_err().to_string();
        assert!(msg.contains("cuda:1") && msg.contains("Cpu"), "{msg}");
        v.dtype = 7;
        let msg = unsafe { receive(&v, &Device::Cpu) }.unwrap_err().to_string();
        assert!(msg.contains("element type 7"), "{msg}");
        v.dtype = DTYPE_F32;
        v.len = 5;
        let msg = unsafe { receive(&v, &Device::Cpu) }.unwrap_err().to_string();
        assert!(msg.contains("5 elements"), "{msg}");
        v.len = 6;
        v.kind = 4;
        let msg = unsafe { receive(&v, &Device::Cpu) }.unwrap_err().to_string();
        assert!(msg.contains("unknown kind 4"), "{msg}");
    }
}

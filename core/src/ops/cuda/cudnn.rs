//! The convolutions through cuDNN: forward, and backward-data (the input
//! gradient, and the transposed convolution). Per device and thread, one
//! cuDNN handle, one workspace that grows to the largest size needed, and
//! one plan per geometry, dtype and precision: the descriptors and the
//! algorithm cuDNN's heuristics chose, made on first use.
//!
//! cuDNN handles are neither `Send` nor `Sync`, so the cache is per thread
//! (as Candle keeps its own cuDNN handles); the training loop runs its
//! networks on one thread, so each plan is made once.

use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;

use candle_core::cuda::cudarc::driver::{CudaSlice, CudaView};
use candle_core::cuda::{CudaDevice, CudaStorage, DeviceId};
use candle_core::{bail, DType, Layout, Tensor};
use cudarc::cudnn::safe::{ConvBackwardData, ConvDescriptor, ConvForward, Cudnn, FilterDescriptor, TensorDescriptor};
use cudarc::cudnn::{sys, CudnnError};

use super::{output, view, with_view};
use crate::ops::cpu::ConvGeom;
use crate::ops::precision::{precision, Precision};

type R<T> = candle_core::Result<T>;

/// Which cuDNN operation a plan runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Direction {
    /// `[B, c_in, h, w] → [B, c_out, oh, ow]`.
    Forward,
    /// Its adjoint in the input, `[B, c_out, oh, ow] → [B, c_in, h, w]`.
    BackwardData,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    direction: Direction,
    /// The convolution's input `[B, c_in, h, w]` and kernel
    /// `[c_out, c_in, kh, kw]`.
    input: [usize; 4],
    kernel: [usize; 4],
    stride: usize,
    padding: usize,
    dtype: DType,
    precision: Precision,
}

enum Algo {
    Forward(sys::cudnnConvolutionFwdAlgo_t),
    BackwardData(sys::cudnnConvolutionBwdDataAlgo_t),
}

/// The descriptors and algorithm of one convolution.
struct Plan {
    conv: ConvDescriptor<f32>,
    /// The convolution's input and output (for backward-data: `dx`, `dy`).
    x: TensorDescriptor<f32>,
    w: FilterDescriptor<f32>,
    y: TensorDescriptor<f32>,
    algo: Algo,
    workspace_bytes: usize,
}

/// A device's cuDNN state on this thread.
struct State {
    handle: Arc<Cudnn>,
    workspace: Option<CudaSlice<u8>>,
    plans: HashMap<Key, Plan>,
}

thread_local! {
    static STATES: RefCell<HashMap<DeviceId, State>> = RefCell::new(HashMap::new());
}

fn err(e: CudnnError) -> candle_core::Error {
    candle_core::Error::Msg(format!("cuDNN: {e:?}"))
}

fn dims_i32(d: [usize; 4]) -> R<[i32; 4]> {
    let mut out = [0i32; 4];
    for (o, v) in out.iter_mut().zip(d) {
        *o = i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("cuDNN: dimension {v} too large")))?;
    }
    Ok(out)
}

impl Plan {
    fn new(handle: &Arc<Cudnn>, key: &Key, output: [usize; 4]) -> R<Self> {
        let (s, p) = (key.stride as i32, key.padding as i32);
        let mode = sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION;
        let mut conv = handle.create_conv2d::<f32>([p, p], [s, s], [1, 1], mode).map_err(err)?;
        // As PyTorch sets it: the default math type lets cuDNN use TF32
        // tensor cores for float32 on Ampere and later; FMA math forbids it.
        let math = match key.precision {
            Precision::Tf32 => sys::cudnnMathType_t::CUDNN_DEFAULT_MATH,
            Precision::Fp32 => sys::cudnnMathType_t::CUDNN_FMA_MATH,
        };
        conv.set_math_type(math).map_err(err)?;
        let nchw = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
        let x = handle.create_4d_tensor::<f32>(nchw, dims_i32(key.input)?).map_err(err)?;
        let w = handle.create_4d_filter::<f32>(nchw, dims_i32(key.kernel)?).map_err(err)?;
        let y = handle.create_4d_tensor::<f32>(nchw, dims_i32(output)?).map_err(err)?;
        let (algo, workspace_bytes) = match key.direction {
            Direction::Forward => {
                let op = ConvForward { conv: &conv, x: &x, w: &w, y: &y };
                let a = op.pick_algorithm().map_err(err)?;
                (Algo::Forward(a), op.get_workspace_size(a).map_err(err)?)
            }
            Direction::BackwardData => {
                let op = ConvBackwardData { conv: &conv, dx: &x, w: &w, dy: &y };
                let a = op.pick_algorithm().map_err(err)?;
                (Algo::BackwardData(a), op.get_workspace_size(a).map_err(err)?)
            }
        };
        Ok(Self { conv, x, w, y, algo, workspace_bytes })
    }

    /// Runs the plan: `src` is the operation's input (`x` forward, `dy`
    /// backward), `out` its output.
    ///
    /// # Safety
    /// `src`, `weight` and `out` hold exactly the elements the descriptors
    /// describe, and `workspace` at least `workspace_bytes`.
    unsafe fn launch(
        &self,
        workspace: Option<&mut CudaSlice<u8>>,
        src: &CudaView<'_, f32>,
        weight: &CudaView<'_, f32>,
        out: &mut CudaSlice<f32>,
    ) -> R<()> {
        let scale = (1f32, 0f32);
        match self.algo {
            Algo::Forward(a) => {
                let op = ConvForward { conv: &self.conv, x: &self.x, w: &self.w, y: &self.y };
                // SAFETY: the caller guarantees the buffers match the descriptors.
                unsafe { op.launch(a, workspace, scale, src, weight, out) }
            }
            Algo::BackwardData(a) => {
                let op = ConvBackwardData { conv: &self.conv, dx: &self.x, w: &self.w, dy: &self.y };
                // SAFETY: the caller guarantees the buffers match the descriptors.
                unsafe { op.launch(a, workspace, scale, out, weight, src) }
            }
        }
        .map_err(err)
    }
}

/// The convolution of geometry `g` (batch `b`) with the constant `weight`
/// `[c_out, c_in, kh, kw]`, in `direction`, on the contiguous f32 `src`.
pub(crate) fn convolve(
    direction: Direction,
    g: &ConvGeom,
    b: usize,
    (src, ls): (&CudaStorage, &Layout),
    weight: &Tensor,
) -> R<CudaSlice<f32>> {
    let dev: &CudaDevice = &src.device;
    let Some((oh, ow)) = g.out_hw() else { bail!("cuDNN convolution: the kernel does not fit {}x{}", g.h, g.w) };
    let key = Key {
        direction,
        input: [b, g.c_in, g.h, g.w],
        kernel: [g.c_out, g.c_in, g.kh, g.kw],
        stride: g.stride,
        padding: g.padding,
        dtype: DType::F32,
        precision: precision(),
    };
    let output_dims = [b, g.c_out, oh, ow];
    let out_len = match direction {
        Direction::Forward => output_dims.iter().product(),
        Direction::BackwardData => key.input.iter().product(),
    };
    let src = view(src, ls)?;
    let mut out = output(dev, out_len)?;
    STATES.with(|states| -> R<()> {
        let mut states = states.borrow_mut();
        let state = match states.entry(dev.id()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let handle = Cudnn::new(dev.cuda_stream()).map_err(err)?;
                e.insert(State { handle, workspace: None, plans: HashMap::new() })
            }
        };
        let plan = match state.plans.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(Plan::new(&state.handle, &key, output_dims)?),
        };
        let have = state.workspace.as_ref().map_or(0, |w| w.len());
        if plan.workspace_bytes > have {
            // SAFETY: scratch memory cuDNN writes before it reads.
            state.workspace = Some(unsafe { dev.alloc::<u8>(plan.workspace_bytes) }?);
        }
        let workspace = state.workspace.as_mut().filter(|_| plan.workspace_bytes > 0);
        // SAFETY: the descriptors were made for these shapes (the key), the
        // views are contiguous f32 of those sizes, the workspace is large
        // enough, and everything is ordered on the device's stream.
        with_view(weight, |w| unsafe { plan.launch(workspace, &src, &w, &mut out) })
    })?;
    Ok(out)
}

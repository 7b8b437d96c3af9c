//! The one device-to-host read of a training step.
//!
//! On a GPU every read of a tensor's elements waits for all the work queued
//! before it, so a step that reads each term's value, each gradient's
//! finiteness, the gradient norm and the update check one after another
//! stalls the device that many times. The engine instead keeps those
//! scalars on the device and reads them here, together, once at the end of
//! the step ([`scalars`]).
//!
//! Every other read is kept out of the step's code by `clippy.toml`'s
//! `disallowed-methods` (`to_scalar`, `to_vec0` … `to_vec3`, `synchronize`,
//! `TermOutput::value_f64`), which the modules on the step's path deny;
//! [`count`] lets a test check that a step reads exactly once.

use std::cell::Cell;

use candle_core::{DType, Tensor};

use crate::{Error, Result};

thread_local! {
    /// Reads made through [`scalars`] on this thread.
    static READS: Cell<u64> = const { Cell::new(0) };
}

/// The values of `scalars` (each a tensor of one element, of any dtype and
/// rank, all on one device) as `f64`s, read in one transfer.
pub fn scalars(scalars: &[Tensor]) -> Result<Vec<f64>> {
    READS.with(|r| r.set(r.get() + 1));
    if scalars.is_empty() {
        return Ok(Vec::new());
    }
    let flat = scalars
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if t.elem_count() != 1 {
                return Err(Error::BadShape {
                    name: format!("read-back scalar {i}"),
                    expected: "one element".into(),
                    got: t.dims().to_vec(),
                });
            }
            Ok(t.flatten_all()?.to_dtype(DType::F64)?)
        })
        .collect::<Result<Vec<_>>>()?;
    #[allow(clippy::disallowed_methods, reason = "this is the step's one read")]
    Ok(Tensor::cat(&flat, 0)?.to_vec1::<f64>()?)
}

/// How many times this thread has called [`scalars`]: the engine's reads.
pub fn count() -> u64 {
    READS.with(Cell::get)
}

/// `Σ 0·t`: 0 when every element of `t` is finite, NaN otherwise (`0·∞`
/// and `0·NaN` are NaN). Unlike a plain sum it cannot overflow to infinity
/// on large finite values, and it stays on the device.
pub fn finiteness(t: &Tensor) -> Result<Tensor> {
    Ok(t.detach().affine(0.0, 0.0)?.sum_all()?)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn reads_every_scalar_at_once_and_counts_the_read() -> Result<()> {
        let dev = Device::Cpu;
        let before = count();
        let got =
            scalars(&[Tensor::new(1.5f32, &dev)?, Tensor::new(&[[2.25f64]], &dev)?, Tensor::new(&[-3f32], &dev)?])?;
        assert_eq!(got, vec![1.5, 2.25, -3.0]);
        assert_eq!(count(), before + 1);
        let err = scalars(&[Tensor::new(&[1f32, 2.0], &dev)?]).unwrap_err().to_string();
        assert!(err.contains("read-back scalar 0") && err.contains("one element"), "{err}");
        Ok(())
    }

    #[test]
    fn finiteness_is_zero_for_finite_tensors_and_nan_otherwise() -> Result<()> {
        let dev = Device::Cpu;
        let probe = |v: &[f32]| -> Result<f64> { Ok(scalars(&[finiteness(&Tensor::new(v, &dev)?)?])?[0]) };
        assert_eq!(probe(&[1.0, -2.0, 0.0])?, 0.0);
        // A plain sum of these overflows f32; the probe does not.
        assert_eq!(probe(&[f32::MAX, f32::MAX])?, 0.0);
        assert!(probe(&[1.0, f32::INFINITY])?.is_nan());
        assert!(probe(&[f32::NEG_INFINITY, 1.0])?.is_nan());
        assert!(probe(&[f32::NAN])?.is_nan());
        Ok(())
    }
}

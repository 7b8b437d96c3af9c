//! Helpers for the ops' tests: seeded random tensors and a closeness check.

use candle_core::{DType, Device, Shape, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::Result;

/// A standard-normal tensor on the CPU, the same for the same seed.
pub(crate) fn randn(seed: u64, shape: impl Into<Shape>, dtype: DType) -> Result<Tensor> {
    let shape = shape.into();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let data: Vec<f64> = (0..shape.elem_count()).map(|_| StandardNormal.sample(&mut rng)).collect();
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?.to_dtype(dtype)?)
}

/// Panics unless `actual` and `expected` have one shape and
/// `max |actual - expected| <= tol · max(1, max |expected|)`.
pub(crate) fn assert_close(actual: &Tensor, expected: &Tensor, tol: f64, what: &str) -> Result<()> {
    assert_eq!(actual.dims(), expected.dims(), "{what}: shapes differ");
    let a = actual.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let e = expected.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    assert!(a.iter().all(|v| v.is_finite()), "{what}: non-finite values");
    let scale = e.iter().fold(1f64, |m, v| m.max(v.abs()));
    let err = a.iter().zip(&e).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
    assert!(err <= tol * scale, "{what}: max error {err:e} > {tol:e} · {scale}");
    Ok(())
}

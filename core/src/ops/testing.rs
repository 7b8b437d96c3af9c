//! Helpers for the ops' tests: seeded random tensors, closeness checks,
//! gradients of `sum(f(x) · r)` and their finite-difference check.

use candle_core::{DType, Device, Shape, Tensor, Var};
use rand::{Rng, SeedableRng};
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
    let finite = actual.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?.iter().all(|v| v.is_finite());
    assert!(finite, "{what}: non-finite values");
    let err = rel_diff(actual, expected)?;
    assert!(err <= tol, "{what}: relative max error {err:e} > {tol:e}");
    Ok(())
}

/// A seeded stream of uniform `[-1, 1)` tensors.
pub(crate) struct Draw(ChaCha8Rng);

impl Draw {
    pub fn new(seed: u64) -> Self {
        Self(ChaCha8Rng::seed_from_u64(seed))
    }

    pub fn tensor(&mut self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| self.0.random_range(-1.0..1.0)).collect();
        Ok(Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)?)
    }
}

/// `max |a − b| / max(1, max |b|)`.
pub(crate) fn rel_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    assert_eq!(a.dims(), b.dims());
    let a = a.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let b = b.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let scale = b.iter().fold(1f64, |m, v| m.max(v.abs()));
    Ok(a.iter().zip(&b).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale)
}

/// `f(x)` and the gradient of `sum(f(x) · r)` with respect to `x`.
pub(crate) fn value_and_grad(
    x: &Tensor,
    r: &Tensor,
    f: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<(Tensor, Tensor)> {
    let var = Var::from_tensor(x)?;
    let y = f(var.as_tensor())?;
    let grads = (&y * r)?.sum_all()?.backward()?;
    let g = grads.get(var.as_tensor()).expect("the input takes part").clone();
    Ok((y.detach(), g))
}

/// Checks the gradient of `sum(f(x) · r)` at every entry of `x` (f64)
/// against central differences.
pub(crate) fn check_finite_differences(x: &Tensor, r: &Tensor, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<()> {
    let (_, g) = value_and_grad(x, r, &f)?;
    let g = g.flatten_all()?.to_vec1::<f64>()?;
    let base = x.flatten_all()?.to_vec1::<f64>()?;
    let loss = |v: Vec<f64>| -> Result<f64> {
        let x = Tensor::from_vec(v, x.dims(), x.device())?;
        Ok((f(&x)? * r)?.sum_all()?.to_scalar::<f64>()?)
    };
    let h = 1e-3;
    for (i, &gi) in g.iter().enumerate() {
        let (mut up, mut down) = (base.clone(), base.clone());
        up[i] += h;
        down[i] -= h;
        let fd = (loss(up)? - loss(down)?) / (2.0 * h);
        assert!((fd - gi).abs() <= 1e-8 * (1.0 + fd.abs()), "entry {i}: fd {fd} vs backward {gi}");
    }
    Ok(())
}

//! The runtime parity probe of the fast kernels off the CPU.
//!
//! The first time an op kind runs on a device (per op, device, dtype and
//! precision), its fast kernel and the stock-Candle composition it replaces
//! run on one small random input, forward and input gradients; if they
//! differ by more than the op's tolerance, the op uses the stock
//! composition from then on, and one warning names the op and the error.
//! A kernel that fails to launch is treated the same way. The outcome is
//! remembered for the life of the process.
//!
//! The logic ([`Memo::passes`]) is independent of the device, so it is
//! tested on the CPU with deliberately wrong "fast" closures.

// A probe reads its two results once per op and device, before the op is
// first used; never again in a step.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use candle_core::{DType, Device, Shape, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::precision::{precision, Precision};
use crate::Result;

/// What a probe outcome is remembered for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProbeKey {
    /// The op kind, e.g. `conv2d`.
    pub op: &'static str,
    /// The device, as `Device::location` prints it.
    pub device: String,
    /// The dtype it ran in.
    pub dtype: DType,
    /// The precision products ran at.
    pub precision: Precision,
}

impl ProbeKey {
    /// The key of `op` on `xs`'s device and dtype under the current precision.
    pub fn new(op: &'static str, xs: &Tensor) -> Self {
        Self { op, device: format!("{:?}", xs.device().location()), dtype: xs.dtype(), precision: precision() }
    }
}

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Within tolerance: the fast kernel is used. The largest relative error.
    Kept(f64),
    /// The stock composition is used from now on, for this reason.
    Rejected(String),
}

/// Probe outcomes by key.
#[derive(Debug, Default)]
pub struct Memo(Mutex<HashMap<ProbeKey, Outcome>>);

impl Memo {
    /// The remembered outcome for `key`, if it was probed.
    pub fn outcome(&self, key: &ProbeKey) -> Option<Outcome> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned()
    }

    /// Whether the fast kernel may be used for `key`: the remembered
    /// outcome, or, the first time, the comparison of `fast` with `stock`
    /// (each returns the tensors to compare, pairwise), accepted when every
    /// pair is finite and `max |fast − stock| / max(1, max |stock|) ≤ tol`.
    /// A rejection prints one warning.
    ///
    /// The closures run without the lock held, so a probe may itself run
    /// other ops; two threads probing one key at once may both run it.
    pub fn passes(
        &self,
        key: &ProbeKey,
        tol: f64,
        fast: impl FnOnce() -> Result<Vec<Tensor>>,
        stock: impl FnOnce() -> Result<Vec<Tensor>>,
    ) -> bool {
        if let Some(outcome) = self.outcome(key) {
            return matches!(outcome, Outcome::Kept(_));
        }
        let outcome = compare(tol, fast, stock);
        if let Outcome::Rejected(why) = &outcome {
            eprintln!(
                "warning: {} on {} ({:?}, {}): {why}; using the stock Candle composition for it from now on",
                key.op, key.device, key.dtype, key.precision
            );
        }
        let kept = matches!(outcome, Outcome::Kept(_));
        self.0.lock().unwrap_or_else(|e| e.into_inner()).entry(key.clone()).or_insert(outcome);
        kept
    }
}

fn compare(
    tol: f64,
    fast: impl FnOnce() -> Result<Vec<Tensor>>,
    stock: impl FnOnce() -> Result<Vec<Tensor>>,
) -> Outcome {
    let fast = match fast() {
        Ok(f) => f,
        Err(e) => return Outcome::Rejected(format!("the fast kernel failed: {e}")),
    };
    let stock = match stock() {
        Ok(s) => s,
        Err(e) => return Outcome::Rejected(format!("the stock composition failed, nothing to compare with: {e}")),
    };
    if fast.len() != stock.len() {
        return Outcome::Rejected(format!("{} results against {}", fast.len(), stock.len()));
    }
    let mut worst = 0f64;
    for (i, (a, b)) in fast.iter().zip(&stock).enumerate() {
        match max_rel_error(a, b) {
            Ok(e) if e.is_finite() && e <= tol => worst = worst.max(e),
            Ok(e) => return Outcome::Rejected(format!("result {i} differs by {e:e} (tolerance {tol:e})")),
            Err(e) => return Outcome::Rejected(format!("result {i} cannot be compared: {e}")),
        }
    }
    Outcome::Kept(worst)
}

/// `max |a − b| / max(1, max |b|)`, on the CPU in f64; infinite when a
/// value is not finite or the shapes differ.
pub fn max_rel_error(a: &Tensor, b: &Tensor) -> Result<f64> {
    if a.dims() != b.dims() {
        return Ok(f64::INFINITY);
    }
    let host = |t: &Tensor| -> Result<Vec<f64>> {
        Ok(t.to_device(&Device::Cpu)?.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
    };
    let (a, b) = (host(a)?, host(b)?);
    if a.iter().chain(&b).any(|v| !v.is_finite()) {
        return Ok(f64::INFINITY);
    }
    let scale = b.iter().fold(1f64, |m, v| m.max(v.abs()));
    Ok(a.iter().zip(&b).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale)
}

/// The process-wide memo of the ops' probes.
pub fn memo() -> &'static Memo {
    static MEMO: OnceLock<Memo> = OnceLock::new();
    MEMO.get_or_init(Memo::default)
}

/// Whether the op `op` may run its fast kernel on `xs`'s device:
/// [`Memo::passes`] on the process-wide memo.
pub(crate) fn fast_kernel_passes(
    op: &'static str,
    xs: &Tensor,
    tol: f64,
    fast: impl FnOnce() -> Result<Vec<Tensor>>,
    stock: impl FnOnce() -> Result<Vec<Tensor>>,
) -> bool {
    memo().passes(&ProbeKey::new(op, xs), tol, fast, stock)
}

/// The probes' tolerance for an op whose products follow the precision
/// (convolutions): TF32 rounds the operands to 10-bit mantissas.
pub(crate) fn product_tolerance() -> f64 {
    match precision() {
        Precision::Tf32 => 1e-2,
        Precision::Fp32 => 1e-4,
    }
}

/// The probes' tolerance for element-wise ops (float32 arithmetic in
/// another order).
pub(crate) const ELEMENTWISE_TOLERANCE: f64 = 1e-4;

/// A seeded uniform `[-1, 1)` tensor on `device`, for probe inputs.
pub(crate) fn uniform(seed: u64, shape: impl Into<Shape>, dtype: DType, device: &Device) -> Result<Tensor> {
    let shape = shape.into();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f32> = (0..shape.elem_count()).map(|_| rng.random_range(-1.0..1.0)).collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)?.to_device(device)?)
}

/// `f(args)` and the gradient of `sum(f(args) · r)` with respect to each
/// argument, all detached: `[f(args), ∇₀, ∇₁, …]`.
pub(crate) fn value_and_grads(
    args: &[Tensor],
    r: &Tensor,
    f: impl FnOnce(&[Tensor]) -> Result<Tensor>,
) -> Result<Vec<Tensor>> {
    let vars = args.iter().map(Var::from_tensor).collect::<candle_core::Result<Vec<_>>>()?;
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts)?;
    let grads = (&y * r)?.sum_all()?.backward()?;
    let mut out = vec![y.detach()];
    for t in &ts {
        let g = grads.get(t).ok_or_else(|| crate::Error::Config("an argument got no gradient".into()))?;
        out.push(g.detach());
    }
    Ok(out)
}

/// Whether `xs` and the constants `weights` are f32 on one CUDA device
/// (the dtype the CUDA kernels take); always false without the `cuda`
/// feature.
pub(crate) fn cuda_applies(xs: &Tensor, weights: &[Option<&Tensor>]) -> bool {
    cfg!(feature = "cuda")
        && xs.device().is_cuda()
        && xs.dtype() == DType::F32
        && xs.elem_count() > 0
        && weights.iter().flatten().all(|w| w.device().same_device(xs.device()) && w.dtype() == DType::F32)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    fn key(op: &'static str) -> ProbeKey {
        ProbeKey { op, device: "Cpu".into(), dtype: DType::F32, precision: Precision::Fp32 }
    }

    fn x() -> Result<Tensor> {
        uniform(1, (2, 3, 4), DType::F32, &Device::Cpu)
    }

    #[test]
    fn a_wrong_fast_kernel_is_caught_and_the_stock_path_used() -> Result<()> {
        let memo = Memo::default();
        let stock = || Ok(vec![(x()? * 2.0)?]);
        // Off by 1 % of the largest value: beyond a 1e-4 tolerance.
        let wrong = || Ok(vec![(x()? * 2.02)?]);
        assert!(!memo.passes(&key("scale"), 1e-4, wrong, stock));
        match memo.outcome(&key("scale")) {
            Some(Outcome::Rejected(why)) => assert!(why.contains("differs by"), "{why}"),
            other => panic!("expected a rejection, got {other:?}"),
        }
        // A failing kernel and a non-finite one are rejected too.
        assert!(!memo.passes(&key("fails"), 1e-4, || Err(crate::Error::Config("no kernel".into())), stock));
        let nan = || Ok(vec![(x()? * f64::NAN)?]);
        assert!(!memo.passes(&key("nan"), 1e-4, nan, stock));
        let shape = || Ok(vec![x()?.flatten_all()?]);
        assert!(!memo.passes(&key("shape"), 1e-4, shape, stock));
        Ok(())
    }

    #[test]
    fn a_right_fast_kernel_is_kept() -> Result<()> {
        let memo = Memo::default();
        // The same values in another order of operations.
        let fast = || Ok(vec![(x()? + x()?)?, x()?.sum_all()?]);
        let stock = || Ok(vec![(x()? * 2.0)?, x()?.sum_keepdim(2)?.sum_all()?]);
        assert!(memo.passes(&key("double"), 1e-6, fast, stock));
        assert!(matches!(memo.outcome(&key("double")), Some(Outcome::Kept(e)) if e <= 1e-6));
        Ok(())
    }

    #[test]
    fn each_key_is_probed_once() -> Result<()> {
        let memo = Memo::default();
        let runs = Cell::new(0);
        let probe = |good: bool| {
            let memo = &memo;
            let runs = &runs;
            move |k: &ProbeKey| {
                memo.passes(
                    k,
                    1e-6,
                    || {
                        runs.set(runs.get() + 1);
                        Ok(vec![(x()? * if good { 1.0 } else { 3.0 })?])
                    },
                    || Ok(vec![x()?]),
                )
            }
        };
        for _ in 0..3 {
            assert!(probe(true)(&key("good")));
        }
        assert_eq!(runs.get(), 1, "a kept kernel is probed once");
        for _ in 0..3 {
            assert!(!probe(false)(&key("bad")));
        }
        assert_eq!(runs.get(), 2, "a rejected kernel is probed once");
        // Another precision is another key.
        let tf32 = ProbeKey { precision: Precision::Tf32, ..key("good") };
        assert!(probe(true)(&tf32));
        assert_eq!(runs.get(), 3);
        Ok(())
    }

    #[test]
    fn value_and_grads_returns_the_value_then_each_gradient() -> Result<()> {
        let (a, b) = (x()?, uniform(2, (2, 3, 4), DType::F32, &Device::Cpu)?);
        let r = uniform(3, (2, 3, 4), DType::F32, &Device::Cpu)?;
        let out = value_and_grads(&[a.clone(), b.clone()], &r, |t| Ok((&t[0] * &t[1])?))?;
        assert_eq!(out.len(), 3);
        assert!(max_rel_error(&out[0], &(&a * &b)?)? == 0.0);
        assert!(max_rel_error(&out[1], &(&b * &r)?)? == 0.0);
        assert!(max_rel_error(&out[2], &(&a * &r)?)? == 0.0);
        assert!(!cuda_applies(&a, &[]), "a CPU tensor takes the CPU kernels");
        Ok(())
    }
}

//! A linear layer with a constant weight: `xs · Wᵀ + b`, whose backward
//! computes only the input gradient `g · W`.
//!
//! On the CPU (f32, f64) it runs as two Candle custom ops that are each
//! other's adjoint, `LinearForward` and `LinearBackwardData`, each one
//! `gemm` over the flattened leading axes.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, WithDType};

use super::cpu;
use super::profile::{self, Family};
use crate::{Error, Result};

/// `weightᵀ` `[in, out]` (contiguous: the right-hand `gemm` operand as is)
/// and an optional bias `[out]`.
#[derive(Debug)]
struct LinearKernel {
    weight_t: Tensor,
    bias: Option<Tensor>,
    /// One product per row (see [`Linear::row_independent`]).
    per_row: bool,
}

impl LinearKernel {
    fn dims(&self) -> (usize, usize) {
        let d = self.weight_t.dims();
        (d[0], d[1])
    }
}

/// The same shape with the last axis resized to `last`, if the last axis is
/// `expect`.
fn with_last(shape: &Shape, expect: usize, last: usize) -> Option<Shape> {
    let mut dims = shape.dims().to_vec();
    let d = dims.last_mut().filter(|d| **d == expect)?;
    *d = last;
    Some(Shape::from(dims))
}

/// `[…, in] → […, out]` (plus the bias when `with_bias`); backward:
/// [`LinearBackwardData`].
struct LinearForward {
    kernel: Arc<LinearKernel>,
    with_bias: bool,
}

impl LinearForward {
    fn run<T: WithDType>(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<CpuStorage> {
        let (d_in, d_out) = self.kernel.dims();
        let x = cpu::slice::<T>(s, l)?;
        let bias = self.kernel.bias.as_ref().filter(|_| self.with_bias);
        let y = cpu::with_data(&self.kernel.weight_t, |w| {
            cpu::with_opt_data(bias, |b| {
                if self.kernel.per_row {
                    x.chunks(d_in.max(1)).flat_map(|row| cpu::linear(row, w, b, d_in, d_out)).collect()
                } else {
                    cpu::linear(x, w, b, d_in, d_out)
                }
            })
        })??;
        Ok(T::to_cpu_storage_owned(y))
    }
}

impl CustomOp1 for LinearForward {
    fn name(&self) -> &'static str {
        "lsd-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let _t = profile::scope(Family::Linear);
        let (d_in, d_out) = self.kernel.dims();
        let Some(shape) = with_last(l.shape(), d_in, d_out) else {
            candle_core::bail!("{}: input {:?} does not end in {d_in}", self.name(), l.dims())
        };
        let y = cpu::dispatch(s, self.name(), || self.run::<f32>(s, l), || self.run::<f64>(s, l))?;
        Ok((y, shape))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let op = LinearBackwardData { kernel: self.kernel.clone() };
        Ok(Some(grad.contiguous()?.apply_op1(op)?))
    }
}

/// The adjoint of [`LinearForward`] in its input, `[…, out] → […, in]`:
/// `g · W`. Backward: [`LinearForward`] without bias.
struct LinearBackwardData {
    kernel: Arc<LinearKernel>,
}

impl LinearBackwardData {
    fn run<T: WithDType>(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<CpuStorage> {
        let (d_in, d_out) = self.kernel.dims();
        let dy = cpu::slice::<T>(s, l)?;
        let dx = cpu::with_data(&self.kernel.weight_t, |w| cpu::linear_backward_data(dy, w, d_in, d_out))?;
        Ok(T::to_cpu_storage_owned(dx))
    }
}

impl CustomOp1 for LinearBackwardData {
    fn name(&self) -> &'static str {
        "lsd-linear-backward-data"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let _t = profile::scope(Family::Linear);
        let (d_in, d_out) = self.kernel.dims();
        let Some(shape) = with_last(l.shape(), d_out, d_in) else {
            candle_core::bail!("{}: gradient {:?} does not end in {d_out}", self.name(), l.dims())
        };
        let dx = cpu::dispatch(s, self.name(), || self.run::<f32>(s, l), || self.run::<f64>(s, l))?;
        Ok((dx, shape))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let op = LinearForward { kernel: self.kernel.clone(), with_bias: false };
        Ok(Some(grad.contiguous()?.apply_op1(op)?))
    }
}

/// `xs` `[…, in]` to `[…, out]` with a frozen `weight` `[out, in]` and
/// optional `bias` `[out]` (PyTorch's `nn.Linear` layout).
///
/// The backward pass computes the input gradient only: the weight and bias
/// are constants, even if they were loaded as `Var`s.
#[derive(Debug, Clone)]
pub struct Linear {
    kernel: Arc<LinearKernel>,
}

impl Linear {
    /// A linear layer with the constant `weight` `[out, in]`.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let (d_out, _) = weight.dims2()?;
        let bias = match bias {
            Some(b) if b.elem_count() != d_out => {
                return Err(Error::BadShape {
                    name: "linear bias".into(),
                    expected: format!("[{d_out}]"),
                    got: b.dims().to_vec(),
                })
            }
            Some(b) => Some(b.flatten_all()?.contiguous()?),
            None => None,
        };
        Ok(Self { kernel: Arc::new(LinearKernel { weight_t: weight.t()?.contiguous()?, bias, per_row: false }) })
    }

    /// The same layer computing each row of its input on its own, so that a
    /// row's output does not depend on the other rows: bit for bit the
    /// output of that row alone. (`gemm` takes a matrix-vector path for one
    /// row and blocks a product by its shape, so a row of a batched product
    /// can differ from the row alone in the last bit.) For small per-sample
    /// layers (a generator's styles), where the batch is a few rows.
    pub fn row_independent(self) -> Self {
        let k = &self.kernel;
        let kernel = LinearKernel { weight_t: k.weight_t.clone(), bias: k.bias.clone(), per_row: true };
        Self { kernel: Arc::new(kernel) }
    }

    /// `weightᵀ`, `[in, out]`.
    pub fn weight_t(&self) -> &Tensor {
        &self.kernel.weight_t
    }

    /// `xs` `[…, in]` to `[…, out]`.
    ///
    /// On the CPU in f32 and f64 this is one `gemm`; elsewhere, or for an
    /// input of the wrong width, [`Linear::forward_stock`].
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let k = &self.kernel;
        let fits = xs.dims().last() == Some(&k.dims().0);
        if !fits || !cpu::applies(xs, &[Some(&k.weight_t), k.bias.as_ref()]) {
            let _t = profile::scope(Family::Linear);
            return self.forward_stock(xs);
        }
        let op = LinearForward { kernel: k.clone(), with_bias: true };
        Ok(xs.contiguous()?.apply_op1(op)?)
    }

    /// The stock-Candle composition (`broadcast_matmul` + bias), the
    /// reference the fast kernel is tested against.
    pub fn forward_stock(&self, xs: &Tensor) -> Result<Tensor> {
        let ys = xs.broadcast_matmul(&self.kernel.weight_t)?;
        match &self.kernel.bias {
            Some(b) => Ok(ys.broadcast_add(b)?),
            None => Ok(ys),
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use candle_core::{DType, Var};

    use super::*;
    use crate::ops::testing::{check_finite_differences, rel_diff, value_and_grad, Draw};

    fn build(
        d: &mut Draw,
        lead: &[usize],
        d_in: usize,
        d_out: usize,
        bias: bool,
        dtype: DType,
    ) -> Result<(Linear, Tensor, Tensor)> {
        let lin =
            Linear::new(d.tensor(&[d_out, d_in], dtype)?, if bias { Some(d.tensor(&[d_out], dtype)?) } else { None })?;
        let x = d.tensor(&[lead, &[d_in]].concat(), dtype)?;
        let r = d.tensor(&[lead, &[d_out]].concat(), dtype)?;
        Ok((lin, x, r))
    }

    #[test]
    fn linear_matches_stock_forward_and_input_gradient() -> Result<()> {
        let mut d = Draw::new(11);
        let cases: [(&[usize], usize, usize, bool); 5] = [
            (&[1], 7, 5, true),
            (&[6], 33, 17, false),
            (&[2, 3], 16, 48, true),
            (&[2, 1, 5], 9, 4, false),
            (&[3, 50], 64, 96, true),
        ];
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-12)] {
            for (lead, d_in, d_out, bias) in cases {
                let (lin, x, r) = build(&mut d, lead, d_in, d_out, bias, dtype)?;
                let (y, g) = value_and_grad(&x, &r, |x| lin.forward(x))?;
                let (y_ref, g_ref) = value_and_grad(&x, &r, |x| lin.forward_stock(x))?;
                let (ey, eg) = (rel_diff(&y, &y_ref)?, rel_diff(&g, &g_ref)?);
                assert!(ey <= tol && eg <= tol, "{lead:?}x{d_in}->{d_out} {dtype:?}: forward {ey:e}, gradient {eg:e}");
            }
        }
        Ok(())
    }

    #[test]
    fn linear_gradient_matches_finite_differences() -> Result<()> {
        let mut d = Draw::new(12);
        let (lin, x, r) = build(&mut d, &[2, 3], 5, 4, true, DType::F64)?;
        check_finite_differences(&x, &r, |x| lin.forward(x))?;
        // A strided input goes through a copy first.
        check_finite_differences(&x.transpose(0, 1)?, &r.transpose(0, 1)?, |x| lin.forward(x))
    }

    /// The backward-data op's own gradient is the product without bias
    /// (they are adjoints): `∇ᵣ⟨bwd(r), x⟩ = x · Wᵀ`.
    #[test]
    fn linear_backward_data_is_differentiable() -> Result<()> {
        let mut d = Draw::new(13);
        let (lin, x, r) = build(&mut d, &[2, 3], 6, 4, true, DType::F64)?;
        let bwd = |g: &Tensor| Ok(g.apply_op1(LinearBackwardData { kernel: lin.kernel.clone() })?);
        let (dx, gr) = value_and_grad(&r, &x, bwd)?;
        let (_, dx_ref) = value_and_grad(&x, &r, |x| lin.forward_stock(x))?;
        let gr_ref = x.broadcast_matmul(lin.weight_t())?;
        assert!(rel_diff(&dx, &dx_ref)? <= 1e-12 && rel_diff(&gr, &gr_ref)? <= 1e-12);
        check_finite_differences(&r, &x, bwd)
    }

    /// A row-independent layer gives each row exactly its value alone, and
    /// the same function as the batched product.
    #[test]
    fn row_independent_rows_equal_rows_alone() -> Result<()> {
        let mut d = Draw::new(15);
        let (lin, x, r) = build(&mut d, &[5], 64, 48, true, DType::F32)?;
        let rows = lin.clone().row_independent();
        let y = rows.forward(&x)?;
        for i in 0..5 {
            let alone = rows.forward(&x.narrow(0, i, 1)?)?;
            let got = y.narrow(0, i, 1)?;
            assert_eq!(got.flatten_all()?.to_vec1::<f32>()?, alone.flatten_all()?.to_vec1::<f32>()?, "row {i}");
        }
        let (y_ref, g_ref) = value_and_grad(&x, &r, |x| lin.forward(x))?;
        let (y_rows, g_rows) = value_and_grad(&x, &r, |x| rows.forward(x))?;
        assert!(rel_diff(&y_rows, &y_ref)? <= 1e-5 && rel_diff(&g_rows, &g_ref)? <= 1e-5);
        Ok(())
    }

    #[test]
    fn linear_computes_no_weight_gradient_and_checks_shapes() -> Result<()> {
        let mut d = Draw::new(14);
        let w = Var::from_tensor(&d.tensor(&[3, 4], DType::F32)?)?;
        let lin = Linear::new(w.as_tensor().clone(), None)?;
        let x = Var::from_tensor(&d.tensor(&[2, 4], DType::F32)?)?;
        let grads = lin.forward(x.as_tensor())?.sum_all()?.backward()?;
        assert!(grads.get(x.as_tensor()).is_some());
        assert!(grads.get(w.as_tensor()).is_none(), "the weight is a constant");
        assert!(lin.forward(&d.tensor(&[2, 5], DType::F32)?).is_err());
        assert!(Linear::new(d.tensor(&[3, 4], DType::F32)?, Some(d.tensor(&[4], DType::F32)?)).is_err());
        Ok(())
    }
}

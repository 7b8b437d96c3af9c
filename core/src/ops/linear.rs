//! A linear layer with a constant weight: `xs · Wᵀ + b`, whose backward
//! computes only the input gradient `g · W`.

use candle_core::Tensor;

use crate::Result;

/// `xs` `[…, in]` to `[…, out]` with a frozen `weight` `[out, in]` and
/// optional `bias` `[out]` (PyTorch's `nn.Linear` layout).
#[derive(Debug, Clone)]
pub struct Linear {
    /// `weightᵀ`, `[in, out]`, contiguous.
    weight_t: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// A linear layer with the constant `weight` `[out, in]`.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        weight.dims2()?;
        Ok(Self { weight_t: weight.t()?.contiguous()?, bias })
    }

    /// `weightᵀ`, `[in, out]`.
    pub fn weight_t(&self) -> &Tensor {
        &self.weight_t
    }

    /// `xs` `[…, in]` to `[…, out]`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_stock(xs)
    }

    /// The stock-Candle composition (`broadcast_matmul` + bias), the
    /// reference the fast kernel is tested against.
    pub fn forward_stock(&self, xs: &Tensor) -> Result<Tensor> {
        let ys = xs.broadcast_matmul(&self.weight_t)?;
        match &self.bias {
            Some(b) => Ok(ys.broadcast_add(b)?),
            None => Ok(ys),
        }
    }
}

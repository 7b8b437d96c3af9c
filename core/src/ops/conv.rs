//! 2-D convolutions with a constant kernel: [`Conv2d`] (any kernel, stride
//! and padding) and the true stride-`s` transposed convolution
//! [`ConvTranspose2d`]. Each computes only its input gradient.

use candle_core::Tensor;

use crate::Result;

/// `conv2d(xs, weight, bias, stride, padding)` with a frozen `weight`
/// `[out, in, kh, kw]` and optional `bias` `[out]`; equal stride and
/// padding on both axes, one group, no dilation.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    /// A convolution with the given constant `weight` `[out, in, kh, kw]`.
    pub fn new(weight: Tensor, bias: Option<Tensor>, stride: usize, padding: usize) -> Result<Self> {
        weight.dims4()?;
        let weight = weight.contiguous()?;
        Ok(Self { weight, bias, stride, padding })
    }

    /// The kernel, `[out, in, kh, kw]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// `xs` `[B, in, H, W]` to `[B, out, (H + 2p - kh) / s + 1, …]`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_stock(xs)
    }

    /// The stock-Candle composition: Candle's `conv2d` (weight gradient and
    /// all). The reference the fast kernel is tested against.
    ///
    /// Candle's `Conv2D` backward derives the transposed convolution's
    /// `output_padding` from the height alone and applies it to the width
    /// too; a strided convolution whose height and width leave different
    /// remainders (e.g. 65 x 64 under a 7x7/2 stem) would get a wrongly
    /// sized input gradient. In that case the input is padded explicitly and
    /// cropped to the part the windows read, so that both remainders are
    /// zero. The forward values are identical either way.
    pub fn forward_stock(&self, xs: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = xs.dims4()?;
        let (s, p) = (self.stride, self.padding);
        let (kh, kw) = (self.weight.dim(2)?, self.weight.dim(3)?);
        let rem = |n: usize, k: usize| (n + 2 * p - k) % s;
        let ys = if s > 1 && (rem(h, kh) != 0 || rem(w, kw) != 0) {
            let used = |n: usize, k: usize| ((n + 2 * p - k) / s) * s + k;
            let xs = xs
                .pad_with_zeros(2, p, p)?
                .pad_with_zeros(3, p, p)?
                .narrow(2, 0, used(h, kh))?
                .narrow(3, 0, used(w, kw))?;
            xs.conv2d(&self.weight, 0, s, 1, 1)?
        } else {
            xs.conv2d(&self.weight, p, s, 1, 1)?
        };
        self.add_bias(ys)
    }

    fn add_bias(&self, ys: Tensor) -> Result<Tensor> {
        match &self.bias {
            Some(b) => Ok(ys.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?)?),
            None => Ok(ys),
        }
    }
}

/// `conv_transpose2d(xs, weight, stride, padding = 0)` with a frozen
/// `weight` in PyTorch's transposed layout `[in, out, k, k]`: every input
/// pixel scatters `weight[i, :, :, :]` into the output at `stride · (y, x)`.
/// Output `[B, out, (H - 1)·s + k, (W - 1)·s + k]`.
#[derive(Debug, Clone)]
pub struct ConvTranspose2d {
    weight: Tensor,
    stride: usize,
}

impl ConvTranspose2d {
    /// A transposed convolution with the constant `weight` `[in, out, k, k]`.
    pub fn new(weight: Tensor, stride: usize) -> Result<Self> {
        weight.dims4()?;
        Ok(Self { weight: weight.contiguous()?, stride })
    }

    /// `xs` `[B, in, H, W]` to `[B, out, (H - 1)·s + k, (W - 1)·s + k]`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_stock(xs)
    }

    /// The stock-Candle composition: zero-insertion to `(H - 1)·s + 1`,
    /// then a correlation with the flipped, transposed kernel padded by
    /// `k - 1` (the reference the fast kernel is tested against).
    pub fn forward_stock(&self, xs: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = xs.dims4()?;
        let (s, k) = (self.stride, self.weight.dim(2)?);
        let up = zero_insert(&zero_insert(xs, 2, s)?, 3, s)?;
        let up = up.narrow(2, 0, (h - 1) * s + 1)?.narrow(3, 0, (w - 1) * s + 1)?;
        let kernel = self.weight.transpose(0, 1)?.flip(&[2, 3])?.contiguous()?;
        Ok(up.conv2d(&kernel, k - 1, 1, 1, 1)?)
    }
}

/// Inserts `up - 1` zeros after every sample along `dim` (a size-`n` axis
/// becomes `up * n`), as `upfirdn2d`'s up-sampling step does.
pub fn zero_insert(xs: &Tensor, dim: usize, up: usize) -> Result<Tensor> {
    if up == 1 {
        return Ok(xs.clone());
    }
    let mut dims = xs.dims().to_vec();
    let xs = xs.unsqueeze(dim + 1)?;
    let mut zero_dims = xs.dims().to_vec();
    zero_dims[dim + 1] = up - 1;
    let zeros = Tensor::zeros(zero_dims, xs.dtype(), xs.device())?;
    dims[dim] *= up;
    Ok(Tensor::cat(&[&xs, &zeros], dim + 1)?.reshape(dims)?)
}

//! The gradient contract of a loss term: value plus gradients with respect
//! to each differentiable input ([`TermOutput`]), how they are computed in a
//! graph of their own ([`differentiate`]), and how the host chains them into
//! its graph ([`surrogate`]).
//!
//! A term is a function `ℓ(x_edit, w, u, f_edit)` of the inputs it is given
//! (`x` and the feature maps of `x` are constants). If `x_edit`, `w`, `u`
//! and `f_edit` are themselves functions of the trained parameters `θ` in
//! the host's graph, the chain rule gives
//!
//! ```text
//! ∂ℓ/∂θ = g_xᵀ ∂x_edit/∂θ + g_wᵀ ∂w/∂θ + g_uᵀ ∂u/∂θ + Σ_j g_fjᵀ ∂f_edit_j/∂θ
//! ```
//!
//! with `g_• = ∂ℓ/∂•` evaluated at the current inputs. That is exactly the
//! gradient of the *surrogate* `s(θ) = ⟨g_x, x_edit(θ)⟩ + ⟨g_w, w(θ)⟩ + …`
//! with the `g`s held constant, so one backward pass of `Σ_i λ_i s_i`
//! through the host's graph gives `Σ_i λ_i ∂ℓ_i/∂θ`. The surrogate's value
//! means nothing; the loss values come from [`TermOutput::value`].
//!
//! Nothing here reads a tensor back to the host: the value stays a tensor
//! on the term's device, so that a host on a GPU can read every value of a
//! step together with its checks, in one transfer.

use candle_core::{DType, Tensor, Var};

use super::api::{EditBatch, FeatureMaps, LossTerm};
use crate::{Error, Result};

/// A term's value and its gradients on one batch.
///
/// A gradient is `None` when the loss does not depend on that input (a
/// colour loss has no gradient with respect to `w`); otherwise it has the
/// input's shape.
#[derive(Debug, Clone)]
pub struct TermOutput {
    /// The loss value: a scalar tensor (no dimensions) on the device the
    /// term computed on, never read back here. [`TermOutput::value_f64`]
    /// reads it.
    pub value: Tensor,
    /// `∂ℓ/∂x_edit`.
    pub grad_x_edit: Option<Tensor>,
    /// `∂ℓ/∂w`.
    pub grad_w: Option<Tensor>,
    /// `∂ℓ/∂u`.
    pub grad_u: Option<Tensor>,
    /// `∂ℓ/∂f_edit_j` for each feature map of `x_edit` that was given.
    pub grad_features_edit: Vec<Option<Tensor>>,
}

impl TermOutput {
    /// Reads the value to the host as an `f64`. On a GPU this waits for
    /// every queued kernel: a training step never calls it, it reads all
    /// of its scalars at once (lsd-core's `readback`).
    pub fn value_f64(&self) -> Result<f64> {
        #[allow(clippy::disallowed_methods, reason = "the one explicit read of a value, for callers outside a step")]
        Ok(self.value.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?[0])
    }
}

/// Evaluates `term` on `batch` in a graph of its own: the differentiable
/// inputs are copied into fresh leaf variables (so nothing of the caller's
/// graph is reached), the loss is computed, and backward is run.
///
/// This is what the plugin adapter runs inside the plugin, and what the host
/// runs for an in-process term. The returned gradients are in the batch's
/// device and the loss's dtype.
pub fn differentiate(term: &dyn LossTerm, batch: &EditBatch) -> Result<TermOutput> {
    let leaf = |t: &Tensor| Var::from_tensor(&t.detach());
    let x_edit = leaf(&batch.x_edit)?;
    let w = leaf(&batch.w)?;
    let u = leaf(&batch.u)?;
    let features = match &batch.features {
        Some(f) => Some((
            f.x.iter().map(Tensor::detach).collect::<Vec<_>>(),
            f.x_edit.iter().map(leaf).collect::<candle_core::Result<Vec<_>>>()?,
        )),
        None => None,
    };
    let own = EditBatch {
        x: batch.x.detach(),
        x_edit: x_edit.as_tensor().clone(),
        w: w.as_tensor().clone(),
        u: u.as_tensor().clone(),
        alpha: batch.alpha.clone(),
        direction: batch.direction.clone(),
        prompt: batch.prompt.clone(),
        features: features
            .as_ref()
            .map(|(fx, fe)| FeatureMaps { x: fx.clone(), x_edit: fe.iter().map(|v| v.as_tensor().clone()).collect() }),
        keys: batch.keys.clone(),
    };
    let loss = term.loss(&own)?;
    if loss.elem_count() != 1 {
        return Err(Error::BadShape {
            name: "loss".into(),
            expected: "a scalar (one element); reduce it with mean_all() or sum_all()".into(),
            got: loss.dims().to_vec(),
        });
    }
    let loss = loss.flatten_all()?.squeeze(0)?;
    let grads = loss.backward()?;
    let get = |v: &Var| grads.get(v.as_tensor()).cloned();
    Ok(TermOutput {
        value: loss.detach(),
        grad_x_edit: get(&x_edit),
        grad_w: get(&w),
        grad_u: get(&u),
        grad_features_edit: features.map(|(_, fe)| fe.iter().map(get).collect()).unwrap_or_default(),
    })
}

/// The vector–Jacobian surrogate `Σ_i λ_i (⟨g_x,i, x_edit⟩ + ⟨g_w,i, w⟩ +
/// ⟨g_u,i, u⟩ + Σ_j ⟨g_f,ij, f_edit_j⟩)`, a scalar in the host's graph.
///
/// `batch` holds the host's tensors (still attached to the generator and
/// the trained parameters); `outputs[i]` and `weights[i]` are term `i`'s
/// output and weight. Calling `backward()` on the result gives the weighted
/// sum of the terms' gradients with respect to everything the batch depends
/// on (see the module docs). The gradients are cast to the input's dtype.
pub fn surrogate(outputs: &[TermOutput], weights: &[f64], batch: &EditBatch) -> Result<Tensor> {
    if outputs.len() != weights.len() {
        return Err(Error::Config(format!("surrogate: {} term outputs but {} weights", outputs.len(), weights.len())));
    }
    let mut parts = Vec::new();
    let mut add = |g: &Option<Tensor>, input: &Tensor, weight: f64, name: &str| -> Result<()> {
        let Some(g) = g else { return Ok(()) };
        if g.dims() != input.dims() {
            return Err(Error::BadShape {
                name: format!("gradient of {name}"),
                expected: format!("{:?}", input.dims()),
                got: g.dims().to_vec(),
            });
        }
        let g = g.detach().to_device(input.device())?.to_dtype(input.dtype())?;
        parts.push(((g * weight)? * input)?.sum_all()?);
        Ok(())
    };
    for (out, &weight) in outputs.iter().zip(weights) {
        add(&out.grad_x_edit, &batch.x_edit, weight, "x_edit")?;
        add(&out.grad_w, &batch.w, weight, "w")?;
        add(&out.grad_u, &batch.u, weight, "u")?;
        if !out.grad_features_edit.is_empty() {
            let maps = batch.features.as_ref().map(|f| f.x_edit.as_slice()).unwrap_or(&[]);
            if maps.len() != out.grad_features_edit.len() {
                return Err(Error::Config(format!(
                    "surrogate: {} feature gradients but the batch has {} feature maps",
                    out.grad_features_edit.len(),
                    maps.len()
                )));
            }
            for (j, (g, f)) in out.grad_features_edit.iter().zip(maps).enumerate() {
                add(g, f, weight, &format!("features.x_edit[{j}]"))?;
            }
        }
    }
    match parts.len() {
        0 => Ok(Tensor::zeros((), batch.x_edit.dtype(), batch.x_edit.device())?),
        _ => Ok(Tensor::stack(&parts, 0)?.sum_all()?),
    }
}

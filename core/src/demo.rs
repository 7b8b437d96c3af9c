//! Demo models: tiny random-weight networks built in code from a fixed seed.
//!
//! They make the whole pipeline (engine, plugins, TUI, experiments) run on a
//! fresh machine with no downloads. Their outputs mean nothing, and anything
//! that shows them says so ([`DEMO_LABEL`]).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::Result;

/// The label every view of a demo model carries.
pub const DEMO_LABEL: &str = "DEMO MODEL (random weights)";

/// The seed every demo network is drawn from, so that the host (previews,
/// `apply`, experiments) and every plugin build the same demo networks.
/// It is independent of a recipe's own seed, which only drives training.
/// Defined by the plugin SDK, which hands it to plugins in their context.
pub use lsd_plugin_api::DEMO_MODEL_SEED;

/// Draws named tensors from one seeded stream, for building demo weights
/// under the real checkpoint key names.
///
/// ChaCha8 is used because its output is fixed by its specification, so a
/// demo model is the same on every platform and every `rand` release.
pub struct SeededWeights {
    rng: ChaCha8Rng,
    tensors: HashMap<String, Tensor>,
}

impl SeededWeights {
    /// A new, empty set drawing from `seed`.
    pub fn new(seed: u64) -> Self {
        Self { rng: ChaCha8Rng::seed_from_u64(seed), tensors: HashMap::new() }
    }

    /// Adds `name` with entries `mean + std * N(0, 1)`.
    pub fn normal(&mut self, name: &str, shape: &[usize], mean: f32, std: f32) -> Result<()> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| {
                let z: f32 = StandardNormal.sample(&mut self.rng);
                mean + std * z
            })
            .collect();
        self.insert(name, Tensor::from_vec(data, shape, &Device::Cpu)?);
        Ok(())
    }

    /// Adds `name` with every entry equal to `value`.
    pub fn constant(&mut self, name: &str, shape: &[usize], value: f32) -> Result<()> {
        self.insert(name, Tensor::full(value, shape, &Device::Cpu)?);
        Ok(())
    }

    /// Adds a ready tensor.
    pub fn insert(&mut self, name: &str, t: Tensor) {
        self.tensors.insert(name.to_string(), t);
    }

    /// The tensors drawn so far.
    pub fn tensors(&self) -> &HashMap<String, Tensor> {
        &self.tensors
    }

    /// A `VarBuilder` over the drawn tensors, as f32 on `device`.
    pub fn into_var_builder(self, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_tensors(self.tensors, DType::F32, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_weights() -> Result<()> {
        let draw = |seed| -> Result<Vec<f32>> {
            let mut w = SeededWeights::new(seed);
            w.normal("a", &[4, 3], 0.0, 1.0)?;
            Ok(w.tensors()["a"].flatten_all()?.to_vec1()?)
        };
        assert_eq!(draw(7)?, draw(7)?);
        assert_ne!(draw(7)?, draw(8)?);
        Ok(())
    }
}

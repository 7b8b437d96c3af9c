//! Reading PyTorch checkpoints without executing pickle code.
//!
//! STOPGAP: this is a thin wrapper over `candle_core::pickle` (zip files with
//! contiguous tensors only) with the final signature; the real reader
//! (legacy format, strided tensors, nested dicts) replaces it.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;

use crate::{Error, Result};

/// Loads every tensor of a checkpoint (`.pt`/`.pth` torch zip or legacy
/// file, or `.safetensors`) onto the CPU, flattening nested dicts with `.`:
/// rosinality's `{'g_ema': {...}, 'latent_avg': T}` gives
/// `g_ema.style.1.weight`, …, `latent_avg`.
pub fn load(path: &Path) -> Result<HashMap<String, Tensor>> {
    let err = |e: candle_core::Error| Error::Checkpoint { path: path.to_path_buf(), reason: e.to_string() };
    if path.extension().is_some_and(|e| e == "safetensors") {
        return candle_core::safetensors::load(path, &candle_core::Device::Cpu).map_err(err);
    }
    match candle_core::pickle::read_all_with_key(path, Some("g_ema")) {
        Ok(v) if !v.is_empty() => {
            let mut out: HashMap<String, Tensor> =
                v.into_iter().map(|(k, t)| (format!("g_ema.{k}"), t)).collect();
            if let Ok(la) = candle_core::pickle::read_all_with_key(path, None) {
                out.extend(la);
            }
            Ok(out)
        }
        _ => Ok(candle_core::pickle::read_all(path).map_err(err)?.into_iter().collect()),
    }
}

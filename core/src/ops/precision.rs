//! The arithmetic precision of matrix products and convolutions on a GPU.
//!
//! `tf32` lets cuBLAS and cuDNN use TensorFloat-32 tensor cores (10-bit
//! mantissa products, float32 accumulation), as PyTorch's cuDNN convolutions
//! do by default; `fp32` keeps full float32 products. On the CPU every
//! product is float32 whatever the setting, so the choice only matters on a
//! CUDA device.
//!
//! The setting is process-wide: the frozen networks run inside the host and
//! inside each plugin library, and every one of them reads it from here (a
//! plugin is told the host's choice when it is created).

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};

use serde::{Deserialize, Serialize};

/// How products are computed on a GPU (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// TensorFloat-32 products, float32 accumulation (GPU default).
    Tf32,
    /// Full float32 products (CPU default, and the reference's exact arithmetic).
    Fp32,
}

impl Precision {
    /// The default on a device: `tf32` on CUDA, `fp32` elsewhere.
    pub fn default_for(device: &candle_core::Device) -> Self {
        if device.is_cuda() {
            Precision::Tf32
        } else {
            Precision::Fp32
        }
    }

    /// The spelling used in recipes and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Tf32 => "tf32",
            Precision::Fp32 => "fp32",
        }
    }

    fn code(self) -> u8 {
        match self {
            Precision::Tf32 => 1,
            Precision::Fp32 => 0,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tf32" => Ok(Precision::Tf32),
            "fp32" => Ok(Precision::Fp32),
            other => Err(format!("unknown precision '{other}'; expected 'tf32' or 'fp32'")),
        }
    }
}

static CURRENT: AtomicU8 = AtomicU8::new(0);

/// Sets the process-wide precision (see the module docs). With the `cuda`
/// feature this also sets Candle's switch for TF32 cuBLAS products of f32
/// matrices (each copy of Candle, in the host and in each plugin library,
/// has its own; each is set by its own call here). cuDNN convolutions read
/// [`precision`] when their plan is made.
pub fn set_precision(precision: Precision) {
    CURRENT.store(precision.code(), Ordering::Relaxed);
    #[cfg(feature = "cuda")]
    candle_core::cuda::set_gemm_reduced_precision_f32(precision == Precision::Tf32);
}

/// The process-wide precision; `fp32` until [`set_precision`] is called.
pub fn precision() -> Precision {
    match CURRENT.load(Ordering::Relaxed) {
        1 => Precision::Tf32,
        _ => Precision::Fp32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip_and_bad_ones_name_the_choices() {
        for p in [Precision::Tf32, Precision::Fp32] {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
            let yaml = yaml_serde::to_string(&p).unwrap();
            assert_eq!(yaml_serde::from_str::<Precision>(&yaml).unwrap(), p);
        }
        let err = "bf16".parse::<Precision>().unwrap_err();
        assert!(err.contains("'tf32' or 'fp32'"), "{err}");
        assert_eq!(Precision::default_for(&candle_core::Device::Cpu), Precision::Fp32);
    }
}

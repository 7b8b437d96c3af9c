//! `weights convert`: any supported torch checkpoint (zip or legacy pickle)
//! to safetensors, with the conversion itself done by lsd-core
//! (`lsd_core::torch::convert_to_safetensors`), then a reload of the output
//! to confirm every input tensor arrived with its shape.
//!
//! A StyleGAN2-ADA network pickle (`ffhq.pkl`) converts to its generator
//! alone (`G_ema`'s state dict, with its configuration in the metadata:
//! `lsd_core::models::stylegan2::ada::convert`), checked against the
//! layout that configuration implies.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// What a conversion did.
#[derive(Debug, Clone)]
pub struct ConvertSummary {
    /// The torch checkpoint read.
    pub input: PathBuf,
    /// The safetensors file written.
    pub output: PathBuf,
    /// Tensors in the output.
    pub tensors: usize,
    /// Size of the output in bytes.
    pub bytes: u64,
    /// lsd-core's own account of the conversion.
    pub details: String,
}

impl std::fmt::Display for ConvertSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} -> {}: {} tensors, {} bytes ({})",
            self.input.display(),
            self.output.display(),
            self.tensors,
            self.bytes,
            self.details
        )
    }
}

/// Converts `input` (torch `.pt`/`.pth`) into `output` (`.safetensors`).
pub fn convert(input: &Path, output: &Path) -> Result<ConvertSummary> {
    let fail = |reason: String| Error::Convert { input: input.to_path_buf(), reason };
    if !input.is_file() {
        return Err(fail("no such file".into()));
    }
    if output.extension().is_none_or(|e| e != "safetensors") {
        return Err(fail(format!("the output '{}' must end in .safetensors", output.display())));
    }
    if std::fs::canonicalize(input).ok() == std::fs::canonicalize(output).ok() {
        return Err(fail("input and output are the same file".into()));
    }
    run(input, output, &fail)
}

fn run(input: &Path, output: &Path, fail: &dyn Fn(String) -> Error) -> Result<ConvertSummary> {
    if lsd_core::torch::detect(input).ok() == Some(lsd_core::torch::Format::NetworkPickle) {
        return run_network_pickle(input, output, fail);
    }
    let details = lsd_core::torch::convert_to_safetensors(input, output).map_err(|e| fail(e.to_string()))?;
    let details = format!("{details:?}");
    // Reload both and compare: the output must hold every input tensor.
    let expected = crate::layout::Layout::from_checkpoint(input)?;
    let got = crate::layout::load_shapes(output).map_err(|e| fail(format!("the output does not load: {e}")))?;
    let status = expected.compare(&got, "");
    if !status.passed() {
        return Err(fail(format!("the output is incomplete: {status}")));
    }
    let bytes = std::fs::metadata(output).map_err(|e| Error::io("reading", output, e))?.len();
    Ok(ConvertSummary { input: input.to_path_buf(), output: output.to_path_buf(), tensors: got.len(), bytes, details })
}

/// The generator of a StyleGAN2-ADA network pickle to safetensors.
fn run_network_pickle(input: &Path, output: &Path, fail: &dyn Fn(String) -> Error) -> Result<ConvertSummary> {
    use lsd_core::models::stylegan2::ada;
    let summary = ada::convert(input, output).map_err(|e| fail(e.to_string()))?;
    let cfg = &summary.config;
    let expected = crate::layout::Layout {
        source: format!("{} of {}", ada::NETWORK, input.display()),
        keys: cfg.state_dict_shapes(),
    };
    let got = crate::layout::load_shapes(output).map_err(|e| fail(format!("the output does not load: {e}")))?;
    let status = expected.compare(&got, "");
    if !status.passed() || got.len() != expected.keys.len() {
        return Err(fail(format!("the output does not hold exactly the generator's tensors: {status}")));
    }
    let clamp = cfg.conv_clamp.map_or("none".to_string(), |c| c.to_string());
    let details = format!(
        "{} of a StyleGAN2-ADA network pickle: {}x{}, z {}, w {}, {} mapping layers, conv_clamp {clamp}; \
         configuration in the '{}' metadata; source sha256 {}",
        ada::NETWORK,
        cfg.img_resolution,
        cfg.img_resolution,
        cfg.z_dim,
        cfg.w_dim,
        cfg.mapping_layers,
        ada::CONFIG_KEY,
        summary.source_sha256
    );
    Ok(ConvertSummary {
        input: input.to_path_buf(),
        output: output.to_path_buf(),
        tensors: got.len(),
        bytes: summary.bytes,
        details,
    })
}

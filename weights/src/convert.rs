//! `weights convert`: any supported torch checkpoint (zip or legacy pickle)
//! to safetensors, with the conversion itself done by lsd-core
//! (`lsd_core::torch::convert_to_safetensors`), then a reload of the output
//! to confirm every input tensor arrived with its shape.

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

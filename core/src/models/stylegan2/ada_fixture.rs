//! Checks the StyleGAN2-ADA generator against a fixture directory in the
//! layout of `tests/fixtures/stylegan2-ada/` (see its README.md): the
//! mapping at ψ 1 and 0.7, synthesis with the stored (`const`) noise and
//! without noise, the end-to-end image, the gradient w.r.t. ws, every
//! layer's feature map, and the same synthesis on `network-clamp.pkl`,
//! whose clamp is active.
//!
//! Every size comes from the pickles, so directories of other
//! resolutions, widths and mapping depths run the same way. Each pickle
//! runs twice: as read from the `.pkl`, and after [`ada::convert`] to a
//! temporary safetensors file (case names prefixed `converted:`).
//!
//! Tolerances: 10 × the upstream code's own float32-vs-float64 error that
//! `config.json` states (`f32_vs_f64_max_abs`): the image's for the
//! forward cases (ws, images, feature maps), the gradient's for the
//! gradient.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};

use super::{ada, truncate, Generator, Noise};
use crate::fixture::{CaseResult, FixtureReport};
use crate::{Error, Result};

/// The fixture's network pickles: the main one and the one whose clamp cuts.
pub const NETWORK: &str = "network.pkl";
/// See [`NETWORK`].
pub const NETWORK_CLAMP: &str = "network-clamp.pkl";

/// Multiple of the stated float32 error allowed.
const TOLERANCE_FACTOR: f64 = 10.0;

/// Runs every case of the fixture directory `dir` on `device`.
pub fn check_fixture(dir: &Path, device: &Device) -> Result<FixtureReport> {
    let mut report = FixtureReport::new("stylegan2-ada");
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io("reading", &config_path, e))?;
    let config: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::Fixture { path: config_path.clone(), reason: e.to_string() })?;
    let stated = |key: &str| config["f32_vs_f64_max_abs"][key].as_f64().filter(|v| v.is_finite() && *v >= 0.0);
    let (Some(image_err), Some(grad_err)) = (stated("synthesis.const.image"), stated("grad.dloss_dws")) else {
        return Err(Error::Fixture {
            path: config_path,
            reason: "f32_vs_f64_max_abs needs 'synthesis.const.image' and 'grad.dloss_dws' (numbers)".into(),
        });
    };
    let feature_layers: Vec<String> = config["feature_layers"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    let cases_path = dir.join("cases.safetensors");
    if !cases_path.exists() {
        report.missing("cases.safetensors");
        return Ok(report);
    }
    let cases = candle_core::safetensors::load(&cases_path, device)?;
    let ctx = Cases {
        cases: &cases,
        forward_atol: TOLERANCE_FACTOR * image_err,
        grad_atol: TOLERANCE_FACTOR * grad_err,
        feature_layers: &feature_layers,
    };
    for (file, clamp) in [(NETWORK, false), (NETWORK_CLAMP, true)] {
        let path = dir.join(file);
        if !path.exists() {
            report.missing(file);
            continue;
        }
        let converted = scratch_file(file);
        let runs: [(String, Result<PathBuf>); 2] = [
            (format!("{file}:"), Ok(path.clone())),
            (format!("converted:{file}:"), ada::convert(&path, &converted).map(|_| converted.clone())),
        ];
        for (prefix, source) in runs {
            let loaded = source.and_then(|p| Generator::load(&p, device));
            match loaded {
                Ok((gen, Some(avg))) => {
                    let mut run = Run { ctx: &ctx, gen: &gen, avg: &avg, prefix: &prefix, report: &mut report };
                    if clamp {
                        run.clamp()?;
                    } else {
                        run.all()?;
                    }
                }
                Ok((_, None)) => report.push(CaseResult::failed(&format!("{prefix}load"), "no w_avg")),
                Err(e) => report.push(CaseResult::failed(&format!("{prefix}load"), format!("cannot load: {e}"))),
            }
        }
        let _ = std::fs::remove_file(&converted);
    }
    Ok(report)
}

/// A temporary file for a conversion, unique to this process and call.
fn scratch_file(name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("lsd-ada-fixture-{}-{n}-{name}.safetensors", std::process::id()))
}

/// The fixture's tensors and tolerances.
struct Cases<'a> {
    cases: &'a HashMap<String, Tensor>,
    forward_atol: f64,
    grad_atol: f64,
    feature_layers: &'a [String],
}

/// One generator's run over the cases.
struct Run<'a> {
    ctx: &'a Cases<'a>,
    gen: &'a Generator,
    avg: &'a Tensor,
    prefix: &'a str,
    report: &'a mut FixtureReport,
}

impl Run<'_> {
    /// An input tensor, or `None` after recording it as missing.
    fn input(&mut self, name: &str) -> Option<Tensor> {
        super::fixture::case_input(self.ctx.cases, self.report, self.prefix, name)
    }

    /// Compares `actual` with the expected tensor `name`.
    fn check(&mut self, name: &str, actual: &Tensor, atol: f64) -> Result<()> {
        let full = format!("{}{name}", self.prefix);
        let Some(expected) = self.ctx.cases.get(name) else {
            self.report.missing(full);
            return Ok(());
        };
        self.report.compare(&full, actual, expected, atol, 0.0)?;
        Ok(())
    }

    /// ws `[B, num_ws, w_dim]` of z: the mapping, truncated toward `w_avg`
    /// unless ψ is 1 (as upstream, which skips the lerp then).
    fn ws(&self, z: &Tensor, psi: f64) -> Result<Tensor> {
        let w = self.gen.mapping(z)?;
        let w = if psi == 1.0 { w } else { truncate(&w, self.avg, psi)? };
        self.gen.broadcast_latent(&w)
    }

    fn all(&mut self) -> Result<()> {
        let atol = self.ctx.forward_atol;
        if let Some(z) = self.input("z") {
            self.check("mapping.psi10.ws", &self.ws(&z, 1.0)?, atol)?;
            self.check("mapping.psi07.ws", &self.ws(&z, 0.7)?, atol)?;
            let end_to_end = self.gen.synthesis(&self.ws(&z, 0.7)?, Noise::Stored, false)?.image;
            self.check("generator.psi07_const.image", &end_to_end, atol)?;
        }
        if let Some(ws) = self.input("mapping.psi07.ws") {
            let out = self.gen.synthesis(&ws, Noise::Stored, true)?;
            self.check("synthesis.const.image", &out.image, atol)?;
            let none = self.gen.synthesis(&ws, Noise::Zero, false)?.image;
            self.check("synthesis.none.image", &none, atol)?;
            self.features(&out.features)?;
        }
        self.grad()
    }

    /// Every layer's output for the first sample, in forward order.
    fn features(&mut self, features: &[Tensor]) -> Result<()> {
        let names = self.ctx.feature_layers;
        if names.len() != features.len() {
            self.report.push(CaseResult::failed(
                &format!("{}features", self.prefix),
                format!("config.json names {} feature layers, the generator has {}", names.len(), features.len()),
            ));
            return Ok(());
        }
        for (i, (f, layer)) in features.iter().zip(names).enumerate() {
            let key = format!("features.{i:02}");
            let first = f.narrow(0, 0, 1)?;
            let full = format!("{}{key} ({layer})", self.prefix);
            match self.ctx.cases.get(&key) {
                Some(expected) => {
                    self.report.compare(&full, &first, expected, self.ctx.forward_atol, 0.0)?;
                }
                None => self.report.missing(full),
            }
        }
        Ok(())
    }

    /// `d Σ(synthesis(ws, const) ⊙ R) / d ws`.
    fn grad(&mut self) -> Result<()> {
        let (Some(ws), Some(r)) = (self.input("grad.ws"), self.input("grad.R")) else { return Ok(()) };
        let var = Var::from_tensor(&ws)?;
        let image = self.gen.synthesis(var.as_tensor(), Noise::Stored, false)?.image;
        let grads = (image * r)?.sum_all()?.backward()?;
        match grads.get(var.as_tensor()) {
            Some(g) => self.check("grad.dloss_dws", g, self.ctx.grad_atol),
            None => {
                self.report.missing(format!("{}grad.dloss_dws (no gradient reached ws)", self.prefix));
                Ok(())
            }
        }
    }

    /// The synthesis of the network whose clamp cuts.
    fn clamp(&mut self) -> Result<()> {
        if let Some(ws) = self.input("clamp.ws") {
            let image = self.gen.synthesis(&ws, Noise::Stored, false)?.image;
            self.check("clamp.synthesis.const.image", &image, self.ctx.forward_atol)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/stylegan2-ada");

    #[test]
    fn fixture_matches_reference() -> Result<()> {
        let report = check_fixture(Path::new(FIXTURE), &Device::Cpu)?;
        println!("{}", report.table());
        assert!(report.missing.is_empty(), "missing: {:?}", report.missing);
        // 3 mapping/end-to-end + 2 synthesis + 9 features + 1 gradient, and
        // the clamp image; each from the pickle and from its conversion.
        assert_eq!(report.cases.len(), 2 * (15 + 1), "{}", report.table());
        assert!(report.cases.iter().any(|c| c.name.starts_with("converted:network-clamp.pkl:")));
        let failed: Vec<_> = report.failures().collect();
        assert!(failed.is_empty(), "failed cases:\n{}", report.table());
        Ok(())
    }
}

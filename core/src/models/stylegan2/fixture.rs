//! Checks the generator against `tests/fixtures/stylegan2/` (see its
//! README.md): mapping, truncation, W+ synthesis with a per-layer trace,
//! gradients w.r.t. W+ and z, a latent edit and style mixing.
//!
//! Each checkpoint present (`generator.pt`, and the legacy-format
//! `generator.convert_weight_layout.pt` when there) runs every case; with
//! both, case names carry the file name as a prefix (`generator.pt:wplus.image`).

// Fixture checks read the values they compare; they never run in a step.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor, Var};

use super::layers::Trace;
use super::{pixel_norm, truncate, Generator, Noise};
use crate::fixture::{CaseResult, FixtureReport};
use crate::{Error, Result};

/// The optional second checkpoint, in the legacy (non-zip) torch format.
pub(super) const LEGACY_CHECKPOINT: &str = "generator.convert_weight_layout.pt";

/// Runs every case of the fixture directory `dir` on `device`.
pub fn check_fixture(dir: &Path, device: &Device) -> Result<FixtureReport> {
    let mut report = FixtureReport::new("stylegan2");
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io("reading", &config_path, e))?;
    let config: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::Fixture { path: config_path.clone(), reason: e.to_string() })?;
    let atols: HashMap<String, f64> = config["cases"]["tensors"]
        .as_array()
        .map(|ts| {
            ts.iter().filter_map(|t| Some((t["name"].as_str()?.to_string(), t["recommended_atol"].as_f64()?))).collect()
        })
        .unwrap_or_default();
    let inject_index = config["cases"]["mixing_inject_index"].as_u64().map(|v| v as usize);
    let cases_path = dir.join("cases.safetensors");
    if !cases_path.exists() {
        report.missing("cases.safetensors");
        return Ok(report);
    }
    let cases = candle_core::safetensors::load(&cases_path, device)?;
    let ctx = Cases { cases: &cases, atols: &atols, inject_index };

    let legacy = dir.join(LEGACY_CHECKPOINT);
    let both = legacy.exists();
    for file in ["generator.pt", LEGACY_CHECKPOINT] {
        let path = dir.join(file);
        if !path.exists() {
            if file == "generator.pt" {
                report.missing(file);
            }
            continue;
        }
        let prefix = if both { format!("{file}:") } else { String::new() };
        match Generator::load(&path, device) {
            Ok((gen, latent_avg)) => {
                let mut run = Run { ctx: &ctx, gen: &gen, prefix: &prefix, report: &mut report };
                run.all(latent_avg.as_ref())?;
            }
            Err(e) => report.push(CaseResult {
                name: format!("{prefix}load"),
                max_abs: f64::NAN,
                max_rel: f64::NAN,
                atol: 0.0,
                rtol: 0.0,
                passed: false,
                note: Some(format!("cannot load the checkpoint: {e}")),
            }),
        }
    }
    Ok(report)
}

/// The case tensor `name`, or `None` after recording `{prefix}{name}` as
/// missing.
pub(super) fn case_input(
    cases: &HashMap<String, Tensor>,
    report: &mut FixtureReport,
    prefix: &str,
    name: &str,
) -> Option<Tensor> {
    let t = cases.get(name).cloned();
    if t.is_none() {
        report.missing(format!("{prefix}{name}"));
    }
    t
}

/// The fixture's tensors and tolerances.
struct Cases<'a> {
    cases: &'a HashMap<String, Tensor>,
    atols: &'a HashMap<String, f64>,
    inject_index: Option<usize>,
}

/// One checkpoint's run over the cases.
struct Run<'a> {
    ctx: &'a Cases<'a>,
    gen: &'a Generator,
    prefix: &'a str,
    report: &'a mut FixtureReport,
}

impl Run<'_> {
    /// An input tensor, or `None` after recording it as missing.
    fn input(&mut self, name: &str) -> Option<Tensor> {
        case_input(self.ctx.cases, self.report, self.prefix, name)
    }

    /// Compares `actual` with the expected tensor `name` at its atol.
    fn check(&mut self, name: &str, actual: &Tensor) -> Result<()> {
        let full = format!("{}{name}", self.prefix);
        let (Some(expected), Some(&atol)) = (self.ctx.cases.get(name), self.ctx.atols.get(name)) else {
            self.report.missing(full);
            return Ok(());
        };
        self.report.compare(&full, actual, expected, atol, 0.0)?;
        Ok(())
    }

    fn scalar(t: &Tensor) -> Result<f64> {
        Ok(t.flatten_all()?.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?[0])
    }

    fn all(&mut self, ckpt_latent_avg: Option<&Tensor>) -> Result<()> {
        self.mapping()?;
        self.truncation(ckpt_latent_avg)?;
        self.wplus()?;
        self.grad()?;
        self.grad_z()?;
        self.edit()?;
        self.mixing()
    }

    /// (a) PixelNorm, mapping, and the mapping applied per W+ slot.
    fn mapping(&mut self) -> Result<()> {
        if let Some(z) = self.input("mapping.z") {
            self.check("mapping.z_pixelnorm", &pixel_norm(&z)?)?;
            self.check("mapping.w", &self.gen.mapping(&z)?)?;
        }
        if let Some(zs) = self.input("wplus.z_per_layer") {
            self.check("wplus.mapping_of_z_per_layer", &self.gen.mapping(&zs)?)?;
        }
        Ok(())
    }

    /// (b) Truncation of w, and the truncated image from z.
    fn truncation(&mut self, ckpt_latent_avg: Option<&Tensor>) -> Result<()> {
        let (Some(z), Some(psi), Some(avg)) =
            (self.input("mapping.z"), self.input("truncation.psi"), self.input("truncation.latent_avg"))
        else {
            return Ok(());
        };
        // The checkpoint's own latent_avg must be the one the cases used.
        match ckpt_latent_avg {
            Some(ckpt) => {
                let name = format!("{}checkpoint.latent_avg", self.prefix);
                self.report.compare(&name, ckpt, &avg, 0.0, 0.0)?;
            }
            None => self.report.missing(format!("{}checkpoint latent_avg", self.prefix)),
        }
        let psi = Self::scalar(&psi)?;
        let w = truncate(&self.gen.mapping(&z)?, &avg, psi)?;
        self.check("truncation.w", &w)?;
        self.check("truncation.image", &self.gen.forward_z(&z, Some((psi, &avg)), Noise::Stored)?)
    }

    /// (c) The W+ image and the per-layer trace of sample 0.
    fn wplus(&mut self) -> Result<()> {
        let Some(latent) = self.input("wplus.latent") else { return Ok(()) };
        let mut trace = Trace::enabled();
        let out = self.gen.synthesis_traced(&latent, Noise::Stored, false, &mut trace)?;
        self.check("wplus.image", &out.image)?;
        let traced: HashMap<String, Tensor> = trace.into_entries().into_iter().collect();
        let mut names: Vec<&String> = self.ctx.cases.keys().filter(|k| k.starts_with("wplus.trace.")).collect();
        names.sort();
        for name in names {
            match traced.get(&name["wplus.trace.".len()..]) {
                Some(t) => self.check(name, t)?,
                None => self.report.missing(format!("{}{name} (not produced by the trace)", self.prefix)),
            }
        }
        Ok(())
    }

    /// (d) `sum(G(W+) * R)` and its gradient w.r.t. W+.
    fn grad(&mut self) -> Result<()> {
        let (Some(latent), Some(r)) = (self.input("wplus.latent"), self.input("grad.R")) else {
            return Ok(());
        };
        let var = Var::from_tensor(&latent)?;
        let image = self.gen.synthesis(var.as_tensor(), Noise::Stored, false)?.image;
        let loss = (image * r)?.sum_all()?;
        let grads = loss.backward()?;
        self.check("grad.loss", &loss.reshape(1)?)?;
        match grads.get(var.as_tensor()) {
            Some(g) => self.check("grad.dloss_dlatent", g)?,
            None => self.report.missing(format!("{}grad.dloss_dlatent (no gradient reached W+)", self.prefix)),
        }
        Ok(())
    }

    /// (d) The same loss from z, through the mapping network.
    fn grad_z(&mut self) -> Result<()> {
        let (Some(z), Some(r)) = (self.input("mapping.z"), self.input("grad.R")) else {
            return Ok(());
        };
        let var = Var::from_tensor(&z)?;
        let image = self.gen.forward_z(var.as_tensor(), None, Noise::Stored)?;
        let loss = (&image * r)?.sum_all()?;
        let grads = loss.backward()?;
        self.check("grad_z.image", &image)?;
        self.check("grad_z.loss", &loss.reshape(1)?)?;
        match grads.get(var.as_tensor()) {
            Some(g) => self.check("grad_z.dloss_dz", g)?,
            None => self.report.missing(format!("{}grad_z.dloss_dz (no gradient reached z)", self.prefix)),
        }
        Ok(())
    }

    /// (e) A linear edit of a 2-D w, broadcast to every slot.
    fn edit(&mut self) -> Result<()> {
        let (Some(w), Some(u), Some(alpha)) = (self.input("edit.w"), self.input("edit.u"), self.input("edit.alpha"))
        else {
            return Ok(());
        };
        let alpha = Self::scalar(&alpha)?;
        let edited = w.broadcast_add(&(u * alpha)?)?;
        self.check("edit.w_edited", &edited)?;
        self.check("edit.image_base", &self.gen.synthesis(&w, Noise::Stored, false)?.image)?;
        self.check("edit.image", &self.gen.synthesis(&edited, Noise::Stored, false)?.image)
    }

    /// (f) Style mixing of two z at the fixture's inject index.
    fn mixing(&mut self) -> Result<()> {
        let (Some(z1), Some(z2)) = (self.input("mixing.z1"), self.input("mixing.z2")) else {
            return Ok(());
        };
        let Some(inject) = self.ctx.inject_index else {
            self.report.missing("config.json cases.mixing_inject_index");
            return Ok(());
        };
        let latent = self.gen.mix(&self.gen.mapping(&z1)?, &self.gen.mapping(&z2)?, inject)?;
        self.check("mixing.latent", &latent)?;
        self.check("mixing.image", &self.gen.synthesis(&latent, Noise::Stored, false)?.image)
    }
}

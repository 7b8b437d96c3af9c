//! Checking a model against a reference fixture directory.
//!
//! Every model ships a `check_fixture(dir, device)` that runs each case found
//! in a fixture directory (see `tests/fixtures/<model>/README.md`) and
//! returns a [`FixtureReport`]; the tests assert that every case passes and
//! `lsd-tui check-fixture` prints the same report as a table.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};

use crate::{Error, Result};

/// How many times a fixture's stated float32 error a case may deviate (the
/// ArcFace and BiSeNet READMEs: "10x is a reasonable atol").
pub const STATED_ERROR_FACTOR: f64 = 10.0;

/// The float32 error per stored tensor that a fixture directory states in
/// `tolerances.json` (`{"f32_error": {"name": error, …}}`): the reference
/// code's own deviation run in float32. Tolerances come from it, so that a
/// check holds on any fixture set of the documented layout rather than on
/// constants tuned to one.
#[derive(Debug, Clone, Default)]
pub struct StatedErrors(HashMap<String, f64>);

impl StatedErrors {
    /// Reads `dir/tolerances.json`; a directory without one states nothing.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("tolerances.json");
        if !path.exists() {
            return Ok(Self::default());
        }
        let bad = |reason: String| Error::Fixture { path: path.clone(), reason };
        let text = std::fs::read_to_string(&path).map_err(|e| bad(format!("cannot read it: {e}")))?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let Some(map) = json.get("f32_error").and_then(serde_json::Value::as_object) else {
            return Err(bad("expected an object 'f32_error' of tensor names and float32 errors".into()));
        };
        let mut errors = HashMap::new();
        for (name, v) in map {
            match v.as_f64() {
                Some(e) if e.is_finite() && e >= 0.0 => {
                    errors.insert(name.clone(), e);
                }
                _ => return Err(bad(format!("f32_error.{name}: expected a number >= 0, got {v}"))),
            }
        }
        Ok(Self(errors))
    }

    /// The stated error of `name`, if any.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.get(name).copied()
    }

    /// The absolute tolerance of `name`: [`STATED_ERROR_FACTOR`] × its
    /// stated error, or `fallback` (the checker's own constant) when the
    /// directory states none.
    pub fn atol(&self, name: &str, fallback: f64) -> f64 {
        self.get(name).map_or(fallback, |e| STATED_ERROR_FACTOR * e)
    }
}

/// The outcome of one compared tensor.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// The case name, usually the tensor's key in `cases.safetensors`.
    pub name: String,
    /// `max |actual - expected|`.
    pub max_abs: f64,
    /// `max |actual - expected| / max(|expected|)`.
    pub max_rel: f64,
    /// The absolute tolerance the fixture states for this case.
    pub atol: f64,
    /// The relative tolerance, where the fixture states one: a case passes
    /// when `|a - e| <= atol + rtol * |e|` holds element-wise.
    pub rtol: f64,
    /// Whether the case is within tolerance.
    pub passed: bool,
    /// Extra detail (e.g. "3 of 20480 parse labels differ at near-ties").
    pub note: Option<String>,
}

impl CaseResult {
    /// A case that could not run (a checkpoint that does not load, a
    /// missing tensor): failed, with the reason as its note.
    pub fn failed(name: &str, why: impl std::fmt::Display) -> Self {
        Self {
            name: name.to_string(),
            max_abs: f64::INFINITY,
            max_rel: f64::INFINITY,
            atol: 0.0,
            rtol: 0.0,
            passed: false,
            note: Some(why.to_string()),
        }
    }
}

/// Every case of one fixture directory.
#[derive(Debug, Clone, Default)]
pub struct FixtureReport {
    /// Which model ("stylegan2", "clip", …).
    pub model: String,
    /// The compared cases, in the order they ran.
    pub cases: Vec<CaseResult>,
    /// Expected inputs or outputs that the directory lacks.
    pub missing: Vec<String>,
    /// The float32 errors the directory states, which set the tolerances
    /// of the cases they name (see [`StatedErrors::atol`]).
    pub stated: StatedErrors,
}

impl FixtureReport {
    /// An empty report for `model`.
    pub fn new(model: &str) -> Self {
        Self { model: model.to_string(), ..Default::default() }
    }

    /// True when every case passed and nothing expected was missing.
    pub fn passed(&self) -> bool {
        self.missing.is_empty() && !self.cases.is_empty() && self.cases.iter().all(|c| c.passed)
    }

    /// Compares `actual` with `expected` element-wise (in f64) and records
    /// the case; `|a - e| <= atol + rtol * |e|` must hold everywhere.
    pub fn compare(
        &mut self,
        name: &str,
        actual: &Tensor,
        expected: &Tensor,
        atol: f64,
        rtol: f64,
    ) -> Result<&CaseResult> {
        let result = compare(name, actual, expected, atol, rtol)?;
        self.cases.push(result);
        Ok(self.cases.last().expect("just pushed"))
    }

    /// Records a case computed elsewhere (e.g. a label-agreement count).
    pub fn push(&mut self, case: CaseResult) {
        self.cases.push(case);
    }

    /// Records an expected input or output that is not in the directory.
    pub fn missing(&mut self, what: impl Into<String>) {
        self.missing.push(what.into());
    }

    /// The failed cases.
    pub fn failures(&self) -> impl Iterator<Item = &CaseResult> {
        self.cases.iter().filter(|c| !c.passed)
    }

    /// A plain-text table: one row per case, then the missing entries.
    pub fn table(&self) -> String {
        let width = self.cases.iter().map(|c| c.name.len()).max().unwrap_or(4).max(4);
        let mut out =
            format!("{:<width$}  {:>10}  {:>10}  {:>9}  {:>9}  result\n", "case", "max abs", "max rel", "atol", "rtol");
        for c in &self.cases {
            out.push_str(&format!(
                "{:<width$}  {:>10.3e}  {:>10.3e}  {:>9.1e}  {:>9.1e}  {}{}\n",
                c.name,
                c.max_abs,
                c.max_rel,
                c.atol,
                c.rtol,
                if c.passed { "ok" } else { "FAIL" },
                c.note.as_deref().map(|n| format!(" ({n})")).unwrap_or_default(),
            ));
        }
        for m in &self.missing {
            out.push_str(&format!("{m:<width$}  missing\n"));
        }
        let failed = self.failures().count() + self.missing.len();
        out.push_str(&format!("{}: {} cases, {} failed\n", self.model, self.cases.len(), failed));
        out
    }
}

/// Compares two tensors of the same shape; see [`FixtureReport::compare`].
pub fn compare(name: &str, actual: &Tensor, expected: &Tensor, atol: f64, rtol: f64) -> Result<CaseResult> {
    if actual.dims() != expected.dims() {
        return Ok(CaseResult {
            name: name.to_string(),
            max_abs: f64::INFINITY,
            max_rel: f64::INFINITY,
            atol,
            rtol,
            passed: false,
            note: Some(format!("shape {:?}, expected {:?}", actual.dims(), expected.dims())),
        });
    }
    let a = actual.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let e = expected.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let mut max_abs = 0f64;
    let mut max_e = 0f64;
    let mut passed = true;
    for (a, e) in a.iter().zip(&e) {
        let d = (a - e).abs();
        // NaN compares false: a NaN anywhere fails the case.
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        if !(d <= atol + rtol * e.abs()) {
            passed = false;
        }
        if d.is_nan() || d > max_abs {
            max_abs = if d.is_nan() { f64::NAN } else { d };
        }
        max_e = max_e.max(e.abs());
    }
    let max_rel = if max_e > 0.0 { max_abs / max_e } else { max_abs };
    Ok(CaseResult { name: name.to_string(), max_abs, max_rel, atol, rtol, passed, note: None })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn stated_errors_set_tolerances_from_the_directory() -> Result<()> {
        let dir = tempfile::tempdir().expect("a temp dir");
        assert_eq!(StatedErrors::load(dir.path())?.atol("logits", 6e-4), 6e-4);
        std::fs::write(dir.path().join("tolerances.json"), r#"{"f32_error": {"logits": 1.7e-5}}"#).expect("written");
        let stated = StatedErrors::load(dir.path())?;
        assert!((stated.atol("logits", 6e-4) - 1.7e-4).abs() < 1e-12);
        assert_eq!(stated.atol("probs", 8e-5), 8e-5);
        std::fs::write(dir.path().join("tolerances.json"), r#"{"f32_error": {"logits": "big"}}"#).expect("written");
        let msg = StatedErrors::load(dir.path()).unwrap_err().to_string();
        assert!(msg.contains("f32_error.logits") && msg.contains("tolerances.json"), "{msg}");
        Ok(())
    }

    #[test]
    fn compare_detects_errors_and_nan() -> Result<()> {
        let d = Device::Cpu;
        let e = Tensor::new(&[1f32, 2., 3.], &d)?;
        let ok = Tensor::new(&[1f32, 2.00001, 3.], &d)?;
        let bad = Tensor::new(&[1f32, 2.1, 3.], &d)?;
        let nan = Tensor::new(&[1f32, f32::NAN, 3.], &d)?;
        assert!(compare("ok", &ok, &e, 1e-4, 0.0)?.passed);
        assert!(!compare("bad", &bad, &e, 1e-4, 0.0)?.passed);
        assert!(!compare("nan", &nan, &e, 1e-4, 0.0)?.passed);
        let short = Tensor::new(&[1f32, 2.], &d)?;
        assert!(!compare("shape", &short, &e, 1.0, 0.0)?.passed);
        Ok(())
    }
}

//! Test support for plugins (dev-only, never shipped: it runs `cargo`): build
//! a plugin crate from a test, and
//! check that the gradients through the LOADED library equal the gradients
//! of the same loss computed in-process, and finite differences.
//!
//! A plugin crate declares `crate-type = ["cdylib", "rlib"]`, so its own
//! integration tests can use the term type in-process and load the cdylib:
//!
//! ```text
//! use lsd_plugin_testing::{build_plugin, check_plugin_gradients, tiny_batch, GradCheck};
//! let path = build_plugin(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"), "lsd-plugin-colour-stats")?;
//! let term = ColourStats::from_yaml("", &Default::default())?;
//! let report = check_plugin_gradients(&path, "", &term, &tiny_batch(7, false)?, &GradCheck::default())?;
//! assert!(report.passed(), "{}", report.table());
//! ```
//!
//! [`build_plugin`] runs `cargo build` for the plugin package from inside the
//! running test. It builds into the same target directory and profile as the
//! test binary (both found from the test executable's path: the target
//! directory is the ancestor holding cargo's `CACHEDIR.TAG`), so a plugin that
//! `cargo test` just compiled is reused, and it reads the library's exact
//! path from cargo's JSON messages instead of guessing file names. Cargo
//! releases its build lock before it runs tests, so this works under
//! `cargo test --workspace` from a clean clone.

use std::collections::HashMap;
use std::env::consts::DLL_SUFFIX;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use lsd_core::demo::SeededWeights;
use lsd_core::plugin::{
    differentiate, EditBatch, FeatureMaps, InitContext, LossTerm, Needs, ParamInfo, Plugin, PluginLibrary, TermOutput,
};
use lsd_core::{Error, Result};

/// Builds `package` (a cdylib) of the workspace at `manifest` and returns
/// the library's path. Results are cached per process.
pub fn build_plugin(manifest: impl AsRef<Path>, package: &str) -> Result<PathBuf> {
    let mut paths = build_plugins(manifest, &[package])?;
    Ok(paths.remove(0))
}

/// Builds several plugin packages in one cargo invocation; returns their
/// library paths in the order given.
pub fn build_plugins(manifest: impl AsRef<Path>, packages: &[&str]) -> Result<Vec<PathBuf>> {
    static CACHE: Mutex<Vec<(PathBuf, String, PathBuf)>> = Mutex::new(Vec::new());
    let manifest = manifest.as_ref().to_path_buf();
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    let cached = |cache: &Vec<(PathBuf, String, PathBuf)>, p: &str| {
        cache.iter().find(|(m, n, _)| *m == manifest && n == p).map(|(_, _, l)| l.clone())
    };
    let missing: Vec<&str> = packages.iter().copied().filter(|p| cached(&cache, p).is_none()).collect();
    if !missing.is_empty() {
        for (p, lib) in cargo_build(&manifest, &missing)? {
            cache.push((manifest.clone(), p, lib));
        }
    }
    packages
        .iter()
        .map(|p| cached(&cache, p).ok_or_else(|| build_error(p, "cargo reported no cdylib for it")))
        .collect()
}

fn build_error(package: &str, reason: &str) -> Error {
    Error::Config(format!("building plugin package '{package}': {reason}"))
}

/// Target directory, profile and target triple of the running executable,
/// if it lives in a cargo target directory.
fn build_layout() -> Option<(PathBuf, String, Option<String>)> {
    let exe = std::env::current_exe().ok()?;
    let root = exe.ancestors().skip(1).find(|d| d.join("CACHEDIR.TAG").is_file())?;
    let rel: Vec<String> =
        exe.strip_prefix(root).ok()?.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    // <profile>/deps/<exe> or <triple>/<profile>/deps/<exe>
    let (triple, dir) = match rel.as_slice() {
        [dir, _, _] => (None, dir.clone()),
        [triple, dir, _, _] => (Some(triple.clone()), dir.clone()),
        _ => return None,
    };
    let profile = match dir.as_str() {
        "debug" => "dev".to_string(),
        other => other.to_string(),
    };
    Some((root.to_path_buf(), profile, triple))
}

/// `cargo build -p …` with JSON messages; returns (package, cdylib path).
fn cargo_build(manifest: &Path, packages: &[&str]) -> Result<Vec<(String, PathBuf)>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build").arg("--manifest-path").arg(manifest).arg("--message-format=json-render-diagnostics");
    for p in packages {
        cmd.arg("-p").arg(p);
    }
    if let Some((target_dir, profile, triple)) = build_layout() {
        cmd.arg("--target-dir").arg(target_dir).arg("--profile").arg(profile);
        if let Some(t) = triple {
            cmd.arg("--target").arg(t);
        }
    }
    let joined = packages.join(", ");
    let out = cmd.output().map_err(|e| build_error(&joined, &format!("cannot run cargo: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(build_error(&joined, &format!("cargo failed:\n{stderr}")));
    }
    #[derive(Deserialize)]
    struct Target {
        kind: Vec<String>,
    }
    #[derive(Deserialize)]
    struct Message {
        reason: String,
        #[serde(default)]
        package_id: String,
        target: Option<Target>,
        #[serde(default)]
        filenames: Vec<PathBuf>,
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(m) = serde_json::from_str::<Message>(line) else {
            continue;
        };
        if m.reason != "compiler-artifact" || !m.target.is_some_and(|t| t.kind.iter().any(|k| k == "cdylib")) {
            continue;
        }
        // `path+file:///…#name@0.1.0` (cargo ≥ 1.77) or `name 0.1.0 (path+file:///…)`.
        let Some(package) = packages
            .iter()
            .find(|p| m.package_id.contains(&format!("#{p}@")) || m.package_id.starts_with(&format!("{p} ")))
        else {
            continue;
        };
        if let Some(lib) = m.filenames.iter().find(|f| f.to_string_lossy().ends_with(DLL_SUFFIX)) {
            found.push((package.to_string(), lib.clone()));
        }
    }
    Ok(found)
}

/// A tiny random batch: 2 samples of 3×4×4, W+ of 2×3, two directions
/// (sample 0 uses direction 1, sample 1 direction 0), `α = [0.7, -1.3]`,
/// and with `features`, two feature maps (`[2,2,2,2]`, `[2,1,4,4]`). f32 on
/// the CPU; use [`batch_to`] for another dtype.
pub fn tiny_batch(seed: u64, features: bool) -> Result<EditBatch> {
    let mut s = SeededWeights::new(seed);
    let shapes: [(&str, &[usize]); 8] = [
        ("x", &[2, 3, 4, 4]),
        ("x_edit", &[2, 3, 4, 4]),
        ("w", &[2, 2, 3]),
        ("u", &[2, 2, 3]),
        ("fx0", &[2, 2, 2, 2]),
        ("fe0", &[2, 2, 2, 2]),
        ("fx1", &[2, 1, 4, 4]),
        ("fe1", &[2, 1, 4, 4]),
    ];
    for (name, shape) in shapes {
        s.normal(name, shape, 0.0, 0.5)?;
    }
    let t = |n: &str| s.tensors()[n].clone();
    let mut batch = EditBatch::new(t("x"), t("x_edit"), t("w"), t("u"), vec![0.7, -1.3], "a smiling face")?;
    batch.direction = vec![1, 0];
    if features {
        batch.features = Some(FeatureMaps { x: vec![t("fx0"), t("fx1")], x_edit: vec![t("fe0"), t("fe1")] });
    }
    batch.validate()?;
    Ok(batch)
}

/// The batch with every tensor converted to `dtype` on `device`.
pub fn batch_to(batch: &EditBatch, dtype: DType, device: &Device) -> Result<EditBatch> {
    let c = |t: &Tensor| -> Result<Tensor> { Ok(t.to_device(device)?.to_dtype(dtype)?) };
    let cv = |v: &[Tensor]| v.iter().map(c).collect::<Result<Vec<_>>>();
    Ok(EditBatch {
        x: c(&batch.x)?,
        x_edit: c(&batch.x_edit)?,
        w: c(&batch.w)?,
        u: c(&batch.u)?,
        alpha: batch.alpha.clone(),
        direction: batch.direction.clone(),
        prompt: batch.prompt.clone(),
        features: match &batch.features {
            Some(f) => Some(FeatureMaps { x: cv(&f.x)?, x_edit: cv(&f.x_edit)? }),
            None => None,
        },
        keys: batch.keys.clone(),
    })
}

fn loss_value(term: &dyn LossTerm, batch: &EditBatch) -> Result<f64> {
    Ok(term.loss(batch)?.flatten_all()?.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?)
}

/// Central finite differences of `term` with respect to every element of
/// `x_edit`, `w`, `u` and the feature maps of `x_edit`, in the batch's
/// dtype. Meant for tiny batches: it evaluates the loss twice per element.
pub fn finite_differences(term: &dyn LossTerm, batch: &EditBatch, eps: f64) -> Result<TermOutput> {
    fn numeric(
        term: &dyn LossTerm,
        batch: &EditBatch,
        eps: f64,
        get: &dyn Fn(&EditBatch) -> Tensor,
        set: &dyn Fn(&mut EditBatch, Tensor),
    ) -> Result<Tensor> {
        let base = get(batch);
        let (dims, dtype, device) = (base.dims().to_vec(), base.dtype(), base.device().clone());
        let data = base.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        let mut grad = vec![0f64; data.len()];
        let mut probe = batch.clone();
        for i in 0..data.len() {
            let mut at = |delta: f64| -> Result<f64> {
                let mut d = data.clone();
                d[i] += delta;
                set(&mut probe, Tensor::from_vec(d, dims.as_slice(), &device)?.to_dtype(dtype)?);
                loss_value(term, &probe)
            };
            grad[i] = (at(eps)? - at(-eps)?) / (2.0 * eps);
        }
        Ok(Tensor::from_vec(grad, dims.as_slice(), &device)?)
    }
    let n_maps = batch.features.as_ref().map_or(0, |f| f.x_edit.len());
    let mut maps = Vec::new();
    for j in 0..n_maps {
        let get = move |b: &EditBatch| b.features.as_ref().expect("has features").x_edit[j].clone();
        let set = move |b: &mut EditBatch, t| b.features.as_mut().expect("has features").x_edit[j] = t;
        maps.push(Some(numeric(term, batch, eps, &get, &set)?));
    }
    Ok(TermOutput {
        value: Tensor::new(loss_value(term, batch)?, batch.x_edit.device())?,
        grad_x_edit: Some(numeric(term, batch, eps, &|b| b.x_edit.clone(), &|b, t| b.x_edit = t)?),
        grad_w: Some(numeric(term, batch, eps, &|b| b.w.clone(), &|b, t| b.w = t)?),
        grad_u: Some(numeric(term, batch, eps, &|b| b.u.clone(), &|b, t| b.u = t)?),
        grad_features_edit: maps,
    })
}

/// Tolerances of [`check_plugin_gradients`]. A gradient passes when
/// `max |a − b| ≤ atol + rtol · max |b|`.
#[derive(Debug, Clone)]
pub struct GradCheck {
    /// Loaded plugin vs in-process, same dtype (f32): only summation order
    /// may differ.
    pub rtol: f64,
    /// See `rtol`.
    pub atol: f64,
    /// The dtype finite differences are taken in (f64 for pure tensor
    /// terms; f32 for terms whose networks have f32 weights).
    pub fd_dtype: DType,
    /// Finite-difference step.
    pub fd_eps: f64,
    /// Loaded plugin (f32) vs finite differences.
    pub fd_rtol: f64,
    /// See `fd_rtol`.
    pub fd_atol: f64,
}

impl Default for GradCheck {
    fn default() -> Self {
        Self { rtol: 1e-5, atol: 1e-6, fd_dtype: DType::F64, fd_eps: 1e-6, fd_rtol: 1e-4, fd_atol: 1e-5 }
    }
}

/// One row of a [`GradReport`].
#[derive(Debug, Clone)]
pub struct GradRow {
    /// `value`, `x_edit`, `w`, `u`, `features.x_edit[j]`.
    pub input: String,
    /// `in-process` or `finite differences`.
    pub reference: &'static str,
    /// `max |loaded − reference|`.
    pub max_abs_diff: f64,
    /// `max |reference|`.
    pub scale: f64,
    /// The allowed `max_abs_diff`.
    pub allowed: f64,
}

impl GradRow {
    /// Whether the row is within tolerance.
    pub fn passed(&self) -> bool {
        self.max_abs_diff <= self.allowed
    }
}

/// Loaded-plugin gradients against in-process gradients and finite
/// differences.
#[derive(Debug, Clone)]
pub struct GradReport {
    /// One row per input and reference.
    pub rows: Vec<GradRow>,
}

impl GradReport {
    /// Whether every row passed.
    pub fn passed(&self) -> bool {
        !self.rows.is_empty() && self.rows.iter().all(GradRow::passed)
    }

    /// A plain-text table of the rows.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<20} {:<20} {:>12} {:>12} {:>12}  ok\n",
            "input", "reference", "max|diff|", "max|ref|", "allowed"
        );
        for r in &self.rows {
            let _ = writeln!(
                s,
                "{:<20} {:<20} {:>12.3e} {:>12.3e} {:>12.3e}  {}",
                r.input,
                r.reference,
                r.max_abs_diff,
                r.scale,
                r.allowed,
                if r.passed() { "yes" } else { "NO" }
            );
        }
        s
    }
}

fn max_abs(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?)
}

/// Compares two outputs input by input (a missing gradient counts as
/// zeros of the input's shape) and appends rows to `rows`.
pub fn compare_outputs(
    got: &TermOutput,
    reference: &TermOutput,
    batch: &EditBatch,
    name: &'static str,
    rtol: f64,
    atol: f64,
    rows: &mut Vec<GradRow>,
) -> Result<()> {
    let (value, reference_value) = (got.value_f64()?, reference.value_f64()?);
    rows.push(GradRow {
        input: "value".into(),
        reference: name,
        max_abs_diff: (value - reference_value).abs(),
        scale: reference_value.abs(),
        allowed: atol + rtol * reference_value.abs(),
    });
    let mut pairs: Vec<(String, &Option<Tensor>, &Option<Tensor>, &Tensor)> = vec![
        ("x_edit".into(), &got.grad_x_edit, &reference.grad_x_edit, &batch.x_edit),
        ("w".into(), &got.grad_w, &reference.grad_w, &batch.w),
        ("u".into(), &got.grad_u, &reference.grad_u, &batch.u),
    ];
    if got.grad_features_edit.len() != reference.grad_features_edit.len() {
        return Err(Error::Config(format!(
            "{} feature gradients against {} in the reference",
            got.grad_features_edit.len(),
            reference.grad_features_edit.len()
        )));
    }
    let maps = batch.features.as_ref().map(|f| f.x_edit.as_slice()).unwrap_or(&[]);
    for (j, (g, r)) in got.grad_features_edit.iter().zip(&reference.grad_features_edit).enumerate() {
        let input = maps.get(j).ok_or_else(|| Error::Config("feature gradient without a map".into()))?;
        pairs.push((format!("features.x_edit[{j}]"), g, r, input));
    }
    for (input_name, g, r, input) in pairs {
        let dense = |t: &Option<Tensor>| -> Result<Tensor> {
            match t {
                Some(t) => Ok(t.to_device(&Device::Cpu)?.to_dtype(DType::F64)?),
                None => Ok(Tensor::zeros(input.dims(), DType::F64, &Device::Cpu)?),
            }
        };
        let (g, r) = (dense(g)?, dense(r)?);
        if g.dims() != r.dims() {
            return Err(Error::BadShape {
                name: format!("gradient of {input_name}"),
                expected: format!("{:?}", r.dims()),
                got: g.dims().to_vec(),
            });
        }
        let scale = max_abs(&r)?;
        rows.push(GradRow {
            input: input_name,
            reference: name,
            max_abs_diff: max_abs(&(g - &r)?)?,
            scale,
            allowed: atol + rtol * scale,
        });
    }
    Ok(())
}

/// Loads the plugin at `path` with `params_yaml` on the CPU, evaluates it
/// on `batch` (f32), and compares its value and gradients with `term` (the
/// same loss, in-process) evaluated on the same batch, and with finite
/// differences of `term` in `check.fd_dtype`.
pub fn check_plugin_gradients(
    path: &Path,
    params_yaml: &str,
    term: &dyn LossTerm,
    batch: &EditBatch,
    check: &GradCheck,
) -> Result<GradReport> {
    let lib = PluginLibrary::open(path)?;
    let loaded = lib.instantiate(params_yaml, &InitContext::default())?;
    let batch32 = batch_to(batch, DType::F32, &Device::Cpu)?;
    let from_plugin = loaded.evaluate(&batch32)?;
    let in_process = differentiate(term, &batch32)?;
    let fd_batch = batch_to(batch, check.fd_dtype, &Device::Cpu)?;
    let numeric = finite_differences(term, &fd_batch, check.fd_eps)?;
    let mut rows = Vec::new();
    compare_outputs(&from_plugin, &in_process, &batch32, "in-process", check.rtol, check.atol, &mut rows)?;
    compare_outputs(&from_plugin, &numeric, &batch32, "finite differences", check.fd_rtol, check.fd_atol, &mut rows)?;
    Ok(GradReport { rows })
}

/// What [`ProbeTerm`] does when asked for its loss.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeMode {
    /// Computes the loss.
    #[default]
    Ok,
    /// Returns an error.
    Error,
    /// Panics.
    Panic,
    /// Returns a non-scalar tensor.
    NonScalar,
}

/// Parameters of [`ProbeTerm`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeParams {
    /// Overall factor.
    pub scale: f64,
    /// Whether to ask for (and use) the feature maps.
    pub features: bool,
    /// Behaviour of `loss`.
    pub mode: ProbeMode,
    /// When set, building the term fails unless the precision the plugin
    /// adopted from its context (in its own copy of lsd-core) is this one.
    pub precision: Option<String>,
}

impl Default for ProbeParams {
    fn default() -> Self {
        Self { scale: 1.0, features: false, mode: ProbeMode::Ok, precision: None }
    }
}

/// A test term that reads every input of the batch, so that a gradient
/// check through it exercises every path of the boundary; it can also be
/// told to fail or panic. The `tests/plugins/probe` cdylib exports it.
///
/// `ℓ = scale · (1 + |prompt|/100) · [ mean((x_edit − x)² ⊙ (1 + x_edit/2))
///      + mean(w_edit² ⊙ (1 + w/2)) + Σ_j mean(f_edit_j² ⊙ f_x_j) ]`,
/// with `w_edit = w + α · u[direction]` and the feature sum only when
/// `features` is set.
#[derive(Debug, Clone)]
pub struct ProbeTerm {
    params: ProbeParams,
}

impl LossTerm for ProbeTerm {
    fn loss(&self, b: &EditBatch) -> lsd_plugin_api::Result<Tensor> {
        match self.params.mode {
            ProbeMode::Ok => {}
            ProbeMode::Error => return Err(lsd_plugin_api::Error::Config("probe: asked to fail".into())),
            ProbeMode::Panic => panic!("probe: asked to panic"),
            ProbeMode::NonScalar => return Ok((&b.x_edit - &b.x)?.sqr()?),
        }
        let image = (&b.x_edit - &b.x)?.sqr()?.mul(&((&b.x_edit * 0.5)? + 1.0)?)?.mean_all()?;
        let latent = b.w_edit()?.sqr()?.mul(&((&b.w * 0.5)? + 1.0)?)?.mean_all()?;
        let mut total = (image + latent)?;
        if self.params.features {
            let f =
                b.features.as_ref().ok_or_else(|| lsd_plugin_api::Error::Config("probe: no feature maps".into()))?;
            for (fx, fe) in f.x.iter().zip(&f.x_edit) {
                total = (total + fe.sqr()?.mul(fx)?.mean_all()?)?;
            }
        }
        let factor = self.params.scale * (1.0 + b.prompt.chars().count() as f64 / 100.0);
        Ok((total * factor)?)
    }

    fn needs(&self) -> Needs {
        Needs { features: self.params.features }
    }
}

impl Plugin for ProbeTerm {
    const NAME: &'static str = "test-probe";
    const VERSION: &'static str = "0.0.1";
    const DESCRIPTION: &'static str = "test term that reads every input (and can fail on demand)";
    type Params = ProbeParams;

    fn params() -> Vec<ParamInfo> {
        vec![
            ParamInfo::new("scale", "f64", "1.0", "overall factor"),
            ParamInfo::new("features", "bool", "false", "ask for and use the feature maps"),
            ParamInfo::new("mode", "ok | error | panic | non_scalar", "ok", "what loss does"),
            ParamInfo::new("precision", "tf32 | fp32", "null", "fail unless this precision was adopted"),
        ]
    }

    fn new(params: ProbeParams, context: &InitContext) -> lsd_plugin_api::Result<Self> {
        let adopted = lsd_core::plugin::adopt_precision(context)?;
        // What this copy of lsd-core now says, not what the context said.
        let own = lsd_core::ops::precision();
        if let Some(want) = &params.precision {
            if own.name() != want || adopted != own {
                return Err(lsd_plugin_api::Error::Config(format!("probe: precision is {own}, expected {want}")));
            }
        }
        Ok(Self { params })
    }
}

/// Builds the plugin crate a test belongs to (its cdylib, through
/// [`build_plugin`]) and returns the library's path. Call it from a plugin
/// crate's integration test as
/// `this_plugin(env!("CARGO_MANIFEST_DIR"), env!("CARGO_PKG_NAME"))`.
///
/// # Panics
/// When the build fails: a test cannot go on without its library.
pub fn this_plugin(manifest_dir: &str, package: &str) -> PathBuf {
    let manifest = Path::new(manifest_dir).join("Cargo.toml");
    build_plugin(&manifest, package).unwrap_or_else(|e| panic!("the plugin '{package}' does not build: {e}"))
}

/// The same term evaluated through its loaded library and in-process.
#[derive(Debug)]
pub struct LoadedVsInProcess {
    /// Through the library, as the host runs it.
    pub loaded: TermOutput,
    /// `T` in this process, through [`differentiate`].
    pub in_process: TermOutput,
    /// The comparison of the two (relative 1e-5, absolute 1e-7: both are
    /// the same f32 computation, on either side of the boundary).
    pub report: GradReport,
}

/// Loads `library`, builds its term from `params` with the default context,
/// evaluates it on `batch`, and compares value and gradients with plugin
/// type `T` built from the same parameters in this process: the set-up
/// every plugin's tests share.
pub fn loaded_vs_in_process<T: Plugin>(library: &Path, params: &str, batch: &EditBatch) -> Result<LoadedVsInProcess> {
    let ctx = InitContext::default();
    let loaded = PluginLibrary::open(library)?.instantiate(params, &ctx)?.evaluate(batch)?;
    let in_process = differentiate(&T::from_yaml(params, &ctx)?, batch)?;
    let mut rows = Vec::new();
    compare_outputs(&loaded, &in_process, batch, "in-process", 1e-5, 1e-7, &mut rows)?;
    Ok(LoadedVsInProcess { loaded, in_process, report: GradReport { rows } })
}

/// Paths of the workspace's test plugin packages, built on first use:
/// `lsd-plugin-test-probe`, `lsd-plugin-test-bad-fingerprint`,
/// `lsd-plugin-test-not-a-plugin`.
pub fn workspace_test_plugins() -> Result<HashMap<&'static str, PathBuf>> {
    const NAMES: [&str; 3] =
        ["lsd-plugin-test-probe", "lsd-plugin-test-bad-fingerprint", "lsd-plugin-test-not-a-plugin"];
    let manifest = workspace_manifest();
    let paths = build_plugins(manifest, &NAMES)?;
    Ok(NAMES.into_iter().zip(paths).collect())
}

/// The workspace's `Cargo.toml` (this crate sits one folder below it).
pub fn workspace_manifest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("Cargo.toml")
}

//! The ArcFace fixture check: `tests/fixtures/arcface/` (see its README.md).
//!
//! Tolerances: the fixture states, per case, the largest deviation of the
//! upstream code run in float32 from its float64 references
//! (`tolerances.json`, the README's figures) and asks a float32
//! reimplementation to land "within a small multiple of these": a case it
//! names is held to [`STATED_ERROR_FACTOR`] times its figure. The constants
//! below (about ten times the figures of the shipped fixture) apply only to
//! cases the directory states nothing for; the cases the README quotes no
//! figure for (stage outputs, the embedding before `l2_norm`) are held to
//! `1e-5 · max|expected|`, the same relative accuracy as the embeddings.

// Fixture checks read the values they compare; they never run in a step.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;

use super::id_loss::{id_loss_per_pair, styleclip_preprocess, IdLoss};
use super::{Backbone, Config};
use crate::fixture::{CaseResult, FixtureReport, StatedErrors, STATED_ERROR_FACTOR};
use crate::{Error, Result};

/// The case recorded when `model_legacy.pth` cannot be read.
pub(crate) const LEGACY_LOAD_CASE: &str = "model_legacy.pth: load";

/// How close a case must be.
#[derive(Debug, Clone, Copy)]
enum Tol {
    /// A fixed absolute tolerance.
    Abs(f64),
    /// A tolerance of this fraction of the largest expected magnitude.
    OfMax(f64),
}

/// The tolerance of each case (README "Reference outputs": float32 deviation
/// of the upstream code, times about ten).
fn tolerance(name: &str) -> Tol {
    match name {
        // 1.64e-7 (embeddings), feats are the same network's embeddings.
        "embeddings" | "styleclip_y_feats" | "styleclip_y_hat_feats" => Tol::Abs(2e-6),
        "cosine_similarity" => Tol::Abs(2e-6),                 // 1.19e-7
        "id_loss_per_pair" | "id_loss_mean" => Tol::Abs(2e-6), // 1.17e-7
        "grad_id_loss_mean_wrt_second" => Tol::Abs(5e-8),      // 4.59e-9
        "styleclip_y_crop112" | "styleclip_y_hat_crop112" => Tol::Abs(2e-6), // 1.52e-7
        "styleclip_id_loss" => Tol::Abs(1e-6),                 // 8.13e-8
        "grad_styleclip_id_loss_wrt_y_hat_256" => Tol::Abs(4e-8), // 3.24e-9
        _ => Tol::OfMax(1e-5),
    }
}

/// Compares `actual` with the stored case `name`, or records it as missing.
fn case(report: &mut FixtureReport, cases: &HashMap<String, Tensor>, name: &str, actual: &Tensor) -> Result<()> {
    let Some(expected) = cases.get(name) else {
        report.missing(name);
        return Ok(());
    };
    let atol = match (report.stated.get(name), tolerance(name)) {
        (Some(e), _) => STATED_ERROR_FACTOR * e,
        (None, Tol::Abs(a)) => a,
        (None, Tol::OfMax(f)) => f * expected.abs()?.max_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?,
    };
    report.compare(name, actual, expected, atol, 0.0)?;
    Ok(())
}

/// The values of `config.json` that matter here.
#[derive(Debug, Default)]
struct FixtureConfig {
    bn_eps: Option<f64>,
    json: Option<serde_json::Value>,
}

fn read_config(dir: &Path) -> Result<FixtureConfig> {
    let path = dir.join("config.json");
    if !path.exists() {
        return Ok(FixtureConfig::default());
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io("reading", &path, e))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Fixture { path: path.clone(), reason: format!("not valid JSON: {e}") })?;
    Ok(FixtureConfig { bn_eps: json["bn_eps"].as_f64(), json: Some(json) })
}

/// Records whether the widths/units that `config.json` states agree with
/// those read off the weights.
fn check_config(report: &mut FixtureReport, cfg: &Config, json: &serde_json::Value) {
    let list = |key: &str| -> Option<Vec<usize>> {
        json[key].as_array().map(|a| a.iter().filter_map(|v| v.as_u64().map(|v| v as usize)).collect())
    };
    let num = |key: &str| json[key].as_u64().map(|v| v as usize);
    let mut diffs = Vec::new();
    let mut check = |what: &str, stated: Option<Vec<usize>>, inferred: Vec<usize>| {
        if let Some(stated) = stated {
            if stated != inferred {
                diffs.push(format!("{what}: config.json {stated:?}, weights {inferred:?}"));
            }
        }
    };
    check("stage_widths", list("stage_widths"), cfg.stage_widths.clone());
    check("stage_units", list("stage_units"), cfg.stage_units.clone());
    check("stem_width", num("stem_width").map(|v| vec![v]), vec![cfg.stem_width]);
    check("embedding_size", num("embedding_size").map(|v| vec![v]), vec![cfg.embedding_size]);
    check("input_size", num("input_size").map(|v| vec![v]), vec![cfg.input_size]);
    check("se_reduction", num("se_reduction").map(|v| vec![v]), vec![cfg.se_reduction]);
    let name = "config.json agrees with the weights";
    if diffs.is_empty() {
        report.push(CaseResult {
            name: name.into(),
            max_abs: 0.0,
            max_rel: 0.0,
            atol: 0.0,
            rtol: 0.0,
            passed: true,
            note: None,
        });
    } else {
        report.push(CaseResult::failed(name, diffs.join("; ")));
    }
}

fn load_backbone(path: &Path, bn_eps: Option<f64>, device: &Device) -> Result<Backbone> {
    let tensors = crate::torch::load(path)?;
    let mut cfg = Config::from_tensors(&tensors)?;
    if let Some(eps) = bn_eps {
        cfg.bn_eps = eps;
    }
    Backbone::new(&cfg, VarBuilder::from_tensors(tensors, DType::F32, device))
}

/// Runs every case of an ArcFace fixture directory (`model.pth`,
/// `model_legacy.pth`, `config.json`, `cases.safetensors`; see
/// `tests/fixtures/arcface/README.md`) and reports the maximum errors.
///
/// A checkpoint that fails to load is a failed case; an absent file, input
/// or expected output is recorded in `report.missing`.
pub fn check_fixture(dir: &Path, device: &Device) -> Result<FixtureReport> {
    let mut report = FixtureReport::new("arcface");
    report.stated = StatedErrors::load(dir)?;
    let cases_path = dir.join("cases.safetensors");
    if !cases_path.exists() {
        report.missing("cases.safetensors");
        return Ok(report);
    }
    let cases = candle_core::safetensors::load(&cases_path, device)?;
    let config = read_config(dir)?;

    let model_path = dir.join("model.pth");
    if !model_path.exists() {
        report.missing("model.pth");
    } else {
        match load_backbone(&model_path, config.bn_eps, device) {
            Err(e) => report.push(CaseResult::failed("model.pth: load", e)),
            Ok(net) => {
                if let Some(json) = &config.json {
                    check_config(&mut report, net.config(), json);
                }
                run_cases(&net, &cases, &mut report)?;
            }
        }
    }

    let legacy_path = dir.join("model_legacy.pth");
    if legacy_path.exists() {
        match load_backbone(&legacy_path, config.bn_eps, device) {
            Err(e) => report.push(CaseResult::failed(LEGACY_LOAD_CASE, e)),
            Ok(net) => {
                if let (Some(faces), Some(expected)) = (cases.get("faces_112"), cases.get("embeddings")) {
                    let emb = net.forward_outputs(faces)?.embedding;
                    let Tol::Abs(floor) = tolerance("embeddings") else { unreachable!("fixed above") };
                    let atol = report.stated.atol("embeddings", floor);
                    report.compare("model_legacy.pth: embeddings", &emb, expected, atol, 0.0)?;
                }
            }
        }
    }
    Ok(report)
}

/// The cases that need only the network and `cases.safetensors`.
fn run_cases(net: &Backbone, cases: &HashMap<String, Tensor>, report: &mut FixtureReport) -> Result<()> {
    if let Some(faces) = cases.get("faces_112") {
        let outs = net.forward_outputs(faces)?;
        case(report, cases, "embeddings", &outs.embedding)?;
        case(report, cases, "embeddings_before_l2norm", &outs.before_l2norm)?;
        let cos = outs.embedding.matmul(&outs.embedding.t()?)?;
        case(report, cases, "cosine_similarity", &cos)?;
        for (k, stage) in outs.stages.iter().enumerate() {
            case(report, cases, &format!("debug_img0_stage{}", k + 1), &stage.get(0)?)?;
        }
        match cases.get("pair_index") {
            Some(pairs) => pair_cases(net, faces, pairs, cases, report)?,
            None => report.missing("pair_index"),
        }
    } else {
        report.missing("faces_112");
    }
    match (cases.get("styleclip_y_256"), cases.get("styleclip_y_hat_256")) {
        (Some(y), Some(y_hat)) => styleclip_cases(net, y, y_hat, cases, report),
        (y, _) => {
            report.missing(if y.is_none() { "styleclip_y_256" } else { "styleclip_y_hat_256" });
            Ok(())
        }
    }
}

/// ID loss between rows of `faces_112`, and its gradient with respect to the
/// second image of each pair (the first is detached).
fn pair_cases(
    net: &Backbone,
    faces: &Tensor,
    pairs: &Tensor,
    cases: &HashMap<String, Tensor>,
    report: &mut FixtureReport,
) -> Result<()> {
    let pairs = pairs.to_dtype(DType::U32)?;
    let first = faces.index_select(&pairs.narrow(1, 0, 1)?.flatten_all()?, 0)?;
    let second = Var::from_tensor(&faces.index_select(&pairs.narrow(1, 1, 1)?.flatten_all()?, 0)?)?;
    let e_first = net.forward_outputs(&first)?.embedding.detach();
    let e_second = net.forward_outputs(second.as_tensor())?.embedding;
    let per_pair = id_loss_per_pair(&e_first, &e_second)?;
    let mean = per_pair.mean_all()?;
    let grads = mean.backward()?;
    case(report, cases, "id_loss_per_pair", &per_pair)?;
    case(report, cases, "id_loss_mean", &mean.reshape(1)?)?;
    let grad = grads.get(&second).cloned().unwrap_or(second.zeros_like()?);
    case(report, cases, "grad_id_loss_mean_wrt_second", &grad)
}

/// StyleCLIP's `IDLoss` on 256x256 generator images: crops, features, loss
/// and the loss's gradient with respect to `y_hat`.
fn styleclip_cases(
    net: &Backbone,
    y: &Tensor,
    y_hat: &Tensor,
    cases: &HashMap<String, Tensor>,
    report: &mut FixtureReport,
) -> Result<()> {
    let size = net.config().input_size;
    for (img, name) in [(y, "styleclip_y"), (y_hat, "styleclip_y_hat")] {
        let crop = styleclip_preprocess(img, size)?;
        case(report, cases, &format!("{name}_crop{size}"), &crop)?;
        let feats = net.forward_outputs(&crop)?.embedding;
        case(report, cases, &format!("{name}_feats"), &feats)?;
    }
    let loss_fn = IdLoss::new(net.clone());
    let y_hat = Var::from_tensor(y_hat)?;
    let loss = loss_fn.forward(y_hat.as_tensor(), y)?;
    let grads = loss.backward()?;
    case(report, cases, "styleclip_id_loss", &loss.reshape(1)?)?;
    let grad = grads.get(&y_hat).cloned().unwrap_or(y_hat.zeros_like()?);
    case(report, cases, "grad_styleclip_id_loss_wrt_y_hat_256", &grad)
}

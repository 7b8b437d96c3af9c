//! `lsd-tui check-fixture MODEL DIR`: runs any reference fixture directory
//! of a model's layout (config, checkpoint, cases) against our
//! implementation and prints max abs/rel error per case against the
//! tolerances stored in that directory. `check-fixture all [ROOT]` runs
//! every model's directory under ROOT (default `tests/fixtures`) in one
//! process and ends with a summary.
//!
//! On a CUDA device the precision matters (`--precision`, default `tf32`
//! there): under `fp32` every case keeps the fixture's own tolerance; under
//! `tf32` a compared tensor passes when its largest error is within
//! [`TF32_RTOL`] of its largest reference value, since the fixtures'
//! tolerances describe float32 products and TF32 rounds the operands to
//! 10-bit mantissas (see [`Tolerance`]).

use std::path::{Path, PathBuf};

use candle_core::Device;
use color_eyre::eyre::{bail, Result, WrapErr};
use lsd_core::fixture::FixtureReport;
use lsd_core::models::{arcface, bisenet, clip, stylegan2};
use lsd_core::ops::Precision;

/// Which network a fixture directory is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FixtureModel {
    /// rosinality StyleGAN2 generator (config.json, generator.pt, cases.safetensors).
    Stylegan2,
    /// NVIDIA StyleGAN2-ADA network pickles (config.json, network.pkl,
    /// network-clamp.pkl, cases.safetensors).
    #[value(name = "stylegan2-ada")]
    Stylegan2Ada,
    /// Hugging Face CLIP (config.json, tokenizer.json, model.safetensors, cases.*).
    Clip,
    /// ArcFace IR-SE50 (config.json, model.pth, cases.safetensors).
    Arcface,
    /// BiSeNet face parsing (config.json, model.pth, cases.safetensors).
    Bisenet,
    /// Every model above: DIR is the folder holding one fixture directory
    /// per model, named as above (default `tests/fixtures`).
    All,
}

impl FixtureModel {
    /// Every single model, in the order `all` runs them.
    const MODELS: [FixtureModel; 5] = [Self::Stylegan2, Self::Stylegan2Ada, Self::Clip, Self::Arcface, Self::Bisenet];

    /// The model's name on the command line and its directory's name.
    fn name(self) -> &'static str {
        match self {
            Self::Stylegan2 => "stylegan2",
            Self::Stylegan2Ada => "stylegan2-ada",
            Self::Clip => "clip",
            Self::Arcface => "arcface",
            Self::Bisenet => "bisenet",
            Self::All => "all",
        }
    }
}

/// `lsd-tui check-fixture` arguments.
#[derive(Debug, clap::Args)]
pub struct CheckFixtureArgs {
    /// The network the fixture is for, or `all`.
    #[arg(value_enum)]
    pub model: FixtureModel,
    /// The fixture directory; for `all`, the folder of the models' fixture
    /// directories (default `tests/fixtures`).
    pub dir: Option<PathBuf>,
    #[command(flatten)]
    pub device: crate::args::DeviceArg,
    /// `tf32` or `fp32` products on a GPU (default: `tf32` on CUDA, `fp32`
    /// on the CPU, where it changes nothing).
    #[arg(long)]
    pub precision: Option<Precision>,
}

/// The relative tolerance of a compared tensor computed with TF32 products
/// on a GPU: `max |actual − expected| ≤ TF32_RTOL · max |expected|`.
pub const TF32_RTOL: f64 = 1e-3;

/// How the cases of a run are judged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tolerance {
    /// Each fixture's own tolerances (the CPU, and `fp32` on a GPU).
    Fixture,
    /// Compared tensors within this share of their largest reference value
    /// (`tf32` on a GPU); cases that are not tensor comparisons (label
    /// agreement, configuration checks, loading) keep their own verdict.
    Relative(f64),
}

impl Tolerance {
    /// The tolerance of a run on `device` at `precision`.
    pub fn for_run(device: &Device, precision: Precision) -> Self {
        if device.is_cuda() && precision == Precision::Tf32 {
            Tolerance::Relative(TF32_RTOL)
        } else {
            Tolerance::Fixture
        }
    }

    /// Re-judges the tensor comparisons of `report` (those without a note)
    /// under a relative tolerance; does nothing under [`Tolerance::Fixture`].
    pub fn apply(self, report: &mut FixtureReport) {
        let Tolerance::Relative(rtol) = self else { return };
        for c in report.cases.iter_mut().filter(|c| c.note.is_none()) {
            c.passed = c.max_rel <= rtol;
            c.atol = 0.0;
            c.rtol = rtol;
        }
    }

    fn describe(self) -> String {
        match self {
            Tolerance::Fixture => "each fixture's own".into(),
            Tolerance::Relative(r) => format!("{r:e} of the largest reference value (TF32)"),
        }
    }
}

/// Runs every case of the directory (or of every directory, for `all`);
/// exits non-zero when any case fails or an expected input is missing.
pub fn run(args: CheckFixtureArgs) -> Result<()> {
    let device = args.device.open()?;
    let precision = args.precision.unwrap_or_else(|| Precision::default_for(&device));
    lsd_core::ops::set_precision(precision);
    let tolerance = Tolerance::for_run(&device, precision);
    let passed = if args.model == FixtureModel::All {
        let root = args.dir.unwrap_or_else(|| PathBuf::from("tests/fixtures"));
        if !root.is_dir() {
            bail!("fixture folder '{}' does not exist", root.display());
        }
        check_all(&root, &device, tolerance)
    } else {
        let Some(dir) = args.dir else {
            bail!("check-fixture {}: give the fixture directory", args.model.name());
        };
        if !dir.is_dir() {
            bail!("fixture directory '{}' does not exist", dir.display());
        }
        let report = check_one(args.model, &dir, &device, tolerance)
            .wrap_err_with(|| format!("checking fixture '{}'", dir.display()))?;
        print!("{}", report.table());
        report.passed()
    };
    println!("device: {}, precision: {precision}, tolerance: {}", args.device.name(), tolerance.describe());
    if !passed {
        std::process::exit(1);
    }
    Ok(())
}

/// One model's fixture directory, judged under `tolerance`.
fn check_one(model: FixtureModel, dir: &Path, device: &Device, tolerance: Tolerance) -> Result<FixtureReport> {
    let mut report = match model {
        FixtureModel::Stylegan2 => stylegan2::check_fixture(dir, device),
        FixtureModel::Stylegan2Ada => stylegan2::ada_fixture::check_fixture(dir, device),
        FixtureModel::Clip => clip::check_fixture(dir, device),
        FixtureModel::Arcface => arcface::check_fixture(dir, device),
        FixtureModel::Bisenet => bisenet::check_fixture(dir, device),
        FixtureModel::All => bail!("'all' is not one fixture"),
    }?;
    tolerance.apply(&mut report);
    Ok(report)
}

/// Every model's directory under `root`, each table as it finishes, then a
/// summary line per model. A missing directory or an error fails that model
/// and the run goes on. True when all passed.
fn check_all(root: &Path, device: &Device, tolerance: Tolerance) -> bool {
    let mut summary = Vec::new();
    for model in FixtureModel::MODELS {
        let dir = root.join(model.name());
        println!("== {} ({})", model.name(), dir.display());
        let t = std::time::Instant::now();
        let verdict = if dir.is_dir() {
            match check_one(model, &dir, device, tolerance) {
                Ok(report) => {
                    print!("{}", report.table());
                    let failed = report.failures().count() + report.missing.len();
                    let line = format!("{} cases, {failed} failed", report.cases.len());
                    (report.passed(), line)
                }
                Err(e) => (false, format!("error: {e:#}")),
            }
        } else {
            (false, "no such directory".to_string())
        };
        summary.push((model.name(), verdict, t.elapsed().as_secs_f64()));
    }
    println!("== summary");
    for (name, (ok, line), secs) in &summary {
        println!("{name:<14} {:<4}  {line} ({secs:.1} s)", if *ok { "ok" } else { "FAIL" });
    }
    let failed = summary.iter().filter(|(_, (ok, _), _)| !ok).count();
    println!("all: {} fixtures, {failed} failed", summary.len());
    failed == 0
}

#[cfg(test)]
mod tests {
    use lsd_core::fixture::CaseResult;

    use super::*;

    fn case(name: &str, max_rel: f64, passed: bool, note: Option<&str>) -> CaseResult {
        CaseResult {
            name: name.into(),
            max_abs: max_rel,
            max_rel,
            atol: 1e-6,
            rtol: 0.0,
            passed,
            note: note.map(String::from),
        }
    }

    #[test]
    fn tf32_on_a_gpu_judges_tensors_relatively_and_fp32_keeps_the_fixture() {
        assert_eq!(Tolerance::for_run(&Device::Cpu, Precision::Tf32), Tolerance::Fixture);
        assert_eq!(Tolerance::for_run(&Device::Cpu, Precision::Fp32), Tolerance::Fixture);
        let mut report = FixtureReport::new("m");
        report.push(case("close", 5e-4, false, None));
        report.push(case("far", 2e-3, true, None));
        report.push(case("labels", 0.5, true, Some("2 of 4 labels differ")));
        let before = report.clone();
        Tolerance::Fixture.apply(&mut report);
        let verdicts = |r: &FixtureReport| r.cases.iter().map(|c| c.passed).collect::<Vec<_>>();
        assert_eq!(verdicts(&report), verdicts(&before));
        Tolerance::Relative(TF32_RTOL).apply(&mut report);
        assert_eq!(verdicts(&report), [true, false, true], "tensors by 1e-3 relative, notes keep theirs");
    }
}

//! `lsd-tui check-fixture all`: every fixture in one run, a summary, and a
//! non-zero exit when any fixture fails; and `bench`'s JSON result file.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::Device;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn lsd(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lsd-tui")).args(args).output().expect("run lsd-tui");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The summary line of `model`.
fn summary<'a>(text: &'a str, model: &str) -> &'a str {
    let tail = text.split("== summary").nth(1).unwrap_or_else(|| panic!("no summary:\n{text}"));
    tail.lines().find(|l| l.split_whitespace().next() == Some(model)).unwrap_or_else(|| panic!("{model}:\n{text}"))
}

/// A fixtures folder with three good fixtures (links to the shipped ones),
/// a copy of BiSeNet's without one expected tensor, and no ArcFace: the run
/// checks all the others, then fails and says which two failed.
#[test]
fn all_fixtures_run_in_one_command_and_a_broken_one_fails_it() {
    let root = tempfile::tempdir().expect("temp dir");
    for model in ["stylegan2", "stylegan2-ada", "clip"] {
        std::os::unix::fs::symlink(fixtures().join(model), root.path().join(model)).expect("link");
    }
    let broken = root.path().join("bisenet");
    std::fs::create_dir(&broken).expect("dir");
    for entry in std::fs::read_dir(fixtures().join("bisenet")).expect("fixture dir") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, broken.join(path.file_name().expect("name"))).expect("copy");
    }
    let cases = broken.join("cases.safetensors");
    let mut tensors = candle_core::safetensors::load(&cases, &Device::Cpu).expect("cases load");
    tensors.remove("rect_logits").expect("the fixture has rect_logits");
    candle_core::safetensors::save(&tensors, &cases).expect("cases save");

    let (ok, text) = lsd(&["check-fixture", "all", root.path().to_str().expect("utf-8 path")]);
    assert!(!ok, "{text}");
    for model in ["stylegan2", "stylegan2-ada", "clip"] {
        let line = summary(&text, model);
        assert!(line.contains(" ok ") && line.contains(", 0 failed"), "{line}\n{text}");
    }
    assert!(summary(&text, "bisenet").contains("FAIL"), "{text}");
    assert!(summary(&text, "arcface").contains("FAIL") && summary(&text, "arcface").contains("no such directory"));
    assert!(text.contains("all: 5 fixtures, 2 failed"), "{text}");
    assert!(text.contains("rect_logits") && text.contains("missing"), "{text}");
    assert!(text.contains("tolerance: each fixture's own"), "{text}");
}

#[test]
fn check_fixture_needs_a_directory_for_one_model_and_an_existing_folder_for_all() {
    let (ok, text) = lsd(&["check-fixture", "clip"]);
    assert!(!ok && text.contains("give the fixture directory"), "{text}");
    let (ok, text) = lsd(&["check-fixture", "all", "/nonexistent/fixtures"]);
    assert!(!ok && text.contains("does not exist"), "{text}");
}

#[test]
fn bench_writes_its_result_line_to_the_json_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("generator.json");
    let args = ["bench", "generator", "--size", "8", "--iters", "1", "--warmup", "1", "--batch", "2", "--json"];
    let mut all: Vec<&str> = args.to_vec();
    all.push(json.to_str().expect("utf-8 path"));
    let (ok, text) = lsd(&all);
    assert!(ok, "{text}");
    let line: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("written")).expect("JSON");
    assert_eq!(line["bench"], "generator");
    assert_eq!(line["batch"], 2);
    assert_eq!(line["precision"], "fp32");
    assert_eq!(line["warmup"].as_array().map(Vec::len), Some(1), "{line}");
    assert!(line["forward_ms"].as_f64().is_some_and(|v| v > 0.0), "{line}");
    // The GPU's memory figures are there, and empty on the CPU.
    assert!(line.get("gpu_memory").is_some_and(serde_json::Value::is_null), "{line}");
}

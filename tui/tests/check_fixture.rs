//! `lsd-tui check-fixture` on fixture directories: the shipped ones pass,
//! copies with a perturbed expected tensor or a missing case fail and say
//! which case.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};

fn fixture(model: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(model)
}

fn check(model: &str, dir: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lsd-tui"))
        .args(["check-fixture", model])
        .arg(dir)
        .output()
        .expect("run lsd-tui");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// A copy of a fixture directory whose `cases.safetensors` is edited.
fn edited_copy(model: &str, edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for entry in std::fs::read_dir(fixture(model)).expect("fixture dir") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, dir.path().join(path.file_name().expect("name"))).expect("copy");
    }
    let cases = dir.path().join("cases.safetensors");
    let mut tensors = candle_core::safetensors::load(&cases, &Device::Cpu).expect("cases load");
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, &cases).expect("cases save");
    dir
}

fn perturb(tensors: &mut HashMap<String, Tensor>, key: &str, by: f64) {
    let t = tensors[key].clone();
    tensors.insert(key.to_string(), (t + by).expect("add"));
}

#[test]
fn every_shipped_fixture_passes() {
    for model in ["stylegan2", "stylegan2-ada", "clip", "arcface", "bisenet"] {
        let (ok, text) = check(model, &fixture(model));
        assert!(ok, "{model}:\n{text}");
        assert!(text.contains(", 0 failed"), "{model}:\n{text}");
    }
}

#[test]
fn a_perturbed_expected_tensor_fails_and_is_named() {
    let dir = edited_copy("stylegan2", |t| perturb(t, "wplus.image", 1e-3));
    let (ok, text) = check("stylegan2", dir.path());
    assert!(!ok, "{text}");
    let failing: Vec<&str> = text.lines().filter(|l| l.ends_with("FAIL")).collect();
    assert!(failing.iter().any(|l| l.contains("wplus.image")), "{text}");
    // Only that tensor (in both checkpoints) fails.
    assert_eq!(failing.len(), 2, "{text}");

    let dir = edited_copy("arcface", |t| perturb(t, "embeddings", 1e-4));
    let (ok, text) = check("arcface", dir.path());
    assert!(!ok && text.lines().any(|l| l.contains("embeddings") && l.ends_with("FAIL")), "{text}");
}

#[test]
fn a_perturbed_stylegan2_ada_case_fails_and_is_named() {
    let dir = edited_copy("stylegan2-ada", |t| perturb(t, "features.05", 1e-3));
    let (ok, text) = check("stylegan2-ada", dir.path());
    assert!(!ok, "{text}");
    let failing: Vec<&str> = text.lines().filter(|l| l.ends_with("FAIL")).collect();
    // The pickle and its conversion, nothing else.
    assert_eq!(failing.len(), 2, "{text}");
    assert!(failing.iter().all(|l| l.contains("features.05 (b32.conv0)")), "{text}");
}

#[test]
fn a_missing_case_or_file_fails() {
    let dir = edited_copy("bisenet", |t| {
        t.remove("rect_logits");
    });
    let (ok, text) = check("bisenet", dir.path());
    assert!(!ok, "{text}");
    assert!(text.contains("rect_logits") && text.contains("missing"), "{text}");

    let dir = edited_copy("clip", |_| {});
    std::fs::remove_file(dir.path().join("model.safetensors")).expect("remove");
    let (ok, text) = check("clip", dir.path());
    assert!(!ok, "{text}");
    assert!(text.contains("model.safetensors"), "{text}");

    let (ok, text) = check("clip", Path::new("/nonexistent/fixture"));
    assert!(!ok && text.contains("does not exist"), "{text}");
}

/// Every network also loads from safetensors: `weights convert` turns each
/// fixture checkpoint into safetensors, the copy replaces the torch file
/// (the reader goes by content, not by name), and every case still passes.
#[test]
fn converted_safetensors_checkpoints_pass_the_same_cases() {
    for (model, file) in [("stylegan2", "generator.pt"), ("arcface", "model.pth"), ("bisenet", "model.pth")] {
        let dir = edited_copy(model, |_| {});
        let converted = dir.path().join("converted.safetensors");
        let out = Command::new(env!("CARGO_BIN_EXE_lsd-tui"))
            .args(["weights", "convert"])
            .arg(dir.path().join(file))
            .arg(&converted)
            .output()
            .expect("run lsd-tui");
        assert!(out.status.success(), "{model}: {}", String::from_utf8_lossy(&out.stderr));
        let bytes = std::fs::read(&converted).expect("converted file");
        // A safetensors file starts with its little-endian header length.
        assert!(bytes.len() > 8 && bytes[8] == b'{', "{model}: not safetensors");
        std::fs::rename(&converted, dir.path().join(file)).expect("replace");
        // The legacy copies stay torch files: one run checks both formats.
        let (ok, text) = check(model, dir.path());
        assert!(ok && text.contains(", 0 failed"), "{model} from safetensors:\n{text}");
    }
}

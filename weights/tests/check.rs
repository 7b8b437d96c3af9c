//! `check`: checksums AND tensor layout; corrupt, truncated and mis-shaped
//! files are caught and the first bad tensor is named. Also `resolve` and
//! `list` on a local weights directory.

use std::path::{Path, PathBuf};

use lsd_weights::{
    check_file, ChecksumStatus, Error, FileSpec, FileState, Layout, LayoutStatus, Manifest, Silent, Store,
};
use sha2::{Digest, Sha256};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures")).join(rel)
}

fn pinned(path: &Path) -> FileSpec {
    let bytes = std::fs::read(path).unwrap();
    FileSpec {
        file: path.file_name().unwrap().to_string_lossy().into_owned(),
        size: Some(bytes.len() as u64),
        sha256: Some(hex::encode(Sha256::digest(&bytes))),
        format: "torch".into(),
        url: None,
        layout: None,
        prefix: String::new(),
    }
}

#[test]
fn a_good_file_passes_and_corrupt_or_truncated_copies_fail() {
    let original = fixture("arcface/model.pth");
    let layout = Layout::from_checkpoint(&original).unwrap();
    assert!(layout.keys.len() > 100, "{}", layout.keys.len());
    let spec = pinned(&original);
    let dir = tempfile::tempdir().unwrap();

    let good = dir.path().join("model.pth");
    std::fs::copy(&original, &good).unwrap();
    let r = check_file(&good, Some(&spec), Some(&layout), "", &mut Silent).unwrap();
    assert!(r.passed(), "{r}");
    assert!(matches!(r.layout, LayoutStatus::Ok { .. }), "{r}");

    // One flipped byte in the tensor data: same size, other checksum.
    let mut bytes = std::fs::read(&original).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    let corrupt = dir.path().join("corrupt.pth");
    std::fs::write(&corrupt, &bytes).unwrap();
    let r = check_file(&corrupt, Some(&spec), Some(&layout), "", &mut Silent).unwrap();
    assert!(!r.passed(), "{r}");
    assert!(matches!(r.checksum, Some(ChecksumStatus::ShaMismatch { .. })), "{r}");

    // Truncated: wrong size, and it no longer loads.
    let truncated = dir.path().join("truncated.pth");
    std::fs::write(&truncated, &std::fs::read(&original).unwrap()[..mid]).unwrap();
    let r = check_file(&truncated, Some(&spec), Some(&layout), "", &mut Silent).unwrap();
    assert!(!r.passed(), "{r}");
    assert!(matches!(r.checksum, Some(ChecksumStatus::SizeMismatch { .. })), "{r}");
    assert!(matches!(r.layout, LayoutStatus::Unloadable { .. }), "{r}");

    // Missing file.
    let r = check_file(&dir.path().join("nope.pth"), Some(&spec), Some(&layout), "", &mut Silent).unwrap();
    assert!(!r.passed() && r.checksum.is_none(), "{r}");
}

#[test]
fn the_first_missing_or_misshaped_tensor_is_named() {
    let original = fixture("arcface/model.pth");
    let mut layout = Layout::from_checkpoint(&original).unwrap();
    let third = layout.keys[2].0.clone();
    layout.keys[2].1.push(7);
    let r = check_file(&original, None, Some(&layout), "", &mut Silent).unwrap();
    match &r.layout {
        LayoutStatus::BadShape { name, .. } => assert_eq!(name, &third),
        other => panic!("expected a bad shape, got {other}"),
    }
    assert!(r.to_string().contains(&third), "{r}");

    let mut layout = Layout::from_checkpoint(&original).unwrap();
    layout.keys.insert(1, ("output_layer.extra.weight".into(), vec![1]));
    let r = check_file(&original, None, Some(&layout), "", &mut Silent).unwrap();
    assert_eq!(r.layout, LayoutStatus::Missing { name: "output_layer.extra.weight".into() });

    // With a prefix (as for `g_ema.` in StyleGAN2 checkpoints) nothing matches.
    let layout = Layout::from_checkpoint(&original).unwrap();
    let r = check_file(&original, None, Some(&layout), "g_ema.", &mut Silent).unwrap();
    assert!(matches!(r.layout, LayoutStatus::Missing { ref name } if name.starts_with("g_ema.")), "{r}");
}

#[test]
fn the_real_layouts_have_the_fixture_names_with_full_shapes() {
    // The narrow fixture networks use the real key names with smaller
    // shapes: checked against the full-size layout, the first report is a
    // shape, never a missing key.
    for (file, layout, prefix) in [
        ("arcface/model.pth", "arcface_ir_se50.keys.json", ""),
        ("bisenet/model.pth", "bisenet_19.keys.json", ""),
        ("stylegan2/generator.pt", "ffhq-1024-config-f.keys.json", "g_ema."),
    ] {
        let layout = Layout::builtin(layout).unwrap();
        let r = check_file(&fixture(file), None, Some(&layout), prefix, &mut Silent).unwrap();
        assert!(matches!(r.layout, LayoutStatus::BadShape { .. }), "{file}: {r}");
    }
}

fn store_with(files: &[(&str, &Path)]) -> (tempfile::TempDir, Store) {
    let mut text = String::new();
    for (name, src) in files {
        let spec = pinned(src);
        text += &format!(
            "[[weights]]\nname = \"{name}\"\ndescription = \"d\"\nrepo = \"t/{name}\"\nlicence = \"MIT\"\n\
             [[weights.files]]\nfile = \"{}\"\nsize = {}\nsha256 = \"{}\"\nformat = \"torch\"\n",
            spec.file,
            spec.size.unwrap(),
            spec.sha256.unwrap()
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path(), Manifest::parse(&text, "test").unwrap());
    (dir, store)
}

#[test]
fn resolve_list_and_check_a_store() {
    let arc = fixture("arcface/model.pth");
    let bis = fixture("bisenet/model_legacy.pth");
    let (_dir, store) = store_with(&[("arc", &arc), ("bis", &bis)]);

    // Missing: the error gives the fetch command.
    let err = store.resolve("arc").unwrap_err();
    assert!(matches!(err, Error::Missing { .. }), "{err}");
    assert!(err.to_string().contains("lsd-tui weights fetch arc"), "{err}");
    assert!(matches!(store.list()[0].state, FileState::Missing { partial: None }));
    // Unknown names list the known ones; paths are passed through.
    let err = store.resolve("nonesuch").unwrap_err().to_string();
    assert!(err.contains("arc, bis"), "{err}");
    assert_eq!(store.resolve(arc.to_str().unwrap()).unwrap(), arc);
    assert!(store.resolve("/no/such/file.pth").is_err());

    // Copied in by hand: present but not verified until used or checked.
    let entry = store.manifest.get("arc").unwrap();
    let dest = store.path(entry, &entry.files[0]);
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::copy(&arc, &dest).unwrap();
    assert_eq!(store.list()[0].state, FileState::Unverified);
    assert_eq!(store.resolve("arc").unwrap(), dest);
    assert_eq!(store.list()[0].state, FileState::Verified, "resolve verified it");
    let reports = store.check_entry(entry, &mut Silent).unwrap();
    assert!(reports[0].passed(), "{}", reports[0]);
    assert_eq!(store.list()[0].state, FileState::Verified);

    // Corrupted afterwards (same size): check catches it.
    let mut bytes = std::fs::read(&dest).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 1;
    std::fs::write(&dest, &bytes).unwrap();
    let reports = store.check_entry(entry, &mut Silent).unwrap();
    assert!(!reports[0].passed(), "{}", reports[0]);

    // A path is identified by content, or else by file name.
    let r = store.check_path(&arc, &mut Silent).unwrap();
    assert!(r.passed() && r.identified_as.as_deref().unwrap().contains("sha256"), "{r}");
    let r = store.check_path(&dest, &mut Silent).unwrap();
    assert!(!r.passed() && r.identified_as.as_deref().unwrap().contains("file name"), "{r}");
    // A file the manifest does not know is not a pass.
    let r = store.check_path(&fixture("arcface/config.json"), &mut Silent).unwrap();
    assert!(r.unknown && !r.passed(), "{r}");
}

#[test]
fn convert_reports_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let input = fixture("arcface/model.pth");
    let err = lsd_weights::convert(&input, &dir.path().join("out.bin")).unwrap_err().to_string();
    assert!(err.contains(".safetensors"), "{err}");
    let out = dir.path().join("out.safetensors");
    let s = lsd_weights::convert(&input, &out).expect("arcface converts");
    assert!(s.tensors > 100, "{s}");
    assert!(s.details.contains("source_sha256"), "{s}");
}

/// Issue 15: a weight file already in the store was used at run time with no
/// check at all. It is now verified (size and SHA-256) before its first use
/// and whenever its size or modification time changed.
#[test]
fn issue_15_a_stored_file_is_verified_before_it_is_used() {
    let arc = fixture("arcface/model.pth");
    let (_dir, store) = store_with(&[("arc", &arc)]);
    let entry = store.manifest.get("arc").unwrap();
    let dest = store.path(entry, &entry.files[0]);
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();

    // Corrupt from the start (same size): refused, with what to do.
    let mut bytes = std::fs::read(&arc).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 1;
    std::fs::write(&dest, &bytes).unwrap();
    let err = store.resolve("arc").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Verification { .. }), "{msg}");
    assert!(msg.contains("lsd-tui weights fetch arc"), "{msg}");

    // A good file is verified once and remembered by size and mtime.
    std::fs::copy(&arc, &dest).unwrap();
    assert_eq!(store.resolve("arc").unwrap(), dest);
    let stamp = std::fs::read_to_string(format!("{}.sha256", dest.display())).unwrap();
    assert!(stamp.contains("# mtime "), "{stamp}");
    assert_eq!(store.resolve("arc").unwrap(), dest);

    // Changed afterwards (same size, new mtime): caught at the next use.
    std::thread::sleep(std::time::Duration::from_millis(20));
    bytes[n / 2] ^= 1;
    bytes[n - 100] ^= 1;
    std::fs::write(&dest, &bytes).unwrap();
    assert!(matches!(store.resolve("arc"), Err(Error::Verification { .. })));
}

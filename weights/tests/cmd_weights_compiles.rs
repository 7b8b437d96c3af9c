//! Compiles the CLI glue `tui/src/cmd_weights.rs` (not yet wired into the
//! binary) against this crate, and runs `list`/`check`/`fetch --offline`
//! through it on an empty store.

#[path = "../../tui/src/cmd_weights.rs"]
#[allow(dead_code)]
mod cmd_weights;

use cmd_weights::{run_with, WeightsCommand};
use lsd_weights::{FetchOptions, Manifest, Store};

#[test]
fn cli_glue_runs_on_an_empty_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path(), Manifest::builtin());
    let opts = FetchOptions { offline: true, ..FetchOptions::default() };

    let mut out = Vec::new();
    assert!(run_with(&store, &opts, &WeightsCommand::List, &mut out).unwrap());
    let text = String::from_utf8(out).unwrap();
    for needle in ["stylegan2-ffhq-1024", "clip-vit-b32", "missing", "non-commercial", "MIT", "size not pinned"] {
        assert!(text.contains(needle), "{needle} not in:\n{text}");
    }

    let mut out = Vec::new();
    let err = run_with(&store, &opts, &WeightsCommand::Fetch { names: vec!["bisenet-face-19".into()], all: false }, &mut out)
        .unwrap_err()
        .to_string();
    assert!(err.contains("offline") && err.contains("79999_iter.pth"), "{err}");

    let mut out = Vec::new();
    let ok = run_with(&store, &opts, &WeightsCommand::Check { targets: vec!["arcface-ir-se50".into()] }, &mut out).unwrap();
    assert!(!ok);
    assert!(String::from_utf8(out).unwrap().contains("missing"));
}

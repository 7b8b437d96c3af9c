//! The example plugin, loaded as a library, against itself in-process.
//!
//! `this_plugin` runs `cargo build -p lsd-plugin-colour-stats` into this
//! test's own target directory and profile (a no-op when `cargo test` has
//! just built the cdylib), then the harness compares value and gradients
//! of the loaded library with the in-process term and finite differences.

use lsd_core::plugin::{InitContext, Plugin, PluginLibrary};
use lsd_plugin_colour_stats::ColourStats;
use lsd_plugin_testing::{check_plugin_gradients, this_plugin, tiny_batch, GradCheck};

fn library() -> std::path::PathBuf {
    this_plugin(env!("CARGO_MANIFEST_DIR"), env!("CARGO_PKG_NAME"))
}

#[test]
fn loaded_gradients_match_in_process_and_finite_differences() -> lsd_core::Result<()> {
    let path = library();
    for params in ["", "mean_weight: 0.5\nstd_weight: 3.0"] {
        let term = ColourStats::from_yaml(params, &InitContext::default())?;
        let report = check_plugin_gradients(&path, params, &term, &tiny_batch(7, false)?, &GradCheck::default())?;
        assert!(report.passed(), "params {params:?}\n{}", report.table());
    }
    Ok(())
}

#[test]
fn lists_its_parameters_and_rejects_bad_ones() -> lsd_core::Result<()> {
    let lib = PluginLibrary::open(library())?;
    assert_eq!(lib.info().name, "colour-stats");
    let names: Vec<_> = lib.info().params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["mean_weight", "std_weight", "epsilon"]);
    let ctx = InitContext::default();
    let msg = lib.instantiate("mean_weight: 1.0\nstd_wieght: 2.0", &ctx).unwrap_err().to_string();
    assert!(msg.contains("std_wieght") && msg.contains("line 2"), "{msg}");
    let msg = lib.instantiate("epsilon: 0", &ctx).unwrap_err().to_string();
    assert!(msg.contains("'epsilon' is 0"), "{msg}");
    Ok(())
}

//! The plugin host against real libraries: the test plugins of the
//! workspace (`tests/plugins/*`) are built, loaded and compared with the
//! same terms run in-process.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor, Var};

use lsd_core::plugin::{
    differentiate, discovery, surrogate, EditBatch, Fingerprint, InitContext, LossTerm, Plugin, PluginLibrary,
};
use lsd_core::{Error, Result};
use lsd_plugin_testing::{
    batch_to, check_plugin_gradients, compare_outputs, finite_differences, tiny_batch, workspace_test_plugins,
    GradCheck, GradReport, ProbeTerm,
};

fn plugins() -> &'static HashMap<&'static str, PathBuf> {
    static PATHS: OnceLock<HashMap<&'static str, PathBuf>> = OnceLock::new();
    PATHS.get_or_init(|| workspace_test_plugins().expect("the test plugins build"))
}

fn probe_path() -> PathBuf {
    plugins()["lsd-plugin-test-probe"].clone()
}

fn probe(params: &str) -> Result<ProbeTerm> {
    Ok(ProbeTerm::from_yaml(params, &InitContext::default())?)
}

#[test]
fn fingerprint_is_filled_in_at_compile_time() {
    let f = Fingerprint::host();
    assert!(f.rustc.starts_with("rustc "), "{f}");
    // Keep in step with the workspace's candle-core.
    assert!(f.candle.starts_with("0.11."), "{f}");
    assert_eq!(f.sdk, env!("CARGO_PKG_VERSION"));
    assert_eq!(f.features, if cfg!(feature = "cuda") { "cuda" } else { "" });
    assert!(f.accepts(&f.clone()));
    let unknown = Fingerprint { candle: "unknown".into(), ..f.clone() };
    assert!(!unknown.accepts(&unknown.clone()));
}

#[test]
fn params_errors_name_the_field_and_position() {
    let err = probe("scale: 2.0\nsacle: 3.0\n").unwrap_err().to_string();
    assert!(err.contains("sacle") && err.contains("test-probe"), "{err}");
    assert!(err.contains("line 2"), "{err}");
    let err = probe("mode: sideways").unwrap_err().to_string();
    assert!(err.contains("sideways") && err.contains("line 1"), "{err}");
    assert!(probe("").is_ok());
}

#[test]
fn in_process_gradients_match_finite_differences() -> Result<()> {
    let term = probe("features: true")?;
    let batch = batch_to(&tiny_batch(3, true)?, DType::F64, &Device::Cpu)?;
    let analytic = differentiate(&term, &batch)?;
    let numeric = finite_differences(&term, &batch, 1e-6)?;
    let mut rows = Vec::new();
    compare_outputs(&analytic, &numeric, &batch, "finite differences", 1e-6, 1e-8, &mut rows)?;
    let report = GradReport { rows };
    assert!(report.passed(), "{}", report.table());
    assert!(analytic.grad_x_edit.is_some() && analytic.grad_w.is_some());
    assert!(analytic.grad_u.is_some() && analytic.grad_features_edit.len() == 2);
    Ok(())
}

/// The surrogate chains term gradients through a host graph exactly:
/// `x_edit = tanh(A · w_edit)` stands in for the generator, and the
/// direction's gradient via `differentiate` + `surrogate` must equal the
/// gradient of the loss computed end to end in one graph.
#[test]
fn surrogate_backward_equals_end_to_end_gradient() -> Result<()> {
    let dev = Device::Cpu;
    let base = batch_to(&tiny_batch(5, false)?, DType::F64, &dev)?;
    let u = Var::from_tensor(&base.u)?;
    let a = Tensor::randn(0f64, 0.3, (6, 48), &dev)?;
    let generate = |u: &Tensor| -> Result<EditBatch> {
        let mut b = base.clone();
        b.u = u.clone();
        let w_edit = b.w_edit()?.reshape((2, 6))?;
        b.x_edit = w_edit.matmul(&a)?.tanh()?.reshape((2, 3, 4, 4))?;
        Ok(b)
    };
    let terms = [(probe("scale: 1.0")?, 0.7), (probe("scale: -2.5")?, 0.2)];

    let b = generate(u.as_tensor())?;
    let mut direct = Tensor::zeros((), DType::F64, &dev)?;
    for (t, lambda) in &terms {
        direct = (direct + (t.loss(&b)? * *lambda)?)?;
    }
    let g_direct = direct.backward()?.get(u.as_tensor()).expect("u has a gradient").clone();

    let b = generate(u.as_tensor())?;
    let outs = terms.iter().map(|(t, _)| Ok(differentiate(t, &b)?)).collect::<Result<Vec<_>>>()?;
    let weights: Vec<f64> = terms.iter().map(|(_, l)| *l).collect();
    let s = surrogate(&outs, &weights, &b)?;
    let g_chain = s.backward()?.get(u.as_tensor()).expect("u has a gradient").clone();

    let diff = (g_direct - &g_chain)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
    let scale = g_chain.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
    assert!(scale > 1e-3 && diff <= 1e-12 * scale.max(1.0), "diff {diff:e}, scale {scale:e}");
    Ok(())
}

#[test]
fn loaded_probe_gradients_match_in_process_and_finite_differences() -> Result<()> {
    for params in ["", "features: true\nscale: 0.5"] {
        let term = probe(params)?;
        let batch = tiny_batch(11, term.needs().features)?;
        let report = check_plugin_gradients(&probe_path(), params, &term, &batch, &GradCheck::default())?;
        assert!(report.passed(), "params {params:?}\n{}", report.table());
    }
    Ok(())
}

#[test]
fn loaded_plugin_describes_itself() -> Result<()> {
    let lib = PluginLibrary::open(probe_path())?;
    assert_eq!(lib.info().name, "test-probe");
    assert_eq!(lib.info().version, "0.0.1");
    assert_eq!(lib.package(), "lsd-plugin-test-probe");
    let names: Vec<&str> = lib.info().params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["scale", "features", "mode", "precision"]);
    assert_eq!(lib.fingerprint(), &Fingerprint::host());
    let term = lib.instantiate("features: true", &InitContext::default())?;
    assert!(term.needs().features);
    // A term that needs feature maps refuses a batch without them.
    let err = term.evaluate(&tiny_batch(1, false)?).unwrap_err().to_string();
    assert!(err.contains("feature maps"), "{err}");
    Ok(())
}

#[test]
fn bad_params_are_reported_by_the_plugin_with_field_and_line() -> Result<()> {
    let lib = PluginLibrary::open(probe_path())?;
    let err = lib.instantiate("scale: 1.0\nfeatres: true", &InitContext::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::PluginCall { call: "init", panicked: false, .. }), "{msg}");
    assert!(msg.contains("featres") && msg.contains("line 2"), "{msg}");
    Ok(())
}

#[test]
fn term_outlives_its_library_handle() -> Result<()> {
    let term = {
        let lib = PluginLibrary::open(probe_path())?;
        lib.instantiate("", &InitContext::default())?
    };
    let out = term.evaluate(&tiny_batch(2, false)?)?;
    assert!(out.value_f64()?.is_finite() && out.grad_x_edit.is_some());
    Ok(())
}

#[test]
fn a_panic_in_loss_is_an_error_and_the_host_survives() -> Result<()> {
    let lib = PluginLibrary::open(probe_path())?;
    let batch = tiny_batch(4, false)?;
    let panicking = lib.instantiate("mode: panic", &InitContext::default())?;
    let err = panicking.evaluate(&batch).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::PluginCall { call: "loss", panicked: true, .. }), "{msg}");
    assert!(msg.contains("probe: asked to panic") && msg.contains("plugin-testing/src/lib.rs"), "{msg}");
    // Poisoned from now on, and says so.
    let again = panicking.evaluate(&batch).unwrap_err().to_string();
    assert!(again.contains("panicked in an earlier call"), "{again}");
    // Other terms of the same library still work.
    let healthy = lib.instantiate("", &InitContext::default())?;
    assert!(healthy.evaluate(&batch)?.value_f64()?.is_finite());

    let err = lib.instantiate("mode: error", &InitContext::default())?.evaluate(&batch).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::PluginCall { panicked: false, .. }), "{msg}");
    assert!(msg.contains("probe: asked to fail"), "{msg}");

    let msg = lib.instantiate("mode: non_scalar", &InitContext::default())?.evaluate(&batch);
    let msg = msg.unwrap_err().to_string();
    assert!(msg.contains("scalar"), "{msg}");
    Ok(())
}

#[test]
fn mismatched_fingerprint_is_refused_before_any_call() {
    let path = &plugins()["lsd-plugin-test-bad-fingerprint"];
    let err = PluginLibrary::open(path).unwrap_err();
    let msg = err.to_string();
    let Error::PluginMismatch { fields, rebuild, package, .. } = &err else {
        panic!("expected a mismatch, got: {msg}");
    };
    assert_eq!(package, "lsd-plugin-test-bad-fingerprint");
    let host = Fingerprint::host();
    // Both values side by side.
    assert!(msg.contains(&host.rustc) && msg.contains("rustc 0.0.0 (wrong 1970-01-01)"), "{msg}");
    assert!(msg.contains(&host.candle) && msg.contains("0.0.0-wrong"), "{msg}");
    assert!(fields.iter().any(|[f, h, p]| f == "rustc" && h != p));
    // The command to rebuild it.
    assert!(rebuild.contains("cargo") && rebuild.contains("tests/plugins/bad-fingerprint"), "{rebuild}");
    assert!(msg.contains(rebuild.as_str()));
    // None of its functions ran: it counts every call in an exported static.
    // SAFETY: the test library exports this symbol as a `static AtomicUsize`.
    let calls = unsafe {
        let lib = libloading::Library::new(path).expect("loads");
        let counter =
            lib.get::<*const std::sync::atomic::AtomicUsize>(b"LSD_TEST_VTABLE_CALLS").expect("the counter symbol");
        (**counter).load(std::sync::atomic::Ordering::SeqCst)
    };
    assert_eq!(calls, 0, "the host called into a plugin it had refused");
}

#[test]
fn non_plugins_and_missing_files_are_clear_errors() -> Result<()> {
    let err = PluginLibrary::open(&plugins()["lsd-plugin-test-not-a-plugin"]).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::PluginLoad { .. }), "{msg}");
    assert!(msg.contains("not an lsd-tui plugin") && msg.contains("lsd_plugin_declaration"), "{msg}");

    let dir = tempfile::tempdir().map_err(|e| Error::io("creating", "tempdir", e))?;
    let missing = dir.path().join("liblsd_plugin_nothing.so");
    let msg = PluginLibrary::open(&missing).unwrap_err().to_string();
    assert!(msg.contains("no such file") && msg.contains("liblsd_plugin_nothing.so"), "{msg}");

    let garbage = dir.path().join("liblsd_plugin_garbage.so");
    std::fs::write(&garbage, b"this is not a library").map_err(|e| Error::io("writing", &garbage, e))?;
    let msg = PluginLibrary::open(&garbage).unwrap_err().to_string();
    assert!(msg.contains("cannot load it as a dynamic library"), "{msg}");
    Ok(())
}

#[test]
fn discovery_lists_and_resolves_by_name() -> Result<()> {
    use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
    let dir = tempfile::tempdir().map_err(|e| Error::io("creating", "tempdir", e))?;
    let copy = |src: &PathBuf, stem: &str| -> Result<PathBuf> {
        let dst = dir.path().join(format!("{DLL_PREFIX}{stem}{DLL_SUFFIX}"));
        std::fs::copy(src, &dst).map_err(|e| Error::io("copying", src, e))?;
        Ok(dst)
    };
    let good = copy(&probe_path(), "lsd_plugin_probe_copy")?;
    copy(&plugins()["lsd-plugin-test-bad-fingerprint"], "lsd_plugin_bad")?;
    copy(&probe_path(), "not_following_the_convention")?;
    let dirs = vec![dir.path().to_path_buf()];

    let found = discovery::list(&dirs);
    assert_eq!(found.len(), 2, "{found:#?}");
    let ok: Vec<_> = found.iter().filter_map(|f| f.status.as_ref().ok()).collect();
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0].info.name, "test-probe");
    assert!(found.iter().any(|f| matches!(f.status, Err(Error::PluginMismatch { .. }))));

    assert_eq!(discovery::resolve_in("test-probe", &dirs)?.path(), good);
    assert_eq!(discovery::resolve_in(good.to_str().expect("utf-8"), &[])?.path(), good);
    let msg = discovery::resolve_in("no-such-term", &dirs).unwrap_err().to_string();
    assert!(msg.contains("no-such-term") && msg.contains("LSD_PLUGIN_PATH"), "{msg}");
    assert!(msg.contains("lsd_plugin_bad"), "{msg}");

    let report = discovery::check(&good)?;
    assert!(report.smoke_value.is_finite());
    assert_eq!(report.smoke_gradients, ["x_edit", "w", "u"]);
    Ok(())
}

/// Issue 15: a bare library name was checked for existence in the
/// current folder, then `dlopen`ed through the loader's search path,
/// which does not include the current folder: another file, or none.
#[test]
fn issue_15_a_bare_library_name_loads_the_file_in_the_current_folder() -> Result<()> {
    use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
    struct Remove(PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let name = format!("{DLL_PREFIX}lsd_plugin_issue15_{}{DLL_SUFFIX}", std::process::id());
    let here = std::env::current_dir().map_err(|e| Error::io("reading", ".", e))?.join(&name);
    let _cleanup = Remove(here.clone());
    std::fs::copy(probe_path(), &here).map_err(|e| Error::io("copying", &here, e))?;
    let lib = PluginLibrary::open(&name)?;
    assert_eq!(lib.path(), here);
    assert_eq!(lib.info().name, "test-probe");
    Ok(())
}

/// Issue 15: running a recipe opened every `liblsd_plugin_*` of the
/// recipe's folder until one declared the name: a recipe folder from
/// elsewhere ran code. Only the directories the user chose are searched.
#[cfg(target_os = "linux")]
#[test]
fn issue_15_libraries_next_to_a_recipe_are_not_loaded() {
    use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
    let dir = tempfile::tempdir().expect("tempdir");
    let planted = dir.path().join(format!("{DLL_PREFIX}lsd_plugin_planted{DLL_SUFFIX}"));
    std::fs::copy(probe_path(), &planted).expect("copied");
    let recipe_file = dir.path().join("r.yaml");
    let text = "prompt: p\nsteps: 1\nterms:\n  - plugin: no-such-plugin-anywhere\n";
    std::fs::write(&recipe_file, text).expect("written");
    let recipe = lsd_core::recipe::Recipe::load(&recipe_file).expect("a valid recipe");
    let err = lsd_core::engine::load_plugin_terms(&recipe, &lsd_core::engine::Weights::demo(), &Device::Cpu)
        .expect_err("no such plugin");
    assert!(err.message.contains("no-such-plugin-anywhere"), "{err}");
    let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
    assert!(!maps.contains(planted.to_str().expect("utf-8")), "the planted library was loaded");
    // Named by path, the recipe's library is what it gets.
    let text = "prompt: p\nsteps: 1\nterms:\n  - plugin: ./liblsd_plugin_planted.so\n";
    std::fs::write(&recipe_file, text.replace("lib", DLL_PREFIX).replace(".so", DLL_SUFFIX)).expect("written");
    let recipe = lsd_core::recipe::Recipe::load(&recipe_file).expect("a valid recipe");
    let terms =
        lsd_core::engine::load_plugin_terms(&recipe, &lsd_core::engine::Weights::demo(), &Device::Cpu).expect("loads");
    assert_eq!(terms.len(), 1);
}

#[test]
fn search_dirs_come_from_the_variable_then_the_executable() {
    let sep = if cfg!(windows) { ";" } else { ":" };
    let var = format!("/a{sep}{sep}/b{sep}/a");
    let dirs = discovery::search_dirs_from(Some(var.into()), Some("/exe".into()));
    assert_eq!(dirs, [PathBuf::from("/a"), "/b".into(), "/exe".into()]);
    assert!(discovery::is_plugin_file_name(&format!(
        "{}lsd_plugin_clip{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )));
    assert!(!discovery::is_plugin_file_name("libfoo.so.txt"));
}

/// The host tells a plugin its process-wide precision when it creates a
/// term, and the plugin adopts it in its own copy of lsd-core (which the
/// host's `set_precision` cannot reach).
#[test]
fn a_loaded_plugin_adopts_the_host_precision() -> Result<()> {
    use lsd_core::ops::{precision, set_precision, Precision};
    let lib = PluginLibrary::open(probe_path())?;
    let before = precision();
    for (host, other) in [(Precision::Tf32, Precision::Fp32), (Precision::Fp32, Precision::Tf32)] {
        set_precision(host);
        // Whatever the caller's context says, the host sends its own.
        let ctx = InitContext { precision: other.name().into(), ..InitContext::default() };
        lib.instantiate(&format!("precision: {host}"), &ctx)?;
        let msg = lib.instantiate(&format!("precision: {other}"), &ctx).unwrap_err().to_string();
        assert!(msg.contains(&format!("precision is {host}, expected {other}")), "{msg}");
    }
    set_precision(before);
    Ok(())
}

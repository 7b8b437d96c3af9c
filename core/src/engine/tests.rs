//! Engine tests on the demo generator with in-process terms.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::*;
use crate::outputs::read_direction;
use crate::plugin::{LossTerm, Needs};

/// Pulls the edited image towards a flat colour: `mean((x_edit − c)²)`.
struct Towards(f32);

impl LossTerm for Towards {
    fn loss(&self, b: &EditBatch) -> plugin::sdk::Result<Tensor> {
        Ok((&b.x_edit - self.0 as f64)?.sqr()?.mean_all()?)
    }
}

/// Keeps the edit close to the original, and reads the feature maps.
struct Stay;

impl LossTerm for Stay {
    fn loss(&self, b: &EditBatch) -> plugin::sdk::Result<Tensor> {
        let f = b.features.as_ref().ok_or_else(|| Error::Config("no feature maps".into()))?;
        let mut total = (&b.x_edit - &b.x)?.sqr()?.mean_all()?;
        for (a, e) in f.x.iter().zip(&f.x_edit) {
            total = (total + (e - a)?.sqr()?.mean_all()?)?;
        }
        Ok(total)
    }

    fn needs(&self) -> Needs {
        Needs { features: true }
    }
}

/// NaN from the `at`-th call on: the value and its gradients, or, with
/// `finite_gradients`, the value alone (a constant NaN added), so that the
/// update of that step is computed from finite numbers and only the read
/// at the end of the step can stop it.
struct NanAfter {
    at: usize,
    calls: Arc<AtomicUsize>,
    finite_gradients: bool,
}

impl LossTerm for NanAfter {
    fn loss(&self, b: &EditBatch) -> plugin::sdk::Result<Tensor> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let l = b.x_edit.mean_all()?;
        Ok(match (n >= self.at, self.finite_gradients) {
            (false, _) => l,
            (true, false) => (l * f64::NAN)?,
            (true, true) => l.broadcast_add(&Tensor::new(f32::NAN, b.x_edit.device())?)?,
        })
    }
}

const RECIPE: &str = "\
prompt: a photo of a person with gray hair
steps: 4
seed: 11
seeds: [1, 2, 3]
batch: 1
alpha: {min: -3, max: 3, min_abs: 1}
checkpoint_every: 2
preview:
  every: 3
  alphas: [-2, 2]
terms:
  - plugin: towards
  - plugin: stay
    weight: 0.5
";

fn recipe(text: &str, out: &Path) -> Recipe {
    let mut r = Recipe::parse(text, Path::new("test.yaml")).expect("valid recipe");
    r.set_output(out.to_path_buf());
    r
}

fn terms() -> Vec<EngineTerm> {
    vec![EngineTerm::in_process("towards", 1.0, Towards(0.8)), EngineTerm::in_process("stay", 0.5, Stay)]
}

fn quiet(terms: Vec<EngineTerm>) -> Setup {
    Setup { metrics: false, ..Setup::new(terms) }
}

/// Runs synchronously; returns the events and the outcome.
fn run_sync(r: Recipe, setup: Setup) -> (Vec<TrainEvent>, Result<RunSummary>) {
    let (tx, rx) = mpsc::channel();
    let (_ctx, crx) = mpsc::channel();
    let out = run(r, setup, &tx, &crx);
    drop(tx);
    (rx.iter().collect(), out)
}

fn direction_bytes(dir: &Path) -> Vec<f32> {
    let d = read_direction(&dir.join(DIRECTION_FILE), &Device::Cpu).expect("a direction file");
    d.direction.flatten_all().and_then(|t| t.to_vec1()).expect("f32")
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temp dir")
}

#[test]
fn trains_writes_every_output_and_lowers_the_loss() {
    let dir = tempdir();
    let out = dir.path().join("run");
    let text = RECIPE
        .replace("steps: 4", "steps: 8")
        .replace("seeds: [1, 2, 3]", "seeds: [1]")
        .replace("alpha: {min: -3, max: 3, min_abs: 1}", "alpha: 2");
    let (events, res) = run_sync(recipe(&text, &out), Setup { metrics: true, ..Setup::new(terms()) });
    let summary = res.expect("the run succeeds");
    assert_eq!(summary.steps, 8);
    assert!(!summary.stopped_early);
    let steps: Vec<&StepStats> =
        events.iter().filter_map(|e| if let TrainEvent::Step(s) = e { Some(s) } else { None }).collect();
    assert_eq!(steps.len(), 8);
    assert!(matches!(events.first(), Some(TrainEvent::WarmUp { .. })));
    assert!(events.iter().any(|e| matches!(e, TrainEvent::Started(i) if i.terms == ["towards", "stay"] && i.demo)));
    assert!(events
        .iter()
        .any(|e| matches!(e, TrainEvent::Preview(p) if p.rows.len() == 1 && p.rows[0].edits.len() == 2)));
    assert!(matches!(events.last(), Some(TrainEvent::Finished { .. })));
    let first = steps[0].terms[0];
    let last = steps[7].terms[0];
    assert!(last < first, "the 'towards' term did not decrease: {first} -> {last}");
    for name in [
        "direction.safetensors",
        "recipe.yaml",
        "losses.csv",
        "strip-1.png",
        "losses.png",
        "metrics.json",
        CHECKPOINT_FILE,
    ] {
        assert!(out.join(name).is_file(), "missing {name}");
    }
    let csv = std::fs::read_to_string(out.join("losses.csv")).expect("csv");
    assert!(csv.starts_with("step,total,towards,stay,grad_norm,lr\n"), "{csv}");
    assert_eq!(csv.lines().count(), 9);
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).expect("json")).expect("valid json");
    let sims = &metrics["clip_similarity"];
    assert_eq!(sims["alphas"], serde_json::json!([-2.0, 0.0, 2.0]));
    assert!(sims["before"].as_f64().is_some_and(f64::is_finite), "{metrics}");
    assert_eq!(sims["model"], "demo");
    let d = read_direction(&out.join(DIRECTION_FILE), &Device::Cpu).expect("direction");
    assert_eq!(d.meta.generator_sha256, "demo");
    assert_eq!(d.meta.terms.len(), 2);
    assert_eq!(d.meta.steps, 8);
    // norm: layer — every layer of u has unit length.
    let norms: Vec<f32> = d
        .direction
        .sqr()
        .and_then(|t| t.sum(2))
        .and_then(|t| t.sqrt())
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .expect("norms");
    assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-4), "{norms:?}");
}

#[test]
fn same_recipe_twice_gives_the_same_direction_bit_for_bit() {
    let dir = tempdir();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    run_sync(recipe(RECIPE, &a), quiet(terms())).1.expect("run a");
    run_sync(recipe(RECIPE, &b), quiet(terms())).1.expect("run b");
    assert_eq!(direction_bytes(&a), direction_bytes(&b));
    let c = dir.path().join("c");
    run_sync(recipe(&RECIPE.replace("seed: 11", "seed: 12"), &c), quiet(terms())).1.expect("run c");
    assert_ne!(direction_bytes(&a), direction_bytes(&c), "the seed must matter");
}

#[test]
fn stop_then_resume_equals_a_straight_run() {
    let dir = tempdir();
    let (straight, split) = (dir.path().join("straight"), dir.path().join("split"));
    run_sync(recipe(RECIPE, &straight), quiet(terms())).1.expect("straight run");
    // Stopped after step 3 (between checkpoints), then resumed.
    let s = run_sync(recipe(RECIPE, &split), Setup { stop_after: Some(3), ..quiet(terms()) }).1.expect("first half");
    assert!(s.stopped_early);
    assert_eq!(s.steps, 3);
    let (events, res) = run_sync(recipe(RECIPE, &split), Setup { resume: true, ..quiet(terms()) });
    res.expect("second half");
    assert!(events.iter().any(|e| matches!(e, TrainEvent::Started(i) if i.start_step == 3)));
    assert_eq!(direction_bytes(&straight), direction_bytes(&split));
    let csv = |d: &Path| std::fs::read_to_string(d.join("losses.csv")).expect("csv");
    assert_eq!(csv(&straight), csv(&split));
    // A changed recipe refuses the checkpoint.
    let changed = RECIPE.replace("alpha: {min: -3", "alpha: {min: -4");
    let (_, res) = run_sync(recipe(&changed, &split), Setup { resume: true, ..quiet(terms()) });
    let err = res.expect_err("a different recipe").to_string();
    assert!(err.contains("different recipe"), "{err}");
}

#[test]
fn a_nan_stops_the_run_naming_term_and_step_and_keeps_the_last_direction() {
    let dir = tempdir();
    let out = dir.path().join("nan");
    let calls = Arc::new(AtomicUsize::new(0));
    let terms = vec![
        EngineTerm::in_process("towards", 1.0, Towards(0.8)),
        EngineTerm::in_process("fragile", 1.0, NanAfter { at: 4, calls: calls.clone(), finite_gradients: false }),
    ];
    let text = RECIPE.replace("  - plugin: stay\n    weight: 0.5\n", "  - plugin: fragile\n");
    let (events, res) = run_sync(recipe(&text, &out), quiet(terms));
    let err = res.expect_err("the run fails").to_string();
    assert!(err.contains("'fragile'") && err.contains("step 4"), "{err}");
    assert!(events.iter().any(|e| matches!(e, TrainEvent::Failed { error } if error.contains("fragile"))));
    let d = read_direction(&out.join(DIRECTION_FILE), &Device::Cpu).expect("the last good direction");
    assert_eq!(d.meta.steps, 3);
    assert!(d.direction.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("f32").iter().all(|v| v.is_finite()));
}

#[test]
fn directions_with_diversity_layers_and_latent_mode() {
    let dir = tempdir();
    let out = dir.path().join("k2");
    let text =
        RECIPE.replace("seed: 11\n", "seed: 11\ndirections: 2\ndiversity: 1.0\nlayers: [0, 3, 4]\nnorm: total\n");
    let (events, res) = run_sync(recipe(&text, &out), quiet(terms()));
    res.expect("K = 2 trains");
    assert!(events
        .iter()
        .any(|e| matches!(e, TrainEvent::Started(i) if i.terms.last().map(String::as_str) == Some("diversity"))));
    let d = read_direction(&out.join(DIRECTION_FILE), &Device::Cpu).expect("direction");
    assert_eq!(d.direction.dims()[0], 2);
    let per_layer: Vec<Vec<f32>> = d.direction.sqr().and_then(|t| t.sum(2)).and_then(|t| t.to_vec2()).expect("norms");
    for row in &per_layer {
        for (l, v) in row.iter().enumerate() {
            assert_eq!(*v > 0.0, [0, 3, 4].contains(&l), "layer {l}: {v}");
        }
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-4, "norm: total gives unit directions: {row:?}");
    }

    let out = dir.path().join("latent");
    let text = RECIPE
        .replace("seed: 11\n", "seed: 11\nmode: latent\nlatent_l2: 0.01\n")
        .replace("alpha: {min: -3, max: 3, min_abs: 1}\n", "")
        .replace("  alphas: [-2, 2]\n", "");
    let (events, res) = run_sync(recipe(&text, &out), quiet(terms()));
    res.expect("latent mode trains");
    assert!(events.iter().any(|e| matches!(e, TrainEvent::Started(i) if i.mode == "latent")));
    let d = read_direction(&out.join(DIRECTION_FILE), &Device::Cpu).expect("direction");
    assert_eq!(d.direction.dims()[0], 3);
    assert!(d.latent.is_some());
}

#[test]
fn controls_pause_preview_save_and_stop() {
    let dir = tempdir();
    let out = dir.path().join("ctl");
    let text = RECIPE.replace("steps: 4", "steps: 10000");
    let h = spawn(recipe(&text, &out), quiet(terms()));
    h.control.send(Control::Pause).expect("engine alive");
    // Wait for the pause to take effect.
    let mut seen = Vec::new();
    for e in h.events.iter() {
        let paused = matches!(e, TrainEvent::Paused(true));
        seen.push(e);
        if paused {
            break;
        }
    }
    h.control.send(Control::SetPreviewAlphas(vec![1.5])).expect("alive");
    h.control.send(Control::SaveNow).expect("alive");
    h.control.send(Control::Resume).expect("alive");
    h.control.send(Control::Stop).expect("alive");
    let summary = h.thread.join().expect("no panic").expect("stopped cleanly");
    assert!(summary.stopped_early && summary.steps < 10000);
    let rest: Vec<TrainEvent> = h.events.iter().collect();
    assert!(rest.iter().any(|e| matches!(e, TrainEvent::Preview(p) if p.alphas == [1.5])));
    assert!(rest.iter().any(|e| matches!(e, TrainEvent::Paused(false))));
    assert!(matches!(rest.last(), Some(TrainEvent::Finished { .. })));
    assert!(out.join(DIRECTION_FILE).is_file());
}

#[test]
fn diversity_is_zero_for_orthogonal_and_one_for_parallel() -> Result<()> {
    let dev = Device::Cpu;
    let ortho = Tensor::new(&[[[1f32, 0.0]], [[0.0, 2.0]]], &dev)?;
    let par = Tensor::new(&[[[1f32, 1.0]], [[-2.0, -2.0]]], &dev)?;
    assert!(diversity(&ortho)?.to_scalar::<f32>()?.abs() < 1e-6);
    assert!((diversity(&par)?.to_scalar::<f32>()? - 1.0).abs() < 1e-5);
    Ok(())
}

/// Records, for every sample of every call, its key and its original's
/// pixels.
struct KeyProbe(Arc<std::sync::Mutex<Vec<(u64, Vec<f32>)>>>);

impl LossTerm for KeyProbe {
    fn loss(&self, b: &EditBatch) -> plugin::sdk::Result<Tensor> {
        let keys = b.keys.clone().ok_or_else(|| Error::Config("the engine sent no keys".into()))?;
        let mut seen = self.0.lock().expect("not poisoned");
        for (i, k) in keys.into_iter().enumerate() {
            seen.push((k, b.x.get(i)?.flatten_all()?.to_vec1()?));
        }
        Ok((&b.x_edit - 0.5)?.sqr()?.mean_all()?)
    }
}

/// Equal keys always name equal originals, for every noise mode and with
/// K = 2 (seeded noise renders originals per batch layout), and keys repeat
/// across steps; where an original does not depend on its batch (stored or
/// zero noise), each one has exactly one key.
#[test]
fn sample_keys_name_the_originals() {
    for (noise, k) in [("stored", 1), ("zero", 2), ("seeded", 1), ("seeded", 2)] {
        let dir = tempdir();
        let text = RECIPE
            .replace("seed: 11\n", &format!("seed: 11\nnoise: {noise}\ndirections: {k}\n"))
            .replace("batch: 1\n", "batch: 2\n")
            .replace("steps: 4\n", "steps: 5\n");
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let setup = quiet(vec![EngineTerm::in_process("probe", 1.0, KeyProbe(seen.clone()))]);
        let mut r = recipe(&text, &dir.path().join("out"));
        r.edit(|raw| raw.terms.truncate(1)).expect("one term is a recipe");
        let (_, res) = run_sync(r, setup);
        res.unwrap_or_else(|e| panic!("{noise}, K = {k}: {e}"));
        let seen = seen.lock().expect("not poisoned");
        let mut by_key: HashMap<u64, &Vec<f32>> = HashMap::new();
        for (key, x) in seen.iter() {
            let first = by_key.entry(*key).or_insert(x);
            assert_eq!(*first, x, "{noise}, K = {k}: key {key} named two different originals");
        }
        let distinct: std::collections::HashSet<Vec<u32>> =
            seen.iter().map(|(_, x)| x.iter().map(|v| v.to_bits()).collect()).collect();
        if noise != "seeded" {
            assert_eq!(by_key.len(), distinct.len(), "{noise}, K = {k}: one key per original");
        }
        assert!(by_key.len() < seen.len(), "{noise}, K = {k}: originals repeat across steps");
    }
}

/// Waits for `h`'s thread to end, at most `secs` seconds.
fn finishes_within(h: &EngineHandle, secs: u64) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !h.thread.is_finished() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    true
}

/// Issue 15: `alpha: {min: 0, max: 1, min_abs: 0.99999994}` is a valid
/// range, but rejection sampling never drew from it: the engine spun inside
/// the draw for ever and never polled Stop.
#[test]
fn issue_15_a_nearly_empty_alpha_range_does_not_hang_the_engine() {
    let dir = tempdir();
    let text = RECIPE
        .replace("alpha: {min: -3, max: 3, min_abs: 1}", "alpha: {min: 0, max: 1, min_abs: 0.99999994}")
        .replace("steps: 4", "steps: 2");
    let h = spawn(recipe(&text, &dir.path().join("run")), quiet(terms()));
    if !finishes_within(&h, 120) {
        let _ = h.control.send(Control::Stop);
        assert!(finishes_within(&h, 5), "the engine hangs drawing α and does not even stop when asked");
        panic!("the run of 2 steps did not end within 120 s");
    }
    let summary = h.thread.join().expect("no panic").expect("the run succeeds");
    assert_eq!(summary.steps, 2);
}

/// A term that, on chosen calls, makes the checkpoint's next write fail
/// (a full disk) and records the step of the checkpoint on disk.
struct Saboteur {
    checkpoint: std::path::PathBuf,
    calls: Arc<AtomicUsize>,
    fail_on: usize,
    look_on: usize,
    seen: Arc<std::sync::Mutex<Option<String>>>,
}

impl LossTerm for Saboteur {
    fn loss(&self, b: &EditBatch) -> plugin::sdk::Result<Tensor> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.fail_on {
            crate::durable::testing::fail_writes(&self.checkpoint, 1);
        }
        if n == self.look_on {
            let (_, meta) = crate::outputs::read_tensors(&self.checkpoint, &Device::Cpu)?;
            *self.seen.lock().expect("not poisoned") = meta.get("step").cloned();
        }
        Ok((b.x_edit.mean_all()? * 0.0)?)
    }
}

/// Issue 15: a failed periodic checkpoint (disk full) ended the whole run.
/// Now it warns, training goes on, the last good checkpoint stays, and the
/// next interval writes again.
#[test]
fn issue_15_a_failed_checkpoint_warns_and_training_goes_on() {
    let dir = tempdir();
    let out = dir.path().join("full");
    let seen = Arc::new(std::sync::Mutex::new(None));
    let saboteur = Saboteur {
        checkpoint: checkpoint_path(&out),
        calls: Arc::new(AtomicUsize::new(0)),
        fail_on: 3,
        look_on: 5,
        seen: seen.clone(),
    };
    let terms =
        vec![EngineTerm::in_process("towards", 1.0, Towards(0.8)), EngineTerm::in_process("saboteur", 1.0, saboteur)];
    let text =
        RECIPE.replace("steps: 4", "steps: 6").replace("  - plugin: stay\n    weight: 0.5\n", "  - plugin: saboteur\n");
    let (events, res) = run_sync(recipe(&text, &out), quiet(terms));
    let summary = res.expect("the run goes on after a failed checkpoint");
    assert_eq!(summary.steps, 6);
    let warned = events.iter().any(|e| {
        matches!(e, TrainEvent::Message { level: Level::Warn, text }
            if text.contains("checkpoint of step 4") && text.contains("training goes on"))
    });
    assert!(warned, "no warning about the failed checkpoint");
    assert_eq!(seen.lock().expect("not poisoned").as_deref(), Some("2"), "the last good checkpoint is kept");
    let (_, meta) = crate::outputs::read_tensors(&checkpoint_path(&out), &Device::Cpu).expect("a checkpoint");
    assert_eq!(meta.get("step").map(String::as_str), Some("6"));
}

/// Issue 15: a failed "save now" ended the whole run.
#[test]
fn issue_15_a_failed_save_now_warns_and_training_goes_on() {
    let dir = tempdir();
    let out = dir.path().join("save");
    let text = RECIPE.replace("steps: 4", "steps: 6");
    let h = spawn(recipe(&text, &out), quiet(terms()));
    h.control.send(Control::Pause).expect("engine alive");
    for e in h.events.iter() {
        if matches!(e, TrainEvent::Paused(true)) {
            break;
        }
    }
    crate::durable::testing::fail_writes(&out.join(DIRECTION_FILE), 1);
    h.control.send(Control::SaveNow).expect("alive");
    h.control.send(Control::Resume).expect("alive");
    let summary = h.thread.join().expect("no panic").expect("the run goes on after a failed save");
    assert_eq!(summary.steps, 6);
    let rest: Vec<TrainEvent> = h.events.iter().collect();
    assert!(rest
        .iter()
        .any(|e| matches!(e, TrainEvent::Message { level: Level::Warn, text } if text.contains("could not save"))));
}

/// Issue 15: two runs could write the same run folder at once; the second
/// is now refused and told the first one's PID.
#[test]
fn issue_15_a_second_run_on_the_same_folder_is_refused() {
    let dir = tempdir();
    let out = dir.path().join("shared");
    let first = spawn(recipe(&RECIPE.replace("steps: 4", "steps: 10000"), &out), quiet(terms()));
    first.control.send(Control::Pause).expect("engine alive");
    for e in first.events.iter() {
        if matches!(e, TrainEvent::Paused(true)) {
            break;
        }
    }
    let (_, second) = run_sync(recipe(RECIPE, &out), quiet(terms()));
    first.control.send(Control::Stop).expect("alive");
    let err = second.expect_err("the folder is in use").to_string();
    assert!(err.contains("in use") && err.contains(&format!("process {}", std::process::id())), "{err}");
    first.thread.join().expect("no panic").expect("the first run ends normally");
    // Once the first run is over, the folder is free again.
    run_sync(recipe(RECIPE, &out), quiet(terms())).1.expect("free again");
}

/// Issue 15: `--resume` did not check that the generator file was the one
/// the checkpoint was made with; nor did it say what differs in a recipe.
#[test]
fn issue_15_resume_refuses_another_generator_and_names_what_changed() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/stylegan2");
    let dir = tempdir();
    let out = dir.path().join("gen");
    let with = |file: &str, resume: bool| Setup {
        weights: Weights { generator: Some(fixtures.join(file)), ..Weights::demo() },
        resume,
        stop_after: Some(2),
        ..quiet(terms())
    };
    run_sync(recipe(RECIPE, &out), with("generator.pt", false)).1.expect("first run");
    // The same weights in another file are another file: refused.
    let (_, res) = run_sync(recipe(RECIPE, &out), with("generator.convert_weight_layout.pt", true));
    let err = res.expect_err("another generator file").to_string();
    assert!(err.contains("different generator file") && err.contains("generator.convert_weight_layout.pt"), "{err}");
    let changed = RECIPE.replace("seeds: [1, 2, 3]", "seeds: [1, 2, 4]");
    let (_, res) = run_sync(recipe(&changed, &out), with("generator.pt", true));
    let err = res.expect_err("another recipe").to_string();
    assert!(err.contains("different recipe") && err.contains("'seeds'"), "{err}");
    run_sync(recipe(RECIPE, &out), with("generator.pt", true)).1.expect("the same setup resumes");
}

/// Issue 15: `--resume` did not check that the plugins were the builds the
/// checkpoint was made with.
#[test]
fn issue_15_resume_refuses_another_build_of_a_plugin() {
    use crate::plugin::{InitContext, PluginLibrary};
    use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
    let plugins = lsd_plugin_testing::workspace_test_plugins().expect("the test plugins build");
    let dir = tempdir();
    let lib = dir.path().join(format!("{DLL_PREFIX}lsd_plugin_probe_copy{DLL_SUFFIX}"));
    std::fs::copy(&plugins["lsd-plugin-test-probe"], &lib).expect("copied");
    let setup = |lib: &Path, resume: bool| {
        let term =
            PluginLibrary::open(lib).and_then(|l| l.instantiate("", &InitContext::default())).expect("the probe loads");
        Setup {
            terms: vec![EngineTerm { name: "probe".into(), weight: 1.0, imp: TermImpl::Plugin(term) }],
            resume,
            stop_after: Some(2),
            ..quiet(Vec::new())
        }
    };
    let text = RECIPE.replace("  - plugin: towards\n  - plugin: stay\n    weight: 0.5\n", "  - plugin: probe\n");
    let out = dir.path().join("run");
    run_sync(recipe(&text, &out), setup(&lib, false)).1.expect("first run");
    run_sync(recipe(&text, &out), setup(&lib, true)).1.expect("the same build resumes");
    // Another build of the plugin (here: a copy with bytes appended; the
    // loaded file itself must not change under the loader's mapping).
    let other = dir.path().join(format!("{DLL_PREFIX}lsd_plugin_probe_other{DLL_SUFFIX}"));
    let mut bytes = std::fs::read(&lib).expect("read");
    bytes.extend_from_slice(b"another build");
    std::fs::write(&other, &bytes).expect("written");
    let (_, res) = run_sync(recipe(&text, &out), setup(&other, true));
    let err = res.expect_err("another build").to_string();
    assert!(err.contains("different build of loss term 'probe'"), "{err}");
}

/// LELSD's correlation loss on hand-computed cases: mean over all `K²`
/// entries of `|corr − δ|`, per layer, averaged over the layers.
#[test]
fn correlation_diversity_by_hand() -> Result<()> {
    let dev = Device::Cpu;
    let val = |t: &Tensor| correlation_diversity(t).and_then(|v| Ok(v.to_scalar::<f32>()?)).expect("finite");
    // Orthogonal: corr = I.
    assert!(val(&Tensor::new(&[[[1f32, 0.0]], [[0.0, 2.0]]], &dev)?).abs() < 1e-6);
    // Antiparallel: |corr − I| = [[0, 1], [1, 0]] → 2/4. The absolute
    // value counts the sign: the squared cosine would give 1 too, but …
    assert!((val(&Tensor::new(&[[[1f32, 1.0]], [[-2.0, -2.0]]], &dev)?) - 0.5).abs() < 1e-6);
    // K = 3: corr₁₂ = corr₂₃ = 1/√2, corr₁₃ = 0 → 4/√2 / 9.
    let three = Tensor::new(&[[[1f32, 0.0]], [[1.0, 1.0]], [[0.0, 1.0]]], &dev)?;
    assert!((val(&three) - 4.0 / 2f32.sqrt() / 9.0).abs() < 1e-6);
    // … layers of opposite sign cancel in the flattened cosine, not per layer.
    let cancel = Tensor::new(&[[[1f32, 0.0], [1.0, 0.0]], [[1.0, 0.0], [-1.0, 0.0]]], &dev)?;
    assert!(diversity(&cancel)?.to_scalar::<f32>()?.abs() < 1e-6);
    assert!((val(&cancel) - 0.5).abs() < 1e-6);
    // Zero vectors (the reference would divide by 0): they add nothing, and
    // the gradient stays finite. Layer 0 antiparallel (0.5), layer 1 zero.
    let var = Var::new(&[[[1f32, 0.0], [0.0, 0.0]], [[-3.0, 0.0], [0.0, 0.0]]], &dev)?;
    let v = correlation_diversity(var.as_tensor())?;
    assert!((v.to_scalar::<f32>()? - 0.25).abs() < 1e-6);
    let g = v.backward()?.get(var.as_tensor()).expect("a gradient").flatten_all()?.to_vec1::<f32>()?;
    assert!(g.iter().all(|x| x.is_finite()), "{g:?}");
    let one_zero = Tensor::new(&[[[1f32, 0.0]], [[0.0, 0.0]]], &dev)?;
    assert_eq!(val(&one_zero), 0.0);
    Ok(())
}

#[test]
fn relaxed_one_hot_is_almost_one_hot_and_uniform() {
    let mut rng = rng_for(5, 1);
    let (mut wins, mut sharp) = ([0usize; 3], 0);
    for _ in 0..3000 {
        let c = relaxed_one_hot(&mut rng, 3, 0.001);
        assert!((c.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{c:?}");
        let (i, max) = c.iter().enumerate().fold((0, 0f32), |a, (i, &v)| if v > a.1 { (i, v) } else { a });
        sharp += usize::from(max > 0.99);
        wins[i] += 1;
    }
    // Two Gumbel scores closer than a few τ share the weight: rare.
    assert!(sharp > 2970, "{sharp} of 3000 draws are one-hot to 1%");
    assert!(wins.iter().all(|&w| (850..1150).contains(&w)), "{wins:?}");
    let flat = relaxed_one_hot(&mut rng, 4, 1e6);
    assert!(flat.iter().all(|v| (v - 0.25).abs() < 1e-3), "{flat:?}");
}

/// Records each call's α values and the shape of `u`.
struct Probe(Arc<std::sync::Mutex<Vec<(Vec<f32>, Vec<usize>)>>>);

impl LossTerm for Probe {
    fn loss(&self, b: &EditBatch) -> plugin::sdk::Result<Tensor> {
        self.0.lock().expect("not poisoned").push((b.alpha.clone(), b.u.dims().to_vec()));
        Ok((&b.x_edit - 0.5)?.sqr()?.mean_all()?)
    }
}

fn probe_run(extra: &str, out: &Path) -> Vec<(Vec<f32>, Vec<usize>)> {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let text = RECIPE.replace("seed: 11\n", &format!("seed: 11\n{extra}")).replace("batch: 1\n", "batch: 2\n");
    let mut r = recipe(&text, out);
    r.edit(|raw| raw.terms.truncate(1)).expect("one term is a recipe");
    let (_, res) = run_sync(r, quiet(vec![EngineTerm::in_process("probe", 1.0, Probe(seen.clone()))]));
    res.expect("trains");
    let v = seen.lock().expect("not poisoned").clone();
    v
}

#[test]
fn one_hot_mixture_alpha_per_step_and_all_directions() {
    let dir = tempdir();
    // LELSD's regime: one mixed direction per step, one α per step.
    let calls = probe_run("directions: 3\ndiversity: 5\nalpha_per: step\n", &dir.path().join("a"));
    assert_eq!(calls.len(), 4);
    for (alphas, u) in &calls {
        assert_eq!(u[0], 1, "one mixture per step");
        assert_eq!(alphas.len(), 2, "batch 2, one sample per latent");
        assert!(alphas.iter().all(|a| *a == alphas[0] && a.abs() >= 1.0), "{alphas:?}");
    }
    // Every direction every step, α per sample.
    let calls = probe_run("directions: 3\ndiversity: 5\ndirection_draw: all\n", &dir.path().join("b"));
    for (alphas, u) in &calls {
        assert_eq!(u[0], 3);
        assert_eq!(alphas.len(), 6);
    }
    assert!(calls.iter().any(|(a, _)| a.iter().any(|x| *x != a[0])), "α per sample differs within a step");
}

#[test]
fn w_space_ties_one_vector_across_the_layers() {
    let dir = tempdir();
    for (extra, layers) in [("space: w\n", None), ("space: w\nlayers: [1, 2]\n", Some(vec![1usize, 2]))] {
        let out = dir.path().join(format!("w{}", layers.is_some()));
        let text = RECIPE.replace("seed: 11\n", &format!("seed: 11\n{extra}"));
        let (_, res) = run_sync(recipe(&text, &out), quiet(terms()));
        res.expect("trains in W");
        let d = read_direction(&out.join(DIRECTION_FILE), &Device::Cpu).expect("direction");
        let rows: Vec<Vec<f32>> = d.direction.squeeze(0).and_then(|t| t.to_vec2()).expect("[L, D]");
        let on: Vec<usize> = (0..rows.len()).filter(|&l| rows[l].iter().any(|v| *v != 0.0)).collect();
        let want = layers.clone().unwrap_or_else(|| (0..rows.len()).collect());
        assert_eq!(on, want);
        for &l in &on {
            assert_eq!(rows[l], rows[on[0]], "layer {l} carries the tied vector");
        }
        let norm: f32 = rows[on[0]].iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm: layer keeps the tied vector unit: {norm}");
    }
}

/// The reference regime (W, free norm, halvings, one α per step, two
/// directions drawn one-hot with the correlation term) resumes exactly:
/// its per-step draws are a function of (seed, step), and its `[K, 1, D]`
/// tensor round-trips through the checkpoint.
#[test]
fn the_reference_regime_resumes_exactly() {
    let dir = tempdir();
    let text = RECIPE.replace(
        "seed: 11\n",
        "seed: 11\nspace: w\nnorm: none\nalpha_per: step\ndirections: 2\ndiversity: 5\nseed_rng: numpy\noptimizer: {lr: 0.001, schedule: {kind: halvings, count: 1}}\n",
    );
    let (straight, split) = (dir.path().join("straight"), dir.path().join("split"));
    run_sync(recipe(&text, &straight), quiet(terms())).1.expect("straight run");
    let s = run_sync(recipe(&text, &split), Setup { stop_after: Some(3), ..quiet(terms()) }).1.expect("first half");
    assert_eq!(s.steps, 3);
    run_sync(recipe(&text, &split), Setup { resume: true, ..quiet(terms()) }).1.expect("second half");
    assert_eq!(direction_bytes(&straight), direction_bytes(&split));
    let csv = |d: &Path| std::fs::read_to_string(d.join("losses.csv")).expect("csv");
    assert_eq!(csv(&straight), csv(&split));
    // The lr column: halved once, before step 2 of 4 (d = 4 / 2 = 2).
    let lrs: Vec<f64> =
        csv(&straight).lines().skip(1).map(|l| l.rsplit(',').next().expect("lr").parse().expect("a number")).collect();
    assert_eq!(lrs, [0.001f32 as f64, 0.001f32 as f64 / 2.0, 0.001f32 as f64 / 2.0, 0.001f32 as f64 / 4.0]);
}

/// A latent file that holds seed 1's W+ (as the engine computes it) trains
/// the same direction as seed 1, labels its strip by the file's name, and a
/// `layers` preset resolves against the demo generator (10 W+ layers).
#[test]
fn a_latent_file_trains_like_its_seed_and_is_labelled_by_name() {
    let dir = tempdir();
    let model =
        crate::experiments::models::LoadedGenerator::load(&crate::experiments::models::Source::Demo, &Device::Cpu)
            .unwrap();
    let w = model.w_plus(1, 0.7).unwrap().squeeze(0).unwrap();
    let npy = dir.path().join("my-photo.npy");
    crate::npy::write(&npy, w.dims(), &w.flatten_all().unwrap().to_vec1::<f32>().unwrap()).unwrap();
    let base = RECIPE.replace("seeds: [1, 2, 3]", "seeds: [1]\nlayers: fine").replace("steps: 4", "steps: 3");
    let by_seed = dir.path().join("seed");
    let (_, res) = run_sync(recipe(&format!("truncation: 0.7\n{base}"), &by_seed), quiet(terms()));
    res.expect("the seed run succeeds");
    let text = format!(
        "truncation: 0.7\n{}",
        base.replace("seeds: [1]", &format!("seeds: []\nlatents: ['{}']", npy.display()))
    );
    let by_file = dir.path().join("file");
    let (events, res) = run_sync(recipe(&text, &by_file), Setup { metrics: true, ..Setup::new(terms()) });
    res.expect("the latent run succeeds");
    assert_eq!(direction_bytes(&by_seed), direction_bytes(&by_file));
    assert!(by_file.join("strip-my-photo.png").is_file());
    assert!(events.iter().any(|e| matches!(e, TrainEvent::Preview(p) if p.rows[0].label == "my-photo")));
    let d = read_direction(&by_file.join(DIRECTION_FILE), &Device::Cpu).unwrap();
    assert_eq!(d.meta.layers, vec![8, 9]);
    let u = d.direction.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
    assert!(u[..8].iter().flatten().all(|&v| v == 0.0) && u[8].iter().any(|&v| v != 0.0));
}

/// With the warm-up forced on (as on a CUDA device), one untimed pass runs
/// before step 1 and is reported as a warm-up of its own; step 1 is then an
/// ordinary step, and the run computes exactly what it computes without it.
#[test]
fn a_forced_warm_up_is_reported_before_step_1_and_changes_nothing() {
    let dir = tempdir();
    let run_with = |warm_up: Option<bool>, name: &str| {
        let out = dir.path().join(name);
        let (events, res) = run_sync(recipe(RECIPE, &out), Setup { warm_up, ..quiet(terms()) });
        res.expect("the run succeeds");
        (events, direction_bytes(&out), std::fs::read_to_string(out.join("losses.csv")).expect("csv"))
    };
    let (events, warmed, warmed_csv) = run_with(Some(true), "warm");
    let warm_ups: Vec<(usize, &str)> = events
        .iter()
        .enumerate()
        .filter_map(|(i, e)| if let TrainEvent::WarmUp { what } = e { Some((i, what.as_str())) } else { None })
        .collect();
    let first_step = events.iter().position(|e| matches!(e, TrainEvent::Step(_))).expect("a step");
    let started = events.iter().position(|e| matches!(e, TrainEvent::Started(_))).expect("started");
    // The generator load, then the kernel warm-up between Started and step 1,
    // and no "first step" warm-up any more.
    assert_eq!(warm_ups.len(), 2, "{warm_ups:?}");
    assert_eq!(warm_ups[1].1, WARM_UP_KERNELS);
    assert!(started < warm_ups[1].0 && warm_ups[1].0 < first_step, "{warm_ups:?} {started} {first_step}");
    assert!(!warm_ups.iter().any(|(_, w)| w.starts_with("first step")), "{warm_ups:?}");

    // Off (the CPU default): the first step is reported as the slow one.
    let (events, plain, plain_csv) = run_with(None, "plain");
    assert!(events.iter().any(|e| matches!(e, TrainEvent::WarmUp { what } if what.starts_with("first step"))));
    assert!(!events.iter().any(|e| matches!(e, TrainEvent::WarmUp { what } if what == WARM_UP_KERNELS)));
    assert_eq!(
        warmed.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        plain.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
    assert_eq!(warmed_csv, plain_csv);
}

/// A finite value whose gradient with respect to the first feature map of
/// `x_edit` is infinite: `Σ √(f − f̄)` with `f̄` a constant copy of `f`.
struct InfiniteFeatureGradient;

impl LossTerm for InfiniteFeatureGradient {
    fn loss(&self, b: &EditBatch) -> plugin::sdk::Result<Tensor> {
        let f = &b.features.as_ref().ok_or_else(|| Error::Config("no feature maps".into()))?.x_edit[0];
        Ok((b.x_edit.mean_all()? + (f - f.detach())?.sqrt()?.sum_all()?)?)
    }

    fn needs(&self) -> Needs {
        Needs { features: true }
    }
}

/// An engine on the calling thread, so that [`readback::count`] (per
/// thread) sees its reads.
fn engine_here(text: &str, out: &Path, terms: Vec<EngineTerm>) -> Engine {
    let (tx, _rx) = mpsc::channel();
    Engine::new(recipe(text, out), quiet(terms), tx).expect("the engine builds")
}

/// The trained tensor and the optimiser state, bit for bit.
fn state_bits(e: &Engine) -> (Vec<u32>, Vec<(String, Vec<u32>)>, u64) {
    let bits = |t: &Tensor| -> Vec<u32> {
        t.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("f32").iter().map(|v| v.to_bits()).collect()
    };
    let (tensors, t) = e.opt.state();
    let mut opt: Vec<(String, Vec<u32>)> = tensors.iter().map(|(k, v)| (k.clone(), bits(v))).collect();
    opt.sort();
    (bits(e.param.as_tensor()), opt, t)
}

#[test]
fn a_step_reads_the_device_once() {
    let dir = tempdir();
    let cases = [
        ("two terms, one on feature maps", RECIPE.to_string()),
        (
            "two directions with diversity on some layers",
            RECIPE.replace("seed: 11\n", "seed: 11\ndirections: 2\ndiversity: 1.0\nlayers: [0, 3, 4]\nnorm: total\n"),
        ),
        (
            "latent mode with the L2 term",
            RECIPE
                .replace("seed: 11\n", "seed: 11\nmode: latent\nlatent_l2: 0.01\n")
                .replace("alpha: {min: -3, max: 3, min_abs: 1}\n", "")
                .replace("  alphas: [-2, 2]\n", ""),
        ),
    ];
    // And a term in a plugin library, whose value crosses the ABI as a tensor.
    let plugins = lsd_plugin_testing::workspace_test_plugins().expect("the test plugins build");
    let probe = || {
        let lib = crate::plugin::PluginLibrary::open(&plugins["lsd-plugin-test-probe"]).expect("the probe opens");
        let term = lib.instantiate("", &crate::plugin::InitContext::default()).expect("the probe loads");
        vec![EngineTerm { name: "probe".into(), weight: 1.0, imp: TermImpl::Plugin(term) }]
    };
    let plugin_recipe =
        RECIPE.replace("  - plugin: towards\n  - plugin: stay\n    weight: 0.5\n", "  - plugin: probe\n");
    let cases =
        cases.into_iter().map(|(what, text)| (what, text, terms())).chain([("a plugin term", plugin_recipe, probe())]);
    for (i, (what, text, terms)) in cases.enumerate() {
        let mut e = engine_here(&text, &dir.path().join(format!("case{i}")), terms);
        for step in 0..3 {
            let before = readback::count();
            let stats = e.train_step(step).expect("the step runs");
            assert_eq!(readback::count() - before, 1, "{what}, step {}", step + 1);
            assert!(stats.total.is_finite() && stats.grad_norm > 0.0, "{what}: {stats:?}");
            assert_eq!(stats.terms.len(), e.term_names.len(), "{what}");
        }
    }
}

#[test]
fn a_non_finite_value_undoes_the_update_and_the_optimiser_step() {
    let dir = tempdir();
    let calls = Arc::new(AtomicUsize::new(0));
    let terms = vec![
        EngineTerm::in_process("towards", 1.0, Towards(0.8)),
        EngineTerm::in_process("fragile", 1.0, NanAfter { at: 4, calls: calls.clone(), finite_gradients: true }),
    ];
    let text = RECIPE.replace("  - plugin: stay\n    weight: 0.5\n", "  - plugin: fragile\n");
    let mut e = engine_here(&text, &dir.path().join("undo"), terms);
    for step in 0..3 {
        e.train_step(step).expect("steps 1 to 3 are finite");
    }
    let before = state_bits(&e);
    let reads = readback::count();
    let err = e.train_step(3).expect_err("step 4's value is NaN").to_string();
    assert!(err.contains("'fragile'") && err.contains("non-finite value") && err.contains("step 4"), "{err}");
    // The update was applied before the read found the NaN, and undone.
    assert_eq!(readback::count() - reads, 1);
    assert_eq!(state_bits(&e), before);
    assert_eq!((e.step, e.history.len()), (3, 3));
}

#[test]
fn an_infinite_feature_map_gradient_is_named_after_its_term() {
    let dir = tempdir();
    let terms = vec![
        EngineTerm::in_process("towards", 1.0, Towards(0.8)),
        EngineTerm::in_process("spiky", 0.5, InfiniteFeatureGradient),
    ];
    let text = RECIPE.replace("  - plugin: stay\n", "  - plugin: spiky\n");
    let mut e = engine_here(&text, &dir.path().join("spiky"), terms);
    let before = state_bits(&e);
    let err = e.train_step(0).expect_err("the feature gradient is infinite").to_string();
    assert!(err.contains("'spiky'") && err.contains("features.x_edit[0]") && err.contains("step 1"), "{err}");
    assert_eq!(state_bits(&e), before);
}

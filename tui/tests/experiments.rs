//! End-to-end tests of the report's experiments on the demo networks: each
//! runs the built `lsd-tui` binary in a temporary folder and checks that the
//! files it promises exist and hold sensible values (shapes, ranges, no NaN).

//!
//! The experiments that train load the built-in loss plugins; they are
//! built here (once per test process) with `lsd_core::plugin::testing`, and
//! found through `LSD_PLUGIN_PATH`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const RECIPES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/recipes/experiments");

/// The folder holding the built-in plugins, built on first use.
fn plugin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
        let libs = lsd_plugin_testing::build_plugins(
            manifest,
            &["lsd-plugin-clip", "lsd-plugin-identity", "lsd-plugin-segmentation"],
        )
        .expect("the built-in plugins build");
        libs[0].parent().expect("a library has a folder").to_path_buf()
    })
}

fn lsd_tui(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_lsd-tui"))
        .args(args)
        .current_dir(dir)
        .env("LSD_PLUGIN_PATH", plugin_dir())
        .output()
        .expect("the lsd-tui binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "lsd-tui {args:?} failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    stdout
}

/// Reads a CSV file into its header and rows.
fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines().map(split_csv);
    let header = lines.next().expect("a header line");
    (header, lines.collect())
}

fn split_csv(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                fields.last_mut().unwrap().push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(String::new()),
            c => fields.last_mut().unwrap().push(c),
        }
    }
    fields
}

fn number(s: &str) -> f64 {
    s.parse::<f64>().unwrap_or_else(|_| panic!("'{s}' is not a number"))
}

fn png_size(path: &Path) -> (u32, u32) {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (img.width(), img.height())
}

#[test]
fn similarity_writes_table_heat_map_and_images() {
    let dir = tempfile::tempdir().unwrap();
    let stdout = lsd_tui(
        dir.path(),
        &[
            "similarity",
            "--prompts",
            "a photo of a person with gray hair",
            "a photo of a person, smiling",
            "--seeds",
            "0..3,7",
            "--out",
            "sim",
        ],
    );
    assert!(stdout.contains("DEMO MODEL"), "the table must say it is a demo:\n{stdout}");
    assert!(stdout.contains("gray hair"));

    let out = dir.path().join("sim");
    let (header, rows) = read_csv(&out.join("similarity.csv"));
    assert_eq!(header, ["prompt", "seed 0", "seed 1", "seed 2", "seed 7", "mean"]);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1][0], "a photo of a person, smiling");
    for row in &rows {
        assert_eq!(row.len(), 6);
        let v: Vec<f64> = row[1..].iter().map(|s| number(s)).collect();
        assert!(v.iter().all(|x| x.is_finite() && (-1.0..=1.0).contains(x)), "{row:?}");
        let mean = v[..4].iter().sum::<f64>() / 4.0;
        assert!((mean - v[4]).abs() < 1e-9, "mean column is wrong: {row:?}");
    }

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("similarity.json")).unwrap()).unwrap();
    assert_eq!(json["demo"], true);
    assert_eq!(json["values"].as_array().unwrap().len(), 2);

    let (w, h) = png_size(&out.join("similarity.png"));
    assert!(w > 4 * 64 && h > 64, "heat map is {w}x{h}");
    for seed in [0, 1, 2, 7] {
        assert_eq!(png_size(&out.join(format!("images/seed-{seed}.png"))), (64, 64));
    }
}

#[test]
fn similarity_rejects_bad_seeds_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lsd-tui"))
        .args(["similarity", "--prompts", "x", "--seeds", "5..2"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("range is empty") && stderr.contains("0..10"), "{stderr}");
}

/// The example recipe `name`, copied into `dir` with BiSeNet parsing at
/// 64² instead of 512² (the demo images are 64²), which keeps CI fast.
fn recipe(dir: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(format!("{RECIPES}/{name}")).unwrap();
    let small = text.replace("      classes: [hair]\n", "      classes: [hair]\n      size: 64\n");
    assert_ne!(small, text, "the example recipe's segmentation params changed; update this test");
    let path = dir.join(name);
    std::fs::write(&path, small).unwrap();
    path.display().to_string()
}

#[test]
fn example_recipes_parse() {
    for name in ["generalize-gray-hair.yaml", "ablation-gray-hair.yaml"] {
        let r = lsd_core::recipe::Recipe::load(Path::new(&format!("{RECIPES}/{name}")));
        assert!(r.is_ok(), "{name}: {}", r.unwrap_err());
    }
}

/// `summary.csv` as `(alpha, kind) -> (mean, std, n)`.
fn read_summary(path: &Path) -> Vec<(f64, String, f64, f64, usize)> {
    let (header, rows) = read_csv(path);
    assert_eq!(header, ["alpha", "kind", "mean_delta", "std_delta", "n"]);
    rows.iter().map(|r| (number(&r[0]), r[1].clone(), number(&r[2]), number(&r[3]), r[4].parse().unwrap())).collect()
}

#[test]
fn generalize_trains_measures_reuses_and_merges_shards() {
    let dir = tempfile::tempdir().unwrap();
    let gen = recipe(dir.path(), "generalize-gray-hair.yaml");
    let common = |out: &'static str| {
        vec![
            "generalize",
            "--recipe",
            &gen,
            "--models",
            "demo",
            "--steps",
            "2",
            "--train-seeds",
            "1..3",
            "--test-seeds",
            "100..103",
            "--alphas",
            "1,2",
            "--out",
            out,
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>()
    };
    let args = common("gen");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let stdout = lsd_tui(dir.path(), &args);
    assert!(stdout.contains("DEMO MODEL") && stdout.contains("2 direction(s), 3 unseen image(s)"), "{stdout}");

    let out = dir.path().join("gen");
    let summary = read_summary(&out.join("summary.csv"));
    assert_eq!(summary.len(), 3 * 2, "α 0, 1, 2 × trained, unseen");
    for (alpha, kind, mean, std, n) in &summary {
        assert!(mean.is_finite() && std.is_finite() && *std >= 0.0, "{alpha} {kind}: {mean} ± {std}");
        assert!(mean.abs() <= 2.0, "a ΔCLIP is a difference of cosines");
        assert_eq!(*n, if kind == "trained" { 2 } else { 6 });
        if *alpha == 0.0 {
            assert_eq!((*mean, *std), (0.0, 0.0), "no edit, no change");
        }
    }
    let (header, rows) = read_csv(&out.join("generalize.csv"));
    assert_eq!(header.len(), 7);
    assert_eq!(rows.len(), 2 * 4 * 3, "2 directions × (own + 3 unseen) images × 3 α");
    for seed in [1, 2] {
        let d = out.join(format!("directions/seed-{seed}"));
        for f in ["direction.safetensors", "experiment-done.json", "delta.csv", "strip-1.png"] {
            if f == "strip-1.png" && seed == 2 {
                continue;
            }
            assert!(d.join(f).is_file(), "{}", d.join(f).display());
        }
    }
    let png = image::open(out.join("generalize.png")).unwrap();
    assert!(png.width() >= 720 && png.height() >= 440);

    // A second run reuses the finished directions.
    let direction = out.join("directions/seed-1/direction.safetensors");
    let before = std::fs::metadata(&direction).unwrap().modified().unwrap();
    lsd_tui(dir.path(), &args);
    assert_eq!(std::fs::metadata(&direction).unwrap().modified().unwrap(), before, "retrained");
    assert_eq!(read_summary(&out.join("summary.csv")), summary);

    // Two shards merged give the same numbers as one run (CPU is deterministic).
    for (i, name) in [(0, "s0"), (1, "s1")] {
        let mut a = common(name);
        a.extend(["--shard".to_string(), format!("{i}/2")]);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        lsd_tui(dir.path(), &a);
    }
    assert_eq!(read_summary(&dir.path().join("s0/summary.csv")).iter().find(|r| r.1 == "trained").unwrap().4, 1);
    let merged = lsd_tui(dir.path(), &["merge", "--out", "merged", "s0", "s1"]);
    assert!(merged.contains("2 direction(s)"), "{merged}");
    let m = read_summary(&dir.path().join("merged/summary.csv"));
    for (a, b) in m.iter().zip(&summary) {
        assert_eq!((a.0, &a.1, a.4), (b.0, &b.1, b.4));
        assert!((a.2 - b.2).abs() < 1e-6 && (a.3 - b.3).abs() < 1e-6, "{a:?} vs {b:?}");
    }
}

#[test]
fn ablation_writes_grid_and_metrics_for_four_variants() {
    let dir = tempfile::tempdir().unwrap();
    let r = recipe(dir.path(), "ablation-gray-hair.yaml");
    let stdout = lsd_tui(
        dir.path(),
        &["ablation", "--recipe", &r, "--models", "demo", "--steps", "2", "--alphas", "1,3", "--out", "abl"],
    );
    assert!(stdout.contains("DEMO MODEL"), "{stdout}");
    let out = dir.path().join("abl");
    let (header, rows) = read_csv(&out.join("ablation.csv"));
    assert_eq!(header, ["variant", "alpha", "clip_before", "clip_after", "clip_gain", "id_similarity", "inside_share"]);
    assert_eq!(rows.len(), 4 * 2);
    let variants: Vec<&str> = rows.iter().step_by(2).map(|r| r[0].as_str()).collect();
    assert_eq!(variants, ["CLIP only", "CLIP + ID (λ_ID = 1)", "CLIP + Seg (λ_S = 0.1)", "CLIP + ID + Seg"]);
    for row in &rows {
        let v: Vec<f64> = row[1..].iter().map(|s| number(s)).collect();
        assert!(v.iter().all(|x| x.is_finite()), "{row:?}");
        assert!((v[3] - (v[2] - v[1])).abs() < 1e-9, "gain = after - before: {row:?}");
        assert!((-1.0..=1.0 + 1e-6).contains(&v[4]), "ID similarity {row:?}");
        assert!((0.0..=1.0 + 1e-6).contains(&v[5]), "inside share {row:?}");
    }
    for slug in ["clip", "clip+id", "clip+seg", "clip+id+seg"] {
        assert!(out.join(slug).join("direction.safetensors").is_file(), "{slug}");
    }
    let grid = image::open(out.join("ablation.png")).unwrap();
    assert!(grid.width() > 3 * 64 && grid.height() > 4 * 64, "{}x{}", grid.width(), grid.height());
}

/// The Slurm example as a scheduler stops it: SIGTERM to the batch script
/// while a direction trains. lsd-tui checkpoints that direction and exits
/// with 143, which the script passes on; running the script again (Slurm's
/// requeue) finishes the shard from the checkpoint.
#[test]
fn the_slurm_script_passes_sigterm_on_and_a_rerun_finishes_the_shard() {
    let dir = tempfile::tempdir().unwrap();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = dir.path().join("fig8");
    // The example recipe, checkpointing every 2 steps so that the test can
    // see training under way.
    let recipe = dir.path().join("generalize.yaml");
    let text = std::fs::read_to_string(format!("{RECIPES}/generalize-gray-hair.yaml")).unwrap();
    std::fs::write(&recipe, text.replace("checkpoint_every: 50", "checkpoint_every: 2")).unwrap();
    let script = || {
        let mut c = Command::new("bash");
        c.arg(format!("{root}/examples/recipes/experiments/generalize-slurm.sh"))
            .args(["--models", "demo", "--steps", "20"])
            .current_dir(root)
            .env("LSD_TUI", env!("CARGO_BIN_EXE_lsd-tui"))
            .env("LSD_PLUGIN_PATH", plugin_dir())
            .env("LSD_WEIGHTS_DIR", dir.path())
            .env("SHARDS", "1")
            .env("RECIPE", &recipe)
            .env("TRAIN_SEEDS", "1..2")
            .env("TEST_SEEDS", "100..102")
            .env("OUT", &out)
            .env("DEVICE", "cpu")
            .env_remove("SLURM_JOB_ID")
            .env_remove("SLURM_ARRAY_TASK_ID")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        c
    };
    let seed_dir = out.join("shard-0/directions");
    let child = script().spawn().expect("bash runs");
    // Once the direction has a checkpoint, stop it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let checkpointed = || {
        std::fs::read_dir(&seed_dir)
            .is_ok_and(|d| d.flatten().any(|e| e.path().join("checkpoint.safetensors").is_file()))
    };
    while !checkpointed() {
        assert!(std::time::Instant::now() < deadline, "training never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: kill(2) on the script's pid, which has not been reaped yet.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) }, 0);
    let o = child.wait_with_output().expect("reaped");
    let text =
        format!("stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(143), "{text}");
    assert!(text.contains("SIGTERM: stopping") && text.contains("continue with:"), "{text}");
    let folder = std::fs::read_dir(&seed_dir).unwrap().next().unwrap().unwrap().path();
    assert!(folder.join("checkpoint.safetensors").is_file(), "no checkpoint in {}: {text}", folder.display());
    assert!(!out.join("shard-0/generalize.csv").exists(), "the stopped shard wrote its summary");

    // The requeued task: the same script, to the end.
    let o = script().output().expect("bash runs");
    let text =
        format!("stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(0), "{text}");
    let (_, rows) = read_csv(&out.join("shard-0/generalize.csv"));
    assert!(!rows.is_empty(), "{text}");
    let losses = std::fs::read_to_string(folder.join("losses.csv")).unwrap();
    assert_eq!(losses.lines().count() - 1, 20, "the resumed direction did not train all its steps");
}

/// Runs a script of `examples/recipes/report/` with the built binary and
/// the demo networks; returns its output folder.
fn report_script(dir: &Path, script: &str, envs: &[(&str, &str)], args: &[&str]) -> PathBuf {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = dir.join(script.trim_end_matches(".sh"));
    let o = Command::new("sh")
        .arg(format!("{root}/examples/recipes/report/{script}"))
        .args(args)
        .current_dir(dir)
        .env("LSD_TUI", env!("CARGO_BIN_EXE_lsd-tui"))
        .env("LSD_PLUGIN_PATH", plugin_dir())
        .env("DEVICE", "cpu")
        .env("OUT", &out)
        .envs(envs.iter().copied())
        .output()
        .expect("sh runs");
    let text =
        format!("stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{script}: {text}");
    out
}

/// The report's presets: every recipe parses, and every figure's script
/// runs a few steps on the demo networks and writes its figure.
#[test]
fn report_presets_parse_and_run_on_the_demo_models() {
    let dir = tempfile::tempdir().unwrap();
    let presets = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/recipes/report");
    let mut recipes = 0;
    for entry in std::fs::read_dir(presets).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            lsd_core::recipe::Recipe::load(&path).unwrap_or_else(|e| panic!("{e}"));
            recipes += 1;
        }
    }
    assert_eq!(recipes, 3);

    let out = report_script(
        dir.path(),
        "fig5-similarity.sh",
        &[("GENERATOR", "demo"), ("CLIP", "demo"), ("SEEDS", "2..4")],
        &[],
    );
    let (_, rows) = read_csv(&out.join("similarity.csv"));
    assert_eq!(rows.len(), 6, "the six prompts");
    assert!(out.join("similarity.png").is_file());

    // Figs. 6–7: the recipe with 4 steps (`run` takes no --steps; 3
    // halvings need 4 steps or more).
    let recipe = dir.path().join("fig6-7.yaml");
    let text = std::fs::read_to_string(format!("{presets}/fig6-7-local-direction.yaml")).unwrap();
    std::fs::write(&recipe, text.replace("steps: 200 ", "steps: 4 ")).unwrap();
    let out =
        report_script(dir.path(), "fig6-7-strips.sh", &[("RECIPE", recipe.to_str().unwrap())], &["--models", "demo"]);
    let losses = std::fs::read_to_string(out.join("losses.csv")).unwrap();
    assert_eq!(losses.lines().count() - 1, 4);
    assert!(out.join("strips.png").is_file());

    let out = report_script(
        dir.path(),
        "fig8-generalize.sh",
        &[("TRAIN_SEEDS", "1..3"), ("TEST_SEEDS", "100..103")],
        &["--models", "demo", "--steps", "4"],
    );
    let (header, rows) = read_csv(&out.join("generalize.csv"));
    assert!(!rows.is_empty(), "{header:?}");
    assert!(out.join("generalize.png").is_file());

    let out = report_script(dir.path(), "fig9-ablation.sh", &[], &["--models", "demo", "--steps", "4"]);
    let (_, rows) = read_csv(&out.join("ablation.csv"));
    let variants: std::collections::BTreeSet<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!((variants.len(), rows.len()), (4, 20), "four variants × five α: {variants:?}");
    assert!(out.join("ablation.png").is_file());
}

#[test]
fn sweep_trains_a_grid_reuses_finished_runs_and_shards_merge_to_the_same_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let r = recipe(dir.path(), "ablation-gray-hair.yaml");
    let args = |out: &str, shard: Option<&str>| {
        let mut a: Vec<String> = [
            "sweep",
            &r,
            "--models",
            "demo",
            "--steps",
            "2",
            "--set",
            "identity.weight=0.5,1",
            "--set",
            "alpha=2,3",
            "--out",
            out,
        ]
        .into_iter()
        .map(String::from)
        .collect();
        if let Some(s) = shard {
            a.extend(["--shard".to_string(), s.to_string()]);
        }
        a
    };
    let run = |a: Vec<String>| lsd_tui(dir.path(), &a.iter().map(String::as_str).collect::<Vec<_>>());
    let stdout = run(args("whole", None));
    assert!(stdout.contains("DEMO MODEL") && stdout.contains("clip_gain"), "{stdout}");
    let whole = dir.path().join("whole");
    let (header, rows) = read_csv(&whole.join("sweep.csv"));
    assert_eq!(
        header,
        [
            "identity.weight",
            "alpha",
            "edit_alpha",
            "clip_before",
            "clip_after",
            "clip_gain",
            "id_similarity",
            "inside_share"
        ]
    );
    assert_eq!(rows.len(), 4);
    assert_eq!((rows[1][0].as_str(), rows[1][1].as_str(), number(&rows[1][2])), ("0.5", "3", 3.0));
    for row in &rows {
        let v: Vec<f64> = row[2..].iter().map(|s| number(s)).collect();
        assert!(v.iter().all(|x| x.is_finite()), "{row:?}");
        assert!((v[3] - (v[2] - v[1])).abs() < 1e-12, "gain = after − before: {row:?}");
        assert!((-1.0..=1.0).contains(&v[4]) && (0.0..=1.0).contains(&v[5]), "{row:?}");
    }
    let (w, h) = png_size(&whole.join("sweep.png"));
    assert!(w > 3 * 64 && h > 4 * 64, "{w}x{h}");

    // Again: every run is reused, nothing is retrained or measured again.
    let measured = whole.join("runs/identity.weight=1,alpha=2/sweep-run.json");
    let before = std::fs::metadata(&measured).unwrap().modified().unwrap();
    run(args("whole", None));
    assert_eq!(std::fs::metadata(&measured).unwrap().modified().unwrap(), before, "measured again");

    // Two shards merged give the same table as one run.
    run(args("s0", Some("0/2")));
    run(args("s1", Some("1/2")));
    assert_eq!(read_csv(&dir.path().join("s0/sweep.csv")).1.len(), 2);
    lsd_tui(dir.path(), &["merge", "--out", "merged", "s0", "s1"]);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("merged/sweep.csv")).unwrap(),
        std::fs::read_to_string(whole.join("sweep.csv")).unwrap()
    );
}

#[test]
fn similarity_and_generalize_measure_given_directions_without_training() {
    let dir = tempfile::tempdir().unwrap();
    let gen = recipe(dir.path(), "generalize-gray-hair.yaml");
    lsd_tui(dir.path(), &["sefa", "--generator", "demo", "--top", "3", "--out", "sefa.safetensors"]);

    // similarity: each image once per direction and α.
    let stdout = lsd_tui(
        dir.path(),
        &[
            "similarity",
            "--prompts",
            "gray hair",
            "--seeds",
            "1,2",
            "--direction",
            "sefa.safetensors@1",
            "--alphas",
            "-2,2",
            "--out",
            "sim",
        ],
    );
    assert!(stdout.contains("DEMO MODEL"), "{stdout}");
    let (header, rows) = read_csv(&dir.path().join("sim/similarity.csv"));
    assert_eq!(
        header,
        [
            "prompt",
            "seed 1 sefa.safetensors@1 α=-2",
            "seed 1 sefa.safetensors@1 α=+2",
            "seed 2 sefa.safetensors@1 α=-2",
            "seed 2 sefa.safetensors@1 α=+2",
            "mean"
        ]
    );
    assert_eq!(rows.len(), 1);

    // generalize: the file's three directions, measured on every test seed.
    let args = |out: &str, shard: Option<&str>| {
        let mut a: Vec<String> = [
            "generalize",
            "--recipe",
            &gen,
            "--models",
            "demo",
            "--direction",
            "sefa.safetensors",
            "--test-seeds",
            "100..102",
            "--alphas",
            "1,2",
            "--out",
            out,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(s) = shard {
            a.extend(["--shard".to_string(), s.to_string()]);
        }
        a
    };
    let run = |a: Vec<String>| lsd_tui(dir.path(), &a.iter().map(String::as_str).collect::<Vec<_>>());
    let stdout = run(args("gen", None));
    assert!(stdout.contains("3 given direction(s), 2 unseen image(s)"), "{stdout}");
    let out = dir.path().join("gen");
    assert!(!out.join("directions/given-0/direction.safetensors").exists(), "nothing is trained");
    let (_, rows) = read_csv(&out.join("generalize.csv"));
    assert_eq!(rows.len(), 3 * 2 * 3, "3 directions × 2 images × α 0, 1, 2");
    assert!(rows.iter().all(|r| r[2] == "unseen"), "a given direction has no image of its own");
    let summary = read_summary(&out.join("summary.csv"));
    for (alpha, kind, mean, _, n) in &summary {
        assert_eq!(*n, if kind == "trained" { 0 } else { 6 }, "{alpha} {kind}");
        if kind == "unseen" {
            assert!(mean.is_finite());
        }
    }
    let experiment: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("generalize.json")).unwrap()).unwrap();
    assert_eq!(
        experiment["directions"],
        serde_json::json!(["sefa.safetensors@0", "sefa.safetensors@1", "sefa.safetensors@2"])
    );

    // A second run keeps the measured folders.
    let delta = out.join("directions/given-2/delta.csv");
    let before = std::fs::metadata(&delta).unwrap().modified().unwrap();
    run(args("gen", None));
    assert_eq!(std::fs::metadata(&delta).unwrap().modified().unwrap(), before, "measured again");

    // Shards merged give the same numbers as one run.
    run(args("s0", Some("0/2")));
    run(args("s1", Some("1/2")));
    lsd_tui(dir.path(), &["merge", "--out", "merged", "s0", "s1"]);
    // (The text: the empty "trained" rows hold NaN, which equals nothing.)
    let text = |p: &Path| std::fs::read_to_string(p).unwrap();
    assert_eq!(text(&dir.path().join("merged/summary.csv")), text(&out.join("summary.csv")));
    assert_eq!(read_csv(&dir.path().join("merged/generalize.csv")).1, rows);
}

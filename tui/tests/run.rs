//! End-to-end tests of `lsd-tui run`, `demo` and `apply` on the demo
//! networks with the built-in plugins (built from here on first use).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use candle_core::Device;
use lsd_core::outputs::read_direction;

const BIN: &str = env!("CARGO_BIN_EXE_lsd-tui");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The folder(s) holding the built-in plugins, built once.
fn plugin_path() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        let libs = lsd_plugin_testing::build_plugins(
            root().join("Cargo.toml"),
            &["lsd-plugin-clip", "lsd-plugin-identity", "lsd-plugin-segmentation"],
        )
        .expect("the built-in plugins build");
        let mut dirs: Vec<PathBuf> = libs.iter().filter_map(|l| l.parent().map(Path::to_path_buf)).collect();
        dirs.dedup();
        std::env::join_paths(dirs).expect("joinable").to_string_lossy().into_owned()
    })
}

fn lsd(args: &[&str], weights_dir: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env("LSD_PLUGIN_PATH", plugin_path())
        .env("LSD_WEIGHTS_DIR", weights_dir)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    c
}

fn run(args: &[&str], weights_dir: &Path) -> Output {
    lsd(args, weights_dir).output().expect("the binary runs")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn direction(dir: &Path) -> Vec<f32> {
    let d = read_direction(&dir.join("direction.safetensors"), &Device::Cpu).expect("a direction file");
    d.direction.flatten_all().and_then(|t| t.to_vec1()).expect("f32 values")
}

/// A column of losses.csv.
fn column(dir: &Path, name: &str) -> Vec<f64> {
    let csv = std::fs::read_to_string(dir.join("losses.csv")).expect("losses.csv");
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().expect("a header").split(',').collect();
    let i = header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("no column {name} in {header:?}"));
    lines.map(|l| l.split(',').nth(i).expect("cell").parse().expect("a number")).collect()
}

#[test]
fn every_invalid_recipe_is_a_located_error_and_no_panic() {
    let empty_weights = tempfile::tempdir().expect("tempdir");
    let dir = root().join("tests/recipes/invalid");
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&dir).expect("the folder").filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.retain(|p| p.extension().is_some_and(|e| e == "yaml"));
    files.sort();
    assert!(files.len() >= 30);
    let mut failures = Vec::new();
    for path in &files {
        let body = std::fs::read_to_string(path).expect("readable");
        let first = body.lines().next().and_then(|l| l.strip_prefix("# expect: ")).expect("an expectation");
        let mut parts = first.split(" | ");
        let (pos, key) = parts.next().and_then(|h| h.split_once(' ')).expect("L:C KEY");
        let out = run(&["run", path.to_str().expect("utf-8"), "--check", "--headless"], empty_weights.path());
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let name = path.file_name().expect("a name").to_string_lossy().into_owned();
        let located = format!("{name}:{pos}:");
        let mut ok = out.status.code() == Some(2) && err.contains(&located) && !err.contains("panicked");
        if key != "-" {
            ok &= err.contains(&format!("'{key}'"));
        }
        for c in parts {
            ok &= err.contains(c);
        }
        if !ok {
            failures.push(format!("{name} (want {located} '{key}' …):\n{}", text(&out)));
        }
    }
    assert!(failures.is_empty(), "{} of {} failed:\n{}", failures.len(), files.len(), failures.join("\n\n"));
}

#[test]
fn demo_trains_end_to_end_and_its_clip_term_decreases_then_apply_uses_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out_dir = tmp.path().join("demo");
    let t = Instant::now();
    let out = run(&["demo", "--headless", "--output", out_dir.to_str().expect("utf-8")], tmp.path());
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("DEMO MODEL") && stdout.contains("done in"), "{}", text(&out));
    eprintln!("demo took {:.1} s", t.elapsed().as_secs_f64());
    for f in [
        "direction.safetensors",
        "recipe.yaml",
        "losses.csv",
        "losses.png",
        "metrics.json",
        "strip-0.png",
        "checkpoint.safetensors",
    ] {
        assert!(out_dir.join(f).is_file(), "missing {f}");
    }
    let clip = column(&out_dir, "clip");
    assert_eq!(clip.len(), 12);
    assert!(clip[clip.len() - 1] < clip[0], "the CLIP term did not decrease: {clip:?}");
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("metrics.json")).expect("json")).expect("valid");
    assert!(metrics["clip_similarity"]["after"].as_f64().is_some(), "{metrics}");

    let strip = tmp.path().join("applied.png");
    let out = run(
        &[
            "apply",
            out_dir.join("direction.safetensors").to_str().expect("utf-8"),
            "--seeds",
            "5..7",
            "--alphas",
            "-2,2",
            "--out",
            strip.to_str().expect("utf-8"),
        ],
        tmp.path(),
    );
    assert!(out.status.success(), "{}", text(&out));
    let img = image::open(&strip).expect("a PNG");
    assert!(img.width() > 3 * 64 && img.height() > 2 * 64, "{}x{}", img.width(), img.height());
}

const SMALL: &str = "\
prompt: a photo of a person with blonde hair
steps: 6
seed: 3
seeds: [0, 1]
batch: 1
alpha: {min: -3, max: 3, min_abs: 1}
checkpoint_every: 1
preview: {every: 0, seeds: [0]}
terms:
  - plugin: clip
  - plugin: segmentation
    weight: 0.1
    params: {size: 64}
";

/// A recipe whose generator is NVIDIA's snapshot format (`.pkl`): it
/// trains with the feature-space segmentation term, and `apply` renders
/// with the same file.
#[test]
fn a_stylegan2_ada_network_pickle_trains_and_applies() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pkl = root().join("tests/fixtures/stylegan2-ada/network.pkl");
    let recipe = tmp.path().join("ada.yaml");
    let body =
        SMALL.replace("steps: 6", "steps: 2").replace("params: {size: 64}", "params: {size: 64, space: features}");
    std::fs::write(&recipe, format!("{body}models: {{generator: {}}}\n", pkl.display())).expect("writable");
    let out_dir = tmp.path().join("ada");
    let o = run(
        &["run", recipe.to_str().expect("utf-8"), "--headless", "--output", out_dir.to_str().expect("utf-8")],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let d = direction(&out_dir);
    assert!(
        !d.is_empty() && d.len().is_multiple_of(128) && d.len() <= 10 * 128,
        "a direction in the snapshot's 10 x 128 W+: {}",
        d.len()
    );
    assert!(d.iter().all(|v| v.is_finite()) && d.iter().any(|&v| v != 0.0));
    let strip = tmp.path().join("applied.png");
    let dir_file = out_dir.join("direction.safetensors");
    let o = run(
        &[
            "apply",
            dir_file.to_str().expect("utf-8"),
            "--seeds",
            "0..2",
            "--alphas",
            "-1,1",
            "--out",
            strip.to_str().expect("utf-8"),
        ],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(image::open(&strip).is_ok(), "apply wrote no image");
}

#[test]
fn same_recipe_twice_is_identical_and_a_killed_run_resumes_to_the_same_direction() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let recipe = tmp.path().join("small.yaml");
    std::fs::write(&recipe, SMALL).expect("writable");
    let r = recipe.to_str().expect("utf-8");
    let out = |name: &str| tmp.path().join(name);
    let go = |extra: &[&str], dir: &Path| {
        let mut args = vec!["run", r, "--headless", "--output", dir.to_str().expect("utf-8")];
        args.extend_from_slice(extra);
        let o = run(&args, tmp.path());
        assert!(o.status.success(), "{}", text(&o));
        o
    };
    go(&[], &out("a"));
    go(&[], &out("b"));
    assert_eq!(direction(&out("a")), direction(&out("b")), "same recipe, different direction");

    // Stop after step 2 (stopped by the user: status 3), then resume.
    let o = run(
        &["run", r, "--headless", "--output", out("stopped").to_str().expect("utf-8"), "--stop-after", "2"],
        tmp.path(),
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("continue with:")
            && String::from_utf8_lossy(&o.stdout).contains("--resume"),
        "{}",
        text(&o)
    );
    go(&["--resume"], &out("stopped"));
    assert_eq!(direction(&out("a")), direction(&out("stopped")));

    // SIGTERM, as a scheduler stops a job: checkpoint and outputs written,
    // status 143, and the resumed run ends with the straight run's direction.
    let termed = out("termed");
    let child = lsd(&["run", r, "--headless", "--output", termed.to_str().expect("utf-8")], tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let deadline = Instant::now() + Duration::from_secs(600);
    while !termed.join("checkpoint.safetensors").is_file() {
        assert!(Instant::now() < deadline, "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on the child's pid, which has not been reaped yet.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) }, 0);
    let o = child.wait_with_output().expect("reaped");
    if o.status.code() == Some(0) {
        eprintln!("note: the run finished before SIGTERM arrived");
    } else {
        assert_eq!(o.status.code(), Some(143), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("SIGTERM: stopped at step") && err.contains("--resume"), "{}", text(&o));
        for f in ["direction.safetensors", "losses.csv", "metrics.json", "checkpoint.safetensors"] {
            assert!(termed.join(f).is_file(), "no {f} after SIGTERM");
        }
        assert!(column(&termed, "total").len() < 6, "SIGTERM did not stop the run early");
    }
    go(&["--resume"], &termed);
    assert_eq!(direction(&out("a")), direction(&termed), "SIGTERM then --resume: another direction");
    assert_eq!(column(&out("a"), "total"), column(&termed, "total"));

    // Really kill the process once a checkpoint is on disk, then resume.
    let killed = out("killed");
    let mut child = lsd(&["run", r, "--headless", "--output", killed.to_str().expect("utf-8")], tmp.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts");
    let deadline = Instant::now() + Duration::from_secs(600);
    while !killed.join("checkpoint.safetensors").is_file() {
        assert!(Instant::now() < deadline, "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("killable");
    child.wait().expect("reaped");
    let finished_before_kill = killed.join("metrics.json").is_file();
    go(&["--resume"], &killed);
    assert_eq!(direction(&out("a")), direction(&killed));
    assert_eq!(column(&out("a"), "total"), column(&killed, "total"));
    if finished_before_kill {
        eprintln!("note: the run finished before it was killed");
    }
}

#[test]
fn errors_for_people_have_no_colour_and_no_source_locations() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("missing.safetensors");
    let apply = |env: &[(&str, &str)]| {
        let mut c = Command::new(BIN);
        c.args(["apply", missing.to_str().expect("utf-8")])
            .env_remove("NO_COLOR")
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE");
        for (k, v) in env {
            c.env(k, v);
        }
        c.stdin(Stdio::null()).output().expect("the binary runs")
    };
    // stderr is a pipe here: no colour, one line, no footer.
    let o = apply(&[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(err.starts_with("error: ") && err.contains("missing.safetensors"), "{err}");
    assert!(!err.contains('\x1b'), "colour in a pipe: {err:?}");
    assert!(!err.contains("Location") && !err.contains("BACKTRACE") && !err.contains(".rs:"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    // A bug report wants the details.
    let o = apply(&[("RUST_BACKTRACE", "1")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("Location") && !err.contains('\x1b'), "{err}");
}

/// Writes a `<f4` `.npy` file (the format inversion encoders and other
/// direction methods save).
fn npy(path: &Path, shape: &[usize], data: &[f32]) {
    lsd_core::npy::write(path, shape, data).expect("npy written");
}

fn png(path: &Path) -> image::RgbImage {
    image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8()
}

/// SeFa, import and export of `.npy` directions, and `apply` with latent
/// files, layer presets, composed edits, a 2-D grid and an animation, all
/// on the demo generator (W+ is [10, 32]).
#[test]
fn sefa_import_export_and_apply_with_latents_layers_edits_grids_and_gifs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = |name: &str| tmp.path().join(name).display().to_string();
    let ok = |args: &[&str]| {
        let o = run(args, tmp.path());
        assert!(o.status.success(), "{args:?}\n{}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    // SeFa: eigenvectors of the style weights, in our direction format.
    let out = ok(&["sefa", "--generator", "demo", "--top", "3", "--out", &p("sefa.safetensors")]);
    assert!(out.contains("eigenvalue") && out.contains("DEMO MODEL"), "{out}");
    let d = read_direction(&tmp.path().join("sefa.safetensors"), &Device::Cpu).expect("a direction file");
    assert_eq!(d.direction.dims(), &[3, 10, 32]);
    // Export ours as .npy, import theirs.
    ok(&["direction", "export", &p("sefa.safetensors"), &p("sefa.npy")]);
    let back = lsd_core::npy::read(&tmp.path().join("sefa.npy")).expect("npy");
    assert_eq!(back.shape, vec![3, 10, 32]);
    assert_eq!(back.data, d.direction.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("f32"));
    let boundary: Vec<f32> = (0..32).map(|i| if i == 5 { 1.0 } else { 0.0 }).collect();
    npy(&tmp.path().join("smile_boundary.npy"), &[1, 32], &boundary);
    ok(&["direction", "import", &p("smile_boundary.npy"), "--layers", "coarse", "--out", &p("smile.safetensors")]);
    let imported = read_direction(&tmp.path().join("smile.safetensors"), &Device::Cpu).expect("imported");
    let rows = imported.direction.squeeze(0).and_then(|t| t.to_vec2::<f32>()).expect("[10, 32]");
    assert!(rows[..4].iter().all(|r| r == &boundary) && rows[4..].iter().all(|r| r.iter().all(|&v| v == 0.0)));
    assert_eq!(imported.meta.name, "smile_boundary");

    // A real photo's latent: rows labelled by file name after the seeds.
    let w: Vec<f32> = (0..10 * 32).map(|i| ((i % 7) as f32 - 3.0) * 0.3).collect();
    npy(&tmp.path().join("me.npy"), &[10, 32], &w);
    npy(&tmp.path().join("us.npy"), &[2, 10, 32], &[w.clone(), w.clone()].concat());
    ok(&[
        "apply",
        &p("sefa.safetensors"),
        "--seeds",
        "1",
        "--latent",
        &p("me.npy"),
        "--latent",
        &p("us.npy"),
        "--alphas",
        "-2,2",
        "--out",
        &p("photo.png"),
    ]);
    let one_row = png(&tmp.path().join("photo.png"));
    // `run --latent`: trained on with the recipe's seed, previewed and labelled by name.
    let recipe = tmp.path().join("r.yaml");
    std::fs::write(&recipe, "prompt: a smiling face\nsteps: 2\nseeds: [0]\nterms:\n  - plugin: clip\n")
        .expect("recipe");
    ok(&["run", &p("r.yaml"), "--headless", "--latent", &p("me.npy"), "--output", &p("r")]);
    for f in ["strip-0.png", "strip-me.png", "direction.safetensors"] {
        assert!(tmp.path().join("r").join(f).is_file(), "missing {f}");
    }
    assert!(std::fs::read_to_string(tmp.path().join("r/recipe.yaml")).expect("recipe.yaml").contains("me.npy"));
    for layers in ["fine", "coarse"] {
        let out = p(&format!("{layers}.png"));
        ok(&[
            "apply",
            &p("sefa.safetensors"),
            "--latent",
            &p("me.npy"),
            "--alphas",
            "-2,2",
            "--layers",
            layers,
            "--out",
            &out,
        ]);
    }
    let (fine, coarse) = (png(&tmp.path().join("fine.png")), png(&tmp.path().join("coarse.png")));
    assert_eq!(fine.dimensions(), coarse.dimensions());
    assert!(one_row.height() > fine.height() + 2 * 64, "4 rows vs 1: {} vs {}", one_row.height(), fine.height());
    assert_ne!(fine.as_raw(), coarse.as_raw(), "the layers must change the edit");
    // --truncation re-draws the seeds' images (the direction's ψ is 0.7).
    ok(&[
        "apply",
        &p("sefa.safetensors"),
        "--seeds",
        "1",
        "--alphas",
        "2",
        "--truncation",
        "0.4",
        "--out",
        &p("t4.png"),
    ]);
    ok(&["apply", &p("sefa.safetensors"), "--seeds", "1", "--alphas", "2", "--out", &p("t7.png")]);
    assert_ne!(png(&tmp.path().join("t4.png")).as_raw(), png(&tmp.path().join("t7.png")).as_raw());
    let bad = run(&["apply", &p("sefa.safetensors"), "--truncation", "1.5"], tmp.path());
    assert!(
        !bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("expected 0 < ψ <= 1"),
        "{}",
        text(&bad)
    );
    // A latent inverted for a generator of another size.
    npy(&tmp.path().join("other.npy"), &[14, 32], &[0.0; 14 * 32]);
    let bad = run(&["apply", &p("sefa.safetensors"), "--latent", &p("other.npy")], tmp.path());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("[10, 32] (one W+)") && err.contains("other.npy"), "{}", text(&bad));

    // Composed edits, a 2-D grid, an animation.
    ok(&[
        "apply",
        "--edit",
        &format!("{}@1=2", p("sefa.safetensors")),
        "--edit",
        &format!("{}=-1", p("smile.safetensors")),
        "--seeds",
        "0",
        "--out",
        &p("sum.png"),
    ]);
    assert!(png(&tmp.path().join("sum.png")).width() >= 2 * 64);
    ok(&[
        "apply",
        &p("sefa.safetensors"),
        "--grid-with",
        &p("smile.safetensors"),
        "--alphas",
        "-2,0,2",
        "--alphas2",
        "-1,1",
        "--seeds",
        "3",
        "--out",
        &p("grid.png"),
    ]);
    let g = png(&tmp.path().join("grid.png"));
    assert!(g.width() >= 3 * 64 && g.height() >= 2 * 64 && g.height() < 3 * 64 + 80, "{:?}", g.dimensions());
    let out = ok(&[
        "apply",
        &p("sefa.safetensors"),
        "--animate",
        "--frames",
        "4",
        "--seeds",
        "0,1",
        "--alphas",
        "-2,2",
        "--out",
        &p("sweep.png"),
    ]);
    assert!(out.contains("sweep.gif"), "{out}");
    use image::AnimationDecoder;
    let gif = std::fs::File::open(tmp.path().join("sweep.gif")).expect("the GIF");
    let frames = image::codecs::gif::GifDecoder::new(std::io::BufReader::new(gif))
        .expect("a GIF")
        .into_frames()
        .collect_frames()
        .expect("frames");
    assert_eq!(frames.len(), 6, "4 frames there, 2 back");
}

#[test]
fn animate_writes_an_mp4_through_ffmpeg_when_it_is_on_the_path() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = |name: &str| tmp.path().join(name).display().to_string();
    let o = run(&["sefa", "--generator", "demo", "--top", "1", "--out", &p("sefa.safetensors")], tmp.path());
    assert!(o.status.success(), "{}", text(&o));
    let animate = |path_dir: &Path| {
        lsd(
            &[
                "apply",
                &p("sefa.safetensors"),
                "--animate",
                "--frames",
                "3",
                "--seeds",
                "0",
                "--alphas",
                "-2,2",
                "--out",
                &p("sweep.png"),
            ],
            tmp.path(),
        )
        .env("PATH", path_dir)
        .output()
        .expect("the binary runs")
    };
    let mp4 = tmp.path().join("sweep.mp4");
    let fake = |name: &str, body: &str| {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).expect("folder");
        let script = dir.join("ffmpeg");
        std::fs::write(&script, format!("#!/bin/sh\nPATH=/usr/bin:/bin\n[ \"$1\" = -version ] && exit 0\n{body}\n"))
            .expect("script");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        dir
    };

    // No ffmpeg: the GIF only, and a word about it.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).expect("folder");
    let o = animate(&empty);
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("no MP4: ffmpeg is not on the PATH"),
        "{}",
        text(&o)
    );
    assert!(tmp.path().join("sweep.gif").is_file() && !mp4.exists());

    // ffmpeg gets every frame (3 there, 1 back) as numbered PNGs and writes
    // the MP4 it is told to, in even sides and yuv420p.
    let recorder = fake(
        "recorder",
        r#"for last; do :; done
prev=""; for a; do [ "$prev" = -i ] && frames=$(ls "$(dirname "$a")" | grep -c '^frame-.*\.png$'); prev=$a; done
echo "frames=$frames args=$*" > "$last""#,
    );
    let o = animate(&recorder);
    assert!(o.status.success(), "{}", text(&o));
    let record = std::fs::read_to_string(&mp4).expect("the MP4 ffmpeg wrote");
    assert!(record.starts_with("frames=4 "), "{record}");
    assert!(
        record.contains("-pix_fmt yuv420p")
            && record.contains("pad=ceil(iw/2)*2:ceil(ih/2)*2")
            && record.contains("-f mp4"),
        "{record}"
    );
    std::fs::remove_file(&mp4).expect("rm");

    // ffmpeg fails: its message, and no half-written MP4.
    let failing = fake("failing", "echo 'boom: no encoder' >&2\nexit 1");
    let o = animate(&failing);
    assert!(!o.status.success() && text(&o).contains("ffmpeg failed: boom: no encoder"), "{}", text(&o));
    assert!(!mp4.exists(), "a failed encode left a file");

    // The real one, where this machine has it.
    let real = Path::new("/usr/bin/ffmpeg");
    if real.is_file() {
        let o = animate(real.parent().expect("/usr/bin"));
        assert!(o.status.success(), "{}", text(&o));
        let bytes = std::fs::read(&mp4).expect("the MP4");
        assert_eq!(&bytes[4..8], b"ftyp", "an ISO media file");
    }
}

#[test]
fn bad_values_are_usage_errors_before_anything_loads_and_flags_are_spelled_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (args, flag) in [
        (&["apply", "missing.safetensors", "--seeds", "1..x"][..], "--seeds"),
        (&["apply", "missing.safetensors", "--alphas", "1,two"][..], "--alphas"),
        (&["similarity", "--prompts", "p", "--seeds", "3,3"][..], "--seeds"),
        (&["generalize", "--recipe", "missing.yaml", "--test-seeds", "1", "--shard", "2/2"][..], "--shard"),
        (&["run", "missing.yaml", "--models", "real"][..], "--models"),
    ] {
        let o = run(args, tmp.path());
        assert_eq!(o.status.code(), Some(2), "{args:?}\n{}", text(&o));
        assert!(String::from_utf8_lossy(&o.stderr).contains(flag), "{args:?}\n{}", text(&o));
    }
    // `--output` everywhere; `-o` and the older `--out` still read.
    let o = run(
        &["sefa", "--generator", "demo", "--top", "1", "-o", &tmp.path().join("a.safetensors").display().to_string()],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = run(
        &[
            "sefa",
            "--generator",
            "demo",
            "--top",
            "1",
            "--out",
            &tmp.path().join("b.safetensors").display().to_string(),
        ],
        tmp.path(),
    );
    assert!(
        o.status.success() && tmp.path().join("a.safetensors").is_file() && tmp.path().join("b.safetensors").is_file(),
        "{}",
        text(&o)
    );
    for cmd in ["demo", "run", "apply", "similarity", "generalize", "ablation", "sweep", "merge", "sefa"] {
        let o = run(&[cmd, "--help"], tmp.path());
        let help = String::from_utf8_lossy(&o.stdout);
        assert!(help.contains("-o, --output"), "{cmd} --help:\n{help}");
        assert!(!help.contains("--out "), "{cmd} --help:\n{help}");
    }
}

#[test]
fn plugins_install_into_the_user_folder_where_runs_find_them() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let built = PathBuf::from(plugin_path().split(':').next().expect("a folder")).join(format!(
        "{}lsd_plugin_identity{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    let home = tmp.path().join("home");
    let plugins = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env_remove("LSD_PLUGIN_PATH")
            .env_remove("XDG_DATA_HOME")
            .env("HOME", &home)
            .env("NO_COLOR", "1")
            .output()
            .expect("the binary runs")
    };
    let o = plugins(&["plugins", "install", &built.display().to_string()]);
    assert!(o.status.success(), "{}", text(&o));
    let installed = home.join(".local/share/lsd-tui/plugins").join(built.file_name().expect("a name"));
    assert!(installed.is_file(), "{}", text(&o));
    assert_eq!(std::fs::read(&installed).expect("installed"), std::fs::read(&built).expect("built"));
    let listing = String::from_utf8_lossy(&plugins(&["plugins"]).stdout).into_owned();
    assert!(listing.contains(&home.join(".local/share/lsd-tui/plugins").display().to_string()), "{listing}");

    // A library under another name would never be found: refused, nothing copied.
    let renamed = tmp.path().join("identity.so");
    std::fs::copy(&built, &renamed).expect("copy");
    let o = plugins(&[
        "plugins",
        "install",
        "--dir",
        &tmp.path().join("elsewhere").display().to_string(),
        &renamed.display().to_string(),
    ]);
    assert!(!o.status.success() && text(&o).contains("lsd_plugin_"), "{}", text(&o));
    assert!(!tmp.path().join("elsewhere/identity.so").exists());
    // Not a library at all: refused by the check, nothing copied.
    let fake =
        tmp.path().join(format!("{}lsd_plugin_fake{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX));
    std::fs::write(&fake, b"not a library").expect("write");
    let o = plugins(&[
        "plugins",
        "install",
        "--dir",
        &tmp.path().join("elsewhere").display().to_string(),
        &fake.display().to_string(),
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(!tmp.path().join("elsewhere").join(fake.file_name().expect("name")).exists());
}

#[test]
fn install_script_lays_out_binary_plugins_completions_and_man_pages() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // What a build leaves: the binary and the plugin libraries in one folder.
    let from = tmp.path().join("built");
    std::fs::create_dir_all(&from).expect("folder");
    std::fs::copy(BIN, from.join("lsd-tui")).expect("copy the binary");
    for dir in std::env::split_paths(plugin_path()) {
        for e in std::fs::read_dir(&dir).expect("plugin folder").flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if lsd_core::plugin::discovery::is_plugin_file_name(&name) {
                std::fs::copy(e.path(), from.join(&name)).expect("copy a plugin");
            }
        }
    }
    let prefix = tmp.path().join("prefix");
    let o = Command::new("bash")
        .arg(root().join("scripts/install.sh"))
        .args(["--from", &from.display().to_string(), "--prefix", &prefix.display().to_string()])
        .output()
        .expect("bash runs");
    assert!(o.status.success(), "{}", text(&o));
    for f in [
        "bin/lsd-tui",
        "share/man/man1/lsd-tui.1",
        "share/man/man1/lsd-tui-apply.1",
        "share/bash-completion/completions/lsd-tui",
        "share/zsh/site-functions/_lsd-tui",
        "share/fish/vendor_completions.d/lsd-tui.fish",
    ] {
        let p = prefix.join(f);
        assert!(std::fs::metadata(&p).map(|m| m.len() > 0).unwrap_or(false), "{} missing or empty", p.display());
    }
    let bash = std::fs::read_to_string(prefix.join("share/bash-completion/completions/lsd-tui")).expect("completions");
    assert!(bash.contains("generalize") && bash.contains("--output"), "the completions know the commands and flags");
    let man = std::fs::read_to_string(prefix.join("share/man/man1/lsd-tui-apply.1")).expect("man page");
    assert!(man.contains(".TH") && man.contains("Examples"), "{man}");
    // The installed binary finds the installed plugins, with no LSD_PLUGIN_PATH.
    let o = Command::new(prefix.join("bin/lsd-tui"))
        .arg("plugins")
        .env_remove("LSD_PLUGIN_PATH")
        .env("HOME", tmp.path())
        .output()
        .expect("runs");
    let listing = String::from_utf8_lossy(&o.stdout);
    let lib = prefix.join("lib/lsd-tui/plugins").display().to_string();
    for name in ["clip", "identity", "segmentation"] {
        assert!(
            listing.lines().any(|l| l.starts_with(name) && l.contains(&lib)),
            "{name} not found under {lib}:\n{listing}"
        );
    }
    // A folder without a binary is a clear error.
    let o = Command::new("bash")
        .arg(root().join("scripts/install.sh"))
        .args(["--from", &tmp.path().join("nothing").display().to_string()])
        .output()
        .expect("bash");
    assert!(!o.status.success() && text(&o).contains("no executable"), "{}", text(&o));
}

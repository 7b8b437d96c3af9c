//! The fuzz targets of `lsd_core::fuzzing` as bounded property tests on
//! stable Rust, and the hostile checkpoints of issue 15 at full size.
//!
//! Each target runs on its seed corpus (`fuzz/corpus/<target>/` plus the
//! built-in seeds) and then on mutations of it, `LSD_FUZZ_CASES` inputs in
//! all (default 10 000). An input fails the test when it panics, takes
//! longer than 5 s, or (checkpoints) uses more than 4 × its file's size +
//! 64 MiB of heap, measured by the counting allocator below; a failing
//! input is saved under `target/fuzz-failures/`. `LSD_FUZZ_SEED` changes
//! the mutation sequence. Run with `--nocapture` to see the figures.
//!
//! The long runs use the same targets under libFuzzer: see `fuzz/README.md`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lsd_core::fuzzing::{self, hostile, Mutator};

/// Counts the heap in use and its peak; refuses allocations past
/// [`HEAP_CAP`] so that a regression fails this test instead of the machine.
struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// 3 GiB: the largest hostile file here is 65 MB.
const HEAP_CAP: usize = 3 << 30;

impl Counting {
    fn grew(by: usize) -> bool {
        let now = CURRENT.fetch_add(by, Relaxed) + by;
        if now > HEAP_CAP {
            CURRENT.fetch_sub(by, Relaxed);
            return false;
        }
        PEAK.fetch_max(now, Relaxed);
        true
    }
}

// SAFETY: forwards to the system allocator; only adds bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if !Self::grew(l.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded.
        let p = unsafe { System.alloc(l) };
        if p.is_null() {
            CURRENT.fetch_sub(l.size(), Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if !Self::grew(l.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded.
        let p = unsafe { System.alloc_zeroed(l) };
        if p.is_null() {
            CURRENT.fetch_sub(l.size(), Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded.
        unsafe { System.dealloc(p, l) };
        CURRENT.fetch_sub(l.size(), Relaxed);
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if new > l.size() && !Self::grew(new - l.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded.
        let q = unsafe { System.realloc(p, l, new) };
        if q.is_null() {
            if new > l.size() {
                CURRENT.fetch_sub(new - l.size(), Relaxed);
            }
        } else if new < l.size() {
            CURRENT.fetch_sub(l.size() - new, Relaxed);
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The memory measurements need the whole process to themselves.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `f`, returning its result, the peak heap above the level at the
/// start, and the time taken.
fn measure<R>(f: impl FnOnce() -> R) -> (R, usize, Duration) {
    let base = CURRENT.load(Relaxed);
    PEAK.store(base, Relaxed);
    let t = Instant::now();
    let r = f();
    let dt = t.elapsed();
    (r, PEAK.load(Relaxed).saturating_sub(base), dt)
}

/// The issue's bound: 4 × the file's size + 64 MiB.
fn bound(size: usize) -> usize {
    4 * size + (64 << 20)
}

const HANG: Duration = Duration::from_secs(5);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

/// The input being run, for the watchdog: its start (ms since the
/// watchdog's epoch, 0 when idle) and its bytes.
static STARTED_MS: AtomicU64 = AtomicU64::new(0);
static RUNNING: Mutex<(String, Vec<u8>)> = Mutex::new((String::new(), Vec::new()));

/// Aborts the process (saving the input) when one input runs for over a
/// minute, so that a hang fails CI instead of stalling it.
fn watchdog() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(|| {
        let epoch = Instant::now();
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            let started = STARTED_MS.load(Relaxed);
            if started != 0 && epoch.elapsed().as_millis() as u64 > started + 60_000 {
                let (name, bytes) = RUNNING.lock().map(|g| g.clone()).unwrap_or_default();
                let path = save_failure(&name, &bytes);
                eprintln!("fuzz: input {name} has run for over 60 s (hang); saved to {}", path.display());
                std::process::abort();
            }
        });
        epoch
    })
}

fn save_failure(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = root().join("target/fuzz-failures");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(name);
    let _ = std::fs::write(&path, bytes);
    path
}

/// What one target did.
#[derive(Default)]
struct Stats {
    inputs: usize,
    max_peak: usize,
    max_ratio: f64,
    max_ratio_size: usize,
    max_time: Duration,
    total: Duration,
    failures: Vec<String>,
}

fn run_one(target: &str, name: &str, input: &[u8], stats: &mut Stats) {
    let epoch = watchdog();
    if let Ok(mut g) = RUNNING.lock() {
        *g = (name.to_string(), input.to_vec());
    }
    STARTED_MS.store(epoch.elapsed().as_millis() as u64 + 1, Relaxed);
    let (result, peak, dt) = measure(|| std::panic::catch_unwind(|| fuzzing::run(target, input)));
    STARTED_MS.store(0, Relaxed);
    stats.inputs += 1;
    stats.total += dt;
    stats.max_time = stats.max_time.max(dt);
    stats.max_peak = stats.max_peak.max(peak);
    match result {
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let path = save_failure(name, input);
            stats.failures.push(format!("{name}: panicked: {msg} (input saved to {})", path.display()));
        }
        Ok(size) => {
            let ratio = peak as f64 / size.max(1) as f64;
            if ratio > stats.max_ratio {
                stats.max_ratio = ratio;
                stats.max_ratio_size = size;
            }
            if target == "checkpoint" && peak > bound(size) {
                let path = save_failure(name, input);
                stats.failures.push(format!(
                    "{name}: {peak} bytes of heap for a {size}-byte file, over 4 × size + 64 MiB (saved to {})",
                    path.display()
                ));
            }
        }
    }
    if dt > HANG {
        let path = save_failure(name, input);
        stats.failures.push(format!("{name}: took {dt:?} (hang > 5 s; saved to {})", path.display()));
    }
}

fn fuzz_target(target: &str) -> Stats {
    let cases = env_number("LSD_FUZZ_CASES", 10_000) as usize;
    let seed = env_number("LSD_FUZZ_SEED", 15);
    let seeds = fuzzing::seeds(&root(), target);
    assert!(!seeds.is_empty(), "no seeds for {target}");
    let mut stats = Stats::default();
    for (name, bytes) in seeds.iter().take(cases) {
        run_one(target, &format!("{target}-seed-{name}"), bytes, &mut stats);
    }
    let max_len = seeds.iter().map(|(_, b)| b.len()).max().unwrap_or(0).max(4096) * 2;
    let mut m = Mutator::new(seed, seeds.into_iter().map(|(_, b)| b).collect(), fuzzing::tokens(target), max_len);
    let mut i = 0;
    while stats.inputs < cases {
        let input = m.next_input();
        run_one(target, &format!("{target}-{seed}-{i}"), &input, &mut stats);
        i += 1;
    }
    fuzzing::cleanup();
    stats
}

/// Quiets the panic messages of inputs that panic (they are reported).
fn quiet_panics<R>(f: impl FnOnce() -> R) -> R {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = f();
    std::panic::set_hook(previous);
    r
}

#[test]
fn fuzz_targets_hold_on_generated_inputs() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut failures = Vec::new();
    println!("target       inputs  failures  max heap     max heap/size (size)   max time   total");
    for target in fuzzing::TARGETS {
        let s = quiet_panics(|| fuzz_target(target));
        println!(
            "{target:<12} {:>6}  {:>8}  {:>9} B  {:>10.1} ({:>8} B)  {:>8.1?}  {:>7.1?}",
            s.inputs,
            s.failures.len(),
            s.max_peak,
            s.max_ratio,
            s.max_ratio_size,
            s.max_time,
            s.total
        );
        failures.extend(s.failures);
    }
    assert!(failures.is_empty(), "{} failing inputs:\n{}", failures.len(), failures.join("\n"));
}

/// Issue 15, at the sizes it gives: each hostile checkpoint loads (or is
/// refused) within 5 s and 4 × its size + 64 MiB of heap.
#[test]
fn issue_15_hostile_checkpoints_stay_within_memory_and_time() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    type Build = fn() -> Vec<u8>;
    let cases: [(&str, Build, bool); 7] = [
        // About 1 MB of pickle naming one memoised 64 MiB storage 100 000 times.
        ("repeated-tensor", || hostile::repeated_tensor(100_000, 16 << 20), true),
        // 100 distinct views, each nearly all of a 16 MiB storage.
        ("distinct-views", || hostile::distinct_views(100, 4 << 20), false),
        // Storage and byteorder members that inflate to 256 MiB each.
        ("deflate-bomb", || hostile::deflate_bomb(256 << 20), true),
        // The legacy format: 100 000 names for one 4 MiB storage.
        ("legacy-repeated", || hostile::legacy_repeated(100_000, 1 << 20), true),
        // A network pickle: one 16 MiB storage stream, loaded afresh for
        // each of 1 000 parameters.
        ("stream-repeated", || hostile::stream_repeated(1000, 4 << 20), false),
        // A safetensors shape of a million ones.
        ("long-shape", || hostile::long_shape(1_000_000), false),
        // A 1 MiB key reused at each of 90 levels, 2 500 times per level
        // (last: before the fix it ran for hours, and the watchdog aborts).
        ("nested-keys", || hostile::nested_keys(1 << 20, 90, 2500), true),
    ];
    // `LSD_HOSTILE=a,b` runs only those cases (to see each one on its own).
    let only = std::env::var("LSD_HOSTILE").ok();
    let mut failures = Vec::new();
    println!("hostile file       size         heap peak    bound        time      outcome");
    for (name, build, loads) in cases {
        if only.as_deref().is_some_and(|o| !o.split(',').any(|c| c == name)) {
            continue;
        }
        let bytes = build();
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).expect("written");
        drop(bytes);
        let size = std::fs::metadata(&path).expect("written").len() as usize;
        let epoch = watchdog();
        if let Ok(mut g) = RUNNING.lock() {
            *g = (format!("hostile-{name}"), Vec::new());
        }
        STARTED_MS.store(epoch.elapsed().as_millis() as u64 + 1, Relaxed);
        let (result, peak, dt) = measure(|| lsd_core::torch::load(&path).map(|t| t.len()));
        STARTED_MS.store(0, Relaxed);
        let outcome = match &result {
            Ok(n) => format!("{n} tensors"),
            Err(e) => format!("refused: {}", e.to_string().chars().take(90).collect::<String>()),
        };
        println!("{name:<18} {size:>10} B  {peak:>10} B  {:>10} B  {dt:>8.2?}  {outcome}", bound(size));
        if peak > bound(size) {
            failures.push(format!("{name}: {peak} bytes of heap for {size} bytes"));
        }
        if dt > HANG {
            failures.push(format!("{name}: took {dt:?}"));
        }
        if loads != result.is_ok() {
            failures
                .push(format!("{name}: expected it to {}, got {outcome}", if loads { "load" } else { "be refused" }));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The named tensors of the repeated file are one tensor, built once.
#[test]
fn issue_15_a_tensor_named_many_times_is_built_once() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rep.pt");
    std::fs::write(&path, hostile::repeated_tensor(10_000, 256)).expect("written");
    let t = lsd_core::torch::load(&path).expect("loads");
    assert_eq!(t.len(), 10_000);
    let first = t["k0"].id();
    assert!(t.values().all(|x| x.id() == first), "every name shares the one tensor");
}

fn fixture(rel: &str) -> PathBuf {
    root().join("tests/fixtures").join(rel)
}

/// A safetensors file of the first `n` tensors of a fixture (by name),
/// each cut to at most 16 elements.
fn reduced_safetensors(rel: &str, n: usize) -> Vec<u8> {
    let all = candle_core::safetensors::load(fixture(rel), &candle_core::Device::Cpu).expect("a fixture");
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    let mut owned = Vec::new();
    for name in names.into_iter().take(n) {
        let t = all[name].flatten_all().expect("flat");
        let t = t.narrow(0, 0, t.dim(0).expect("1-d").min(16)).expect("narrowed");
        owned.push((name.clone(), t));
    }
    let views: Vec<(&str, &candle_core::Tensor)> = owned.iter().map(|(n, t)| (n.as_str(), t)).collect();
    safetensors::serialize(views, None).expect("serialised")
}

/// Writes `fuzz/corpus/<target>/`: seeds built from the fixtures (the real
/// pickles of the torch checkpoints, reduced safetensors files, fixture
/// configs), the recipes of the repository, valid and broken plugin
/// declarations, and the hostile files of issue 15 (also built in, see
/// `fuzzing::seeds`). Run it when the seeds should change, and commit them.
#[test]
#[ignore = "writes fuzz/corpus/; run by hand"]
fn write_seed_corpus() {
    use std::io::Read;
    let corpus = root().join("fuzz/corpus");
    let put = |target: &str, name: &str, bytes: &[u8]| {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir).expect("corpus folder");
        std::fs::write(dir.join(name), bytes).expect("written");
    };
    // Checkpoints: each zip fixture's real data.pkl, as the pickle of a
    // small zip (mode 2) and of a legacy file (mode 3).
    for (rel, name) in
        [("stylegan2/generator.pt", "stylegan2"), ("arcface/model.pth", "arcface"), ("bisenet/model.pth", "bisenet")]
    {
        let mut z = zip::ZipArchive::new(std::fs::File::open(fixture(rel)).expect("fixture")).expect("a zip");
        let pkl_name = z
            .file_names()
            .map(|n| n.expect("a UTF-8 name").into_owned())
            .find(|n| n.ends_with("/data.pkl"))
            .expect("data.pkl");
        let mut pkl = Vec::new();
        z.by_name(&pkl_name).expect("member").read_to_end(&mut pkl).expect("read");
        put("checkpoint", &format!("fixture-{name}-pickle-in-zip"), &[&[2u8][..], &pkl].concat());
    }
    // The legacy fixtures up to their storage data (all their pickles).
    for (rel, name) in
        [("stylegan2/generator.convert_weight_layout.pt", "stylegan2"), ("arcface/model_legacy.pth", "arcface")]
    {
        let bytes = std::fs::read(fixture(rel)).expect("fixture");
        put(
            "checkpoint",
            &format!("fixture-{name}-legacy-head"),
            &[&[0u8][..], &bytes[..bytes.len().min(48 << 10)]].concat(),
        );
    }
    // The head of a StyleGAN2-ADA network pickle: persistent objects and
    // the first nested storage streams.
    let pkl = std::fs::read(fixture("stylegan2-ada/network.pkl")).expect("fixture");
    put("checkpoint", "fixture-stylegan2-ada-network-head", &[&[0u8][..], &pkl[..pkl.len().min(48 << 10)]].concat());
    put(
        "checkpoint",
        "fixture-clip-safetensors-reduced",
        &[&[0u8][..], &reduced_safetensors("clip/model.safetensors", 8)].concat(),
    );
    // Small valid files in each container.
    let mut p = hostile::Pickle::default();
    p.op(b"\x80\x02}(").s("w").tensor("0", 64, 0, &[4, 4], &[1, 4], false);
    p.s("b").tensor("1", 16, 2, &[3], &[1], false).s("n").int(3).op(b"u.");
    put(
        "checkpoint",
        "valid-small-zip",
        &[&[0u8][..], &hostile::zip(&p.0, &[("0", vec![0; 256]), ("1", vec![1; 64])], false)].concat(),
    );
    put(
        "checkpoint",
        "valid-small-zip-deflated",
        &[&[0u8][..], &hostile::zip(&p.0, &[("0", vec![0; 256]), ("1", vec![1; 64])], true)].concat(),
    );
    let mut q = hostile::Pickle::default();
    q.op(b"\x80\x02}(").s("w").tensor("s", 16, 0, &[4, 4], &[4, 1], true).op(b"u.");
    put("checkpoint", "valid-small-legacy", &[&[0u8][..], &hostile::legacy(&q.0, &[("s", vec![0.5; 16])])].concat());
    put("checkpoint", "valid-small-safetensors", &[&[0u8][..], &hostile::small_safetensors()].concat());
    for (name, bytes) in hostile::checkpoint_seeds() {
        put("checkpoint", &name, &bytes);
    }

    // Recipes: every recipe of the repository, and the hostile ones.
    for dir in ["tests/recipes/valid", "tests/recipes/invalid", "examples/recipes"] {
        for e in std::fs::read_dir(root().join(dir)).expect("recipes").flatten() {
            let path = e.path();
            if path.extension().is_some_and(|x| x == "yaml") {
                let kind = dir.rsplit('/').next().expect("a name");
                put(
                    "recipe",
                    &format!("{kind}-{}", e.file_name().to_string_lossy()),
                    &std::fs::read(&path).expect("read"),
                );
            }
        }
    }
    let base = "prompt: p\nsteps: 2\nterms:\n  - plugin: clip\n";
    put("recipe", "hostile-alpha-overflow.yaml", format!("{base}alpha: {{min: -3.0e38, max: 3.0e38}}\n").as_bytes());
    put(
        "recipe",
        "hostile-alpha-min-abs.yaml",
        format!("{base}alpha: {{min: 0, max: 1, min_abs: 0.99999994}}\n").as_bytes(),
    );
    put(
        "recipe",
        "hostile-nbsp-params.yaml",
        "prompt: p\nsteps: 1\nterms:\n  - plugin: x\n    params: {a: 1,\n      b: 2,\n     \u{a0}c: 3}\n".as_bytes(),
    );
    put("recipe", "hostile-aliases.yaml", format!("{base}seeds: &a [1, 2, 3]\npreview: {{seeds: *a}}\n").as_bytes());

    // Declarations: valid, misaligned, version 1, broken sizes and strings.
    let valid = fuzzing::declaration_seed();
    put("declaration", "valid", &valid);
    let mut misaligned = vec![1u8, 0];
    misaligned.extend_from_slice(&valid[1..]);
    put("declaration", "misaligned", &misaligned);
    let mut v1 = valid.clone();
    v1[1..9].copy_from_slice(b"LSDPLUG\0");
    put("declaration", "version-1-magic", &v1);
    let mut small = valid.clone();
    small[9..17].copy_from_slice(&8u64.to_ne_bytes());
    put("declaration", "size-too-small", &small);
    put("declaration", "truncated", &valid[..40]);

    // Fixture folders: the StyleGAN2 and ArcFace configs with reduced cases.
    put(
        "fixture",
        "stylegan2",
        &fuzzing::join_fixture(
            &std::fs::read(fixture("stylegan2/config.json")).expect("config"),
            &reduced_safetensors("stylegan2/cases.safetensors", 6),
        ),
    );
    put(
        "fixture",
        "arcface",
        &fuzzing::join_fixture(
            &std::fs::read(fixture("arcface/config.json")).expect("config"),
            &reduced_safetensors("arcface/cases.safetensors", 6),
        ),
    );
}

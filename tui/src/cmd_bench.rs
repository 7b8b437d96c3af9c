//! `lsd-tui bench`: timings, not tests.
//!
//! - `bench step --size 256 [--batch 1] [--device cpu] [--plugins]`: ms per
//!   training step of the engine with all three terms (CLIP, identity,
//!   segmentation) on random-weight networks of the real widths: StyleGAN2
//!   config-f at `size`, CLIP ViT-B/32, ArcFace IR-SE50, BiSeNet-19 (weights
//!   drawn with [`SeededWeights`] under the real key names and
//!   configurations); α = 3, Adam. The terms run in-process, or with
//!   `--plugins` as the built-in plugin libraries loaded from
//!   `LSD_PLUGIN_PATH` / next to the executable (the random weights are
//!   then written to a temporary folder and handed to them as files).
//! - `bench generator --size 256 [--batch 1]`: forward, and forward +
//!   backward to W+, of the config-f generator.
//!
//! Both report the median after warm-up and the peak resident memory
//! (`VmHWM` of /proc/self/status), and on a GPU the device memory
//! (`gpu_memory`, [`lsd_core::ops::memory`]: the pool's peak in use, to
//! compare with PyTorch's `max_memory_allocated`, its peak reserved, and the
//! device's use at the end), as one JSON line at the end (also written to
//! `--json FILE`). The warm-up iterations
//! are reported beside it (`warmup_ms`, …): on a GPU the first use of each
//! kernel pays for the driver's JIT compilation, cuDNN's plan and the ops'
//! parity probes, which the timed iterations then exclude. `--precision`
//! chooses `tf32` or `fp32` products on a GPU (default: `tf32` on CUDA).
//! On a GPU `--profile`'s op families count host time only (kernels run
//! asynchronously); the engine phases of `bench step` end in a read-back,
//! so they are device time. For `step` the peaks cover the steps only (they are
//! restarted after the set-up, whose random weight draws a real run does
//! not make; the GPU's includes the networks' weights, as PyTorch's does); the set-up's own peak and the resident size after it are
//! reported beside it. With `--profile` they add a `breakdown`: milliseconds
//! per step (or pass) in each op family of [`lsd_core::ops::profile`]
//! (conv, transposed conv, FIR, element-wise, linear; counted in this
//! process, so a plugin's own ops are not among them), and for `step` the
//! engine's phases: originals, generator forward, each term (its networks,
//! and for a plugin the boundary too), generator backward, update.
//!
//! `bench step` draws fresh latents every step by default (the worst case:
//! nothing computed from the originals can be reused); `--local` trains on
//! one fixed seed, as a local direction does, so the originals and what the
//! terms compute from them are cached after the first step.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use color_eyre::eyre::{eyre, Result};
use lsd_core::demo::SeededWeights;
use lsd_core::engine::events::TrainEvent;
use lsd_core::engine::{self, EngineTerm, Setup, Weights};
use lsd_core::models::{arcface, bisenet, clip, stylegan2};
use lsd_core::ops::{memory, profile, Precision};
use lsd_core::plugin::{self, discovery, EditBatch, LossTerm, OriginalCache};
use lsd_core::recipe::Recipe;

/// `lsd-tui bench` arguments.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// Milliseconds per training step with all three loss terms.
    Step(StepArgs),
    /// Milliseconds per generator forward, and forward + backward to W+.
    Generator(GenArgs),
}

/// `bench step` arguments.
#[derive(Debug, clap::Args)]
struct StepArgs {
    /// Generator output side (config-f widths at that size).
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Latents per step.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[command(flatten)]
    device: crate::args::DeviceArg,
    /// Load the terms as plugin libraries instead of in-process.
    #[arg(long)]
    plugins: bool,
    /// Timed steps.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Side BiSeNet parses at (512 as the real network).
    #[arg(long, default_value_t = 512)]
    seg_size: usize,
    /// Train on one fixed seed (a local direction) instead of fresh latents
    /// every step.
    #[arg(long)]
    local: bool,
    /// Add the time per op family and per engine phase.
    #[arg(long)]
    profile: bool,
    /// Products on a GPU: `tf32` or `fp32` (default: `tf32` on CUDA).
    #[arg(long)]
    precision: Option<Precision>,
    /// Also write the result line to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// `bench generator` arguments.
#[derive(Debug, clap::Args)]
struct GenArgs {
    /// Generator output side (config-f widths at that size).
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Latents per pass.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[command(flatten)]
    device: crate::args::DeviceArg,
    /// Timed passes.
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Untimed passes first.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Add the time per op family.
    #[arg(long)]
    profile: bool,
    /// Products on a GPU: `tf32` or `fp32` (default: `tf32` on CUDA).
    #[arg(long)]
    precision: Option<Precision>,
    /// Also write the result line to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Runs a benchmark.
pub fn run(a: BenchArgs) -> Result<()> {
    match a.what {
        What::Step(s) => step(s),
        What::Generator(g) => generator(g),
    }
}

/// Peak resident memory in MiB (`VmHWM`), where /proc has it.
fn peak_rss_mib() -> Option<f64> {
    proc_status_mib("VmHWM:")
}

/// Resident memory now in MiB (`VmRSS`), where /proc has it.
fn rss_mib() -> Option<f64> {
    proc_status_mib("VmRSS:")
}

fn proc_status_mib(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The GPU's memory figures (null on the CPU).
fn gpu_memory(device: &Device) -> Result<serde_json::Value> {
    Ok(memory::read(device)?.map_or(serde_json::Value::Null, |m| memory_json(&m)))
}

/// `m` in MiB, to one decimal.
fn memory_json(m: &memory::DeviceMemory) -> serde_json::Value {
    let mib = |bytes: u64| round(bytes as f64 / (1u64 << 20) as f64);
    serde_json::json!({
        "peak_used_mib": mib(m.peak_used),
        "peak_reserved_mib": mib(m.peak_reserved),
        "device_used_mib": mib(m.device_used),
        "device_total_mib": mib(m.device_total),
    })
}

/// Restarts the peak (`VmHWM`) from the current resident size, so that a
/// later [`peak_rss_mib`] covers only what ran since (Linux ≥ 4.0; false
/// where that is not possible).
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => xs[n / 2],
        n => 0.5 * (xs[n / 2 - 1] + xs[n / 2]),
    }
}

fn gen_config(size: usize) -> Result<stylegan2::Config> {
    if size < 8 || !size.is_power_of_two() {
        return Err(eyre!("--size {size}: give a power of two >= 8 (256, 512, 1024)"));
    }
    Ok(stylegan2::Config::with_channel_multiplier(size, 512, 8, 2))
}

/// Random weights under the real names, He-style scaled by fan-in.
fn scaled(shapes: impl IntoIterator<Item = (String, Vec<usize>)>, seed: u64) -> Result<SeededWeights> {
    let mut w = SeededWeights::new(seed);
    for (name, shape) in shapes {
        let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
        if name.ends_with("running_var") {
            w.constant(&name, &shape, 1.0)?;
        } else if name.ends_with("running_mean") || name.ends_with("num_batches_tracked") {
            w.constant(&name, &shape, 0.0)?;
        } else if name == "logit_scale" {
            w.constant(&name, &shape, 100f32.ln())?;
        } else if shape.len() == 1 && name.ends_with("weight") {
            w.normal(&name, &shape, 1.0, 0.05)?;
        } else if shape.len() <= 1 {
            w.normal(&name, &shape, 0.0, 0.02)?;
        } else {
            w.normal(&name, &shape, 0.0, (1.0 / fan_in as f32).sqrt())?;
        }
    }
    Ok(w)
}

/// The three networks' random weights at real widths, f32 on the CPU.
struct Nets {
    clip: HashMap<String, Tensor>,
    arcface: HashMap<String, Tensor>,
    bisenet: HashMap<String, Tensor>,
}

fn nets() -> Result<Nets> {
    let clip = scaled(clip::Config::vit_b_32().parameter_shapes(), 1)?.tensors().clone();
    let arcface = arcface::demo_weights(&arcface::Config::ir_se50(), 2)?.tensors().clone();
    let all = bisenet::Config::face_parsing_19().state_dict_shapes();
    let floats = all.iter().filter(|(_, _, d)| *d != DType::I64).map(|(n, s, _)| (n.clone(), s.clone()));
    let mut seg = scaled(floats, 3)?;
    for (n, s, _) in all.iter().filter(|(_, _, d)| *d == DType::I64) {
        seg.insert(n, Tensor::zeros(s.as_slice(), DType::I64, &Device::Cpu)?);
    }
    let bisenet = seg.tensors().clone();
    Ok(Nets { clip, arcface, bisenet })
}

/// CLIP term: `1 − cos(E_img(x_edit), E_txt(prompt))`, averaged.
struct ClipTerm(clip::ClipLoss);

impl LossTerm for ClipTerm {
    fn loss(&self, b: &EditBatch) -> plugin::sdk::Result<Tensor> {
        Ok(self.0.loss(&b.x_edit, 0)?.mean_all()?)
    }
}

/// Identity term: StyleCLIP's `IDLoss(x_edit, x)`, with `R(x)` cached
/// under the sample keys as the plugin does.
struct IdTerm(arcface::id_loss::IdLoss, OriginalCache);

impl LossTerm for IdTerm {
    fn loss(&self, b: &EditBatch) -> plugin::sdk::Result<Tensor> {
        let reference = self.1.get_or_compute(b, |x| Ok(self.0.extract_feats(x)?))?;
        Ok(self.0.forward_with_reference(&b.x_edit, &reference)?)
    }
}

/// Segmentation term: the share of `Δ²` outside the (detached) hair mask
/// of `x` and `x_edit`, as the built-in plugin computes it in pixel space.
struct SegTerm {
    net: bisenet::BiSeNet,
    size: usize,
    /// The mask of each original, as the plugin caches it.
    mask_x: OriginalCache,
}

impl LossTerm for SegTerm {
    fn loss(&self, b: &EditBatch) -> plugin::sdk::Result<Tensor> {
        use candle_core::Module;
        let hair = [17usize];
        let (_, _, h, w) = b.x.dims4()?;
        let mask = |x: &Tensor| -> plugin::sdk::Result<Tensor> {
            let input = bisenet::preprocess_generator_image(&x.detach(), (self.size, self.size))?;
            let probs = bisenet::probabilities(&self.net.forward(&input)?)?;
            let m = bisenet::soft_mask(&probs, &hair)?.unsqueeze(1)?;
            Ok(lsd_core::imageops::resample(&m, lsd_core::imageops::Filter::AdaptiveAvg, (h, w))?)
        };
        let s = self.mask_x.get_or_compute(b, mask)?.maximum(&mask(&b.x_edit)?)?.detach();
        let d2 = (&b.x_edit - &b.x)?.sqr()?;
        let outside = d2.broadcast_mul(&(1.0 - s)?)?.sum_all()?;
        Ok((outside / (d2.sum_all()? + 1e-6)?)?)
    }
}

fn step(a: StepArgs) -> Result<()> {
    let device = a.device.open()?;
    let cfg = gen_config(a.size)?;
    let dir = tempfile::tempdir()?;
    let t_setup = Instant::now();
    let gen_w = stylegan2::demo::demo_weights(&cfg, 4)?;
    let gen_file = dir.path().join("generator.safetensors");
    let mut gen_tensors: Vec<(String, Tensor)> = gen_w.tensors().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    gen_tensors.push(("latent_avg".into(), Tensor::zeros(cfg.style_dim, DType::F32, &Device::Cpu)?));
    write(&gen_file, &gen_tensors)?;
    drop(gen_tensors);
    let nets = nets()?;
    let prompt = "a photo of a person with gray hair";
    let mut weights = Weights { generator: Some(gen_file), ..Weights::default() };
    let terms = if a.plugins {
        for (name, t) in [("clip", &nets.clip), ("arcface", &nets.arcface), ("bisenet", &nets.bisenet)] {
            let path = dir.path().join(format!("{name}.safetensors"));
            write(&path, &t.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>())?;
            match name {
                "clip" => weights.clip = Some(path),
                "arcface" => weights.arcface = Some(path),
                _ => weights.bisenet = Some(path),
            }
        }
        let ctx = weights.context(&device);
        let load = |name: &str, params: &str| -> Result<EngineTerm> {
            let lib = discovery::resolve(name, &[])?;
            Ok(EngineTerm {
                name: name.into(),
                weight: 1.0,
                imp: engine::TermImpl::Plugin(lib.instantiate(params, &ctx)?),
            })
        };
        vec![
            load("clip", "")?,
            load("identity", "")?,
            load("segmentation", &format!("size: {}\nclasses: [hair]\n", a.seg_size))?,
        ]
    } else {
        let vb = |t: &HashMap<String, Tensor>| candle_nn::VarBuilder::from_tensors(t.clone(), DType::F32, &device);
        let c = clip::Clip::new(&clip::Config::vit_b_32(), vb(&nets.clip))?;
        let tok = clip::ClipTokenizer::embedded()?;
        let clip_loss = clip::ClipLoss::new(c, &tok, &[prompt], clip::preprocess::Resize::Auto)?;
        let id = arcface::Backbone::new(&arcface::Config::ir_se50(), vb(&nets.arcface))?;
        let seg = bisenet::BiSeNet::new(&bisenet::Config::face_parsing_19(), vb(&nets.bisenet))?;
        vec![
            EngineTerm::in_process("clip", 1.0, ClipTerm(clip_loss)),
            EngineTerm::in_process(
                "identity",
                1.0,
                IdTerm(arcface::id_loss::IdLoss::new(id), OriginalCache::default()),
            ),
            EngineTerm::in_process(
                "segmentation",
                1.0,
                SegTerm { net: seg, size: a.seg_size, mask_x: OriginalCache::default() },
            ),
        ]
    };
    drop(nets);
    let setup_s = t_setup.elapsed().as_secs_f64();
    // The set-up draws every network's random weights at once (a real run
    // loads them from files), so its peak is not the run's: measure the
    // steps' own peak from here, after handing back what the set-up freed
    // (as the engine does once its networks are loaded).
    let setup_peak = peak_rss_mib();
    lsd_core::ops::release_free_memory();
    let setup_rss = rss_mib();
    let steps_peak_measured = reset_peak_rss();
    memory::reset_peak(&device)?;
    let total = a.warmup + a.steps;
    let precision = precision(a.precision, &device);
    let text = format!(
        "name: bench\nprompt: {prompt}\nsteps: {total}\nalpha: 3\nbatch: {b}\n{latents}\nprecision: {precision}\ncheckpoint_every: 0\npreview: {{every: 0, alphas: [3]}}\noptimizer: {{kind: adam, lr: 0.01}}\nterms:\n  - plugin: clip\n  - plugin: identity\n  - plugin: segmentation\n",
        b = a.batch,
        latents = if a.local {
            format!("seeds: [{}]", (0..a.batch).map(|s| s.to_string()).collect::<Vec<_>>().join(", "))
        } else {
            "resample: true".to_string()
        },
    );
    let mut recipe = Recipe::parse(&text, Path::new("bench.yaml")).map_err(|e| eyre!("{e}"))?;
    recipe.set_output(dir.path().join("run"));
    let setup = Setup { device: device.clone(), weights, metrics: false, ..Setup::new(terms) };
    let (tx, rx) = mpsc::channel();
    let (_ctl, crx) = mpsc::channel();
    let worker = std::thread::spawn(move || engine::run(recipe, setup, &tx, &crx));
    let mut times = Vec::new();
    let mut last: Option<Instant> = None;
    let mut phases = Phases::default();
    profile::set_enabled(a.profile);
    for e in rx.iter() {
        match e {
            TrainEvent::WarmUp { what } if what.starts_with("first step") => last = Some(Instant::now()),
            TrainEvent::Step(s) => {
                let now = Instant::now();
                if let Some(t) = last {
                    times.push((s.step, (now - t).as_secs_f64() * 1e3));
                }
                last = Some(now);
                if s.step == a.warmup {
                    // The op counters from here on cover the timed steps (the
                    // next step has barely begun when this event arrives).
                    profile::reset();
                }
                if s.step > a.warmup {
                    phases.add(&s.timings);
                }
                eprintln!("step {}/{total}: {:.0} ms", s.step, times.last().map_or(f64::NAN, |t| t.1));
            }
            TrainEvent::Failed { error } => return Err(eyre!("the benchmark run failed: {error}")),
            _ => {}
        }
    }
    worker.join().map_err(|_| eyre!("the engine thread panicked"))??;
    let mut timed: Vec<f64> = times.iter().filter(|(s, _)| *s > a.warmup).map(|t| t.1).collect();
    let warm: Vec<f64> = times.iter().filter(|(s, _)| *s <= a.warmup).map(|t| t.1).collect();
    let mut line = serde_json::json!({
        "bench": "step",
        "size": a.size,
        "batch": a.batch,
        "device": plugin::device_name(&device),
        "precision": precision.name(),
        "terms": if a.plugins { "plugins" } else { "in-process" },
        "seg_size": a.seg_size,
        "median_ms": median(&mut timed),
        "min_ms": timed.iter().cloned().fold(f64::INFINITY, f64::min),
        "warmup_ms": warm,
        "steps": timed.len(),
        "setup_s": setup_s,
        "local": a.local,
        "setup_peak_rss_mib": setup_peak,
        "rss_after_setup_mib": setup_rss,
        "peak_rss_mib": if steps_peak_measured { peak_rss_mib() } else { None },
        "gpu_memory": gpu_memory(&device)?,
        "profile": if cfg!(debug_assertions) { "dev" } else { "release" },
    });
    if a.profile {
        let per = timed.len().max(1) as f64;
        line["breakdown"] = serde_json::json!({ "phases_ms": phases.per_step(per), "ops_ms": ops_per(per) });
    }
    report(&line, a.json.as_deref())
}

/// Engine phase times summed over the timed steps, in first-seen order.
#[derive(Default)]
struct Phases(Vec<(String, f64)>);

impl Phases {
    fn add(&mut self, laps: &[(String, f64)]) {
        for (name, s) in laps {
            match self.0.iter_mut().find(|(n, _)| n == name) {
                Some((_, total)) => *total += s,
                None => self.0.push((name.clone(), *s)),
            }
        }
    }

    fn per_step(&self, steps: f64) -> serde_json::Value {
        let map = self.0.iter().map(|(n, s)| (n.clone(), serde_json::json!(round(s * 1e3 / steps))));
        serde_json::Value::Object(map.collect())
    }
}

/// The op families' milliseconds and calls per step (or pass) since the
/// last reset.
fn ops_per(per: f64) -> serde_json::Value {
    let map = profile::snapshot().into_iter().map(|(f, s, calls)| {
        (f.name().to_string(), serde_json::json!({ "ms": round(s * 1e3 / per), "calls": calls as f64 / per }))
    });
    serde_json::Value::Object(map.collect())
}

/// Mean milliseconds per pass of each op family over `passes` snapshots.
fn mean_ops(passes: &[Vec<(profile::Family, f64, u64)>]) -> serde_json::Value {
    let n = passes.len().max(1) as f64;
    let map = profile::Family::ALL.iter().map(|f| {
        let s: f64 = passes.iter().flatten().filter(|(g, _, _)| g == f).map(|(_, s, _)| s).sum();
        (f.name().to_string(), serde_json::json!(round(s * 1e3 / n)))
    });
    serde_json::Value::Object(map.collect())
}

/// Prints the result line, and writes it to `json` when given.
fn report(line: &serde_json::Value, json: Option<&Path>) -> Result<()> {
    println!("{line}");
    if let Some(path) = json {
        lsd_core::durable::write(path, format!("{line}\n").as_bytes())?;
    }
    Ok(())
}

/// The precision of a run on `device`: the flag, or the device's default.
fn precision(flag: Option<Precision>, device: &Device) -> Precision {
    flag.unwrap_or_else(|| Precision::default_for(device))
}

/// `x` to one decimal.
fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn write(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    lsd_core::outputs::write_tensors(path, &refs, &Default::default())?;
    Ok(())
}

fn generator(a: GenArgs) -> Result<()> {
    let device = a.device.open()?;
    let precision = precision(a.precision, &device);
    lsd_core::ops::set_precision(precision);
    let cfg = gen_config(a.size)?;
    let gen = stylegan2::Generator::new(&cfg, stylegan2::demo::demo_weights(&cfg, 4)?.into_var_builder(&device))?;
    let (l, d) = (cfg.n_latent(), cfg.style_dim);
    let mut s = SeededWeights::new(5);
    s.normal("w", &[a.batch, l, d], 0.0, 1.0)?;
    let w = s.tensors()["w"].to_device(&device)?;
    let sync = |t: &Tensor| -> Result<()> {
        // Reading one value waits for the device.
        t.flatten_all()?.narrow(0, 0, 1)?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        Ok(())
    };
    let mut fwd = Vec::new();
    let mut fwd_bwd = Vec::new();
    let mut warm = Vec::new();
    let (mut ops_fwd, mut ops_bwd) = (Vec::new(), Vec::new());
    for i in 0..a.warmup + a.iters {
        let timed = i >= a.warmup;
        profile::set_enabled(a.profile && timed);
        profile::reset();
        let t = Instant::now();
        let img = gen.synthesis(&w, stylegan2::Noise::Stored, false)?.image;
        sync(&img)?;
        let f = t.elapsed().as_secs_f64() * 1e3;
        if timed {
            ops_fwd.push(profile::snapshot());
        }
        profile::reset();
        let var = Var::from_tensor(&w)?;
        let t = Instant::now();
        let img = gen.synthesis(var.as_tensor(), stylegan2::Noise::Stored, false)?.image;
        let grads = img.sqr()?.mean_all()?.backward()?;
        let g = grads.get(var.as_tensor()).ok_or_else(|| eyre!("no gradient reached W+"))?;
        sync(g)?;
        let fb = t.elapsed().as_secs_f64() * 1e3;
        if timed {
            ops_bwd.push(profile::snapshot());
        }
        eprintln!("pass {}: forward {f:.0} ms, forward+backward {fb:.0} ms", i + 1);
        if timed {
            fwd.push(f);
            fwd_bwd.push(fb);
        } else {
            warm.push(serde_json::json!({ "forward_ms": round(f), "forward_backward_ms": round(fb) }));
        }
    }
    let mut line = serde_json::json!({
        "bench": "generator",
        "size": a.size,
        "batch": a.batch,
        "device": plugin::device_name(&device),
        "forward_ms": median(&mut fwd),
        "forward_backward_ms": median(&mut fwd_bwd),
        "warmup": warm,
        "precision": precision.name(),
        "iters": a.iters,
        "peak_rss_mib": peak_rss_mib(),
        "gpu_memory": gpu_memory(&device)?,
        "profile": if cfg!(debug_assertions) { "dev" } else { "release" },
    });
    if a.profile {
        line["breakdown"] = serde_json::json!({
            "forward_ops_ms": mean_ops(&ops_fwd),
            "forward_backward_ops_ms": mean_ops(&ops_bwd),
        });
    }
    report(&line, a.json.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_memory_figures_are_reported_in_mib() {
        let m = memory::DeviceMemory {
            peak_used: 3 << 30,
            peak_reserved: (3 << 30) + (512 << 10),
            device_used: 5 << 20,
            device_total: 80 << 30,
        };
        let j = memory_json(&m);
        assert_eq!(j["peak_used_mib"], 3072.0);
        assert_eq!(j["peak_reserved_mib"], 3072.5);
        assert_eq!(j["device_used_mib"], 5.0);
        assert_eq!(j["device_total_mib"], 81920.0);
    }
}

//! The `segmentation` plugin loaded as a library: against itself
//! in-process, against finite differences of the same loss with the masks
//! frozen (the masks are detached, so that is its exact gradient), and
//! against a direct computation with lsd-core's demo BiSeNet.

use std::path::PathBuf;

use candle_core::{DType, Device, Module, Tensor};
use lsd_core::demo::{SeededWeights, DEMO_MODEL_SEED};
use lsd_core::imageops::{resample, Filter};
use lsd_core::models::bisenet;
use lsd_core::plugin::{EditBatch, InitContext, Plugin, PluginLibrary};
use lsd_core::Result;
use lsd_plugin_segmentation::SegmentationTerm;
use lsd_plugin_testing::{
    batch_to, compare_outputs, finite_differences, loaded_vs_in_process, this_plugin, tiny_batch, GradReport,
};

fn library() -> PathBuf {
    this_plugin(env!("CARGO_MANIFEST_DIR"), env!("CARGO_PKG_NAME"))
}

/// Loaded (f32) vs in-process (f32, same network), and vs f64 finite
/// differences of the in-process term with its masks frozen at this batch.
fn check(params: &str, batch: &EditBatch) -> Result<(GradReport, f64)> {
    let ctx = InitContext::default();
    let b32 = batch_to(batch, DType::F32, &Device::Cpu)?;
    let needs = PluginLibrary::open(library())?.instantiate(params, &ctx)?.needs();
    assert_eq!(needs.features, params.contains("features"));
    let both = loaded_vs_in_process::<SegmentationTerm>(&library(), params, &b32)?;
    let (out, mut rows) = (both.loaded, both.report.rows);
    let term = SegmentationTerm::from_yaml(params, &ctx)?;
    let frozen =
        SegmentationTerm::with_masks(term.params().clone(), term.parse_mask(&b32.x)?, term.parse_mask(&b32.x_edit)?)?;
    let numeric = finite_differences(&frozen, &batch_to(batch, DType::F64, &Device::Cpu)?, 1e-6)?;
    compare_outputs(&out, &numeric, &b32, "fin. diff. (frozen)", 1e-4, 1e-6, &mut rows)?;
    Ok((GradReport { rows }, out.value_f64()?))
}

#[test]
fn loaded_gradients_match_in_process_and_finite_differences() -> Result<()> {
    // The demo BiSeNet's parse means nothing, but it does give these
    // classes mixed masks on these images (it mostly answers r_ear, neck_l
    // and r_brow), so no case degenerates to an all-0 or all-1 mask.
    let cases = [
        ("size: 32\nclasses: [r_brow, neck_l]", false),
        ("size: 32\nclasses: [r_ear]\nmask: hard\ncombine: intersection", false),
        ("size: 32\nspace: features\ncombine: average\nclasses: [r_brow, neck_l]", true),
    ];
    for (params, features) in cases {
        let (report, value) = check(params, &tiny_batch(7, features)?)?;
        println!("{params:?}: value {value}\n{}", report.table());
        assert!(report.passed(), "{params:?}\n{}", report.table());
        assert!(value > 0.01 && value < 0.99, "{params:?}: degenerate mask, value {value}");
    }
    Ok(())
}

/// Two `side × side` samples from `seed`.
fn image_batch(seed: u64, side: usize) -> Result<EditBatch> {
    let mut s = SeededWeights::new(seed);
    s.normal("x", &[2, 3, side, side], 0.0, 0.5)?;
    s.normal("x_edit", &[2, 3, side, side], 0.0, 0.5)?;
    s.normal("w", &[2, 1, 2], 0.0, 1.0)?;
    s.normal("u", &[1, 1, 2], 0.0, 1.0)?;
    let t = |n: &str| s.tensors()[n].clone();
    Ok(EditBatch::new(t("x"), t("x_edit"), t("w"), t("u"), vec![1.0, -0.5], "")?)
}

#[test]
fn value_equals_a_direct_computation_with_the_demo_bisenet() -> Result<()> {
    let dev = Device::Cpu;
    let batch = image_batch(3, 16)?;
    let net = bisenet::demo(DEMO_MODEL_SEED, &dev)?;
    // Soft mask of r_brow + neck_l at 32², union (max), area-averaged to 16².
    let parse = |xs: &Tensor| -> Result<Tensor> {
        let logits = net.forward(&bisenet::preprocess_generator_image(xs, (32, 32))?)?;
        let p = bisenet::probabilities(&logits)?;
        Ok((p.narrow(1, 3, 1)? + p.narrow(1, 15, 1)?)?)
    };
    let s = parse(&batch.x)?.maximum(&parse(&batch.x_edit)?)?;
    let s = resample(&s, Filter::AdaptiveAvg, (16, 16))?;
    let d2 = (&batch.x - &batch.x_edit)?.sqr()?;
    let outside = d2.broadcast_mul(&s.affine(-1.0, 1.0)?)?.sum((1, 2, 3))?;
    let total = (d2.sum((1, 2, 3))? + 1e-6)?;
    let direct = (outside / total)?.mean_all()?.to_scalar::<f32>()? as f64;

    let (report, loaded) = check("classes: [r_brow, neck_l]\nsize: 32", &batch)?;
    println!("{}", report.table());
    assert!(report.passed(), "{}", report.table());
    assert!((loaded - direct).abs() < 1e-6, "loaded {loaded} direct {direct}");
    assert!(loaded > 0.01 && loaded < 0.99, "{loaded}");
    Ok(())
}

#[test]
fn hard_masks_are_binary_and_soft_masks_probabilities() -> Result<()> {
    let batch = image_batch(5, 16)?;
    let ctx = InitContext::default();
    let hard = SegmentationTerm::from_yaml("size: 32\nmask: hard\nclasses: [r_ear]", &ctx)?
        .parse_mask(&batch.x)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    assert!(hard.iter().all(|&v| v == 0.0 || v == 1.0));
    assert!(hard.contains(&0.0) && hard.contains(&1.0));
    let soft = SegmentationTerm::from_yaml("size: 32\nclasses: [r_ear]", &ctx)?
        .parse_mask(&batch.x)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    assert!(soft.iter().all(|&v| (0.0..=1.0).contains(&v)));
    assert!(soft.iter().any(|&v| v > 0.0 && v < 1.0));
    Ok(())
}

#[test]
fn bad_params_name_the_field_and_position() -> Result<()> {
    let lib = PluginLibrary::open(library())?;
    assert_eq!(lib.info().name, "segmentation");
    let names: Vec<_> = lib.info().params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "classes",
            "combine",
            "mask",
            "space",
            "size",
            "epsilon",
            "change",
            "loss",
            "region",
            "layers",
            "layer_weights",
            "mask_resize"
        ]
    );
    let ctx = InitContext::default();
    let err = |params: &str| lib.instantiate(params, &ctx).map(|_| ()).unwrap_err().to_string();

    let msg = err("size: 32\nclasses: [l_eye, l_eyes]");
    println!("{msg}");
    assert!(msg.contains("`classes`") && msg.contains("'l_eyes'"), "{msg}");
    assert!(msg.contains("line 2 column"), "{msg}");
    assert!(msg.contains("l_eye, r_eye") && msg.contains("hair"), "{msg}");

    let msg = err("classes: [hair]\ncombin: union");
    assert!(msg.contains("combin") && msg.contains("line 2 column 1"), "{msg}");
    assert!(msg.contains("`classes`, `combine`, `mask`, `space`, `size`, `epsilon`, `change`"), "{msg}");
    let msg = err("combine: both");
    assert!(msg.contains("both") && msg.contains("line 1"), "{msg}");
    let msg = err("classes: []");
    assert!(msg.contains("`classes` is empty"), "{msg}");
    let msg = err("size: 8");
    assert!(msg.contains("`size` is 8"), "{msg}");
    let msg = err("epsilon: 0");
    assert!(msg.contains("`epsilon` is 0"), "{msg}");
    Ok(())
}

/// What `lsd-tui plugins check PATH` runs: default parameters, demo
/// weights, a 16×16 smoke batch. Prints the listing the README shows.
#[test]
fn passes_the_plugin_check() -> Result<()> {
    let report = lsd_core::plugin::discovery::check(&library())?;
    let info = &report.listed.info;
    println!("{} {} — {}", info.name, info.version, info.description);
    for p in &info.params {
        println!("    {:<8} {:<30} default {:<7} {}", p.name, p.ty, p.default, p.help);
    }
    println!("built with: {}", report.listed.fingerprint);
    println!("smoke test: loss {:.6}, gradients for {}", report.smoke_value, report.smoke_gradients.join(", "));
    assert!(report.smoke_value.is_finite());
    assert!(report.smoke_gradients.iter().any(|g| g == "x_edit"));
    Ok(())
}

/// BiSeNet's mask of `x` is computed once per original key, and only then:
/// the same keys over other originals give the cached mask, new keys a new
/// one.
#[test]
fn caches_the_originals_mask_under_the_sample_keys() -> Result<()> {
    let params = "size: 32\nclasses: [r_brow, neck_l]\ncombine: intersection";
    let term = SegmentationTerm::from_yaml(params, &InitContext::default())?;
    let batch = batch_to(&tiny_batch(7, false)?, DType::F32, &Device::Cpu)?;
    let values = |b: &EditBatch| -> Result<Vec<f32>> { Ok(term.mask(b)?.flatten_all()?.to_vec1()?) };
    let plain = values(&batch)?;
    let keyed = values(&EditBatch { keys: Some(vec![1, 2]), ..batch.clone() })?;
    assert_eq!(plain, keyed, "a filled cache changes nothing");
    let mut noise = SeededWeights::new(99);
    noise.normal("x", batch.x.dims(), 0.0, 0.5)?;
    let other = EditBatch { x: noise.tensors()["x"].clone(), keys: Some(vec![1, 2]), ..batch.clone() };
    assert_eq!(values(&other)?, keyed, "cached keys: the originals are not parsed again");
    let fresh = values(&EditBatch { keys: Some(vec![3, 4]), ..other })?;
    assert_ne!(fresh, keyed, "new keys: the new originals are parsed");
    Ok(())
}

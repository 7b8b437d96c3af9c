//! The `identity` plugin loaded as a library, against itself in-process,
//! finite differences, and `IdLoss` computed directly with lsd-core's demo
//! ArcFace.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use lsd_core::demo::{SeededWeights, DEMO_MODEL_SEED};
use lsd_core::models::arcface::{self, IdLoss};
use lsd_core::plugin::{EditBatch, InitContext, LossTerm, Plugin, PluginLibrary};
use lsd_core::Result;
use lsd_plugin_identity::IdentityTerm;
use lsd_plugin_testing::{check_plugin_gradients, loaded_vs_in_process, this_plugin, tiny_batch, GradCheck};

fn library() -> PathBuf {
    this_plugin(env!("CARGO_MANIFEST_DIR"), env!("CARGO_PKG_NAME"))
}

/// The network has f32 weights, so finite differences are taken in f32.
/// ArcFace is piecewise linear (PReLU, ReLU in the SE blocks): a central
/// difference across a kink is off by up to a few per cent however small
/// the step, and below `1e-4` f32 rounding dominates. At `3e-4` the worst
/// element of the 4×4 case is 1.5% of the largest gradient (the same
/// element moves from −0.0468 to −0.0510 between steps `1e-3` and `1e-4`
/// while the analytic value is −0.0500), hence the 2% tolerance.
fn f32_check() -> GradCheck {
    GradCheck { fd_dtype: DType::F32, fd_eps: 3e-4, fd_rtol: 2e-2, fd_atol: 1e-4, ..GradCheck::default() }
}

/// Two `side × side` samples with one direction, from `seed`; `x_edit` is
/// `x` plus a perturbation of size `change`.
fn image_batch(seed: u64, side: usize, change: f32) -> Result<EditBatch> {
    let mut s = SeededWeights::new(seed);
    s.normal("x", &[2, 3, side, side], 0.0, 0.5)?;
    s.normal("d", &[2, 3, side, side], 0.0, change)?;
    s.normal("w", &[2, 4, 8], 0.0, 1.0)?;
    s.normal("u", &[1, 4, 8], 0.0, 1.0)?;
    let t = |n: &str| s.tensors()[n].clone();
    let x_edit = (t("x") + t("d"))?;
    Ok(EditBatch::new(t("x"), x_edit, t("w"), t("u"), vec![1.0, -0.5], "a person with gray hair")?)
}

/// One 4×4 sample: every loss evaluation runs ArcFace twice, and finite
/// differences evaluate it twice per input element, so this is kept tiny.
fn fd_batch() -> Result<EditBatch> {
    let b = tiny_batch(7, false)?;
    let first = |t: &candle_core::Tensor| t.narrow(0, 0, 1);
    let w = b.w.narrow(0, 0, 1)?.narrow(1, 0, 1)?;
    let u = b.u.narrow(0, 0, 1)?.narrow(1, 0, 1)?;
    Ok(EditBatch::new(first(&b.x)?, first(&b.x_edit)?, w, u, vec![0.7], b.prompt.clone())?)
}

#[test]
fn loaded_gradients_match_in_process_and_finite_differences() -> Result<()> {
    let term = IdentityTerm::from_yaml("", &InitContext::default())?;
    let report = check_plugin_gradients(&library(), "", &term, &fd_batch()?, &f32_check())?;
    println!("{}", report.table());
    assert!(report.passed(), "{}", report.table());
    Ok(())
}

#[test]
fn loaded_matches_in_process_and_id_loss_on_32px_images() -> Result<()> {
    let batch = image_batch(3, 32, 0.3)?;
    let both = loaded_vs_in_process::<IdentityTerm>(&library(), "", &batch)?;
    let (loaded, report) = (both.loaded, both.report);
    println!("{}", report.table());
    assert!(report.passed(), "{}", report.table());
    // Only the edited image gets a gradient: x is detached, w and u unused.
    assert!(loaded.grad_x_edit.is_some() && loaded.grad_w.is_none() && loaded.grad_u.is_none());

    // The value is StyleCLIP's IdLoss with lsd-core's demo ArcFace.
    let id = IdLoss::new(arcface::demo(DEMO_MODEL_SEED, &Device::Cpu)?);
    let direct = id.forward(&batch.x_edit, &batch.x)?.to_scalar::<f32>()? as f64;
    let value = loaded.value_f64()?;
    assert!((value - direct).abs() < 1e-6, "loaded {value} direct {direct}");
    assert!(value > 1e-4, "the perturbation changes the embedding: {value}");
    Ok(())
}

#[test]
fn an_unchanged_image_has_zero_loss_and_gradient() -> Result<()> {
    let mut batch = image_batch(5, 32, 0.3)?;
    batch.x_edit = batch.x.clone();
    let term = IdentityTerm::from_yaml("", &InitContext::default())?;
    let value = term.loss(&batch)?.to_scalar::<f32>()?;
    assert!(value.abs() < 1e-6, "{value}");
    // Larger changes move the embedding further.
    let small = term.loss(&image_batch(5, 32, 0.05)?)?.to_scalar::<f32>()?;
    let large = term.loss(&image_batch(5, 32, 0.5)?)?.to_scalar::<f32>()?;
    assert!(0.0 < small && small < large, "{small} {large}");
    Ok(())
}

#[test]
fn bad_params_name_the_field_and_position() -> Result<()> {
    let lib = PluginLibrary::open(library())?;
    assert_eq!(lib.info().name, "identity");
    assert_eq!(lib.info().params.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["crop"]);
    let ctx = InitContext::default();
    assert!(lib.instantiate("", &ctx).is_ok() && lib.instantiate("{}", &ctx).is_ok());
    let msg = lib.instantiate("size: 112", &ctx).unwrap_err().to_string();
    assert!(msg.contains("unknown field `size`, expected `crop`"), "{msg}");
    let msg = lib.instantiate("crop: 112", &ctx).unwrap_err().to_string();
    assert!(msg.contains("styleclip") && msg.contains("none"), "{msg}");
    let weights = [("arcface".to_string(), Some(PathBuf::from("/no/such/model_ir_se50.pth")))];
    let msg = lib
        .instantiate("", &InitContext { weights: weights.into(), ..InitContext::default() })
        .unwrap_err()
        .to_string();
    assert!(msg.contains("/no/such/model_ir_se50.pth"), "{msg}");
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

/// Checks, through the loaded library at `path`, that the term (which reads
/// the originals only through `R(x)`) caches `R(x)` under
/// [`EditBatch::keys`] and keys it correctly:
/// 1. with keys, the output equals the keyless output (the cache changes
///    nothing when it is filled);
/// 2. the same keys with the originals replaced by noise give the same
///    output again: the originals were not looked at, the cache answered
///    (fails for a term that recomputes every call);
/// 3. new keys with those noise originals give a different output: the
///    cache is keyed, not stuck on the first batch.
fn check_original_cache(path: &Path, params: &str, batch: &EditBatch) -> Result<()> {
    use lsd_core::plugin::TermOutput;
    let lib = PluginLibrary::open(path)?;
    let ctx = InitContext::default();
    let term = lib.instantiate(params, &ctx)?;
    let n = batch.len() as u64;
    let plain = term.evaluate(&EditBatch { keys: None, ..batch.clone() })?;
    let keyed = term.evaluate(&EditBatch { keys: Some((100..100 + n).collect()), ..batch.clone() })?;
    let same = |a: &TermOutput, b: &TermOutput| -> Result<bool> {
        let ga = a.grad_x_edit.as_ref().map(|g| g.flatten_all()?.to_vec1::<f32>()).transpose()?;
        let gb = b.grad_x_edit.as_ref().map(|g| g.flatten_all()?.to_vec1::<f32>()).transpose()?;
        Ok(a.value_f64()? == b.value_f64()? && ga == gb)
    };
    if !same(&plain, &keyed)? {
        return Err(lsd_core::Error::Config(format!(
            "keyed output {} differs from the keyless {}",
            keyed.value_f64()?,
            plain.value_f64()?
        )));
    }
    let mut noise = SeededWeights::new(99);
    noise.normal("x", batch.x.dims(), 0.0, 0.5)?;
    let other_x = noise.tensors()["x"].to_dtype(batch.x.dtype())?;
    let cached = EditBatch { x: other_x, keys: Some((100..100 + n).collect()), ..batch.clone() };
    let from_cache = term.evaluate(&cached)?;
    if !same(&from_cache, &keyed)? {
        return Err(lsd_core::Error::Config(format!(
            "with cached keys the output changed ({} vs {}): the originals were recomputed",
            from_cache.value_f64()?,
            keyed.value_f64()?
        )));
    }
    let fresh = term.evaluate(&EditBatch { keys: Some((200..200 + n).collect()), ..cached })?;
    if fresh.value_f64()? == keyed.value_f64()? {
        return Err(lsd_core::Error::Config(format!(
            "new keys with other originals gave the cached value {}: the cache ignores its keys",
            fresh.value_f64()?
        )));
    }
    Ok(())
}

/// `R(x)` is computed once per original key, and only then.
#[test]
fn caches_the_originals_embedding_under_the_sample_keys() -> Result<()> {
    check_original_cache(&library(), "", &image_batch(3, 32, 0.3)?)
}

/// `crop: none` (CLIPLSD): the backbone sees the whole image resized
/// bilinearly to 112², not StyleCLIP's face crop; the loaded library and
/// the in-process term agree, and the value is computed by hand.
#[test]
fn crop_none_resizes_the_whole_image() -> Result<()> {
    let batch = image_batch(3, 32, 0.3)?;
    let lib = PluginLibrary::open(library())?;
    let loaded = lib.instantiate("crop: none", &InitContext::default())?.evaluate(&batch)?;
    let backbone = arcface::demo(DEMO_MODEL_SEED, &Device::Cpu)?;
    let size = backbone.config().input_size;
    let feats = |x: &candle_core::Tensor| -> Result<candle_core::Tensor> {
        Ok(backbone.forward_outputs(&arcface::whole_image_preprocess(x, size)?)?.embedding)
    };
    let by_hand =
        arcface::id_loss_from_embeddings(&feats(&batch.x)?, &feats(&batch.x_edit)?)?.to_scalar::<f32>()? as f64;
    let value = loaded.value_f64()?;
    assert!((value - by_hand).abs() < 1e-6, "loaded {value} by hand {by_hand}");
    let cropped = lib.instantiate("", &InitContext::default())?.evaluate(&batch)?;
    assert!((cropped.value_f64()? - value).abs() > 1e-6, "the crop changes the value");
    Ok(())
}

//! The `clip` plugin loaded as a library, against itself in-process, finite
//! differences, and `ClipLoss` computed directly with lsd-core's demo CLIP.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use lsd_core::demo::{SeededWeights, DEMO_MODEL_SEED};
use lsd_core::models::clip::{self, ClipLoss, Resize};
use lsd_core::plugin::{EditBatch, InitContext, LossTerm, Plugin, PluginLibrary};
use lsd_core::{Error, Result};
use lsd_plugin_clip::{load_image, ClipTerm};
use lsd_plugin_testing::{check_plugin_gradients, this_plugin, tiny_batch, GradCheck, GradReport};

fn library() -> PathBuf {
    this_plugin(env!("CARGO_MANIFEST_DIR"), env!("CARGO_PKG_NAME"))
}

/// The networks have f32 weights, so finite differences are taken in f32
/// with a step large enough for f32 rounding.
fn f32_check() -> GradCheck {
    GradCheck { fd_dtype: DType::F32, fd_eps: 1e-2, fd_rtol: 5e-3, fd_atol: 1e-5, ..GradCheck::default() }
}

/// Two `side × side` samples with one direction, from `seed`.
fn image_batch(seed: u64, side: usize) -> Result<EditBatch> {
    let mut s = SeededWeights::new(seed);
    s.normal("x", &[2, 3, side, side], 0.0, 0.5)?;
    s.normal("x_edit", &[2, 3, side, side], 0.0, 0.5)?;
    s.normal("w", &[2, 4, 8], 0.0, 1.0)?;
    s.normal("u", &[1, 4, 8], 0.0, 1.0)?;
    let t = |n: &str| s.tensors()[n].clone();
    Ok(EditBatch::new(t("x"), t("x_edit"), t("w"), t("u"), vec![1.0, -0.5], "a person with gray hair")?)
}

fn loaded_vs_in_process(params: &str, batch: &EditBatch) -> Result<(GradReport, f64)> {
    let both = lsd_plugin_testing::loaded_vs_in_process::<ClipTerm>(&library(), params, batch)?;
    Ok((both.report, both.loaded.value_f64()?))
}

#[test]
fn loaded_gradients_match_in_process_and_finite_differences() -> Result<()> {
    let path = library();
    for params in ["", "resize: bilinear\nprompt: a face with a beard"] {
        let term = ClipTerm::from_yaml(params, &InitContext::default())?;
        let report = check_plugin_gradients(&path, params, &term, &tiny_batch(7, false)?, &f32_check())?;
        println!("params {params:?}\n{}", report.table());
        assert!(report.passed(), "params {params:?}\n{}", report.table());
    }
    Ok(())
}

#[test]
fn loaded_matches_in_process_on_32px_images() -> Result<()> {
    // 32² takes StyleCLIP's resize path (`resize: auto`); 24² the bilinear one.
    for side in [32, 24] {
        let (report, _) = loaded_vs_in_process("", &image_batch(3, side)?)?;
        println!("{side}²\n{}", report.table());
        assert!(report.passed(), "{side}²\n{}", report.table());
    }
    Ok(())
}

#[test]
fn value_equals_clip_loss_computed_directly() -> Result<()> {
    let dev = Device::Cpu;
    let batch = image_batch(5, 32)?;
    let (clip, tokenizer) = clip::demo(DEMO_MODEL_SEED, &dev)?;
    let direct = ClipLoss::new(clip.clone(), &tokenizer, &[&batch.prompt], Resize::Auto)?
        .loss(&batch.x_edit, 0)?
        .mean_all()?
        .to_scalar::<f32>()? as f64;
    let (_, loaded) = loaded_vs_in_process("", &batch)?;
    assert!((loaded - direct).abs() < 1e-6, "loaded {loaded} direct {direct}");

    // A `prompt:` override replaces the batch's prompt.
    let other = "a smiling child";
    let direct = ClipLoss::new(clip.clone(), &tokenizer, &[other], Resize::Bilinear)?
        .loss(&batch.x_edit, 0)?
        .mean_all()?
        .to_scalar::<f32>()? as f64;
    let (_, loaded) = loaded_vs_in_process(&format!("prompt: {other}\nresize: bilinear"), &batch)?;
    assert!((loaded - direct).abs() < 1e-6, "loaded {loaded} direct {direct}");
    Ok(())
}

#[test]
fn a_new_batch_prompt_is_embedded_again() -> Result<()> {
    let term = ClipTerm::from_yaml("", &InitContext::default())?;
    let mut batch = image_batch(9, 32)?;
    let first = term.loss(&batch)?.to_scalar::<f32>()?;
    batch.prompt = "a bald man".into();
    let second = term.loss(&batch)?.to_scalar::<f32>()?;
    batch.prompt = "a person with gray hair".into();
    let third = term.loss(&batch)?.to_scalar::<f32>()?;
    assert!((first - second).abs() > 1e-6, "{first} {second}");
    assert_eq!(first, third);
    batch.prompt = String::new();
    let msg = term.loss(&batch).unwrap_err().to_string();
    assert!(msg.contains("no prompt"), "{msg}");
    Ok(())
}

/// Writes sample 0 of `images` (`[N, 3, H, W]`, `[-1, 1]`) as an 8-bit PNG
/// and returns the image the plugin reads back.
fn write_png(images: &Tensor, path: &std::path::Path) -> Result<Tensor> {
    let (_, _, h, w) = images.dims4()?;
    let hwc = ((images.get(0)?.permute((1, 2, 0))? + 1.0)? * 127.5)?
        .round()?
        .clamp(0f32, 255f32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let bytes: Vec<u8> = hwc.into_iter().map(|v| v as u8).collect();
    let img = image::RgbImage::from_raw(w as u32, h as u32, bytes).expect("buffer fits");
    img.save(path).map_err(|e| Error::Config(format!("writing {}: {e}", path.display())))?;
    load_image(path, &Device::Cpu)
}

#[test]
fn image_target_is_one_minus_cos_of_image_embeddings() -> Result<()> {
    let dev = Device::Cpu;
    let dir = tempfile::tempdir().map_err(|e| Error::io("creating", "tempdir", e))?;
    let path = dir.path().join("ref.png");
    let batch = image_batch(4, 32)?;
    let reference = write_png(&batch.x, &path)?;
    let params = format!("image: {}", path.display());

    // Direct: 1 − cos(E_img(x_edit), E_img(ref)) with the demo CLIP.
    let (clip, _) = clip::demo(DEMO_MODEL_SEED, &dev)?;
    let embed = |xs: &Tensor| -> Result<Tensor> {
        clip::normalize(&clip.image_features(&clip::preprocess(xs, Resize::Auto, 224)?)?)
    };
    let cos = (embed(&batch.x_edit)?.broadcast_mul(&embed(&reference)?)?).sum(1)?;
    let direct = cos.affine(-1.0, 1.0)?.mean_all()?.to_scalar::<f32>()? as f64;
    let (report, loaded) = loaded_vs_in_process(&params, &batch)?;
    assert!(report.passed(), "{}", report.table());
    assert!((loaded - direct).abs() < 1e-6, "loaded {loaded} direct {direct}");

    // The reference image itself is at distance 0.
    let mut same = batch.clone();
    same.x_edit = Tensor::cat(&[&reference, &reference], 0)?;
    let term = ClipTerm::from_yaml(&params, &InitContext::default())?;
    let zero = term.loss(&same)?.to_scalar::<f32>()?;
    assert!(zero.abs() < 1e-6, "{zero}");
    Ok(())
}

#[test]
fn bad_params_name_the_field_and_position() -> Result<()> {
    let lib = PluginLibrary::open(library())?;
    assert_eq!(lib.info().name, "clip");
    let names: Vec<_> = lib.info().params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["prompt", "image", "resize", "normalize", "clamp"]);
    let ctx = InitContext::default();
    let msg = lib.instantiate("resize: auto\npromt: a cat", &ctx).unwrap_err().to_string();
    assert!(msg.contains("promt") && msg.contains("line 2 column 1"), "{msg}");
    assert!(msg.contains("`prompt`, `image`, `resize`, `normalize`, `clamp`"), "{msg}");
    let msg = lib.instantiate("resize: sideways", &ctx).unwrap_err().to_string();
    assert!(msg.contains("sideways") && msg.contains("line 1"), "{msg}");
    let msg = lib.instantiate("prompt: a\nimage: b.png", &ctx).unwrap_err().to_string();
    assert!(msg.contains("not both"), "{msg}");
    let msg = lib.instantiate("image: /no/such/ref.png", &ctx).unwrap_err().to_string();
    assert!(msg.contains("`image: /no/such/ref.png`"), "{msg}");
    let msg = lib
        .instantiate(
            "",
            &InitContext {
                weights: [("clip".to_string(), Some(PathBuf::from("/no/such/clip")))].into(),
                ..InitContext::default()
            },
        )
        .unwrap_err()
        .to_string();
    assert!(msg.contains("/no/such/clip"), "{msg}");
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

/// `normalize: false` and `clamp: true` (StyleCLIP's and CLIPLSD's input):
/// the term equals `1 − cos` of the clamped, resized `[-1, 1]` image fed to
/// the vision tower by hand, and differs from the normalised default.
#[test]
fn raw_clamped_input_matches_the_reference_pipeline() -> Result<()> {
    let dev = Device::Cpu;
    let mut batch = image_batch(7, 32)?;
    // Push some pixels past [-1, 1] so that the clamp matters.
    batch.x_edit = (&batch.x_edit * 1.8)?;
    let (clip, tokenizer) = clip::demo(DEMO_MODEL_SEED, &dev)?;
    let text = clip::normalize(
        &clip.text_features(&tokenizer.encode_batch(&[&batch.prompt], clip::Padding::Longest, &dev)?.input_ids)?,
    )?;
    let pixels = clip::preprocess::resize(&batch.x_edit.clamp(-1f32, 1f32)?, Resize::StyleClip, clip.image_size())?;
    let image = clip::normalize(&clip.image_features(&pixels)?)?;
    let by_hand = 1.0 - clip::cosine_similarity(&image, &text)?.mean_all()?.to_scalar::<f32>()? as f64;
    let (_, loaded) = loaded_vs_in_process("normalize: false\nclamp: true\nresize: styleclip", &batch)?;
    assert!((loaded - by_hand).abs() < 1e-6, "loaded {loaded} by hand {by_hand}");
    let (_, unclamped) = loaded_vs_in_process("normalize: false\nresize: styleclip", &batch)?;
    let (_, default) = loaded_vs_in_process("resize: styleclip", &batch)?;
    assert!((unclamped - loaded).abs() > 1e-6 && (default - loaded).abs() > 1e-6, "{loaded} {unclamped} {default}");
    Ok(())
}

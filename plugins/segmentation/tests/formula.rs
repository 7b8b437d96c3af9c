//! The loss formula on hand-made masks (`SegmentationTerm::with_masks`),
//! with answers worked out by hand, and its gradient against finite
//! differences in f64.

use candle_core::{DType, Device, Tensor};
use lsd_core::plugin::{differentiate, parse_params, EditBatch, FeatureMaps, LossTerm};
use lsd_core::Result;
use lsd_plugin_segmentation::{Params, SegmentationTerm};
use lsd_plugin_testing::{compare_outputs, finite_differences, GradReport};

const DEV: Device = Device::Cpu;

/// One sample of 1×2 pixels: `x = 0`, `x_edit` = `a` on pixel A and `b` on
/// pixel B in all three channels, so `ΣΔ²` is `3a²` on A and `3b²` on B.
fn two_pixels(a: f64, b: f64) -> Result<EditBatch> {
    let x = Tensor::zeros((1, 3, 1, 2), DType::F64, &DEV)?;
    let x_edit = Tensor::new(&[a, b], &DEV)?.reshape((1, 1, 1, 2))?.repeat((1, 3, 1, 1))?;
    let w = Tensor::zeros((1, 1, 1), DType::F64, &DEV)?;
    Ok(EditBatch::new(x, x_edit, w.clone(), w, vec![1.0], "")?)
}

/// A `[1, 1, 1, 2]` mask.
fn mask(a: f64, b: f64) -> Result<Tensor> {
    Ok(Tensor::new(&[a, b], &DEV)?.reshape((1, 1, 1, 2))?)
}

fn term(params: &str, mx: Tensor, me: Tensor) -> Result<SegmentationTerm> {
    SegmentationTerm::with_masks(parse_params::<Params>("segmentation", params)?, mx, me)
}

fn value(t: &SegmentationTerm, batch: &EditBatch) -> Result<f64> {
    Ok(t.loss(batch)?.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// ε = 1e-6 against ΣΔ² = 15 shifts the answers by at most 1e-7.
fn assert_close(got: f64, want: f64) {
    assert!((got - want).abs() < 1e-6, "got {got}, want {want}");
}

#[test]
fn change_inside_is_free_and_change_outside_costs_one() -> Result<()> {
    // Change on A only; A in the region, B not.
    let batch = two_pixels(1.0, 0.0)?;
    assert_close(value(&term("", mask(1., 0.)?, mask(1., 0.)?)?, &batch)?, 0.0);
    // Change on B only, outside the region.
    let batch = two_pixels(0.0, 2.0)?;
    assert_close(value(&term("", mask(1., 0.)?, mask(1., 0.)?)?, &batch)?, 1.0);
    Ok(())
}

#[test]
fn soft_mask_weights_the_change() -> Result<()> {
    // ΣΔ²: A 3, B 12; s = (0.5, 0.25): (0.5·3 + 0.75·12) / 15 = 0.7.
    let batch = two_pixels(1.0, 2.0)?;
    assert_close(value(&term("", mask(0.5, 0.25)?, mask(0.5, 0.25)?)?, &batch)?, 0.7);
    Ok(())
}

#[test]
fn union_intersection_and_average_differ_as_designed() -> Result<()> {
    // s_x = (1, 0.5), s_edit = (0, 1); ΣΔ²: A 3, B 12, total 15.
    //   union        s = (1, 1)      -> 0
    //   intersection s = (0, 0.5)    -> (3 + 0.5·12) / 15 = 0.6
    //   average      s = (0.5, 0.75) -> (0.5·3 + 0.25·12) / 15 = 0.3
    let batch = two_pixels(1.0, 2.0)?;
    for (combine, want) in [("union", 0.0), ("intersection", 0.6), ("average", 0.3)] {
        let t = term(&format!("combine: {combine}"), mask(1., 0.5)?, mask(0., 1.)?)?;
        assert_close(value(&t, &batch)?, want);
    }
    Ok(())
}

#[test]
fn the_batch_mean_is_taken_per_sample() -> Result<()> {
    // Sample 0: all change inside (0); sample 1: s = (0.5, 0.25) (0.7).
    let one = two_pixels(1.0, 2.0)?;
    let x = Tensor::cat(&[&one.x, &one.x], 0)?;
    let x_edit = Tensor::cat(&[&two_pixels(1.0, 0.0)?.x_edit, &one.x_edit], 0)?;
    let w = Tensor::zeros((2, 1, 1), DType::F64, &DEV)?;
    let batch = EditBatch::new(x, x_edit, w, Tensor::zeros((1, 1, 1), DType::F64, &DEV)?, vec![1.0, 1.0], "")?;
    let m = Tensor::cat(&[&mask(1., 0.)?, &mask(0.5, 0.25)?], 0)?;
    assert_close(value(&term("", m.clone(), m)?, &batch)?, 0.35);
    Ok(())
}

#[test]
fn no_change_is_zero_with_a_finite_gradient() -> Result<()> {
    let batch = two_pixels(0.0, 0.0)?;
    let t = term("", mask(0.3, 0.1)?, mask(0.3, 0.1)?)?;
    let out = differentiate(&t, &batch)?;
    assert_eq!(out.value_f64()?, 0.0);
    let g = out.grad_x_edit.expect("x_edit has a gradient");
    assert_eq!(g.abs()?.sum_all()?.to_scalar::<f64>()?, 0.0);
    Ok(())
}

/// A 2×2 image with region = top row, and two feature maps: layer 0
/// (`[1, 1, 2, 2]`) changes only on the bottom row, so its share outside is
/// 1; layer 1 (`[1, 2, 1, 1]`) sees the mask area-averaged to 0.5, so its
/// share outside is 0.5. Mean over layers: 0.75. The images themselves
/// change only inside (pixel loss 0), which `space: features` ignores.
fn feature_case() -> Result<(EditBatch, Tensor)> {
    let x = Tensor::zeros((1, 3, 2, 2), DType::F64, &DEV)?;
    let x_edit = Tensor::new(&[1.0f64, 1.0, 0.0, 0.0], &DEV)?.reshape((1, 1, 2, 2))?.repeat((1, 3, 1, 1))?;
    let w = Tensor::zeros((1, 1, 1), DType::F64, &DEV)?;
    let mut batch = EditBatch::new(x, x_edit, w.clone(), w, vec![1.0], "")?;
    let f0 = Tensor::zeros((1, 1, 2, 2), DType::F64, &DEV)?;
    let f0_edit = Tensor::new(&[0.0f64, 0.0, 0.3, -0.7], &DEV)?.reshape((1, 1, 2, 2))?;
    let f1 = Tensor::new(&[0.2f64, 0.4], &DEV)?.reshape((1, 2, 1, 1))?;
    let f1_edit = Tensor::new(&[0.9f64, -0.1], &DEV)?.reshape((1, 2, 1, 1))?;
    batch.features = Some(FeatureMaps { x: vec![f0, f1], x_edit: vec![f0_edit, f1_edit] });
    batch.validate()?;
    let m = Tensor::new(&[1.0f64, 1.0, 0.0, 0.0], &DEV)?.reshape((1, 1, 2, 2))?;
    Ok((batch, m))
}

#[test]
fn feature_space_averages_the_layers() -> Result<()> {
    let (batch, m) = feature_case()?;
    // ΣΔ² of layer 1 is only 0.58, so ε is made negligible here.
    let t = term("space: features\nepsilon: 1e-12", m.clone(), m.clone())?;
    assert!(t.needs().features);
    assert_close(value(&t, &batch)?, 0.75);
    assert_close(value(&term("space: pixels", m.clone(), m.clone())?, &batch)?, 0.0);
    let mut bare = batch.clone();
    bare.features = None;
    let msg = t.loss(&bare).unwrap_err().to_string();
    assert!(msg.contains("feature maps"), "{msg}");
    Ok(())
}

#[test]
fn gradients_match_finite_differences() -> Result<()> {
    // Pixels: a 2×3 image with a soft mask; features: the case above.
    let x = Tensor::new(&[0.1f64, -0.2, 0.3, 0.0, 0.5, -0.4], &DEV)?.reshape((1, 1, 2, 3))?.repeat((1, 3, 1, 1))?;
    let x_edit = (x.affine(0.7, 0.05)?
        + Tensor::new(&[0.3f64, 0.1, -0.2], &DEV)?.reshape((1, 3, 1, 1))?.broadcast_as((1, 3, 2, 3))?)?;
    let w = Tensor::zeros((1, 1, 1), DType::F64, &DEV)?;
    let pixels = EditBatch::new(x, x_edit, w.clone(), w, vec![1.0], "")?;
    let m = Tensor::new(&[0.9f64, 0.6, 0.2, 0.0, 0.4, 1.0], &DEV)?.reshape((1, 1, 2, 3))?;
    let m2 = m.affine(0.5, 0.1)?;
    // Features: maps at 2×2 (mask as is) and 4×4 (mask enlarged bilinearly).
    let (mut features, _) = feature_case()?;
    let wave =
        |n: usize, phase: f64| -> Result<Vec<f64>> { Ok((0..n).map(|i| (0.9 * i as f64 + phase).sin()).collect()) };
    let map = |shape: (usize, usize, usize, usize), phase: f64| -> Result<Tensor> {
        Ok(Tensor::from_vec(wave(shape.1 * shape.2 * shape.3, phase)?, shape, &DEV)?)
    };
    features.features = Some(FeatureMaps {
        x: vec![map((1, 2, 2, 2), 0.0)?, map((1, 1, 4, 4), 1.0)?],
        x_edit: vec![map((1, 2, 2, 2), 0.4)?, map((1, 1, 4, 4), 1.7)?],
    });
    let fm = Tensor::new(&[0.9f64, 0.3, 0.1, 0.6], &DEV)?.reshape((1, 1, 2, 2))?;
    let cases = [
        ("combine: average", pixels, m, m2),
        ("space: features\ncombine: intersection", features, fm.clone(), fm.affine(-0.5, 0.7)?),
    ];
    for (params, batch, mx, me) in cases {
        let t = term(params, mx, me)?;
        let mut rows = Vec::new();
        let analytic = differentiate(&t, &batch)?;
        let numeric = finite_differences(&t, &batch, 1e-6)?;
        compare_outputs(&analytic, &numeric, &batch, "finite differences", 1e-6, 1e-8, &mut rows)?;
        let report = GradReport { rows };
        println!("{params}\n{}", report.table());
        assert!(report.passed(), "{params}\n{}", report.table());
    }
    Ok(())
}

/// LELSD's options on the two-pixel case (ΣΔ²: A 3, B 12; Σ|Δ|: A 3, B 6).
#[test]
fn change_measures_regions_and_the_negative_score_by_hand() -> Result<()> {
    let batch = two_pixels(1.0, 2.0)?;
    let t = |p: &str| term(p, mask(1., 0.)?, mask(1., 0.)?);
    // In-region share 3/15 = 0.2: LELSD's loss is −0.2.
    assert_close(value(&t("loss: negative")?, &batch)?, -0.2);
    // L1: 3/9 inside → 1 − 1/3.
    assert_close(value(&t("change: l1")?, &batch)?, 2.0 / 3.0);
    // Background: the indicator is 1 − s, so B (12/15) counts as inside.
    assert_close(value(&t("region: background")?, &batch)?, 0.2);
    assert_close(value(&t("region: background\nloss: negative")?, &batch)?, -0.8);
    // Cosine over the channels: A unchanged (1 − cos = 0), B flipped (2).
    let x = Tensor::new(&[1.0f64, 0.5], &DEV)?.reshape((1, 1, 1, 2))?.repeat((1, 3, 1, 1))?;
    let x_edit = Tensor::new(&[1.0f64, -0.5], &DEV)?.reshape((1, 1, 1, 2))?.repeat((1, 3, 1, 1))?;
    let w = Tensor::zeros((1, 1, 1), DType::F64, &DEV)?;
    let flip = EditBatch::new(x, x_edit, w.clone(), w, vec![1.0], "")?;
    assert_close(value(&t("change: cosine")?, &flip)?, 1.0);
    assert_close(value(&term("change: cosine", mask(0., 1.)?, mask(0., 1.)?)?, &flip)?, 0.0);
    Ok(())
}

/// `layers` and `layer_weights` on the feature case (layer 0: in-region
/// share 0; layer 1: 0.5), weights normalised to sum 1 as in LELSD.
#[test]
fn layer_subsets_and_weights() -> Result<()> {
    let (batch, m) = feature_case()?;
    let t = |p: &str| term(&format!("space: features\nepsilon: 1e-12\n{p}"), m.clone(), m.clone());
    assert_close(value(&t("loss: negative")?, &batch)?, -0.25);
    assert_close(value(&t("layers: [1]\nloss: negative")?, &batch)?, -0.5);
    assert_close(value(&t("layer_weights: [1, 3]\nloss: negative")?, &batch)?, -0.375);
    assert_close(value(&t("layers: [0, 1]\nlayer_weights: [2, 0]")?, &batch)?, 1.0);
    let msg = t("layers: [2]")?.loss(&batch).unwrap_err().to_string();
    assert!(msg.contains("feature map 2"), "{msg}");
    let msg = term("layers: [0]", m.clone(), m.clone()).unwrap_err().to_string();
    assert!(msg.contains("space: features"), "{msg}");
    let msg = t("layers: [0, 1]\nlayer_weights: [1]").unwrap_err().to_string();
    assert!(msg.contains("one per layer"), "{msg}");
    Ok(())
}

/// LELSD's cascade: from a 16² parse with values c² along the columns, the
/// 8² mask is the bilinear (align_corners) resize of the parse and the 4²
/// mask that of the 8² one — [0, 26.238, 101.238, 225] by hand — not the
/// direct resize of the parse ([0, 25, 100, 225]).
#[test]
fn cascaded_mask_resize_by_hand() -> Result<()> {
    use lsd_plugin_segmentation::cascade_masks;
    let row: Vec<f64> = (0..16).map(|c| (c * c) as f64).collect();
    let parse = Tensor::new(row.as_slice(), &DEV)?.reshape((1, 1, 1, 16))?.repeat((1, 1, 16, 1))?;
    // Any order in, the same order out; 16 is the parse itself.
    let masks = cascade_masks(&parse, &[4, 16, 8, 4])?;
    let first_row = |t: &Tensor| -> Result<Vec<f64>> { Ok(t.narrow(2, 0, 1)?.flatten_all()?.to_vec1::<f64>()?) };
    assert_eq!(first_row(&masks[1])?, row);
    let v8 = [0.0, 4.714286, 18.571429, 41.571429, 73.714286, 115.0, 165.428571, 225.0];
    for (g, w) in first_row(&masks[2])?.iter().zip(v8) {
        assert!((g - w).abs() < 1e-5, "{g} {w}");
    }
    let four = first_row(&masks[0])?;
    for (g, w) in four.iter().zip([0.0, 26.238095, 101.238095, 225.0]) {
        assert!((g - w).abs() < 1e-5, "{four:?}");
    }
    assert_eq!(first_row(&masks[3])?, four);
    Ok(())
}

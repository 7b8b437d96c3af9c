//! Times the op layer's CPU kernels against the stock-Candle compositions
//! they replace, at layer shapes of the networks lsd-tui runs (B = 1, f32).
//!
//! ```text
//! cargo run --release -p lsd-core --example ops_bench
//! ```
//!
//! For each layer it prints the median wall time of a forward pass and of a
//! forward plus backward pass (the input gradient of `sum(y · r)`), for the
//! fast op and for its `forward_stock`. Run it on a quiet machine. An
//! argument keeps only the layers whose name contains it (`… -- ArcFace`).

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use lsd_core::ops::{Conv2d, ConvTranspose2d, Linear};
use lsd_core::Result;

const REPS: usize = 3;

/// Median seconds of `REPS` runs of `f`, after one warm-up run.
fn median(mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut times = Vec::with_capacity(REPS);
    for _ in 0..REPS {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[REPS / 2])
}

/// Forward and forward+backward times of `f` on `x`.
fn time(x: &Tensor, f: &dyn Fn(&Tensor) -> Result<Tensor>) -> Result<(f64, f64)> {
    let fwd = median(|| {
        f(x)?;
        Ok(())
    })?;
    let y = f(x)?;
    let r = y.randn_like(0.0, 1.0)?;
    let var = Var::from_tensor(x)?;
    let both = median(|| {
        let grads = (f(var.as_tensor())? * &r)?.sum_all()?.backward()?;
        assert!(grads.get(var.as_tensor()).is_some());
        Ok(())
    })?;
    Ok((fwd, both))
}

fn report(
    name: &str,
    x: &Tensor,
    fast: &dyn Fn(&Tensor) -> Result<Tensor>,
    stock: &dyn Fn(&Tensor) -> Result<Tensor>,
) -> Result<()> {
    if std::env::args().nth(1).is_some_and(|f| !name.contains(&f)) {
        return Ok(());
    }
    let (ff, fb) = time(x, fast)?;
    let (sf, sb) = time(x, stock)?;
    println!(
        "{name:<44} {:>9.1} {:>9.1} {:>6.1}x {:>9.1} {:>9.1} {:>6.1}x",
        ff * 1e3,
        sf * 1e3,
        sf / ff,
        fb * 1e3,
        sb * 1e3,
        sb / fb
    );
    Ok(())
}

fn conv(name: &str, (ci, co, k, s, p): (usize, usize, usize, usize, usize), (h, w): (usize, usize)) -> Result<()> {
    let dev = Device::Cpu;
    let weight = (Tensor::randn(0f32, 1.0, (co, ci, k, k), &dev)? / ((ci * k * k) as f64).sqrt())?;
    let c = Conv2d::new(weight, Some(Tensor::zeros(co, DType::F32, &dev)?), s, p)?;
    let x = Tensor::randn(0f32, 1.0, (1, ci, h, w), &dev)?;
    report(name, &x, &|x| c.forward(x), &|x| c.forward_stock(x))
}

fn conv_t(name: &str, (ci, co, k, s): (usize, usize, usize, usize), (h, w): (usize, usize)) -> Result<()> {
    let dev = Device::Cpu;
    let weight = (Tensor::randn(0f32, 1.0, (ci, co, k, k), &dev)? / ((ci * k * k) as f64).sqrt())?;
    let c = ConvTranspose2d::new(weight, s)?;
    let x = Tensor::randn(0f32, 1.0, (1, ci, h, w), &dev)?;
    report(name, &x, &|x| c.forward(x), &|x| c.forward_stock(x))
}

fn linear(name: &str, rows: usize, (d_in, d_out): (usize, usize)) -> Result<()> {
    let dev = Device::Cpu;
    let weight = (Tensor::randn(0f32, 1.0, (d_out, d_in), &dev)? / (d_in as f64).sqrt())?;
    let l = Linear::new(weight, Some(Tensor::zeros(d_out, DType::F32, &dev)?))?;
    let x = Tensor::randn(0f32, 1.0, (1, rows, d_in), &dev)?;
    report(name, &x, &|x| l.forward(x), &|x| l.forward_stock(x))
}

fn main() -> Result<()> {
    println!("threads: {}", candle_core::utils::get_num_threads());
    println!(
        "{:<44} {:>9} {:>9} {:>7} {:>9} {:>9} {:>7}",
        "layer (B = 1, f32; ms, median of 3)", "fwd op", "fwd stock", "", "f+b op", "f+b stock", ""
    );
    conv("G conv 512->512 3x3 @ 64x64", (512, 512, 3, 1, 1), (64, 64))?;
    conv("G conv 128->128 3x3 @ 256x256", (128, 128, 3, 1, 1), (256, 256))?;
    conv("G toRGB 512->3 1x1 @ 64x64", (512, 3, 1, 1, 0), (64, 64))?;
    conv_t("G up 512->512 3x3/2 @ 32x32 -> 65x65", (512, 512, 3, 2), (32, 32))?;
    conv_t("G up 256->128 3x3/2 @ 128x128 -> 257x257", (256, 128, 3, 2), (128, 128))?;
    conv("ArcFace 64->64 3x3 @ 112x112", (64, 64, 3, 1, 1), (112, 112))?;
    conv("ArcFace 64->128 3x3/2 @ 56x56", (64, 128, 3, 2, 1), (56, 56))?;
    conv("ArcFace 256->256 3x3 @ 14x14", (256, 256, 3, 1, 1), (14, 14))?;
    conv("BiSeNet stem 3->64 7x7/2 @ 512x512", (3, 64, 7, 2, 3), (512, 512))?;
    conv("BiSeNet 64->64 3x3 @ 128x128", (64, 64, 3, 1, 1), (128, 128))?;
    conv("BiSeNet 256->512 3x3/2 @ 32x32", (256, 512, 3, 2, 1), (32, 32))?;
    conv("CLIP patch 3->768 32x32/32 @ 224x224", (3, 768, 32, 32, 0), (224, 224))?;
    linear("CLIP fc1 50x768 -> 3072", 50, (768, 3072))?;
    linear("CLIP fc2 50x3072 -> 768", 50, (3072, 768))?;
    linear("CLIP q_proj 77x512 -> 512", 77, (512, 512))?;
    Ok(())
}

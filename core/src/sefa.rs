//! SeFa: closed-form edit directions from the generator's own weights
//! (Shen & Zhou, "Closed-Form Factorization of Latent Semantics in GANs",
//! CVPR 2021; reference: genforce/sefa `utils.py` `factorize_weight`).
//!
//! Each W+ layer `i` enters the synthesis network through the affine
//! `modulation` layer of the convolution that consumes it: a matrix `A_i`
//! `[C_i, D]` whose rows map `w` to the channel styles. SeFa stacks the
//! rows of the chosen layers, scales each row to unit length (so wide
//! layers and large weights do not dominate), and takes the eigenvectors of
//! `Σ aᵀa` `[D, D]` with the largest eigenvalues: the unit directions in W
//! that move the styles most. No training, no images.
//!
//! In rosinality's layout W+ layer 0 is read by `conv1`, layer `i` in
//! `1..L-1` by `convs.{i-1}`, and the last layer only by the last ToRGB
//! (the layer→module map of the reference, which uses the ToRGB layer only
//! for the last index).
//!
//! The eigen-decomposition is a cyclic Jacobi iteration on the symmetric
//! matrix, in f64 ([`symmetric_eigen`]): a few lines, exact to rounding,
//! and fast enough for D = 512 (a few sweeps of O(D³); see the test
//! `style_dim_512_in_seconds`).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use crate::{Error, Result};

/// The modulation weight key (without a `g_ema.` prefix) that W+ layer `i`
/// of `n_latent` feeds.
pub fn modulation_key(i: usize, n_latent: usize) -> String {
    if i == 0 {
        "conv1.conv.modulation.weight".into()
    } else if i + 1 == n_latent {
        format!("to_rgbs.{}.conv.modulation.weight", (n_latent - 3) / 2)
    } else {
        format!("convs.{}.conv.modulation.weight", i - 1)
    }
}

/// The result: eigenvalues (largest first) and unit eigenvectors `[D]`.
#[derive(Debug, Clone)]
pub struct Factorization {
    /// The W+ layers whose weights were factorised.
    pub layers: Vec<usize>,
    /// Eigenvalues of `Σ aᵀa`, largest first.
    pub values: Vec<f64>,
    /// The matching unit eigenvectors, each of length D.
    pub vectors: Vec<Vec<f64>>,
}

/// Factorises the modulation weights of `layers` of a rosinality state dict
/// (`prefix` is `g_ema` or empty) with W+ of `n_latent` layers.
pub fn factorize(
    tensors: &HashMap<String, Tensor>,
    prefix: &str,
    n_latent: usize,
    layers: &[usize],
) -> Result<Factorization> {
    if layers.is_empty() {
        return Err(Error::Config("SeFa needs at least one layer".into()));
    }
    let mut rows: Vec<Vec<f64>> = Vec::new();
    for &i in layers {
        let key = modulation_key(i, n_latent);
        let full = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        let w = tensors.get(&full).ok_or_else(|| Error::MissingTensor { name: full.clone(), hint: String::new() })?;
        let w = w.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
        if w.rank() != 2 {
            return Err(Error::BadShape {
                name: full,
                expected: "[channels, style_dim]".into(),
                got: w.dims().to_vec(),
            });
        }
        rows.extend(w.to_vec2::<f64>()?);
    }
    let (values, vectors) = factorize_rows(&rows)?;
    Ok(Factorization { layers: layers.to_vec(), values, vectors })
}

/// SeFa on explicit rows: unit-normalise each row `a`, form `Σ aᵀa` and
/// return its eigenpairs, largest eigenvalue first.
pub fn factorize_rows(rows: &[Vec<f64>]) -> Result<(Vec<f64>, Vec<Vec<f64>>)> {
    let d = rows.first().map_or(0, Vec::len);
    if d == 0 || rows.iter().any(|r| r.len() != d) {
        return Err(Error::Config("SeFa: the style weights are empty or ragged".into()));
    }
    let mut unit = Vec::with_capacity(rows.len() * d);
    for r in rows {
        let norm = r.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm > 0.0 {
            unit.extend(r.iter().map(|v| v / norm));
        }
    }
    // Σ aᵀa = AᵀA, one matrix product (gemm).
    let n_rows = unit.len() / d;
    let a = Tensor::from_vec(unit, (n_rows, d), &Device::Cpu)?;
    let m: Vec<f64> = a.t()?.matmul(&a)?.flatten_all()?.to_vec1()?;
    let (values, vectors) = symmetric_eigen(&m, d);
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    Ok((order.iter().map(|&i| values[i]).collect(), order.iter().map(|&i| vectors[i].clone()).collect()))
}

/// Eigenvalues and unit eigenvectors (as rows) of the symmetric `n × n`
/// row-major matrix `a`, by cyclic Jacobi rotations (Golub & Van Loan,
/// "Matrix Computations", §8.5), until the off-diagonal mass is at
/// rounding level.
pub fn symmetric_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<Vec<f64>>) {
    let mut a = a.to_vec();
    // The eigenvectors as rows (the transpose of the accumulated rotations),
    // so that every update below runs along contiguous rows.
    let mut v = vec![0f64; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let total: f64 = a.iter().map(|x| x * x).sum::<f64>().max(f64::MIN_POSITIVE);
    for _sweep in 0..100 {
        let off: f64 = (0..n).map(|i| (0..n).filter(|&j| j != i).map(|j| a[i * n + j].powi(2)).sum::<f64>()).sum();
        if off <= total * 1e-30 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() <= f64::MIN_POSITIVE {
                    continue;
                }
                // The rotation J in the (p, q) plane with (JᵀAJ)_pq = 0.
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = if theta == 0.0 { 1.0 } else { theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt()) };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                // Rows p and q of the symmetric A, mirrored into its columns.
                for k in 0..n {
                    if k == p || k == q {
                        continue;
                    }
                    let (akp, akq) = (a[p * n + k], a[q * n + k]);
                    let (np, nq) = (c * akp - s * akq, s * akp + c * akq);
                    a[p * n + k] = np;
                    a[q * n + k] = nq;
                    a[k * n + p] = np;
                    a[k * n + q] = nq;
                }
                a[p * n + p] -= t * apq;
                a[q * n + q] += t * apq;
                a[p * n + q] = 0.0;
                a[q * n + p] = 0.0;
                // q > p: row p lies before row q.
                let (lo, hi) = v.split_at_mut(q * n);
                let (vp, vq) = (&mut lo[p * n..p * n + n], &mut hi[..n]);
                for k in 0..n {
                    let (x, y) = (vp[k], vq[k]);
                    vp[k] = c * x - s * y;
                    vq[k] = s * x + c * y;
                }
            }
        }
    }
    let values = (0..n).map(|i| a[i * n + i]).collect();
    let vectors = (0..n).map(|i| v[i * n..(i + 1) * n].to_vec()).collect();
    (values, vectors)
}

impl Factorization {
    /// The `top` directions as W+ tensors `[top, L, D]`: eigenvector `k` on
    /// every factorised layer (unit length per layer, as `norm: layer`
    /// directions are), zero elsewhere.
    pub fn directions(&self, top: usize, n_latent: usize, device: &Device) -> Result<Tensor> {
        let d = self.vectors.first().map_or(0, Vec::len);
        let top = top.min(self.vectors.len());
        let mut data = vec![0f32; top * n_latent * d];
        for k in 0..top {
            for &l in &self.layers {
                for (j, &x) in self.vectors[k].iter().enumerate() {
                    data[(k * n_latent + l) * d + j] = x as f32;
                }
            }
        }
        Ok(Tensor::from_vec(data, (top, n_latent, d), device)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::DEMO_MODEL_SEED;
    use crate::models::stylegan2::demo::{demo_config, demo_weights};

    /// Rows along the axes: three along e0, two along e2 (of different
    /// lengths: normalisation makes them count the same), one along e1, so
    /// `Σ aᵀa` is diag(3, 1, 2, 0) and the answer is known by hand.
    #[test]
    fn hand_checked_axes() {
        let rows = vec![
            vec![2.0, 0.0, 0.0, 0.0],
            vec![-0.5, 0.0, 0.0, 0.0],
            vec![7.0, 0.0, 0.0, 0.0],
            vec![0.0, 0.0, 3.0, 0.0],
            vec![0.0, 0.0, 0.1, 0.0],
            vec![0.0, 4.0, 0.0, 0.0],
        ];
        let (values, vectors) = factorize_rows(&rows).unwrap();
        let expected = [3.0, 2.0, 1.0, 0.0];
        for (v, e) in values.iter().zip(expected) {
            assert!((v - e).abs() < 1e-12, "{values:?}");
        }
        for (vec, axis) in vectors.iter().zip([0, 2, 1, 3]) {
            assert!((vec[axis].abs() - 1.0).abs() < 1e-12, "{vectors:?}");
        }
    }

    /// The rotated problem: the rows of a random orthogonal basis `Q`,
    /// repeated 4, 3, 2, 1 times, give `Qᵀ diag(4, 3, 2, 1) Q`, whose
    /// eigenvectors are `Q`'s rows.
    #[test]
    fn known_answer_in_a_rotated_basis() {
        // Gram–Schmidt on fixed vectors.
        let raw = [[1.0, 2.0, 0.5, -1.0], [0.3, -1.0, 2.0, 0.2], [2.0, 0.1, -0.7, 1.5], [-0.4, 0.9, 0.3, 2.2]];
        let mut q: Vec<Vec<f64>> = Vec::new();
        for r in raw {
            let mut v = r.to_vec();
            for b in &q {
                let dot: f64 = v.iter().zip(b).map(|(x, y)| x * y).sum();
                v.iter_mut().zip(b).for_each(|(x, y)| *x -= dot * y);
            }
            let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            q.push(v.iter().map(|x| x / n).collect());
        }
        let mut rows = Vec::new();
        for (k, times) in [4, 3, 2, 1].into_iter().enumerate() {
            for t in 0..times {
                rows.push(q[k].iter().map(|x| x * (1.0 + t as f64)).collect());
            }
        }
        let (values, vectors) = factorize_rows(&rows).unwrap();
        for k in 0..4 {
            assert!((values[k] - (4 - k) as f64).abs() < 1e-10, "{values:?}");
            let dot: f64 = vectors[k].iter().zip(&q[k]).map(|(a, b)| a * b).sum();
            assert!((dot.abs() - 1.0).abs() < 1e-10, "direction {k}: |<v, q>| = {}", dot.abs());
        }
    }

    /// `M v` for the normalised-row matrix `M = Σ aᵀa`, computed from the
    /// rows directly (without forming `M`): a second route.
    fn apply_m(rows: &[Vec<f64>], v: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; v.len()];
        for r in rows {
            let n2: f64 = r.iter().map(|x| x * x).sum();
            let dot: f64 = r.iter().zip(v).map(|(a, b)| a * b).sum();
            out.iter_mut().zip(r).for_each(|(o, a)| *o += a * dot / n2);
        }
        out
    }

    /// On the demo generator's real modulation weights: the Jacobi result
    /// satisfies `M v = λ v`, is orthonormal, and its top three eigenpairs
    /// agree with power iteration with deflation (another route).
    #[test]
    fn demo_generator_agrees_with_power_iteration() {
        let cfg = demo_config();
        let w = demo_weights(&cfg, DEMO_MODEL_SEED).unwrap();
        let n_latent = cfg.n_latent();
        let layers: Vec<usize> = (0..n_latent).collect();
        let f = factorize(w.tensors(), "", n_latent, &layers).unwrap();
        let mut rows = Vec::new();
        for &i in &layers {
            rows.extend(
                w.tensors()[&modulation_key(i, n_latent)].to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap(),
            );
        }
        let d = cfg.style_dim;
        assert_eq!(f.vectors.len(), d);
        for (k, v) in f.vectors.iter().enumerate() {
            let mv = apply_m(&rows, v);
            let err = mv.iter().zip(v).map(|(a, b)| (a - f.values[k] * b).abs()).fold(0.0, f64::max);
            assert!(err < 1e-9, "M v != λ v for {k}: {err}");
            for (j, u) in f.vectors.iter().enumerate() {
                let dot: f64 = v.iter().zip(u).map(|(a, b)| a * b).sum();
                assert!((dot - (j == k) as u8 as f64).abs() < 1e-9, "<v{k}, v{j}> = {dot}");
            }
        }
        assert!(f.values.windows(2).all(|p| p[0] >= p[1]));
        // The trace is the number of rows (each normalised row adds 1).
        assert!((f.values.iter().sum::<f64>() - rows.len() as f64).abs() < 1e-8);
        // Power iteration, deflating by its own earlier eigenpairs.
        let mut found: Vec<(f64, Vec<f64>)> = Vec::new();
        for k in 0..3 {
            let mut v: Vec<f64> = (0..d).map(|i| ((i * 7 + k * 3) % 11) as f64 - 5.0).collect();
            let mut lambda = 0.0;
            for _ in 0..5000 {
                let mut mv = apply_m(&rows, &v);
                for (l, u) in &found {
                    let dot: f64 = u.iter().zip(&v).map(|(a, b)| a * b).sum();
                    mv.iter_mut().zip(u).for_each(|(m, x)| *m -= l * dot * x);
                }
                let n = mv.iter().map(|x| x * x).sum::<f64>().sqrt();
                lambda = mv.iter().zip(&v).map(|(a, b)| a * b).sum::<f64>();
                v = mv.iter().map(|x| x / n).collect();
            }
            assert!(
                (lambda - f.values[k]).abs() < 1e-6 * f.values[0],
                "λ{k}: power {lambda} vs Jacobi {}",
                f.values[k]
            );
            let dot: f64 = v.iter().zip(&f.vectors[k]).map(|(a, b)| a * b).sum();
            assert!(dot.abs() > 1.0 - 1e-6, "v{k}: |<power, Jacobi>| = {}", dot.abs());
            found.push((lambda, v));
        }
        let u = f.directions(3, n_latent, &Device::Cpu).unwrap();
        assert_eq!(u.dims(), &[3, n_latent, d]);
    }

    #[test]
    fn layer_to_module_map() {
        assert_eq!(modulation_key(0, 18), "conv1.conv.modulation.weight");
        assert_eq!(modulation_key(1, 18), "convs.0.conv.modulation.weight");
        assert_eq!(modulation_key(16, 18), "convs.15.conv.modulation.weight");
        assert_eq!(modulation_key(17, 18), "to_rgbs.7.conv.modulation.weight");
        assert_eq!(modulation_key(9, 10), "to_rgbs.3.conv.modulation.weight");
    }

    /// The real generator's size: D = 512 and the 17 × 512 + 3 rows of all
    /// layers at 1024² (random here). Exact to rounding, and quick.
    #[test]
    fn style_dim_512_in_seconds() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let rows: Vec<Vec<f64>> =
            (0..17 * 512 + 3).map(|_| (0..512).map(|_| rng.random::<f64>() - 0.5).collect()).collect();
        let t = std::time::Instant::now();
        let (values, vectors) = factorize_rows(&rows).unwrap();
        eprintln!("SeFa on {} rows × 512: {:.2} s", rows.len(), t.elapsed().as_secs_f64());
        for k in [0, 1, 2, 255, 511] {
            let mv = apply_m(&rows, &vectors[k]);
            let err = mv.iter().zip(&vectors[k]).map(|(a, b)| (a - values[k] * b).abs()).fold(0.0, f64::max);
            assert!(err < 1e-8 * values[0], "M v != λ v for {k}: {err}");
        }
        assert!((values.iter().sum::<f64>() - rows.len() as f64).abs() < 1e-6);
    }
}

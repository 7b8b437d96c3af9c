//! Winograd's minimal filtering F(2×2, 3×3) for the 3×3, stride-1,
//! padding-1 convolutions that carry most of the generator's, ArcFace's and
//! BiSeNet's work.
//!
//! Each 2×2 block of output pixels of one channel pair is computed from a
//! 4×4 input tile with 16 multiplications instead of 36: the tile `d` and
//! the kernel `g` are transformed, `V = Bᵀ d B` and `U = G g Gᵀ`, multiplied
//! element by element, and transformed back, `Y = Aᵀ (U ⊙ V) A`. Summed over
//! input channels, the 16 element-wise products are 16 matrix products
//! `M_ξ [c_out, tiles] = U_ξ [c_out, c_in] · V_ξ [c_in, tiles]`, run by
//! `gemm`: 2.25× fewer multiply-adds than im2col's one product, the
//! transforms being additions (and halvings, for the kernel).
//!
//! The input gradient of such a convolution is again one (of the output
//! gradient, with the kernel transposed and flipped), so both directions
//! use the same routine. Tiles are processed in bands of tile rows so that
//! the transformed tiles stay a few MiB at any image size. The matrices are
//! those of Lavin & Gray, "Fast Algorithms for Convolutional Neural
//! Networks" (CVPR 2016), for correlation, which is what `conv2d` computes.

use candle_core::WithDType;
use rayon::prelude::*;

use super::cpu::{matmul, ConvGeom, Mat, BAND_ELEMS};

/// Elements of a transformed tile (4×4).
const XI: usize = 16;

/// Whether the convolution `g` takes the Winograd path: a 3×3 kernel, stride
/// 1, padding 1, and big enough that 16 products beat one (smaller layers,
/// such as the generator's 4×4 one, stay with im2col).
pub(crate) fn applies(g: &ConvGeom) -> bool {
    (g.kh, g.kw, g.stride, g.padding) == (3, 3, 1, 1) && g.h.min(g.w) >= 8 && g.c_in.min(g.c_out) >= 16
}

/// Which of the kernel's two roles a product takes.
#[derive(Clone, Copy)]
pub(crate) enum Role {
    /// The convolution: `x [c_in] → y [c_out]` with `w[o, i, ky, kx]`.
    Forward,
    /// Its input gradient: `dy [c_out] → dx [c_in]`, the convolution with
    /// `w[o, i, 2 − ky, 2 − kx]` read as `[i, o, ·, ·]`.
    BackwardData,
}

/// `U = G g Gᵀ` of every kernel the role reads, laid out `[out, ξ, in]`
/// (`out`, `in` the channels of the product this role computes).
fn transform_kernels<T: WithDType>(g: &ConvGeom, weight: &[T], role: Role) -> (Vec<T>, usize, usize) {
    let (n_out, n_in) = match role {
        Role::Forward => (g.c_out, g.c_in),
        Role::BackwardData => (g.c_in, g.c_out),
    };
    let half = T::from_f64(0.5);
    let mut u = vec![T::zero(); n_out * XI * n_in];
    u.par_chunks_mut(XI * n_in).enumerate().for_each(|(o, dst)| {
        for i in 0..n_in {
            // The 3×3 kernel this (out, in) pair applies, as a correlation.
            let tap = |ky: usize, kx: usize| match role {
                Role::Forward => weight[((o * g.c_in + i) * 3 + ky) * 3 + kx],
                Role::BackwardData => weight[((i * g.c_in + o) * 3 + (2 - ky)) * 3 + (2 - kx)],
            };
            // t = G g (4×3), G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]].
            let mut t = [[T::zero(); 3]; 4];
            for (j, col) in (0..3).map(|j| (j, [tap(0, j), tap(1, j), tap(2, j)])) {
                t[0][j] = col[0];
                t[1][j] = (col[0] + col[1] + col[2]) * half;
                t[2][j] = (col[0] - col[1] + col[2]) * half;
                t[3][j] = col[2];
            }
            // U = t Gᵀ (4×4).
            for (r, row) in t.iter().enumerate() {
                let v = [row[0], (row[0] + row[1] + row[2]) * half, (row[0] - row[1] + row[2]) * half, row[2]];
                for (c, &v) in v.iter().enumerate() {
                    dst[(r * 4 + c) * n_in + i] = v;
                }
            }
        }
    });
    (u, n_out, n_in)
}

/// A band of tile rows `[tr0, tr1)` of one image.
#[derive(Clone, Copy)]
struct Band {
    tr0: usize,
    tr1: usize,
    /// Tiles per row.
    tw: usize,
}

impl Band {
    fn tiles(&self) -> usize {
        (self.tr1 - self.tr0) * self.tw
    }
}

/// `V = Bᵀ d B` of every tile of the band of `x` `[n_in, h, w]` (padded by
/// one pixel of zeros), laid out `[in, ξ, tile]`.
fn transform_input<T: WithDType>(x: &[T], (h, w): (usize, usize), band: Band, v: &mut [T]) {
    let n = band.tiles();
    let zero = T::zero();
    v.par_chunks_mut(XI * n).zip(x.par_chunks(h * w)).for_each(|(dst, plane)| {
        let at = |y: isize, x: isize| {
            if y < 0 || x < 0 || y as usize >= h || x as usize >= w {
                zero
            } else {
                plane[y as usize * w + x as usize]
            }
        };
        for ty in band.tr0..band.tr1 {
            for tx in 0..band.tw {
                let (y0, x0) = (2 * ty as isize - 1, 2 * tx as isize - 1);
                let mut d = [[zero; 4]; 4];
                for (r, row) in d.iter_mut().enumerate() {
                    for (c, v) in row.iter_mut().enumerate() {
                        *v = at(y0 + r as isize, x0 + c as isize);
                    }
                }
                // s = Bᵀ d, Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]].
                let mut s = [[zero; 4]; 4];
                for c in 0..4 {
                    s[0][c] = d[0][c] - d[2][c];
                    s[1][c] = d[1][c] + d[2][c];
                    s[2][c] = d[2][c] - d[1][c];
                    s[3][c] = d[1][c] - d[3][c];
                }
                // V = s B.
                let t = (ty - band.tr0) * band.tw + tx;
                for (r, row) in s.iter().enumerate() {
                    let v = [row[0] - row[2], row[1] + row[2], row[2] - row[1], row[1] - row[3]];
                    for (c, &v) in v.iter().enumerate() {
                        dst[(r * 4 + c) * n + t] = v;
                    }
                }
            }
        }
    });
}

/// `Y = Aᵀ M A` of every tile of the band, written into `y` `[n_out, h, w]`
/// plus the channel's bias; `m` is laid out `[out, ξ, tile]`.
fn transform_output<T: WithDType>(m: &[T], bias: Option<&[T]>, (h, w): (usize, usize), band: Band, y: &mut [T]) {
    let n = band.tiles();
    y.par_chunks_mut(h * w).zip(m.par_chunks(XI * n)).enumerate().for_each(|(o, (plane, src))| {
        let b = bias.map_or(T::zero(), |b| b[o]);
        for ty in band.tr0..band.tr1 {
            for tx in 0..band.tw {
                let t = (ty - band.tr0) * band.tw + tx;
                let e = |r: usize, c: usize| src[(r * 4 + c) * n + t];
                // r = Aᵀ M (2×4), Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]]; Y = r A.
                let mut r = [[T::zero(); 4]; 2];
                for c in 0..4 {
                    r[0][c] = e(0, c) + e(1, c) + e(2, c);
                    r[1][c] = e(1, c) - e(2, c) - e(3, c);
                }
                for (i, row) in r.iter().enumerate() {
                    let yy = 2 * ty + i;
                    if yy >= h {
                        continue;
                    }
                    let out = [row[0] + row[1] + row[2], row[1] - row[2] - row[3]];
                    for (j, &v) in out.iter().enumerate() {
                        let xx = 2 * tx + j;
                        if xx < w {
                            plane[yy * w + xx] = v + b;
                        }
                    }
                }
            }
        }
    });
}

/// The 3×3, stride-1, padding-1 convolution `g` of a batch in `role`:
/// `xs` `[B, n_in, h, w]` to `[B, n_out, h, w]` plus `bias` (forward only).
pub(crate) fn conv3x3<T: WithDType>(g: &ConvGeom, xs: &[T], weight: &[T], bias: Option<&[T]>, role: Role) -> Vec<T> {
    let (h, w) = (g.h, g.w);
    let (u, n_out, n_in) = transform_kernels(g, weight, role);
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let rows_per_band = (BAND_ELEMS / (XI * n_in.max(n_out) * tw).max(1)).clamp(1, th);
    let most = rows_per_band * tw;
    let mut v = vec![T::zero(); n_in * XI * most];
    let mut m = vec![T::zero(); n_out * XI * most];
    let batch = xs.len() / (n_in * h * w).max(1);
    let mut ys = vec![T::zero(); batch * n_out * h * w];
    for (x, y) in xs.chunks(n_in * h * w).zip(ys.chunks_mut(n_out * h * w)) {
        for tr0 in (0..th).step_by(rows_per_band) {
            let band = Band { tr0, tr1: (tr0 + rows_per_band).min(th), tw };
            let n = band.tiles();
            transform_input(x, (h, w), band, &mut v[..n_in * XI * n]);
            for xi in 0..XI {
                let lhs = Mat { data: &u[xi * n_in..], rs: XI * n_in, cs: 1 };
                let rhs = Mat { data: &v[xi * n..n_in * XI * n], rs: XI * n, cs: 1 };
                matmul((n_out, n, n_in), &mut m[xi * n..n_out * XI * n], XI * n, false, lhs, rhs);
            }
            transform_output(&m[..n_out * XI * n], bias, (h, w), band, y);
        }
    }
    ys
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::cpu::{conv2d, conv2d_backward_data};

    fn draw(n: usize, seed: u64) -> Vec<f64> {
        // A small LCG: reproducible values in [−1, 1].
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
            })
            .collect()
    }

    /// The direct definition of the padded 3×3 correlation, in f64.
    fn direct(g: &ConvGeom, x: &[f64], w: &[f64], bias: &[f64]) -> Vec<f64> {
        let (h, wd) = (g.h, g.w);
        let mut y = vec![0.0; g.c_out * h * wd];
        for o in 0..g.c_out {
            for oy in 0..h {
                for ox in 0..wd {
                    let mut acc = bias[o];
                    for i in 0..g.c_in {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (iy, ix) = (oy as isize + ky as isize - 1, ox as isize + kx as isize - 1);
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wd {
                                    acc += x[(i * h + iy as usize) * wd + ix as usize]
                                        * w[((o * g.c_in + i) * 3 + ky) * 3 + kx];
                                }
                            }
                        }
                    }
                    y[(o * h + oy) * wd + ox] = acc;
                }
            }
        }
        y
    }

    fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max)
    }

    /// Odd and even sizes, non-square, channels in and out different.
    const SHAPES: [(usize, usize, usize, usize); 4] =
        [(16, 24, 8, 8), (17, 16, 9, 13), (20, 18, 12, 8), (16, 16, 11, 11)];

    #[test]
    fn forward_equals_the_direct_convolution() {
        for (n, &(c_in, c_out, h, w)) in SHAPES.iter().enumerate() {
            let g = ConvGeom { c_in, c_out, kh: 3, kw: 3, stride: 1, padding: 1, h, w };
            assert!(applies(&g));
            let x = draw(c_in * h * w, n as u64);
            let wt = draw(c_out * c_in * 9, 100 + n as u64);
            let bias = draw(c_out, 200 + n as u64);
            let want = direct(&g, &x, &wt, &bias);
            let got = conv3x3(&g, &x, &wt, Some(&bias), Role::Forward);
            assert!(max_abs_diff(&got, &want) < 1e-12, "{g:?}: {}", max_abs_diff(&got, &want));
            // Through the public kernel, which picks this path.
            assert!(max_abs_diff(&conv2d(&g, &x, &wt, Some(&bias)), &want) < 1e-12);
        }
    }

    /// `⟨conv(x), r⟩ = ⟨x, conv_bwd(r)⟩`: the backward role is the adjoint.
    #[test]
    fn backward_data_is_the_adjoint() {
        for (n, &(c_in, c_out, h, w)) in SHAPES.iter().enumerate() {
            let g = ConvGeom { c_in, c_out, kh: 3, kw: 3, stride: 1, padding: 1, h, w };
            let x = draw(2 * c_in * h * w, 300 + n as u64);
            let r = draw(2 * c_out * h * w, 400 + n as u64);
            let wt = draw(c_out * c_in * 9, 500 + n as u64);
            let y = conv3x3(&g, &x, &wt, None, Role::Forward);
            let dx = conv2d_backward_data(&g, &r, &wt);
            let lhs: f64 = y.iter().zip(&r).map(|(a, b)| a * b).sum();
            let rhs: f64 = x.iter().zip(&dx).map(|(a, b)| a * b).sum();
            assert!((lhs - rhs).abs() < 1e-9 * lhs.abs().max(1.0), "{g:?}: {lhs} vs {rhs}");
        }
    }

    #[test]
    fn small_or_other_convolutions_keep_im2col() {
        let g = |c, hw, k, s, p| ConvGeom { c_in: c, c_out: c, kh: k, kw: k, stride: s, padding: p, h: hw, w: hw };
        assert!(applies(&g(16, 8, 3, 1, 1)));
        assert!(!applies(&g(16, 4, 3, 1, 1)), "the 4×4 layer");
        assert!(!applies(&g(8, 16, 3, 1, 1)), "few channels");
        assert!(!applies(&g(16, 16, 3, 2, 1)), "stride 2");
        assert!(!applies(&g(16, 16, 3, 1, 0)), "unpadded");
        assert!(!applies(&g(16, 16, 1, 1, 0)), "1×1");
    }
}

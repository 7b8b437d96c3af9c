//! NumPy's legacy `RandomState` sampler, for drawing z exactly as
//! NumPy-based StyleGAN code does (`np.random.RandomState(seed).randn(512)`
//! in CLIPLSD's and LELSD's notebooks): with the same generator weights,
//! seed N is then the same face.
//!
//! The generator is MT19937 (Matsumoto & Nishimura) seeded with
//! `init_genrand(seed)` — NumPy's legacy seeding of an integer that fits in
//! 32 bits (`numpy/random/_mt19937.pyx`, `_legacy_seeding` →
//! `mt19937_seed`); doubles are 53-bit (`random_sample`: `(a >> 5, b >> 6)`
//! of two 32-bit words); normals come from the polar Box–Muller method,
//! which makes two at a time and returns the cached second one on the next
//! call (`legacy_gauss` in `numpy/random/src/legacy/legacy-distributions.c`).

use crate::{Error, Result};

const N: usize = 624;
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER: u32 = 0x8000_0000;
const LOWER: u32 = 0x7fff_ffff;

/// NumPy's `RandomState` (MT19937 plus the cached polar Gaussian).
#[derive(Debug, Clone)]
pub struct RandomState {
    key: [u32; N],
    pos: usize,
    gauss: Option<f64>,
}

impl RandomState {
    /// `np.random.RandomState(seed)`; NumPy accepts seeds in `0..2³²`.
    pub fn new(seed: u64) -> Result<Self> {
        let seed = u32::try_from(seed).map_err(|_| {
            Error::Config(format!(
                "seed {seed} is out of NumPy's range (0 to 4294967295); use a smaller seed or seed_rng: chacha"
            ))
        })?;
        let mut key = [0u32; N];
        key[0] = seed;
        for i in 1..N {
            let prev = key[i - 1];
            key[i] = 1_812_433_253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(i as u32);
        }
        Ok(Self { key, pos: N, gauss: None })
    }

    fn reload(&mut self) {
        let mix = |a: u32, b: u32, c: u32| {
            let y = (a & UPPER) | (b & LOWER);
            c ^ (y >> 1) ^ if y & 1 == 1 { MATRIX_A } else { 0 }
        };
        for i in 0..N {
            self.key[i] = mix(self.key[i], self.key[(i + 1) % N], self.key[(i + M) % N]);
        }
        self.pos = 0;
    }

    /// The next 32-bit output (tempered).
    pub fn next_u32(&mut self) -> u32 {
        if self.pos == N {
            self.reload();
        }
        let mut y = self.key[self.pos];
        self.pos += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `random_sample()`: a double in `[0, 1)` with 53 random bits.
    pub fn random_sample(&mut self) -> f64 {
        let a = (self.next_u32() >> 5) as f64;
        let b = (self.next_u32() >> 6) as f64;
        (a * 67_108_864.0 + b) / 9_007_199_254_740_992.0
    }

    /// One standard normal (`standard_normal` / `randn` element).
    pub fn gauss(&mut self) -> f64 {
        if let Some(g) = self.gauss.take() {
            return g;
        }
        loop {
            let x1 = 2.0 * self.random_sample() - 1.0;
            let x2 = 2.0 * self.random_sample() - 1.0;
            let r2 = x1 * x1 + x2 * x2;
            if r2 < 1.0 && r2 != 0.0 {
                let f = (-2.0 * r2.ln() / r2).sqrt();
                self.gauss = Some(f * x1);
                return f * x2;
            }
        }
    }

    /// `randn(n)`: `n` standard normals in order.
    pub fn randn(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.gauss()).collect()
    }
}

/// `np.random.RandomState(seed).randn(n)`.
pub fn randn(seed: u64, n: usize) -> Result<Vec<f64>> {
    Ok(RandomState::new(seed)?.randn(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/numpy-rng/randn.json");

    /// The reference MT19937 output for `init_genrand(5489)` (the generator's
    /// default seed): its 1st and 10000th outputs.
    #[test]
    fn mt19937_matches_the_reference_sequence() {
        let mut r = RandomState::new(5489).unwrap();
        assert_eq!(r.next_u32(), 3_499_211_612);
        for _ in 1..9999 {
            r.next_u32();
        }
        assert_eq!(r.next_u32(), 4_123_659_995);
    }

    /// Every case NumPy stored: single seeds, one stream of ten rows, and
    /// LELSD's per-step batches (`RandomState(seed + i).randn(4, 512)`).
    #[test]
    fn randn_matches_numpys_own_values() {
        let text = std::fs::read_to_string(FIXTURE).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let cases = json["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 8);
        let mut worst = 0.0f64;
        for case in cases {
            let seed = case["seed"].as_u64().unwrap();
            let call = case["call"].as_str().unwrap();
            let want: Vec<f64> = case["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            let got = if call.starts_with("RandomState(seed + i)") {
                let per = want.len() / 3;
                (0..3).flat_map(|i| randn(seed + i, per).unwrap()).collect()
            } else {
                randn(seed, want.len()).unwrap()
            };
            assert_eq!(got.len(), want.len(), "{call}");
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let err = (g - w).abs() / w.abs().max(1.0);
                worst = worst.max(err);
                assert!(err <= 4.0 * f64::EPSILON, "seed {seed}, {call}, value {i}: got {g}, NumPy {w}");
            }
        }
        eprintln!("largest relative deviation from NumPy: {worst:e}");
    }

    #[test]
    fn seeds_beyond_32_bits_are_refused() {
        assert!(randn(1 << 32, 1).unwrap_err().to_string().contains("NumPy's range"));
        assert!(randn(u32::MAX as u64, 1).is_ok());
    }
}

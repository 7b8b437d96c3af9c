//! Which W+ layers an edit acts on: `coarse`, `medium`, `fine`, numbers and
//! ranges (`0-3,8`), or a mix (`coarse,8`).
//!
//! The presets follow the StyleGAN paper's split by resolution (Karras et
//! al. 2019, §3.1): coarse styles act at 4²–8² (W+ layers 0–3: pose, face
//! shape), medium at 16²–32² (layers 4–7: features, hair style, eyes), fine
//! from 64² up (layers 8 to the last: colour scheme, micro-structure). A
//! preset is resolved against the loaded generator, so `fine` is 8–17 at
//! 1024² and 8–9 on the 64² demo generator.

/// One part of a layer list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// Layers 0–3.
    Coarse,
    /// Layers 4–7.
    Medium,
    /// Layers 8 to the last.
    Fine,
    /// `a..=b`.
    Range(usize, usize),
}

/// A parsed layer list, resolved against a generator by [`LayerSpec::resolve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerSpec {
    parts: Vec<Part>,
    text: String,
}

impl LayerSpec {
    /// Parses `coarse`, `medium`, `fine`, `3`, `0-3` (also `0..=3`) and
    /// comma-separated mixes; the error says what is accepted.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |part: &str| {
            format!("'{part}' in layers '{text}': expected coarse, medium, fine, a layer number or a range such as 0-3, comma separated")
        };
        let mut parts = Vec::new();
        for part in text.split(',').map(str::trim) {
            let p = match part.to_ascii_lowercase().as_str() {
                "coarse" => Part::Coarse,
                "medium" | "middle" => Part::Medium,
                "fine" => Part::Fine,
                s => {
                    let (a, b) = match s.split_once("..=").or_else(|| s.split_once('-')) {
                        Some((a, b)) => (a.trim(), b.trim()),
                        None => (s, s),
                    };
                    let a: usize = a.parse().map_err(|_| bad(part))?;
                    let b: usize = b.parse().map_err(|_| bad(part))?;
                    if b < a {
                        return Err(format!(
                            "'{part}' in layers '{text}': the range is empty; write the smaller layer first"
                        ));
                    }
                    Part::Range(a, b)
                }
            };
            parts.push(p);
        }
        Ok(Self { parts, text: text.to_string() })
    }

    /// The text it was parsed from.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// True when it names only numbers (no preset), so it resolves the same
    /// for every generator.
    pub fn is_numeric(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Range(..)))
    }

    /// The layers (sorted, unique) for a generator with `n_latent` W+
    /// layers; an error names a layer that does not exist, or a preset that
    /// is empty for this generator.
    pub fn resolve(&self, n_latent: usize) -> Result<Vec<usize>, String> {
        let mut out = Vec::new();
        for p in &self.parts {
            let (a, b, name) = match *p {
                Part::Coarse => (0, 3, Some("coarse")),
                Part::Medium => (4, 7, Some("medium")),
                Part::Fine => (8, n_latent.saturating_sub(1), Some("fine")),
                Part::Range(a, b) => (a, b, None),
            };
            match name {
                Some(name) => {
                    let b = b.min(n_latent.saturating_sub(1));
                    if a > b || a >= n_latent {
                        return Err(format!(
                            "'{name}' is empty for this generator: its W+ has {n_latent} layers (0..={})",
                            n_latent.saturating_sub(1)
                        ));
                    }
                    out.extend(a..=b);
                }
                None => {
                    if b >= n_latent {
                        return Err(format!(
                            "layer {b} does not exist: this generator's W+ has {n_latent} layers (0..={})",
                            n_latent.saturating_sub(1)
                        ));
                    }
                    out.extend(a..=b);
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_follow_the_generator_and_mix_with_numbers() {
        let r = |t: &str, l: usize| LayerSpec::parse(t).unwrap().resolve(l);
        assert_eq!(r("coarse", 18).unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(r("medium", 18).unwrap(), vec![4, 5, 6, 7]);
        assert_eq!(r("fine", 18).unwrap(), (8..18).collect::<Vec<_>>());
        assert_eq!(r("fine", 10).unwrap(), vec![8, 9]);
        assert_eq!(r("0-3,8", 18).unwrap(), vec![0, 1, 2, 3, 8]);
        assert_eq!(r(" 2..=3 , coarse,9", 10).unwrap(), vec![0, 1, 2, 3, 9]);
        assert!(LayerSpec::parse("0-3,8").unwrap().is_numeric());
        assert!(!LayerSpec::parse("fine").unwrap().is_numeric());
    }

    #[test]
    fn errors_name_the_part_and_the_bound() {
        let e = LayerSpec::parse("coarse,tiny").unwrap_err();
        assert!(e.contains("'tiny'") && e.contains("coarse, medium, fine"), "{e}");
        assert!(LayerSpec::parse("5-2").unwrap_err().contains("range is empty"));
        let e = LayerSpec::parse("0-12").unwrap().resolve(10).unwrap_err();
        assert!(e.contains("layer 12 does not exist") && e.contains("0..=9"), "{e}");
        let e = LayerSpec::parse("fine").unwrap().resolve(8).unwrap_err();
        assert!(e.contains("'fine' is empty"), "{e}");
    }
}

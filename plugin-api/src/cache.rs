//! [`OriginalCache`]: what a term computes from the originals `x`, kept
//! across steps under the batch's sample keys.
//!
//! The originals do not depend on the direction, so a term that runs a
//! network on `x` (ArcFace's embedding of the unedited face, BiSeNet's mask
//! of the unedited image) would otherwise repeat the same forward pass every
//! step.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::Tensor;

use super::api::EditBatch;
use crate::Result;

/// Per-sample results computed from `x`, keyed on [`EditBatch::keys`].
///
/// Results are detached rows (`[1, …]` per sample). A batch without keys is
/// computed afresh every time. The cache holds at most `limit` samples and
/// is emptied when full.
#[derive(Debug)]
pub struct OriginalCache {
    rows: Mutex<HashMap<u64, Tensor>>,
    limit: usize,
}

/// A clone starts empty: it is a cache, and the copy may outlive the batch
/// keys' meaning for the original.
impl Clone for OriginalCache {
    fn clone(&self) -> Self {
        Self::new(self.limit)
    }
}

impl Default for OriginalCache {
    fn default() -> Self {
        Self::new(256)
    }
}

impl OriginalCache {
    /// An empty cache of at most `limit` samples.
    pub fn new(limit: usize) -> Self {
        Self { rows: Mutex::new(HashMap::new()), limit }
    }

    /// `f(x)` for the batch's originals, `[N, …]`, detached: computed only
    /// for the samples whose key is not cached (once per distinct key),
    /// the rest read back.
    ///
    /// `f` maps `[M, 3, H, W]` images to `[M, …]` results row by row.
    pub fn get_or_compute(&self, batch: &EditBatch, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
        let Some(keys) = &batch.keys else {
            return Ok(f(&batch.x)?.detach());
        };
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        let mut missing: Vec<(u64, usize)> = Vec::new();
        for (i, &k) in keys.iter().enumerate() {
            if !rows.contains_key(&k) && !missing.iter().any(|&(m, _)| m == k) {
                missing.push((k, i));
            }
        }
        if !missing.is_empty() {
            let ids: Vec<u32> = missing.iter().map(|&(_, i)| i as u32).collect();
            let ids = Tensor::from_vec(ids, missing.len(), batch.x.device())?;
            let computed = f(&batch.x.index_select(&ids, 0)?)?.detach();
            if rows.len() + missing.len() > self.limit {
                rows.clear();
            }
            let mut fresh = HashMap::new();
            for (j, &(k, _)) in missing.iter().enumerate() {
                fresh.insert(k, computed.narrow(0, j, 1)?);
            }
            let out = assemble(keys, |k| fresh.get(&k).or_else(|| rows.get(&k)))?;
            rows.extend(fresh);
            return Ok(out);
        }
        assemble(keys, |k| rows.get(&k))
    }
}

fn assemble<'a>(keys: &[u64], get: impl Fn(u64) -> Option<&'a Tensor>) -> Result<Tensor> {
    let parts: Vec<&Tensor> = keys.iter().map(|&k| get(k).expect("every key was cached or computed above")).collect();
    Ok(Tensor::cat(&parts, 0)?)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use std::cell::Cell;

    use candle_core::{Device, Tensor};

    use super::*;

    fn batch(rows: &[f32], keys: Option<Vec<u64>>) -> EditBatch {
        let n = rows.len();
        let x = Tensor::from_vec(
            rows.iter().flat_map(|&v| std::iter::repeat_n(v, 3 * 2 * 2)).collect::<Vec<_>>(),
            (n, 3, 2, 2),
            &Device::Cpu,
        )
        .unwrap();
        let w = Tensor::zeros((n, 1, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        let u = Tensor::zeros((1, 1, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        let mut b = EditBatch::new(x.clone(), x, w, u, vec![1.0; n], "p").unwrap();
        b.keys = keys;
        b
    }

    /// The first pixel of each image times 10, and how many rows `f` saw.
    fn run(cache: &OriginalCache, b: &EditBatch, seen: &Cell<usize>) -> Vec<f32> {
        cache
            .get_or_compute(b, |x| {
                seen.set(seen.get() + x.dim(0)?);
                Ok((x.flatten_from(1)?.narrow(1, 0, 1)? * 10.0)?)
            })
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn computes_each_key_once_and_keeps_the_order() {
        let cache = OriginalCache::new(8);
        let seen = Cell::new(0);
        assert_eq!(run(&cache, &batch(&[1.0, 2.0, 1.0], Some(vec![7, 8, 7])), &seen), [10.0, 20.0, 10.0]);
        assert_eq!(seen.get(), 2, "the repeated key is computed once");
        assert_eq!(run(&cache, &batch(&[2.0, 3.0], Some(vec![8, 9])), &seen), [20.0, 30.0]);
        assert_eq!(seen.get(), 3, "only the new key is computed");
        assert_eq!(run(&cache, &batch(&[3.0, 1.0], Some(vec![9, 7])), &seen), [30.0, 10.0]);
        assert_eq!(seen.get(), 3, "everything cached");
    }

    #[test]
    fn without_keys_every_call_computes() {
        let cache = OriginalCache::new(8);
        let seen = Cell::new(0);
        run(&cache, &batch(&[1.0, 2.0], None), &seen);
        run(&cache, &batch(&[1.0, 2.0], None), &seen);
        assert_eq!(seen.get(), 4);
    }

    #[test]
    fn a_full_cache_starts_again() {
        let cache = OriginalCache::new(2);
        let seen = Cell::new(0);
        run(&cache, &batch(&[1.0, 2.0], Some(vec![1, 2])), &seen);
        assert_eq!(run(&cache, &batch(&[3.0], Some(vec![3])), &seen), [30.0]);
        assert_eq!(run(&cache, &batch(&[1.0], Some(vec![1])), &seen), [10.0]);
        assert_eq!(seen.get(), 4, "key 1 was dropped when the cache filled");
    }
}

//! Seed lists on the command line: `0..10` (ten seeds, end excluded, as in
//! Rust), `0..=9` (end included), `1,2,5`, and any comma-separated mix
//! (`0..3,7,100..102`).
//!
//! Experiments name their images by seed, so a list must not repeat one.

use crate::{Error, Result};

/// Parses a seed list (see the module docs) in the order written, with
/// [`crate::recipe::parse_seeds`], and refuses a list that repeats a seed.
pub fn parse_seeds(text: &str) -> Result<Vec<u64>> {
    let seeds = crate::recipe::parse_seeds(text).map_err(Error::Config)?;
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = seeds.iter().find(|s| !seen.insert(**s)) {
        return Err(Error::Config(format!("seeds '{text}': seed {dup} is listed twice")));
    }
    Ok(seeds)
}

/// Part `index` of `count` (`--shard I/N`, `I` from 0) of `seeds`: contiguous
/// blocks whose sizes differ by at most one, so that shard folders hold seed
/// ranges and every seed is in exactly one shard.
pub fn shard<T: Clone>(seeds: &[T], index: usize, count: usize) -> Vec<T> {
    if count == 0 || index >= count {
        return Vec::new();
    }
    let (n, k) = (seeds.len(), count);
    let start = index * n / k;
    let end = (index + 1) * n / k;
    seeds[start..end].to_vec()
}

/// Parses `I/N` (shard `I` of `N`, `0 <= I < N`).
pub fn parse_shard(text: &str) -> Result<(usize, usize)> {
    let bad = || {
        Error::Config(format!("shard '{text}': expected I/N with 0 <= I < N, e.g. 0/4 (Slurm: $SLURM_ARRAY_TASK_ID/N)"))
    };
    let (i, n) = text.split_once('/').ok_or_else(bad)?;
    let i = i.trim().parse::<usize>().map_err(|_| bad())?;
    let n = n.trim().parse::<usize>().map_err(|_| bad())?;
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_lists_and_mixes() {
        assert_eq!(parse_seeds("0..3").unwrap(), vec![0, 1, 2]);
        assert_eq!(parse_seeds("0..=3").unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(parse_seeds("1,2,5").unwrap(), vec![1, 2, 5]);
        assert_eq!(parse_seeds(" 7, 0..2 ,100..=101").unwrap(), vec![7, 0, 1, 100, 101]);
        assert_eq!(parse_seeds("42").unwrap(), vec![42]);
    }

    #[test]
    fn errors_say_what_is_wrong() {
        for (text, words) in [
            ("", "empty entry"),
            ("1,,2", "empty entry"),
            ("5..5", "range is empty"),
            ("9..2", "range is empty"),
            ("a..3", "not a whole number"),
            ("-1", "not a whole number"),
            ("0..3,2", "listed twice"),
            ("0..10000000000", "more than"),
        ] {
            let e = parse_seeds(text).unwrap_err().to_string();
            assert!(e.contains(words), "{text}: {e}");
        }
    }

    #[test]
    fn shards_cover_every_seed_once() {
        let seeds: Vec<u64> = (0..10).collect();
        let parts: Vec<Vec<u64>> = (0..3).map(|i| shard(&seeds, i, 3)).collect();
        assert_eq!(parts.concat(), seeds);
        assert!(parts.iter().all(|p| p.len() == 3 || p.len() == 4));
        assert_eq!(shard(&seeds[..2], 2, 4), Vec::<u64>::new());
        assert_eq!(parse_shard("1/4").unwrap(), (1, 4));
        assert!(parse_shard("4/4").is_err() && parse_shard("1").is_err() && parse_shard("0/0").is_err());
    }
}

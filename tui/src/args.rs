//! Flags and values shared by the commands, defined once.
//!
//! `--device` and `--models` mean the same everywhere, and seed lists,
//! α lists and shards are parsed by clap (a bad value is a usage error
//! naming the flag, before anything loads).

use std::fmt;
use std::str::FromStr;

use lsd_core::experiments::seeds;

/// `--device`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DeviceArg {
    /// `cpu`, `cuda` or `cuda:N` (default: the recipe's `device` where a
    /// recipe is read, else `cpu`).
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
}

impl DeviceArg {
    /// The device named, or `cpu`.
    pub fn name(&self) -> &str {
        self.device.as_deref().unwrap_or("cpu")
    }

    /// Opens the device named, or the CPU.
    pub fn open(&self) -> color_eyre::Result<candle_core::Device> {
        lsd_core::ops::memory::open_device(self.name()).map_err(|e| {
            color_eyre::eyre::eyre!("--device {}: {e}; use cpu, or cuda:N on a build with --features cuda", self.name())
        })
    }
}

/// `--models`.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct ModelsArg {
    /// `demo`: run every network as its seeded demo network, whatever the
    /// recipe names (no downloads; the images mean nothing).
    #[arg(long, value_enum, value_name = "MODELS")]
    pub models: Option<ModelsOverride>,
}

impl ModelsArg {
    /// True for `--models demo`.
    pub fn demo(&self) -> bool {
        self.models == Some(ModelsOverride::Demo)
    }
}

/// What `--models` can override the recipe's networks with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelsOverride {
    /// The seeded demo networks.
    Demo,
}

/// A seed list: `3`, `1,2,5`, `0..10` (end excluded), `0..=9`, or a mix;
/// no seed twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seeds(pub Vec<u64>);

impl FromStr for Seeds {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        seeds::parse_seeds(s).map(Seeds).map_err(|e| e.to_string())
    }
}

/// A comma-separated list of finite α values, `-3,0,3`.
#[derive(Debug, Clone, PartialEq)]
pub struct Alphas(pub Vec<f32>);

impl FromStr for Alphas {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let alphas = s
            .split(',')
            .map(|a| {
                a.trim()
                    .parse::<f32>()
                    .ok()
                    .filter(|a| a.is_finite())
                    .ok_or_else(|| format!("'{}' is not a finite number; write e.g. -3,0,3", a.trim()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Alphas(alphas))
    }
}

impl fmt::Display for Alphas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|a| a.to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

/// `--shard I/N`: part `I` (from 0) of `N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// `I`.
    pub index: usize,
    /// `N`.
    pub count: usize,
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        seeds::parse_shard(s).map(|(index, count)| Shard { index, count }).map_err(|e| e.to_string())
    }
}

impl Shard {
    /// `(I, N)`.
    pub fn pair(self) -> (usize, usize) {
        (self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[arg(long)]
        seeds: Option<Seeds>,
        #[arg(long, allow_hyphen_values = true)]
        alphas: Option<Alphas>,
        #[arg(long)]
        shard: Option<Shard>,
        #[command(flatten)]
        device: DeviceArg,
        #[command(flatten)]
        models: ModelsArg,
    }

    fn parse(args: &[&str]) -> Result<Cli, String> {
        Cli::try_parse_from(std::iter::once("t").chain(args.iter().copied())).map_err(|e| e.to_string())
    }

    #[test]
    fn values_are_parsed_by_clap() {
        let c = parse(&["--seeds", "0..3,7", "--alphas", "-3,0,2.5", "--shard", "1/4", "--models", "demo"]).unwrap();
        assert_eq!(c.seeds, Some(Seeds(vec![0, 1, 2, 7])));
        assert_eq!(c.alphas, Some(Alphas(vec![-3.0, 0.0, 2.5])));
        assert_eq!(c.shard.map(Shard::pair), Some((1, 4)));
        assert!(c.models.demo());
        assert_eq!(c.device.name(), "cpu");
        assert_eq!(Alphas(vec![-3.0, 0.5]).to_string(), "-3,0.5");
    }

    #[test]
    fn bad_values_are_usage_errors_that_name_the_flag() {
        for (args, flag, why) in [
            (&["--seeds", "1,1"][..], "--seeds", "listed twice"),
            (&["--seeds", "a..3"][..], "--seeds", "not a whole number"),
            (&["--alphas", "1,x"][..], "--alphas", "'x' is not a finite number"),
            (&["--alphas", "1,inf"][..], "--alphas", "'inf' is not a finite number"),
            (&["--shard", "4/4"][..], "--shard", "expected I/N"),
            (&["--models", "real"][..], "--models", "demo"),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.contains(flag) && e.contains(why), "{args:?}: {e}");
        }
    }
}

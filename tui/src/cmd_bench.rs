//! `lsd-tui bench` (being written).

use color_eyre::eyre::{bail, Result};

/// `lsd-tui bench` arguments.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {}

/// Runs a benchmark.
pub fn run(_a: BenchArgs) -> Result<()> {
    bail!("'bench' is not available in this build yet")
}

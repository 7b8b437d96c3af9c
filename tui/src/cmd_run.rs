//! `lsd-tui demo`, `run` and `apply` (being written).

use color_eyre::eyre::{bail, Result};

/// `lsd-tui demo` arguments.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {}

/// `lsd-tui run` arguments.
#[derive(Debug, clap::Args)]
pub struct RunArgs {}

/// `lsd-tui apply` arguments.
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {}

/// Runs the demo recipe.
pub fn demo(_args: DemoArgs) -> Result<()> {
    bail!("'demo' is not available in this build yet")
}

/// Runs a recipe.
pub fn run(_args: RunArgs) -> Result<()> {
    bail!("'run' is not available in this build yet")
}

/// Applies a direction.
pub fn apply(_args: ApplyArgs) -> Result<()> {
    bail!("'apply' is not available in this build yet")
}

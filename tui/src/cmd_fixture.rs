//! `lsd-tui check-fixture` (being written).

use color_eyre::eyre::{bail, Result};

/// `lsd-tui check-fixture` arguments.
#[derive(Debug, clap::Args)]
pub struct CheckFixtureArgs {}

/// Runs a fixture directory.
pub fn run(_a: CheckFixtureArgs) -> Result<()> {
    bail!("'check-fixture' is not available in this build yet")
}

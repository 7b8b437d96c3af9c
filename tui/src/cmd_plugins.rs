//! `lsd-tui plugins` (being written).

use color_eyre::eyre::{bail, Result};

/// `lsd-tui plugins` arguments.
#[derive(Debug, clap::Args)]
pub struct PluginsArgs {}

/// Lists or checks plugins.
pub fn run(_a: PluginsArgs) -> Result<()> {
    bail!("'plugins' is not available in this build yet")
}

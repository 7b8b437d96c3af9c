//! The report's experiments: similarity, generalize, ablation, merge (being written).

use color_eyre::eyre::{bail, Result};

/// `lsd-tui similarity` arguments.
#[derive(Debug, clap::Args)]
pub struct SimilarityArgs {}
/// `lsd-tui generalize` arguments.
#[derive(Debug, clap::Args)]
pub struct GeneralizeArgs {}
/// `lsd-tui ablation` arguments.
#[derive(Debug, clap::Args)]
pub struct AblationArgs {}
/// `lsd-tui merge` arguments.
#[derive(Debug, clap::Args)]
pub struct MergeArgs {}

/// Fig. 5.
pub fn similarity(_a: SimilarityArgs) -> Result<()> {
    bail!("'similarity' is not available in this build yet")
}
/// Fig. 8.
pub fn generalize(_a: GeneralizeArgs) -> Result<()> {
    bail!("'generalize' is not available in this build yet")
}
/// Fig. 9.
pub fn ablation(_a: AblationArgs) -> Result<()> {
    bail!("'ablation' is not available in this build yet")
}
/// Merges shards.
pub fn merge(_a: MergeArgs) -> Result<()> {
    bail!("'merge' is not available in this build yet")
}

//! lsd-tui: the command-line front end (work in progress).

fn main() -> color_eyre::Result<()> {
    color_eyre::install()?;
    Ok(())
}

//! `lsd-tui completions SHELL` and `lsd-tui man`: shell completions and
//! man pages, generated from the command-line definitions so they never
//! drift from `--help`. `scripts/install.sh` installs both.

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use color_eyre::eyre::{Result, WrapErr};

/// `lsd-tui completions` arguments.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  lsd-tui completions bash > ~/.local/share/bash-completion/completions/lsd-tui\n  lsd-tui completions zsh > ~/.zfunc/_lsd-tui\n  lsd-tui completions fish > ~/.config/fish/completions/lsd-tui.fish"
)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `lsd-tui man` arguments.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  lsd-tui man | man -l -\n  lsd-tui man --dir ~/.local/share/man/man1")]
pub struct ManArgs {
    /// Write `lsd-tui.1` and one `lsd-tui-<command>.1` per command into
    /// this folder instead of printing the main page.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Prints the completion script for `shell`.
pub fn completions<C: CommandFactory>(args: CompletionsArgs) -> Result<()> {
    let mut cmd = C::command();
    let name = cmd.get_name().to_string();
    clap_complete::generate(args.shell, &mut cmd, name, &mut std::io::stdout());
    Ok(())
}

/// Prints the main man page, or writes every page into `--dir`.
pub fn man<C: CommandFactory>(args: ManArgs) -> Result<()> {
    let cmd = C::command();
    match args.dir {
        None => clap_mangen::Man::new(cmd).render(&mut std::io::stdout()).wrap_err("writing the man page"),
        Some(dir) => {
            let pages = write_pages(cmd, &dir)?;
            for p in &pages {
                println!("wrote {}", p.display());
            }
            Ok(())
        }
    }
}

/// Writes the page of `cmd` and of each of its subcommands into `dir`.
fn write_pages(cmd: clap::Command, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).wrap_err_with(|| format!("creating '{}'", dir.display()))?;
    let mut pages = Vec::new();
    let cmd = cmd.disable_help_subcommand(true);
    for sub in cmd.get_subcommands() {
        let name = format!("{}-{}", cmd.get_name(), sub.get_name());
        let sub = sub.clone().name(name.clone());
        pages.push(write_page(sub, dir, &name)?);
    }
    let name = cmd.get_name().to_string();
    pages.insert(0, write_page(cmd, dir, &name)?);
    Ok(pages)
}

fn write_page(cmd: clap::Command, dir: &Path, name: &str) -> Result<PathBuf> {
    let mut roff = Vec::new();
    clap_mangen::Man::new(cmd).render(&mut roff).wrap_err("rendering a man page")?;
    let path = dir.join(format!("{name}.1"));
    lsd_core::durable::write(&path, &roff)?;
    Ok(path)
}

//! `lsd-tui plugins [check PATH | install PATH…]`: what loss plugins are
//! found, with their fingerprints and parameters, a full validation of one
//! library, and installing libraries into the user's plugin folder.

use std::path::PathBuf;

use color_eyre::eyre::{Result, WrapErr};
use lsd_core::plugin::discovery;

/// `lsd-tui plugins` arguments.
#[derive(Debug, clap::Args)]
pub struct PluginsArgs {
    #[command(subcommand)]
    command: Option<PluginsCommand>,
}

#[derive(Debug, clap::Subcommand)]
enum PluginsCommand {
    /// Open one library, check its fingerprint, and run it once on a tiny
    /// batch with demo weights.
    Check {
        /// The plugin library (`liblsd_plugin_*.so`).
        path: PathBuf,
        /// Also run it on `--device cuda:N` and compare with the CPU.
        #[command(flatten)]
        device: crate::args::DeviceArg,
    },
    /// Check plugin libraries and copy them into the user's plugin folder
    /// (`$XDG_DATA_HOME/lsd-tui/plugins`, by default
    /// `~/.local/share/lsd-tui/plugins`), where every run finds them.
    #[command(
        after_help = "Examples:\n  lsd-tui plugins install target/release/liblsd_plugin_colour_stats.so\n  lsd-tui plugins install --dir /opt/lsd-tui/lib/lsd-tui/plugins dist/*.so"
    )]
    Install {
        /// The plugin libraries (`liblsd_plugin_*.so`).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Install into this folder instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// Lists or checks plugins.
pub fn run(args: PluginsArgs) -> Result<()> {
    match args.command {
        None => list(),
        Some(PluginsCommand::Check { path, device }) => check(path, device.name()),
        Some(PluginsCommand::Install { paths, dir }) => install(&paths, dir),
    }
}

fn install(paths: &[PathBuf], dir: Option<PathBuf>) -> Result<()> {
    let dir = match dir.or_else(discovery::user_plugin_dir) {
        Some(d) => d,
        None => color_eyre::eyre::bail!("no home folder to install into (HOME is unset); give --dir DIR"),
    };
    for p in paths {
        let to = discovery::install(p, &dir).wrap_err_with(|| format!("installing plugin '{}'", p.display()))?;
        println!("installed {}", to.display());
    }
    if !discovery::search_dirs().contains(&dir) {
        println!("note: {} is not searched by this binary; add it to {}", dir.display(), discovery::PLUGIN_PATH_VAR);
    }
    Ok(())
}

fn list() -> Result<()> {
    let dirs = discovery::search_dirs();
    println!("host: {}", lsd_core::plugin::Fingerprint::host());
    println!("searched: {}", dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "));
    let found = discovery::list(&dirs);
    if found.is_empty() {
        println!(
            "no plugins found; build them with 'cargo build --release' or add their directory to {}",
            discovery::PLUGIN_PATH_VAR
        );
        return Ok(());
    }
    let mut broken = 0;
    for f in &found {
        println!();
        match &f.status {
            Ok(l) => {
                println!("{} {}  {}", l.info.name, l.info.version, f.path.display());
                println!("  {}", l.info.description);
                if let Some(by) = &f.shadowed_by {
                    println!("  shadowed by {} (same name, found first)", by.display());
                }
                for p in &l.info.params {
                    println!("  {:<14} {:<28} default {:<10} {}", p.name, p.ty, p.default, p.help);
                }
            }
            Err(e) => {
                broken += 1;
                println!("{}: unusable", f.path.display());
                for line in e.to_string().lines() {
                    println!("  {line}");
                }
            }
        }
    }
    if broken > 0 {
        println!("\n{broken} librar{} could not be used", if broken == 1 { "y" } else { "ies" });
    }
    Ok(())
}

fn check(path: PathBuf, device: &str) -> Result<()> {
    let report =
        discovery::check_on(&path, device).wrap_err_with(|| format!("checking plugin '{}'", path.display()))?;
    let l = &report.listed;
    println!("{} {}: ok", l.info.name, l.info.version);
    println!("  {}", l.info.description);
    println!("  fingerprint: {}", l.fingerprint);
    println!("  smoke test: loss {:.6}, gradients for {}", report.smoke_value, report.smoke_gradients.join(", "));
    if let Some(p) = &report.parity {
        // f32 on both sides; a different reduction order on the device
        // accounts for differences of a few ulps of the gradient's scale.
        let tol = 1e-4 * p.grad_scale.max(1e-6);
        let ok = p.value_diff <= 1e-4 && p.grad_diff <= tol;
        println!(
            "  {} vs cpu: value diff {:.3e}, max gradient diff {:.3e} (scale {:.3e}, tolerance {:.3e}): {}",
            p.device,
            p.value_diff,
            p.grad_diff,
            p.grad_scale,
            tol,
            if ok { "ok" } else { "FAIL" }
        );
        if !ok {
            std::process::exit(1);
        }
    }
    Ok(())
}

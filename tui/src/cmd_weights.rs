//! `lsd-tui weights list|fetch|check|convert`: the command-line face of
//! lsd-weights. [`WeightsArgs`] is the subcommand's clap definition; [`run`]
//! runs it, [`run_with`] runs a command on a given store and output.
//!
//! Everything printed names the file concerned and the next command to run.

use std::io::Write;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use lsd_weights::{ChecksumStatus, Event, FetchOptions, FileState, LayoutStatus, Outcome, Progress, Result, Store};

/// The `weights` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum WeightsCommand {
    /// Every known weight: present or missing, where, size, verified or not.
    List,
    /// Download (resumable) and verify weights by manifest name.
    Fetch {
        /// Manifest names (see `weights list`).
        names: Vec<String>,
        /// Fetch every entry.
        #[arg(long)]
        all: bool,
    },
    /// Verify checksums and that files load into the expected architecture.
    Check {
        /// Manifest names or file paths (default: everything downloaded).
        targets: Vec<String>,
    },
    /// Convert a torch checkpoint (zip or legacy) to safetensors.
    Convert {
        /// The `.pt`/`.pth` file.
        input: PathBuf,
        /// The `.safetensors` file to write.
        output: PathBuf,
    },
}

/// `lsd-tui weights …`
#[derive(Debug, Clone, clap::Args)]
pub struct WeightsArgs {
    /// Never touch the network: fail at once with what is missing.
    #[arg(long, global = true)]
    pub offline: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: WeightsCommand,
}

/// Runs a `weights` command on the default store (`LSD_WEIGHTS_DIR`) with
/// hub options from the environment. `Ok(false)`: something failed and was
/// reported (exit non-zero).
pub fn run(args: &WeightsArgs) -> Result<bool> {
    let store = Store::from_env()?;
    let mut opts = FetchOptions::from_env();
    opts.offline |= args.offline;
    run_with(&store, &opts, &args.command, &mut std::io::stdout())
}

/// [`run`] with an explicit store, options and output.
pub fn run_with(store: &Store, opts: &FetchOptions, command: &WeightsCommand, out: &mut dyn Write) -> Result<bool> {
    match command {
        WeightsCommand::List => list(store, out).map(|()| true),
        WeightsCommand::Fetch { names, all } => fetch(store, opts, names, *all, out),
        WeightsCommand::Check { targets } => check(store, targets, out),
        WeightsCommand::Convert { input, output } => convert(input, output, out).map(|()| true),
    }
}

fn w(out: &mut dyn Write, text: std::fmt::Arguments<'_>) -> Result<()> {
    out.write_fmt(text)
        .and_then(|()| out.write_all(b"\n"))
        .map_err(|e| lsd_weights::Error::io("writing", "<stdout>", e))
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// `weights list`.
pub fn list(store: &Store, out: &mut dyn Write) -> Result<()> {
    w(out, format_args!("weights directory: {}", store.dir.display()))?;
    for e in &store.manifest.weights {
        w(
            out,
            format_args!(
                "\n{}  {}\n  from {} @ {}\n  licence: {}",
                e.name, e.description, e.repo, e.revision, e.licence
            ),
        )?;
        for l in store.list().into_iter().filter(|l| l.name == e.name) {
            let state = match &l.state {
                FileState::Missing { partial: None } => "missing".to_string(),
                FileState::Missing { partial: Some(n) } => format!("missing ({} downloaded, fetch resumes)", mb(*n)),
                FileState::Verified => "verified".to_string(),
                FileState::NotPinned { sha256: Some(s) } => format!("present, not pinned (sha256 {s})"),
                FileState::NotPinned { sha256: None } => "present, not pinned".to_string(),
                FileState::Unverified => format!("present, not verified (run `lsd-tui weights check {}`)", e.name),
                FileState::WrongSize { expected } => {
                    format!("WRONG SIZE, expected {expected} bytes (run `lsd-tui weights fetch {}`)", e.name)
                }
            };
            let size = l.size.or(l.spec.size).map_or_else(|| "size not pinned".to_string(), mb);
            w(out, format_args!("  {:<28} {:>10}  {state}\n    {}", l.spec.file, size, l.path.display()))?;
        }
    }
    let third_party = "Mirrors are third-party re-uploads. StyleGAN2/FFHQ weights are under NVIDIA's \
                       non-commercial licence; the others are MIT.";
    w(out, format_args!("\n{third_party}"))
}

/// `weights fetch NAME…|--all`.
pub fn fetch(store: &Store, opts: &FetchOptions, names: &[String], all: bool, out: &mut dyn Write) -> Result<bool> {
    let everything = all || names.is_empty();
    let entries = if everything { store.manifest.weights.iter().collect() } else { store.manifest.select(names)? };
    let mut bar = Bar::default();
    let results = store.fetch(&entries, opts, &mut bar)?;
    bar.clear();
    let mut ok = true;
    for r in results {
        match r.result {
            Ok(rep) => {
                let how = match rep.outcome {
                    Outcome::AlreadyPresent => "already present".to_string(),
                    Outcome::Downloaded { resumed_from: 0 } => "downloaded".to_string(),
                    Outcome::Downloaded { resumed_from } => format!("downloaded (resumed at {})", mb(resumed_from)),
                };
                w(out, format_args!("{}/{}: {how}, {}\n  {}", r.name, r.file, rep.checksum, rep.path.display()))?;
            }
            // With everything asked for, a file published outside the hub
            // is a note, not a failure.
            Err(e @ lsd_weights::Error::ByHand { .. }) if everything => {
                w(out, format_args!("{}/{}: not downloaded: {e}", r.name, r.file))?;
            }
            Err(e) => {
                ok = false;
                w(out, format_args!("{}/{}: FAILED: {e}", r.name, r.file))?;
            }
        }
    }
    Ok(ok)
}

/// `weights check [NAME…|PATH]` (everything present when empty).
pub fn check(store: &Store, targets: &[String], out: &mut dyn Write) -> Result<bool> {
    let mut bar = Bar::default();
    let mut reports = Vec::new();
    if targets.is_empty() {
        for e in &store.manifest.weights {
            if store.missing(e).len() < e.files.len() {
                reports.extend(store.check_entry(e, &mut bar)?);
            }
        }
        if reports.is_empty() {
            w(
                out,
                format_args!("no weights downloaded in {}; run `lsd-tui weights fetch --all`", store.dir.display()),
            )?;
        }
    }
    for t in targets {
        match store.manifest.get(t) {
            Some(e) => reports.extend(store.check_entry(e, &mut bar)?),
            None => reports.push(store.check_path(Path::new(t), &mut bar)?),
        }
    }
    bar.clear();
    let mut ok = true;
    for r in &reports {
        ok &= r.passed();
        w(out, format_args!("{r}"))?;
        if r.checksum.is_none() {
            w(out, format_args!("  run `lsd-tui weights fetch` for it"))?;
        } else if let Some(ChecksumStatus::SizeMismatch { .. } | ChecksumStatus::ShaMismatch { .. }) = r.checksum {
            w(out, format_args!("  delete it and run `lsd-tui weights fetch` again"))?;
        } else if matches!(r.layout, LayoutStatus::Unloadable { .. }) {
            w(out, format_args!("  if it is a torch file, try `lsd-tui weights convert` on it"))?;
        }
    }
    Ok(ok)
}

/// `weights convert IN OUT.safetensors`.
pub fn convert(input: &Path, output: &Path, out: &mut dyn Write) -> Result<()> {
    let summary = lsd_weights::convert(input, output)?;
    w(out, format_args!("{summary}"))
}

/// Draws lsd-weights progress events as an indicatif bar on stderr.
#[derive(Default)]
pub struct Bar {
    bar: Option<ProgressBar>,
}

impl Bar {
    fn clear(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

impl Progress for Bar {
    fn event(&mut self, event: Event<'_>) {
        match event {
            Event::Start { what, total } => {
                self.clear();
                let b = ProgressBar::new(total.unwrap_or(0));
                if let Ok(style) =
                    ProgressStyle::with_template("{msg} [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} ({eta})")
                {
                    b.set_style(style.progress_chars("=> "));
                }
                b.set_message(what.to_string());
                self.bar = Some(b);
            }
            Event::Position(p) => {
                if let Some(b) = &self.bar {
                    b.set_position(p);
                }
            }
            Event::Finish => self.clear(),
            Event::Note(n) => match &self.bar {
                Some(b) => b.println(n),
                None => eprintln!("{n}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lsd_weights::Manifest;

    #[test]
    fn commands_run_on_an_empty_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path(), Manifest::builtin());
        let opts = FetchOptions { offline: true, ..FetchOptions::default() };

        let mut out = Vec::new();
        assert!(run_with(&store, &opts, &WeightsCommand::List, &mut out).expect("listed"));
        let text = String::from_utf8(out).expect("utf-8");
        for needle in ["stylegan2-ffhq-1024", "clip-vit-b32", "missing", "non-commercial", "MIT", "size not pinned"] {
            assert!(text.contains(needle), "{needle} not in:\n{text}");
        }

        let mut out = Vec::new();
        let fetch = WeightsCommand::Fetch { names: vec!["bisenet-face-19".into()], all: false };
        let err = run_with(&store, &opts, &fetch, &mut out).expect_err("offline").to_string();
        assert!(err.contains("offline") && err.contains("79999_iter.pth"), "{err}");

        let mut out = Vec::new();
        let check = WeightsCommand::Check { targets: vec!["arcface-ir-se50".into()] };
        assert!(!run_with(&store, &opts, &check, &mut out).expect("checked"));
        assert!(String::from_utf8(out).expect("utf-8").contains("missing"));
    }

    #[test]
    fn the_command_line_parses_into_the_commands() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            weights: WeightsArgs,
        }
        let cli = Cli::try_parse_from(["weights", "fetch", "--offline", "--all"]).expect("parses");
        assert!(cli.weights.offline);
        assert!(matches!(cli.weights.command, WeightsCommand::Fetch { ref names, all: true } if names.is_empty()));
        let cli = Cli::try_parse_from(["weights", "convert", "a.pt", "b.safetensors"]).expect("parses");
        assert!(matches!(cli.weights.command, WeightsCommand::Convert { ref input, .. } if input == Path::new("a.pt")));
    }
}

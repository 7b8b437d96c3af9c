//! lsd-tui: find text-driven edit directions in a StyleGAN2 latent space,
//! and watch them being trained live in the terminal.
//!
//! `main` stays small: it installs error reporting, parses the command line
//! and hands each subcommand to its module.

mod args;
mod cmd_bench;
mod cmd_directions;
mod cmd_experiments;
mod cmd_fixture;
mod cmd_plugins;
mod cmd_run;
mod cmd_shell;
mod cmd_weights;
mod exit;
mod headless;
mod report;
mod tui;

use clap::{Parser, Subcommand};
use color_eyre::eyre::{bail, Result};

/// Find text-driven edit directions in a StyleGAN2 latent space (CLIP
/// supervised, ArcFace identity and face-segmentation regularised).
#[derive(Debug, Parser)]
#[command(name = "lsd-tui", version, about, long_about = None, after_help = exit::HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train the demo recipe on the demo models (no downloads), in the TUI.
    Demo(cmd_run::DemoArgs),
    /// Train a direction from a recipe (TUI on a terminal, else headless).
    Run(cmd_run::RunArgs),
    /// Apply a saved direction to other images over an α sweep.
    Apply(cmd_run::ApplyArgs),
    /// Prompt × image CLIP similarity table (report Fig. 5).
    Similarity(cmd_experiments::SimilarityArgs),
    /// Generalisation of local directions to unseen images (report Fig. 8).
    Generalize(cmd_experiments::GeneralizeArgs),
    /// Regulariser ablation grid (report Fig. 9).
    Ablation(cmd_experiments::AblationArgs),
    /// SeFa: closed-form directions from the generator's style weights.
    Sefa(cmd_directions::SefaArgs),
    /// Import InterFaceGAN / GANSpace `.npy` directions; export ours as `.npy`.
    Direction(cmd_directions::DirectionArgs),
    /// Train a recipe over a grid of settings (λ sweep), with a summary table and grid.
    Sweep(cmd_experiments::SweepArgs),
    /// Merge sharded experiment folders.
    Merge(cmd_experiments::MergeArgs),
    /// List, fetch, check and convert model weights.
    Weights(cmd_weights::WeightsArgs),
    /// List loss plugins, or check one library.
    Plugins(cmd_plugins::PluginsArgs),
    /// Run a reference fixture directory against our implementation.
    CheckFixture(cmd_fixture::CheckFixtureArgs),
    /// Benchmarks (not tests): generator and training-step timings.
    Bench(cmd_bench::BenchArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(cmd_shell::CompletionsArgs),
    /// Print the man page, or write every command's page into a folder.
    Man(cmd_shell::ManArgs),
}

fn weights(args: cmd_weights::WeightsArgs) -> Result<()> {
    if let cmd_weights::WeightsCommand::Fetch { names, all: false } = &args.command {
        if names.is_empty() {
            bail!("name the weights to fetch (see 'lsd-tui weights list'), or pass --all");
        }
    }
    let ok = cmd_weights::run(&args)?;
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    // Before any thread starts: the CPU thread count is settled once for
    // the process (the plugins' copies of Candle read the same variable).
    lsd_core::ops::settle_thread_count();
    lsd_core::ops::settle_allocator();
    let style = report::Style::detect();
    if let Err(e) = report::install(style) {
        exit::warn(format!("warning: could not install the error reporter: {e}"));
    }
    let cli = Cli::parse();
    let code = match dispatch(cli) {
        Ok(code) => code,
        // `lsd-tui weights list | head` closes the pipe early: not an error.
        Err(e) if is_broken_pipe(&e) => exit::FINISHED,
        Err(e) => {
            exit::warn(report::render(&e, style));
            exit::FAILED
        }
    };
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn is_broken_pipe(e: &color_eyre::Report) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

/// Runs the command; `Ok` holds the exit status (see [`exit`]).
fn dispatch(cli: Cli) -> Result<i32> {
    let done = |r: Result<()>| r.map(|()| exit::FINISHED);
    match cli.command {
        Command::Demo(args) => cmd_run::demo(args),
        Command::Run(args) => cmd_run::run(args),
        Command::Apply(args) => done(cmd_run::apply(args)),
        Command::Similarity(args) => cmd_experiments::similarity(args),
        Command::Generalize(args) => cmd_experiments::generalize(args),
        Command::Ablation(args) => cmd_experiments::ablation(args),
        Command::Sweep(args) => cmd_experiments::sweep(args),
        Command::Merge(args) => done(cmd_experiments::merge(args)),
        Command::Sefa(args) => done(cmd_directions::sefa(args)),
        Command::Direction(args) => done(cmd_directions::direction(args)),
        Command::Weights(args) => done(weights(args)),
        Command::Plugins(args) => done(cmd_plugins::run(args)),
        Command::CheckFixture(args) => done(cmd_fixture::run(args)),
        Command::Bench(args) => done(cmd_bench::run(args)),
        Command::Completions(args) => done(cmd_shell::completions::<Cli>(args)),
        Command::Man(args) => done(cmd_shell::man::<Cli>(args)),
    }
}

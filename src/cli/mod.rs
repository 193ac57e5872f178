//! The `abgate` command line: parses arguments and calls into the library.
//!
//! Exit codes are a contract for scripts: 0 success, 1 invalid config or failed
//! action, 2 bad usage or bad input file.

mod analyze;
mod check;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "abgate",
    version,
    about = "A/B-testing and canary traffic router for ML inference"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy and its admin API.
    Serve(serve::ServeArgs),
    /// Validate config files; print every error with its line.
    Check(check::CheckArgs),
    /// Re-check an experiment's statistics offline (sequential tests, SRM, verdict).
    Analyze(analyze::AnalyzeArgs),
}

/// Runs the CLI and returns the process exit code.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Check(args) => check::run(args),
        Command::Analyze(args) => analyze::run(args),
    }
}

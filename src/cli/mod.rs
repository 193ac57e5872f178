//! The `abgate` command line: parses arguments and calls into the library.
//!
//! Exit codes are a contract for scripts: 0 success, 1 invalid config or an
//! action the server refused, 2 bad usage or bad input file, 3 the admin API
//! could not be reached.

mod analyze;
mod check;
mod control;
mod demo;
mod diff;
mod export;
mod remote;
mod scenario;
mod serve;
mod status;

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
    /// See a canary rolled back (or, with --canary good, promoted) in under a minute.
    Demo(demo::DemoArgs),
    /// Run a scenario from load/scenarios/ and print the controller's decisions.
    Scenario(scenario::ScenarioArgs),
    /// Validate config files; print every error with its line.
    Check(check::CheckArgs),
    /// Re-check an experiment's statistics offline (sequential tests, SRM, verdict).
    Analyze(analyze::AnalyzeArgs),
    /// Experiments, weights and per-arm outcomes from a running abgate.
    Status(status::StatusArgs),
    /// Freeze an experiment's weights and stop automatic decisions.
    Pause(control::ActionArgs),
    /// Resume a paused experiment.
    Resume(control::ActionArgs),
    /// Send all traffic to the experiment's baseline arm (ends it).
    Rollback(control::ActionArgs),
    /// Send all traffic to one arm (ends the experiment).
    Promote(control::PromoteArgs),
    /// Write an experiment's training data (requests with feedback, labels or corrections) as JSON Lines to stdout.
    Export(export::ExportArgs),
    /// Read, replace, list, diff or revert the running config.
    #[command(subcommand)]
    Config(control::ConfigCommand),
}

/// Runs the CLI and returns the process exit code.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Scenario(args) => scenario::run(args),
        Command::Check(args) => check::run(args),
        Command::Analyze(args) => analyze::run(args),
        Command::Status(args) => status::run(args),
        Command::Pause(args) => control::action("pause", args),
        Command::Resume(args) => control::action("resume", args),
        Command::Rollback(args) => control::action("rollback", args),
        Command::Promote(args) => control::promote(args),
        Command::Config(cmd) => control::config(cmd),
        Command::Export(args) => export::run(args),
    }
}

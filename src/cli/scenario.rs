//! `abgate scenario FILE`: run a reproducible scenario (see `load/scenarios/`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::lab::scenario::{self, Overrides, Scenario};

#[derive(clap::Args)]
pub struct ScenarioArgs {
    /// A scenario file, e.g. load/scenarios/bad-canary.yaml.
    file: PathBuf,
    /// Override the scenario's request rate (req/s).
    #[arg(long)]
    rate: Option<f64>,
    /// Override the scenario's longest duration.
    #[arg(long, value_parser = crate::config::parse_duration)]
    duration: Option<Duration>,
}

pub fn run(args: ScenarioArgs) -> ExitCode {
    let s = match Scenario::load(&args.file) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    run_scenario(
        &s,
        Overrides {
            rate: args.rate,
            duration: args.duration,
        },
        true,
        false,
        &[
            "next: run it yourself with `abgate serve --config config/example.yaml`, watch `abgate status --watch`,".to_string(),
            "      scrape /metrics on the admin listener, and re-check any decision with `abgate analyze`.".to_string(),
        ],
    )
}

/// Runs a parsed scenario and prints its outcome; with `enforce_expectation`,
/// exits 1 when the scenario's `expect` did not happen.
/// `next_steps` are printed last: what a reader can try after this run.
pub fn run_scenario(
    s: &Scenario,
    o: Overrides,
    enforce_expectation: bool,
    keep_serving: bool,
    next_steps: &[String],
) -> ExitCode {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let state_dir = std::env::temp_dir().join(format!("abgate-scenario-{}", std::process::id()));
    let result = rt.block_on(async {
        tokio::select! {
            r = scenario::run_serving(s, &o, &state_dir) => Some(r),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    let (result, serving) = match result {
        None => (None, None),
        Some(Err(e)) => (Some(Err(e)), None),
        Some(Ok((outcome, serving))) => (Some(outcome), Some(serving)),
    };
    let code = report(result, enforce_expectation, next_steps);
    if let Some(serving) = serving {
        if keep_serving && code == ExitCode::SUCCESS {
            println!(
                "\nabgate is still serving the web page: http://{}/ui  (Ctrl-C to stop)",
                serving.admin_addr()
            );
            let _ = rt.block_on(tokio::signal::ctrl_c());
            println!("stopping");
        }
        rt.block_on(serving.stop());
    }
    // Dropping the runtime stops every task: backends, proxy, load.
    drop(rt);
    let _ = std::fs::remove_dir_all(&state_dir);
    code
}

/// Prints the outcome; the exit code it calls for.
fn report(
    result: Option<Result<scenario::Outcome, scenario::ScenarioError>>,
    enforce_expectation: bool,
    next_steps: &[String],
) -> ExitCode {
    match result {
        None => {
            println!("\ninterrupted; everything stopped");
            ExitCode::from(130)
        }
        Some(Err(e)) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
        Some(Ok(out)) => {
            println!();
            match &out.decision {
                Some(d) => println!(
                    "decision: {d} after {:.1}s and {} canary requests{}",
                    out.elapsed.as_secs_f64(),
                    out.canary_requests,
                    out.after_start.map_or(String::new(), |t| format!(
                        " ({:.3}s after the canary's start)",
                        t.as_secs_f64()
                    ))
                ),
                None => println!(
                    "no final decision after {:.1}s ({} canary requests): still running",
                    out.elapsed.as_secs_f64(),
                    out.canary_requests
                ),
            }
            println!("  why: {}", out.summary);
            if !out.inference.is_empty() {
                println!("per arm:");
                for line in &out.inference {
                    println!("{line}");
                }
            }
            for line in next_steps {
                println!("{line}");
            }
            match out.met_expectation {
                Some(false) if enforce_expectation => {
                    println!("expected outcome NOT met");
                    ExitCode::from(1)
                }
                _ => ExitCode::SUCCESS,
            }
        }
    }
}

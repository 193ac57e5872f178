//! `abgate demo`: the product in one process and under a minute, as one of two
//! embedded scenarios (`load/scenarios/demo-bad-canary.yaml`, `good-canary.yaml`).

use std::process::ExitCode;
use std::time::Duration;

use crate::scenario::{Overrides, Scenario};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CanaryQuality {
    /// 10× the stable error rate and slower: expect a rollback.
    Bad,
    /// As good as stable: expect the canary to walk every step and be promoted.
    Good,
}

#[derive(clap::Args)]
pub struct DemoArgs {
    /// What the canary is like.
    #[arg(long, value_enum, default_value = "bad")]
    canary: CanaryQuality,
    /// Longest the demo runs (it ends early once the controller decides).
    #[arg(long, default_value = "50s", value_parser = crate::config::parse_duration)]
    duration: Duration,
    /// Requests per second sent through abgate.
    #[arg(long, default_value_t = 400.0)]
    rate: f64,
}

const BAD: &str = include_str!("../../load/scenarios/demo-bad-canary.yaml");
const GOOD: &str = include_str!("../../load/scenarios/good-canary.yaml");

pub fn run(args: DemoArgs) -> ExitCode {
    let text = match args.canary {
        CanaryQuality::Bad => BAD,
        CanaryQuality::Good => GOOD,
    };
    let scenario = match Scenario::parse(text) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("embedded demo scenario is invalid: {e}");
            return ExitCode::from(1);
        }
    };
    super::scenario::run_scenario(
        &scenario,
        Overrides {
            rate: Some(args.rate),
            duration: Some(args.duration),
        },
        false,
    )
}

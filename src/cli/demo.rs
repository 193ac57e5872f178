//! `abgate demo`: the product in one process and under a minute, as one of
//! three embedded scenarios (`load/scenarios/demo-inference-canary.yaml`, an
//! LLM canary that truncates streams and costs more; `good-canary.yaml`;
//! `shadow-slow-candidate.yaml`, a slow candidate caught in its shadow step).

use std::process::ExitCode;
use std::time::Duration;

use crate::lab::scenario::{Overrides, Scenario};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CanaryQuality {
    /// An LLM canary that cuts 5% of its streams short and costs more: expect
    /// a rollback on `stream_incomplete`.
    Bad,
    /// As good as stable: expect the canary to walk every step and be promoted.
    Good,
    /// 40% slower than stable, behind a shadow step: expect a rollback on
    /// mirrored copies alone, with no user ever served by the candidate.
    Shadow,
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

const BAD: &str = include_str!("../../load/scenarios/demo-inference-canary.yaml");
const GOOD: &str = include_str!("../../load/scenarios/good-canary.yaml");
const SHADOW: &str = include_str!("../../load/scenarios/shadow-slow-candidate.yaml");

pub fn run(args: DemoArgs) -> ExitCode {
    let text = match args.canary {
        CanaryQuality::Bad => BAD,
        CanaryQuality::Good => GOOD,
        CanaryQuality::Shadow => SHADOW,
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
        // On a terminal the page stays up after the decision, to look at;
        // piped (CI, scripts) the demo ends with its decision, as always.
        std::io::IsTerminal::is_terminal(&std::io::stdout()),
        &next_steps(args.canary),
    )
}

/// The demo's last lines: where a newcomer goes from here. The admin address is
/// the one `config/example.yaml` listens on, since the demo's own listeners are
/// gone once it ends.
fn next_steps(shown: CanaryQuality) -> Vec<String> {
    let stories = [
        (
            CanaryQuality::Bad,
            "a flawed LLM canary rolled back:\n    cargo run --release -- demo",
        ),
        (
            CanaryQuality::Good,
            "a healthy canary promoted step by step:\n    cargo run --release -- demo --canary good",
        ),
        (
            CanaryQuality::Shadow,
            "a slow candidate caught in shadow, before any user sees it:\n    cargo run --release -- demo --canary shadow",
        ),
    ];
    let mut lines = vec![String::new(), "what next:".to_string()];
    lines.extend(
        stories
            .iter()
            .filter(|(q, _)| *q != shown)
            .map(|(_, story)| format!("  another story, {story}")),
    );
    lines.extend(
        [
            "  run it yourself (mock backends as in the README, then):",
            "    ./target/release/abgate serve --config config/example.yaml",
            "  admin API:    http://127.0.0.1:9901/v1/experiments",
            "  web page:     http://127.0.0.1:9901/ui",
            "  live status:  ./target/release/abgate status --watch",
            "  metrics:      curl -s http://127.0.0.1:9901/metrics | grep abgate_",
            "  scenarios:    ./target/release/abgate scenario load/scenarios/ab-better-treatment.yaml",
        ]
        .map(String::from),
    );
    lines
}

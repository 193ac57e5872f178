//! `abgate-load`: bounded open/closed-loop load against abgate or the mock backend.
//!
//! ```text
//! abgate-load --target http://127.0.0.1:8080 --rate 1000 --duration 10s --max-requests 20000 \
//!             --kind chat --users 10000 --feedback 0.2 --seed 1 --json
//! ```

use std::time::Duration;

use abgate::lab::loadgen::{
    parse_duration_flag, run_with_progress, FeedbackSpec, FeedbackValue, LoadMode, LoadProgress,
    LoadSpec, Protocol, RequestKind,
};
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "abgate-load",
    about = "Bounded load driver: open loop with --rate (latency from scheduled send time), \
closed loop without it"
)]
struct Args {
    /// Base URL of abgate or a mock backend; loopback only.
    #[arg(long, env = "ABGATE_LOAD_TARGET")]
    target: String,
    /// Request path (default depends on --kind).
    #[arg(long)]
    path: Option<String>,
    /// chat | chat-stream | kserve | predict.
    #[arg(long, default_value = "chat")]
    kind: RequestKind,
    /// Model name in request bodies and the KServe path.
    #[arg(long, default_value = "mock")]
    model: String,
    /// Open loop at this many requests per second; omit for closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Closed loop: workers; open loop: concurrent send slots [default: 16 closed, 256 open].
    #[arg(long)]
    connections: Option<usize>,
    /// Open loop: cap on queued + active requests; excess counts as `overloaded`.
    #[arg(long, default_value_t = 4096)]
    max_in_flight: usize,
    /// Use h2c (HTTP/2 with prior knowledge) instead of HTTP/1.1.
    #[arg(long)]
    h2: bool,
    /// Scheduling time bound, e.g. 10s, 500ms, 2m.
    #[arg(long, default_value = "10s", value_parser = parse_duration_flag)]
    duration: Duration,
    /// Request count bound.
    #[arg(long, default_value_t = 20_000)]
    max_requests: u64,
    /// Per-request timeout, e.g. 5s.
    #[arg(long, default_value = "10s", value_parser = parse_duration_flag)]
    timeout: Duration,
    /// Simulated user population (unit keys user-0 .. user-N-1).
    #[arg(long, default_value_t = 10_000)]
    users: u64,
    /// Header carrying the unit key.
    #[arg(long, default_value = "x-user-id")]
    unit_header: String,
    /// Fraction of successful tokened responses that get feedback (0 = off).
    #[arg(long, default_value_t = 0.0)]
    feedback: f64,
    /// Feedback metric name.
    #[arg(long, default_value = "accepted")]
    feedback_metric: String,
    /// Feedback URL [default: TARGET/_abgate/v1/feedback].
    #[arg(long)]
    feedback_url: Option<String>,
    /// Post x-mock-reward instead of x-mock-outcome as the value.
    #[arg(long)]
    feedback_reward: bool,
    /// Seed for unit keys and feedback sampling.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the report as JSON instead of a human summary.
    #[arg(long)]
    json: bool,
    /// Print live progress to stderr once per second.
    #[arg(long)]
    progress: bool,
}

fn spec_from(args: &Args) -> LoadSpec {
    let mode = match args.rate {
        Some(rate_per_s) => LoadMode::OpenLoop {
            rate_per_s,
            connections: args.connections.unwrap_or(256),
            max_in_flight: args.max_in_flight,
        },
        None => LoadMode::ClosedLoop {
            connections: args.connections.unwrap_or(16),
        },
    };
    LoadSpec {
        target: args.target.clone(),
        path: args.path.clone(),
        kind: args.kind,
        model: args.model.clone(),
        mode,
        protocol: if args.h2 {
            Protocol::H2
        } else {
            Protocol::Http1
        },
        max_requests: args.max_requests,
        max_duration: args.duration,
        request_timeout: args.timeout,
        users: args.users,
        unit_header: args.unit_header.clone(),
        feedback: FeedbackSpec {
            fraction: args.feedback,
            metric: args.feedback_metric.clone(),
            url: args.feedback_url.clone(),
            value: if args.feedback_reward {
                FeedbackValue::Reward
            } else {
                FeedbackValue::Outcome
            },
            ..FeedbackSpec::default()
        },
        seed: args.seed,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let spec = spec_from(&args);
    let (tx, mut rx) = tokio::sync::watch::channel(LoadProgress::default());
    let printer = args.progress.then(|| {
        tokio::spawn(async move {
            let mut last_print = Duration::ZERO;
            while rx.changed().await.is_ok() {
                let p = rx.borrow_and_update().clone();
                if p.elapsed >= last_print + Duration::from_secs(1) || p.done {
                    last_print = p.elapsed;
                    eprintln!(
                        "[{:>6.1}s] sent {} completed {} ok {} errors {} in-flight {}",
                        p.elapsed.as_secs_f64(),
                        p.sent,
                        p.completed,
                        p.ok,
                        p.errors,
                        p.in_flight
                    );
                }
            }
        })
    });
    let report = run_with_progress(spec, tx).await?;
    if let Some(printer) = printer {
        // The sender is gone, so the printer's loop has ended or is about to.
        let _ = printer.await;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}

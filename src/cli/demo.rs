//! `abgate demo`: the product in one process and under a minute.
//!
//! Starts two mock model backends (stable, and a canary that is flawed by
//! default or healthy with `--canary good`), abgate with a canary policy, and the
//! load driver posting feedback; shows the controller at work live, then the
//! decision and what it took. Everything binds 127.0.0.1 on free ports and stops
//! when the demo ends or on Ctrl-C.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::loadgen::{self, LoadMode, LoadProgress, LoadSpec, RequestKind};
use crate::mock::{MockServer, MockSpec};
use crate::server::{self, StartOptions};

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
    #[arg(long, default_value = "50s", value_parser = parse_duration)]
    duration: Duration,
    /// Requests per second sent through abgate.
    #[arg(long, default_value_t = 400.0)]
    rate: f64,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::config::parse_duration(s)
}

const STABLE: &str = "name=stable,latency=lognormal:20:0.3,error_rate=0.01,outcome_p=0.30,seed=11";
const BAD: &str = "name=canary,latency=lognormal:26:0.3,error_rate=0.10,outcome_p=0.30,seed=12";
const GOOD: &str = "name=canary,latency=lognormal:20:0.3,error_rate=0.01,outcome_p=0.33,seed=13";

fn config(stable: &str, canary: &str, state_dir: &std::path::Path) -> String {
    format!(
        r#"# abgate demo: a canary ramped 10% -> 50% -> 100%, judged every 500ms.
listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
state_dir: {state}
backends:
  stable: {{ url: "{stable}" }}
  canary: {{ url: "{canary}" }}
experiments:
  - name: demo
    kind: canary
    baseline: stable
    unit: {{ header: x-user-id }}
    steps: [10, 50, 100]
    step: {{ min_samples: 300, min_duration: 4s }}
    metrics:
      - {{ name: accepted, source: feedback, type: binary }}
    analysis:
      interval: 500ms
      alpha: 0.05
      design_samples: 5000
      min_units_per_arm: 100
      min_events: 20
      guardrails:
        - {{ metric: error, max_absolute_increase: 0.03 }}
        - {{ metric: latency_ms, max_relative_increase: 0.15 }}
    on_success: promote
    on_failure: rollback
    max_duration: 10m
    arms:
      - {{ name: stable, backend: stable, weight: 100 }}
      - {{ name: canary, backend: canary, weight: 0 }}
"#,
        state = state_dir.display()
    )
}

pub fn run(args: DemoArgs) -> ExitCode {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let state_dir = std::env::temp_dir().join(format!("abgate-demo-{}", std::process::id()));
    let code = rt.block_on(async {
        tokio::select! {
            code = demo(&args, &state_dir) => code,
            _ = tokio::signal::ctrl_c() => {
                println!("\ninterrupted; stopping everything");
                ExitCode::from(130)
            }
        }
    });
    // Dropping the runtime stops every task: backends, proxy, load.
    drop(rt);
    let _ = std::fs::remove_dir_all(&state_dir);
    code
}

async fn demo(args: &DemoArgs, state_dir: &std::path::Path) -> ExitCode {
    let _ = std::fs::remove_dir_all(state_dir);
    let start_mock = |spec: &str| {
        let spec: Result<MockSpec, _> = spec.parse();
        async move {
            let spec = spec.map_err(|e| e.to_string())?;
            MockServer::start(spec, "127.0.0.1:0".parse().expect("literal address"))
                .await
                .map_err(|e| e.to_string())
        }
    };
    let canary_spec = if args.canary == CanaryQuality::Bad {
        BAD
    } else {
        GOOD
    };
    let (stable, canary) = match (start_mock(STABLE).await, start_mock(canary_spec).await) {
        (Ok(s), Ok(c)) => (s, c),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("cannot start the mock backends: {e}");
            return ExitCode::from(1);
        }
    };
    let server = match server::start(StartOptions {
        config_text: config(&stable.url(), &canary.url(), state_dir),
        config_path: None,
        watch_file: false,
        admin_token: None,
        token_keys: None,
    })
    .await
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot start abgate: {e}");
            return ExitCode::from(1);
        }
    };
    println!(
        "abgate demo: {} canary, {} req/s for up to {:?}",
        if args.canary == CanaryQuality::Bad {
            "a flawed (10x errors, +30% latency)"
        } else {
            "a healthy"
        },
        args.rate,
        args.duration
    );
    println!(
        "  proxy http://{}  admin http://{}  (try: abgate status --admin http://{} --watch)",
        server.data_addr, server.admin_addr, server.admin_addr
    );

    let mut spec = LoadSpec::new(format!("http://{}", server.data_addr));
    spec.kind = RequestKind::Chat;
    spec.mode = LoadMode::OpenLoop {
        rate_per_s: args.rate,
        connections: 64,
        max_in_flight: 2048,
    };
    spec.max_duration = args.duration;
    spec.max_requests = (args.rate * args.duration.as_secs_f64()).ceil() as u64;
    spec.users = 20_000;
    spec.feedback.fraction = 0.2;
    spec.seed = 2026;
    let (progress_tx, progress_rx) = tokio::sync::watch::channel(LoadProgress::default());
    let load = tokio::spawn(loadgen::run_with_progress(spec, progress_tx));

    let tty = std::io::stdout().is_terminal();
    let started = Instant::now();
    let mut last_line = Instant::now() - Duration::from_secs(10);
    let outcome = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let view = server
            .control
            .experiment_view("demo")
            .await
            .unwrap_or(Value::Null);
        let state = view["state"].as_str().unwrap_or("?").to_string();
        let sent = progress_rx.borrow().completed;
        if tty {
            print!("\x1b[2J\x1b[H{}", render(&view, started.elapsed(), sent));
        } else if last_line.elapsed() >= Duration::from_secs(2) {
            println!("{}", one_line(&view, started.elapsed()));
            last_line = Instant::now();
        }
        if state != "running" {
            break Some(view);
        }
        if started.elapsed() >= args.duration || load.is_finished() {
            break None;
        }
    };
    load.abort();
    let code = match outcome {
        Some(view) => {
            let d = &view["last_decision"];
            let canary_requests = canary.requests_served();
            println!();
            println!(
                "decision: {} after {:.1}s and {} canary requests",
                d["kind"].as_str().unwrap_or("?"),
                started.elapsed().as_secs_f64(),
                canary_requests
            );
            println!("  why: {}", d["reason"]["summary"].as_str().unwrap_or(""));
            ExitCode::SUCCESS
        }
        None => {
            let view = server
                .control
                .experiment_view("demo")
                .await
                .unwrap_or(Value::Null);
            println!();
            println!(
                "no final decision within {:?}: still ramping ({})",
                args.duration,
                view["analysis"]["explain"]
                    .as_str()
                    .unwrap_or("collecting evidence")
            );
            println!("  run longer with --duration 2m, or faster with --rate 1000");
            ExitCode::SUCCESS
        }
    };
    println!("next: run it yourself with `abgate serve --config config/example.yaml`, watch `abgate status --watch`,");
    println!("      scrape /metrics on the admin listener, and re-check any decision with `abgate analyze`.");
    server.shutdown().await;
    let _ = stable.shutdown().await;
    let _ = canary.shutdown().await;
    code
}

fn pct(v: &Value) -> String {
    v.as_f64()
        .map_or("-".into(), |x| format!("{:.2}%", x * 100.0))
}

fn ms(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.1}"))
}

fn one_line(view: &Value, elapsed: Duration) -> String {
    let arms: Vec<String> = view["arms"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            format!(
                "{} {}% n={} err={} p50={}ms",
                a["name"].as_str().unwrap_or("?"),
                a["weight"],
                a["assigned"]["requests"],
                pct(&a["assigned"]["error_rate"]),
                ms(&a["assigned"]["latency_ms"]["p50"])
            )
        })
        .collect();
    format!(
        "[{:>5.1}s] {} | {} | {}",
        elapsed.as_secs_f64(),
        view["state"].as_str().unwrap_or("?"),
        arms.join(" | "),
        view["analysis"]["explain"].as_str().unwrap_or("starting")
    )
}

fn render(view: &Value, elapsed: Duration, completed: u64) -> String {
    let mut out = format!(
        "abgate demo  t={:.1}s  requests={}  state={}\n\n",
        elapsed.as_secs_f64(),
        completed,
        view["state"].as_str().unwrap_or("?")
    );
    out.push_str(&super::status::render(std::slice::from_ref(view)));
    out.push_str("\n  per-arm metrics (assigned traffic):\n");
    for a in view["arms"].as_array().into_iter().flatten() {
        let m = &a["metrics"];
        out.push_str(&format!(
            "    {:<8} error {:>7}  latency mean {:>6} ms  accepted {:>7} (n={})\n",
            a["name"].as_str().unwrap_or("?"),
            pct(&m["error"]["rate"]),
            ms(&m["latency_ms"]["mean"]),
            pct(&m["accepted"]["rate"]),
            m["accepted"]["n"]
        ));
    }
    if let Some(ev) = view["analysis"]["details"]["guardrails"].as_array() {
        out.push_str("\n  guardrails (non-inferiority):\n");
        for g in ev {
            out.push_str(&format!(
                "    {:<11} estimate {:>9.4}  CS [{:.4}, {:.4}]  p={:.4}\n",
                g["metric"].as_str().unwrap_or("?"),
                g["estimate"].as_f64().unwrap_or(f64::NAN),
                g["ci"][0].as_f64().unwrap_or(f64::NAN),
                g["ci"][1].as_f64().unwrap_or(f64::NAN),
                g["p_value"].as_f64().unwrap_or(f64::NAN)
            ));
        }
    }
    if let Some(e) = view["analysis"]["details"]
        .get("evidence")
        .filter(|e| e.is_object())
    {
        out.push_str(&format!(
            "\n  evidence: {} estimate {:.4} CS [{:.4}, {:.4}] p={:.4}\n",
            e["metric"].as_str().unwrap_or("?"),
            e["estimate"].as_f64().unwrap_or(f64::NAN),
            e["ci"][0].as_f64().unwrap_or(f64::NAN),
            e["ci"][1].as_f64().unwrap_or(f64::NAN),
            e["p_value"].as_f64().unwrap_or(f64::NAN)
        ));
    }
    out
}

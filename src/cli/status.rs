//! `abgate status [NAME] [--watch]`: a compact table of experiments and arms.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use http::Method;
use serde_json::Value;

use super::remote::{block_on, Remote, RemoteArgs};
use crate::stats::ComparisonView;

#[derive(clap::Args)]
pub struct StatusArgs {
    /// One experiment (default: all).
    name: Option<String>,
    /// Refresh every second until interrupted.
    #[arg(long)]
    watch: bool,
    /// With --watch: stop after this many refreshes.
    #[arg(long, requires = "watch")]
    count: Option<u64>,
    #[command(flatten)]
    remote: RemoteArgs,
}

pub fn run(args: StatusArgs) -> ExitCode {
    block_on(async move {
        let remote = Remote::new(&args.remote);
        let path = match &args.name {
            Some(n) => format!("/v1/experiments/{n}"),
            None => "/v1/experiments".to_string(),
        };
        let tty = std::io::stdout().is_terminal();
        let mut shown = 0u64;
        loop {
            let reply = match remote.call(Method::GET, &path, None, None).await {
                Ok(r) => r,
                Err(f) => return f.exit(),
            };
            let experiments: Vec<Value> = match &args.name {
                Some(_) => vec![reply.body],
                None => reply.body["experiments"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            };
            if args.watch && tty {
                // Redraw in place.
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", render(&experiments));
            shown += 1;
            if !args.watch || args.count.is_some_and(|c| shown >= c) {
                return ExitCode::SUCCESS;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

fn num(v: &Value, digits: usize) -> String {
    v.as_f64()
        .map_or_else(|| "-".to_string(), |x| format!("{x:.digits$}"))
}

/// Renders experiments as aligned text tables.
pub fn render(experiments: &[Value]) -> String {
    let mut out = String::new();
    if experiments.is_empty() {
        out.push_str("no experiments\n");
    }
    for e in experiments {
        out.push_str(&format!(
            "{}  state={}  table=v{}  config=v{}\n",
            e["name"].as_str().unwrap_or("?"),
            e["state"].as_str().unwrap_or("?"),
            e["table_version"],
            e["config_version"]
        ));
        let mut rows = vec![[
            "ARM".to_string(),
            "BACKEND".into(),
            "WEIGHT".into(),
            "REQUESTS".into(),
            "ERRORS".into(),
            "P50 MS".into(),
            "P99 MS".into(),
        ]];
        for a in e["arms"].as_array().into_iter().flatten() {
            let s = &a["assigned"];
            let rate = s["error_rate"]
                .as_f64()
                .map_or("-".to_string(), |r| format!("{:.2}%", r * 100.0));
            rows.push([
                format!(
                    "{}{}",
                    a["name"].as_str().unwrap_or("?"),
                    if a["baseline"] == true {
                        " (baseline)"
                    } else {
                        ""
                    }
                ),
                a["backend"].as_str().unwrap_or("?").to_string(),
                format!(
                    "{}%",
                    num(&a["weight"], 2)
                        .trim_end_matches('0')
                        .trim_end_matches('.')
                ),
                s["requests"].as_u64().unwrap_or(0).to_string(),
                rate,
                num(&s["latency_ms"]["p50"], 1),
                num(&s["latency_ms"]["p99"], 1),
            ]);
        }
        let widths: Vec<usize> = (0..7)
            .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
            .collect();
        for r in &rows {
            let line: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            out.push_str(&format!("  {}\n", line.join("  ").trim_end()));
        }
        if let Some(a) = e["analysis"].as_object() {
            if let Some(step) = a.get("step").and_then(|s| s.as_u64()) {
                let steps = a
                    .get("steps")
                    .and_then(|s| s.as_array())
                    .map_or(0, |s| s.len());
                out.push_str(&format!("  step {step}/{steps}\n"));
            }
            // The explanation starts with the verdict in words.
            if let Some(explain) = a.get("explain").and_then(|x| x.as_str()) {
                out.push_str(&format!("  verdict: {explain}\n"));
            }
            let views = a.get("comparisons").and_then(|c| c.as_array());
            for view in views.into_iter().flatten() {
                if let Ok(view) = serde_json::from_value::<ComparisonView>(view.clone()) {
                    out.push_str(&format!("    {}\n", view.describe()));
                }
            }
        }
        if let Some(d) = e["last_decision"].as_object() {
            out.push_str(&format!(
                "  last decision: {} by {} ({})\n",
                d.get("kind").and_then(|v| v.as_str()).unwrap_or("?"),
                d.get("actor").and_then(|v| v.as_str()).unwrap_or("?"),
                d.get("reason")
                    .and_then(|r| r["summary"].as_str())
                    .unwrap_or("")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{ComparisonEvidence, EffectScale, TestKind};

    #[test]
    fn status_shows_the_verdict_once_and_every_comparison_behind_it() {
        let view = ComparisonView {
            role: "guardrail".into(),
            evidence: ComparisonEvidence {
                metric: "error".into(),
                arm: "canary".into(),
                test: TestKind::Harm,
                effect: EffectScale::RateRatio,
                estimate: 2.4,
                ci: [0.8, 7.1],
                ci_alpha: 0.025,
                p_value: 0.31,
                threshold: 0.025,
                units_arm: 272,
                units_baseline: 2928,
                events_arm: 6,
                events_baseline: 27,
            },
            ready: true,
            non_inferior: Some(false),
        };
        let experiment = serde_json::json!({
            "name": "exp", "state": "running", "table_version": 2, "config_version": 1,
            "arms": [],
            "analysis": {
                "verdict": "continue",
                "explain": "continue: no boundary crossed yet",
                "comparisons": [view],
            },
        });
        let text = render(&[experiment]);
        assert!(
            text.contains("  verdict: continue: no boundary crossed yet\n"),
            "{text}"
        );
        assert!(!text.contains("continue: continue"), "{text}");
        let line = text
            .lines()
            .find(|l| l.contains("guardrail error on canary"))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(line.contains("2.40"), "{line}");
        assert!(line.contains("272 canary units"), "{line}");
        assert!(line.ends_with("not yet shown non-inferior"), "{line}");
    }
}

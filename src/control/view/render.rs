//! The experiment view as text: the table `abgate status` prints and the
//! scenario runner redraws. Pure formatting; no I/O.

use serde_json::Value;

use super::{decision_summary, ExperimentView};

/// A percentage with at most two decimals and no trailing zeros.
fn trim(v: f64) -> String {
    num(Some(v), 2)
        .trim_end_matches('0')
        .trim_end_matches('.')
        .to_string()
}

fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x:.digits$}"))
}

/// One line for a fleet replica, from `/readyz`'s `fleet` object: who it
/// is, its role, the store revision its table reflects and how far behind it
/// is, and how long the last change it followed took to reach its table.
pub fn render_fleet(fleet: &Value) -> String {
    let n = |k: &str| fleet[k].as_u64().unwrap_or(0);
    let mut line = format!(
        "fleet: replica {} {}, revision {} of {} (lag {} ms), last change followed {} ms after its commit",
        fleet["replica"].as_str().unwrap_or("?"),
        fleet["role"].as_str().unwrap_or("?"),
        n("revision"),
        n("store_revision"),
        n("lag_ms"),
        n("last_propagation_ms"),
    );
    if fleet["store_reachable"] == false {
        line.push_str("; the store cannot be reached: weights frozen, changes refused");
    }
    line.push('\n');
    line
}

/// Renders experiments as aligned text tables: one header line per experiment,
/// a row per arm, then the canary step, the verdict with every comparison behind
/// it, and the last decision.
pub fn render_status(experiments: &[ExperimentView]) -> String {
    let mut out = String::new();
    if experiments.is_empty() {
        out.push_str("no experiments\n");
    }
    for e in experiments {
        out.push_str(&format!(
            "{}  state={}  table=v{}  config=v{}\n",
            e.name, e.state, e.table_version, e.config_version
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
        for a in &e.arms {
            let s = a.assigned.as_ref();
            let rate = s
                .and_then(|s| s.error_rate)
                .map_or("-".to_string(), |r| format!("{:.2}%", r * 100.0));
            rows.push([
                format!(
                    "{}{}",
                    a.name,
                    if a.baseline {
                        " (baseline)"
                    } else if a.role == super::SHADOW {
                        " (shadow)"
                    } else {
                        ""
                    }
                ),
                match &a.model {
                    // The model the backend is sent, next to it.
                    Some(m) => format!("{} ({m})", a.backend),
                    None => a.backend.clone(),
                },
                // A shadow has no weight: its column shows the share copied to it.
                match a.mirror_percent {
                    Some(p) => format!("copy {}%", trim(p)),
                    None => format!("{}%", trim(a.weight)),
                },
                s.map_or(0, |s| s.requests).to_string(),
                rate,
                num(s.and_then(|s| s.latency_ms.p50), 1),
                num(s.and_then(|s| s.latency_ms.p99), 1),
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
        out.push_str(&inference_rows(e));
        out.push_str(&paired_rows(e));
        if let Some(j) = e.analysis.as_ref().and_then(|a| a.judgement()) {
            if let Some(step) = j.step {
                out.push_str(&format!("  step {step}/{}", j.steps.len()));
                match &j.shadow {
                    Some(s) => out.push_str(&format!(
                        " (shadow: {}% of requests copied to {}, {} pairs)\n",
                        s.mirror_percent, s.arm, s.pairs
                    )),
                    None => out.push('\n'),
                }
            }
            // The explanation starts with the verdict in words.
            out.push_str(&format!("  verdict: {}\n", j.explain));
            for view in &j.comparisons {
                out.push_str(&format!("    {}\n", view.describe()));
            }
            for g in j.shadow.iter().flat_map(|s| &s.guardrails) {
                out.push_str(&format!("    {}\n", shadow_guardrail(g)));
            }
        }
        if let Some(w) = &e.watch {
            out.push_str(&watch_rows(w));
        }
        if let Some(c) = &e.capture {
            out.push_str(&capture_row(c));
        }
        if let Some(d) = &e.last_decision {
            out.push_str(&format!(
                "  last decision: {} by {} ({})\n",
                d.kind,
                d.actor,
                decision_summary(d)
            ));
        }
    }
    out
}

/// The capture, e.g. `capture: 1% of requests, 2,887 examples written
/// (1.2 MiB stored of 1024 MiB), 0 evicted, 0 dropped`.
fn capture_row(c: &serde_json::Value) -> String {
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let mib = |v: &serde_json::Value| n(v) as f64 / (1024.0 * 1024.0);
    let d = &c["dropped"];
    format!(
        "  capture: {}% of requests, {} examples written ({:.1} MiB stored of {:.0} MiB), {} evicted, {} dropped (queue full {}, too large {}, write failed {})\n",
        c["percent"].as_f64().unwrap_or(0.0),
        n(&c["written"]),
        mib(&c["stored_bytes"]),
        mib(&c["max_total"]),
        n(&c["evicted"]),
        n(&d["queue_full"]) + n(&d["too_large"]) + n(&d["write_failed"]),
        n(&d["queue_full"]),
        n(&d["too_large"]),
        n(&d["write_failed"]),
    )
}

/// The drift watch: its status and arm, the reference, and a line per
/// metric, e.g. `error (increase): ok, e=1.8 of 2592000, reference 0.0100
/// over 1500, recent 0.0120 over 600`.
fn watch_rows(w: &serde_json::Value) -> String {
    let status = w["status"].as_str().unwrap_or("-");
    let mut out = match w["arm"].as_str() {
        Some(arm) => {
            let r = &w["reference"];
            let source = match r["source"].as_str() {
                Some("promoted") => "the promoted arm's evidence window",
                _ => "the first period of watching",
            };
            format!("  watch: {status} on {arm}, reference: {source}\n")
        }
        None => format!("  watch: {status} ({})\n", w["note"].as_str().unwrap_or("")),
    };
    let mean = |v: &serde_json::Value| {
        v["mean"]
            .as_f64()
            .map_or("-".to_string(), |m| format!("{m:.4} over {}", v["n"]))
    };
    for m in w["metrics"].as_array().into_iter().flatten() {
        let name = m["metric"].as_str().unwrap_or("?");
        let harm = m["harm"].as_str().unwrap_or("either");
        let line = match m["state"].as_str() {
            Some(state @ ("ok" | "drift")) => format!(
                "{name} ({harm}): {state}, e={} of {}, reference {}, recent {}",
                num(m["statistic"].as_f64(), 1),
                num(m["threshold"].as_f64(), 0),
                mean(&m["reference"]),
                mean(&m["recent"]),
            ),
            Some(state) => format!(
                "{name} ({harm}): {state}{}",
                m["note"]
                    .as_str()
                    .map_or(String::new(), |n| format!(" ({n})"))
            ),
            None => format!("{name}: -"),
        };
        out.push_str(&format!("    {line}\n"));
    }
    out
}

/// One guardrail of a shadow step, e.g. `latency_ms on pairs: harm, +32.1%
/// [+20.3%, +44.0%], harm p=1.2e-5 ≤ 0.025, 412 pairs`.
fn shadow_guardrail(g: &crate::stats::ShadowGuardrail) -> String {
    use crate::stats::GuardrailStatus as S;
    let status = match g.status {
        S::Pending => "pending",
        S::NonInferior => "non-inferior",
        S::Harm => "harm",
        S::LiveOnly => {
            return format!(
                "{}: not carried by the pairs; judged from the first live step",
                g.metric
            )
        }
    };
    let estimate = g.estimate.as_ref().map_or(String::new(), |t| {
        let pct = t.scale == crate::stats::Scale::Relative;
        let f = |v: f64| {
            if pct {
                format!("{:+.1}%", v * 100.0)
            } else {
                format!("{v:+.4}")
            }
        };
        format!(", {} [{}, {}]", f(t.estimate), f(t.ci[0]), f(t.ci[1]))
    });
    format!(
        "{} on pairs: {status}{estimate}, harm p={:.2e} (≤ {:.3}), non-inferiority p={:.2e} (≤ {:.3}), {} pairs",
        g.metric, g.harm_p, g.harm_threshold, g.non_inferiority_p, g.non_inferiority_threshold, g.pairs
    )
}

/// Each shadow arm's pairs with its primary twins: how many, and the mean
/// per-pair latency difference and discordant errors.
fn paired_rows(e: &ExperimentView) -> String {
    let mut out = String::new();
    for a in &e.arms {
        let Some(p) = &a.paired else { continue };
        let latency = match p.metrics.get("latency_ms") {
            Some(m) => match (&m.test, m.mean_difference) {
                (Some(t), _) => format!(
                    "{:+.1} ms [{:+.1}, {:+.1}] p={:.3}",
                    t.estimate, t.ci[0], t.ci[1], t.p_value
                ),
                (None, Some(d)) => format!("{d:+.1} ms"),
                (None, None) => "-".to_string(),
            },
            None => "-".to_string(),
        };
        let errors = p.events.get("error").map(|e| e.counts).unwrap_or_default();
        out.push_str(&format!(
            "  {} paired with its primary twins: {} pairs ({} left out), latency {latency} per pair, errors only primary {} / only shadow {}\n",
            a.name, p.pairs, p.dropped, errors.primary_only, errors.shadow_only
        ));
    }
    out
}

/// The response scanner's metrics per arm, as means (tokens and cost per
/// response, TTFT and inter-token gap in ms) and rates; nothing for an
/// experiment whose responses carried none.
fn inference_rows(e: &ExperimentView) -> String {
    use super::MetricView;
    let mean = |a: &super::ArmView, m: &str| match a.metrics.get(m) {
        Some(MetricView::Continuous { mean, .. }) => *mean,
        _ => None,
    };
    let rate = |a: &super::ArmView, m: &str| match a.metrics.get(m) {
        Some(MetricView::Binary { rate, .. }) => *rate,
        _ => None,
    };
    let seen = e.arms.iter().any(|a| {
        ["prompt_tokens", "completion_tokens", "ttft_ms"]
            .iter()
            .any(|m| mean(a, m).is_some())
            || rate(a, "stream_incomplete").is_some()
    });
    if !seen {
        return String::new();
    }
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |r| format!("{:.2}%", r * 100.0));
    let mut rows = vec![[
        "ARM".to_string(),
        "TOKENS IN".into(),
        "TOKENS OUT".into(),
        "COST/REQ".into(),
        "TTFT MS".into(),
        "ITL MS".into(),
        "INCOMPLETE".into(),
        "LENGTH".into(),
    ]];
    for a in &e.arms {
        rows.push([
            a.name.clone(),
            num(mean(a, "prompt_tokens"), 1),
            num(mean(a, "completion_tokens"), 1),
            num(mean(a, "cost"), 6),
            num(mean(a, "ttft_ms"), 1),
            num(mean(a, "itl_ms"), 1),
            pct(rate(a, "stream_incomplete")),
            pct(rate(a, "finish_length")),
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(&format!("  {}\n", line.join("  ").trim_end()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::{AnalysisView, ArmView, Judgement, MetricView};
    use super::*;

    #[test]
    fn a_fleet_replica_shows_its_role_revision_and_lag() {
        let fleet = serde_json::json!({
            "replica": "3f2a", "role": "follower", "store_reachable": true,
            "revision": 40, "store_revision": 41, "lag_ms": 12, "last_propagation_ms": 4,
        });
        assert_eq!(
            render_fleet(&fleet),
            "fleet: replica 3f2a follower, revision 40 of 41 (lag 12 ms), last change followed 4 ms after its commit\n"
        );
        let away =
            serde_json::json!({"replica": "r", "role": "follower", "store_reachable": false});
        assert!(
            render_fleet(&away).contains("cannot be reached"),
            "{}",
            render_fleet(&away)
        );
    }

    #[test]
    fn status_shows_what_the_response_scanner_read_per_arm() {
        let arm = |name: &str, out_tokens: f64, cut: f64| {
            let mut metrics = std::collections::BTreeMap::new();
            let cont = |mean: f64| MetricView::Continuous {
                n: 10,
                mean: Some(mean),
                variance: None,
            };
            metrics.insert("prompt_tokens".to_string(), cont(7.0));
            metrics.insert("completion_tokens".to_string(), cont(out_tokens));
            metrics.insert("cost".to_string(), cont(0.000021));
            metrics.insert("ttft_ms".to_string(), cont(58.25));
            metrics.insert(
                "stream_incomplete".to_string(),
                MetricView::Binary {
                    n: 10,
                    successes: 0,
                    rate: Some(cut),
                },
            );
            ArmView {
                model: None,
                metrics,
                name: name.into(),
                backend: "b".into(),
                weight: 50.0,
                baseline: false,
                role: "primary".into(),
                mirror_percent: None,
                assigned: None,
                forced_requests: 0,
                paired: None,
            }
        };
        let view = ExperimentView {
            name: "chat".into(),
            state: "running".into(),
            baseline: "stable".into(),
            table_version: 1,
            config_version: 1,
            arms: vec![arm("stable", 16.0, 0.0), arm("canary", 20.5, 0.05)],
            removed_arms: vec![],
            last_decision: None,
            analysis: None,
            watch: None,
            capture: None,
        };
        let text = render_status(std::slice::from_ref(&view));
        assert!(text.contains("TOKENS OUT"), "{text}");
        let canary = text
            .lines()
            .find(|l| l.trim_start().starts_with("canary") && l.contains("20.5"))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(
            canary.contains("0.000021") && canary.contains("58.2") && canary.contains("5.00%"),
            "{canary}"
        );
        // A shadow arm is named as one, with the share copied to it.
        let mut shadowed = view.clone();
        let mut cand = arm("candidate", 18.0, 0.0);
        (cand.role, cand.weight, cand.mirror_percent) = ("shadow".into(), 0.0, Some(20.0));
        shadowed.arms.push(cand);
        let text = render_status(std::slice::from_ref(&shadowed));
        let row = text
            .lines()
            .find(|l| l.trim_start().starts_with("candidate (shadow)"))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(row.contains("copy 20%"), "{row}");
        // An experiment without inference traffic shows no such table.
        let mut plain = view;
        plain.arms.iter_mut().for_each(|a| a.metrics.clear());
        assert!(!render_status(&[plain]).contains("TOKENS OUT"));
    }
    use crate::stats::{ComparisonEvidence, ComparisonView, EffectScale, TestKind};

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
        let experiment = ExperimentView {
            name: "exp".into(),
            state: "running".into(),
            baseline: "stable".into(),
            table_version: 2,
            config_version: 1,
            arms: vec![],
            removed_arms: vec![],
            last_decision: None,
            analysis: Some(AnalysisView::Judged(Box::new(Judgement {
                status: "running".into(),
                verdict: "continue".into(),
                explain: "continue: no boundary crossed yet".into(),
                details: None,
                step: None,
                steps: vec![],
                step_units: 0,
                step_minimums_met: false,
                looks: 3,
                comparisons: vec![view],
                samples: Default::default(),
                shadow: None,
            }))),
            watch: None,
            capture: None,
        };
        let text = render_status(&[experiment]);
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

    #[test]
    fn status_shows_the_watch_and_each_metric() {
        let view = ExperimentView {
            name: "exp".into(),
            state: "promoted".into(),
            baseline: "stable".into(),
            table_version: 4,
            config_version: 1,
            arms: vec![],
            removed_arms: vec![],
            last_decision: None,
            analysis: None,
            watch: Some(serde_json::json!({
                "status": "drift", "arm": "canary",
                "reference": {"source": "promoted"},
                "metrics": [
                    {"metric": "error", "harm": "increase", "state": "drift", "statistic": 3.1e6,
                     "threshold": 2592000.0, "reference": {"n": 1500, "mean": 0.01},
                     "recent": {"n": 900, "mean": 0.041}},
                    {"metric": "ttft_ms", "harm": "increase", "state": "unavailable",
                     "note": "the reference has 0 observations; at least 30 are needed"}
                ]
            })),
            capture: None,
        };
        let text = render_status(&[view]);
        assert!(
            text.contains(
                "  watch: drift on canary, reference: the promoted arm's evidence window\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("    error (increase): drift, e=3100000.0 of 2592000, reference 0.0100 over 1500, recent 0.0410 over 900\n"),
            "{text}"
        );
        assert!(
            text.contains("ttft_ms (increase): unavailable (the reference has 0"),
            "{text}"
        );
    }

    #[test]
    fn the_capture_row_says_what_was_kept_and_dropped() {
        let c = serde_json::json!({
            "percent": 1.0, "max_body": 65536, "max_total": 1073741824u64,
            "written": 2887, "evicted": 3, "stored_bytes": 1258291,
            "dropped": {"queue_full": 5, "too_large": 1, "write_failed": 0},
        });
        assert_eq!(
            capture_row(&c),
            "  capture: 1% of requests, 2887 examples written (1.2 MiB stored of 1024 MiB), 3 evicted, 6 dropped (queue full 5, too large 1, write failed 0)\n"
        );
    }
}

//! Per-arm sufficient statistics of every metric an experiment has: the
//! built-ins (from the recorders, including what the response scanner read:
//! tokens, cost, time to first token, stream completeness) and the declared
//! ones (from the metric book, which win over a scanner metric of the same name).
//!
//! This is what people see in `GET /v1/experiments/{name}`, what
//! `/v1/experiments/{name}/export` hands to `abgate analyze`, and what the
//! controller judges. Forced (override) requests are never included.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::metrics::MetricSums;
use super::RecorderRegistry;
use crate::config::{Experiment, MetricKind};
use crate::stats::{BinaryStats, ContinuousStats};

/// One metric of one arm.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricStats {
    Binary(BinaryStats),
    Continuous(ContinuousStats),
}

impl MetricStats {
    pub fn n(&self) -> u64 {
        match self {
            MetricStats::Binary(b) => b.n,
            MetricStats::Continuous(c) => c.n,
        }
    }

    pub fn to_json(&self) -> Value {
        match self {
            MetricStats::Binary(b) => json!({
                "type": "binary", "n": b.n, "successes": b.successes,
                "rate": if b.n > 0 { json!(b.mean()) } else { Value::Null },
            }),
            MetricStats::Continuous(c) => json!({
                "type": "continuous", "n": c.n,
                "mean": if c.n > 0 { json!(c.mean) } else { Value::Null },
                "variance": if c.n > 1 { json!(c.variance()) } else { Value::Null },
            }),
        }
    }
}

/// Everything known about one arm, for statistics.
#[derive(Debug, Clone)]
pub struct ArmMetrics {
    pub arm: String,
    /// Requests assigned (not forced) to the arm: the SRM counts.
    pub assigned: u64,
    pub metrics: BTreeMap<String, MetricStats>,
}

/// Running sums of every metric of one arm: subtractable, so a comparison can be
/// restricted to a window (e.g. since the experiment started).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ArmSums {
    pub arm: String,
    pub assigned: u64,
    pub metrics: BTreeMap<String, (MetricKind, MetricSums)>,
}

impl ArmSums {
    /// What accumulated since `earlier` (a snapshot of the same arm).
    pub fn since(&self, earlier: &ArmSums) -> ArmSums {
        let metrics = self
            .metrics
            .iter()
            .map(|(name, (kind, now))| {
                let then = earlier
                    .metrics
                    .get(name)
                    .map_or(MetricSums::default(), |(_, s)| *s);
                let d = MetricSums {
                    n: now.n.saturating_sub(then.n),
                    sum: now.sum - then.sum,
                    sum_sq: (now.sum_sq - then.sum_sq).max(0.0),
                };
                (name.clone(), (*kind, d))
            })
            .collect();
        ArmSums {
            arm: self.arm.clone(),
            assigned: self.assigned.saturating_sub(earlier.assigned),
            metrics,
        }
    }

    /// This window and a later one of the same arm, as one.
    pub fn plus(&self, later: &ArmSums) -> ArmSums {
        let mut metrics = self.metrics.clone();
        for (name, (kind, add)) in &later.metrics {
            let s = &mut metrics
                .entry(name.clone())
                .or_insert((*kind, MetricSums::default()))
                .1;
            s.n = s.n.saturating_add(add.n);
            s.sum += add.sum;
            s.sum_sq += add.sum_sq;
        }
        ArmSums {
            arm: self.arm.clone(),
            assigned: self.assigned.saturating_add(later.assigned),
            metrics,
        }
    }

    pub fn stats(&self) -> ArmMetrics {
        ArmMetrics {
            arm: self.arm.clone(),
            assigned: self.assigned,
            metrics: self
                .metrics
                .iter()
                .map(|(name, (kind, sums))| {
                    let s = match kind {
                        MetricKind::Binary => MetricStats::Binary(sums.binary()),
                        MetricKind::Continuous => MetricStats::Continuous(sums.continuous()),
                    };
                    (name.clone(), s)
                })
                .collect(),
        }
    }
}

/// Running sums for each of `experiment`'s configured arms, in declared order.
pub fn experiment_sums(recorders: &RecorderRegistry, experiment: &Experiment) -> Vec<ArmSums> {
    experiment_sums_of(recorders, experiment, |_| true)
}

/// [`experiment_sums`] restricted to the metrics `keep` names: the
/// controller reads only what its tests use, at every look.
pub fn experiment_sums_of(
    recorders: &RecorderRegistry,
    experiment: &Experiment,
    keep: impl Fn(&str) -> bool,
) -> Vec<ArmSums> {
    let declared = recorders.metrics.experiment(&experiment.name);
    // A 0/1 metric's sums: n trials, Σy = Σy² = successes.
    let binary = |n: u64, k: u64| MetricSums {
        n,
        sum: k.min(n) as f64,
        sum_sq: k.min(n) as f64,
    };
    experiment
        .arms
        .iter()
        .map(|arm| {
            let mut metrics = BTreeMap::new();
            let mut put = |name: &str, v: (MetricKind, MetricSums)| {
                if keep(name) {
                    metrics.insert(name.to_string(), v);
                }
            };
            let assigned = match recorders.totals(&experiment.name, &arm.name) {
                Some(o) => {
                    let responded: u64 = o.classes.iter().sum();
                    let lat = o.latency;
                    put("error", (MetricKind::Binary, binary(responded, o.errors)));
                    put("slow", (MetricKind::Binary, binary(lat.n, o.slow)));
                    put("latency_ms", (MetricKind::Continuous, lat));
                    put("ttfb_ms", (MetricKind::Continuous, o.ttfb));
                    let inf = &o;
                    for (name, kind, sums) in [
                        ("prompt_tokens", MetricKind::Continuous, inf.prompt_tokens),
                        (
                            "completion_tokens",
                            MetricKind::Continuous,
                            inf.completion_tokens,
                        ),
                        ("cost", MetricKind::Continuous, inf.cost),
                        ("ttft_ms", MetricKind::Continuous, inf.ttft),
                        ("itl_ms", MetricKind::Continuous, inf.itl),
                        (
                            "stream_incomplete",
                            MetricKind::Binary,
                            binary(inf.streams, inf.incomplete),
                        ),
                        (
                            "finish_length",
                            MetricKind::Binary,
                            binary(inf.finished, inf.finish_length),
                        ),
                    ] {
                        put(name, (kind, sums));
                    }
                    o.requests()
                }
                None => 0,
            };
            for m in experiment.metrics.iter().filter(|m| keep(&m.name)) {
                let sums = declared
                    .iter()
                    .find(|(a, name, _)| a == &arm.name && name == &m.name)
                    .map_or(MetricSums::default(), |(_, _, s)| *s);
                metrics.insert(m.name.clone(), (m.kind, sums));
            }
            ArmSums {
                arm: arm.name.clone(),
                assigned,
                metrics,
            }
        })
        .collect()
}

/// Statistics for each of `experiment`'s configured arms, in declared order.
pub fn experiment_metrics(
    recorders: &RecorderRegistry,
    experiment: &Experiment,
) -> Vec<ArmMetrics> {
    experiment_sums(recorders, experiment)
        .iter()
        .map(ArmSums::stats)
        .collect()
}

/// The `abgate analyze` input for an experiment: re-check any decision offline.
/// Metrics where an arm has no observations yet are left out (analyze needs n > 0).
pub fn analyze_input(
    experiment: &Experiment,
    weights: &BTreeMap<String, u32>,
    arms: &[ArmMetrics],
) -> Value {
    let arm_obj: serde_json::Map<String, Value> = arms
        .iter()
        .map(|a| {
            let w = weights.get(&a.arm).copied().unwrap_or(0);
            (
                a.arm.clone(),
                json!({"weight": f64::from(w) / 10_000.0, "assigned": a.assigned}),
            )
        })
        .collect();
    let mut metrics = serde_json::Map::new();
    let names: Vec<&String> = arms
        .first()
        .map(|a| a.metrics.keys().collect())
        .unwrap_or_default();
    for name in names {
        let per_arm: Vec<(&str, &MetricStats)> = arms
            .iter()
            .filter_map(|a| a.metrics.get(name).map(|m| (a.arm.as_str(), m)))
            .collect();
        if per_arm.len() != arms.len() || per_arm.iter().any(|(_, m)| m.n() == 0) {
            continue;
        }
        let (kind, values): (&str, serde_json::Map<String, Value>) = match per_arm[0].1 {
            MetricStats::Binary(_) => (
                "binary",
                per_arm
                    .iter()
                    .filter_map(|(a, m)| match m {
                        MetricStats::Binary(b) => {
                            Some((a.to_string(), json!({"n": b.n, "successes": b.successes})))
                        }
                        _ => None,
                    })
                    .collect(),
            ),
            MetricStats::Continuous(_) => (
                "continuous",
                per_arm
                    .iter()
                    .filter_map(|(a, m)| match m {
                        MetricStats::Continuous(c) => Some((
                            a.to_string(),
                            json!({"n": c.n, "mean": c.mean, "variance": c.variance()}),
                        )),
                        _ => None,
                    })
                    .collect(),
            ),
        };
        metrics.insert(name.clone(), json!({"type": kind, "arms": values}));
    }
    json!({
        "alpha": 0.05,
        "design_samples": 5000,
        "baseline": experiment.baseline,
        "arms": arm_obj,
        "metrics": metrics,
    })
}

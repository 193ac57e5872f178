//! Read-only JSON views of experiments for the admin API and the CLI.

use serde_json::{json, Value};

use super::actions::phase_name;
use super::ControlPlane;
use crate::outcomes::recorder::OutcomeSnapshot;
use crate::store::ExperimentPhase;

fn ms(us: Option<f64>) -> Value {
    us.map_or(Value::Null, |v| {
        json!((v / 1000.0 * 1000.0).round() / 1000.0)
    })
}

fn outcome_json(o: &OutcomeSnapshot) -> Value {
    let requests = o.requests();
    json!({
        "requests": requests,
        "errors": o.errors,
        "error_rate": if requests > 0 { json!(o.errors as f64 / requests as f64) } else { Value::Null },
        "latency_ms": { "p50": ms(o.latency.quantile_us(0.5)), "p99": ms(o.latency.quantile_us(0.99)), "mean": ms(o.latency.mean_us()) },
        "ttfb_ms": { "p50": ms(o.ttfb.quantile_us(0.5)), "p99": ms(o.ttfb.quantile_us(0.99)) },
    })
}

impl ControlPlane {
    /// Names of the experiments in force, in declared order.
    pub async fn experiment_names(&self) -> Vec<String> {
        let cur = self.current.lock().await;
        cur.config
            .experiments
            .iter()
            .map(|e| e.name.clone())
            .collect()
    }

    /// One experiment's state, weights and per-arm outcomes; `None` if unknown.
    pub async fn experiment_view(&self, name: &str) -> Option<Value> {
        let (config_version, phase, baseline, arms_cfg, experiment) = {
            let cur = self.current.lock().await;
            let e = cur.config.experiment(name)?;
            let experiment = e.clone();
            let phase = cur
                .states
                .get(name)
                .map_or(ExperimentPhase::Running, |s| s.phase);
            let arms: Vec<(String, String)> = e
                .arms
                .iter()
                .map(|a| (a.name.clone(), a.backend.clone()))
                .collect();
            (
                cur.config_version,
                phase,
                e.baseline.clone(),
                arms,
                experiment,
            )
        };
        let metric_stats =
            crate::outcomes::summary::experiment_metrics(&self.recorders, &experiment);
        let table = self.plane.table.load_full();
        let route = table.routes.experiment(name)?;
        let snaps = self.recorders.experiment(name);
        let arms: Vec<Value> = arms_cfg
            .iter()
            .map(|(arm, backend)| {
                let weight = route
                    .arms
                    .iter()
                    .find(|a| &a.name == arm)
                    .map_or(0, |a| a.weight);
                let snap = snaps.iter().find(|s| &s.arm == arm);
                let metrics: serde_json::Map<String, Value> = metric_stats
                    .iter()
                    .find(|m| &m.arm == arm)
                    .map(|m| {
                        m.metrics
                            .iter()
                            .map(|(k, v)| (k.clone(), v.to_json()))
                            .collect()
                    })
                    .unwrap_or_default();
                json!({
                    "metrics": metrics,
                    "name": arm,
                    "backend": backend,
                    "weight": f64::from(weight) / 100.0,
                    "baseline": *arm == baseline,
                    "assigned": snap.map(|s| outcome_json(&s.assigned)),
                    "forced_requests": snap.map_or(0, |s| s.forced.requests()),
                })
            })
            .collect();
        // Arms no longer configured keep their counts readable.
        let removed: Vec<Value> = snaps
            .iter()
            .filter(|s| !arms_cfg.iter().any(|(a, _)| a == &s.arm))
            .map(|s| json!({"name": s.arm, "assigned": outcome_json(&s.assigned)}))
            .collect();
        let owned = name.to_string();
        let last_decision = self
            .blocking(move |s| s.decisions(Some(&owned), 1))
            .await
            .ok()
            .and_then(|d| d.into_iter().next())
            .map(|d| serde_json::to_value(d).unwrap_or(Value::Null));
        Some(json!({
            "name": name,
            "state": phase_name(phase),
            "baseline": baseline,
            "table_version": table.version,
            "config_version": config_version,
            "arms": arms,
            "removed_arms": removed,
            "last_decision": last_decision,
            "analysis": self.analysis(name),
        }))
    }
}

impl ControlPlane {
    /// The `abgate analyze` input for an experiment's current statistics.
    pub async fn export(&self, name: &str) -> Option<Value> {
        let experiment = {
            let cur = self.current.lock().await;
            cur.config.experiment(name)?.clone()
        };
        let table = self.plane.table.load_full();
        let weights = table
            .routes
            .experiment(name)?
            .arms
            .iter()
            .map(|a| (a.name.clone(), a.weight))
            .collect();
        let arms = crate::outcomes::summary::experiment_metrics(&self.recorders, &experiment);
        Some(crate::outcomes::summary::analyze_input(
            &experiment,
            &weights,
            &arms,
        ))
    }
}

impl ControlPlane {
    /// Refreshes `abgate_experiment_state` (0 running, 1 paused, 2 rolled back,
    /// 3 promoted, 4 concluded) and `abgate_experiment_weight{arm}` (percent)
    /// before a scrape.
    pub async fn refresh_gauges(&self) {
        let phases: Vec<(String, ExperimentPhase)> = {
            let cur = self.current.lock().await;
            cur.config
                .experiments
                .iter()
                .map(|e| {
                    let p = cur
                        .states
                        .get(&e.name)
                        .map_or(ExperimentPhase::Running, |s| s.phase);
                    (e.name.clone(), p)
                })
                .collect()
        };
        let t = &self.telemetry;
        for (name, phase) in &phases {
            let code = match phase {
                ExperimentPhase::Running => 0.0,
                ExperimentPhase::Paused => 1.0,
                ExperimentPhase::RolledBack => 2.0,
                ExperimentPhase::Promoted => 3.0,
                ExperimentPhase::Concluded => 4.0,
            };
            t.gauge("abgate_experiment_state", &[("experiment", name)])
                .set(code);
        }
        let table = self.plane.table.load_full();
        for e in table.routes.experiments.iter() {
            for a in e.arms.iter() {
                t.gauge(
                    "abgate_experiment_weight",
                    &[("experiment", &e.name), ("arm", &a.name)],
                )
                .set(f64::from(a.weight) / 100.0);
            }
        }
    }
}

impl ControlPlane {
    /// Saves per-arm outcome counts and the controller runs to the store, off
    /// the async worker threads (SQLite is blocking I/O). Failures are logged;
    /// the next snapshot retries.
    pub async fn save_outcomes(self: &std::sync::Arc<Self>) {
        // Runs first, counts second: a saved run never saw counts the saved
        // counts lack, so after a restart its per-period deltas are never negative.
        let runs = self.take_unsaved_runs();
        let controlled: Vec<String> = self
            .controlled_experiments()
            .await
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        let c = self.clone();
        let saved = tokio::task::spawn_blocking(move || {
            let arm_stats =
                crate::outcomes::persist::rows(&c.recorders, &c.plane.table.load_full().routes)?;
            c.store.save_snapshot(&crate::store::MemorySnapshot {
                arm_stats: &arm_stats,
                controller_runs: &runs,
                controlled: &controlled,
            })
        })
        .await;
        if let Ok(Err(e)) = saved {
            tracing::warn!(error = %e, "cannot save per-arm outcome counts and controller runs");
        }
    }
}

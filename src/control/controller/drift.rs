//! The drift watch: one task per watched experiment, testing the arm in
//! force against a reference period of its own for as long as no test is
//! deciding the experiment.
//!
//! Owns: when a watch runs (a declared `watch:` whenever no test runs; the
//! default one only on a promoted arm), its reference (the promoted arm's
//! evidence window, or the first `reference` of watching), one look a
//! `watch.interval` feeding each metric's detector (`stats::drift`), and what
//! an alarm does: a `drift` decision, `abgate_drift_detected`, the `notify`
//! and `on_drift` webhooks, and with `on_drift: revert` all traffic back to
//! the previous baseline. Its run is saved with the controller's, so a watch
//! resumes after a restart with its reference and evidence.
//!
//! Never: decides anything while a test runs (the controller does), or
//! reverts an experiment a person paused (manual control wins).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::clock::now_ms;
use crate::config::{Direction, Experiment, Watch, DEFAULT_WATCH_REFERENCE};
use crate::control::decision::{all_to, DecisionKind};
use crate::control::{arms_fingerprint, ControlPlane};
use crate::outcomes::summary::experiment_sums_of;
use crate::stats::drift::{
    DriftConfig, DriftKind, DriftSums, DriftTest, Watched, DEFAULT_MIN_BATCH,
    DEFAULT_REFERENCE_ERROR,
};
use crate::store::{ExperimentPhase, ExperimentState, Weights};

/// The key a watch's run is saved under beside the controller runs (an
/// experiment's name never holds a `/`).
pub fn run_key(experiment: &str) -> String {
    format!("watch/{experiment}")
}

/// What a watch carries between looks (saved as JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct WatchRun {
    /// The watch config and arms it belongs to.
    owner: String,
    /// The arm watched.
    arm: String,
    /// When watching this arm began (Unix ms).
    since_ms: u64,
    reference: Reference,
    /// Each metric's cumulative sums at the previous look.
    prev: BTreeMap<String, DriftSums>,
    /// Each metric's detector, or why it has none.
    tests: BTreeMap<String, MetricWatch>,
    /// Metrics whose alarm is recorded as a decision.
    recorded: BTreeSet<String>,
    /// The revert on drift was done (or refused): it is tried once.
    revert_tried: bool,
    /// Whether a failure to save this run was logged (once per run).
    #[serde(skip)]
    unsaveable_logged: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum Reference {
    /// The first `until_ms − from_ms` of watching: cumulative sums at its start.
    Collecting {
        from_ms: u64,
        until_ms: u64,
        start: BTreeMap<String, DriftSums>,
    },
    /// The reference is fixed.
    Ready {
        /// `promoted` (the evidence window) or `first` (of watching).
        source: String,
        from_ms: u64,
        until_ms: u64,
        sums: BTreeMap<String, DriftSums>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum MetricWatch {
    Testing(Box<DriftTest>),
    Unavailable(String),
}

/// Why a watch is not testing now (shown as its status).
enum Idle {
    TestRunning,
    NotPromoted,
    NoArm,
}

/// Runs one experiment's watch until `stop` turns true.
pub async fn run(
    control: Arc<ControlPlane>,
    name: String,
    watch: Watch,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut run: Option<WatchRun> = control
        .take_restored_run(&run_key(&name))
        .and_then(|j| serde_json::from_str(&j).ok());
    let mut tick = tokio::time::interval(watch.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
                continue;
            }
        }
        if *stop.borrow() {
            break;
        }
        look(&control, &name, &watch, &mut run).await;
    }
    if let Some(r) = &mut run {
        publish(&control, &name, r);
    }
}

/// A watch's run belongs to its arms and its `watch:` as configured; what an
/// alarm does (`on_drift`) is read at the alarm, so changing a webhook keeps
/// the reference and the evidence.
fn owner(e: &Experiment, w: &Watch) -> String {
    let h = xxhash_rust::xxh3::xxh3_64(format!("{w:?}").as_bytes());
    format!("{}-{h:016x}", arms_fingerprint(e))
}

fn publish(control: &ControlPlane, name: &str, r: &mut WatchRun) {
    match super::saved::saveable(&*r) {
        Ok(j) => {
            control.publish_run(&run_key(name), j);
            r.unsaveable_logged = false;
        }
        // Logged once: a watch publishes at every look.
        Err(err) if !r.unsaveable_logged => {
            r.unsaveable_logged = true;
            tracing::error!(experiment = name, error = %err,
                "the drift watch's run cannot be saved; the last saved run is kept");
        }
        Err(_) => {}
    }
}

/// The arm serving the most traffic (the baseline on a tie).
fn arm_in_force(e: &Experiment, w: &Weights) -> Option<String> {
    let weight = |a: &str| w.get(a).copied().unwrap_or(0);
    let top = e.arms.iter().map(|a| weight(&a.name)).max()?;
    if top == 0 {
        return None;
    }
    if weight(&e.baseline) == top {
        return Some(e.baseline.clone());
    }
    e.arms
        .iter()
        .find(|a| weight(&a.name) == top)
        .map(|a| a.name.clone())
}

/// Each watched metric's cumulative sums on `arm`.
fn sums_of(
    control: &ControlPlane,
    e: &Experiment,
    w: &Watch,
    arm: &str,
) -> BTreeMap<String, (DriftKind, DriftSums)> {
    let wanted = |m: &str| w.metrics.iter().any(|x| x.metric == m);
    let all = experiment_sums_of(&control.recorders, e, wanted);
    let Some(a) = all.into_iter().find(|a| a.arm == arm) else {
        return BTreeMap::new();
    };
    a.metrics
        .into_iter()
        .map(|(m, (kind, s))| {
            let kind = match kind {
                crate::config::MetricKind::Binary => DriftKind::Rate,
                _ => DriftKind::Mean,
            };
            (
                m,
                (
                    kind,
                    DriftSums {
                        n: s.n,
                        sum: s.sum,
                        sum_sq: s.sum_sq,
                    },
                ),
            )
        })
        .collect()
}

fn minus(a: &DriftSums, b: &DriftSums) -> DriftSums {
    DriftSums {
        n: a.n.saturating_sub(b.n),
        sum: a.sum - b.sum,
        sum_sq: (a.sum_sq - b.sum_sq).max(0.0),
    }
}

fn plain(s: &BTreeMap<String, (DriftKind, DriftSums)>) -> BTreeMap<String, DriftSums> {
    s.iter().map(|(m, (_, x))| (m.clone(), *x)).collect()
}

async fn look(control: &ControlPlane, name: &str, w: &Watch, run: &mut Option<WatchRun>) {
    let Some((e, state, weights)) = control.controller_view(name).await else {
        return;
    };
    let now = now_ms();
    let phase = state.as_ref().map_or(ExperimentPhase::Running, |s| s.phase);
    let idle = if e.policy.is_some() && phase == ExperimentPhase::Running {
        Some(Idle::TestRunning)
    } else if !w.declared && phase != ExperimentPhase::Promoted {
        Some(Idle::NotPromoted)
    } else {
        None
    };
    let arm = arm_in_force(&e, &weights);
    let (arm, idle) = match (idle, arm) {
        (None, Some(a)) => (a, None),
        (None, None) => (String::new(), Some(Idle::NoArm)),
        (i, _) => (String::new(), i),
    };
    if let Some(i) = idle {
        // A watch that stops watching starts afresh when it watches again:
        // whatever follows (a new test, a promotion) is a new arm in force.
        if run.take().is_some() {
            control.clear_run(&run_key(name));
        }
        let status = match i {
            Idle::TestRunning => "the experiment's test is running; the watch starts when it ends",
            Idle::NotPromoted => "starts when a candidate is promoted",
            Idle::NoArm => "no arm serves traffic",
        };
        control.set_watch_view(name, json!({"status": "waiting", "note": status}));
        return;
    }
    let sums = sums_of(control, &e, w, &arm);
    let owner = owner(&e, w);
    if run
        .as_ref()
        .is_none_or(|r| r.owner != owner || r.arm != arm)
    {
        *run = Some(begin(&e, w, state.as_ref(), &arm, owner, &sums, now));
    }
    let r = run.as_mut().expect("set above");
    if let Reference::Collecting {
        from_ms,
        until_ms,
        start,
    } = &r.reference
    {
        if now >= *until_ms {
            let fixed: BTreeMap<String, DriftSums> = sums
                .iter()
                .map(|(m, (_, s))| {
                    let s0 = start.get(m).copied().unwrap_or_default();
                    (m.clone(), minus(s, &s0))
                })
                .collect();
            r.reference = Reference::Ready {
                source: "first".into(),
                from_ms: *from_ms,
                until_ms: now,
                sums: fixed,
            };
            build_tests(r, w, &sums);
        }
    }
    let mut alarms = Vec::new();
    if matches!(r.reference, Reference::Ready { .. }) {
        for (m, (_, s)) in &sums {
            let before = r.prev.get(m).copied().unwrap_or_default();
            if let Some(MetricWatch::Testing(t)) = r.tests.get_mut(m) {
                if t.observe(minus(s, &before)).is_some() && !r.recorded.contains(m) {
                    alarms.push(m.clone());
                }
            }
        }
    }
    r.prev = plain(&sums);
    for m in &w.metrics {
        let alarmed =
            matches!(r.tests.get(&m.metric), Some(MetricWatch::Testing(t)) if t.alarm().is_some());
        control
            .telemetry
            .gauge(
                "abgate_drift_detected",
                &[("experiment", name), ("metric", &m.metric)],
            )
            .set(if alarmed { 1.0 } else { 0.0 });
    }
    if !alarms.is_empty() {
        act(control, name, &e, &weights, phase, r, &alarms).await;
    }
    control.set_watch_view(name, view(w, r, &e));
    publish(control, name, r);
}

fn begin(
    e: &Experiment,
    w: &Watch,
    state: Option<&ExperimentState>,
    arm: &str,
    owner: String,
    sums: &BTreeMap<String, (DriftKind, DriftSums)>,
    now: u64,
) -> WatchRun {
    let promoted = state.filter(|s| s.phase == ExperimentPhase::Promoted && arm != e.baseline);
    let window_long_enough = sums
        .values()
        .all(|(_, s)| s.n >= crate::stats::drift::MIN_REFERENCE);
    let mut r = WatchRun {
        owner,
        arm: arm.to_string(),
        since_ms: now,
        reference: Reference::Collecting {
            from_ms: now,
            until_ms: now + w.reference.unwrap_or(DEFAULT_WATCH_REFERENCE).as_millis() as u64,
            start: plain(sums),
        },
        prev: plain(sums),
        tests: BTreeMap::new(),
        recorded: BTreeSet::new(),
        revert_tried: false,
        unsaveable_logged: false,
    };
    // A promoted arm's evidence window: everything it served before the
    // promotion (it served nothing before its experiment began).
    if let (None, Some(s), true) = (w.reference, promoted, window_long_enough) {
        r.reference = Reference::Ready {
            source: "promoted".into(),
            from_ms: s.started_ms,
            until_ms: s.updated_at_ms.max(s.started_ms),
            sums: plain(sums),
        };
        build_tests(&mut r, w, sums);
    }
    r
}

fn build_tests(r: &mut WatchRun, w: &Watch, sums: &BTreeMap<String, (DriftKind, DriftSums)>) {
    let Reference::Ready {
        sums: reference, ..
    } = &r.reference
    else {
        return;
    };
    let threshold = (w.arl.as_secs_f64() / w.interval.as_secs_f64()).max(2.0);
    for m in &w.metrics {
        let entry = match (sums.get(&m.metric), reference.get(&m.metric)) {
            (Some((kind, _)), Some(refsums)) => {
                let cfg = DriftConfig {
                    kind: *kind,
                    watched: match m.harm {
                        Some(Direction::Increase) => Watched::Increase,
                        Some(Direction::Decrease) => Watched::Decrease,
                        None => Watched::Either,
                    },
                    tolerance: w.tolerance,
                    reference_error: DEFAULT_REFERENCE_ERROR,
                    threshold,
                    min_batch: DEFAULT_MIN_BATCH,
                };
                match DriftTest::new(cfg, *refsums) {
                    Ok(t) => MetricWatch::Testing(Box::new(t)),
                    Err(e) => MetricWatch::Unavailable(e.to_string()),
                }
            }
            _ => MetricWatch::Unavailable("the arm has no such metric".into()),
        };
        r.tests.insert(m.metric.clone(), entry);
    }
}

/// Records the alarms on `metrics` as one `drift` decision, then the
/// webhooks and the revert.
async fn act(
    control: &ControlPlane,
    name: &str,
    e: &Experiment,
    weights: &Weights,
    phase: ExperimentPhase,
    r: &mut WatchRun,
    metrics: &[String],
) {
    let evidence: Vec<Value> = metrics
        .iter()
        .filter_map(|m| match r.tests.get(m) {
            Some(MetricWatch::Testing(t)) => t.alarm().map(|a| {
                json!({
                    "metric": m, "direction": a.direction, "reference": a.reference,
                    "now": a.now, "estimate": a.estimate, "ci95": [a.ci95.0, a.ci95.1],
                    "relative": a.relative, "statistic": a.statistic, "threshold": a.threshold,
                })
            }),
            _ => None,
        })
        .collect();
    let (ref_from, ref_until, source) = match &r.reference {
        Reference::Ready {
            from_ms,
            until_ms,
            source,
            ..
        } => (*from_ms, *until_ms, source.as_str()),
        Reference::Collecting {
            from_ms, until_ms, ..
        } => (*from_ms, *until_ms, "first"),
    };
    let words: Vec<String> = evidence
        .iter()
        .map(|v| {
            format!(
                "{} {} from {:.4} to {:.4} (95% CI of the change {:.4} to {:.4})",
                v["metric"].as_str().unwrap_or(""),
                if v["direction"] == "decrease" {
                    "fell"
                } else {
                    "rose"
                },
                v["reference"]["mean"].as_f64().unwrap_or(0.0),
                v["now"]["mean"].as_f64().unwrap_or(0.0),
                v["ci95"][0].as_f64().unwrap_or(0.0),
                v["ci95"][1].as_f64().unwrap_or(0.0),
            )
        })
        .collect();
    let summary = format!("drift on {}: {}", r.arm, words.join("; "));
    let arm_info = |arm: &str| {
        e.arms
            .iter()
            .find(|a| a.name == arm)
            .map(|a| json!({"arm": a.name, "backend": a.backend, "model": a.model}))
    };
    let previous = (r.arm != e.baseline).then(|| e.baseline.clone());
    let reason = json!({
        "summary": summary,
        "arm": r.arm,
        "drift": evidence,
        "reference": {"source": source, "from_ms": ref_from, "until_ms": ref_until},
    });
    let id = match control
        .watch_decide(name, DecisionKind::Drift, weights.clone(), reason)
        .await
    {
        Ok(id) => id,
        Err(err) => {
            tracing::warn!(experiment = name, error = %err, "cannot record a drift decision");
            return;
        }
    };
    r.recorded.extend(metrics.iter().cloned());
    tracing::warn!(experiment = name, id, "{summary}");
    // Revert: once, to the arm promoted away, unless a person holds the
    // experiment (manual control wins) or there is nothing to go back to.
    let mut reverted = Value::Null;
    if e.on_drift.revert && !r.revert_tried {
        r.revert_tried = true;
        reverted = match (&previous, phase) {
            (_, ExperimentPhase::Paused) => {
                json!({"done": false, "why": "the experiment is paused; a person decides"})
            }
            (None, _) => {
                json!({"done": false, "why": format!("{} is the baseline; there is no previous baseline to go back to", r.arm)})
            }
            (Some(prev), _) => {
                let to = all_to(e, prev);
                let why = json!({
                    "summary": format!("reverted to {prev} after drift on {} (decision {id})", r.arm),
                    "drift_decision": id, "from_arm": r.arm, "to_arm": prev,
                });
                match control
                    .watch_decide(name, DecisionKind::Revert, to, why)
                    .await
                {
                    Ok(rid) => json!({"done": true, "decision": rid, "to": prev}),
                    Err(err) => json!({"done": false, "why": err.to_string()}),
                }
            }
        };
    }
    if let Some(url) = &e.on_drift.webhook {
        let dataset = control.admin_url().map(|base| {
            format!(
                "{base}/v1/experiments/{name}/dataset?since={}",
                crate::store::feedback::rfc3339(ref_from)
            )
        });
        control.post_webhook(
            url.clone(),
            json!({
                "kind": "drift",
                "experiment": name,
                "decision_id": id,
                "serving": arm_info(&r.arm),
                "previous": previous.as_deref().and_then(arm_info),
                "drift": evidence,
                "reference": {"source": source, "from": crate::store::feedback::rfc3339(ref_from), "until": crate::store::feedback::rfc3339(ref_until)},
                "dataset_url": dataset,
                "revert": reverted,
            }),
        );
    }
}

fn view(w: &Watch, r: &WatchRun, e: &Experiment) -> Value {
    let alarmed = r
        .tests
        .values()
        .any(|t| matches!(t, MetricWatch::Testing(t) if t.alarm().is_some()));
    let (status, reference) = match &r.reference {
        Reference::Collecting {
            from_ms, until_ms, ..
        } => (
            "collecting reference",
            json!({"source": "first", "from_ms": from_ms, "until_ms": until_ms}),
        ),
        Reference::Ready {
            source,
            from_ms,
            until_ms,
            sums,
        } => (
            if alarmed { "drift" } else { "watching" },
            json!({"source": source, "from_ms": from_ms, "until_ms": until_ms,
                   "samples": sums.iter().map(|(m, s)| (m.clone(), s.n)).collect::<BTreeMap<_, _>>()}),
        ),
    };
    let metrics: Vec<Value> = w
        .metrics
        .iter()
        .map(|m| {
            let harm = match m.harm {
                Some(Direction::Increase) => "increase",
                Some(Direction::Decrease) => "decrease",
                None => "either",
            };
            match r.tests.get(&m.metric) {
                Some(MetricWatch::Testing(t)) => {
                    let v = t.view();
                    json!({
                        "metric": m.metric, "harm": harm,
                        "state": if t.alarm().is_some() { "drift" } else { "ok" },
                        "statistic": v.statistic, "threshold": v.threshold, "looks": v.batches,
                        "reference": v.reference, "recent": v.recent,
                        "bounds": {"increase": v.bounds.0, "decrease": v.bounds.1},
                        "alarm": t.alarm(),
                    })
                }
                Some(MetricWatch::Unavailable(why)) => {
                    json!({"metric": m.metric, "harm": harm, "state": "unavailable", "note": why})
                }
                None => json!({"metric": m.metric, "harm": harm, "state": "pending"}),
            }
        })
        .collect();
    let served = e
        .arms
        .iter()
        .find(|a| a.name == r.arm)
        .map(|a| (a.backend.clone(), a.model.clone()));
    json!({
        "status": status,
        "arm": r.arm,
        "backend": served.as_ref().map(|s| s.0.clone()),
        "model": served.and_then(|s| s.1),
        "since_ms": r.since_ms,
        "reference": reference,
        "arl_seconds": w.arl.as_secs_f64(),
        "interval_seconds": w.interval.as_secs_f64(),
        "tolerance": w.tolerance,
        "metrics": metrics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn experiment(extra: &str) -> Experiment {
        let yaml = format!(
            "backends: {{ a: {{ url: \"http://127.0.0.1:1\" }} }}\nexperiments:\n  - name: exp\n    watch: {{ metrics: [error]{extra} }}\n    on_drift: {{ webhook: \"http://127.0.0.1:2/x\" }}\n    arms: [ {{ name: only, backend: a, weight: 100 }} ]\n"
        );
        crate::config::parse(&yaml).unwrap().experiments.remove(0)
    }

    #[test]
    fn a_run_belongs_to_its_watch_not_to_what_an_alarm_does() {
        let e = experiment("");
        let mut other_hook = e.clone();
        other_hook.on_drift.webhook = Some("http://127.0.0.1:3/y".into());
        let w = e.watch.clone().unwrap();
        assert_eq!(owner(&e, &w), owner(&other_hook, &w));
        let e2 = experiment(", tolerance: 0.2");
        assert_ne!(owner(&e, &w), owner(&e2, e2.watch.as_ref().unwrap()));
    }

    #[test]
    fn the_arm_in_force_serves_the_most_and_the_baseline_wins_a_tie() {
        let mut e = experiment("");
        e.arms.push(crate::config::Arm {
            name: "new".into(),
            ..e.arms[0].clone()
        });
        let w = |a: u32, b: u32| Weights::from([("only".into(), a), ("new".into(), b)]);
        assert_eq!(arm_in_force(&e, &w(5000, 5000)).as_deref(), Some("only"));
        assert_eq!(arm_in_force(&e, &w(0, 10000)).as_deref(), Some("new"));
        assert_eq!(arm_in_force(&e, &w(0, 0)), None);
    }
}

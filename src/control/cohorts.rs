//! Cohorts: each experiment's recorded weight history, and the bucket layout it
//! replays to (the algorithm is `routing::layout`).
//!
//! Owns: when a history goes on and when it starts again. Any change of the
//! weights in force (a manual action, a controller decision, a config edit of
//! weights only) appends the new weights, so the layout moves only users of
//! arms whose weight fell, into arms whose weight rose. A config edit that
//! changes the arms themselves (names, backends, their order) or the salt
//! starts a new history, as it replaces the recorded state (the fingerprint
//! rule); a removed experiment's history is forgotten. Also: the replay at
//! startup, which every replica with the same store computes identically.
//!
//! Never: publishes a table (its caller records the steps first, then
//! publishes: write-ahead, so a restart replays exactly what was routed), or
//! touches the store from an async worker.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::clock::now_ms;
use crate::config::{self, Config};
use crate::routing::Layout;
use crate::store::{Store, StoreError, WeightStep, Weights};

/// One experiment's history as replayed.
pub(crate) struct History {
    key: String,
    /// The `seq` the next step gets.
    next_seq: u64,
    /// The last weights recorded, in declared order (basis points).
    last: Vec<u32>,
    pub layout: Layout,
}

/// Histories by experiment name.
pub(crate) type Cohorts = HashMap<String, History>;

/// A change to record (in the store, then in memory) before publishing.
#[derive(Debug, Clone)]
pub(crate) enum Change {
    Record(WeightStep),
    Clear(String),
}

/// Identifies what an experiment's history is about: its salt and its arms'
/// names and backends in declared order (not their weights: changing those is
/// what a history records).
pub(crate) fn layout_key(e: &config::Experiment) -> String {
    let mut h = Sha256::new();
    h.update(e.salt.as_bytes());
    for a in &e.arms {
        h.update(format!("\u{1e}{}\u{1f}{}", a.name, a.backend));
    }
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn in_declared_order(e: &config::Experiment, w: &Weights) -> Vec<u32> {
    e.arms
        .iter()
        .map(|a| w.get(&a.name).copied().unwrap_or(0))
        .collect()
}

/// Replays the recorded steps of every experiment still configured with the
/// arms they were recorded for; returns the histories and the names of the
/// experiments whose recorded steps are of no configured experiment (to clear).
pub(crate) fn replay(config: &Config, steps: Vec<WeightStep>) -> (Cohorts, Vec<String>) {
    let mut by_experiment: HashMap<String, Vec<WeightStep>> = HashMap::new();
    for s in steps {
        by_experiment
            .entry(s.experiment.clone())
            .or_default()
            .push(s);
    }
    let mut cohorts = Cohorts::new();
    let mut gone = Vec::new();
    for (name, mut steps) in by_experiment {
        let Some(e) = config.experiment(&name) else {
            gone.push(name);
            continue;
        };
        let key = layout_key(e);
        if steps.iter().any(|s| s.layout_key != key) {
            // Recorded for other arms: the next plan starts a new history.
            continue;
        }
        steps.sort_by_key(|s| s.seq);
        let vectors: Vec<Vec<u32>> = steps
            .iter()
            .map(|s| in_declared_order(e, &s.weights))
            .collect();
        if let Some(layout) = Layout::replay(vectors.iter().map(Vec::as_slice)) {
            cohorts.insert(
                name,
                History {
                    key,
                    next_seq: steps.last().map_or(0, |s| s.seq + 1),
                    last: vectors.last().cloned().unwrap_or_default(),
                    layout,
                },
            );
        }
    }
    (cohorts, gone)
}

/// What to record so that the histories end with the weights in force in
/// `effective` (the config with each experiment's recorded weights laid over).
pub(crate) fn plan(cohorts: &Cohorts, effective: &Config) -> Vec<Change> {
    let mut changes = Vec::new();
    for e in &effective.experiments {
        let key = layout_key(e);
        let weights: Vec<u32> = e.arms.iter().map(|a| a.weight).collect();
        let seq = match cohorts.get(&e.name) {
            Some(h) if h.key == key && h.last == weights => continue,
            Some(h) if h.key == key => h.next_seq,
            _ => 0,
        };
        changes.push(Change::Record(WeightStep {
            experiment: e.name.clone(),
            seq,
            layout_key: key,
            weights: e.arms.iter().map(|a| (a.name.clone(), a.weight)).collect(),
            recorded_at_ms: now_ms(),
        }));
    }
    for name in cohorts.keys() {
        if effective.experiment(name).is_none() {
            changes.push(Change::Clear(name.clone()));
        }
    }
    changes
}

/// Records the changes in the store (blocking).
pub(crate) fn record(store: &dyn Store, changes: &[Change]) -> Result<(), StoreError> {
    for c in changes {
        match c {
            Change::Record(step) => store.record_weight_step(step)?,
            Change::Clear(name) => store.clear_weight_steps(name)?,
        }
    }
    Ok(())
}

/// Applies recorded changes to the in-memory histories.
pub(crate) fn apply(cohorts: &mut Cohorts, changes: &[Change], effective: &Config) {
    for c in changes {
        match c {
            Change::Clear(name) => {
                cohorts.remove(name);
            }
            Change::Record(step) => {
                let Some(e) = effective.experiment(&step.experiment) else {
                    continue;
                };
                let weights = in_declared_order(e, &step.weights);
                match cohorts.get_mut(&step.experiment) {
                    Some(h) if step.seq > 0 && h.key == step.layout_key => {
                        h.layout.reweight(&weights);
                        h.last = weights;
                        h.next_seq = step.seq + 1;
                    }
                    _ => {
                        cohorts.insert(
                            step.experiment.clone(),
                            History {
                                key: step.layout_key.clone(),
                                next_seq: step.seq + 1,
                                layout: Layout::initial(&weights),
                                last: weights,
                            },
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(w: [u32; 3], backend_c: &str) -> Config {
        config::parse(&format!(
            r#"
backends: {{ a: {{ url: "http://127.0.0.1:1" }}, b: {{ url: "http://127.0.0.1:2" }}, c: {{ url: "http://127.0.0.1:3" }} }}
experiments:
  - name: s
    arms:
      - {{ name: base, backend: a, weight: {} }}
      - {{ name: t1, backend: b, weight: {} }}
      - {{ name: t2, backend: {backend_c}, weight: {} }}
"#,
            w[0], w[1], w[2]
        ))
        .unwrap()
    }

    /// Plans, "records" into `log` and applies, as the control plane does.
    fn step(cohorts: &mut Cohorts, log: &mut Vec<WeightStep>, c: &Config) -> Vec<Change> {
        let changes = plan(cohorts, c);
        for ch in &changes {
            match ch {
                Change::Record(s) => {
                    if s.seq == 0 {
                        log.retain(|x| x.experiment != s.experiment);
                    }
                    log.push(s.clone());
                }
                Change::Clear(n) => log.retain(|x| &x.experiment != n),
            }
        }
        apply(cohorts, &changes, c);
        changes
    }

    #[test]
    fn weight_changes_append_arm_changes_restart_and_a_replay_agrees() {
        let (mut cohorts, mut log) = (Cohorts::new(), Vec::new());
        step(&mut cohorts, &mut log, &config([34, 33, 33], "c"));
        assert!(step(&mut cohorts, &mut log, &config([34, 33, 33], "c")).is_empty());
        step(&mut cohorts, &mut log, &config([67, 33, 0], "c"));
        assert_eq!(log.iter().map(|s| s.seq).collect::<Vec<_>>(), vec![0, 1]);
        let live = cohorts["s"].layout.clone();
        assert_eq!(live.ranges(1), vec![3400..6700], "t1 kept its users");
        let (replayed, gone) = replay(&config([67, 33, 0], "c"), log.clone());
        assert!(gone.is_empty());
        assert_eq!(replayed["s"].layout, live);
        // Another backend for t2 is another arm: a new history begins.
        step(&mut cohorts, &mut log, &config([67, 33, 0], "b"));
        assert_eq!(log.iter().map(|s| s.seq).collect::<Vec<_>>(), vec![0]);
        // A history recorded for other arms is not replayed.
        let (replayed, _) = replay(&config([67, 33, 0], "c"), log.clone());
        assert!(replayed.is_empty());
        // A removed experiment's history is cleared.
        let none = config::parse("").unwrap();
        assert!(matches!(&step(&mut cohorts, &mut log, &none)[..], [Change::Clear(n)] if n == "s"));
        assert!(log.is_empty());
    }
}

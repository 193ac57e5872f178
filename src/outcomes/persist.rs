//! Saving per-arm outcome counts to the store and restoring them at startup, so
//! a restart does not zero an experiment's built-in statistics (error, latency,
//! TTFB, slow). Snapshots are taken every second and at shutdown; a crash loses
//! at most the last second. Feedback needs none of this: its log is the record.

use super::recorder::ArmState;
use super::RecorderRegistry;
use crate::config::MetricSource;
use crate::routing::RoutingTable;
use crate::store::{Store, StoreError};

/// Adds the saved counts into the (fresh) recorders; returns how many arms.
pub fn restore(recorders: &RecorderRegistry, store: &dyn Store) -> Result<usize, StoreError> {
    let saved = store.arm_stats()?;
    for (experiment, arm, json) in &saved {
        let state: ArmState = serde_json::from_str(json)?;
        recorders.arm(experiment, arm).restore(&state);
        if let Some(pairs) = &state.pairs {
            recorders.pair_book(experiment, arm).restore(pairs);
        }
        for (metric, sums) in &state.header_metrics {
            recorders
                .metrics
                .cell(experiment, arm, metric)
                .restore(*sums);
        }
    }
    Ok(saved.len())
}

/// Every arm's counts, with the sums of the response-header metrics the
/// current table declares, and with `feedback` (a fleet's replicas) those of
/// its feedback metrics: (experiment, arm, state).
pub fn states<A>(
    recorders: &RecorderRegistry,
    table: &RoutingTable<A>,
    feedback: bool,
) -> Vec<(String, String, ArmState)> {
    recorders
        .states()
        .into_iter()
        .map(|(e, a, mut s)| {
            s.pairs = recorders.pairs(&e, &a);
            if let Some(route) = table.experiment(&e) {
                for m in &route.metrics {
                    let sums = || recorders.metrics.cell(&e, &a, &m.name).sums();
                    match m.source {
                        MetricSource::ResponseHeader(_) => {
                            s.header_metrics.insert(m.name.clone(), sums());
                        }
                        MetricSource::Feedback if feedback => {
                            s.feedback_metrics.insert(m.name.clone(), sums());
                        }
                        MetricSource::Feedback => {}
                    }
                }
            }
            (e, a, s)
        })
        .collect()
}

/// `states` as rows to save: (experiment, arm, JSON).
pub fn rows(
    states: Vec<(String, String, ArmState)>,
) -> Result<Vec<(String, String, String)>, serde_json::Error> {
    states
        .into_iter()
        .map(|(e, a, s)| Ok((e, a, serde_json::to_string(&s)?)))
        .collect()
}

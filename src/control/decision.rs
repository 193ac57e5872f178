//! Decisions: what a change to an experiment is, what phase it leaves the
//! experiment in, and the write-ahead path every change takes.
//!
//! Owns: the [`DecisionKind`] vocabulary (stored as its snake_case name), the
//! phase and state a decision leads to, and `record_and_apply`: record the
//! decision, save the state it leads to, record the weight-history step, publish
//! the table, mark it applied. A
//! crash between any two steps is repaired at the next start (see
//! `ControlPlane::restore`), exactly once.
//!
//! Never: decides *whether* to change anything (manual actions and the
//! controller do), or touches the store from an async worker thread.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{arms_fingerprint, effective, ControlPlane, Current};
use crate::clock::now_ms;
use crate::config::{self, BUCKETS};
use crate::store::{ExperimentPhase, ExperimentState, NewDecision, StoreError, Weights};

/// Every kind of decision abgate records. The names are part of the admin API
/// (`GET /v1/decisions`, `abgate_decisions_total{kind}`) and of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    /// The controller's first step of a canary.
    Start,
    /// A canary moves to its next step.
    Advance,
    /// All traffic to the candidate; the experiment ends.
    Promote,
    /// An A/B winner is found and held (on_success: hold): paused.
    Winner,
    /// All traffic back to the baseline; the experiment ends.
    Rollback,
    /// One harmful treatment of an A/B/n stops; the others keep running.
    RollbackArm,
    /// The test ended without a winner; traffic back to the baseline.
    Conclude,
    /// Weights frozen for people to look (e.g. sample ratio mismatch).
    Hold,
    Pause,
    Resume,
    /// The drift watch found the arm in force moved from its reference;
    /// weights unchanged.
    Drift,
    /// All traffic back to the previous baseline after a drift (`on_drift:
    /// revert`); the experiment ends rolled back.
    Revert,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown decision kind {0:?}")]
pub struct UnknownDecisionKind(pub String);

impl DecisionKind {
    /// Every kind, in no particular order.
    pub const ALL: [DecisionKind; 12] = [
        DecisionKind::Start,
        DecisionKind::Advance,
        DecisionKind::Promote,
        DecisionKind::Winner,
        DecisionKind::Rollback,
        DecisionKind::RollbackArm,
        DecisionKind::Conclude,
        DecisionKind::Hold,
        DecisionKind::Pause,
        DecisionKind::Resume,
        DecisionKind::Drift,
        DecisionKind::Revert,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DecisionKind::Start => "start",
            DecisionKind::Advance => "advance",
            DecisionKind::Promote => "promote",
            DecisionKind::Winner => "winner",
            DecisionKind::Rollback => "rollback",
            DecisionKind::RollbackArm => "rollback_arm",
            DecisionKind::Conclude => "conclude",
            DecisionKind::Hold => "hold",
            DecisionKind::Pause => "pause",
            DecisionKind::Resume => "resume",
            DecisionKind::Drift => "drift",
            DecisionKind::Revert => "revert",
        }
    }

    /// The phase a decision of this kind leaves an experiment in (`None`:
    /// unchanged, e.g. a hold or one arm of several rolled back).
    pub fn phase_after(self) -> Option<ExperimentPhase> {
        match self {
            DecisionKind::Pause | DecisionKind::Winner => Some(ExperimentPhase::Paused),
            DecisionKind::Rollback | DecisionKind::Revert => Some(ExperimentPhase::RolledBack),
            DecisionKind::Promote => Some(ExperimentPhase::Promoted),
            DecisionKind::Conclude => Some(ExperimentPhase::Concluded),
            DecisionKind::Resume | DecisionKind::Advance | DecisionKind::Start => {
                Some(ExperimentPhase::Running)
            }
            DecisionKind::Hold | DecisionKind::RollbackArm | DecisionKind::Drift => None,
        }
    }
}

impl std::fmt::Display for DecisionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DecisionKind {
    type Err = UnknownDecisionKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DecisionKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownDecisionKind(s.to_string()))
    }
}

/// All traffic to one arm.
pub(crate) fn all_to(e: &config::Experiment, arm: &str) -> Weights {
    e.arms
        .iter()
        .map(|a| (a.name.clone(), if a.name == arm { BUCKETS } else { 0 }))
        .collect()
}

/// The state an experiment is in after a decision moved it to `to`
/// (`reason.step` carries a canary's new step).
pub fn state_after(
    kind: DecisionKind,
    e: &config::Experiment,
    to: &Weights,
    reason: &serde_json::Value,
    previous: Option<&ExperimentState>,
) -> ExperimentState {
    let now = now_ms();
    let phase = kind
        .phase_after()
        .or(previous.map(|p| p.phase))
        .unwrap_or(ExperimentPhase::Running);
    let configured: Weights = e.arms.iter().map(|a| (a.name.clone(), a.weight)).collect();
    let new_step = reason
        .get("step")
        .and_then(|s| s.as_u64())
        .map(|s| s as usize);
    let prev_step = previous.and_then(|p| p.step);
    ExperimentState {
        experiment: e.name.clone(),
        phase,
        weights: (to != &configured).then(|| to.clone()),
        arms_fingerprint: arms_fingerprint(e),
        updated_at_ms: now,
        step: new_step.or(prev_step),
        step_started_ms: if new_step.is_some() && new_step != prev_step {
            now
        } else {
            previous.map_or(now, |p| p.step_started_ms)
        },
        started_ms: previous.map_or(now, |p| p.started_ms),
    }
}

/// The state a decision recorded but never marked applied (its maker died
/// between the two) leads to, applied once by whoever finds it: at a restart,
/// or in a fleet by the next replica to take the change lock. A kind written
/// by a newer abgate has its weights applied and its phase not guessed.
pub(crate) fn state_of_unapplied(
    d: &crate::store::Decision,
    e: &config::Experiment,
    previous: Option<&ExperimentState>,
) -> ExperimentState {
    match d.kind.parse::<DecisionKind>() {
        Ok(kind) => state_after(kind, e, &d.to_weights, &d.reason, previous),
        Err(unknown) => {
            tracing::error!(id = d.id, experiment = %d.experiment, error = %unknown,
                "an unapplied decision has a kind this version does not know; \
                 its weights are applied and the experiment's phase is kept");
            let mut s = previous.cloned().unwrap_or_else(|| {
                state_after(DecisionKind::Hold, e, &d.to_weights, &d.reason, None)
            });
            s.weights = Some(d.to_weights.clone());
            s
        }
    }
}

/// One decision about to be made: everything `record_and_apply` records.
pub(crate) struct Change {
    pub kind: DecisionKind,
    pub from: Weights,
    pub to: Weights,
    pub reason: serde_json::Value,
    pub actor: String,
}

/// Adds the model each arm's backend is sent to the decision's reason, as
/// `models: {arm: model}`, and for a change that leaves one arm serving
/// everything, `serving_model` and the `replaced_models` of the arms it took
/// traffic from: the lineage reads "llama-x replaced gpt-x". Experiments
/// that are not model-aware get nothing.
fn with_models(change: &mut Change, e: &config::Experiment) {
    let models = e.arm_models();
    let serde_json::Value::Object(reason) = &mut change.reason else {
        return;
    };
    if models.is_empty() {
        return;
    }
    let model_of = |arm: &str| {
        models
            .iter()
            .find(|(a, _)| a == arm)
            .map(|(_, m)| m.clone())
    };
    if let Some((serving, _)) = change.to.iter().find(|(_, w)| **w == BUCKETS) {
        if let Some(m) = model_of(serving) {
            let mut replaced: Vec<String> = change
                .from
                .iter()
                .filter(|(a, w)| *a != serving && **w > 0)
                .filter_map(|(a, _)| model_of(a))
                .filter(|r| *r != m)
                .collect();
            replaced.dedup();
            reason.insert("serving_model".into(), serde_json::json!(m));
            reason.insert("replaced_models".into(), serde_json::json!(replaced));
        }
    }
    reason.insert(
        "models".into(),
        serde_json::Value::Object(
            models
                .into_iter()
                .map(|(a, m)| (a, serde_json::Value::String(m)))
                .collect(),
        ),
    );
}

impl ControlPlane {
    /// Write-ahead: records the decision, saves the state it leads to, swaps
    /// the table, then marks the decision applied. Holding `cur` (the control
    /// plane's lock) is what lets it publish.
    pub(crate) async fn record_and_apply(
        &self,
        cur: &mut Current,
        e: &config::Experiment,
        mut change: Change,
    ) -> Result<i64, StoreError> {
        with_models(&mut change, e);
        let record = NewDecision {
            experiment: e.name.clone(),
            kind: change.kind.as_str().to_string(),
            from_weights: change.from,
            to_weights: change.to.clone(),
            reason: change.reason.clone(),
            actor: change.actor,
        };
        let id = self.blocking(move |s| s.record_decision(&record)).await?;
        let state = state_after(
            change.kind,
            e,
            &change.to,
            &change.reason,
            cur.states.get(&e.name),
        );
        let saved = state.clone();
        self.blocking(move |s| s.save_state(&saved)).await?;
        cur.states.insert(e.name.clone(), state);
        let in_force = effective(&cur.config, &cur.states);
        self.commit(&mut cur.cohorts, &mut cur.publisher, &in_force)
            .await?;
        self.blocking(move |s| s.mark_applied(id)).await?;
        self.telemetry
            .counter(
                "abgate_decisions_total",
                &[("experiment", &e.name), ("kind", change.kind.as_str())],
            )
            .increment(1);
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_from_its_stored_name() {
        for k in DecisionKind::ALL {
            assert_eq!(k.as_str().parse::<DecisionKind>(), Ok(k));
            assert_eq!(
                serde_json::to_value(k).unwrap(),
                serde_json::json!(k.as_str())
            );
        }
        assert_eq!(
            "rollback-arm".parse::<DecisionKind>(),
            Err(UnknownDecisionKind("rollback-arm".into()))
        );
    }
}

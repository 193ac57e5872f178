//! Manual experiment actions: pause, resume, rollback, promote.
//!
//! Each is written to the store as a decision *before* the table changes
//! (write-ahead), then applied, then marked applied.

use crate::clock::now_ms;
use crate::config::{self, BUCKETS};
use crate::store::{ExperimentPhase, ExperimentState, NewDecision, StoreError, Weights};

use super::{arms_fingerprint, effective, Actor, ControlPlane};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Rollback,
    Promote { arm: String },
}

impl Action {
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Rollback => "rollback",
            Action::Promote { .. } => "promote",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("no experiment named {0:?}")]
    UnknownExperiment(String),
    #[error("experiment {experiment:?} has no arm {arm:?}; arms: {arms}")]
    UnknownArm {
        experiment: String,
        arm: String,
        arms: String,
    },
    #[error("cannot {action} experiment {experiment:?}: it is {phase}")]
    Conflict {
        action: &'static str,
        experiment: String,
        phase: &'static str,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub fn phase_name(p: ExperimentPhase) -> &'static str {
    match p {
        ExperimentPhase::Running => "running",
        ExperimentPhase::Paused => "paused",
        ExperimentPhase::RolledBack => "rolled_back",
        ExperimentPhase::Promoted => "promoted",
        ExperimentPhase::Concluded => "concluded",
    }
}

/// All traffic to one arm.
pub(crate) fn all_to(e: &config::Experiment, arm: &str) -> Weights {
    e.arms
        .iter()
        .map(|a| (a.name.clone(), if a.name == arm { BUCKETS } else { 0 }))
        .collect()
}

/// The phase a decision of `kind` leaves an experiment in (`None`: unchanged).
pub fn phase_after(kind: &str) -> Option<ExperimentPhase> {
    match kind {
        "pause" | "winner" => Some(ExperimentPhase::Paused),
        "rollback" => Some(ExperimentPhase::RolledBack),
        "promote" => Some(ExperimentPhase::Promoted),
        "conclude" => Some(ExperimentPhase::Concluded),
        "resume" | "advance" | "start" => Some(ExperimentPhase::Running),
        _ => None,
    }
}

/// The state an experiment is in after a decision moved it to `to`
/// (`reason.step` carries a canary's new step).
pub fn state_after(
    kind: &str,
    e: &config::Experiment,
    to: &Weights,
    reason: &serde_json::Value,
    previous: Option<&ExperimentState>,
) -> ExperimentState {
    let now = now_ms();
    let phase = phase_after(kind)
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

impl ControlPlane {
    /// Applies a manual action; returns the decision id.
    pub async fn act(
        &self,
        experiment: &str,
        action: Action,
        actor: &Actor,
    ) -> Result<i64, ActionError> {
        let mut cur = self.current.lock().await;
        let e = cur
            .config
            .experiment(experiment)
            .ok_or_else(|| ActionError::UnknownExperiment(experiment.to_string()))?
            .clone();
        let phase = cur
            .states
            .get(experiment)
            .map_or(ExperimentPhase::Running, |s| s.phase);
        let from = cur.weights_in_force(experiment).unwrap_or_default();
        let allowed = match action {
            Action::Pause => phase == ExperimentPhase::Running,
            Action::Resume => phase == ExperimentPhase::Paused,
            Action::Rollback | Action::Promote { .. } => !phase.is_ended(),
        };
        if !allowed {
            return Err(ActionError::Conflict {
                action: action.kind(),
                experiment: experiment.to_string(),
                phase: phase_name(phase),
            });
        }
        let to = match &action {
            Action::Pause | Action::Resume => from.clone(),
            Action::Rollback => all_to(&e, &e.baseline),
            Action::Promote { arm } => {
                if !e.arms.iter().any(|a| &a.name == arm) {
                    return Err(ActionError::UnknownArm {
                        experiment: experiment.to_string(),
                        arm: arm.clone(),
                        arms: e
                            .arms
                            .iter()
                            .map(|a| a.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
                }
                all_to(&e, arm)
            }
        };
        let reason = serde_json::json!({
            "manual": true,
            "summary": format!("{} by {}", action.kind(), actor.name),
            "source": actor.source,
        });
        let id =
            self.record_and_apply(&mut cur, &e, action.kind(), from, to, reason, &actor.name)?;
        tracing::info!(experiment, action = action.kind(), actor = %actor.name, id, "manual action applied");
        Ok(id)
    }

    /// Write-ahead: records the decision, saves the state it leads to, swaps
    /// the table, then marks the decision applied.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn record_and_apply(
        &self,
        cur: &mut super::Current,
        e: &config::Experiment,
        kind: &str,
        from: Weights,
        to: Weights,
        reason: serde_json::Value,
        actor: &str,
    ) -> Result<i64, StoreError> {
        let id = self.store.record_decision(&NewDecision {
            experiment: e.name.clone(),
            kind: kind.to_string(),
            from_weights: from,
            to_weights: to.clone(),
            reason: reason.clone(),
            actor: actor.to_string(),
        })?;
        crash_if_failpoint("decision-recorded");
        let state = state_after(kind, e, &to, &reason, cur.states.get(&e.name));
        self.store.save_state(&state)?;
        cur.states.insert(e.name.clone(), state);
        self.shared.apply(&effective(&cur.config, &cur.states));
        self.store.mark_applied(id)?;
        self.shared
            .telemetry
            .counter(
                "abgate_decisions_total",
                &[("experiment", &e.name), ("kind", kind)],
            )
            .increment(1);
        Ok(id)
    }
}

/// Test hook: `ABGATE_FAILPOINT=<name>` aborts the process at that point, so a
/// test can crash between two steps of the write-ahead protocol.
fn crash_if_failpoint(name: &str) {
    static FAILPOINT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let set = FAILPOINT.get_or_init(|| std::env::var("ABGATE_FAILPOINT").ok());
    if set.as_deref() == Some(name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}

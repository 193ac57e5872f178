//! Manual experiment actions: pause, resume, rollback, promote.
//!
//! Each is written to the store as a decision *before* the table changes
//! (write-ahead), then applied, then marked applied.

use crate::config::{self, BUCKETS};
use crate::store::{now_ms, ExperimentPhase, ExperimentState, NewDecision, StoreError, Weights};

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
    }
}

/// All traffic to one arm.
fn all_to(e: &config::Experiment, arm: &str) -> Weights {
    e.arms
        .iter()
        .map(|a| (a.name.clone(), if a.name == arm { BUCKETS } else { 0 }))
        .collect()
}

/// The state an experiment is in after a decision of `kind` moved it to `to`.
pub fn state_after(kind: &str, e: &config::Experiment, to: &Weights) -> ExperimentState {
    let phase = match kind {
        "pause" => ExperimentPhase::Paused,
        "rollback" => ExperimentPhase::RolledBack,
        "promote" => ExperimentPhase::Promoted,
        _ => ExperimentPhase::Running,
    };
    let configured: Weights = e.arms.iter().map(|a| (a.name.clone(), a.weight)).collect();
    ExperimentState {
        experiment: e.name.clone(),
        phase,
        weights: (to != &configured).then(|| to.clone()),
        arms_fingerprint: arms_fingerprint(e),
        updated_at_ms: now_ms(),
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
        let from: Weights = effective(&cur.config, &cur.states)
            .experiment(experiment)
            .map(|x| x.arms.iter().map(|a| (a.name.clone(), a.weight)).collect())
            .unwrap_or_default();
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
        let id = self.store.record_decision(&NewDecision {
            experiment: experiment.to_string(),
            kind: action.kind().to_string(),
            from_weights: from,
            to_weights: to.clone(),
            reason: serde_json::json!({
                "manual": true,
                "summary": format!("{} by {}", action.kind(), actor.name),
                "source": actor.source,
            }),
            actor: actor.name.clone(),
        })?;
        let state = state_after(action.kind(), &e, &to);
        self.store.save_state(&state)?;
        cur.states.insert(experiment.to_string(), state);
        self.shared.apply(&effective(&cur.config, &cur.states));
        self.store.mark_applied(id)?;
        tracing::info!(experiment, action = action.kind(), actor = %actor.name, id, "manual action applied");
        Ok(id)
    }
}

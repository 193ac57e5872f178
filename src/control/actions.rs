//! Manual experiment actions: pause, resume, rollback, promote.
//!
//! Each is written to the store as a decision *before* the table changes
//! (write-ahead), then applied, then marked applied.

use super::decision::{all_to, Change, DecisionKind};
use super::{Actor, ControlPlane};
use crate::store::{ExperimentPhase, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Rollback,
    Promote { arm: String },
}

impl Action {
    /// The decision this action records.
    pub fn decision_kind(&self) -> DecisionKind {
        match self {
            Action::Pause => DecisionKind::Pause,
            Action::Resume => DecisionKind::Resume,
            Action::Rollback => DecisionKind::Rollback,
            Action::Promote { .. } => DecisionKind::Promote,
        }
    }

    /// The verb, for messages (`cannot pause experiment …`).
    pub fn kind(&self) -> &'static str {
        self.decision_kind().as_str()
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
    /// An automatic decision by a replica that no longer leads the fleet.
    #[error("this replica no longer leads the fleet; the leader decides")]
    NotLeader,
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

impl ControlPlane {
    /// Applies a manual action; returns the decision id.
    pub async fn act(
        &self,
        experiment: &str,
        action: Action,
        actor: &Actor,
    ) -> Result<i64, ActionError> {
        let mut cur = self.change().await?;
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
        let change = Change {
            kind: action.decision_kind(),
            from,
            to,
            reason,
            actor: actor.name.clone(),
        };
        let id = self.record_and_apply(&mut cur, &e, change).await?;
        tracing::info!(experiment, action = action.kind(), actor = %actor.name, id, "manual action applied");
        Ok(id)
    }
}

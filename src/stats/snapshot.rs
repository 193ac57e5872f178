//! `stats::snapshot`: the facts fed in at one look.
//!
//! Owns: the per-arm cumulative sufficient statistics ([`Snapshot`]), the facts
//! only the caller knows ([`StepFacts`]: the module has no clock), and their
//! consistency checks against a [`Policy`].
//! Never: keeps state across looks (that is `evidence`) or judges anything.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::attribution::ErrorAttribution;
use super::policy::{bad, Margin, Policy, PolicyError};
use super::srm::SrmMonitor;
use super::sufficient::{BinaryStats, ContinuousStats};

/// One arm at a look.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmSnapshot {
    /// Arm name.
    pub name: String,
    /// Configured traffic weight (any positive scale; 0 = not receiving traffic,
    /// excluded from SRM).
    pub weight: f64,
    /// Units assigned to the arm by the router so far (cumulative).
    pub assigned: u64,
}

/// Per-arm data of one metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricData {
    /// 0/1 outcome per unit, keyed by arm.
    Binary(BTreeMap<String, BinaryStats>),
    /// Continuous outcome per unit, keyed by arm.
    Continuous(BTreeMap<String, ContinuousStats>),
    /// Attribution accumulators keyed by *treatment* arm (each vs the baseline).
    Events(BTreeMap<String, ErrorAttribution>),
}

/// One metric at a look.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSnapshot {
    /// Metric name, as referenced by the policy.
    pub name: String,
    /// The data.
    pub data: MetricData,
    /// The same metric per period of constant weights, oldest first (same
    /// variant as `data`, whose totals they add up to). When given, binary
    /// and continuous comparisons are stratified by period (`stats::strata`),
    /// so a ramp over a metric that moves in time is not read as a
    /// difference between arms. Empty: one period, the totals.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub periods: Vec<MetricData>,
}

/// What the controller feeds in at each look: cumulative sufficient statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Baseline (control / stable) arm name.
    pub baseline: String,
    /// All arms, baseline included.
    pub arms: Vec<ArmSnapshot>,
    /// Metrics.
    pub metrics: Vec<MetricSnapshot>,
    /// SRM state for ramped allocations; when `None` SRM compares `assigned`
    /// against the current weights (static allocation).
    #[serde(default)]
    pub srm_monitor: Option<SrmMonitor>,
}

impl Snapshot {
    /// Checks that the baseline exists, names are unique and weights are finite ≥ 0.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if !self.arms.iter().any(|a| a.name == self.baseline) {
            return Err(PolicyError::UnknownBaseline(self.baseline.clone()));
        }
        for (i, a) in self.arms.iter().enumerate() {
            if self.arms[..i].iter().any(|b| b.name == a.name) {
                return Err(PolicyError::DuplicateArm(a.name.clone()));
            }
            if !(a.weight.is_finite() && a.weight >= 0.0) {
                return Err(bad(
                    &format!("arms.{}.weight", a.name),
                    format!("must be finite and >= 0, got {}", a.weight),
                ));
            }
        }
        Ok(())
    }

    /// Checks policy/snapshot consistency (event metrics only as relative guardrails).
    pub fn validate_against(&self, policy: &Policy) -> Result<(), PolicyError> {
        for m in &self.metrics {
            if let MetricData::Events(_) = m.data {
                let primary = policy.primary.as_ref().is_some_and(|p| p.metric == m.name);
                let absolute = policy
                    .guardrails
                    .iter()
                    .any(|g| g.metric == m.name && matches!(g.margin, Margin::Absolute(_)));
                if primary || absolute {
                    return Err(PolicyError::EventMetricMisuse(m.name.clone()));
                }
            }
        }
        Ok(())
    }
}

/// Facts only the caller knows (the module has no clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StepFacts {
    /// The current step's (or the experiment's) minimum duration and traffic
    /// are met, e.g. "10 minutes and 1000 requests at 5 %" or "one full week".
    /// Gates `Advance` and `Promote` only.
    pub step_minimums_met: bool,
    /// The sample or time budget (n_max, max duration) is spent: undecided
    /// experiments end `Inconclusive` (keep the baseline).
    pub budget_exhausted: bool,
}

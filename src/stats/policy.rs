//! `stats::policy`: what the decision rule is configured with.
//!
//! Owns: the policy types ([`Policy`], its primary metric and guardrails), their
//! defaults, and [`Policy::validate`], the one range check every caller relies
//! on (the config schema runs it at parse time, the evidence at every look).
//! Never: reads data or evidence; the lowest layer of the decision rule, so it
//! names nothing of `snapshot`, `evidence`, `decide` or `explain`.

use serde::{Deserialize, Serialize};

use super::mixture::{MixtureConfig, Scale};

/// Canary rollout (guardrails decide each ramp step) or A/B test (a primary
/// metric decides which arm to promote).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExperimentKind {
    /// Progressive rollout of one candidate; verdicts `Advance`/`Rollback`.
    Canary,
    /// Controlled experiment; verdicts `Promote`/`NoDifference`/`Rollback`.
    Ab,
}

/// A direction of change of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Larger values.
    Increase,
    /// Smaller values.
    Decrease,
}

impl Direction {
    /// +1 for `Increase`, −1 for `Decrease`.
    pub fn sign(self) -> f64 {
        match self {
            Self::Increase => 1.0,
            Self::Decrease => -1.0,
        }
    }
}

/// Largest tolerated change of a guardrail in its harmful direction.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Margin {
    /// Fraction of the baseline mean (0.05 = "at most 5 % worse"); for event
    /// metrics the rate ratio must stay below `1 + margin`.
    Relative(f64),
    /// Metric units (e.g. 5.0 ms); not allowed on event metrics.
    Absolute(f64),
}

impl Margin {
    /// Comparison scale the margin lives on.
    pub fn scale(self) -> Scale {
        match self {
            Self::Relative(_) => Scale::Relative,
            Self::Absolute(_) => Scale::Absolute,
        }
    }

    /// The margin's magnitude.
    pub fn value(self) -> f64 {
        match self {
            Self::Relative(v) | Self::Absolute(v) => v,
        }
    }
}

/// The metric whose improvement justifies promotion (A/B).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrimaryPolicy {
    /// Metric name (must be a binary or continuous metric).
    pub metric: String,
    /// Direction that counts as improvement.
    pub direction: Direction,
    /// Scale of the comparison (default relative lift, as gbstats).
    #[serde(default = "default_scale")]
    pub scale: Scale,
    /// Smallest worthwhile effect on `scale` (≥ 0): promote only if the CS clears it.
    #[serde(default)]
    pub min_effect: f64,
    /// Practical-equivalence margin on `scale` (> 0): a CS inside ±margin gives
    /// `NoDifference`. `None` disables that verdict.
    #[serde(default)]
    pub equivalence_margin: Option<f64>,
}

fn default_scale() -> Scale {
    Scale::Relative
}

/// A metric that must not get worse.
///
/// Binary/continuous guardrails use one-sided normal mixtures on the margin's
/// scale; a relative margin cannot be evaluated while the baseline mean is 0 (no
/// evidence, so no action) — prefer an event (attribution) metric for rare errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuardrailPolicy {
    /// Metric name.
    pub metric: String,
    /// Direction that counts as harm (latency, errors: `Increase`).
    pub direction: Direction,
    /// Tolerance: the harm (rollback) test rejects "worse than the margin", and the
    /// non-inferiority (advance) test proves "better than the margin".
    pub margin: Margin,
}

/// Everything the decision rule is configured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// Canary or A/B.
    pub kind: ExperimentKind,
    /// Two-sided level of the primary comparison (split over treatment arms).
    pub alpha: f64,
    /// One-sided level of guardrail harm (split over guardrails and arms) and
    /// non-inferiority (split over arms) tests.
    pub guardrail_alpha: f64,
    /// Design sample size N* (total units of both arms) where CSs are tightest.
    pub design_samples: f64,
    /// Primary metric (required for `Promote` / `NoDifference`).
    pub primary: Option<PrimaryPolicy>,
    /// Guardrails.
    pub guardrails: Vec<GuardrailPolicy>,
    /// Burn-in: units per arm before any action (plug-in variances are noisy below).
    pub min_units_per_arm: u64,
    /// Burn-in: events (binary successes, attribution events) across the two
    /// compared arms before that comparison can act.
    pub min_events: u64,
    /// Events on the treatment arm an exact count test (the attribution test)
    /// needs before it may roll back. The test is exact at any count, so it
    /// waits for no asymptotic burn-in (`min_units_per_arm`, `min_events`);
    /// this floor only keeps a burst of a handful of errors from deciding.
    #[serde(default = "default_min_exact_events")]
    pub min_exact_events: u64,
    /// SRM level (sequential test), default 0.001.
    pub srm_alpha: f64,
    /// Dirichlet concentration of the sequential SRM test, default 10 000.
    pub srm_concentration: f64,
}

/// Default of [`Policy::min_exact_events`].
pub const DEFAULT_MIN_EXACT_EVENTS: u64 = 5;

fn default_min_exact_events() -> u64 {
    DEFAULT_MIN_EXACT_EVENTS
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            kind: ExperimentKind::Ab,
            alpha: super::DEFAULT_ALPHA,
            guardrail_alpha: 0.05,
            design_samples: super::DEFAULT_DESIGN_SAMPLES,
            primary: None,
            guardrails: Vec::new(),
            min_units_per_arm: 100,
            min_events: 30,
            min_exact_events: DEFAULT_MIN_EXACT_EVENTS,
            srm_alpha: super::DEFAULT_SRM_ALPHA,
            srm_concentration: super::DEFAULT_SRM_CONCENTRATION,
        }
    }
}

/// Invalid policy or snapshot.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// A level or tuning parameter out of range.
    #[error("{field}: {message}")]
    BadParameter {
        /// Field name.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The baseline arm is not among the snapshot's arms.
    #[error("baseline arm `{0}` is not among the arms")]
    UnknownBaseline(String),
    /// Two arms share a name.
    #[error("duplicate arm `{0}`")]
    DuplicateArm(String),
    /// An event (attribution) metric cannot be primary or carry an absolute margin.
    #[error("metric `{0}`: event metrics support only guardrails with a relative margin")]
    EventMetricMisuse(String),
}

/// Shorthand for [`PolicyError::BadParameter`], shared with the snapshot checks.
pub(super) fn bad(field: &str, message: String) -> PolicyError {
    PolicyError::BadParameter {
        field: field.to_string(),
        message,
    }
}

impl Policy {
    /// Checks ranges: levels in (0, 0.5), N* and k > 0, margins finite and ≥ 0.
    /// Returns the first of [`Policy::problems`].
    pub fn validate(&self) -> Result<(), PolicyError> {
        match self.problems().into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Every range violation, in field order (empty when the policy is valid).
    /// The config schema reports them all at once, each at its YAML line; a
    /// look only needs the first.
    pub fn problems(&self) -> Vec<PolicyError> {
        let mut out = Vec::new();
        for (name, a) in [
            ("alpha", self.alpha),
            ("guardrail_alpha", self.guardrail_alpha),
        ] {
            if !(a > 0.0 && a < 0.5) {
                out.push(bad(name, format!("must be in (0, 0.5), got {a}")));
            }
        }
        if !(self.srm_alpha > 0.0 && self.srm_alpha < 1.0) {
            out.push(bad(
                "srm_alpha",
                format!("must be in (0, 1), got {}", self.srm_alpha),
            ));
        }
        for (name, v) in [
            ("design_samples", self.design_samples),
            ("srm_concentration", self.srm_concentration),
        ] {
            if !(v.is_finite() && v > 0.0) {
                out.push(bad(name, format!("must be finite and > 0, got {v}")));
            }
        }
        for (i, g) in self.guardrails.iter().enumerate() {
            let m = g.margin.value();
            if !(m.is_finite() && m >= 0.0) {
                out.push(bad(
                    &format!("guardrails[{i}].margin"),
                    format!("must be finite and >= 0, got {m}"),
                ));
            }
        }
        if let Some(p) = &self.primary {
            if !(p.min_effect.is_finite() && p.min_effect >= 0.0) {
                out.push(bad(
                    "primary.min_effect",
                    format!("must be >= 0, got {}", p.min_effect),
                ));
            }
            if let Some(e) = p.equivalence_margin {
                if !(e.is_finite() && e > 0.0) {
                    out.push(bad(
                        "primary.equivalence_margin",
                        format!("must be > 0, got {e}"),
                    ));
                }
            }
        }
        out
    }

    /// The two-sided mixture tuning at the primary level.
    pub(super) fn mixture(&self) -> MixtureConfig {
        MixtureConfig {
            alpha: self.alpha,
            design_samples: self.design_samples,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_lists_every_violation_and_validate_returns_the_first() {
        let p = Policy {
            alpha: 0.7,
            design_samples: 0.0,
            primary: Some(PrimaryPolicy {
                metric: "accepted".into(),
                direction: Direction::Increase,
                scale: Scale::Relative,
                min_effect: -0.1,
                equivalence_margin: None,
            }),
            ..Policy::default()
        };
        let fields: Vec<String> = p
            .problems()
            .into_iter()
            .map(|e| match e {
                PolicyError::BadParameter { field, .. } => field,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(fields, ["alpha", "design_samples", "primary.min_effect"]);
        assert_eq!(
            p.validate().unwrap_err().to_string(),
            "alpha: must be in (0, 0.5), got 0.7"
        );
        assert!(Policy::default().problems().is_empty());
        assert_eq!(Policy::default().validate(), Ok(()));
    }
}

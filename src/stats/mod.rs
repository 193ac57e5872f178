//! `stats`: the pure statistics engine of abgate.
//!
//! Everything here is a pure function of its arguments: no I/O, no clocks, no
//! tokio, no global or thread-local state, no randomness. The controller owns
//! time and traffic; it feeds per-arm sufficient statistics in and gets
//! anytime-valid evidence and a [`Verdict`] out. Because every test is
//! anytime-valid (Ville's inequality on a nonnegative martingale), the caller may
//! look as often as it likes; the running extremes kept in [`ExperimentEvidence`]
//! remember whether a boundary was ever crossed.
//!
//! Submodules, one job each:
//! * [`sufficient`]: mergeable per-arm sufficient statistics.
//! * [`mixture`]: the Gaussian-mixture martingale (two-sided CS/p, one-sided harm and
//!   non-inferiority tests), two-sample comparisons, Wald SPRT helpers.
//! * [`attribution`]: the error/slow-request attribution test on event counts,
//!   valid while the canary share is ramped.
//! * [`drift`]: the drift watch's e-detector (average run length to a false
//!   alarm bounded below, however long it runs).
//! * [`srm`]: sample-ratio-mismatch tests (chi-square for display, sequential
//!   Dirichlet-multinomial for decisions).
//! * [`policy`]: what the decision rule is configured with, and its validation.
//! * [`snapshot`]: the per-arm facts fed in at one look.
//! * [`evidence`]: running state across looks (serde-serializable).
//! * [`decide`](mod@decide): the pure decision rule producing a [`Verdict`].
//! * [`explain`]: the comparisons behind a verdict and its explanation, for people.
//! * [`analyze`]: offline JSON analysis for the `abgate analyze` CLI verb.
//!
//! The decision rule's layers, lowest first: `policy` ← `snapshot` ← `evidence`
//! ← `decide` ← `explain` ← `analyze`; a module never names one above it, so
//! there is no import cycle to untangle when one of them changes.
//!
//! Formulas follow `shared/reference/STATISTICS.md` and mirror `avi.py`.

#![warn(missing_docs)]

pub mod analyze;
pub mod attribution;
pub mod decide;
pub mod drift;
pub mod evidence;
pub mod explain;
pub mod mixture;
pub mod paired;
pub mod policy;
pub mod shadow_gate;
pub mod snapshot;
pub mod srm;
pub mod strata;
pub mod sufficient;

pub use analyze::{analyze_json, render_table, AnalyzeError};
pub use attribution::{attribution_q, ErrorAttribution, RR_GRID};
pub use decide::{decide, ComparisonEvidence, HoldReason, Verdict};
pub use evidence::{
    ArmUnits, ComparisonRecord, EffectScale, ExperimentEvidence, SrmRecord, TestKind,
};
pub use explain::{comparisons, ComparisonView};
pub use paired::{
    discordant_log_e_one_sided, discordant_two_sided, paired_log_e_one_sided, paired_two_sided,
    DiscordantConfig, DiscordantPairs, PairedSums,
};
pub use policy::{
    Direction, ExperimentKind, GuardrailPolicy, Margin, Policy, PolicyError, PrimaryPolicy,
    DEFAULT_MIN_EXACT_EVENTS,
};
pub use shadow_gate::{
    GuardrailStatus, PairedData, ShadowEvidence, ShadowFacts, ShadowGuardrail, ShadowLook,
    ShadowVerdict,
};
pub use snapshot::{ArmSnapshot, MetricData, MetricSnapshot, Snapshot, StepFacts};

pub use mixture::{
    compare, Comparison, MixtureConfig, NotComputable, Scale, SequentialEstimate, DEFAULT_ALPHA,
    DEFAULT_DESIGN_SAMPLES,
};
pub use srm::{SrmMonitor, SrmResult, DEFAULT_SRM_ALPHA, DEFAULT_SRM_CONCENTRATION};
pub use sufficient::{AssignmentCounts, BinaryStats, ContinuousStats, EventCounts, Moments};

/// Errors for invalid inputs to the statistics functions (programming or
/// configuration errors, as opposed to [`NotComputable`], which is a legitimate
/// "not enough information yet" outcome).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StatsError {
    /// A count of successes exceeds the number of trials.
    #[error("successes {successes} exceed n {n}")]
    SuccessesExceedN {
        /// Trials.
        n: u64,
        /// Successes.
        successes: u64,
    },
    /// A variance was negative or not finite.
    #[error("variance must be finite and >= 0, got {0}")]
    BadVariance(f64),
    /// A mean or observation was not finite.
    #[error("value must be finite, got {0}")]
    NotFinite(f64),
    /// A probability / traffic share / alpha outside its open interval.
    #[error("{name} must be in (0, 1), got {value}")]
    OutOfUnitInterval {
        /// Which parameter.
        name: &'static str,
        /// The offending value.
        value: f64,
    },
    /// A strictly positive parameter (concentration, design samples, ratio) was not.
    #[error("{name} must be finite and > 0, got {value}")]
    NotPositive {
        /// Which parameter.
        name: &'static str,
        /// The offending value.
        value: f64,
    },
    /// Counts and weights differ in length, or fewer than two arms were given.
    #[error("need >= 2 arms with one weight per count (got {counts} counts, {weights} weights)")]
    ArmMismatch {
        /// Number of counts.
        counts: usize,
        /// Number of weights.
        weights: usize,
    },
}

/// Natural log of `1/alpha`, the e-value threshold of a level-`alpha` test, in log space.
pub(crate) fn ln_inv(alpha: f64) -> f64 {
    -alpha.ln()
}

/// Checks that `value` lies in the open unit interval.
pub(crate) fn check_unit(name: &'static str, value: f64) -> Result<(), StatsError> {
    if value.is_finite() && value > 0.0 && value < 1.0 {
        Ok(())
    } else {
        Err(StatsError::OutOfUnitInterval { name, value })
    }
}

/// Checks that `value` is finite and strictly positive.
pub(crate) fn check_positive(name: &'static str, value: f64) -> Result<(), StatsError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(StatsError::NotPositive { name, value })
    }
}

/// Converts a log e-value into an (instantaneous) p-value `min(1, 1/E)`.
pub(crate) fn p_from_log_e(log_e: f64) -> f64 {
    if log_e.is_nan() || log_e <= 0.0 {
        1.0
    } else {
        (-log_e).exp()
    }
}

//! Policy types and the decision rule (STATISTICS.md §3.3), a pure function of
//! (policy, running evidence, step facts) to a [`Verdict`].
//!
//! The module has no clock: the caller supplies time- and budget-related facts as
//! plain booleans in [`StepFacts`]. Order of checks (first match wins):
//! 1. burn-in per arm not met → `InsufficientData` (`Inconclusive` if the budget is spent);
//! 2. SRM running p ≤ `srm_alpha` → `Hold`;
//! 3. a ready guardrail's harm p ≤ `guardrail_alpha/(K_g·A)` → `Rollback`
//!    (Bonferroni over K_g guardrails and A treatment arms), or the primary CS lies
//!    entirely on the worse side → `Rollback`;
//! 4. any comparison the policy needs has not passed burn-in → `InsufficientData`;
//! 5. Canary: every guardrail non-inferior and `step_minimums_met` → `Advance`;
//!    A/B: primary CS beyond `min_effect` in the good direction, every guardrail
//!    non-inferior for that arm and `step_minimums_met` → `Promote`;
//! 6. primary CS inside ±`equivalence_margin` for every arm → `NoDifference`;
//! 7. `budget_exhausted` → `Inconclusive`; else `Continue`.
//!
//! Little or no traffic can never produce `Rollback`: every action is gated by
//! burn-in, and not-computable comparisons carry no evidence.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::evidence::{ComparisonRecord, EffectScale, ExperimentEvidence, TestKind};
use super::mixture::{MixtureConfig, Scale};
use super::sufficient::{BinaryStats, ContinuousStats};
use super::{ErrorAttribution, SrmMonitor};

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
    /// SRM level (sequential test), default 0.001.
    pub srm_alpha: f64,
    /// Dirichlet concentration of the sequential SRM test, default 10 000.
    pub srm_concentration: f64,
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

fn bad(field: &str, message: String) -> PolicyError {
    PolicyError::BadParameter {
        field: field.to_string(),
        message,
    }
}

impl Policy {
    /// Checks ranges: levels in (0, 0.5), N* and k > 0, margins finite and ≥ 0.
    pub fn validate(&self) -> Result<(), PolicyError> {
        for (name, a) in [
            ("alpha", self.alpha),
            ("guardrail_alpha", self.guardrail_alpha),
        ] {
            if !(a > 0.0 && a < 0.5) {
                return Err(bad(name, format!("must be in (0, 0.5), got {a}")));
            }
        }
        if !(self.srm_alpha > 0.0 && self.srm_alpha < 1.0) {
            return Err(bad(
                "srm_alpha",
                format!("must be in (0, 1), got {}", self.srm_alpha),
            ));
        }
        for (name, v) in [
            ("design_samples", self.design_samples),
            ("srm_concentration", self.srm_concentration),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(bad(name, format!("must be finite and > 0, got {v}")));
            }
        }
        for (i, g) in self.guardrails.iter().enumerate() {
            let m = g.margin.value();
            if !(m.is_finite() && m >= 0.0) {
                return Err(bad(
                    &format!("guardrails[{i}].margin"),
                    format!("must be finite and >= 0, got {m}"),
                ));
            }
        }
        if let Some(p) = &self.primary {
            if !(p.min_effect.is_finite() && p.min_effect >= 0.0) {
                return Err(bad(
                    "primary.min_effect",
                    format!("must be >= 0, got {}", p.min_effect),
                ));
            }
            if let Some(e) = p.equivalence_margin {
                if !(e.is_finite() && e > 0.0) {
                    return Err(bad(
                        "primary.equivalence_margin",
                        format!("must be > 0, got {e}"),
                    ));
                }
            }
        }
        Ok(())
    }

    fn mixture(&self) -> MixtureConfig {
        MixtureConfig {
            alpha: self.alpha,
            design_samples: self.design_samples,
        }
    }
}

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

/// The numbers behind a verdict for one (metric, arm, test).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComparisonEvidence {
    /// Metric name.
    pub metric: String,
    /// Treatment arm.
    pub arm: String,
    /// Which test.
    pub test: TestKind,
    /// Scale of `estimate` and `ci`.
    pub effect: EffectScale,
    /// Point estimate (difference, relative lift or rate ratio); NaN-free.
    pub estimate: f64,
    /// Always-valid CS `[lo, hi]` at level `ci_alpha`.
    pub ci: [f64; 2],
    /// Level of `ci` (0.05 ⇒ a 95 % CS).
    pub ci_alpha: f64,
    /// Running-minimum always-valid p-value of `test`.
    pub p_value: f64,
    /// Threshold `p_value` is compared with (multiplicity-adjusted).
    pub threshold: f64,
    /// Units on the treatment arm.
    pub units_arm: u64,
    /// Units on the baseline arm.
    pub units_baseline: u64,
    /// Events on the treatment arm (successes / errors), 0 for continuous metrics.
    pub events_arm: u64,
    /// Events on the baseline arm.
    pub events_baseline: u64,
}

/// Why the experiment is held.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HoldReason {
    /// Traffic split differs from the configured weights.
    SampleRatioMismatch {
        /// Running-minimum sequential SRM p-value.
        p_value: f64,
        /// Threshold (`srm_alpha`).
        threshold: f64,
        /// Chi-square p-value at the latest look (display only), if computed.
        chi2_p: Option<f64>,
        /// Arms in the order of `counts`.
        arms: Vec<String>,
        /// Units assigned per arm.
        counts: Vec<u64>,
        /// Expected shares per arm.
        expected_shares: Vec<f64>,
    },
}

/// The decision at one look.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Burn-in not met: keep collecting, take no action.
    InsufficientData {
        /// Arm lacking data.
        arm: String,
        /// Metric lacking data (None: the arm itself has too few units).
        metric: Option<String>,
        /// Units seen on the arm.
        units: u64,
        /// Units required.
        min_units: u64,
        /// Events seen in the comparison.
        events: u64,
        /// Events required.
        min_events: u64,
    },
    /// No boundary crossed yet.
    Continue {
        /// Primary evidence of the best arm, if any.
        primary: Option<ComparisonEvidence>,
    },
    /// Freeze the ramp and alert.
    Hold {
        /// Why.
        reason: HoldReason,
    },
    /// Stop the arm now.
    Rollback {
        /// Metric that crossed.
        metric: String,
        /// Arm to roll back.
        arm: String,
        /// The numbers.
        evidence: ComparisonEvidence,
    },
    /// Canary: the step may advance.
    Advance {
        /// Canary arm.
        arm: String,
        /// Non-inferiority evidence per guardrail.
        guardrails: Vec<ComparisonEvidence>,
    },
    /// A/B: ship this arm.
    Promote {
        /// Winning arm.
        arm: String,
        /// Primary evidence.
        evidence: ComparisonEvidence,
        /// Non-inferiority evidence per guardrail.
        guardrails: Vec<ComparisonEvidence>,
    },
    /// Every arm is practically equivalent to the baseline.
    NoDifference {
        /// Primary evidence per arm.
        evidence: Vec<ComparisonEvidence>,
    },
    /// Budget spent without a decision: keep the baseline.
    Inconclusive {
        /// Primary evidence of the best arm, if any.
        primary: Option<ComparisonEvidence>,
    },
}

/// Levels after multiplicity correction.
struct Levels {
    primary: f64,
    harm: f64,
    ni: f64,
}

fn levels(policy: &Policy, ev: &ExperimentEvidence) -> Levels {
    let arms = ev.treatment_arms().count().max(1) as f64;
    let guards = policy.guardrails.len().max(1) as f64;
    Levels {
        primary: policy.alpha / arms,
        harm: policy.guardrail_alpha / (guards * arms),
        ni: policy.guardrail_alpha / arms,
    }
}

fn evidence_of(
    metric: &str,
    arm: &str,
    rec: &ComparisonRecord,
    test: TestKind,
    policy: &Policy,
    threshold: f64,
) -> ComparisonEvidence {
    let (estimate, ci, ci_alpha) = match (rec.effect, rec.latest) {
        (EffectScale::RateRatio, _) => (
            rec.rate_ratio.unwrap_or(1.0),
            rec.interval.unwrap_or([0.0, f64::MAX]),
            rec.interval_alpha,
        ),
        (_, Some(latest)) => match test {
            TestKind::TwoSided => (
                latest.estimate,
                rec.interval.unwrap_or(latest.ci),
                rec.interval_alpha,
            ),
            _ => (
                latest.estimate,
                latest.ci_at(threshold, &policy.mixture()),
                threshold,
            ),
        },
        (_, None) => (0.0, [f64::MIN, f64::MAX], rec.interval_alpha),
    };
    let p_value = match test {
        TestKind::TwoSided => rec.two_sided_min_p,
        TestKind::Harm => rec.harm_min_p,
        TestKind::NonInferiority => rec.ni_min_p,
        TestKind::Srm => 1.0,
    };
    ComparisonEvidence {
        metric: metric.to_string(),
        arm: arm.to_string(),
        test,
        effect: rec.effect,
        estimate,
        ci,
        ci_alpha,
        p_value,
        threshold,
        units_arm: rec.units_arm,
        units_baseline: rec.units_baseline,
        events_arm: rec.events_arm,
        events_baseline: rec.events_baseline,
    }
}

/// Whether guardrail `g` is established non-inferior for `rec`.
fn non_inferior(g: &GuardrailPolicy, rec: &ComparisonRecord, alpha_ni: f64) -> bool {
    if !rec.ready {
        return false;
    }
    match rec.effect {
        EffectScale::RateRatio => rec
            .interval
            .is_some_and(|[_, hi]| hi < 1.0 + g.margin.value()),
        _ => rec.ni_min_p <= alpha_ni,
    }
}

/// Signed primary position: `Some(true)` significantly better by more than
/// `min_effect`, `Some(false)` significantly worse, `None` neither.
fn primary_side(p: &PrimaryPolicy, rec: &ComparisonRecord) -> Option<bool> {
    if !rec.ready {
        return None;
    }
    let [lo, hi] = rec.interval?;
    let (good_lo, good_hi) = match p.direction {
        Direction::Increase => (lo, hi),
        Direction::Decrease => (-hi, -lo),
    };
    if good_hi < 0.0 {
        Some(false)
    } else if good_lo > p.min_effect {
        Some(true)
    } else {
        None
    }
}

/// The decision rule. Pure: same inputs, same verdict.
///
/// `evidence` must have been fed by [`ExperimentEvidence::observe`] under the same
/// `policy`. See the module docs for the order of checks.
pub fn decide(policy: &Policy, evidence: &ExperimentEvidence, facts: &StepFacts) -> Verdict {
    let lv = levels(policy, evidence);
    let wait = |arm: &str, metric: Option<&str>, units: u64, events: u64| {
        if facts.budget_exhausted {
            Verdict::Inconclusive {
                primary: best_primary(policy, evidence, &lv),
            }
        } else {
            Verdict::InsufficientData {
                arm: arm.to_string(),
                metric: metric.map(str::to_string),
                units,
                min_units: policy.min_units_per_arm,
                events,
                min_events: policy.min_events,
            }
        }
    };

    // 1. Arm-level burn-in.
    if evidence.looks == 0 || evidence.treatment_arms().next().is_none() {
        return wait(&evidence.baseline, None, 0, 0);
    }
    if let Some(a) = evidence
        .arms
        .iter()
        .find(|a| a.units < policy.min_units_per_arm)
    {
        return wait(&a.name, None, a.units, 0);
    }

    // 2. SRM.
    if evidence.srm.min_p <= policy.srm_alpha {
        let s = &evidence.srm;
        return Verdict::Hold {
            reason: HoldReason::SampleRatioMismatch {
                p_value: s.min_p,
                threshold: policy.srm_alpha,
                chi2_p: s.latest.map(|l| l.chi2_p),
                arms: s.arms.clone(),
                counts: s.counts.clone(),
                expected_shares: s.expected_shares.clone(),
            },
        };
    }

    // 3. Harm: the most significant crossing among ready guardrails.
    let mut worst: Option<ComparisonEvidence> = None;
    for g in &policy.guardrails {
        for arm in evidence.treatment_arms() {
            let Some(rec) = evidence.comparison(&g.metric, &arm.name) else {
                continue;
            };
            if rec.ready && rec.harm_min_p <= lv.harm {
                let e = evidence_of(&g.metric, &arm.name, rec, TestKind::Harm, policy, lv.harm);
                if worst.as_ref().is_none_or(|w| e.p_value < w.p_value) {
                    worst = Some(e);
                }
            }
        }
    }
    if let Some(e) = worst {
        return Verdict::Rollback {
            metric: e.metric.clone(),
            arm: e.arm.clone(),
            evidence: e,
        };
    }
    if let Some(p) = &policy.primary {
        for arm in evidence.treatment_arms() {
            if let Some(rec) = evidence.comparison(&p.metric, &arm.name) {
                if primary_side(p, rec) == Some(false) {
                    let e = evidence_of(
                        &p.metric,
                        &arm.name,
                        rec,
                        TestKind::TwoSided,
                        policy,
                        lv.primary,
                    );
                    return Verdict::Rollback {
                        metric: p.metric.clone(),
                        arm: arm.name.clone(),
                        evidence: e,
                    };
                }
            }
        }
    }

    // 4. Comparison-level burn-in for everything the policy needs.
    let needed = policy
        .guardrails
        .iter()
        .map(|g| g.metric.as_str())
        .chain(policy.primary.as_ref().map(|p| p.metric.as_str()));
    for metric in needed {
        for arm in evidence.treatment_arms() {
            match evidence.comparison(metric, &arm.name) {
                Some(rec) if rec.ready => {}
                Some(rec) => {
                    return wait(
                        &arm.name,
                        Some(metric),
                        rec.units_arm.min(rec.units_baseline),
                        rec.events_arm + rec.events_baseline,
                    )
                }
                None => return wait(&arm.name, Some(metric), arm.units, 0),
            }
        }
    }

    let guardrails_ni = |arm: &str| -> Option<Vec<ComparisonEvidence>> {
        policy
            .guardrails
            .iter()
            .map(|g| {
                let rec = evidence.comparison(&g.metric, arm)?;
                non_inferior(g, rec, lv.ni).then(|| {
                    evidence_of(&g.metric, arm, rec, TestKind::NonInferiority, policy, lv.ni)
                })
            })
            .collect()
    };

    // 5. Advance / Promote.
    match policy.kind {
        ExperimentKind::Canary => {
            if facts.step_minimums_met {
                let mut all = Vec::new();
                let mut ok = true;
                for arm in evidence.treatment_arms() {
                    match guardrails_ni(&arm.name) {
                        Some(v) => all.extend(v),
                        None => ok = false,
                    }
                }
                if ok {
                    let arm = evidence
                        .treatment_arms()
                        .next()
                        .map(|a| a.name.clone())
                        .unwrap_or_default();
                    return Verdict::Advance {
                        arm,
                        guardrails: all,
                    };
                }
            }
        }
        ExperimentKind::Ab => {
            if let (Some(p), true) = (&policy.primary, facts.step_minimums_met) {
                let mut best: Option<(f64, Verdict)> = None;
                for arm in evidence.treatment_arms() {
                    let Some(rec) = evidence.comparison(&p.metric, &arm.name) else {
                        continue;
                    };
                    if primary_side(p, rec) != Some(true) {
                        continue;
                    }
                    let Some(guards) = guardrails_ni(&arm.name) else {
                        continue;
                    };
                    let e = evidence_of(
                        &p.metric,
                        &arm.name,
                        rec,
                        TestKind::TwoSided,
                        policy,
                        lv.primary,
                    );
                    let score = p.direction.sign() * e.estimate;
                    if best.as_ref().is_none_or(|(s, _)| score > *s) {
                        best = Some((
                            score,
                            Verdict::Promote {
                                arm: arm.name.clone(),
                                evidence: e,
                                guardrails: guards,
                            },
                        ));
                    }
                }
                if let Some((_, v)) = best {
                    return v;
                }
            }
        }
    }

    // 6. Practical equivalence on every arm.
    if let Some(p) = &policy.primary {
        if let Some(delta) = p.equivalence_margin {
            let mut all = Vec::new();
            let every = evidence.treatment_arms().all(|arm| {
                evidence
                    .comparison(&p.metric, &arm.name)
                    .is_some_and(|rec| {
                        let inside = rec.ready
                            && rec
                                .interval
                                .is_some_and(|[lo, hi]| lo > -delta && hi < delta);
                        if inside {
                            all.push(evidence_of(
                                &p.metric,
                                &arm.name,
                                rec,
                                TestKind::TwoSided,
                                policy,
                                lv.primary,
                            ));
                        }
                        inside
                    })
            });
            if every {
                return Verdict::NoDifference { evidence: all };
            }
        }
    }

    // 7. Budget.
    let primary = best_primary(policy, evidence, &lv);
    if facts.budget_exhausted {
        Verdict::Inconclusive { primary }
    } else {
        Verdict::Continue { primary }
    }
}

/// Primary evidence of the arm with the best signed estimate, for context.
fn best_primary(
    policy: &Policy,
    ev: &ExperimentEvidence,
    lv: &Levels,
) -> Option<ComparisonEvidence> {
    let p = policy.primary.as_ref()?;
    ev.treatment_arms()
        .filter_map(|arm| {
            let rec = ev.comparison(&p.metric, &arm.name)?;
            rec.latest?;
            Some(evidence_of(
                &p.metric,
                &arm.name,
                rec,
                TestKind::TwoSided,
                policy,
                lv.primary,
            ))
        })
        .max_by(|a, b| {
            (p.direction.sign() * a.estimate).total_cmp(&(p.direction.sign() * b.estimate))
        })
}

/// One comparison as the decision rule sees it, for people to read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComparisonView {
    /// `guardrail` or `primary`.
    pub role: String,
    /// Estimate, interval, p-value and threshold of the test that can act on it
    /// (harm for a guardrail, two-sided for the primary).
    pub evidence: ComparisonEvidence,
    /// Whether burn-in (units, events) is met, so the comparison can act.
    pub ready: bool,
    /// Guardrails: whether non-inferiority is established (advancing and
    /// promoting need it on every guardrail).
    pub non_inferior: Option<bool>,
}

/// Every guardrail (harm test) and primary (two-sided test) comparison of every
/// treatment arm, at the levels [`decide`] uses: what a person needs to see why
/// the verdict is what it is, including while it is `continue`.
pub fn comparisons(policy: &Policy, evidence: &ExperimentEvidence) -> Vec<ComparisonView> {
    let lv = levels(policy, evidence);
    let mut out = Vec::new();
    for g in &policy.guardrails {
        for arm in evidence.treatment_arms() {
            if let Some(rec) = evidence.comparison(&g.metric, &arm.name) {
                out.push(ComparisonView {
                    role: "guardrail".into(),
                    evidence: evidence_of(
                        &g.metric,
                        &arm.name,
                        rec,
                        TestKind::Harm,
                        policy,
                        lv.harm,
                    ),
                    ready: rec.ready,
                    non_inferior: Some(non_inferior(g, rec, lv.ni)),
                });
            }
        }
    }
    if let Some(p) = &policy.primary {
        for arm in evidence.treatment_arms() {
            if let Some(rec) = evidence.comparison(&p.metric, &arm.name) {
                out.push(ComparisonView {
                    role: "primary".into(),
                    evidence: evidence_of(
                        &p.metric,
                        &arm.name,
                        rec,
                        TestKind::TwoSided,
                        policy,
                        lv.primary,
                    ),
                    ready: rec.ready,
                    non_inferior: None,
                });
            }
        }
    }
    out
}

impl ComparisonView {
    /// One line: `guardrail error on canary: 2.40x baseline, 97.5% CS [...], p = ...`,
    /// with whether it can act yet.
    pub fn describe(&self) -> String {
        let state = match (self.ready, self.non_inferior) {
            (false, _) => "; burn-in not met",
            (true, Some(true)) => "; non-inferior",
            (true, Some(false)) => "; not yet shown non-inferior",
            (true, None) => "",
        };
        format!("{} {}{state}", self.role, self.evidence.describe())
    }
}

/// Formats an effect for people: `+7.9%`, `2.30×` or `+0.0123`.
fn fmt_effect(effect: EffectScale, x: f64) -> String {
    match effect {
        EffectScale::Relative => format!("{:+.1}%", 100.0 * x),
        EffectScale::RateRatio => {
            if x >= 1e6 {
                "∞×".to_string()
            } else {
                format!("{x:.2}×")
            }
        }
        EffectScale::Absolute => fmt_num(x, true),
    }
}

/// Compact number with 4 significant digits.
pub(crate) fn fmt_num(x: f64, signed: bool) -> String {
    if !x.is_finite() || x.abs() >= 1e15 {
        return if x < 0.0 { "-∞".into() } else { "∞".into() };
    }
    let a = x.abs();
    let decimals = if a == 0.0 || a >= 1000.0 {
        1
    } else {
        (3 - a.log10().floor() as i32).clamp(0, 10) as usize
    };
    if signed {
        format!("{x:+.decimals$}")
    } else {
        format!("{x:.decimals$}")
    }
}

/// Formats a p-value: 4 significant digits, scientific below 1e-4.
pub(crate) fn fmt_p(p: f64) -> String {
    if p < 1e-4 {
        format!("{p:.2e}")
    } else {
        format!("{p:.4}")
    }
}

impl ComparisonEvidence {
    /// "`latency_ms` on canary: +7.9% vs baseline, 97.5% CS [+3.1%, +12.8%], p = 0.0012 (threshold 0.025), 5000 canary units".
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let level = 100.0 * (1.0 - self.ci_alpha);
        let level = if (level - level.round()).abs() < 1e-9 {
            format!("{level:.0}")
        } else {
            format!("{level:.1}")
        };
        let est = fmt_effect(self.effect, self.estimate);
        let what = match self.effect {
            EffectScale::RateRatio => format!("{est} baseline"),
            _ => format!("{est} vs baseline"),
        };
        let _ = write!(
            s,
            "{} on {}: {}, {}% CS [{}, {}], p = {} (threshold {}), {} {} units",
            self.metric,
            self.arm,
            what,
            level,
            fmt_effect(self.effect, self.ci[0]),
            fmt_effect(self.effect, self.ci[1]),
            fmt_p(self.p_value),
            fmt_p(self.threshold),
            self.units_arm,
            self.arm,
        );
        if self.events_arm + self.events_baseline > 0 {
            let _ = write!(
                s,
                " ({} vs {} baseline events)",
                self.events_arm, self.events_baseline
            );
        }
        s
    }
}

impl Verdict {
    /// Short machine name (`rollback`, `promote`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Self::InsufficientData { .. } => "insufficient_data",
            Self::Continue { .. } => "continue",
            Self::Hold { .. } => "hold",
            Self::Rollback { .. } => "rollback",
            Self::Advance { .. } => "advance",
            Self::Promote { .. } => "promote",
            Self::NoDifference { .. } => "no_difference",
            Self::Inconclusive { .. } => "inconclusive",
        }
    }

    /// The verdict in plain words, with the numbers that justify it.
    pub fn explain(&self) -> String {
        match self {
            Self::InsufficientData {
                arm,
                metric,
                units,
                min_units,
                events,
                min_events,
            } => match metric {
                None => format!(
                    "insufficient data: arm {arm} has {units} of the {min_units} units required before any action"
                ),
                Some(m) => format!(
                    "insufficient data: {m} on {arm} has {units} units (need {min_units} per arm) and {events} events (need {min_events}) before any action"
                ),
            },
            Self::Continue { primary } => match primary {
                Some(e) => format!("continue: no boundary crossed yet; {}", e.describe()),
                None => "continue: no boundary crossed yet".to_string(),
            },
            Self::Hold { reason } => match reason {
                HoldReason::SampleRatioMismatch {
                    p_value,
                    threshold,
                    chi2_p,
                    arms,
                    counts,
                    expected_shares,
                } => {
                    let total: u64 = counts.iter().sum();
                    let parts: Vec<String> = arms
                        .iter()
                        .zip(counts)
                        .zip(expected_shares)
                        .map(|((a, c), e)| {
                            let obs = if total > 0 { *c as f64 / total as f64 } else { 0.0 };
                            format!("{a} {c} ({:.2}% vs {:.2}% expected)", 100.0 * obs, 100.0 * e)
                        })
                        .collect();
                    let chi = chi2_p.map_or(String::new(), |c| format!(", chi-square p = {}", fmt_p(c)));
                    format!(
                        "hold: sample ratio mismatch, sequential p = {} <= {}{}; assigned {}",
                        fmt_p(*p_value),
                        fmt_p(*threshold),
                        chi,
                        parts.join(", ")
                    )
                }
            },
            Self::Rollback { evidence, .. } => {
                let why = match evidence.test {
                    TestKind::TwoSided => "primary metric significantly worse",
                    _ => "guardrail harmed",
                };
                format!("rolled back ({why}): {}", evidence.describe())
            }
            Self::Advance { arm, guardrails } => {
                let parts: Vec<String> = guardrails.iter().map(|g| g.describe()).collect();
                format!(
                    "advance {arm}: step minimums met and all {} guardrails non-inferior{}{}",
                    guardrails.len(),
                    if parts.is_empty() { "" } else { ": " },
                    parts.join("; ")
                )
            }
            Self::Promote {
                arm,
                evidence,
                guardrails,
            } => format!(
                "promote {arm}: {}; all {} guardrails non-inferior",
                evidence.describe(),
                guardrails.len()
            ),
            Self::NoDifference { evidence } => {
                let parts: Vec<String> = evidence.iter().map(|e| e.describe()).collect();
                format!(
                    "no difference: every arm within the equivalence margin: {}",
                    parts.join("; ")
                )
            }
            Self::Inconclusive { primary } => match primary {
                Some(e) => format!(
                    "inconclusive: budget exhausted without a decision, keep the baseline; {}",
                    e.describe()
                ),
                None => "inconclusive: budget exhausted without a decision, keep the baseline"
                    .to_string(),
            },
        }
    }
}

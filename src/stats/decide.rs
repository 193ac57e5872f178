//! `stats::decide`: the decision rule (STATISTICS.md §3.3), a pure function of
//! (policy, running evidence, step facts) to a [`Verdict`].
//!
//! Owns: [`Verdict`], [`HoldReason`], [`ComparisonEvidence`] and the order of
//! checks below, with the multiplicity-corrected levels they use.
//! Never: formats text for people (that is `explain`), updates evidence, or is
//! imported by the layers below it (`policy`, `snapshot`, `evidence`).
//!
//! The module has no clock: the caller supplies time- and budget-related facts as
//! plain booleans in [`StepFacts`]. Order of checks (first match wins):
//! 1. burn-in per arm not met → `InsufficientData` (`Inconclusive` if the budget is spent),
//!    unless an exact count test (attribution, rate ratio) crosses its harm
//!    boundary with `min_exact_events` treatment events: that test needs no
//!    asymptotic burn-in, so it is a `Rollback` (a `Hold` if SRM has fired);
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
//! burn-in (for an exact count test: `min_exact_events` treatment events and
//! an e-value beyond `1/level`), and not-computable comparisons carry no evidence.

use serde::{Deserialize, Serialize};

use super::evidence::{ComparisonRecord, EffectScale, ExperimentEvidence, TestKind};
use super::policy::{Direction, ExperimentKind, GuardrailPolicy, Policy, PrimaryPolicy};
use super::snapshot::StepFacts;

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
pub(super) struct Levels {
    /// Two-sided level of the primary comparison, per treatment arm.
    pub(super) primary: f64,
    /// One-sided harm level, per guardrail and treatment arm.
    pub(super) harm: f64,
    /// One-sided non-inferiority level, per treatment arm.
    pub(super) ni: f64,
}

/// The levels [`decide`] compares running p-values with.
pub(super) fn levels(policy: &Policy, ev: &ExperimentEvidence) -> Levels {
    let arms = ev.treatment_arms().count().max(1) as f64;
    let guards = policy.guardrails.len().max(1) as f64;
    Levels {
        primary: policy.alpha / arms,
        harm: policy.guardrail_alpha / (guards * arms),
        ni: policy.guardrail_alpha / arms,
    }
}

/// The numbers of one record under `test` at level `threshold`, for a verdict or a view.
pub(super) fn evidence_of(
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
pub(super) fn non_inferior(g: &GuardrailPolicy, rec: &ComparisonRecord, alpha_ni: f64) -> bool {
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

/// Whether `rec`'s harm test may act. An exact count test (rate ratio on
/// attribution events) is valid at any count and needs only
/// `min_exact_events` on the treatment arm; an asymptotic test waits for its
/// burn-in (`rec.ready`: units per arm and events).
fn harm_ready(policy: &Policy, rec: &ComparisonRecord) -> bool {
    match rec.effect {
        EffectScale::RateRatio => rec.events_arm >= policy.min_exact_events,
        _ => rec.ready,
    }
}

/// The most significant harm crossing among guardrails whose test may act
/// (`exact_only`: only exact count tests, before the arm-level burn-in).
fn harm_crossing(
    policy: &Policy,
    evidence: &ExperimentEvidence,
    lv: &Levels,
    exact_only: bool,
) -> Option<ComparisonEvidence> {
    let mut worst: Option<ComparisonEvidence> = None;
    for g in &policy.guardrails {
        for arm in evidence.treatment_arms() {
            let Some(rec) = evidence.comparison(&g.metric, &arm.name) else {
                continue;
            };
            if exact_only && rec.effect != EffectScale::RateRatio {
                continue;
            }
            if harm_ready(policy, rec) && rec.harm_min_p <= lv.harm {
                let e = evidence_of(&g.metric, &arm.name, rec, TestKind::Harm, policy, lv.harm);
                if worst.as_ref().is_none_or(|w| e.p_value < w.p_value) {
                    worst = Some(e);
                }
            }
        }
    }
    worst
}

fn rollback(e: ComparisonEvidence) -> Verdict {
    Verdict::Rollback {
        metric: e.metric.clone(),
        arm: e.arm.clone(),
        evidence: e,
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
    let srm = || {
        (evidence.srm.min_p <= policy.srm_alpha).then(|| {
            let s = &evidence.srm;
            Verdict::Hold {
                reason: HoldReason::SampleRatioMismatch {
                    p_value: s.min_p,
                    threshold: policy.srm_alpha,
                    chi2_p: s.latest.map(|l| l.chi2_p),
                    arms: s.arms.clone(),
                    counts: s.counts.clone(),
                    expected_shares: s.expected_shares.clone(),
                },
            }
        })
    };
    if let Some(a) = evidence
        .arms
        .iter()
        .find(|a| a.units < policy.min_units_per_arm)
    {
        // An exact count test needs no asymptotic burn-in: its crossing is a
        // rollback now. It trusts the configured split, so a split that is
        // off holds instead (the SRM test is anytime-valid at any count too).
        return match harm_crossing(policy, evidence, &lv, true) {
            Some(e) => srm().unwrap_or_else(|| rollback(e)),
            None => wait(&a.name, None, a.units, 0),
        };
    }

    // 2. SRM.
    if let Some(hold) = srm() {
        return hold;
    }

    // 3. Harm: the most significant crossing among ready guardrails.
    if let Some(e) = harm_crossing(policy, evidence, &lv, false) {
        return rollback(e);
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

//! `stats::explain`: the decision rule's evidence, for people to read.
//!
//! Owns: [`ComparisonView`] and [`comparisons`] (every comparison at the levels
//! [`decide`](super::decide::decide) uses), number and effect formatting, and
//! the one-line explanations of a [`Verdict`] and of its [`ComparisonEvidence`].
//! Never: decides anything: it reads the levels and evidence the rule uses, so
//! what a person sees cannot drift from what the rule acted on.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::decide::{evidence_of, levels, non_inferior, ComparisonEvidence, HoldReason, Verdict};
use super::evidence::{EffectScale, ExperimentEvidence, TestKind};
use super::policy::Policy;

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
/// treatment arm, at the levels [`decide`](super::decide::decide) uses: what a person needs to see why
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

//! `stats::shadow_gate`: the decision of a canary's shadow step, from the
//! pairs of mirrored requests and their copies (STATISTICS.md's rules, on
//! paired data).
//!
//! Owns: which guardrails the pairs can judge, the one-sided harm and
//! non-inferiority tests on each (running maxima of their e-values, carried
//! in [`ShadowEvidence`]), the levels they are compared with, and the
//! verdict. Never: reads pairs from the data plane, clocks or the store (the
//! caller passes the pairs since the step began and the step's facts).
//!
//! Levels, as for a live step (`decide`): harm at `guardrail_alpha / K` for
//! `K` judged guardrails (Bonferroni: any one may roll back); non-inferiority
//! at `guardrail_alpha` for each (all must pass to advance: an
//! intersection–union test needs no correction). Each test's e-value is a
//! function of the running sums, so its running maximum is the e-process the
//! anytime-valid guarantee is about: the verdict may be read at every look.
//!
//! Guardrails on metrics the pairs do not carry (feedback, `slow`, cost) are
//! not judged here: no user sees a shadow, so there is no feedback, and they
//! are judged from the first live step. The view says so.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::mixture::{MixtureConfig, Scale, SequentialEstimate};
use super::paired::{
    discordant_log_e_one_sided, discordant_two_sided, paired_log_e_one_sided, paired_two_sided,
    ratio_log_e_one_sided, DiscordantConfig, DiscordantPairs, PairedSums,
};
use super::policy::{Direction, Margin, Policy};
use super::{ln_inv, p_from_log_e};

/// One guardrail metric's pairs since the shadow step began.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PairedData {
    /// A continuous metric's six sums.
    Continuous(PairedSums),
    /// Discordant counts and the pairs where both sides had the event.
    Events(DiscordantPairs, u64),
}

/// What the shadow step carries between looks: per guardrail metric, the
/// largest `ln E` seen so far of its harm and of its non-inferiority test.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShadowEvidence {
    /// Looks taken in the step.
    pub looks: u64,
    /// `[harm, non-inferiority]` per metric.
    pub max_log_e: BTreeMap<String, [f64; 2]>,
}

/// Facts about the step the caller knows (time, budget).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShadowFacts {
    /// `step.min_samples` pairs and `step.min_duration` reached.
    pub minimums_met: bool,
    /// `max_duration` since the experiment started has passed.
    pub budget_exhausted: bool,
}

/// A shadow step's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShadowVerdict {
    /// Not every judged guardrail is non-inferior yet, or the minimums are
    /// not met.
    Continue,
    /// Every judged guardrail is non-inferior on enough pairs: go live.
    Advance,
    /// A guardrail shows harm: remove the shadow; no user was exposed.
    Rollback,
    /// The budget ran out in shadow.
    Inconclusive,
}

impl ShadowVerdict {
    /// The verdict's name, as the view and the decision log show it.
    pub fn name(self) -> &'static str {
        match self {
            ShadowVerdict::Continue => "continue",
            ShadowVerdict::Advance => "advance",
            ShadowVerdict::Rollback => "rollback",
            ShadowVerdict::Inconclusive => "inconclusive",
        }
    }
}

/// Where one guardrail stands on the pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardrailStatus {
    /// Too few pairs, or neither test has crossed.
    Pending,
    /// Shown non-inferior (its one-sided test crossed).
    NonInferior,
    /// Shown worse beyond its margin.
    Harm,
    /// Not carried by the pairs: judged from the first live step.
    LiveOnly,
}

/// One guardrail on the pairs, for the verdict and the view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowGuardrail {
    /// Metric name.
    pub metric: String,
    /// Where it stands.
    pub status: GuardrailStatus,
    /// Pairs carrying the metric since the step began.
    pub pairs: u64,
    /// `shadow − primary`: the two-sided estimate and its confidence
    /// sequence (relative for a relative margin on a continuous metric; the
    /// risk difference for events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate: Option<SequentialEstimate>,
    /// Running-minimum p-values of the one-sided tests, and their levels.
    pub harm_p: f64,
    /// Level `harm_p` is compared with.
    pub harm_threshold: f64,
    /// Running-minimum p-value of non-inferiority.
    pub non_inferiority_p: f64,
    /// Level `non_inferiority_p` is compared with.
    pub non_inferiority_threshold: f64,
}

/// A look's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowLook {
    /// What to do.
    pub verdict: ShadowVerdict,
    /// The verdict in words, starting with its name.
    pub explain: String,
    /// Every guardrail, judged or not.
    pub guardrails: Vec<ShadowGuardrail>,
}

/// Looks at the pairs: updates `ev` and returns the verdict. `data(metric)`
/// is the metric's pairs since the step began, or `None` when the pairs do
/// not carry it; `pairs` is the number of pairs.
pub fn look(
    policy: &Policy,
    ev: &mut ShadowEvidence,
    pairs: u64,
    data: impl Fn(&str) -> Option<PairedData>,
    facts: ShadowFacts,
) -> ShadowLook {
    ev.looks += 1;
    let mix = MixtureConfig {
        alpha: policy.guardrail_alpha,
        design_samples: policy.design_samples / 2.0,
    };
    let judged = policy
        .guardrails
        .iter()
        .filter(|g| data(&g.metric).is_some())
        .count();
    let harm_level = policy.guardrail_alpha / judged.max(1) as f64;
    let ni_level = policy.guardrail_alpha;
    let mut rows = Vec::new();
    for g in &policy.guardrails {
        let Some(d) = data(&g.metric) else {
            rows.push(ShadowGuardrail {
                metric: g.metric.clone(),
                status: GuardrailStatus::LiveOnly,
                pairs: 0,
                estimate: None,
                harm_p: 1.0,
                harm_threshold: harm_level,
                non_inferiority_p: 1.0,
                non_inferiority_threshold: ni_level,
            });
            continue;
        };
        let s = match g.direction {
            Direction::Increase => 1.0,
            Direction::Decrease => -1.0,
        };
        // `ready`: [harm, non-inferiority] may count. The continuous tests
        // are asymptotic: both wait for `min_units_per_arm` pairs. The event
        // tests are exact; like a live step's count tests, harm also waits
        // for a few events, so a handful of pairs never rolls back.
        let (n, harm, ni, estimate, ready) = match d {
            PairedData::Continuous(sums) => {
                let (scale, m) = match g.margin {
                    Margin::Relative(m) => (Scale::Relative, m),
                    Margin::Absolute(m) => (Scale::Absolute, m),
                };
                (
                    sums.n,
                    paired_log_e_one_sided(&sums, scale, s, m, &mix).ok(),
                    paired_log_e_one_sided(&sums, scale, -s, -m, &mix).ok(),
                    paired_two_sided(&sums, scale, &mix).ok(),
                    [sums.n >= policy.min_units_per_arm; 2],
                )
            }
            PairedData::Events(p, both) => {
                let (harm, ni) = match g.margin {
                    Margin::Relative(m) => (
                        ratio_log_e_one_sided(&p, both, 1.0 + m, s).ok(),
                        ratio_log_e_one_sided(&p, both, 1.0 + m, -s).ok(),
                    ),
                    Margin::Absolute(m) => (
                        discordant_log_e_one_sided(&p, s, m).ok(),
                        discordant_log_e_one_sided(&p, -s, -m).ok(),
                    ),
                };
                let shadow_events = p.shadow_only + both;
                let primary_events = p.primary_only + both;
                let cfg = DiscordantConfig {
                    alpha: policy.guardrail_alpha,
                    ..DiscordantConfig::default()
                };
                (
                    p.pairs,
                    harm,
                    ni,
                    discordant_two_sided(&p, &cfg).ok(),
                    [
                        shadow_events >= policy.min_exact_events
                            || primary_events >= policy.min_exact_events,
                        p.pairs >= policy.min_units_per_arm,
                    ],
                )
            }
        };
        let best = ev
            .max_log_e
            .entry(g.metric.clone())
            // An e-process starts at E = 1, so its running maximum is at least
            // ln 1 = 0. Starting there (not at -inf) also keeps the carried
            // evidence finite: JSON has no -inf, and a run saved with one
            // would not read back after a restart.
            .or_insert([0.0; 2]);
        if let (true, Some(h)) = (ready[0], harm) {
            best[0] = best[0].max(h);
        }
        if let (true, Some(x)) = (ready[1], ni) {
            best[1] = best[1].max(x);
        }
        let status = if best[0] >= ln_inv(harm_level) {
            GuardrailStatus::Harm
        } else if best[1] >= ln_inv(ni_level) {
            GuardrailStatus::NonInferior
        } else {
            GuardrailStatus::Pending
        };
        rows.push(ShadowGuardrail {
            metric: g.metric.clone(),
            status,
            pairs: n,
            estimate,
            harm_p: p_from_log_e(best[0]),
            harm_threshold: harm_level,
            non_inferiority_p: p_from_log_e(best[1]),
            non_inferiority_threshold: ni_level,
        });
    }
    let judged_rows = || {
        rows.iter()
            .filter(|r| r.status != GuardrailStatus::LiveOnly)
    };
    let (verdict, explain) = if let Some(r) =
        judged_rows().find(|r| r.status == GuardrailStatus::Harm)
    {
        (
            ShadowVerdict::Rollback,
            format!(
                "guardrail harmed: {} is worse on the shadow beyond its margin (paired harm p = {:.2e} ≤ {:.2e}, {} pairs)",
                r.metric, r.harm_p, r.harm_threshold, r.pairs
            ),
        )
    } else if facts.minimums_met && judged_rows().all(|r| r.status == GuardrailStatus::NonInferior)
    {
        (
            ShadowVerdict::Advance,
            format!(
                "advance: every guardrail the pairs carry is non-inferior on {pairs} pairs ({})",
                judged_rows()
                    .map(|r| format!("{} p = {:.2e}", r.metric, r.non_inferiority_p))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    } else if facts.budget_exhausted {
        (
            ShadowVerdict::Inconclusive,
            format!("inconclusive: the budget ran out in shadow after {pairs} pairs"),
        )
    } else {
        let pending: Vec<&str> = judged_rows()
            .filter(|r| r.status != GuardrailStatus::NonInferior)
            .map(|r| r.metric.as_str())
            .collect();
        let why = match (facts.minimums_met, pending.is_empty()) {
            (false, _) => format!("{pairs} pairs, step minimums not met"),
            (true, false) => format!(
                "{pairs} pairs; not yet non-inferior: {}",
                pending.join(", ")
            ),
            (true, true) => format!("{pairs} pairs"),
        };
        (ShadowVerdict::Continue, format!("continue (shadow): {why}"))
    };
    ShadowLook {
        verdict,
        explain,
        guardrails: rows,
    }
}

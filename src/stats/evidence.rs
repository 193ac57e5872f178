//! Running evidence across looks: the only state the decision rule needs.
//!
//! Anytime-valid tests let the caller look at any time, but only if the
//! *running* extremes are used: the minimum p-value (maximum e-value) ever seen
//! and the intersection of all confidence sequences so far. This module keeps
//! them per (metric, arm, test), so "ever crossed" is remembered across looks
//! and across restarts (everything is serde-serializable).
//!
//! Owns: [`ExperimentEvidence`] and how one look folds into it.
//! Never: decides or explains (it sits below `decide` and `explain` and names
//! neither); it reads only the `policy` and the `snapshot` of the look.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::attribution::ErrorAttribution;
use super::mixture::{
    difference, halfwidth_two_sided, log_e_one_sided_for, two_sided, MixtureConfig, NotComputable,
    Scale, SequentialEstimate,
};
use super::p_from_log_e;
use super::policy::{Policy, PolicyError};
use super::snapshot::{MetricData, Snapshot};
use super::srm::{srm_test, SrmResult};
use super::strata::{stratified_difference, Stratum};
use super::sufficient::{BinaryStats, ContinuousStats, Moments};

/// Which hypothesis test a p-value belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TestKind {
    /// Two-sided mixture test of "no difference" (primary / display).
    TwoSided,
    /// One-sided harm (deterioration) test of "no worse than baseline".
    Harm,
    /// One-sided non-inferiority test of "worse by at least the margin".
    NonInferiority,
    /// Sample-ratio-mismatch test.
    Srm,
}

/// Scale of an effect shown to people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EffectScale {
    /// Treatment − baseline in metric units.
    Absolute,
    /// (Treatment − baseline)/baseline, a fraction.
    Relative,
    /// Event-rate ratio treatment/baseline (1.0 = equal).
    RateRatio,
}

impl From<Scale> for EffectScale {
    fn from(s: Scale) -> Self {
        match s {
            Scale::Absolute => Self::Absolute,
            Scale::Relative => Self::Relative,
        }
    }
}

/// Evidence about one treatment arm vs the baseline on one metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComparisonRecord {
    /// Scale of `interval` and of the latest estimate.
    pub effect: EffectScale,
    /// Latest two-sided estimate (mixture metrics), at level `interval_alpha`.
    pub latest: Option<SequentialEstimate>,
    /// Why the latest look produced no estimate, if it did not.
    pub not_computable: Option<NotComputable>,
    /// Latest rate-ratio point estimate (event metrics).
    pub rate_ratio: Option<f64>,
    /// Running intersection of the two-sided CS at level `interval_alpha`
    /// (only looks past burn-in); may be empty (lo > hi) if the model is violated.
    pub interval: Option<[f64; 2]>,
    /// Level of `interval` (already multiplicity-adjusted).
    pub interval_alpha: f64,
    /// Running minimum of the two-sided p-value.
    pub two_sided_min_p: f64,
    /// Running minimum of the one-sided harm p-value (guardrails only).
    pub harm_min_p: f64,
    /// Running minimum of the one-sided non-inferiority p-value (guardrail mixtures).
    pub ni_min_p: f64,
    /// Units (requests/users) on the treatment arm at the latest look.
    pub units_arm: u64,
    /// Units on the baseline arm at the latest look.
    pub units_baseline: u64,
    /// Events (successes / errors) on the treatment arm at the latest look.
    pub events_arm: u64,
    /// Events on the baseline arm at the latest look.
    pub events_baseline: u64,
    /// Whether burn-in (min units per arm, min events) was met at the latest look.
    pub ready: bool,
    /// Looks past burn-in that fed the running extremes.
    pub looks: u64,
}

impl ComparisonRecord {
    fn new(effect: EffectScale, interval_alpha: f64) -> Self {
        Self {
            effect,
            latest: None,
            not_computable: None,
            rate_ratio: None,
            interval: None,
            interval_alpha,
            two_sided_min_p: 1.0,
            harm_min_p: 1.0,
            ni_min_p: 1.0,
            units_arm: 0,
            units_baseline: 0,
            events_arm: 0,
            events_baseline: 0,
            ready: false,
            looks: 0,
        }
    }

    fn intersect(&mut self, ci: [f64; 2]) {
        self.interval = Some(match self.interval {
            None => ci,
            Some([lo, hi]) => [lo.max(ci[0]), hi.min(ci[1])],
        });
    }
}

/// Running SRM evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SrmRecord {
    /// Latest look (static-allocation test), if any.
    pub latest: Option<SrmResult>,
    /// Running minimum of the sequential SRM p-value.
    pub min_p: f64,
    /// Arm names in the order of `counts`.
    pub arms: Vec<String>,
    /// Units assigned per arm at the latest look.
    pub counts: Vec<u64>,
    /// Expected shares per arm (normalised weights).
    pub expected_shares: Vec<f64>,
}

impl Default for SrmRecord {
    /// No evidence yet: running p = 1 (a zero here would mean "SRM proven").
    fn default() -> Self {
        Self {
            latest: None,
            min_p: 1.0,
            arms: Vec::new(),
            counts: Vec::new(),
            expected_shares: Vec::new(),
        }
    }
}

/// Units seen on one arm (max over assignment count and metric sample sizes).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ArmUnits {
    /// Arm name.
    pub name: String,
    /// Units observed.
    pub units: u64,
}

/// Everything the decision rule reads, accumulated over looks.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ExperimentEvidence {
    /// Number of looks taken.
    pub looks: u64,
    /// Baseline arm of the latest look.
    pub baseline: String,
    /// Units per arm at the latest look (baseline included), snapshot order.
    pub arms: Vec<ArmUnits>,
    /// SRM evidence.
    pub srm: SrmRecord,
    /// Comparisons: metric → treatment arm → record.
    pub comparisons: BTreeMap<String, BTreeMap<String, ComparisonRecord>>,
}

impl ExperimentEvidence {
    /// Fresh evidence (no looks yet).
    pub fn new() -> Self {
        Self::default()
    }

    /// Record for `metric` / treatment `arm`, if it was ever observed.
    pub fn comparison(&self, metric: &str, arm: &str) -> Option<&ComparisonRecord> {
        self.comparisons.get(metric)?.get(arm)
    }

    /// Treatment arms (every arm but the baseline) of the latest look.
    pub fn treatment_arms(&self) -> impl Iterator<Item = &ArmUnits> {
        self.arms.iter().filter(move |a| a.name != self.baseline)
    }

    /// Takes one look: computes every test on `snapshot` under `policy` and folds
    /// the results into the running extremes. Sufficient statistics and
    /// attribution likelihoods accumulate from the first unit; running p-value
    /// minima and CS intersections of *plug-in variance* tests only start once a
    /// comparison passes burn-in, because tiny-n variance estimates inflate type-I
    /// error (4.4 % vs 1.8 % in STATISTICS.md §1.1, S3).
    pub fn observe(&mut self, policy: &Policy, snapshot: &Snapshot) -> Result<(), PolicyError> {
        policy.validate()?;
        snapshot.validate()?;
        snapshot.validate_against(policy)?;
        self.looks += 1;
        self.baseline.clone_from(&snapshot.baseline);
        self.observe_units(snapshot);
        self.observe_srm(snapshot, policy.srm_concentration);

        let treatments = snapshot.arms.len().saturating_sub(1).max(1) as f64;
        let alpha_primary = policy.alpha / treatments;
        let alpha_ni = policy.guardrail_alpha / treatments;
        let cfg = MixtureConfig {
            alpha: alpha_primary,
            design_samples: policy.design_samples,
        };
        // One-sided tests keep the nominal guardrail level for tuning.
        let cfg_g = MixtureConfig {
            alpha: policy.guardrail_alpha,
            design_samples: policy.design_samples,
        };
        let base_units = self.units_of(&snapshot.baseline);

        for metric in &snapshot.metrics {
            let guard = policy.guardrails.iter().find(|g| g.metric == metric.name);
            let primary = policy.primary.as_ref().filter(|p| p.metric == metric.name);
            let scale = match (primary, guard) {
                (Some(p), _) => p.scale,
                (None, Some(g)) => g.margin.scale(),
                (None, None) => Scale::Relative,
            };
            let per_arm = self.comparisons.entry(metric.name.clone()).or_default();
            for arm in snapshot.arms.iter().filter(|a| a.name != snapshot.baseline) {
                let units_arm = self
                    .arms
                    .iter()
                    .find(|a| a.name == arm.name)
                    .map_or(0, |a| a.units);
                match &metric.data {
                    MetricData::Binary(map) => {
                        let (Some(b), Some(t)) = (map.get(&snapshot.baseline), map.get(&arm.name))
                        else {
                            continue;
                        };
                        let rec = per_arm
                            .entry(arm.name.clone())
                            .or_insert_with(|| ComparisonRecord::new(scale.into(), alpha_primary));
                        rec.events_arm = t.successes;
                        rec.events_baseline = b.successes;
                        let events_ok = t.successes + b.successes >= policy.min_events;
                        let diff = match metric.periods.is_empty() {
                            true => difference(&b.moments(), &t.moments(), scale),
                            false => stratified_difference(
                                &strata_of(&metric.periods, &snapshot.baseline, &arm.name),
                                scale,
                            ),
                        };
                        observe_mixture(
                            rec,
                            diff,
                            (b.n, t.n),
                            scale,
                            &cfg,
                            &cfg_g,
                            guard.map(|g| (g.direction.sign(), g.margin.value())),
                            policy.min_units_per_arm,
                            events_ok,
                        );
                    }
                    MetricData::Continuous(map) => {
                        let (Some(b), Some(t)) = (map.get(&snapshot.baseline), map.get(&arm.name))
                        else {
                            continue;
                        };
                        let rec = per_arm
                            .entry(arm.name.clone())
                            .or_insert_with(|| ComparisonRecord::new(scale.into(), alpha_primary));
                        let diff = match metric.periods.is_empty() {
                            true => difference(&b.moments(), &t.moments(), scale),
                            false => stratified_difference(
                                &strata_of(&metric.periods, &snapshot.baseline, &arm.name),
                                scale,
                            ),
                        };
                        observe_mixture(
                            rec,
                            diff,
                            (b.n, t.n),
                            scale,
                            &cfg,
                            &cfg_g,
                            guard.map(|g| (g.direction.sign(), g.margin.value())),
                            policy.min_units_per_arm,
                            true,
                        );
                    }
                    MetricData::Events(map) => {
                        let Some(att) = map.get(&arm.name) else {
                            continue;
                        };
                        let rec = per_arm.entry(arm.name.clone()).or_insert_with(|| {
                            ComparisonRecord::new(EffectScale::RateRatio, alpha_ni)
                        });
                        observe_events(
                            rec,
                            att,
                            units_arm,
                            base_units,
                            policy.min_units_per_arm,
                            policy.min_events,
                            alpha_ni,
                        );
                    }
                }
            }
        }
        Ok(())
    }

    fn units_of(&self, arm: &str) -> u64 {
        self.arms
            .iter()
            .find(|a| a.name == arm)
            .map_or(0, |a| a.units)
    }

    fn observe_units(&mut self, snapshot: &Snapshot) {
        self.arms.clear();
        for arm in &snapshot.arms {
            let mut units = arm.assigned;
            for m in &snapshot.metrics {
                let n = match &m.data {
                    MetricData::Binary(map) => map.get(&arm.name).map_or(0, |s| s.n),
                    MetricData::Continuous(map) => map.get(&arm.name).map_or(0, |s| s.n),
                    MetricData::Events(_) => 0,
                };
                units = units.max(n);
            }
            self.arms.push(ArmUnits {
                name: arm.name.clone(),
                units,
            });
        }
    }

    fn observe_srm(&mut self, snapshot: &Snapshot, concentration: f64) {
        if let Some(monitor) = &snapshot.srm_monitor {
            // Ramped allocation: the caller's monitor carries per-step evidence.
            self.srm.min_p = self.srm.min_p.min(monitor.p_value());
            self.srm.latest = None;
            return;
        }
        let live: Vec<_> = snapshot.arms.iter().filter(|a| a.weight > 0.0).collect();
        if live.len() < 2 {
            return;
        }
        let counts: Vec<u64> = live.iter().map(|a| a.assigned).collect();
        let weights: Vec<f64> = live.iter().map(|a| a.weight).collect();
        let total_w: f64 = weights.iter().sum();
        if let Ok(res) = srm_test(&counts, &weights, concentration) {
            self.srm.min_p = self.srm.min_p.min(res.p_value);
            self.srm.latest = Some(res);
        }
        self.srm.arms = live.iter().map(|a| a.name.clone()).collect();
        self.srm.expected_shares = weights.iter().map(|w| w / total_w).collect();
        self.srm.counts = counts;
    }
}

/// Folds one look of a mixture-tested metric into `rec`.
#[allow(clippy::too_many_arguments)]
fn observe_mixture(
    rec: &mut ComparisonRecord,
    diff: Result<(f64, f64), NotComputable>,
    (base_n, treat_n): (u64, u64),
    scale: Scale,
    cfg: &MixtureConfig,
    cfg_g: &MixtureConfig,
    guard: Option<(f64, f64)>,
    min_units: u64,
    events_ok: bool,
) {
    rec.units_arm = treat_n;
    rec.units_baseline = base_n;
    if rec.effect == EffectScale::RateRatio {
        rec.effect = scale.into();
    }
    rec.ready = treat_n >= min_units && base_n >= min_units && events_ok;
    let (est, var) = match diff {
        Ok(d) => d,
        Err(nc) => {
            rec.latest = None;
            rec.not_computable = Some(nc);
            return;
        }
    };
    let n_total = base_n + treat_n;
    let two = match two_sided(est, var, n_total, scale, cfg) {
        Ok(t) => t,
        Err(nc) => {
            rec.latest = None;
            rec.not_computable = Some(nc);
            return;
        }
    };
    rec.not_computable = None;
    rec.latest = Some(two);
    if !rec.ready {
        return;
    }
    rec.looks += 1;
    rec.two_sided_min_p = rec.two_sided_min_p.min(two.p_value);
    rec.intersect(two.ci);
    if let Some((sign, margin)) = guard {
        // Harm means "worse than the tolerance", not "worse at all": with
        // anytime-valid tests read every second, a tiny real or drift-induced
        // difference would otherwise roll back a canary that is within its margin.
        if let Ok(le) = log_e_one_sided_for(est, var, n_total, sign, margin, cfg_g) {
            rec.harm_min_p = rec.harm_min_p.min(p_from_log_e(le));
        }
        if let Ok(le) = log_e_one_sided_for(est, var, n_total, -sign, -margin, cfg_g) {
            rec.ni_min_p = rec.ni_min_p.min(p_from_log_e(le));
        }
    }
}

/// Each period's (baseline, treatment) moments of one metric; an arm absent
/// from a period has none there.
fn strata_of(periods: &[MetricData], baseline: &str, arm: &str) -> Vec<Stratum> {
    let moments = |p: &MetricData, name: &str| match p {
        MetricData::Binary(map) => map.get(name).map(BinaryStats::moments),
        MetricData::Continuous(map) => map.get(name).map(ContinuousStats::moments),
        MetricData::Events(_) => None,
    };
    periods
        .iter()
        .map(|p| {
            let none = Moments::default();
            (
                moments(p, baseline).unwrap_or(none),
                moments(p, arm).unwrap_or(none),
            )
        })
        .collect()
}

/// Folds one look of an attribution-tested event metric into `rec`.
fn observe_events(
    rec: &mut ComparisonRecord,
    att: &ErrorAttribution,
    units_arm: u64,
    units_base: u64,
    min_units: u64,
    min_events: u64,
    alpha_ni: f64,
) {
    rec.units_arm = units_arm;
    rec.units_baseline = units_base;
    rec.events_arm = att.canary_events;
    rec.events_baseline = att.baseline_events;
    rec.rate_ratio = att.estimate();
    rec.ready =
        units_arm >= min_units && units_base >= min_units && att.total_events() >= min_events;
    // The attribution likelihood is exact (no plug-in variance), so its running
    // e-value is valid from the first event; only actions wait for burn-in.
    rec.harm_min_p = rec.harm_min_p.min(att.p_value());
    if let Some(ci) = att.confidence_sequence(alpha_ni) {
        rec.intersect(ci);
    }
    if rec.ready {
        rec.looks += 1;
    }
}

impl SequentialEstimate {
    /// The same look's two-sided CS at another level `alpha`, with the tuning of `cfg`.
    pub fn ci_at(&self, alpha: f64, cfg: &MixtureConfig) -> [f64; 2] {
        let r = self.n_total as f64 * cfg.rho2_two_sided();
        let hw = halfwidth_two_sided(self.std_error, r, alpha);
        [self.estimate - hw, self.estimate + hw]
    }
}

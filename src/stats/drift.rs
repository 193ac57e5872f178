//! The drift watch's detector: has one metric of the model in force moved
//! away from its reference period?
//!
//! A CUSUM-type e-detector (Shin, Ramdas & Rinaldo, "E-detectors: a
//! nonparametric framework for sequential change detection", 2023). Each look
//! brings a batch of observations; the batch's e-value `E` against the null
//! "the metric is where the reference put it, within `tolerance`" is a
//! likelihood ratio of an alternative against that null. For each
//! alternative `k` the detector keeps
//!
//! ```text
//! M_k(n) = max(M_k(n-1), 1) · E_k(n)        (M_k(0) = 0)
//! ```
//!
//! (the largest product of e-values over every possible change point), and
//! alarms when the mixture `mean_k M_k(n)` reaches `A`. Pathwise `M_k(n)` is
//! at most the Shiryaev–Roberts statistic `R_k(n) = (R_k(n-1) + 1) · E_k(n)`,
//! and under the null `R_k(n) − n` is a supermartingale, so by optional
//! stopping the **average run length to a false alarm is at least `A`
//! batches**, and by Doob's maximal inequality on the submartingale `R(n)`,
//! `P(false alarm within m batches) ≤ m / A`. Both hold however long the
//! watch runs, which is what a watch that never ends needs.
//!
//! The null is built from the reference with a one-sided `1 − β` bound
//! (Clopper–Pearson for a rate, normal for a mean) widened by `tolerance`,
//! so the guarantee holds with probability at least `1 − β` over the
//! reference period. For a rate it is exact (each observation is Bernoulli
//! and the batch likelihood ratio is an e-value under `p ≤ p0`); for a mean
//! the batch e-value is the Gaussian likelihood ratio of the batch mean with
//! the reference's standard deviation, exact for normal data and asymptotic
//! otherwise (batches of fewer than `min_batch` observations are pooled with
//! the next look's, so the central limit theorem has something to work on).
//!
//! Pure: no clocks, no I/O. The caller owns time (one batch a look) and
//! converts the configured average time to a false alarm into `A`.

use serde::{Deserialize, Serialize};
use statrs::distribution::{Beta, ContinuousCDF, Normal};

/// Running sums of one metric over a set of observations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct DriftSums {
    /// Observations.
    pub n: u64,
    /// Σx (for a rate: the number of ones).
    pub sum: f64,
    /// Σx².
    pub sum_sq: f64,
}

impl DriftSums {
    /// The mean (None without observations).
    pub fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }

    /// Sample variance (0 with fewer than two observations).
    pub fn variance(&self) -> f64 {
        if self.n < 2 {
            return 0.0;
        }
        let n = self.n as f64;
        ((self.sum_sq - self.sum * self.sum / n) / (n - 1.0)).max(0.0)
    }

    fn add(&mut self, o: &DriftSums) {
        self.n += o.n;
        self.sum += o.sum;
        self.sum_sq += o.sum_sq;
    }
}

/// What kind of metric is watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftKind {
    /// A 0/1 metric (errors, accepted): its rate.
    Rate,
    /// A continuous metric (latency, tokens): its mean.
    Mean,
}

/// Which moves count as drift.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Watched {
    /// Only an increase (errors, latency).
    Increase,
    /// Only a decrease (acceptance).
    Decrease,
    /// Either (a metric with no known good direction).
    Either,
}

/// How a detector is set up.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DriftConfig {
    /// The metric's kind.
    pub kind: DriftKind,
    /// Which moves count.
    pub watched: Watched,
    /// A relative move smaller than this (0.1 = 10% of the reference) is not
    /// drift.
    pub tolerance: f64,
    /// β: the probability that the reference's bound is wrong (split between
    /// the two sides when both are watched).
    pub reference_error: f64,
    /// A: the alarm threshold, the least average number of batches to a false
    /// alarm (≥ 2).
    pub threshold: f64,
    /// A mean test pools batches until they hold this many observations.
    pub min_batch: u64,
}

/// Default β.
pub const DEFAULT_REFERENCE_ERROR: f64 = 0.01;
/// Default pooling for mean tests: enough observations for the batch mean
/// to be close to normal for latency-like data.
pub const DEFAULT_MIN_BATCH: u64 = 30;
/// Fewest reference observations a detector is built on.
pub const MIN_REFERENCE: u64 = 30;

/// Odds ratios a rate detector's alternatives move by (each side).
const RATE_ALTERNATIVES: [f64; 4] = [1.5, 2.0, 3.0, 5.0];
/// Moves of a mean detector's alternatives, in reference standard deviations.
const MEAN_ALTERNATIVES: [f64; 4] = [0.1, 0.25, 0.5, 1.0];

/// Why a detector cannot be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DriftError {
    /// Too few reference observations.
    #[error("the reference has {got} observations; at least {need} are needed")]
    ShortReference {
        /// Observations the reference has.
        got: u64,
        /// Observations it needs.
        need: u64,
    },
    /// A parameter out of range.
    #[error("invalid drift detector setting: {0}")]
    Setting(&'static str),
    /// No side can move (e.g. a rate of 0 watched for a decrease only).
    #[error("the reference leaves no room to move in the watched direction")]
    NoRoom,
}

/// One alternative the detector weighs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Alternative {
    /// +1: an increase, −1: a decrease.
    side: i8,
    /// The null's value on this side (p0 or μ0).
    null: f64,
    /// The alternative's value (p1 or μ1).
    alt: f64,
    /// ln M_k: the CUSUM e-statistic.
    log_m: f64,
    /// What accumulated since the statistic last restarted: the most likely
    /// change point for this alternative.
    since: DriftSums,
}

/// A summary of observations: count and mean.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DriftSummary {
    /// Observations.
    pub n: u64,
    /// Their mean (rate for a 0/1 metric).
    pub mean: f64,
}

/// What an alarm says: where the metric was, where it is since the most
/// likely change point, and the difference with a 95% interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftAlarm {
    /// The batch (look) at which it fired, counted from the first.
    pub batch: u64,
    /// The detector's e-statistic when it fired (≥ threshold).
    pub statistic: f64,
    /// The alarm threshold.
    pub threshold: f64,
    /// `increase` or `decrease`.
    pub direction: Watched,
    /// The reference period.
    pub reference: DriftSummary,
    /// Since the estimated change point.
    pub now: DriftSummary,
    /// now − reference.
    pub estimate: f64,
    /// A 95% normal interval for the estimate (fixed-sample: not adjusted
    /// for the search over change points).
    pub ci95: (f64, f64),
    /// now / reference − 1 (None when the reference mean is 0).
    pub relative: Option<f64>,
}

/// One metric's detector. Serializable, so a watch resumes after a restart
/// with its evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftTest {
    cfg: DriftConfig,
    reference: DriftSums,
    /// The reference's standard deviation (the mean test's scale).
    sigma: f64,
    alts: Vec<Alternative>,
    /// Observations waiting for a mean batch to fill.
    pending: DriftSums,
    batches: u64,
    alarm: Option<DriftAlarm>,
}

/// What a detector shows between alarms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftView {
    /// The mixture e-statistic (1 is no evidence; alarm at `threshold`).
    pub statistic: f64,
    /// The alarm threshold.
    pub threshold: f64,
    /// Batches fed.
    pub batches: u64,
    /// The reference period.
    pub reference: DriftSummary,
    /// Since the most likely change point of the leading alternative.
    pub recent: Option<DriftSummary>,
    /// The null's bounds: the smallest increase and decrease that count.
    pub bounds: (Option<f64>, Option<f64>),
}

impl DriftTest {
    /// A detector for a metric whose reference period summed to `reference`.
    pub fn new(cfg: DriftConfig, reference: DriftSums) -> Result<DriftTest, DriftError> {
        if !(cfg.threshold >= 2.0 && cfg.threshold.is_finite()) {
            return Err(DriftError::Setting(
                "threshold must be finite and at least 2",
            ));
        }
        if !(cfg.tolerance >= 0.0 && cfg.tolerance < 1.0) {
            return Err(DriftError::Setting("tolerance must be in [0, 1)"));
        }
        if !(cfg.reference_error > 0.0 && cfg.reference_error < 0.5) {
            return Err(DriftError::Setting("reference_error must be in (0, 0.5)"));
        }
        if reference.n < MIN_REFERENCE {
            return Err(DriftError::ShortReference {
                got: reference.n,
                need: MIN_REFERENCE,
            });
        }
        let sides: &[i8] = match cfg.watched {
            Watched::Increase => &[1],
            Watched::Decrease => &[-1],
            Watched::Either => &[1, -1],
        };
        let beta = cfg.reference_error / sides.len() as f64;
        let n = reference.n as f64;
        let mean = reference.sum / n;
        let sigma = match cfg.kind {
            DriftKind::Rate => 0.0,
            // A constant reference still needs a scale: any move from it is
            // drift, and a scale of 0 would divide by zero.
            DriftKind::Mean => reference
                .variance()
                .sqrt()
                .max(mean.abs() * 1e-6)
                .max(1e-12),
        };
        let mut alts = Vec::new();
        for &side in sides {
            match cfg.kind {
                DriftKind::Rate => {
                    let k = reference.sum.round().clamp(0.0, n);
                    let p0 = if side > 0 {
                        let ucb = if k >= n {
                            1.0
                        } else {
                            beta_quantile(k + 1.0, n - k, 1.0 - beta)
                        };
                        ucb * (1.0 + cfg.tolerance)
                    } else {
                        let lcb = if k <= 0.0 {
                            0.0
                        } else {
                            beta_quantile(k, n - k + 1.0, beta)
                        };
                        lcb * (1.0 - cfg.tolerance)
                    };
                    // No room to move: a rate already near 1 cannot be seen
                    // to rise, one near 0 cannot be seen to fall.
                    if !(p0 > 1e-9 && p0 < 1.0 - 1e-9) {
                        continue;
                    }
                    let odds0 = p0 / (1.0 - p0);
                    for r in RATE_ALTERNATIVES {
                        let odds1 = if side > 0 { odds0 * r } else { odds0 / r };
                        alts.push(Alternative {
                            side,
                            null: p0,
                            alt: odds1 / (1.0 + odds1),
                            log_m: 0.0,
                            since: DriftSums::default(),
                        });
                    }
                }
                DriftKind::Mean => {
                    let z = Normal::standard().inverse_cdf(1.0 - beta);
                    let slack =
                        z * reference.variance().sqrt() / n.sqrt() + cfg.tolerance * mean.abs();
                    let mu0 = mean + f64::from(side) * slack;
                    for d in MEAN_ALTERNATIVES {
                        alts.push(Alternative {
                            side,
                            null: mu0,
                            alt: mu0 + f64::from(side) * d * sigma,
                            log_m: 0.0,
                            since: DriftSums::default(),
                        });
                    }
                }
            }
        }
        if alts.is_empty() {
            return Err(DriftError::NoRoom);
        }
        Ok(DriftTest {
            cfg,
            reference,
            sigma,
            alts,
            pending: DriftSums::default(),
            batches: 0,
            alarm: None,
        })
    }

    /// Feeds one look's observations; returns the alarm once it has fired
    /// (and on every later call: an alarm stays until the watch restarts).
    pub fn observe(&mut self, batch: DriftSums) -> Option<&DriftAlarm> {
        if self.alarm.is_some() {
            return self.alarm.as_ref();
        }
        let batch = match self.cfg.kind {
            DriftKind::Rate => batch,
            DriftKind::Mean => {
                self.pending.add(&batch);
                if self.pending.n < self.cfg.min_batch.max(1) {
                    return None;
                }
                std::mem::take(&mut self.pending)
            }
        };
        self.batches += 1;
        for a in &mut self.alts {
            let log_e = match self.cfg.kind {
                DriftKind::Rate => rate_log_e(a.null, a.alt, &batch),
                DriftKind::Mean => mean_log_e(a.null, a.alt, self.sigma, &batch),
            };
            if a.log_m <= 0.0 {
                // max(M, 1) = 1: the product restarts here.
                a.log_m = log_e;
                a.since = batch;
            } else {
                a.log_m += log_e;
                a.since.add(&batch);
            }
        }
        let statistic = self.log_statistic();
        if statistic >= self.cfg.threshold.ln() {
            self.alarm = Some(self.alarm_now(statistic.exp()));
        }
        self.alarm.as_ref()
    }

    /// ln of the mixture statistic `mean_k M_k`.
    fn log_statistic(&self) -> f64 {
        let top = self
            .alts
            .iter()
            .map(|a| a.log_m)
            .fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = self.alts.iter().map(|a| (a.log_m - top).exp()).sum();
        top + (s / self.alts.len() as f64).ln()
    }

    fn leading(&self) -> &Alternative {
        self.alts
            .iter()
            .max_by(|a, b| a.log_m.total_cmp(&b.log_m))
            .expect("a detector has alternatives")
    }

    fn alarm_now(&self, statistic: f64) -> DriftAlarm {
        let lead = self.leading();
        let reference = summary(&self.reference);
        let now = summary(&lead.since);
        let estimate = now.mean - reference.mean;
        let var = |s: &DriftSums, m: f64| match self.cfg.kind {
            DriftKind::Rate => m * (1.0 - m),
            DriftKind::Mean => s.variance(),
        };
        let se = (var(&lead.since, now.mean) / now.n.max(1) as f64
            + var(&self.reference, reference.mean) / reference.n.max(1) as f64)
            .sqrt();
        DriftAlarm {
            batch: self.batches,
            statistic,
            threshold: self.cfg.threshold,
            direction: if lead.side > 0 {
                Watched::Increase
            } else {
                Watched::Decrease
            },
            reference,
            now,
            estimate,
            ci95: (estimate - 1.96 * se, estimate + 1.96 * se),
            relative: (reference.mean != 0.0).then(|| now.mean / reference.mean - 1.0),
        }
    }

    /// The alarm, once fired.
    pub fn alarm(&self) -> Option<&DriftAlarm> {
        self.alarm.as_ref()
    }

    /// What the detector shows now.
    pub fn view(&self) -> DriftView {
        let lead = self.leading();
        let bound = |side: i8| self.alts.iter().find(|a| a.side == side).map(|a| a.null);
        DriftView {
            statistic: self.log_statistic().exp(),
            threshold: self.cfg.threshold,
            batches: self.batches,
            reference: summary(&self.reference),
            recent: (lead.since.n > 0).then(|| summary(&lead.since)),
            bounds: (bound(1), bound(-1)),
        }
    }
}

fn summary(s: &DriftSums) -> DriftSummary {
    DriftSummary {
        n: s.n,
        mean: s.mean().unwrap_or(0.0),
    }
}

/// ln of the likelihood ratio of `k` ones in `n` Bernoulli draws under `p1`
/// against `p0`: an e-value under any rate on `p0`'s side of `p1`.
fn rate_log_e(p0: f64, p1: f64, b: &DriftSums) -> f64 {
    let n = b.n as f64;
    let k = b.sum.clamp(0.0, n);
    k * (p1 / p0).ln() + (n - k) * ((1.0 - p1) / (1.0 - p0)).ln()
}

/// ln of the Gaussian likelihood ratio of a batch mean under `mu1` against
/// `mu0`, with standard deviation `sigma` per observation.
fn mean_log_e(mu0: f64, mu1: f64, sigma: f64, b: &DriftSums) -> f64 {
    if b.n == 0 {
        return 0.0;
    }
    let n = b.n as f64;
    let mean = b.sum / n;
    let d = mu1 - mu0;
    n * (d * (mean - mu0) - d * d / 2.0) / (sigma * sigma)
}

/// The `q` quantile of Beta(a, b), for the Clopper–Pearson bounds.
fn beta_quantile(a: f64, b: f64, q: f64) -> f64 {
    match Beta::new(a, b) {
        Ok(d) => d.inverse_cdf(q),
        // Parameters are ≥ 1 here; fall back to the no-information bound.
        Err(_) => {
            if q > 0.5 {
                1.0
            } else {
                0.0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(kind: DriftKind, watched: Watched, threshold: f64) -> DriftConfig {
        DriftConfig {
            kind,
            watched,
            tolerance: 0.1,
            reference_error: DEFAULT_REFERENCE_ERROR,
            threshold,
            min_batch: DEFAULT_MIN_BATCH,
        }
    }

    fn rate(n: u64, k: u64) -> DriftSums {
        DriftSums {
            n,
            sum: k as f64,
            sum_sq: k as f64,
        }
    }

    #[test]
    fn the_rate_null_is_the_clopper_pearson_bound_widened_by_the_tolerance() {
        // 20 errors in 2,000: the one-sided 99% upper bound is the p at
        // which P(Binomial(2000, p) ≤ 20) = 0.01, 0.0164973… (bisection on
        // the binomial CDF, computed apart from this code).
        let t =
            DriftTest::new(cfg(DriftKind::Rate, Watched::Increase, 1e6), rate(2000, 20)).unwrap();
        let up = t.view().bounds.0.unwrap();
        assert!((up / 1.1 - 0.0164973).abs() < 1e-6, "{up}");
        assert_eq!(t.view().bounds.1, None);
    }

    #[test]
    fn a_rate_that_quadruples_alarms_with_the_change_point_and_interval() {
        let mut t = DriftTest::new(
            cfg(DriftKind::Rate, Watched::Increase, 1e6),
            rate(20_000, 200),
        )
        .unwrap();
        // 50 looks at 1% (200 a look), then 4%.
        for _ in 0..50 {
            assert!(t.observe(rate(200, 2)).is_none());
        }
        let mut looks = 0;
        while t.observe(rate(200, 8)).is_none() {
            looks += 1;
            assert!(looks < 100, "no alarm after {looks} looks at 4%");
        }
        let a = t.alarm().unwrap().clone();
        assert_eq!(a.direction, Watched::Increase);
        assert!((a.reference.mean - 0.01).abs() < 1e-12);
        assert!((a.now.mean - 0.04).abs() < 0.01, "{a:?}");
        assert!(a.ci95.0 > 0.0 && a.ci95.0 < a.estimate && a.estimate < a.ci95.1);
        assert!(a.statistic >= 1e6);
        // The alarm stays.
        assert!(t.observe(rate(200, 0)).is_some());
    }

    #[test]
    fn a_stable_rate_never_alarms_and_its_statistic_stays_small() {
        let mut t = DriftTest::new(
            cfg(DriftKind::Rate, Watched::Increase, 1e6),
            rate(20_000, 200),
        )
        .unwrap();
        for i in 0..5000 {
            // 1% exactly, in a pattern: 2 errors in most looks, 3 or 1 in some.
            let k = [2, 3, 1, 2][i % 4];
            assert!(t.observe(rate(200, k)).is_none());
        }
        assert!(t.view().statistic < 10.0, "{:?}", t.view());
    }

    #[test]
    fn a_mean_pools_small_batches_and_sees_a_shift_in_either_direction() {
        // Reference: mean 20, sd 2 over 1,000 observations.
        let reference = DriftSums {
            n: 1000,
            sum: 20_000.0,
            sum_sq: 1000.0 * (400.0 + 4.0) + 4.0,
        };
        let mut t = DriftTest::new(cfg(DriftKind::Mean, Watched::Either, 1e4), reference).unwrap();
        let (up, down) = t.view().bounds;
        assert!(up.unwrap() > 22.0 && down.unwrap() < 18.0);
        // Ten observations a look: three looks make a batch.
        let batch = |mean: f64| DriftSums {
            n: 10,
            sum: 10.0 * mean,
            sum_sq: 10.0 * (mean * mean + 4.0),
        };
        assert!(t.observe(batch(20.0)).is_none());
        assert!(t.observe(batch(20.0)).is_none());
        assert_eq!(t.view().batches, 0);
        assert!(t.observe(batch(20.0)).is_none());
        assert_eq!(t.view().batches, 1);
        let mut looks = 0;
        while t.observe(batch(15.0)).is_none() {
            looks += 1;
            assert!(looks < 60);
        }
        let a = t.alarm().unwrap();
        assert_eq!(a.direction, Watched::Decrease);
        assert!(a.estimate < -4.0 && a.relative.unwrap() < -0.2, "{a:?}");
    }

    #[test]
    fn bad_settings_and_short_references_are_refused() {
        let c = cfg(DriftKind::Rate, Watched::Increase, 1.0);
        assert!(matches!(
            DriftTest::new(c, rate(1000, 10)),
            Err(DriftError::Setting(_))
        ));
        let c = cfg(DriftKind::Rate, Watched::Increase, 100.0);
        assert_eq!(
            DriftTest::new(c, rate(10, 1)),
            Err(DriftError::ShortReference { got: 10, need: 30 })
        );
        // Nothing below a rate of 0.
        let c = cfg(DriftKind::Rate, Watched::Decrease, 100.0);
        assert_eq!(DriftTest::new(c, rate(1000, 0)), Err(DriftError::NoRoom));
    }

    #[test]
    fn a_detector_reads_back_from_json_exactly() {
        let mut t =
            DriftTest::new(cfg(DriftKind::Rate, Watched::Either, 1e6), rate(5000, 50)).unwrap();
        for _ in 0..10 {
            t.observe(rate(100, 1));
        }
        let text = serde_json::to_string(&t).unwrap();
        let back: DriftTest = serde_json::from_str(&text).unwrap();
        assert_eq!(back, t);
    }
}

//! Sample ratio mismatch (STATISTICS.md §1.9): are arms receiving the traffic
//! shares they were configured for?
//!
//! The chi-square p-value is for display only (peeking at it daily inflates false
//! alarms ~10×). Decisions use the sequential Dirichlet-multinomial Bayes factor
//! of Lindon & Malek (2022), which depends only on cumulative counts and is an
//! anytime-valid e-value.

use serde::{Deserialize, Serialize};
use statrs::distribution::{ChiSquared, ContinuousCDF};
use statrs::function::gamma::ln_gamma;

use super::{check_positive, p_from_log_e, StatsError};

/// Default SRM level (GrowthBook's alert threshold).
pub const DEFAULT_SRM_ALPHA: f64 = 0.001;
/// Default Dirichlet concentration k (GrowthBook ssrm). Smaller k (savvi: 100)
/// reacts faster to gross imbalances at small n.
pub const DEFAULT_SRM_CONCENTRATION: f64 = 10_000.0;

/// Normalises weights to shares summing to 1; all must be finite and > 0 and
/// there must be one per count, at least two.
fn shares(counts: usize, weights: &[f64]) -> Result<Vec<f64>, StatsError> {
    if counts != weights.len() || counts < 2 {
        return Err(StatsError::ArmMismatch {
            counts,
            weights: weights.len(),
        });
    }
    for &w in weights {
        check_positive("weight", w)?;
    }
    let total: f64 = weights.iter().sum();
    Ok(weights.iter().map(|w| w / total).collect())
}

/// Pearson chi-square statistic and its p-value (df = arms − 1) for observed
/// `counts` against configured `weights` (any positive scale; normalised here).
/// All-zero counts give `(0, 1)`.
pub fn chi2(counts: &[u64], weights: &[f64]) -> Result<(f64, f64), StatsError> {
    let theta = shares(counts.len(), weights)?;
    let total: f64 = counts.iter().map(|&c| c as f64).sum();
    if total == 0.0 {
        return Ok((0.0, 1.0));
    }
    let stat: f64 = counts
        .iter()
        .zip(&theta)
        .map(|(&c, &t)| {
            let e = total * t;
            (c as f64 - e).powi(2) / e
        })
        .sum();
    let df = (counts.len() - 1) as f64;
    let p = ChiSquared::new(df)
        .map(|d| d.sf(stat))
        .map_err(|_| StatsError::NotPositive {
            name: "degrees of freedom",
            value: df,
        })?;
    Ok((stat, p.clamp(0.0, 1.0)))
}

/// `ln B(a) = Σ lnΓ(a_i) − lnΓ(Σ a_i)`.
fn ln_multi_beta(a: impl Iterator<Item = f64> + Clone) -> f64 {
    let sum: f64 = a.clone().sum();
    a.map(ln_gamma).sum::<f64>() - ln_gamma(sum)
}

/// Log Bayes factor of the Dirichlet-multinomial test, prior Dirichlet(k·θ0):
/// `ln B(kθ0 + x) − ln B(kθ0) − Σ x_i ln θ0_i`. `theta0` is normalised here.
pub fn sequential_log_bf(counts: &[u64], theta0: &[f64], k: f64) -> Result<f64, StatsError> {
    check_positive("concentration", k)?;
    let theta = shares(counts.len(), theta0)?;
    let prior = theta.iter().map(|t| k * t);
    let post = theta.iter().zip(counts).map(|(t, &c)| k * t + c as f64);
    let loglik0: f64 = counts
        .iter()
        .zip(&theta)
        .filter(|(&c, _)| c > 0)
        .map(|(&c, t)| c as f64 * t.ln())
        .sum();
    Ok(ln_multi_beta(post) - ln_multi_beta(prior) - loglik0)
}

/// One SRM look.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct SrmResult {
    /// Pearson chi-square statistic.
    pub chi2: f64,
    /// Fixed-horizon chi-square p-value (display only).
    pub chi2_p: f64,
    /// Log Bayes factor (e-value) of the sequential test at this look.
    pub log_bf: f64,
    /// Instantaneous sequential p-value `min(1, 1/BF)`; keep the running minimum.
    pub p_value: f64,
}

/// Runs both SRM tests on cumulative `counts` (units assigned per arm) against
/// configured `weights`, with Dirichlet concentration `k`.
pub fn srm_test(counts: &[u64], weights: &[f64], k: f64) -> Result<SrmResult, StatsError> {
    let (chi2, chi2_p) = chi2(counts, weights)?;
    let log_bf = sequential_log_bf(counts, weights, k)?;
    Ok(SrmResult {
        chi2,
        chi2_p,
        log_bf,
        p_value: p_from_log_e(log_bf),
    })
}

/// Sequential SRM across ramp steps whose configured weights change.
///
/// Each step is tested with its own weights on the counts assigned *during* that
/// step; when the weights change, the finished step's Bayes factor is frozen and
/// multiplied into the running product. A product of test martingales stopped at
/// caller-chosen boundaries is again a test martingale, so validity is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SrmMonitor {
    /// Configured weights of the current step (positive, any scale).
    pub weights: Vec<f64>,
    /// Dirichlet concentration k.
    pub concentration: f64,
    /// Units assigned per arm since the current step began.
    pub counts: Vec<u64>,
    /// Sum of the log Bayes factors of finished steps.
    pub closed_log_e: f64,
    /// Largest total log e-value seen at any observation.
    pub max_log_e: f64,
}

impl SrmMonitor {
    /// A monitor for arms with `weights`, concentration `k`.
    pub fn new(weights: Vec<f64>, k: f64) -> Result<Self, StatsError> {
        shares(weights.len(), &weights)?;
        check_positive("concentration", k)?;
        let arms = weights.len();
        Ok(Self {
            weights,
            concentration: k,
            counts: vec![0; arms],
            closed_log_e: 0.0,
            max_log_e: 0.0,
        })
    }

    /// Adds newly assigned units per arm (same order as the weights).
    pub fn observe(&mut self, new_counts: &[u64]) -> Result<(), StatsError> {
        if new_counts.len() != self.counts.len() {
            return Err(StatsError::ArmMismatch {
                counts: new_counts.len(),
                weights: self.weights.len(),
            });
        }
        for (c, n) in self.counts.iter_mut().zip(new_counts) {
            *c = c.saturating_add(*n);
        }
        let total = self.log_e()?;
        self.max_log_e = self.max_log_e.max(total);
        Ok(())
    }

    /// Starts a new step with new weights (e.g. canary 10 % → 25 %).
    pub fn set_weights(&mut self, weights: Vec<f64>) -> Result<(), StatsError> {
        shares(weights.len(), &weights)?;
        self.closed_log_e += sequential_log_bf(&self.counts, &self.weights, self.concentration)?;
        self.counts = vec![0; weights.len()];
        self.weights = weights;
        Ok(())
    }

    /// Current total log e-value (finished steps plus the current one).
    pub fn log_e(&self) -> Result<f64, StatsError> {
        Ok(self.closed_log_e + sequential_log_bf(&self.counts, &self.weights, self.concentration)?)
    }

    /// Always-valid p-value `min(1, 1/max_t E_t)`.
    pub fn p_value(&self) -> f64 {
        p_from_log_e(self.max_log_e)
    }
}

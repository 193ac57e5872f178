//! Per-arm sufficient statistics: small, mergeable, numerically stable.
//!
//! Every accumulator can be merged, so per-shard or per-period state can be
//! combined in any order without loss (Chan et al. for the continuous moments).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::StatsError;

/// The three numbers every two-sample test needs: sample size, mean and
/// (sample) variance of one arm, in the metric's own units.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Moments {
    /// Number of units (requests, users) observed.
    pub n: u64,
    /// Mean of the metric per unit.
    pub mean: f64,
    /// Variance of the metric per unit (binary: `p̂(1−p̂)`; continuous: sample variance).
    pub variance: f64,
}

/// Binary (0/1) metric for one arm, e.g. "accepted" or "request failed".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BinaryStats {
    /// Trials (units exposed).
    pub n: u64,
    /// Successes among the trials; always `<= n`.
    pub successes: u64,
}

impl BinaryStats {
    /// Builds from counts; errors when `successes > n`.
    pub fn new(n: u64, successes: u64) -> Result<Self, StatsError> {
        if successes > n {
            return Err(StatsError::SuccessesExceedN { n, successes });
        }
        Ok(Self { n, successes })
    }

    /// Records one trial.
    pub fn push(&mut self, success: bool) {
        self.n += 1;
        self.successes += u64::from(success);
    }

    /// Adds another arm-shard's counts (saturating, so a corrupt shard cannot wrap).
    pub fn merge(&mut self, other: &Self) {
        self.n = self.n.saturating_add(other.n);
        self.successes = self.successes.saturating_add(other.successes);
    }

    /// Success proportion `p̂` in `[0, 1]`; 0 when `n = 0`.
    pub fn mean(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.successes as f64 / self.n as f64
        }
    }

    /// Per-unit variance `p̂(1−p̂)` (the plug-in used by gbstats); 0 when `n = 0`.
    pub fn variance(&self) -> f64 {
        let p = self.mean();
        p * (1.0 - p)
    }

    /// Sample size, mean and variance for the comparison functions.
    pub fn moments(&self) -> Moments {
        Moments {
            n: self.n,
            mean: self.mean(),
            variance: self.variance(),
        }
    }
}

/// Continuous metric for one arm (latency in ms, reward, cost), as Welford's
/// running mean and sum of squared deviations, which stay accurate where the naive
/// `Σx²− n·x̄²` cancels catastrophically (e.g. latencies ~1e3 with small spread).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct ContinuousStats {
    /// Number of observations.
    pub n: u64,
    /// Running mean, in the metric's units.
    pub mean: f64,
    /// Sum of squared deviations from the mean (units²).
    pub m2: f64,
}

impl ContinuousStats {
    /// Builds from a summary (n, mean, sample variance with n−1 denominator).
    /// Errors on a non-finite mean or a negative / non-finite variance.
    pub fn from_moments(n: u64, mean: f64, variance: f64) -> Result<Self, StatsError> {
        if !mean.is_finite() {
            return Err(StatsError::NotFinite(mean));
        }
        if !variance.is_finite() || variance < 0.0 {
            return Err(StatsError::BadVariance(variance));
        }
        let m2 = if n > 1 {
            variance * (n - 1) as f64
        } else {
            0.0
        };
        Ok(Self {
            n,
            mean: if n == 0 { 0.0 } else { mean },
            m2,
        })
    }

    /// Adds one observation (Welford). Non-finite values are ignored and
    /// reported as an error so one bad sample cannot poison the arm forever.
    pub fn push(&mut self, x: f64) -> Result<(), StatsError> {
        if !x.is_finite() {
            return Err(StatsError::NotFinite(x));
        }
        self.n += 1;
        let delta = x - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (x - self.mean);
        Ok(())
    }

    /// Merges another accumulator (Chan, Golub & LeVeque parallel update).
    pub fn merge(&mut self, other: &Self) {
        if other.n == 0 {
            return;
        }
        if self.n == 0 {
            *self = *other;
            return;
        }
        let n_a = self.n as f64;
        let n_b = other.n as f64;
        let n = n_a + n_b;
        let delta = other.mean - self.mean;
        self.mean += delta * n_b / n;
        self.m2 += other.m2 + delta * delta * n_a * n_b / n;
        self.n += other.n;
    }

    /// Sample variance (n−1 denominator); 0 when fewer than two observations.
    pub fn variance(&self) -> f64 {
        if self.n < 2 {
            0.0
        } else {
            (self.m2 / (self.n - 1) as f64).max(0.0)
        }
    }

    /// Sample size, mean and sample variance for the comparison functions.
    pub fn moments(&self) -> Moments {
        Moments {
            n: self.n,
            mean: self.mean,
            variance: self.variance(),
        }
    }
}

/// Event counts for one arm over some period: units exposed and events among
/// them (errors, 5xx, requests slower than a pre-fixed threshold). Feeds the
/// attribution test and explanations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EventCounts {
    /// Requests (or units) routed to the arm.
    pub exposures: u64,
    /// Events observed among them.
    pub events: u64,
}

impl EventCounts {
    /// Adds another period's or shard's counts.
    pub fn merge(&mut self, other: &Self) {
        self.exposures = self.exposures.saturating_add(other.exposures);
        self.events = self.events.saturating_add(other.events);
    }

    /// Event rate per exposure; 0 when nothing was exposed.
    pub fn rate(&self) -> f64 {
        if self.exposures == 0 {
            0.0
        } else {
            self.events as f64 / self.exposures as f64
        }
    }
}

/// Units assigned per arm by the router (for SRM), keyed by arm name.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AssignmentCounts {
    /// Arm name → units assigned.
    pub counts: BTreeMap<String, u64>,
}

impl AssignmentCounts {
    /// Records one assignment to `arm`.
    pub fn record(&mut self, arm: &str) {
        match self.counts.get_mut(arm) {
            Some(c) => *c = c.saturating_add(1),
            None => {
                self.counts.insert(arm.to_string(), 1);
            }
        }
    }

    /// Adds another shard's or period's counts.
    pub fn merge(&mut self, other: &Self) {
        for (arm, n) in &other.counts {
            let c = self.counts.entry(arm.clone()).or_insert(0);
            *c = c.saturating_add(*n);
        }
    }

    /// Units assigned to `arm` (0 if never seen).
    pub fn get(&self, arm: &str) -> u64 {
        self.counts.get(arm).copied().unwrap_or(0)
    }
}

//! Per-arm sufficient statistics for declared metrics (feedback and response
//! headers), kept in lock-free cells keyed by (experiment, arm, metric) names so
//! they survive table swaps.
//!
//! Why running sums (n, Σy, Σy²) and not Welford: Welford's update needs a
//! read-modify-write of two values at once, which atomics cannot do without a
//! lock. Sums in f64 are exact enough for these magnitudes (variance is
//! recovered with the shifted formula in [`MetricSums::continuous`]).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use dashmap::DashMap;

use crate::stats::{BinaryStats, ContinuousStats};

/// An f64 updated by compare-and-swap.
#[derive(Default)]
pub struct AtomicF64(AtomicU64);

impl AtomicF64 {
    pub fn add(&self, v: f64) {
        let mut cur = self.0.load(Relaxed);
        loop {
            let next = (f64::from_bits(cur) + v).to_bits();
            match self.0.compare_exchange_weak(cur, next, Relaxed, Relaxed) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Relaxed))
    }
}

/// Running sums of one metric of one arm.
#[derive(Default)]
pub struct MetricCell {
    n: AtomicU64,
    sum: AtomicF64,
    sum_sq: AtomicF64,
}

/// A copy of a cell's sums.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MetricSums {
    pub n: u64,
    pub sum: f64,
    pub sum_sq: f64,
}

impl MetricSums {
    pub fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }

    /// As a binary metric: successes are the sum of 0/1 values.
    pub fn binary(&self) -> BinaryStats {
        let successes = self.sum.round().clamp(0.0, self.n as f64) as u64;
        BinaryStats::new(self.n, successes).unwrap_or_default()
    }

    /// As a continuous metric (sample variance; 0 below two observations).
    pub fn continuous(&self) -> ContinuousStats {
        let n = self.n;
        if n == 0 {
            return ContinuousStats::default();
        }
        let mean = self.sum / n as f64;
        let var = if n > 1 {
            ((self.sum_sq - self.sum * mean) / (n as f64 - 1.0)).max(0.0)
        } else {
            0.0
        };
        ContinuousStats::from_moments(n, mean, var).unwrap_or_default()
    }
}

impl MetricCell {
    pub fn record(&self, v: f64) {
        self.n.fetch_add(1, Relaxed);
        self.sum.add(v);
        self.sum_sq.add(v * v);
    }

    /// Adds sums restored from the store (at startup).
    pub fn restore(&self, s: MetricSums) {
        self.n.fetch_add(s.n, Relaxed);
        self.sum.add(s.sum);
        self.sum_sq.add(s.sum_sq);
    }

    pub fn sums(&self) -> MetricSums {
        MetricSums {
            n: self.n.load(Relaxed),
            sum: self.sum.get(),
            sum_sq: self.sum_sq.get(),
        }
    }
}

/// (experiment, arm, metric) names.
pub type MetricKey = (String, String, String);

/// All declared-metric cells of a server.
#[derive(Default)]
pub struct MetricBook {
    cells: DashMap<MetricKey, Arc<MetricCell>>,
}

impl MetricBook {
    pub fn cell(&self, experiment: &str, arm: &str, metric: &str) -> Arc<MetricCell> {
        let key = (experiment.to_string(), arm.to_string(), metric.to_string());
        if let Some(c) = self.cells.get(&key) {
            return c.clone();
        }
        self.cells.entry(key).or_default().clone()
    }

    /// (arm, metric, sums) for every cell of an experiment.
    pub fn experiment(&self, experiment: &str) -> Vec<(String, String, MetricSums)> {
        let mut out: Vec<_> = self
            .cells
            .iter()
            .filter(|e| e.key().0 == experiment)
            .map(|e| (e.key().1.clone(), e.key().2.clone(), e.value().sums()))
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }

    /// Every cell, for exporting gauges.
    pub fn all(&self) -> Vec<(MetricKey, MetricSums)> {
        self.cells
            .iter()
            .map(|e| (e.key().clone(), e.value().sums()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_give_mean_and_variance() {
        let c = MetricCell::default();
        for v in [1.0, 2.0, 3.0, 4.0] {
            c.record(v);
        }
        let s = c.sums();
        let cont = s.continuous();
        assert_eq!(cont.n, 4);
        assert!((cont.mean - 2.5).abs() < 1e-12);
        assert!((cont.variance() - 5.0 / 3.0).abs() < 1e-12);
        let b = MetricCell::default();
        for v in [1.0, 0.0, 1.0] {
            b.record(v);
        }
        assert_eq!(b.sums().binary(), BinaryStats::new(3, 2).unwrap());
    }
}

//! A lock-free log-linear histogram of microsecond values.
//!
//! Owns: recording with one atomic add and reading quantiles from a snapshot.
//! Why not hdrhistogram: its `record` needs `&mut self`, which would put a lock
//! (or per-thread sharding) on the request path; here every bucket is an atomic.
//!
//! Layout: values below 32 µs get one bucket each; above that, every power of two
//! is split into 16 linear sub-buckets, so a bucket's width is at most 1/16 of its
//! lower bound (quantiles are within ~6.25%, reported at the bucket midpoint).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

const LINEAR: u64 = 32;
const SUB_BITS: u32 = 4;
const SUB: usize = 1 << SUB_BITS;
/// Enough for 2^44 µs (about 200 days): larger values saturate into the last bucket.
const MAX_EXP: u32 = 44;
const BUCKETS: usize = LINEAR as usize + (MAX_EXP as usize - 4) * SUB;

/// A histogram's contents for the store: non-empty buckets only.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HistogramState {
    pub buckets: Vec<(u32, u64)>,
    pub sum_us: u64,
    pub sum_sq_ms: f64,
}

pub struct AtomicHistogram {
    counts: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_us: AtomicU64,
    /// Σ(ms²), for the variance of the continuous latency metrics.
    sum_sq_ms: crate::outcomes::metrics::AtomicF64,
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        AtomicHistogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
            sum_sq_ms: Default::default(),
        }
    }
}

fn bucket_of(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // >= 5
    let exp = exp.min(MAX_EXP - 1);
    let sub = ((v >> (exp - SUB_BITS)) as usize) & (SUB - 1);
    (LINEAR as usize + (exp as usize - 5) * SUB + sub).min(BUCKETS - 1)
}

/// Lower bound and width of a bucket, in µs.
fn bucket_range(i: usize) -> (u64, u64) {
    if i < LINEAR as usize {
        return (i as u64, 1);
    }
    let j = i - LINEAR as usize;
    let exp = (j / SUB) as u32 + 5;
    let sub = (j % SUB) as u64;
    let width = 1u64 << (exp - SUB_BITS);
    ((1u64 << exp) + sub * width, width)
}

impl AtomicHistogram {
    /// Records one value in microseconds.
    pub fn record(&self, us: u64) {
        self.counts[bucket_of(us)].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
        let ms = us as f64 / 1000.0;
        self.sum_sq_ms.add(ms * ms);
    }

    /// A consistent-enough copy for reading quantiles (concurrent records may be
    /// partly included; counts never go backwards).
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: self.counts.iter().map(|c| c.load(Relaxed)).collect(),
            sum_us: self.sum_us.load(Relaxed),
            sum_sq_ms: self.sum_sq_ms.get(),
        }
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// The recorded values in milliseconds as running sums, read without
    /// copying the buckets: what a statistical look needs (the buckets are
    /// for quantiles, which only the views read).
    pub fn sums_ms(&self) -> crate::outcomes::metrics::MetricSums {
        crate::outcomes::metrics::MetricSums {
            n: self.count.load(Relaxed),
            sum: self.sum_us.load(Relaxed) as f64 / 1000.0,
            sum_sq: self.sum_sq_ms.get(),
        }
    }

    /// The contents, for persisting.
    pub fn state(&self) -> HistogramState {
        HistogramState {
            buckets: self
                .counts
                .iter()
                .enumerate()
                .filter_map(|(i, c)| {
                    let c = c.load(Relaxed);
                    (c > 0).then_some((i as u32, c))
                })
                .collect(),
            sum_us: self.sum_us.load(Relaxed),
            sum_sq_ms: self.sum_sq_ms.get(),
        }
    }

    /// Adds persisted contents (at startup, before traffic).
    pub fn restore(&self, s: &HistogramState) {
        for &(i, c) in &s.buckets {
            if let Some(slot) = self.counts.get(i as usize) {
                slot.fetch_add(c, Relaxed);
                self.count.fetch_add(c, Relaxed);
            }
        }
        self.sum_us.fetch_add(s.sum_us, Relaxed);
        self.sum_sq_ms.add(s.sum_sq_ms);
    }
}

#[derive(Debug, Clone)]
pub struct HistogramSnapshot {
    counts: Vec<u64>,
    sum_us: u64,
    sum_sq_ms: f64,
}

impl HistogramSnapshot {
    /// The recorded values in milliseconds as running sums (exact, not bucketed).
    pub fn sums_ms(&self) -> crate::outcomes::metrics::MetricSums {
        crate::outcomes::metrics::MetricSums {
            n: self.count(),
            sum: self.sum_us as f64 / 1000.0,
            sum_sq: self.sum_sq_ms,
        }
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// A histogram with nothing recorded.
    pub fn empty() -> HistogramSnapshot {
        HistogramSnapshot {
            counts: Vec::new(),
            sum_us: 0,
            sum_sq_ms: 0.0,
        }
    }

    /// What was recorded after `earlier` (a snapshot of the same histogram):
    /// quantiles of a period instead of the whole run. Counts never go
    /// backwards, so each bucket's difference is what the period added.
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: self
                .counts
                .iter()
                .enumerate()
                .map(|(i, c)| c.saturating_sub(earlier.counts.get(i).copied().unwrap_or(0)))
                .collect(),
            sum_us: self.sum_us.saturating_sub(earlier.sum_us),
            sum_sq_ms: (self.sum_sq_ms - earlier.sum_sq_ms).max(0.0),
        }
    }

    /// Mean in microseconds; `None` when empty.
    pub fn mean_us(&self) -> Option<f64> {
        let n = self.count();
        (n > 0).then(|| self.sum_us as f64 / n as f64)
    }

    /// The `q`-quantile (0..=1) in microseconds, at the bucket midpoint; `None` when empty.
    pub fn quantile_us(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, width) = bucket_range(i);
                return Some(lo as f64 + (width as f64 - 1.0) / 2.0);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_values_in_order() {
        let mut last = 0;
        for v in [
            0,
            1,
            31,
            32,
            33,
            63,
            64,
            100,
            1000,
            10_000,
            1 << 30,
            u64::MAX,
        ] {
            let b = bucket_of(v);
            assert!(b >= last, "bucket order broke at {v}");
            last = b;
            let (lo, width) = bucket_range(b);
            if v < (1u64 << (MAX_EXP - 1)) {
                assert!(
                    lo <= v && v < lo + width,
                    "{v} not in [{lo}, {})",
                    lo + width
                );
            }
        }
    }

    #[test]
    fn quantiles_are_within_bucket_precision() {
        let h = AtomicHistogram::default();
        for v in 1..=10_000u64 {
            h.record(v);
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 10_000);
        for (q, exact) in [(0.5, 5000.0), (0.99, 9900.0), (0.999, 9990.0)] {
            let got = s.quantile_us(q).unwrap();
            assert!((got - exact).abs() / exact < 0.07, "q{q}: {got} vs {exact}");
        }
        assert!((s.mean_us().unwrap() - 5000.5).abs() < 1e-9);
        assert_eq!(AtomicHistogram::default().snapshot().quantile_us(0.5), None);
    }
}

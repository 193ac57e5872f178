//! Seeded per-server random decisions.
//!
//! One `StdRng` per server (i.e. per port), seeded with `MockSpec::seed`, behind a
//! `std::sync::Mutex` held only while drawing. Every request draws the same fixed sequence
//! (reset, error, latency, outcome, reward, then hang, truncate, length and token jitter, each
//! only when its rate is > 0) whatever the
//! endpoint, so the decisions seen by a single sequential client are reproducible; with concurrent clients the per-request
//! assignment depends on arrival order but the marginal statistics are unchanged.

use std::sync::Mutex;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, Normal};

use super::spec::{LatencyDist, MockSpec, RewardDist};

/// What the mock does with one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// Drop the connection without answering.
    pub reset: bool,
    /// Never answer (hold the request until the client goes away).
    pub hang: bool,
    /// Answer 500 (only meaningful when `reset` is false).
    pub error: bool,
    /// Service time before response headers.
    pub latency: Duration,
    /// Simulated binary outcome (`x-mock-outcome`).
    pub outcome: bool,
    /// Simulated reward (`x-mock-reward`).
    pub reward: f64,
    /// Cut a stream after half its tokens.
    pub truncate: bool,
    /// End with `finish_reason: "length"`.
    pub length: bool,
    /// Completion tokens as a multiple of `chunks` (1 without jitter).
    pub tokens_scale: f64,
}

/// Thread-safe source of [`Decision`]s for one server.
#[derive(Debug)]
pub struct Decider {
    /// The RNG and how many decisions it has drawn.
    rng: Mutex<(StdRng, u64)>,
    error_rate_after: Option<super::spec::RateAfter>,
    latency: LatencySampler,
    reward: RewardSampler,
    error_rate: f64,
    reset_rate: f64,
    hang_rate: f64,
    outcome_p: f64,
    truncate_rate: f64,
    length_rate: f64,
    tokens_jitter: f64,
}

#[derive(Debug)]
enum LatencySampler {
    Fixed(f64),
    Normal(Normal<f64>),
    LogNormal(LogNormal<f64>),
}

#[derive(Debug)]
enum RewardSampler {
    Fixed(f64),
    Normal(Normal<f64>),
}

impl Decider {
    /// Builds the samplers; `spec` must already be validated (parameters are finite, ≥ 0).
    pub fn new(spec: &MockSpec) -> Self {
        let latency = match spec.latency {
            LatencyDist::Fixed { ms } => LatencySampler::Fixed(ms),
            // Validated parameters cannot make these constructors fail; fall back to the
            // location parameter rather than panic if they ever do.
            LatencyDist::Normal { mean_ms, sd_ms } => Normal::new(mean_ms, sd_ms)
                .map(LatencySampler::Normal)
                .unwrap_or(LatencySampler::Fixed(mean_ms)),
            LatencyDist::LogNormal { median_ms, sigma } => {
                LogNormal::new(median_ms.max(f64::MIN_POSITIVE).ln(), sigma)
                    .map(LatencySampler::LogNormal)
                    .unwrap_or(LatencySampler::Fixed(median_ms))
            }
        };
        let reward = match spec.reward {
            RewardDist::Fixed { value } => RewardSampler::Fixed(value),
            RewardDist::Normal { mean, sd } => Normal::new(mean, sd)
                .map(RewardSampler::Normal)
                .unwrap_or(RewardSampler::Fixed(mean)),
        };
        Decider {
            rng: Mutex::new((StdRng::seed_from_u64(spec.seed), 0)),
            error_rate_after: spec.error_rate_after,
            latency,
            reward,
            error_rate: spec.error_rate,
            reset_rate: spec.reset_rate,
            hang_rate: spec.hang_rate,
            outcome_p: spec.outcome_p,
            truncate_rate: spec.truncate_rate,
            length_rate: spec.length_rate,
            tokens_jitter: spec.tokens_jitter,
        }
    }

    /// Draws the next decision (always the same number and order of draws).
    pub fn next(&self) -> Decision {
        // A poisoned lock only means another request panicked mid-draw; the RNG state is still valid.
        let mut guard = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        let (rng, drawn) = &mut *guard;
        *drawn += 1;
        let error_rate = match self.error_rate_after {
            Some(a) if *drawn > a.requests => a.rate,
            _ => self.error_rate,
        };
        let reset = rng.random::<f64>() < self.reset_rate;
        let error = rng.random::<f64>() < error_rate;
        let latency_ms = match &self.latency {
            LatencySampler::Fixed(ms) => *ms,
            LatencySampler::Normal(d) => d.sample(&mut *rng),
            LatencySampler::LogNormal(d) => d.sample(&mut *rng),
        };
        let outcome = rng.random::<f64>() < self.outcome_p;
        let reward = match &self.reward {
            RewardSampler::Fixed(v) => *v,
            RewardSampler::Normal(d) => d.sample(&mut *rng),
        };
        // Drawn last and only when enabled, so existing seeds keep their sequences.
        let hang = self.hang_rate > 0.0 && rng.random::<f64>() < self.hang_rate;
        // Likewise: the inference draws come after, each only when enabled.
        let truncate = self.truncate_rate > 0.0 && rng.random::<f64>() < self.truncate_rate;
        let length = self.length_rate > 0.0 && rng.random::<f64>() < self.length_rate;
        let tokens_scale = if self.tokens_jitter > 0.0 {
            1.0 + self.tokens_jitter * (2.0 * rng.random::<f64>() - 1.0)
        } else {
            1.0
        };
        Decision {
            truncate,
            length,
            tokens_scale,
            reset,
            hang,
            error,
            // Truncate at 0 (normal) and cap at one hour so a wild draw cannot wedge a test.
            latency: Duration::from_secs_f64((latency_ms.max(0.0) / 1000.0).min(3600.0)),
            outcome,
            reward,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let spec = MockSpec {
            latency: LatencyDist::LogNormal {
                median_ms: 10.0,
                sigma: 0.5,
            },
            error_rate: 0.3,
            seed: 42,
            ..MockSpec::default()
        };
        let (a, b) = (Decider::new(&spec), Decider::new(&spec));
        for _ in 0..100 {
            assert_eq!(a.next(), b.next());
        }
    }

    #[test]
    fn normal_latency_truncated_at_zero() {
        let spec = MockSpec {
            latency: LatencyDist::Normal {
                mean_ms: 0.0,
                sd_ms: 10.0,
            },
            ..MockSpec::default()
        };
        let d = Decider::new(&spec);
        let zeros = (0..1000).filter(|_| d.next().latency.is_zero()).count();
        assert!(zeros > 300, "about half the draws clamp to 0, got {zeros}");
    }
}

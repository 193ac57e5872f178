//! Error / slow-request attribution tests on event counts (STATISTICS.md §1.7).
//!
//! Conditioning on events removes the unknown baseline rate: with canary traffic
//! share `w` (canary / (canary + baseline)) and rate ratio `RR = p_canary/p_baseline`,
//! each event comes from the canary with probability `q = w·RR/(w·RR + 1 − w)`.
//! Per-period likelihood ratios use the share in force during that period, so the
//! test stays valid while the canary is ramped (the share only has to be fixed
//! before the period's events are seen). Also: Wald SPRT helpers for a one-sample
//! error rate against a known rate.

use serde::{Deserialize, Serialize};

use super::{check_positive, check_unit, ln_inv, p_from_log_e, StatsError};

/// Alternatives of the one-sided mixture, as multiples of the null rate ratio
/// (equal weights). Covers "a bit worse" to "badly broken" without picking one RR1.
pub const RR_GRID: [f64; 5] = [1.25, 1.5, 2.0, 3.0, 5.0];

/// Half-range of the log-RR grid that carries the likelihood for the confidence
/// sequence: RR in [1/1024, 1024]. Bounds are clamped there.
const CS_LOG_RR_MAX: f64 = 6.931_471_805_599_453; // ln 1024
/// Grid step in log RR (≈5 % resolution of the reported bounds).
const CS_STEP: f64 = 0.05;

/// Probability that an event came from the canary, given canary share `w`
/// (fraction in (0,1)) and rate ratio `rr` (> 0).
pub fn attribution_q(w: f64, rr: f64) -> f64 {
    w * rr / (w * rr + 1.0 - w)
}

/// Per-event log-likelihood ratios of the attribution SPRT `RR = rr` vs `RR = 1`:
/// returns `(q1, llr_canary_event, llr_baseline_event)`.
pub fn attribution_sprt_llr(w: f64, rr: f64) -> (f64, f64, f64) {
    let q1 = attribution_q(w, rr);
    (q1, (q1 / w).ln(), ((1.0 - q1) / (1.0 - w)).ln())
}

/// Wald thresholds `(ln A, ln B)`: reject H0 when `LLR ≥ ln((1−β)/α)`, accept H0
/// when `LLR ≤ ln(β/(1−α))`.
pub fn wald_thresholds(alpha: f64, beta: f64) -> (f64, f64) {
    (((1.0 - beta) / alpha).ln(), (beta / (1.0 - alpha)).ln())
}

/// Per-request LLR increments of the Bernoulli SPRT `p1` vs `p0`: `(error, success)`.
pub fn bernoulli_llr_increments(p0: f64, p1: f64) -> (f64, f64) {
    ((p1 / p0).ln(), ((1.0 - p1) / (1.0 - p0)).ln())
}

/// Wald's approximate expected sample sizes `(E_0[N], E_1[N])` (requests) of the
/// Bernoulli SPRT at the true rate `p0` and `p1` (ignores overshoot).
pub fn wald_asn_bernoulli(p0: f64, p1: f64, alpha: f64, beta: f64) -> (f64, f64) {
    let (la, lb) = wald_thresholds(alpha, beta);
    let (up, dn) = bernoulli_llr_increments(p0, p1);
    let mu0 = p0 * up + (1.0 - p0) * dn;
    let mu1 = p1 * up + (1.0 - p1) * dn;
    (
        ((1.0 - alpha) * lb + alpha * la) / mu0,
        (beta * lb + (1.0 - beta) * la) / mu1,
    )
}

/// `ln Σ exp(x_i)` without overflow.
pub(crate) fn log_sum_exp(xs: &[f64]) -> f64 {
    let m = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !m.is_finite() {
        return m;
    }
    m + xs.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
}

/// Incremental, ramp-aware error-attribution test of one canary (treatment)
/// arm against the baseline arm.
///
/// * Harm test: `H0: RR ≤ null_rr` against the mixture over `null_rr·RR_GRID`;
///   the e-value is a product of per-period likelihood ratios, so feeding periods
///   with different shares is valid. [`Self::p_value`] is the running minimum.
/// * Confidence sequence for RR (display, non-inferiority): prior–posterior ratio
///   with a uniform prior on a log-RR grid (step 0.05, RR in [1/1024, 1024]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorAttribution {
    /// Null rate ratio (1.0 = "no worse"; 1.1 = tolerate +10 %).
    pub null_rr: f64,
    /// Per-grid-point log likelihood ratio of `null_rr·RR_GRID[i]` vs `null_rr`.
    pub log_lr: Vec<f64>,
    /// Log-likelihood of each log-RR grid point of the confidence sequence.
    pub cs_loglik: Vec<f64>,
    /// `ln` of the prior-averaged likelihood over the CS grid, cached at each
    /// period so reading the CS at a look costs no `exp`.
    #[serde(default)]
    pub cs_log_marginal: f64,
    /// Largest mixture log e-value seen after any period ("ever crossed").
    pub max_log_e: f64,
    /// Events observed on the canary arm.
    pub canary_events: u64,
    /// Events observed on the baseline arm.
    pub baseline_events: u64,
    /// Periods fed so far.
    pub periods: u64,
}

impl Default for ErrorAttribution {
    fn default() -> Self {
        Self::new(1.0).unwrap_or_else(|_| unreachable!("1.0 is a valid rate ratio"))
    }
}

impl ErrorAttribution {
    /// A fresh test with null rate ratio `null_rr` (> 0; 1.0 for a plain harm test).
    pub fn new(null_rr: f64) -> Result<Self, StatsError> {
        check_positive("null_rr", null_rr)?;
        let points = (2.0 * CS_LOG_RR_MAX / CS_STEP).round() as usize + 1;
        Ok(Self {
            null_rr,
            log_lr: vec![0.0; RR_GRID.len()],
            cs_loglik: vec![0.0; points],
            cs_log_marginal: 0.0,
            max_log_e: 0.0,
            canary_events: 0,
            baseline_events: 0,
            periods: 0,
        })
    }

    fn cs_log_rr(i: usize) -> f64 {
        -CS_LOG_RR_MAX + i as f64 * CS_STEP
    }

    /// Feeds one period: `share_w` is the canary's share of (canary + baseline)
    /// traffic in force during the period (fraction in (0,1)); the counts are
    /// events (errors, slow requests) seen on each arm in that period.
    /// Errors only on an invalid share, leaving the state untouched.
    pub fn observe_period(
        &mut self,
        share_w: f64,
        canary_events: u64,
        baseline_events: u64,
    ) -> Result<(), StatsError> {
        check_unit("share_w", share_w)?;
        self.periods += 1;
        if canary_events == 0 && baseline_events == 0 {
            return Ok(());
        }
        let (kc, kb) = (canary_events as f64, baseline_events as f64);
        let q0 = attribution_q(share_w, self.null_rr);
        for (llr, g) in self.log_lr.iter_mut().zip(RR_GRID) {
            let q1 = attribution_q(share_w, self.null_rr * g);
            *llr += kc * (q1 / q0).ln() + kb * ((1.0 - q1) / (1.0 - q0)).ln();
        }
        for (i, ll) in self.cs_loglik.iter_mut().enumerate() {
            let q = attribution_q(share_w, Self::cs_log_rr(i).exp());
            *ll += kc * q.ln() + kb * (-q).ln_1p();
        }
        // Uniform prior over G points: log m_t = logsumexp(ll) − ln G.
        self.cs_log_marginal = log_sum_exp(&self.cs_loglik) - (self.cs_loglik.len() as f64).ln();
        self.canary_events += canary_events;
        self.baseline_events += baseline_events;
        self.max_log_e = self.max_log_e.max(self.log_e());
        Ok(())
    }

    /// Feeds a single event (per-event streaming form of [`Self::observe_period`]).
    pub fn observe_event(&mut self, share_w: f64, from_canary: bool) -> Result<(), StatsError> {
        self.observe_period(share_w, u64::from(from_canary), u64::from(!from_canary))
    }

    /// Current mixture log e-value `ln(mean_i exp(log_lr_i))`.
    pub fn log_e(&self) -> f64 {
        log_sum_exp(&self.log_lr) - (self.log_lr.len() as f64).ln()
    }

    /// Always-valid one-sided p-value for harm: `min(1, 1/max_t E_t)`.
    pub fn p_value(&self) -> f64 {
        p_from_log_e(self.max_log_e)
    }

    /// Total events on both arms.
    pub fn total_events(&self) -> u64 {
        self.canary_events + self.baseline_events
    }

    /// Rate-ratio point estimate (maximum likelihood on the grid, refined by a
    /// parabola through the neighbours); `None` before any event.
    pub fn estimate(&self) -> Option<f64> {
        if self.total_events() == 0 {
            return None;
        }
        let (imax, _) =
            self.cs_loglik
                .iter()
                .enumerate()
                .fold(
                    (0, f64::NEG_INFINITY),
                    |acc, (i, &v)| {
                        if v > acc.1 {
                            (i, v)
                        } else {
                            acc
                        }
                    },
                );
        let mut x = Self::cs_log_rr(imax);
        if imax > 0 && imax + 1 < self.cs_loglik.len() {
            let (a, b, c) = (
                self.cs_loglik[imax - 1],
                self.cs_loglik[imax],
                self.cs_loglik[imax + 1],
            );
            let denom = a - 2.0 * b + c;
            if denom < 0.0 {
                x += 0.5 * CS_STEP * (a - c) / denom;
            }
        }
        Some(x.exp())
    }

    /// Two-sided always-valid CS `[lo, hi]` for the rate ratio at level `alpha`,
    /// widened outward to the neighbouring grid points and clamped to
    /// [1/1024, 1024]. `None` before any event.
    pub fn confidence_sequence(&self, alpha: f64) -> Option<[f64; 2]> {
        if self.total_events() == 0 {
            return None;
        }
        let cut = self.cs_log_marginal - ln_inv(alpha);
        let inside = |ll: &f64| *ll >= cut;
        let first = self.cs_loglik.iter().position(inside)?;
        let last = self.cs_loglik.iter().rposition(inside)?;
        let lo = Self::cs_log_rr(first.saturating_sub(1));
        let hi = Self::cs_log_rr((last + 1).min(self.cs_loglik.len() - 1));
        Some([lo.exp(), hi.exp()])
    }
}

/// Constant-share Dirichlet-multinomial attribution test (Lindon & Malek 2022,
/// savvi): events `[baseline, canary]`, canary share `w`, prior Dirichlet(k·θ0).
/// Returns the always-valid p-value for `RR = 1` at this look and the two-sided
/// CS for `ln RR` at level `alpha` (prior–posterior ratio, solved by bisection).
/// Use [`ErrorAttribution`] instead when the share changes over time.
pub fn dirichlet_attribution(
    baseline_events: u64,
    canary_events: u64,
    w: f64,
    k: f64,
    alpha: f64,
) -> Result<(f64, [f64; 2]), StatsError> {
    check_unit("w", w)?;
    check_positive("k", k)?;
    check_unit("alpha", alpha)?;
    let theta0 = [1.0 - w, w];
    let counts = [baseline_events, canary_events];
    let log_bf = super::srm::sequential_log_bf(&counts, &theta0, k)?;
    let (kb, kc) = (baseline_events as f64, canary_events as f64);
    // ln m(x) under the prior, without the multinomial coefficient (it cancels).
    let log_m = log_bf + kb * theta0[0].ln() + kc * theta0[1].ln();
    let f = |d: f64| {
        let q = attribution_q(w, d.exp());
        kc * q.ln() + kb * (-q).ln_1p() - log_m + ln_inv(alpha)
    };
    // f > 0 inside the CS; the MLE (or the edge of the search range) is inside.
    let mle = if kc > 0.0 && kb > 0.0 {
        ((kc / w) / (kb / (1.0 - w))).ln()
    } else if kc > 0.0 {
        30.0
    } else {
        -30.0
    };
    let bisect = |mut inside: f64, mut outside: f64| {
        for _ in 0..200 {
            let mid = 0.5 * (inside + outside);
            if f(mid) >= 0.0 {
                inside = mid;
            } else {
                outside = mid;
            }
        }
        0.5 * (inside + outside)
    };
    let lo = if f(mle - 40.0) >= 0.0 {
        f64::NEG_INFINITY
    } else {
        bisect(mle, mle - 40.0)
    };
    let hi = if f(mle + 40.0) >= 0.0 {
        f64::INFINITY
    } else {
        bisect(mle, mle + 40.0)
    };
    Ok((p_from_log_e(log_bf), [lo, hi]))
}

//! The Gaussian-mixture (Robbins) martingale: always-valid p-values and
//! confidence sequences for an asymptotically normal difference.
//!
//! With `z = (D̂ − D0)/√Var̂(D̂)` and `r = τ²/Var̂(D̂)` the two-sided e-value is
//! `log E = ½[z²·r/(1+r) − ln(1+r)]`; the one-sided (half-normal mixing) version is
//! `ln 2 − ½ln(1+r) + z²r/(2(1+r)) + ln Φ(z√(r/(1+r)))`. Johari's mSPRT, the
//! Waudby-Smith/GrowthBook asymptotic CS and confseq's normal-mixture boundary are
//! this one martingale in different parameterisations (STATISTICS.md §0, §1.2, §1.3).
//! Tuning follows gbstats: `r = N·ρ²`, `ρ² = r*(α)/N*` with `N = n_A + n_B` and
//! `N*` the design (planned total) sample size; one-sided tests tune with `2α`.

use serde::{Deserialize, Serialize};
use statrs::function::erf::erfc;

use super::sufficient::Moments;
use super::{check_positive, check_unit, ln_inv, p_from_log_e, StatsError};

/// Default two-sided level for the primary metric.
pub const DEFAULT_ALPHA: f64 = 0.05;
/// Default design sample size N* (gbstats / PostHog default). Set it to the
/// expected total sample at decision time for best power (STATISTICS.md §1.2).
pub const DEFAULT_DESIGN_SAMPLES: f64 = 5000.0;

/// `r* = 2 ln(1/α) + ln(1 + 2 ln(1/α))`: the value of `r = τ²/Var̂` at which the
/// two-sided CS is (approximately) tightest. 7.936 at α = 0.05.
pub fn r_star(alpha: f64) -> f64 {
    let l = 2.0 * ln_inv(alpha);
    l + l.ln_1p()
}

/// Two-sided log e-value of the Gaussian mixture; `r > 0`.
pub fn log_e_two_sided(z: f64, r: f64) -> f64 {
    0.5 * (z * z * r / (1.0 + r) - r.ln_1p())
}

/// One-sided log e-value (half-normal mixing on the alternative side `D > D0`);
/// large positive `z` is evidence against `H0: D ≤ D0`.
pub fn log_e_one_sided(z: f64, r: f64) -> f64 {
    let shrink = (r / (1.0 + r)).sqrt();
    std::f64::consts::LN_2 - 0.5 * r.ln_1p() + z * z * r / (2.0 * (1.0 + r)) + ln_phi(z * shrink)
}

/// Half-width of the two-sided CS: `se·√((1+r)/r·(2 ln(1/α) + ln(1+r)))`.
pub fn halfwidth_two_sided(se: f64, r: f64, alpha: f64) -> f64 {
    se * ((1.0 + r) / r * (2.0 * ln_inv(alpha) + r.ln_1p())).sqrt()
}

/// `ln Φ(x)` for the standard normal CDF, accurate in the far left tail where
/// `Φ` underflows (Mills-ratio asymptote).
pub(crate) fn ln_phi(x: f64) -> f64 {
    let cdf = 0.5 * erfc(-x / std::f64::consts::SQRT_2);
    if cdf > 1e-300 {
        cdf.ln()
    } else {
        // Φ(x) ≈ φ(x)/|x| for x → −∞.
        -0.5 * x * x - (-x).ln() - 0.5 * (2.0 * std::f64::consts::PI).ln()
    }
}

/// Confseq-style two-sided normal-mixture boundary on the *sum* scale:
/// `u(v) = √((v+ρ)(ln(1+v/ρ) + 2 ln(1/α)))`, `ρ = v_opt / r*(α_opt)`.
/// `v` is intrinsic time (variance of the sum); `v_opt` where the bound is tightest.
pub fn normal_mixture_bound_two_sided(v: f64, v_opt: f64, alpha: f64, alpha_opt: f64) -> f64 {
    let rho = v_opt / r_star(alpha_opt);
    ((v + rho) * ((v / rho).ln_1p() + 2.0 * ln_inv(alpha))).sqrt()
}

/// Confseq-style one-sided normal-mixture boundary on the sum scale: the `s`
/// where the one-sided log e-value reaches `ln(1/α)`, with `ρ = v_opt / r*(2·α_opt)`.
/// Solved by bisection (60 halvings give ~1e-15 relative precision on `[0, 100]·√v`).
pub fn normal_mixture_bound_one_sided(v: f64, v_opt: f64, alpha: f64, alpha_opt: f64) -> f64 {
    let rho = v_opt / r_star(2.0 * alpha_opt);
    let r = v / rho;
    let target = ln_inv(alpha);
    let (mut lo, mut hi) = (0.0_f64, 1.0_f64);
    while log_e_one_sided(hi, r) < target && hi < 1e6 {
        hi *= 2.0;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if log_e_one_sided(mid, r) < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi) * v.sqrt()
}

/// Log e-value of the two-sided mixture parameterised directly by the mixing
/// variance `τ²` (Johari et al. mSPRT): `r = τ²/Var̂(D̂)`. `diff` is `D̂ − θ0`.
/// For n pairs with per-pair variance `V`, pass `var_hat = V/n`.
pub fn log_e_with_tau2(diff: f64, var_hat: f64, tau2: f64) -> f64 {
    log_e_two_sided(diff / var_hat.sqrt(), tau2 / var_hat)
}

/// Level and tuning of the mixture tests.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MixtureConfig {
    /// Level α in (0, 0.5); two-sided tests use α, one-sided tests use α on one side.
    pub alpha: f64,
    /// Design sample size N* (total units over both arms) where the CS is tightest.
    pub design_samples: f64,
}

impl Default for MixtureConfig {
    fn default() -> Self {
        Self {
            alpha: DEFAULT_ALPHA,
            design_samples: DEFAULT_DESIGN_SAMPLES,
        }
    }
}

impl MixtureConfig {
    /// Validated constructor: α in (0, 0.5) (one-sided tuning uses 2α < 1), N* > 0.
    pub fn new(alpha: f64, design_samples: f64) -> Result<Self, StatsError> {
        check_unit("alpha", 2.0 * alpha)?;
        check_positive("design_samples", design_samples)?;
        Ok(Self {
            alpha,
            design_samples,
        })
    }

    /// `ρ²` of the two-sided test (gbstats): `r*(α)/N*`.
    pub fn rho2_two_sided(&self) -> f64 {
        r_star(self.alpha) / self.design_samples
    }

    /// `ρ²` of one-sided tests: `r*(2α)/N*` (GrowthBook TS port, confseq `best_rho(v, 2α)`).
    pub fn rho2_one_sided(&self) -> f64 {
        r_star(2.0 * self.alpha) / self.design_samples
    }

    /// The same tuning at another level (Bonferroni-adjusted thresholds keep the
    /// *tuning* of the nominal level; any tuning is valid, only power changes).
    pub fn with_alpha(&self, alpha: f64) -> Self {
        Self { alpha, ..*self }
    }
}

/// Scale on which two arms are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scale {
    /// `μ_B − μ_A` in the metric's units.
    Absolute,
    /// `(μ_B − μ_A)/μ_A` as a fraction (0.05 = +5 %), delta-method variance.
    Relative,
}

/// Why a comparison cannot be computed yet. Not an error: the decision rule
/// treats it as "no evidence", which can never trigger an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum NotComputable {
    /// An arm has no units.
    #[error("an arm has no data")]
    EmptyArm,
    /// `Var̂(D̂) = 0` (both arms constant): the z-statistic is undefined.
    #[error("zero variance in both arms")]
    ZeroVariance,
    /// Relative lift with a baseline mean of 0 is undefined.
    #[error("baseline mean is 0, relative lift undefined")]
    ZeroBaselineMean,
    /// The inputs produced a non-finite statistic (e.g. overflow).
    #[error("non-finite statistic")]
    NonFinite,
}

/// An estimate with its always-valid CS and p-value at one look.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SequentialEstimate {
    /// Scale of `estimate` and `ci`.
    pub scale: Scale,
    /// Point estimate of treatment − baseline (absolute units or fraction).
    pub estimate: f64,
    /// Standard error `√Var̂(D̂)`.
    pub std_error: f64,
    /// Two-sided always-valid CS `[lo, hi]` at level `alpha`.
    pub ci: [f64; 2],
    /// Level of `ci` and `p_value`.
    pub alpha: f64,
    /// Instantaneous always-valid p-value for `D = 0`, `min(1, 1/E)`; keep the
    /// running minimum across looks (see `evidence`).
    pub p_value: f64,
    /// `ln E` against `D = 0` (may be negative).
    pub log_e: f64,
    /// Total units `n_A + n_B` the estimate rests on.
    pub n_total: u64,
}

/// Result of a two-sample comparison: an estimate, or why there is none.
pub type Comparison = Result<SequentialEstimate, NotComputable>;

/// Difference of treatment vs baseline and its variance `Var̂(D̂)` on `scale`.
/// Relative: `(μ_B−μ_A)/μ_A`, `Var = σ_B²/(μ_A² n_B) + σ_A² μ_B²/(μ_A⁴ n_A)`.
pub fn difference(
    baseline: &Moments,
    treatment: &Moments,
    scale: Scale,
) -> Result<(f64, f64), NotComputable> {
    if baseline.n == 0 || treatment.n == 0 {
        return Err(NotComputable::EmptyArm);
    }
    let (n_a, n_b) = (baseline.n as f64, treatment.n as f64);
    difference_of_means(
        baseline.mean,
        baseline.variance.max(0.0) / n_a,
        treatment.mean,
        treatment.variance.max(0.0) / n_b,
        scale,
    )
}

/// [`difference`] from two means and the variances of those means
/// (`σ²/n` for a plain mean; see `strata` for a stratified one).
pub fn difference_of_means(
    m_a: f64,
    vm_a: f64,
    m_b: f64,
    vm_b: f64,
    scale: Scale,
) -> Result<(f64, f64), NotComputable> {
    let (est, var) = match scale {
        Scale::Absolute => (m_b - m_a, vm_b + vm_a),
        Scale::Relative => {
            if m_a == 0.0 {
                return Err(NotComputable::ZeroBaselineMean);
            }
            let m_a2 = m_a * m_a;
            (
                (m_b - m_a) / m_a,
                vm_b / m_a2 + vm_a * m_b * m_b / (m_a2 * m_a2),
            )
        }
    };
    if !(est.is_finite() && var.is_finite()) {
        return Err(NotComputable::NonFinite);
    }
    if var <= 0.0 {
        return Err(NotComputable::ZeroVariance);
    }
    Ok((est, var))
}

/// Two-sided mixture estimate (gbstats `SequentialTwoSidedTTest`) for an
/// estimate `est` with variance `var` resting on `n_total` units.
pub fn two_sided(
    est: f64,
    var: f64,
    n_total: u64,
    scale: Scale,
    cfg: &MixtureConfig,
) -> Comparison {
    if n_total == 0 {
        return Err(NotComputable::EmptyArm);
    }
    if !(var > 0.0 && var.is_finite() && est.is_finite()) {
        return Err(NotComputable::ZeroVariance);
    }
    let se = var.sqrt();
    let r = n_total as f64 * cfg.rho2_two_sided();
    let hw = halfwidth_two_sided(se, r, cfg.alpha);
    let log_e = log_e_two_sided(est / se, r);
    Ok(SequentialEstimate {
        scale,
        estimate: est,
        std_error: se,
        ci: [est - hw, est + hw],
        alpha: cfg.alpha,
        p_value: p_from_log_e(log_e),
        log_e,
        n_total,
    })
}

/// Compares `treatment` against `baseline` on `scale` with the two-sided mixture.
pub fn compare(
    baseline: &Moments,
    treatment: &Moments,
    scale: Scale,
    cfg: &MixtureConfig,
) -> Comparison {
    let (est, var) = difference(baseline, treatment, scale)?;
    two_sided(est, var, baseline.n + treatment.n, scale, cfg)
}

/// One-sided mixture log e-value of `H0: s·D ≤ null` against `s·D > null`,
/// where `sign = s` is +1 when larger values are the alternative. Used as
/// * harm test: `null = 0`, `sign` = harmful direction;
/// * non-inferiority: `H0: s·D ≥ m` ⇔ `H0: −s·D ≤ −m`, i.e. `sign = −s`, `null = −m`.
///
/// Tuned with `cfg.rho2_one_sided()`; compare `ln E` with `ln(1/α)`.
pub fn log_e_one_sided_for(
    est: f64,
    var: f64,
    n_total: u64,
    sign: f64,
    null: f64,
    cfg: &MixtureConfig,
) -> Result<f64, NotComputable> {
    if n_total == 0 {
        return Err(NotComputable::EmptyArm);
    }
    if !(var > 0.0 && var.is_finite() && est.is_finite()) {
        return Err(NotComputable::ZeroVariance);
    }
    let z = (sign * est - null) / var.sqrt();
    let r = n_total as f64 * cfg.rho2_one_sided();
    Ok(log_e_one_sided(z, r))
}

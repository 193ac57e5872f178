//! `stats::paired`: shadow-vs-primary comparisons on mirrored requests.
//!
//! A mirrored request yields a *pair*: the outcome `x` of the primary twin (the
//! live arm that served the user) and the outcome `y` of the shadow on the same
//! request. Pairing removes the request-to-request spread both arms share (prompt
//! length, cache state, load at that instant), so a paired test needs far fewer
//! requests than a two-sample one on the same traffic.
//!
//! * Continuous metrics (latency in ms, tokens, cost): [`PairedSums`] (six sums) →
//!   [`paired_two_sided`] (the Gaussian mixture of [`mixture`](super::mixture) on
//!   the per-pair differences `d = y − x`) and [`paired_log_e_one_sided`] (harm /
//!   non-inferiority). Asymptotic, like the two-sample mixture tests.
//! * Binary metrics (error, stream_incomplete): [`DiscordantPairs`] →
//!   [`discordant_two_sided`] (a sequential McNemar test, exact) and
//!   [`discordant_log_e_one_sided`] (a betting test of the risk difference
//!   against a margin, exact).
//!
//! Owns: the formulas. Never: keeps state across looks (the running minimum of
//! p-values belongs to `evidence`), reads clocks or draws random numbers.
//! Every test here assumes the pairs are i.i.d. draws from one joint distribution
//! of `(x, y)`; the two outcomes *within* a pair may be dependent in any way.

use serde::{Deserialize, Serialize};
use statrs::function::beta::ln_beta;

use super::mixture::{
    log_e_one_sided_for, two_sided, Comparison, MixtureConfig, NotComputable, Scale,
    SequentialEstimate, DEFAULT_ALPHA,
};
use super::{check_positive, check_unit, ln_inv, p_from_log_e, StatsError};

/// Below this fraction of its raw sum of squares (`Σx² + Σy²` on the absolute
/// scale, `Σy² + R²Σx²` on the relative one), a centred sum of squares computed
/// from the six sums is indistinguishable from rounding (the sums cancel), so
/// the variance is treated as zero: `NotComputable::ZeroVariance`. Without the
/// floor, a constant difference on non-integer values (a shadow always 5.0 ms
/// slower than a ~1000.37 ms primary) would show rounding noise as a variance
/// and a z-statistic in the millions. A real spread of the differences that
/// small (a standard deviation under 1e-6 of the values) is not resolvable from
/// plain sums anyway.
pub const VARIANCE_RESOLUTION: f64 = 1e-12;

/// Running sums over the pairs of one continuous metric, as the data plane keeps
/// them: `x` is the primary twin's outcome, `y` the shadow's, in the metric's
/// units (ms, tokens, dollars). Mergeable by addition, in any order.
///
/// Plain sums lose precision when the mean is large against the spread of the
/// differences; [`VARIANCE_RESOLUTION`] says where that is caught.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct PairedSums {
    /// Number of pairs.
    pub n: u64,
    /// `Σx` (primary).
    pub sum_x: f64,
    /// `Σy` (shadow).
    pub sum_y: f64,
    /// `Σx²`.
    pub sum_xx: f64,
    /// `Σy²`.
    pub sum_yy: f64,
    /// `Σxy`.
    pub sum_xy: f64,
}

impl PairedSums {
    /// Adds one pair (`x` primary, `y` shadow). A non-finite value is rejected
    /// with an error and the sums are left untouched, so one bad sample cannot
    /// poison the metric forever.
    pub fn record(&mut self, x: f64, y: f64) -> Result<(), StatsError> {
        for v in [x, y] {
            if !v.is_finite() {
                return Err(StatsError::NotFinite(v));
            }
        }
        self.n += 1;
        self.sum_x += x;
        self.sum_y += y;
        self.sum_xx += x * x;
        self.sum_yy += y * y;
        self.sum_xy += x * y;
        Ok(())
    }

    /// The sums of both shards or periods together (the count saturates).
    pub fn plus(&self, other: &Self) -> Self {
        Self {
            n: self.n.saturating_add(other.n),
            sum_x: self.sum_x + other.sum_x,
            sum_y: self.sum_y + other.sum_y,
            sum_xx: self.sum_xx + other.sum_xx,
            sum_yy: self.sum_yy + other.sum_yy,
            sum_xy: self.sum_xy + other.sum_xy,
        }
    }

    /// What `self` holds beyond `base`, an earlier copy of the same running
    /// sums (the pairs of one period). The count saturates.
    pub fn minus(&self, base: &Self) -> Self {
        Self {
            n: self.n.saturating_sub(base.n),
            sum_x: self.sum_x - base.sum_x,
            sum_y: self.sum_y - base.sum_y,
            sum_xx: self.sum_xx - base.sum_xx,
            sum_yy: self.sum_yy - base.sum_yy,
            sum_xy: self.sum_xy - base.sum_xy,
        }
    }

    /// Mean of the primary outcomes `x̄`; 0 when there is no pair.
    pub fn mean_primary(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.sum_x / self.n as f64
        }
    }

    /// Mean of the shadow outcomes `ȳ`; 0 when there is no pair.
    pub fn mean_shadow(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.sum_y / self.n as f64
        }
    }
}

/// Shadow-minus-primary effect and the variance of its estimate, from the sums.
///
/// * Absolute: `D̂ = d̄ = ȳ − x̄`, `Var̂ = s_d²/n`, `s_d² = (Σd² − n·d̄²)/(n−1)`,
///   `Σd² = Σy² − 2Σxy + Σx²`.
/// * Relative: `D̂ = (ȳ − x̄)/x̄ = R − 1` with `R = ȳ/x̄`; delta method with the
///   covariance, `Var̂ = (s_y² − 2R·s_xy + R²·s_x²)/(n·x̄²)`. The bracket is the
///   sample variance of the linearised residuals `y_i − R·x_i` (their mean is 0),
///   computed as `(Σy² − 2RΣxy + R²Σx²)/(n−1)`. With `s_xy = 0` it is the
///   two-sample formula of `mixture::difference`.
///
/// Not computable: `n = 0` (`EmptyArm`); `n = 1` or a centred sum of squares
/// below [`VARIANCE_RESOLUTION`] of its raw squares (`ZeroVariance`); relative
/// with `x̄ = 0` (`ZeroBaselineMean`); non-finite sums or results (`NonFinite`).
pub fn paired_difference(sums: &PairedSums, scale: Scale) -> Result<(f64, f64), NotComputable> {
    let s = sums;
    if s.n == 0 {
        return Err(NotComputable::EmptyArm);
    }
    let all = [s.sum_x, s.sum_y, s.sum_xx, s.sum_yy, s.sum_xy];
    if all.iter().any(|v| !v.is_finite()) {
        return Err(NotComputable::NonFinite);
    }
    if s.n < 2 {
        return Err(NotComputable::ZeroVariance);
    }
    let n = s.n as f64;
    let (est, centred, raw, denom) = match scale {
        Scale::Absolute => {
            let sum_d = s.sum_y - s.sum_x;
            let sum_dd = s.sum_yy - 2.0 * s.sum_xy + s.sum_xx;
            (
                sum_d / n,
                sum_dd - sum_d * sum_d / n,
                s.sum_xx + s.sum_yy,
                1.0,
            )
        }
        Scale::Relative => {
            if s.sum_x == 0.0 {
                return Err(NotComputable::ZeroBaselineMean);
            }
            let xbar = s.sum_x / n;
            let ratio = s.sum_y / s.sum_x;
            (
                ratio - 1.0,
                s.sum_yy - 2.0 * ratio * s.sum_xy + ratio * ratio * s.sum_xx,
                s.sum_yy + ratio * ratio * s.sum_xx,
                xbar * xbar,
            )
        }
    };
    let var = centred / ((n - 1.0) * n * denom);
    if !(est.is_finite() && var.is_finite()) {
        return Err(NotComputable::NonFinite);
    }
    // `centred` is finite here (so is `var`): a plain comparison suffices.
    if centred <= VARIANCE_RESOLUTION * raw {
        return Err(NotComputable::ZeroVariance);
    }
    Ok((est, var))
}

/// Two-sided always-valid test of "shadow = primary" on a continuous metric,
/// with its confidence sequence: the Gaussian mixture of
/// [`mixture::two_sided`](super::mixture::two_sided) applied to the per-pair
/// differences, `r = n·ρ²`, `ρ² = r*(α)/N*`.
///
/// Tuning: a pair is one unit, so `n_total` is the number of pairs `n` and
/// `cfg.design_samples` (N*) is read as the number of *pairs* at which the CS
/// should be tightest (the expected mirrored requests at decision time). A
/// two-sample comparison instead counts both arms' units in N*; pass half its
/// N* if the same policy value must mean the same *observations* here.
///
/// Guarantee: for i.i.d. pairs with finite variance of `d`, the CS covers the
/// true mean difference at every look simultaneously, and `min(1, 1/E)` is an
/// always-valid p-value, both at level `α` **asymptotically** (plug-in `s_d²`,
/// as the two-sample mixture tests; STATISTICS.md §1.1–1.2). Exact for Gaussian
/// differences with known variance.
pub fn paired_two_sided(sums: &PairedSums, scale: Scale, cfg: &MixtureConfig) -> Comparison {
    let (est, var) = paired_difference(sums, scale)?;
    two_sided(est, var, sums.n, scale, cfg)
}

/// One-sided mixture log e-value of `H0: s·D ≤ null` against `s·D > null` on the
/// paired difference `D` (shadow − primary, on `scale`), mirroring
/// [`mixture::log_e_one_sided_for`](super::mixture::log_e_one_sided_for):
/// * "shadow harmed beyond margin m": `sign` = the harmful direction (+1 when
///   larger is worse, e.g. latency), `null = m`;
/// * "shadow non-inferior by margin m" (`H0: s·D ≥ m`): `sign = −s`, `null = −m`.
///
/// Tuned with `cfg.rho2_one_sided()` and `n_total = n` pairs; reject when
/// `ln E ≥ ln(1/α)`. Same asymptotic guarantee as [`paired_two_sided`].
pub fn paired_log_e_one_sided(
    sums: &PairedSums,
    scale: Scale,
    sign: f64,
    null: f64,
    cfg: &MixtureConfig,
) -> Result<f64, NotComputable> {
    let (est, var) = paired_difference(sums, scale)?;
    log_e_one_sided_for(est, var, sums.n, sign, null, cfg)
}

/// Pair counts of one binary metric (error, stream_incomplete): only the
/// discordant pairs carry information about the difference of the two rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DiscordantPairs {
    /// All pairs `n` (concordant and discordant).
    pub pairs: u64,
    /// `b`: pairs with `x = 1, y = 0` (only the primary had the event).
    pub primary_only: u64,
    /// `c`: pairs with `x = 0, y = 1` (only the shadow had the event).
    pub shadow_only: u64,
}

impl DiscordantPairs {
    /// Builds from counts; errors when `b + c > n`.
    pub fn new(pairs: u64, primary_only: u64, shadow_only: u64) -> Result<Self, StatsError> {
        let discordant = primary_only.saturating_add(shadow_only);
        if discordant > pairs {
            return Err(StatsError::SuccessesExceedN {
                n: pairs,
                successes: discordant,
            });
        }
        Ok(Self {
            pairs,
            primary_only,
            shadow_only,
        })
    }

    /// Records one pair: `primary` and `shadow` say whether each had the event.
    pub fn record(&mut self, primary: bool, shadow: bool) {
        self.pairs += 1;
        self.primary_only += u64::from(primary && !shadow);
        self.shadow_only += u64::from(shadow && !primary);
    }

    /// The counts of both shards or periods together (saturating).
    pub fn plus(&self, other: &Self) -> Self {
        Self {
            pairs: self.pairs.saturating_add(other.pairs),
            primary_only: self.primary_only.saturating_add(other.primary_only),
            shadow_only: self.shadow_only.saturating_add(other.shadow_only),
        }
    }

    /// Discordant pairs `m = b + c` (saturating).
    pub fn discordant(&self) -> u64 {
        self.primary_only.saturating_add(self.shadow_only)
    }

    /// `b + c ≤ n`, as [`Self::new`] and [`Self::record`] keep it; the fields
    /// are public, so the tests check it again rather than trust it.
    fn consistent(&self) -> bool {
        self.discordant() <= self.pairs
    }

    /// Risk difference `(c − b)/n` = shadow's event rate − primary's (fraction);
    /// `None` without pairs.
    pub fn risk_difference(&self) -> Option<f64> {
        (self.pairs > 0)
            .then(|| (self.shadow_only as f64 - self.primary_only as f64) / self.pairs as f64)
    }
}

/// Default `a` of the symmetric `Beta(a, a)` mixing prior on the shadow's share
/// `q` of the discordant pairs: Jeffreys' `Beta(½, ½)` (the Krichevsky–Trofimov
/// mixture), whose log e-value trails the best fixed alternative by only
/// `½ ln m + O(1)` after `m` discordant pairs.
pub const DEFAULT_DISCORDANT_PRIOR: f64 = 0.5;

/// Level and prior of the sequential McNemar test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DiscordantConfig {
    /// Two-sided level α in (0, 1).
    pub alpha: f64,
    /// `a` of the `Beta(a, a)` prior on `q` (> 0). Larger values concentrate the
    /// prior near `q = ½`: more power for small effects, less for large ones.
    /// Any value keeps the guarantee.
    pub prior: f64,
}

impl Default for DiscordantConfig {
    fn default() -> Self {
        Self {
            alpha: DEFAULT_ALPHA,
            prior: DEFAULT_DISCORDANT_PRIOR,
        }
    }
}

impl DiscordantConfig {
    /// Validated constructor: α in (0, 1), prior > 0.
    pub fn new(alpha: f64, prior: f64) -> Result<Self, StatsError> {
        check_unit("alpha", alpha)?;
        check_positive("prior", prior)?;
        Ok(Self { alpha, prior })
    }
}

/// `ln E` of the `Beta(a, a)` mixture against `H0: q = q0` after `c` shadow-only
/// and `b` primary-only pairs: `ln B(a+c, a+b) − ln B(a, a) − c·ln q0 − b·ln(1−q0)`
/// (the Bayes factor of Robbins' beta-binomial mixture; `0·ln 0 = 0`).
/// `q0` in `[0, 1]`; `+∞` when `q0` is impossible given the counts.
pub fn mcnemar_log_e(shadow_only: u64, primary_only: u64, q0: f64, prior: f64) -> f64 {
    let (c, b) = (shadow_only as f64, primary_only as f64);
    log_marginal(c, b, prior) - log_lik(c, b, q0)
}

/// `ln ∫ q^c (1−q)^b dBeta(a, a)(q)`.
fn log_marginal(c: f64, b: f64, prior: f64) -> f64 {
    ln_beta(prior + c, prior + b) - ln_beta(prior, prior)
}

/// `c·ln q + b·ln(1−q)` with `0·ln 0 = 0`.
fn log_lik(c: f64, b: f64, q: f64) -> f64 {
    let term = |k: f64, p: f64| if k == 0.0 { 0.0 } else { k * p.ln() };
    term(c, q) + term(b, 1.0 - q)
}

/// Two-sided always-valid CS `[lo, hi]` for `q`, the probability that a
/// discordant pair is shadow-only: all `q0` whose [`mcnemar_log_e`] stays below
/// `ln(1/α)`. The log-likelihood is concave in `q`, so the set is an interval
/// around `c/m`; its ends are found by bisection (to ~1e-16). `None` when `m = 0`.
pub fn discordant_share_cs(pairs: &DiscordantPairs, cfg: &DiscordantConfig) -> Option<[f64; 2]> {
    if pairs.discordant() == 0 {
        return None;
    }
    let (c, b) = (pairs.shadow_only as f64, pairs.primary_only as f64);
    let cut = log_marginal(c, b, cfg.prior) - ln_inv(cfg.alpha);
    let inside = |q: f64| log_lik(c, b, q) > cut;
    let mle = c / (c + b);
    let edge = |outer: f64| {
        if inside(outer) {
            return outer;
        }
        let (mut inner, mut outer) = (mle, outer);
        for _ in 0..100 {
            let mid = 0.5 * (inner + outer);
            if inside(mid) {
                inner = mid;
            } else {
                outer = mid;
            }
        }
        0.5 * (inner + outer)
    };
    Some([edge(0.0), edge(1.0)])
}

/// Two-sided sequential McNemar test of "shadow and primary have the same event
/// rate" with an always-valid CS for the risk difference `RD = p_shadow − p_primary`.
///
/// Given `m = b + c` discordant pairs, each is shadow-only with probability
/// `q = P(0,1)/(P(0,1) + P(1,0))`, independently, and `RD = (2q − 1)·π` with `π`
/// the probability that a pair is discordant; `RD = 0 ⇔ q = ½`.
/// * Test, **exact**: `E = 2^m·B(a+c, a+b)/B(a, a)` is a nonnegative martingale
///   under `q = ½` (concordant pairs multiply it by 1), so by Ville's inequality
///   `p = min(1, 1/E)` is an always-valid p-value at every look, for any `n`,
///   with no normal approximation (i.i.d. pairs; any rates and within-pair dependence).
/// * CS for `q`, **exact**: [`discordant_share_cs`], the inversion of the same
///   mixture.
/// * CS for `RD`: `[(2q_lo − 1)·m/n, (2q_hi − 1)·m/n]`, a **plug-in** of
///   `π̂ = m/n` for `π`; it inherits the exact coverage of `q` only up to the
///   error of `π̂` (relative error ~`1/√m`), so read its ends as approximate.
///   The estimate `(c − b)/n` is exact arithmetic, not a plug-in.
/// * `std_error` is the plug-in `√((m/n − RD̂²)/n)`, for display only.
///
/// `n_total` is the number of pairs. Not computable: `n = 0` (`EmptyArm`);
/// `m = 0` (`ZeroVariance`: nothing distinguishes the arms yet, and the plug-in
/// would give a CS of width 0); counts with `b + c > n`, which only writing the
/// fields directly can produce (`NonFinite`).
pub fn discordant_two_sided(pairs: &DiscordantPairs, cfg: &DiscordantConfig) -> Comparison {
    if pairs.pairs == 0 {
        return Err(NotComputable::EmptyArm);
    }
    if !pairs.consistent() {
        return Err(NotComputable::NonFinite);
    }
    let Some(q_cs) = discordant_share_cs(pairs, cfg) else {
        return Err(NotComputable::ZeroVariance);
    };
    let n = pairs.pairs as f64;
    let m = pairs.discordant() as f64;
    let share = m / n;
    let est = (pairs.shadow_only as f64 - pairs.primary_only as f64) / n;
    let log_e = mcnemar_log_e(pairs.shadow_only, pairs.primary_only, 0.5, cfg.prior);
    let std_error = ((share - est * est).max(0.0) / n).sqrt();
    if !(log_e.is_finite() && std_error.is_finite()) {
        return Err(NotComputable::NonFinite);
    }
    Ok(SequentialEstimate {
        scale: Scale::Absolute,
        estimate: est,
        std_error,
        ci: [(2.0 * q_cs[0] - 1.0) * share, (2.0 * q_cs[1] - 1.0) * share],
        alpha: cfg.alpha,
        p_value: p_from_log_e(log_e),
        log_e,
        n_total: pairs.pairs,
    })
}

/// Bets of the one-sided test: `λ_k = λ_max·2^−k`, `k = 1..=BETS`, equal weights.
/// They span `λ_max/2` (large shifts on frequent events) to `~1e-6·λ_max`
/// (margins of a fraction of a percent on rare events).
const BETS: i32 = 20;

/// One-sided log e-value of `H0: s·RD ≤ null` against `s·RD > null` on the risk
/// difference `RD = p_shadow − p_primary` (fractions), mirroring
/// [`mixture::log_e_one_sided_for`](super::mixture::log_e_one_sided_for):
/// * "shadow harmed beyond margin m": `sign = +1` (a higher event rate is worse),
///   `null = m` (≥ 0);
/// * "shadow non-inferior": `H0: RD ≥ m` is `sign = −1`, `null = −m` (m > 0).
///
/// Construction (testing by betting; Shafer & Vovk; Waudby-Smith & Ramdas,
/// JRSS-B 2024): each pair gives `D = y − x ∈ {−1, 0, 1}`; for a fixed bet
/// `λ ∈ [0, 1/(1+null)]`, `Π(1 + λ(s·D_i − null))` is a nonnegative
/// supermartingale under `H0` (each factor has mean `1 + λ(s·RD − null) ≤ 1`).
/// It depends only on the counts `(n, b, c)`, and so does the equal-weight average
/// over the fixed grid of bets [`BETS`] returned here. Guarantee, **exact**: by
/// Ville's inequality `P(∃ look: ln E ≥ ln(1/α)) ≤ α` for i.i.d. pairs (indeed
/// for any pairs whose conditional mean of `s·D` stays `≤ null`), at every `n`,
/// with the absolute margin and no plug-in. McNemar's conditional test cannot
/// carry an absolute margin (RD depends on the discordance rate), hence this one.
///
/// `sign` is read as ±1. Not computable: `n = 0` (`EmptyArm`); `null` outside
/// `(−1, 1)` (`NonFinite`: no bet is both safe and informative there), or counts
/// with `b + c > n` (`NonFinite`).
pub fn discordant_log_e_one_sided(
    pairs: &DiscordantPairs,
    sign: f64,
    null: f64,
) -> Result<f64, NotComputable> {
    if pairs.pairs == 0 {
        return Err(NotComputable::EmptyArm);
    }
    if !(pairs.consistent() && null > -1.0 && null < 1.0) {
        return Err(NotComputable::NonFinite);
    }
    let s = if sign < 0.0 { -1.0 } else { 1.0 };
    let (c, b) = (pairs.shadow_only as f64, pairs.primary_only as f64);
    let concordant = (pairs.pairs - pairs.discordant()) as f64;
    // Each pair's bet is on `s·D − null`.
    betting_log_e(
        &[(c, s - null), (b, -s - null), (concordant, -null)],
        1.0 / (1.0 + null),
    )
}

/// `ln` of the equal-weight average over the bets `λ_k = λ_max·2^−k` of
/// `Π (1 + λ_k·v)^count` over `(count, v)`, the outcomes of the pairs and how
/// many pairs had each. `λ_max` keeps every factor positive.
fn betting_log_e(outcomes: &[(f64, f64)], lambda_max: f64) -> Result<f64, NotComputable> {
    let logs: Vec<f64> = (1..=BETS)
        .map(|k| {
            let lambda = lambda_max * 2f64.powi(-k);
            outcomes
                .iter()
                // Counts of zero contribute nothing, even where the factor would be 0.
                .filter(|(count, _)| *count > 0.0)
                .map(|(count, v)| count * (lambda * v).ln_1p())
                .sum::<f64>()
        })
        .collect();
    let log_e = super::attribution::log_sum_exp(&logs) - f64::from(BETS).ln();
    if log_e.is_finite() {
        Ok(log_e)
    } else {
        Err(NotComputable::NonFinite)
    }
}

/// One-sided log e-value on the *ratio* of the two event rates, for a
/// relative margin: `H0: s·(p_shadow − r·p_primary) ≤ 0` against `> 0`, with
/// `r = 1 + margin` the largest tolerated rate ratio:
/// * "shadow harmed beyond the margin": `sign = +1` (rejects `p_y ≤ r·p_x`);
/// * "shadow non-inferior": `sign = −1` (rejects `p_y ≥ r·p_x`).
///
/// Construction, as [`discordant_log_e_one_sided`] but on `D′ = y − r·x`,
/// whose mean is `p_y − r·p_x`: a pair with only the shadow's event gives
/// `1`, only the primary's `−r`, both `1 − r`, neither `0`. A bet
/// `λ ≤ 1/max(−s·D′)` (`1/r` for harm, `1` for non-inferiority) keeps every
/// factor `1 + λ·s·D′` nonnegative, and under `H0` each has mean `≤ 1`.
/// Guarantee, **exact**: by Ville's inequality `P(∃ look: ln E ≥ ln(1/α)) ≤ α`
/// for i.i.d. pairs (or any whose conditional mean of `s·D′` stays `≤ 0`),
/// with no plug-in of the primary's rate. At `r = 1` it is
/// [`discordant_log_e_one_sided`] with `null = 0`.
///
/// `both` is the number of pairs where both sides had the event. Not
/// computable: `n = 0` (`EmptyArm`); `ratio < 1` or not finite, or counts with
/// `b + c + both > n` (`NonFinite`).
pub fn ratio_log_e_one_sided(
    pairs: &DiscordantPairs,
    both: u64,
    ratio: f64,
    sign: f64,
) -> Result<f64, NotComputable> {
    if pairs.pairs == 0 {
        return Err(NotComputable::EmptyArm);
    }
    let events = pairs.discordant().checked_add(both);
    let counts_ok = pairs.consistent() && events.is_some_and(|e| e <= pairs.pairs);
    if !(counts_ok && ratio.is_finite() && ratio >= 1.0) {
        return Err(NotComputable::NonFinite);
    }
    let s = if sign < 0.0 { -1.0 } else { 1.0 };
    let (c, b, a) = (
        pairs.shadow_only as f64,
        pairs.primary_only as f64,
        both as f64,
    );
    let lambda_max = if s > 0.0 { 1.0 / ratio } else { 1.0 };
    betting_log_e(
        &[(c, s), (b, -s * ratio), (a, s * (1.0 - ratio))],
        lambda_max,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratio_test_at_ratio_one_is_the_risk_difference_test_at_null_zero() {
        let pairs = DiscordantPairs::new(500, 7, 19).unwrap();
        for sign in [1.0, -1.0] {
            let ratio = ratio_log_e_one_sided(&pairs, 4, 1.0, sign).unwrap();
            let rd = discordant_log_e_one_sided(&pairs, sign, 0.0).unwrap();
            assert!((ratio - rd).abs() < 1e-12, "{ratio} vs {rd}");
        }
    }

    #[test]
    fn the_ratio_test_matches_a_direct_evaluation() {
        // Reference: the average over λ_k = λ_max·2^−k (k = 1..20) of
        // Π(1 + λ_k·s·D′), evaluated term by term in Python 3 (math.log1p,
        // a max-shifted log-sum-exp): harm with r = 1.5 on n=100, b=2,
        // c=10, both=1; non-inferiority on n=400, b=12, c=3, both=2.
        let harm = ratio_log_e_one_sided(&DiscordantPairs::new(100, 2, 10).unwrap(), 1, 1.5, 1.0);
        assert!((harm.unwrap() - 0.23567199553247464).abs() < 1e-12);
        let ni = ratio_log_e_one_sided(&DiscordantPairs::new(400, 12, 3).unwrap(), 2, 1.5, -1.0);
        assert!((ni.unwrap() - 2.3570618304834183).abs() < 1e-12);
        // Counts that cannot be, and a ratio below 1.
        let p = DiscordantPairs::new(10, 4, 4).unwrap();
        assert!(ratio_log_e_one_sided(&p, 3, 1.5, 1.0).is_err());
        assert!(ratio_log_e_one_sided(&p, 0, 0.9, 1.0).is_err());
    }

    fn sums(pairs: &[(f64, f64)]) -> PairedSums {
        let mut s = PairedSums::default();
        for &(x, y) in pairs {
            s.record(x, y).unwrap();
        }
        s
    }

    #[test]
    fn absolute_difference_is_the_mean_and_variance_of_the_differences() {
        let p = [(10.0, 12.0), (20.0, 21.0), (30.0, 35.0), (40.0, 40.0)];
        let (est, var) = paired_difference(&sums(&p), Scale::Absolute).unwrap();
        // d = 2, 1, 5, 0: mean 2, sample variance 14/3, over n = 4.
        assert!((est - 2.0).abs() < 1e-12, "{est}");
        assert!((var - 14.0 / 3.0 / 4.0).abs() < 1e-12, "{var}");
    }

    #[test]
    fn relative_difference_uses_the_covariance() {
        let p = [(10.0, 12.0), (20.0, 21.0), (30.0, 35.0), (40.0, 40.0)];
        let (est, var) = paired_difference(&sums(&p), Scale::Relative).unwrap();
        let r = 108.0 / 100.0;
        assert!((est - (r - 1.0)).abs() < 1e-12);
        let e: Vec<f64> = p.iter().map(|(x, y)| y - r * x).collect();
        let ss: f64 = e.iter().map(|v| v * v).sum();
        let want = ss / 3.0 / (4.0 * 25.0 * 25.0);
        assert!((var - want).abs() < 1e-12 * want, "{var} {want}");
    }

    #[test]
    fn edge_cases_are_not_computable() {
        let cfg = MixtureConfig::default();
        let none = PairedSums::default();
        assert_eq!(
            paired_two_sided(&none, Scale::Absolute, &cfg),
            Err(NotComputable::EmptyArm)
        );
        let one = sums(&[(1.0, 2.0)]);
        assert_eq!(
            paired_two_sided(&one, Scale::Absolute, &cfg),
            Err(NotComputable::ZeroVariance)
        );
        // A constant shift of a large value: the sums cancel to rounding noise.
        let shift: Vec<(f64, f64)> = (0..1000)
            .map(|i| (1000.0 + 0.37 * f64::from(i), 1005.0 + 0.37 * f64::from(i)))
            .collect();
        assert_eq!(
            paired_two_sided(&sums(&shift), Scale::Absolute, &cfg),
            Err(NotComputable::ZeroVariance)
        );
        let zero_base = sums(&[(-1.0, 2.0), (1.0, 3.0)]);
        assert_eq!(
            paired_two_sided(&zero_base, Scale::Relative, &cfg),
            Err(NotComputable::ZeroBaselineMean)
        );
        let mut bad = sums(&[(1.0, 2.0), (2.0, 2.0)]);
        assert!(bad.record(f64::NAN, 1.0).is_err());
        assert_eq!(bad.n, 2);
        bad.sum_xx = f64::INFINITY;
        assert_eq!(
            paired_two_sided(&bad, Scale::Absolute, &cfg),
            Err(NotComputable::NonFinite)
        );
    }

    #[test]
    fn sums_merge_like_one_stream() {
        let a = sums(&[(1.0, 2.0), (3.0, 5.0)]);
        let b = sums(&[(4.0, 4.5)]);
        let all = sums(&[(1.0, 2.0), (3.0, 5.0), (4.0, 4.5)]);
        assert_eq!(a.plus(&b), all);
        let mut d = DiscordantPairs::default();
        for (x, y) in [(true, false), (false, true), (true, true), (false, false)] {
            d.record(x, y);
        }
        assert_eq!(d, DiscordantPairs::new(4, 1, 1).unwrap());
        assert_eq!(d.plus(&d), DiscordantPairs::new(8, 2, 2).unwrap());
        assert!(DiscordantPairs::new(3, 2, 2).is_err());
    }

    #[test]
    fn mcnemar_e_value_is_a_mixture_of_likelihood_ratios() {
        // Beta(1,1): E = 2^m · c! b! / (m+1)!; c = 3, b = 1: 16 · 6 / 120 = 0.8.
        let le = mcnemar_log_e(3, 1, 0.5, 1.0);
        assert!((le.exp() - 0.8).abs() < 1e-12, "{}", le.exp());
        assert_eq!(mcnemar_log_e(0, 0, 0.5, 0.5), 0.0);
    }

    #[test]
    fn discordant_cs_contains_the_estimate_and_maps_to_the_risk_difference() {
        let cfg = DiscordantConfig::default();
        let p = DiscordantPairs::new(1000, 20, 45).unwrap();
        let q = discordant_share_cs(&p, &cfg).unwrap();
        assert!(q[0] < 45.0 / 65.0 && 45.0 / 65.0 < q[1], "{q:?}");
        for qb in q {
            let le = mcnemar_log_e(45, 20, qb, cfg.prior);
            assert!((le - ln_inv(cfg.alpha)).abs() < 1e-9, "{le}");
        }
        let est = discordant_two_sided(&p, &cfg).unwrap();
        assert!((est.estimate - 0.025).abs() < 1e-15);
        assert!(est.ci[0] < est.estimate && est.estimate < est.ci[1]);
        let all_shadow = DiscordantPairs::new(50, 0, 10).unwrap();
        assert_eq!(discordant_share_cs(&all_shadow, &cfg).unwrap()[1], 1.0);
        let none = DiscordantPairs::new(50, 0, 0).unwrap();
        assert_eq!(
            discordant_two_sided(&none, &cfg),
            Err(NotComputable::ZeroVariance)
        );
    }

    #[test]
    fn one_sided_betting_test_reads_the_right_direction() {
        // Shadow clearly worse: harm evidence, no non-inferiority evidence.
        let worse = DiscordantPairs::new(5000, 20, 120).unwrap();
        let harm = discordant_log_e_one_sided(&worse, 1.0, 0.0).unwrap();
        let ni = discordant_log_e_one_sided(&worse, -1.0, -0.01).unwrap();
        assert!(harm > ln_inv(0.05), "{harm}");
        assert!(ni < 0.0, "{ni}");
        // Equal rates and many concordant pairs: non-inferior by 1 point.
        let same = DiscordantPairs::new(20_000, 100, 100).unwrap();
        let ni = discordant_log_e_one_sided(&same, -1.0, -0.01).unwrap();
        assert!(ni > ln_inv(0.05), "{ni}");
        assert_eq!(
            discordant_log_e_one_sided(&same, 1.0, 1.0),
            Err(NotComputable::NonFinite)
        );
        let corrupt = DiscordantPairs {
            pairs: 5,
            primary_only: 4,
            shadow_only: 4,
        };
        assert_eq!(
            discordant_log_e_one_sided(&corrupt, 1.0, 0.0),
            Err(NotComputable::NonFinite)
        );
        assert_eq!(
            discordant_two_sided(&corrupt, &DiscordantConfig::default()),
            Err(NotComputable::NonFinite)
        );
    }
}

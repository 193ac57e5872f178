//! `stats::strata`: two arms compared within periods of constant allocation.
//!
//! A canary's share changes at every step, so a cumulative mean gives the
//! canary mostly late requests and the baseline mostly early ones. When the
//! metric itself moves over time (load, time of day, a slow neighbour), that
//! difference of *when* reads as a difference between the arms: Simpson's
//! paradox. Post-stratifying by period removes it: each period's means are
//! compared only with each other, and the periods are weighted by how many
//! units they hold (the "epoch" estimator of Optimizely's Stats Engine).
//!
//! With one period this is exactly the unstratified comparison.
//!
//! Owns: the combined means and their variances. Never: decides periods
//! (the controller knows the weights) or keeps state.

use super::mixture::{difference_of_means, NotComputable, Scale};
use super::sufficient::Moments;

/// One period's baseline and treatment moments.
pub type Stratum = (Moments, Moments);

/// Treatment-vs-baseline difference and its variance on `scale`, combined
/// over `strata`. Periods where either arm has no unit carry no comparison
/// and are left out (a 100 % step has no contemporaneous baseline).
///
/// Means: `μ = Σ w_k μ_k` with `w_k = N_k / Σ N` (`N_k` both arms' units in
/// period k). Variance of a mean: `s² Σ w_k² / n_k`, with `s²` the arm's
/// pooled within-period variance (a period of one or two units has no usable
/// variance of its own, and the pooled one is what the periods share).
pub fn stratified_difference(
    strata: &[Stratum],
    scale: Scale,
) -> Result<(f64, f64), NotComputable> {
    let used = || strata.iter().filter(|(b, t)| b.n > 0 && t.n > 0);
    let total: f64 = used().map(|(b, t)| (b.n + t.n) as f64).sum();
    if total == 0.0 {
        return Err(NotComputable::EmptyArm);
    }
    let side = |pick: fn(&Stratum) -> &Moments| {
        let (mut mean, mut spread, mut pooled, mut units) = (0.0, 0.0, 0.0, 0.0);
        for s in used() {
            let m = pick(s);
            let w = (s.0.n + s.1.n) as f64 / total;
            let n = m.n as f64;
            mean += w * m.mean;
            spread += w * w / n;
            pooled += m.variance.max(0.0) * n;
            units += n;
        }
        (mean, pooled / units * spread)
    };
    let (m_a, vm_a) = side(|s| &s.0);
    let (m_b, vm_b) = side(|s| &s.1);
    difference_of_means(m_a, vm_a, m_b, vm_b, scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::mixture::difference;

    fn m(n: u64, mean: f64, variance: f64) -> Moments {
        Moments { n, mean, variance }
    }

    #[test]
    fn one_period_is_the_plain_comparison() {
        let (b, t) = (m(900, 20.0, 4.0), m(100, 21.0, 5.0));
        for scale in [Scale::Absolute, Scale::Relative] {
            let plain = difference(&b, &t, scale).unwrap();
            let strat = stratified_difference(&[(b, t)], scale).unwrap();
            assert!((plain.0 - strat.0).abs() < 1e-12, "{plain:?} {strat:?}");
            assert!((plain.1 - strat.1).abs() < 1e-12, "{plain:?} {strat:?}");
        }
    }

    #[test]
    fn a_ramp_over_a_metric_that_moves_in_time_shows_no_difference() {
        // Both arms are identical within each period; the metric doubles from
        // the 10 % period to the 50 % period. Pooled, the canary looks 36 %
        // worse; stratified, it is the same.
        let early = (m(900, 20.0, 4.0), m(100, 20.0, 4.0));
        let late = (m(500, 40.0, 16.0), m(500, 40.0, 16.0));
        let pooled = |pick: fn(&Stratum) -> &Moments| {
            let (a, b) = (pick(&early), pick(&late));
            let n = a.n + b.n;
            m(
                n,
                (a.mean * a.n as f64 + b.mean * b.n as f64) / n as f64,
                10.0,
            )
        };
        let naive = difference(&pooled(|s| &s.0), &pooled(|s| &s.1), Scale::Relative).unwrap();
        assert!(naive.0 > 0.3, "{naive:?}");
        let (est, var) = stratified_difference(&[early, late], Scale::Relative).unwrap();
        assert!(est.abs() < 1e-12, "{est}");
        assert!(var > 0.0);
    }

    #[test]
    fn a_period_without_one_arm_is_left_out() {
        let shared = (m(500, 20.0, 4.0), m(500, 22.0, 4.0));
        let canary_only = (m(0, 0.0, 0.0), m(5000, 90.0, 4.0));
        let with = stratified_difference(&[shared, canary_only], Scale::Absolute).unwrap();
        let without = stratified_difference(&[shared], Scale::Absolute).unwrap();
        assert_eq!(with, without);
        assert!(matches!(
            stratified_difference(&[canary_only], Scale::Absolute),
            Err(NotComputable::EmptyArm)
        ));
    }

    #[test]
    fn a_real_difference_survives_stratification() {
        let early = (m(900, 20.0, 4.0), m(100, 24.0, 4.0));
        let late = (m(500, 40.0, 16.0), m(500, 48.0, 16.0));
        let (est, var) = stratified_difference(&[early, late], Scale::Relative).unwrap();
        assert!((est - 0.2).abs() < 1e-9, "{est}");
        assert!(est / var.sqrt() > 5.0, "{est} {var}");
    }
}

//! Seeded Monte Carlo checks of type-I error under continuous peeking.
//!
//! Each test also runs a naive fixed-horizon z-test under the same peeking and
//! requires it to fail (> 30 % false positives), which shows the harness can
//! detect an invalid procedure. Bands: reference rate (STATISTICS.md /
//! `data/stats/montecarlo_bands.json`) ± 3.5 Monte Carlo standard errors of *our*
//! replication count (the reference's own MC error is smaller and folded in), so a
//! correct implementation fails with probability < 1e-3 for any seed, while a
//! wrong one (e.g. naive peeking, or a mis-tuned mixture at 5 %+) is far outside.
//! Larger runs are `#[ignore]`d: `cargo test --release -- --ignored`.

use std::collections::BTreeMap;

use abgate::stats::mixture::{compare, log_e_two_sided, r_star, MixtureConfig, Scale};
use abgate::stats::{
    decide, ArmSnapshot, BinaryStats, ContinuousStats, Direction, ErrorAttribution,
    ExperimentEvidence, ExperimentKind, GuardrailPolicy, Margin, MetricData, MetricSnapshot,
    Policy, PrimaryPolicy, Snapshot, StepFacts, Verdict,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Binomial, Distribution, StandardNormal};
use serde_json::Value;

const BANDS: &str = include_str!("data/stats/montecarlo_bands.json");

fn band(kind: &str, k: u64) -> (f64, [f64; 2]) {
    let all: Value = serde_json::from_str(BANDS).expect("bands parse");
    let b = all["monte_carlo_bands"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["kind"] == kind && b["K"] == k)
        .unwrap_or_else(|| panic!("no band {kind} K={k}"));
    let lo = b["band"][0].as_f64().unwrap();
    let hi = b["band"][1].as_f64().unwrap();
    (b["expect_rate"].as_f64().unwrap(), [lo, hi])
}

fn reference_rate(kind: &str, method: &str) -> f64 {
    let all: Value = serde_json::from_str(BANDS).expect("bands parse");
    all["monte_carlo_bands"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| {
            b["kind"] == kind && b["method"] == method && b.get("p").is_none_or(|p| p == 0.05)
        })
        .and_then(|b| b["expect_rate"].as_f64())
        .unwrap_or_else(|| panic!("no reference {kind} / {method}"))
}

/// Reference rate ± 3.5 MC standard errors for `reps` replications.
fn mc_band(rate: f64, reps: usize) -> [f64; 2] {
    let se = (rate * (1.0 - rate) / reps as f64)
        .sqrt()
        .max(0.5 / reps as f64);
    [(rate - 3.5 * se).max(0.0), rate + 3.5 * se]
}

#[track_caller]
fn assert_in(what: &str, got: f64, band: [f64; 2]) {
    eprintln!(
        "{what}: {:.2}% (band {:.2}%..{:.2}%)",
        100.0 * got,
        100.0 * band[0],
        100.0 * band[1]
    );
    assert!(
        got >= band[0] && got <= band[1],
        "{what}: {got} outside {band:?}"
    );
}

/// Pooled two-proportion z-test, the "naive" fixed-horizon test.
fn naive_pooled_rejects(a: &BinaryStats, b: &BinaryStats) -> bool {
    let (na, nb) = (a.n as f64, b.n as f64);
    let pool = (a.successes + b.successes) as f64 / (na + nb);
    let var = pool * (1.0 - pool) * (1.0 / na + 1.0 / nb);
    var > 0.0 && ((b.mean() - a.mean()) / var.sqrt()).abs() > 1.959_963_984_540_054
}

struct BernoulliRates {
    naive: f64,
    mixture_5000: f64,
    mixture_horizon: f64,
}

/// A/A Bernoulli, p = 0.05, 10 000 per arm, a look every 100 per arm (100 looks).
fn aa_bernoulli(reps: usize, seed: u64) -> BernoulliRates {
    let mut rng = StdRng::seed_from_u64(seed);
    let batch = Binomial::new(100, 0.05).unwrap();
    let cfg_5000 = MixtureConfig::new(0.05, 5000.0).unwrap();
    let cfg_horizon = MixtureConfig::new(0.05, 20_000.0).unwrap();
    let (mut naive, mut m5, mut mh) = (0, 0, 0);
    for _ in 0..reps {
        let (mut a, mut b) = (BinaryStats::default(), BinaryStats::default());
        let (mut hit_naive, mut hit_5, mut hit_h) = (false, false, false);
        for _ in 0..100 {
            a.merge(&BinaryStats {
                n: 100,
                successes: batch.sample(&mut rng),
            });
            b.merge(&BinaryStats {
                n: 100,
                successes: batch.sample(&mut rng),
            });
            hit_naive |= naive_pooled_rejects(&a, &b);
            let (ma, mb) = (a.moments(), b.moments());
            hit_5 |= compare(&ma, &mb, Scale::Absolute, &cfg_5000).is_ok_and(|c| c.p_value <= 0.05);
            hit_h |=
                compare(&ma, &mb, Scale::Absolute, &cfg_horizon).is_ok_and(|c| c.p_value <= 0.05);
        }
        naive += usize::from(hit_naive);
        m5 += usize::from(hit_5);
        mh += usize::from(hit_h);
    }
    let r = reps as f64;
    BernoulliRates {
        naive: naive as f64 / r,
        mixture_5000: m5 as f64 / r,
        mixture_horizon: mh as f64 / r,
    }
}

fn check_bernoulli(reps: usize, seed: u64) {
    let r = aa_bernoulli(reps, seed);
    let kind = "aa_bernoulli_100_looks";
    assert!(
        r.naive > 0.30,
        "naive peeking must exceed 30 %, got {}",
        r.naive
    );
    assert_in(
        "naive z, 100 looks",
        r.naive,
        mc_band(reference_rate(kind, "naive z (any look)"), reps),
    );
    assert!(r.mixture_5000 <= 0.05 && r.mixture_horizon <= 0.05);
    assert_in(
        "mixture N*=5000",
        r.mixture_5000,
        mc_band(reference_rate(kind, "GrowthBook/Eppo CS N*=5000"), reps),
    );
    assert_in(
        "mixture N*=20000",
        r.mixture_horizon,
        mc_band(reference_rate(kind, "GrowthBook/Eppo CS N*=20000"), reps),
    );
}

#[test]
fn aa_bernoulli_100_looks() {
    check_bernoulli(2000, 0xab_6a7e);
}

#[test]
#[ignore = "large simulation (10k reps); run with --release -- --ignored"]
fn aa_bernoulli_100_looks_large() {
    check_bernoulli(10_000, 7);
}

/// A/A Gaussian (σ = 1), a look after every pair up to `pairs`, acting only after
/// `burn_in` pairs. Returns (naive Welch-z rate, mixture rate).
fn aa_gaussian(reps: usize, pairs: usize, burn_in: usize, seed: u64) -> (f64, f64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let cfg = MixtureConfig::default();
    let (mut naive, mut mix) = (0, 0);
    for _ in 0..reps {
        let (mut a, mut b) = (ContinuousStats::default(), ContinuousStats::default());
        let (mut hit_naive, mut hit_mix) = (false, false);
        for t in 1..=pairs {
            a.push(rng.sample(StandardNormal)).unwrap();
            b.push(rng.sample(StandardNormal)).unwrap();
            if t < burn_in {
                continue;
            }
            if let Ok(c) = compare(&a.moments(), &b.moments(), Scale::Absolute, &cfg) {
                hit_naive |= (c.estimate / c.std_error).abs() > 1.959_963_984_540_054;
                hit_mix |= c.p_value <= 0.05;
            }
            if hit_naive && hit_mix {
                break;
            }
        }
        naive += usize::from(hit_naive);
        mix += usize::from(hit_mix);
    }
    (naive as f64 / reps as f64, mix as f64 / reps as f64)
}

#[test]
fn aa_gaussian_every_pair_with_burn_in() {
    let reps = 500;
    let (naive, mix) = aa_gaussian(reps, 2000, 100, 0x6a55);
    eprintln!(
        "naive Welch z after every pair (burn-in 100): {:.2}%",
        100.0 * naive
    );
    assert!(naive > 0.30, "naive peeking must exceed 30 %, got {naive}");
    assert!(mix <= 0.05);
    let reference = reference_rate(
        "aa_gaussian_every_pair_2000",
        "mSPRT estimated variance, burn-in 100 pairs",
    );
    assert_in(
        "mixture, every pair, burn-in 100",
        mix,
        mc_band(reference, reps),
    );
}

#[test]
#[ignore = "large simulation (10k reps x 2000 looks); run with --release -- --ignored"]
fn aa_gaussian_every_pair_large() {
    let reps = 10_000;
    let (naive, mix) = aa_gaussian(reps, 2000, 100, 11);
    assert!(naive > 0.30);
    let reference = reference_rate(
        "aa_gaussian_every_pair_2000",
        "mSPRT estimated variance, burn-in 100 pairs",
    );
    assert_in(
        "mixture, every pair, burn-in 100",
        mix,
        mc_band(reference, reps),
    );
}

/// Gaussian look process: K looks, one unit of information each; mixture tuned
/// to the final look (τ² = r*·Var at K). Returns (naive, mixture) rates.
fn look_process(k: usize, reps: usize, seed: u64) -> (f64, f64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let threshold = 20.0_f64.ln();
    let rs = r_star(0.05);
    let (mut naive, mut mix) = (0, 0);
    for _ in 0..reps {
        let mut s = 0.0_f64;
        let (mut hit_naive, mut hit_mix) = (false, false);
        for look in 1..=k {
            s += rng.sample::<f64, _>(StandardNormal);
            let z = s / (look as f64).sqrt();
            hit_naive |= z.abs() > 1.959_963_984_540_054;
            hit_mix |= log_e_two_sided(z, rs * look as f64 / k as f64) >= threshold;
        }
        naive += usize::from(hit_naive);
        mix += usize::from(hit_mix);
    }
    (naive as f64 / reps as f64, mix as f64 / reps as f64)
}

#[test]
fn gaussian_look_process_matches_reference_bands() {
    for (k, reps) in [(10u64, 10_000usize), (100, 10_000)] {
        let (naive, mix) = look_process(k as usize, reps, 1000 + k);
        let (_, nb) = band("naive_z_peeking_gaussian", k);
        let (_, mb) = band("mixture_rstar_peeking_gaussian", k);
        assert_in(&format!("naive z, K={k}"), naive, nb);
        assert_in(&format!("mixture r*, K={k}"), mix, mb);
    }
    let (naive, _) = look_process(100, 10_000, 5);
    assert!(naive > 0.30);
}

/// The whole engine (observe + decide) on A/A data: neither Promote nor Rollback
/// may fire more often than α, at every look from the first unit on.
#[test]
fn aa_full_decision_rule_rarely_acts() {
    let reps = 300;
    let mut rng = StdRng::seed_from_u64(99);
    let batch = Binomial::new(100, 0.1).unwrap();
    let policy = Policy {
        kind: ExperimentKind::Ab,
        primary: Some(PrimaryPolicy {
            metric: "accepted".into(),
            direction: Direction::Increase,
            scale: Scale::Relative,
            min_effect: 0.0,
            equivalence_margin: None,
        }),
        ..Policy::default()
    };
    let facts = StepFacts {
        step_minimums_met: true,
        budget_exhausted: false,
    };
    let mut acted = 0;
    for _ in 0..reps {
        let mut ev = ExperimentEvidence::new();
        let (mut a, mut b) = (BinaryStats::default(), BinaryStats::default());
        for _ in 0..50 {
            a.merge(&BinaryStats {
                n: 100,
                successes: batch.sample(&mut rng),
            });
            b.merge(&BinaryStats {
                n: 100,
                successes: batch.sample(&mut rng),
            });
            let snap = Snapshot {
                baseline: "a".into(),
                arms: vec![
                    ArmSnapshot {
                        name: "a".into(),
                        weight: 1.0,
                        assigned: a.n,
                    },
                    ArmSnapshot {
                        name: "b".into(),
                        weight: 1.0,
                        assigned: b.n,
                    },
                ],
                metrics: vec![MetricSnapshot {
                    name: "accepted".into(),
                    data: MetricData::Binary(BTreeMap::from([("a".into(), a), ("b".into(), b)])),
                    periods: Vec::new(),
                }],
                srm_monitor: None,
            };
            ev.observe(&policy, &snap).unwrap();
            if matches!(
                decide(&policy, &ev, &facts),
                Verdict::Promote { .. } | Verdict::Rollback { .. }
            ) {
                acted += 1;
                break;
            }
        }
    }
    let rate = acted as f64 / reps as f64;
    assert_in("full decision rule A/A action rate", rate, [0.0, 0.05]);
}

/// Rollback rate of a canary at the harm null under the full decision rule,
/// fed as the controller feeds it when it looks every 10 canary requests from
/// the first one: the attribution (exact count) test may act before the
/// asymptotic burn-in, so this is what checks that acting early is not acting
/// on noise. `rr` is the canary's true error-rate ratio.
fn canary_rollback_rate(rr: f64, reps: usize, looks: usize, seed: u64) -> f64 {
    let mut rng = StdRng::seed_from_u64(seed);
    // 5 % step, 1 % baseline errors, a look per 10 canary (190 baseline) requests
    // (the default `look_every`).
    let (canary_n, base_n, p_base) = (10, 190, 0.01);
    let canary_errors = Binomial::new(canary_n, p_base * rr).unwrap();
    let base_errors = Binomial::new(base_n, p_base).unwrap();
    let margin = 0.10;
    let policy = Policy {
        kind: ExperimentKind::Canary,
        guardrails: vec![GuardrailPolicy {
            metric: "error".into(),
            direction: Direction::Increase,
            margin: Margin::Relative(margin),
        }],
        ..Policy::default()
    };
    let facts = StepFacts {
        step_minimums_met: false,
        budget_exhausted: false,
    };
    let share = canary_n as f64 / (canary_n + base_n) as f64;
    let mut rolled_back = 0;
    for _ in 0..reps {
        let mut ev = ExperimentEvidence::new();
        let mut att = ErrorAttribution::new(1.0 + margin).unwrap();
        for look in 1..=looks as u64 {
            att.observe_period(
                share,
                canary_errors.sample(&mut rng),
                base_errors.sample(&mut rng),
            )
            .unwrap();
            let snap = Snapshot {
                baseline: "stable".into(),
                arms: vec![
                    ArmSnapshot {
                        name: "stable".into(),
                        weight: 95.0,
                        assigned: look * base_n,
                    },
                    ArmSnapshot {
                        name: "canary".into(),
                        weight: 5.0,
                        assigned: look * canary_n,
                    },
                ],
                metrics: vec![MetricSnapshot {
                    name: "error".into(),
                    data: MetricData::Events(BTreeMap::from([("canary".into(), att.clone())])),
                    periods: Vec::new(),
                }],
                srm_monitor: None,
            };
            ev.observe(&policy, &snap).unwrap();
            if matches!(decide(&policy, &ev, &facts), Verdict::Rollback { .. }) {
                rolled_back += 1;
                break;
            }
        }
    }
    rolled_back as f64 / reps as f64
}

/// A healthy canary (same error rate) and one exactly at the tolerated rate
/// ratio (1 + margin, the worst case of the harm null) are rolled back at most
/// α = 5 % of the time over 500 looks (5,000 canary requests), although the
/// exact test may act from the first look; a 10× canary is caught, and within
/// the first 100 canary requests in most runs.
#[test]
fn canary_looks_every_10_requests_roll_back_a_healthy_canary_rarely() {
    let healthy = canary_rollback_rate(1.0, 300, 500, 41);
    assert_in("healthy canary rollback rate", healthy, [0.0, 0.05]);
    let at_margin = canary_rollback_rate(1.1, 300, 500, 42);
    assert_in("canary at the margin rollback rate", at_margin, [0.0, 0.05]);
    let bad_early = canary_rollback_rate(10.0, 200, 10, 43);
    assert!(
        bad_early > 0.5,
        "a 10x canary is rolled back within 100 canary requests in {bad_early}"
    );
}

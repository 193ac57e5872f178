//! Paired (shadow vs primary) tests: reference vectors computed from raw pairs
//! by an independent Python implementation (`data/stats/paired_vectors.py`, see
//! `data/stats/PROVENANCE.md`), and seeded Monte Carlo checks of their
//! guarantees under peeking after every 10 pairs.

use abgate::stats::mixture::{compare, MixtureConfig, NotComputable, Scale};
use abgate::stats::paired::{
    discordant_log_e_one_sided, discordant_share_cs, discordant_two_sided, paired_log_e_one_sided,
    paired_two_sided, DiscordantConfig, DiscordantPairs, PairedSums,
};
use abgate::stats::ContinuousStats;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use serde_json::Value;

const VECTORS: &str = include_str!("data/stats/paired_vectors.json");

fn cases(kind: &str) -> Vec<Value> {
    let all: Value = serde_json::from_str(VECTORS).expect("vector file parses");
    let v: Vec<Value> = all["cases"]
        .as_array()
        .expect("cases array")
        .iter()
        .filter(|v| v["kind"] == kind)
        .cloned()
        .collect();
    assert!(v.len() >= 5, "too few vectors of kind {kind}");
    v
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Relative tolerance, with an absolute floor for values that are (nearly) 0.
#[track_caller]
fn close(got: f64, want: f64, rel_tol: f64, what: &str) {
    let allowed = rel_tol * want.abs() + 1e-12;
    assert!(
        (got - want).abs() <= allowed,
        "{what}: got {got:e}, want {want:e} (rel tol {rel_tol:e})"
    );
}

fn not_computable(v: &Value) -> Option<NotComputable> {
    v.get("not_computable")
        .map(|nc| serde_json::from_value(nc.clone()).expect("a NotComputable name"))
}

#[test]
fn continuous_pairs_match_reference_vectors() {
    for case in cases("paired_continuous") {
        let (name, i, tol) = (&case["name"], &case["inputs"], f(&case["rel_tol"]));
        let mut sums = PairedSums::default();
        for p in i["pairs"].as_array().unwrap() {
            sums.record(f(&p[0]), f(&p[1])).unwrap();
        }
        let cfg = MixtureConfig::new(f(&i["alpha"]), f(&i["design_samples"])).unwrap();
        for (key, scale) in [("absolute", Scale::Absolute), ("relative", Scale::Relative)] {
            let e = &case["expect"][key];
            let what = |field: &str| format!("{name} {key} {field}");
            let got = paired_two_sided(&sums, scale, &cfg);
            if let Some(nc) = not_computable(e) {
                assert_eq!(got, Err(nc), "{}", what("not computable"));
                for margin in i["margins"][key].as_array().unwrap() {
                    let one = paired_log_e_one_sided(&sums, scale, f(&margin[0]), 0.0, &cfg);
                    assert_eq!(one, Err(nc), "{}", what("one-sided"));
                }
                continue;
            }
            let got = got.unwrap_or_else(|nc| panic!("{}: {nc:?}", what("computable")));
            assert_eq!(got.scale, scale);
            assert_eq!(got.n_total, e["n_total"].as_u64().unwrap(), "{}", what("n"));
            close(got.estimate, f(&e["estimate"]), tol, &what("estimate"));
            close(got.std_error, f(&e["std_error"]), tol, &what("std error"));
            close(got.ci[0], f(&e["ci"][0]), tol, &what("ci lo"));
            close(got.ci[1], f(&e["ci"][1]), tol, &what("ci hi"));
            close(got.p_value, f(&e["p_value"]), tol, &what("p"));
            close(got.log_e, f(&e["log_e"]), tol, &what("log e"));
            for one in e["one_sided"].as_array().unwrap() {
                let (sign, null) = (f(&one["sign"]), f(&one["null"]));
                let le = paired_log_e_one_sided(&sums, scale, sign, null, &cfg).unwrap();
                close(
                    le,
                    f(&one["log_e"]),
                    tol,
                    &what(&format!("one-sided {sign} {null}")),
                );
            }
        }
    }
}

fn bits(v: &Value) -> Vec<bool> {
    v.as_str().unwrap().bytes().map(|b| b == b'1').collect()
}

#[test]
fn discordant_pairs_match_reference_vectors() {
    for case in cases("paired_discordant") {
        let (name, i, e, tol) = (
            &case["name"],
            &case["inputs"],
            &case["expect"],
            f(&case["rel_tol"]),
        );
        let mut pairs = DiscordantPairs::default();
        for (x, y) in bits(&i["x"]).into_iter().zip(bits(&i["y"])) {
            pairs.record(x, y);
        }
        assert_eq!(pairs.pairs, e["pairs"].as_u64().unwrap(), "{name} n");
        assert_eq!(pairs.primary_only, e["primary_only"].as_u64().unwrap());
        assert_eq!(pairs.shadow_only, e["shadow_only"].as_u64().unwrap());
        let cfg = DiscordantConfig::new(f(&i["alpha"]), f(&i["prior"])).unwrap();
        let two = &e["two_sided"];
        let got = discordant_two_sided(&pairs, &cfg);
        if let Some(nc) = not_computable(two) {
            assert_eq!(got, Err(nc), "{name} not computable");
        } else {
            let got = got.unwrap_or_else(|nc| panic!("{name}: {nc:?}"));
            let what = |field: &str| format!("{name} {field}");
            assert_eq!(got.scale, Scale::Absolute);
            assert_eq!(got.n_total, two["n_total"].as_u64().unwrap());
            close(got.estimate, f(&two["estimate"]), tol, &what("estimate"));
            close(got.std_error, f(&two["std_error"]), tol, &what("std error"));
            close(got.ci[0], f(&two["ci"][0]), tol, &what("ci lo"));
            close(got.ci[1], f(&two["ci"][1]), tol, &what("ci hi"));
            close(got.p_value, f(&two["p_value"]), tol, &what("p"));
            close(got.log_e, f(&two["log_e"]), tol, &what("log e"));
            let q = discordant_share_cs(&pairs, &cfg).unwrap();
            close(q[0], f(&two["q_cs"][0]), tol, &what("q lo"));
            close(q[1], f(&two["q_cs"][1]), tol, &what("q hi"));
        }
        for one in e["one_sided"].as_array().unwrap() {
            let (sign, null) = (f(&one["sign"]), f(&one["null"]));
            let got = discordant_log_e_one_sided(&pairs, sign, null);
            match not_computable(one) {
                Some(nc) => assert_eq!(got, Err(nc), "{name} one-sided {sign} {null}"),
                None => close(
                    got.unwrap(),
                    f(&one["log_e"]),
                    tol,
                    &format!("{name} one-sided {sign} {null}"),
                ),
            }
        }
    }
}

const RUNS: u32 = 300;
const MAX_PAIRS: u32 = 2000;
const LOOK_EVERY: u32 = 10;
const ALPHA: f64 = 0.05;

/// α plus three binomial standard errors of `RUNS` runs: a valid test exceeds
/// it with probability ~0.1 % for any seed (and the seeds are fixed).
fn type_one_ceiling() -> f64 {
    ALPHA + 3.0 * (ALPHA * (1.0 - ALPHA) / f64::from(RUNS)).sqrt()
}

/// One latency-like pair: a per-request component both arms share (prompt
/// length, load), plus each arm's own noise; the shadow is `shift` ms slower.
fn latency_pair(rng: &mut StdRng, shift: f64) -> (f64, f64) {
    let shared: f64 = rng.sample(StandardNormal);
    let (ex, ey): (f64, f64) = (rng.sample(StandardNormal), rng.sample(StandardNormal));
    let base = 300.0 + 60.0 * shared;
    (base + 10.0 * ex, base + shift + 10.0 * ey)
}

/// Fraction of runs whose continuous paired test (two-sided, or one-sided when
/// `one_sided = Some((sign, null))`) ever rejects at α.
fn continuous_rejection_rate(seed: u64, shift: f64, one_sided: Option<(f64, f64)>) -> f64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let cfg = MixtureConfig::new(ALPHA, f64::from(MAX_PAIRS)).unwrap();
    let threshold = (1.0 / ALPHA).ln();
    let mut rejected = 0;
    for _ in 0..RUNS {
        let mut sums = PairedSums::default();
        for i in 1..=MAX_PAIRS {
            let (x, y) = latency_pair(&mut rng, shift);
            sums.record(x, y).unwrap();
            if i % LOOK_EVERY != 0 {
                continue;
            }
            let log_e = match one_sided {
                None => paired_two_sided(&sums, Scale::Absolute, &cfg).map(|e| e.log_e),
                Some((sign, null)) => {
                    paired_log_e_one_sided(&sums, Scale::Absolute, sign, null, &cfg)
                }
            };
            if log_e.is_ok_and(|le| le >= threshold) {
                rejected += 1;
                break;
            }
        }
    }
    f64::from(rejected) / f64::from(RUNS)
}

#[test]
fn continuous_paired_test_keeps_alpha_under_peeking_and_finds_a_real_shift() {
    let aa = continuous_rejection_rate(17, 0.0, None);
    assert!(aa <= type_one_ceiling(), "A/A rejection rate {aa}");
    // σ_d = 10·√2 ≈ 14.1 ms; a 1.5 ms shift is 0.106 σ_d, z ≈ 4.7 at 2000 pairs.
    let power = continuous_rejection_rate(18, 1.5, None);
    assert!(power >= 0.8, "power {power}");
}

#[test]
fn continuous_margin_tests_keep_alpha_on_the_boundary_of_their_null() {
    // Harm beyond 1 ms (H0: D ≤ 1) with the shadow exactly 1 ms slower.
    let harm = continuous_rejection_rate(19, 1.0, Some((1.0, 1.0)));
    assert!(harm <= type_one_ceiling(), "harm at D = margin: {harm}");
    // Non-inferiority by 1 ms (H0: D ≥ 1) with the shadow exactly 1 ms slower.
    let ni = continuous_rejection_rate(20, 1.0, Some((-1.0, -1.0)));
    assert!(ni <= type_one_ceiling(), "NI at D = margin: {ni}");
    // Equal latencies: non-inferior by 2 ms (0.14 σ_d) in most runs.
    let ni_power = continuous_rejection_rate(23, 0.0, Some((-1.0, -2.0)));
    assert!(ni_power >= 0.8, "NI power: {ni_power}");
}

/// Fraction of runs whose discordant test (two-sided McNemar, or the one-sided
/// betting test when `one_sided = Some((sign, null))`) ever rejects at α.
/// Each pair: primary-only with probability `p10`, shadow-only with `p01`,
/// both with 0.01, neither otherwise.
fn discordant_rejection_rate(seed: u64, p10: f64, p01: f64, one_sided: Option<(f64, f64)>) -> f64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let cfg = DiscordantConfig::default();
    let threshold = (1.0 / ALPHA).ln();
    let mut rejected = 0;
    for _ in 0..RUNS {
        let mut pairs = DiscordantPairs::default();
        for i in 1..=MAX_PAIRS {
            let u: f64 = rng.random();
            let (x, y) = if u < p10 {
                (true, false)
            } else if u < p10 + p01 {
                (false, true)
            } else if u < p10 + p01 + 0.01 {
                (true, true)
            } else {
                (false, false)
            };
            pairs.record(x, y);
            if i % LOOK_EVERY != 0 {
                continue;
            }
            let log_e = match one_sided {
                None => discordant_two_sided(&pairs, &cfg).map(|e| e.log_e),
                Some((sign, null)) => discordant_log_e_one_sided(&pairs, sign, null),
            };
            if log_e.is_ok_and(|le| le >= threshold) {
                rejected += 1;
                break;
            }
        }
    }
    f64::from(rejected) / f64::from(RUNS)
}

#[test]
fn discordant_test_keeps_alpha_under_peeking_and_finds_a_real_difference() {
    let aa = discordant_rejection_rate(21, 0.02, 0.02, None);
    assert!(aa <= type_one_ceiling(), "A/A rejection rate {aa}");
    let power = discordant_rejection_rate(22, 0.01, 0.03, None);
    assert!(power >= 0.8, "power {power}");
}

#[test]
fn discordant_margin_tests_keep_alpha_on_the_boundary_of_their_null() {
    // Harm, H0: RD ≤ 0, at RD = 0.
    let harm = discordant_rejection_rate(31, 0.02, 0.02, Some((1.0, 0.0)));
    assert!(harm <= type_one_ceiling(), "harm at RD = 0: {harm}");
    // Non-inferiority by 1 point, H0: RD ≥ 0.01, at RD = 0.01 exactly.
    let ni = discordant_rejection_rate(32, 0.01, 0.02, Some((-1.0, -0.01)));
    assert!(ni <= type_one_ceiling(), "NI at RD = margin: {ni}");
    // Equal rates: non-inferiority by 3 points is shown in most runs within
    // 2000 pairs (by 1 point it would take ~10× more: the growth rate of the
    // e-value is ~margin²/(2·Var D) per pair).
    let ni_power = discordant_rejection_rate(33, 0.02, 0.02, Some((-1.0, -0.03)));
    assert!(ni_power >= 0.8, "NI power at RD = 0: {ni_power}");
    // A shadow 3 points worse is shown harmful in most runs.
    let harm_power = discordant_rejection_rate(34, 0.01, 0.04, Some((1.0, 0.0)));
    assert!(harm_power >= 0.8, "harm power: {harm_power}");
}

#[test]
fn pairing_beats_independent_samples_on_correlated_pairs() {
    let mut rng = StdRng::seed_from_u64(41);
    let (mut sums, mut xs, mut ys) = (
        PairedSums::default(),
        ContinuousStats::default(),
        ContinuousStats::default(),
    );
    for _ in 0..MAX_PAIRS {
        let (x, y) = latency_pair(&mut rng, 2.0);
        sums.record(x, y).unwrap();
        xs.push(x).unwrap();
        ys.push(y).unwrap();
    }
    let cfg = MixtureConfig::new(ALPHA, f64::from(2 * MAX_PAIRS)).unwrap();
    let paired = paired_two_sided(&sums, Scale::Absolute, &cfg).unwrap();
    let two_sample = compare(&xs.moments(), &ys.moments(), Scale::Absolute, &cfg).unwrap();
    let width = |ci: [f64; 2]| ci[1] - ci[0];
    // Shared sd 60 ms, own noise 10 ms: the paired standard error is
    // √(200/(2·3700)) ≈ 0.16 of the two-sample one.
    assert!(
        width(paired.ci) < 0.25 * width(two_sample.ci),
        "paired {:?} vs two-sample {:?}",
        paired.ci,
        two_sample.ci
    );
    assert!(
        paired.ci[0] > 0.0,
        "the 2 ms shift is found: {:?}",
        paired.ci
    );
    assert!(
        two_sample.ci[0] < 0.0,
        "and missed unpaired: {:?}",
        two_sample.ci
    );
}

//! `stats::drift` by seeded Monte Carlo: the detector's stated guarantees
//! (average run length to a false alarm ≥ A; P(false alarm within m looks)
//! ≤ m/A) hold on an exactly known null, a realistic unchanged model raises
//! no alarm over a long run with the defaults, and the drift of the
//! integration test (1% → 4% errors at 400 req/s) is caught within the bound
//! that test states. Here rather than beside the module because `src/stats`
//! names no random number generator.
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Binomial, Distribution, LogNormal};

use abgate::stats::drift::{
    DriftConfig, DriftKind, DriftSums, DriftTest, Watched, DEFAULT_MIN_BATCH,
    DEFAULT_REFERENCE_ERROR,
};

fn rate_cfg(threshold: f64, tolerance: f64) -> DriftConfig {
    DriftConfig {
        kind: DriftKind::Rate,
        watched: Watched::Increase,
        tolerance,
        reference_error: DEFAULT_REFERENCE_ERROR,
        threshold,
        min_batch: DEFAULT_MIN_BATCH,
    }
}

fn errors(rng: &mut StdRng, n: u64, p: f64) -> DriftSums {
    let k = Binomial::new(n, p).unwrap().sample(rng) as f64;
    DriftSums {
        n,
        sum: k,
        sum_sq: k,
    }
}

/// Looks until the first alarm, at most `cap`; `None` without one.
fn run_length(t: &mut DriftTest, cap: u64, mut batch: impl FnMut() -> DriftSums) -> Option<u64> {
    (1..=cap).find(|_| t.observe(batch()).is_some())
}

#[test]
fn on_an_exact_null_the_run_length_and_early_alarms_keep_their_bounds() {
    // A reference of 10^7 makes the null the true rate (tolerance 0): the
    // bounds are then the detector's own, with no slack from the reference.
    let (a, runs) = (50.0, 300);
    let mut rng = StdRng::seed_from_u64(2026);
    let mut lengths = Vec::new();
    let mut early = 0;
    for _ in 0..runs {
        let reference = errors(&mut rng, 10_000_000, 0.02);
        let mut t = DriftTest::new(rate_cfg(a, 0.0), reference).unwrap();
        // Capped at 40·A: a censored run length only lowers the mean.
        let len = run_length(&mut t, 2000, || errors(&mut rng, 100, 0.02)).unwrap_or(2000);
        if len <= 10 {
            early += 1;
        }
        lengths.push(len as f64);
    }
    let mean = lengths.iter().sum::<f64>() / runs as f64;
    assert!(mean >= a, "mean run length {mean} < A = {a}");
    // P(alarm within 10 looks) ≤ 10/A = 0.2: at most 60 of 300, plus 3 sd.
    assert!(
        early <= 60 + 21,
        "{early} of {runs} alarmed within 10 looks"
    );
    eprintln!("exact null: mean run length {mean:.0} looks (A = {a}), {early}/{runs} within 10");
}

#[test]
fn a_mean_on_lognormal_latency_keeps_its_run_length_bound() {
    // The mean test is asymptotic: check it where latency is skewed
    // (lognormal, σ = 0.5) and batches are the smallest it pools (30).
    let (a, runs) = (50.0, 150);
    let mut rng = StdRng::seed_from_u64(7);
    let d = LogNormal::new(20f64.ln(), 0.5).unwrap();
    let draw = |rng: &mut StdRng, n: u64| {
        let mut s = DriftSums::default();
        for _ in 0..n {
            let x: f64 = d.sample(rng);
            s.n += 1;
            s.sum += x;
            s.sum_sq += x * x;
        }
        s
    };
    let mut lengths = Vec::new();
    for _ in 0..runs {
        let reference = draw(&mut rng, 30_000);
        let cfg = DriftConfig {
            kind: DriftKind::Mean,
            tolerance: 0.0,
            ..rate_cfg(a, 0.0)
        };
        let mut t = DriftTest::new(cfg, reference).unwrap();
        let len = run_length(&mut t, 1000, || draw(&mut rng, 30)).unwrap_or(1000);
        lengths.push(len as f64);
    }
    let mean = lengths.iter().sum::<f64>() / runs as f64;
    assert!(mean >= a, "mean run length {mean} < A = {a}");
    eprintln!("lognormal mean: mean run length {mean:.0} looks (A = {a})");
}

/// The defaults on a realistic model: an hour's reference at 20 req/s
/// (72,000 requests, 1% errors), one look a second, a month's ARL.
fn defaults(rng: &mut StdRng) -> DriftTest {
    let a = 30.0 * 24.0 * 3600.0;
    DriftTest::new(rate_cfg(a, 0.1), errors(rng, 72_000, 0.01)).unwrap()
}

#[test]
fn an_unchanged_model_raises_no_alarm_over_a_long_watch() {
    // 100 watches of 20,000 looks each (5.5 hours at one look a second).
    let mut rng = StdRng::seed_from_u64(99);
    let mut alarms = 0;
    for _ in 0..100 {
        let mut t = defaults(&mut rng);
        if run_length(&mut t, 20_000, || errors(&mut rng, 20, 0.01)).is_some() {
            alarms += 1;
        }
    }
    assert_eq!(alarms, 0, "{alarms} false alarms in 100 long watches");
}

#[test]
fn the_integration_tests_drift_is_caught_within_its_stated_bound() {
    // As `drift_watch`: a 4 s reference at 400 req/s (1,600 requests at
    // 1%), looks of one second (400 requests), A = 1 day of looks; then 4%.
    let mut rng = StdRng::seed_from_u64(5);
    let mut delays = Vec::new();
    for _ in 0..200 {
        let reference = errors(&mut rng, 1600, 0.01);
        let mut t = DriftTest::new(rate_cfg(86_400.0, 0.1), reference).unwrap();
        // A few looks before the change, as in the test.
        for _ in 0..3 {
            if t.observe(errors(&mut rng, 400, 0.01)).is_some() {
                panic!("a false alarm before the change");
            }
        }
        let looks = run_length(&mut t, 100, || errors(&mut rng, 400, 0.04)).unwrap_or(100);
        delays.push(looks * 400);
    }
    delays.sort_unstable();
    let (median, p99) = (delays[100], delays[197]);
    eprintln!("1% -> 4%: requests to detection, median {median}, p99 {p99}");
    assert!(p99 <= 6000, "p99 detection after {p99} requests");
}

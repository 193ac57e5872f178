//! `stats::shadow_gate` on simulated pairs: a shadow step's gate catches a
//! slower or more error-prone candidate within a few hundred pairs, lets an
//! equal one advance, leaves feedback guardrails to the live steps, and
//! (seeded Monte Carlo) rarely rolls back equal arms however often it looks.
//! Here rather than beside the module because `src/stats` is deterministic
//! and names no random number generator.
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal};

use abgate::stats::shadow_gate::look;
use abgate::stats::{
    Direction, DiscordantPairs, GuardrailPolicy, GuardrailStatus, Margin, PairedData, PairedSums,
    Policy, ShadowEvidence, ShadowFacts, ShadowLook, ShadowVerdict,
};

fn policy() -> Policy {
    Policy {
        guardrails: vec![
            GuardrailPolicy {
                metric: "error".into(),
                direction: Direction::Increase,
                margin: Margin::Absolute(0.02),
            },
            GuardrailPolicy {
                metric: "latency_ms".into(),
                direction: Direction::Increase,
                margin: Margin::Relative(0.10),
            },
            GuardrailPolicy {
                metric: "accepted".into(),
                direction: Direction::Decrease,
                margin: Margin::Absolute(0.05),
            },
        ],
        ..Policy::default()
    }
}

/// Pairs of a request served by the primary and copied to a shadow
/// `slow`× slower with error rates `pe`/`se`, looked at every 100 pairs
/// until a verdict other than `continue` (or `max` pairs).
fn run(seed: u64, slow: f64, pe: f64, se: f64, max: u64) -> (ShadowVerdict, u64, ShadowLook) {
    let p = policy();
    let mut rng = StdRng::seed_from_u64(seed);
    let request = LogNormal::new(20f64.ln(), 0.5).unwrap();
    let noise = LogNormal::new(0.0, 0.1).unwrap();
    let (mut lat, mut err) = (PairedSums::default(), DiscordantPairs::default());
    let mut both = 0;
    let mut ev = ShadowEvidence::default();
    let mut last = None;
    for n in 1..=max {
        // The request's own difficulty is shared by both sides.
        let base: f64 = request.sample(&mut rng);
        let x = base * noise.sample(&mut rng);
        let y = base * slow * noise.sample(&mut rng);
        lat.record(x, y).unwrap();
        let (ex, ey) = (rng.random::<f64>() < pe, rng.random::<f64>() < se);
        err.record(ex, ey);
        both += u64::from(ex && ey);
        if n % 100 == 0 {
            let l = look(
                &p,
                &mut ev,
                n,
                |m| match m {
                    "latency_ms" => Some(PairedData::Continuous(lat)),
                    "error" => Some(PairedData::Events(err, both)),
                    _ => None,
                },
                ShadowFacts {
                    minimums_met: n >= 500,
                    budget_exhausted: false,
                },
            );
            if l.verdict != ShadowVerdict::Continue {
                return (l.verdict, n, l);
            }
            last = Some(l);
        }
    }
    (ShadowVerdict::Continue, max, last.unwrap())
}

#[test]
fn a_shadow_40_percent_slower_is_rolled_back_within_a_few_hundred_pairs() {
    let (v, n, l) = run(1, 1.4, 0.01, 0.01, 5000);
    assert_eq!(v, ShadowVerdict::Rollback, "{}", l.explain);
    assert!(n <= 300, "caught after {n} pairs");
    let lat = l
        .guardrails
        .iter()
        .find(|g| g.metric == "latency_ms")
        .unwrap();
    assert_eq!(lat.status, GuardrailStatus::Harm);
    let est = lat.estimate.unwrap();
    assert!(est.ci[0] < 0.4 && 0.4 < est.ci[1], "{:?}", est.ci);
}

#[test]
fn an_equal_shadow_advances_and_a_feedback_guardrail_waits_for_the_live_steps() {
    let (v, n, l) = run(2, 1.0, 0.01, 0.01, 20_000);
    assert_eq!(v, ShadowVerdict::Advance, "{}", l.explain);
    assert!(n >= 500, "the minimums hold it until 500 pairs");
    let accepted = l
        .guardrails
        .iter()
        .find(|g| g.metric == "accepted")
        .unwrap();
    assert_eq!(accepted.status, GuardrailStatus::LiveOnly);
}

#[test]
fn no_errors_on_either_side_is_non_inferior_under_an_absolute_margin() {
    let (v, _, l) = run(4, 1.0, 0.0, 0.0, 20_000);
    assert_eq!(v, ShadowVerdict::Advance, "{}", l.explain);
}

#[test]
fn a_shadow_with_five_times_the_errors_is_rolled_back() {
    let (v, _, l) = run(3, 1.0, 0.01, 0.05, 20_000);
    assert_eq!(v, ShadowVerdict::Rollback, "{}", l.explain);
    let e = l.guardrails.iter().find(|g| g.metric == "error").unwrap();
    assert_eq!(e.status, GuardrailStatus::Harm);
}

#[test]
fn equal_arms_rarely_roll_back_however_often_they_are_looked_at() {
    // Seeded Monte Carlo: 200 runs of 2,000 pairs of equal arms, a look
    // every 100 pairs. The harm tests are at α = 0.05 in total, so
    // rollbacks must stay near or below 5% of runs (binomial sd 1.5%).
    let rollbacks = (0..200)
        .filter(|s| run(1000 + s, 1.0, 0.02, 0.02, 2_000).0 == ShadowVerdict::Rollback)
        .count();
    assert!(rollbacks <= 16, "{rollbacks}/200 false rollbacks");
}

//! One full verdict (observe a look + decide) for an experiment with 4 arms ×
//! 5 metrics: binary primary, continuous reward, two continuous guardrails and an
//! error-attribution guardrail. Target: < 20 µs.

use std::collections::BTreeMap;
use std::hint::black_box;

use abgate::stats::{
    decide, ArmSnapshot, BinaryStats, ContinuousStats, Direction, ErrorAttribution,
    ExperimentEvidence, ExperimentKind, GuardrailPolicy, Margin, MetricData, MetricSnapshot,
    Policy, PrimaryPolicy, Scale, Snapshot, StepFacts,
};
use criterion::{criterion_group, criterion_main, Criterion};

const ARMS: [&str; 4] = ["control", "b", "c", "d"];

fn setup() -> (Policy, Snapshot) {
    let policy = Policy {
        kind: ExperimentKind::Ab,
        primary: Some(PrimaryPolicy {
            metric: "accepted".into(),
            direction: Direction::Increase,
            scale: Scale::Relative,
            min_effect: 0.0,
            equivalence_margin: Some(0.02),
        }),
        guardrails: vec![
            GuardrailPolicy {
                metric: "latency_ms".into(),
                direction: Direction::Increase,
                margin: Margin::Relative(0.05),
            },
            GuardrailPolicy {
                metric: "cost".into(),
                direction: Direction::Increase,
                margin: Margin::Absolute(0.001),
            },
            GuardrailPolicy {
                metric: "errors".into(),
                direction: Direction::Increase,
                margin: Margin::Relative(0.1),
            },
        ],
        ..Policy::default()
    };
    let n = 50_000u64;
    let arms = ARMS
        .iter()
        .map(|a| ArmSnapshot {
            name: a.to_string(),
            weight: 0.25,
            assigned: n,
        })
        .collect();
    let per_arm = |f: &dyn Fn(usize) -> ContinuousStats| -> BTreeMap<String, ContinuousStats> {
        ARMS.iter()
            .enumerate()
            .map(|(i, a)| (a.to_string(), f(i)))
            .collect()
    };
    let cont = |mean: f64, var: f64, step: f64| {
        per_arm(&|i| ContinuousStats::from_moments(n, mean + step * i as f64, var).unwrap())
    };
    let accepted = ARMS
        .iter()
        .enumerate()
        .map(|(i, a)| {
            (
                a.to_string(),
                BinaryStats::new(n, 5000 + 60 * i as u64).unwrap(),
            )
        })
        .collect();
    let errors = ARMS[1..]
        .iter()
        .map(|a| {
            let mut att = ErrorAttribution::new(1.0).unwrap();
            att.observe_period(0.5, 510, 500).unwrap();
            (a.to_string(), att)
        })
        .collect();
    let metrics = vec![
        MetricSnapshot {
            name: "accepted".into(),
            data: MetricData::Binary(accepted),
            periods: Vec::new(),
        },
        MetricSnapshot {
            name: "reward".into(),
            data: MetricData::Continuous(cont(1.0, 4.0, 0.01)),
            periods: Vec::new(),
        },
        MetricSnapshot {
            name: "latency_ms".into(),
            data: MetricData::Continuous(cont(120.0, 900.0, 0.2)),
            periods: Vec::new(),
        },
        MetricSnapshot {
            name: "cost".into(),
            data: MetricData::Continuous(cont(0.01, 1e-4, 0.0)),
            periods: Vec::new(),
        },
        MetricSnapshot {
            name: "errors".into(),
            data: MetricData::Events(errors),
            periods: Vec::new(),
        },
    ];
    let snap = Snapshot {
        baseline: "control".into(),
        arms,
        metrics,
        srm_monitor: None,
    };
    (policy, snap)
}

fn bench(c: &mut Criterion) {
    let (policy, snap) = setup();
    let facts = StepFacts {
        step_minimums_met: true,
        budget_exhausted: false,
    };
    let mut ev = ExperimentEvidence::new();
    ev.observe(&policy, &snap).expect("valid look");
    c.bench_function("verdict_4arms_5metrics", |b| {
        b.iter(|| {
            ev.observe(black_box(&policy), black_box(&snap))
                .expect("valid look");
            black_box(decide(&policy, &ev, &facts))
        })
    });
    c.bench_function("decide_only_4arms_5metrics", |b| {
        b.iter(|| black_box(decide(black_box(&policy), black_box(&ev), &facts)))
    });
    c.bench_function("attribution_observe_period", |b| {
        let mut att = ErrorAttribution::new(1.0).expect("valid");
        b.iter(|| att.observe_period(black_box(0.1), black_box(3), black_box(20)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

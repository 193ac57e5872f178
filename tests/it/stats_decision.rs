//! Decision-rule table tests and the offline `analyze_json` contract.

use std::collections::BTreeMap;

use abgate::stats::{
    analyze_json, decide, render_table, AnalyzeError, ArmSnapshot, BinaryStats, ContinuousStats,
    Direction, ErrorAttribution, ExperimentEvidence, ExperimentKind, GuardrailPolicy, Margin,
    MetricData, MetricSnapshot, Policy, PrimaryPolicy, Snapshot, StepFacts, TestKind, Verdict,
};

const GO: StepFacts = StepFacts {
    step_minimums_met: true,
    budget_exhausted: false,
};

fn arms(list: &[(&str, f64, u64)]) -> Vec<ArmSnapshot> {
    list.iter()
        .map(|(n, w, a)| ArmSnapshot {
            name: n.to_string(),
            weight: *w,
            assigned: *a,
        })
        .collect()
}

fn binary(name: &str, list: &[(&str, u64, u64)]) -> MetricSnapshot {
    MetricSnapshot {
        name: name.into(),
        data: MetricData::Binary(
            list.iter()
                .map(|(a, n, s)| (a.to_string(), BinaryStats::new(*n, *s).unwrap()))
                .collect(),
        ),
        periods: Vec::new(),
    }
}

fn continuous(name: &str, list: &[(&str, u64, f64, f64)]) -> MetricSnapshot {
    MetricSnapshot {
        name: name.into(),
        data: MetricData::Continuous(
            list.iter()
                .map(|(a, n, m, v)| {
                    (
                        a.to_string(),
                        ContinuousStats::from_moments(*n, *m, *v).unwrap(),
                    )
                })
                .collect(),
        ),
        periods: Vec::new(),
    }
}

fn events(name: &str, arm: &str, share: f64, canary: u64, baseline: u64) -> MetricSnapshot {
    let mut att = ErrorAttribution::new(1.0).unwrap();
    att.observe_period(share, canary, baseline).unwrap();
    MetricSnapshot {
        name: name.into(),
        data: MetricData::Events(BTreeMap::from([(arm.to_string(), att)])),
        periods: Vec::new(),
    }
}

fn ab_policy() -> Policy {
    Policy {
        kind: ExperimentKind::Ab,
        primary: Some(PrimaryPolicy {
            metric: "accepted".into(),
            direction: Direction::Increase,
            scale: abgate::stats::Scale::Relative,
            min_effect: 0.0,
            equivalence_margin: Some(0.05),
        }),
        guardrails: vec![GuardrailPolicy {
            metric: "latency_ms".into(),
            direction: Direction::Increase,
            margin: Margin::Relative(0.05),
        }],
        ..Policy::default()
    }
}

fn canary_policy() -> Policy {
    Policy {
        kind: ExperimentKind::Canary,
        primary: None,
        guardrails: vec![
            GuardrailPolicy {
                metric: "errors".into(),
                direction: Direction::Increase,
                margin: Margin::Relative(0.25),
            },
            GuardrailPolicy {
                metric: "latency_ms".into(),
                direction: Direction::Increase,
                margin: Margin::Relative(0.05),
            },
        ],
        ..Policy::default()
    }
}

fn snapshot(arm_list: Vec<ArmSnapshot>, baseline: &str, metrics: Vec<MetricSnapshot>) -> Snapshot {
    Snapshot {
        baseline: baseline.into(),
        arms: arm_list,
        metrics,
        srm_monitor: None,
    }
}

fn verdict_for(
    policy: &Policy,
    snap: &Snapshot,
    facts: &StepFacts,
) -> (Verdict, ExperimentEvidence) {
    let mut ev = ExperimentEvidence::new();
    ev.observe(policy, snap).expect("valid look");
    (decide(policy, &ev, facts), ev)
}

/// A healthy A/B look: primary +30 %, latency unchanged, 10k units per arm.
fn ab_snapshot(treat_successes: u64, treat_latency: f64) -> Snapshot {
    snapshot(
        arms(&[("control", 0.5, 10_000), ("treatment", 0.5, 10_000)]),
        "control",
        vec![
            binary(
                "accepted",
                &[
                    ("control", 10_000, 1000),
                    ("treatment", 10_000, treat_successes),
                ],
            ),
            continuous(
                "latency_ms",
                &[
                    ("control", 10_000, 100.0, 400.0),
                    ("treatment", 10_000, treat_latency, 400.0),
                ],
            ),
        ],
    )
}

#[test]
fn srm_holds() {
    let mut snap = ab_snapshot(1300, 100.0);
    snap.arms = arms(&[("control", 0.5, 10_500), ("treatment", 0.5, 9_500)]);
    let (v, _) = verdict_for(&ab_policy(), &snap, &GO);
    match &v {
        Verdict::Hold { .. } => assert!(
            v.explain().contains("sample ratio mismatch"),
            "{}",
            v.explain()
        ),
        other => panic!("expected Hold, got {other:?}"),
    }
}

#[test]
fn guardrail_harm_rolls_back_even_when_primary_wins() {
    let (v, ev) = verdict_for(&ab_policy(), &ab_snapshot(1300, 110.0), &GO);
    // The primary alone would promote.
    let rec = ev.comparison("accepted", "treatment").unwrap();
    assert!(rec.interval.unwrap()[0] > 0.0);
    match &v {
        Verdict::Rollback {
            metric,
            arm,
            evidence,
        } => {
            assert_eq!((metric.as_str(), arm.as_str()), ("latency_ms", "treatment"));
            assert_eq!(evidence.test, TestKind::Harm);
            assert!(evidence.p_value <= evidence.threshold);
            assert!((evidence.estimate - 0.10).abs() < 1e-12);
        }
        other => panic!("expected Rollback, got {other:?}"),
    }
    assert!(v.explain().starts_with("rolled back"), "{}", v.explain());
}

#[test]
fn promote_when_primary_wins_and_guardrails_non_inferior() {
    let (v, _) = verdict_for(&ab_policy(), &ab_snapshot(1300, 100.0), &GO);
    match &v {
        Verdict::Promote {
            arm,
            evidence,
            guardrails,
        } => {
            assert_eq!(arm, "treatment");
            assert!(evidence.ci[0] > 0.0 && (evidence.estimate - 0.3).abs() < 1e-12);
            assert_eq!(guardrails.len(), 1);
            assert_eq!(guardrails[0].test, TestKind::NonInferiority);
        }
        other => panic!("expected Promote, got {other:?}"),
    }
    assert!(
        v.explain()
            .starts_with("promote treatment: accepted on treatment: +30.0%"),
        "{}",
        v.explain()
    );
    // Same data, minimum duration not reached: keep going.
    let wait = StepFacts {
        step_minimums_met: false,
        budget_exhausted: false,
    };
    let (v, _) = verdict_for(&ab_policy(), &ab_snapshot(1300, 100.0), &wait);
    assert!(matches!(v, Verdict::Continue { .. }), "{v:?}");
}

#[test]
fn primary_significantly_worse_rolls_back() {
    let (v, _) = verdict_for(&ab_policy(), &ab_snapshot(700, 100.0), &GO);
    match v {
        Verdict::Rollback {
            metric, evidence, ..
        } => {
            assert_eq!(metric, "accepted");
            assert_eq!(evidence.test, TestKind::TwoSided);
            assert!(evidence.ci[1] < 0.0);
        }
        other => panic!("expected Rollback, got {other:?}"),
    }
}

#[test]
fn cs_inside_margin_is_no_difference() {
    let n = 1_000_000;
    let snap = snapshot(
        arms(&[("control", 0.5, n), ("treatment", 0.5, n)]),
        "control",
        vec![
            binary(
                "accepted",
                &[("control", n, 100_000), ("treatment", n, 100_200)],
            ),
            continuous(
                "latency_ms",
                &[("control", n, 100.0, 400.0), ("treatment", n, 100.0, 400.0)],
            ),
        ],
    );
    let (v, _) = verdict_for(&ab_policy(), &snap, &GO);
    match &v {
        Verdict::NoDifference { evidence } => {
            assert_eq!(evidence.len(), 1);
            assert!(evidence[0].ci[0] > -0.05 && evidence[0].ci[1] < 0.05);
        }
        other => panic!("expected NoDifference, got {other:?}"),
    }
    // Without a margin there is nothing to conclude; with the budget spent: Inconclusive.
    let mut p = ab_policy();
    p.primary.as_mut().unwrap().equivalence_margin = None;
    let spent = StepFacts {
        step_minimums_met: true,
        budget_exhausted: true,
    };
    let (v, _) = verdict_for(&p, &snap, &spent);
    assert!(
        matches!(v, Verdict::Inconclusive { primary: Some(_) }),
        "{v:?}"
    );
    let (v, _) = verdict_for(&p, &snap, &GO);
    assert!(matches!(v, Verdict::Continue { primary: Some(_) }), "{v:?}");
}

#[test]
fn insufficient_data_never_rolls_back() {
    let policy = canary_policy();
    // Tiny, terrible-looking canaries at every size below burn-in: the
    // asymptotic (latency) test waits for the burn-in, and the exact count
    // test for `min_exact_events` canary events.
    for units in [0u64, 1, 4, 5, 20, 60, 99] {
        let errs = units.min(policy.min_exact_events - 1);
        let snap = snapshot(
            arms(&[("stable", 0.9, 10 * units), ("canary", 0.1, units)]),
            "stable",
            vec![
                events("errors", "canary", 0.1, errs, 0),
                continuous(
                    "latency_ms",
                    &[
                        ("stable", 10 * units, 100.0, 400.0),
                        ("canary", units, 500.0, 400.0),
                    ],
                ),
            ],
        );
        let (v, _) = verdict_for(&policy, &snap, &GO);
        assert!(
            matches!(v, Verdict::InsufficientData { .. }),
            "units {units}: {v:?}"
        );
        assert!(v.explain().starts_with("insufficient data"));
    }
    // Enough units but too few events: the error guardrail cannot advance
    // (its non-inferiority waits for `min_events`), and no harm crossed.
    let snap = snapshot(
        arms(&[("stable", 0.9, 9000), ("canary", 0.1, 1000)]),
        "stable",
        vec![
            events("errors", "canary", 0.1, 2, 20),
            continuous(
                "latency_ms",
                &[
                    ("stable", 9000, 100.0, 400.0),
                    ("canary", 1000, 100.0, 400.0),
                ],
            ),
        ],
    );
    let (v, _) = verdict_for(&policy, &snap, &GO);
    match v {
        Verdict::InsufficientData { metric, events, .. } => {
            assert_eq!(metric.as_deref(), Some("errors"));
            assert_eq!(events, 22);
        }
        other => panic!("expected InsufficientData, got {other:?}"),
    }
}

/// The attribution test is exact at any count, so it needs no asymptotic
/// burn-in: five failed canary requests against a clean baseline at a 10 %
/// share (probability 1e-5 if the canary were no worse) roll back before
/// either arm has `min_units_per_arm` units; the latency test still waits.
#[test]
fn an_exact_count_test_rolls_back_before_the_asymptotic_burn_in() {
    let policy = canary_policy();
    let snap = snapshot(
        arms(&[("stable", 0.9, 50), ("canary", 0.1, 5)]),
        "stable",
        vec![
            events("errors", "canary", 0.1, 5, 0),
            continuous(
                "latency_ms",
                &[("stable", 50, 100.0, 400.0), ("canary", 5, 500.0, 400.0)],
            ),
        ],
    );
    let (v, _) = verdict_for(&policy, &snap, &GO);
    match v {
        Verdict::Rollback { metric, .. } => assert_eq!(metric, "errors"),
        other => panic!("expected Rollback on errors, got {other:?}"),
    }
}

fn canary_snapshot(canary_errors: u64, baseline_errors: u64, canary_latency: f64) -> Snapshot {
    snapshot(
        arms(&[("stable", 0.9, 360_000), ("canary", 0.1, 40_000)]),
        "stable",
        vec![
            events("errors", "canary", 0.1, canary_errors, baseline_errors),
            continuous(
                "latency_ms",
                &[
                    ("stable", 360_000, 100.0, 400.0),
                    ("canary", 40_000, canary_latency, 400.0),
                ],
            ),
        ],
    )
}

#[test]
fn healthy_canary_advances_when_step_minimums_met() {
    let policy = canary_policy();
    let snap = canary_snapshot(4000, 36_000, 100.0);
    let (v, _) = verdict_for(&policy, &snap, &GO);
    match &v {
        Verdict::Advance { arm, guardrails } => {
            assert_eq!(arm, "canary");
            assert_eq!(guardrails.len(), 2);
            let err = guardrails.iter().find(|g| g.metric == "errors").unwrap();
            assert!(
                err.ci[1] < 1.25 && (err.estimate - 1.0).abs() < 0.01,
                "{err:?}"
            );
        }
        other => panic!("expected Advance, got {other:?}"),
    }
    let wait = StepFacts {
        step_minimums_met: false,
        budget_exhausted: false,
    };
    let (v, _) = verdict_for(&policy, &snap, &wait);
    assert!(matches!(v, Verdict::Continue { .. }), "{v:?}");
}

#[test]
fn canary_error_spike_rolls_back_with_rate_ratio() {
    // Canary errors at twice the baseline rate (RR 2 at a 10 % share).
    let (v, _) = verdict_for(&canary_policy(), &canary_snapshot(100, 450, 100.0), &GO);
    match &v {
        Verdict::Rollback {
            metric,
            arm,
            evidence,
        } => {
            assert_eq!((metric.as_str(), arm.as_str()), ("errors", "canary"));
            assert!((evidence.estimate - 2.0).abs() < 0.05, "{evidence:?}");
            assert!(evidence.ci[0] > 1.0 && evidence.p_value < 0.025);
        }
        other => panic!("expected Rollback, got {other:?}"),
    }
    let text = v.explain();
    assert!(
        text.contains("errors on canary: 2.0") && text.contains("× baseline"),
        "{text}"
    );
    assert!(text.contains("40000 canary units"), "{text}");
}

#[test]
fn ramp_changes_share_without_false_alarm() {
    // Equal error rates while the share ramps 5 % → 25 % → 50 %: no harm evidence.
    let mut att = ErrorAttribution::new(1.0).unwrap();
    for (share, canary, baseline) in [(0.05, 50, 950), (0.25, 250, 750), (0.5, 500, 500)] {
        att.observe_period(share, canary, baseline).unwrap();
    }
    assert!(att.p_value() > 0.5, "{}", att.p_value());
    // Doubling the canary's rate at each share is detected.
    let mut bad = ErrorAttribution::new(1.0).unwrap();
    for (share, canary, baseline) in [(0.05, 100, 950), (0.25, 500, 750), (0.5, 1000, 500)] {
        bad.observe_period(share, canary, baseline).unwrap();
    }
    assert!(bad.p_value() < 1e-6);
    let est = bad.estimate().unwrap();
    assert!((est - 2.0).abs() < 0.05, "{est}");
    assert!(bad.observe_period(1.5, 1, 1).is_err());
}

#[test]
fn evidence_remembers_crossings_and_round_trips() {
    let policy = ab_policy();
    let mut ev = ExperimentEvidence::new();
    ev.observe(&policy, &ab_snapshot(1300, 110.0)).unwrap();
    // A later look where latency recovered: the crossing is remembered.
    ev.observe(&policy, &ab_snapshot(1300, 100.0)).unwrap();
    assert!(matches!(
        decide(&policy, &ev, &GO),
        Verdict::Rollback { .. }
    ));
    let json = serde_json::to_string(&ev).unwrap();
    let back: ExperimentEvidence = serde_json::from_str(&json).unwrap();
    // serde_json may move a float by one ulp; what matters is the decision state.
    assert_eq!(decide(&policy, &back, &GO).name(), "rollback");
    assert_eq!(back.looks, 2);
    let rec = back.comparison("latency_ms", "treatment").unwrap();
    // +10% latency against a 5% tolerance: harm is judged beyond the margin
    // (about 2e-59 here), still an overwhelming crossing.
    assert!(
        rec.harm_min_p < 1e-50 && rec.looks == 2,
        "{}",
        rec.harm_min_p
    );
}

#[test]
fn several_arms_are_bonferroni_corrected() {
    let snap = snapshot(
        arms(&[
            ("control", 1.0, 10_000),
            ("b", 1.0, 10_000),
            ("c", 1.0, 10_000),
        ]),
        "control",
        vec![
            binary(
                "accepted",
                &[
                    ("control", 10_000, 1000),
                    ("b", 10_000, 1100),
                    ("c", 10_000, 1400),
                ],
            ),
            continuous(
                "latency_ms",
                &[
                    ("control", 10_000, 100.0, 400.0),
                    ("b", 10_000, 100.0, 400.0),
                    ("c", 10_000, 100.0, 400.0),
                ],
            ),
        ],
    );
    let (v, _) = verdict_for(&ab_policy(), &snap, &GO);
    match v {
        Verdict::Promote {
            arm,
            evidence,
            guardrails,
        } => {
            assert_eq!(arm, "c");
            assert!((evidence.threshold - 0.025).abs() < 1e-15);
            assert!((evidence.ci_alpha - 0.025).abs() < 1e-15);
            assert!((guardrails[0].threshold - 0.025).abs() < 1e-15);
        }
        other => panic!("expected Promote, got {other:?}"),
    }
}

const EXAMPLE: &str = r#"{ "alpha": 0.05, "design_samples": 5000, "srm_concentration": 10000, "baseline": "control",
  "arms": { "control": {"weight": 0.5, "assigned": 10000}, "treatment": {"weight": 0.5, "assigned": 10000} },
  "metrics": {
    "accepted":   { "type": "binary",     "arms": { "control": {"n": 10000, "successes": 1000}, "treatment": {"n": 10000, "successes": 1100} } },
    "latency_ms": { "type": "continuous", "arms": { "control": {"n": 5000, "mean": 100.0, "variance": 400.0}, "treatment": {"n": 5000, "mean": 101.0, "variance": 420.0} } } } }"#;

fn close(got: &serde_json::Value, want: f64, tol: f64) {
    let g = got
        .as_f64()
        .unwrap_or_else(|| panic!("not a number: {got}"));
    assert!((g - want).abs() <= tol * want.abs(), "got {g}, want {want}");
}

#[test]
fn analyze_happy_path_reproduces_acceptance_numbers() {
    let out = analyze_json(EXAMPLE).unwrap();
    let t = &out["metrics"]["accepted"]["treatment"];
    close(&t["absolute"]["ci"][0], -0.00355524, 1e-5);
    close(&t["absolute"]["ci"][1], 0.0235552, 1e-5);
    close(&t["absolute"]["p_value"], 0.43372, 1e-5);
    close(&t["relative"]["ci"][0], -0.0422064, 1e-5);
    close(&t["relative"]["ci"][1], 0.242206, 1e-5);
    close(&t["relative"]["p_value"], 0.549038, 1e-5);
    let l = &out["metrics"]["latency_ms"]["treatment"]["absolute"];
    close(&l["ci"][0], -0.23980378000296643, 1e-6);
    close(&l["p_value"], 0.23334288056876798, 1e-6);
    assert!(
        out["metrics"]["accepted"].get("control").is_none(),
        "baseline not compared to itself"
    );
    close(&out["srm"]["p_value"], 1.0, 0.0);
    close(&out["srm"]["chi2_p"], 1.0, 1e-12);
    assert!(out.get("verdict").is_none(), "no roles, no verdict");
    let table = render_table(&out);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("metric") && lines[0].contains("estimate"),
        "{table}"
    );
    // Columns aligned: every data row has the CI column at the same offset.
    let col = lines[0].find("CI").unwrap();
    assert!(lines[1..5].iter().all(|l| l.len() > col), "{table}");
    assert!(
        table.contains("accepted") && table.contains("+10.00%") && table.contains("0.4337"),
        "{table}"
    );
    assert!(table.contains("SRM: sequential p = 1.0000"), "{table}");
}

#[test]
fn analyze_with_roles_gives_a_verdict() {
    let input = EXAMPLE
        .replace(
            r#""type": "binary","#,
            r#""type": "binary", "role": "primary", "direction": "increase","#,
        )
        .replace(
            r#""type": "continuous","#,
            r#""type": "continuous", "role": "guardrail", "margin": 0.05,"#,
        );
    let out = analyze_json(&input).unwrap();
    assert_eq!(out["verdict"]["verdict"], "continue", "{}", out["verdict"]);
    assert!(out["verdict"]["explain"]
        .as_str()
        .unwrap()
        .starts_with("continue"));
    assert!(render_table(&out).contains("verdict: continue"));
}

#[test]
fn analyze_defaults_apply() {
    let input = EXAMPLE.replace(
        r#""alpha": 0.05, "design_samples": 5000, "srm_concentration": 10000, "#,
        "",
    );
    assert_eq!(
        analyze_json(&input).unwrap(),
        analyze_json(EXAMPLE).unwrap()
    );
}

fn bad(input: &str) -> String {
    match analyze_json(input) {
        Err(e @ AnalyzeError::Field { .. }) => e.to_string(),
        other => panic!("expected a field error, got {other:?}"),
    }
}

#[test]
fn analyze_bad_inputs_name_their_field() {
    let cases: Vec<(String, &str)> = vec![
        (
            EXAMPLE.replace(r#""successes": 1100"#, r#""successes": 12000"#),
            "metrics.accepted.arms.treatment.successes: 12000 exceeds n 10000",
        ),
        (
            EXAMPLE.replace(
                r#""treatment": {"n": 5000, "mean": 101.0, "variance": 420.0}"#,
                r#""other": {"n": 5000, "mean": 101.0, "variance": 420.0}"#,
            ),
            "metrics.latency_ms.arms.other: unknown arm",
        ),
        (
            EXAMPLE.replace(
                r#", "treatment": {"n": 5000, "mean": 101.0, "variance": 420.0}"#,
                "",
            ),
            "metrics.latency_ms.arms.treatment: missing",
        ),
        (
            EXAMPLE.replace(r#""baseline": "control""#, r#""baseline": "ctrl""#),
            "baseline: `ctrl` is not among the arms",
        ),
        (
            EXAMPLE.replace(
                r#"{"n": 10000, "successes": 1000}"#,
                r#"{"n": 0, "successes": 0}"#,
            ),
            "metrics.accepted.arms.control.n: must be > 0",
        ),
        (
            EXAMPLE.replace(r#""variance": 420.0"#, r#""variance": -1.0"#),
            "metrics.latency_ms.arms.treatment.variance: must be >= 0",
        ),
        (
            EXAMPLE.replace(r#""successes": 1000}"#, r#""successes": 1000, "extra": 1}"#),
            "metrics.accepted.arms.control: unknown field `extra`",
        ),
        (
            EXAMPLE.replace(
                r#""type": "binary","#,
                r#""type": "binary", "colour": "red","#,
            ),
            "metrics.accepted: unknown field `colour`",
        ),
        (
            EXAMPLE.replace(r#""alpha": 0.05,"#, r#""alpha": 0.05, "beta": 0.2,"#),
            "(root): unknown field `beta`",
        ),
        (
            EXAMPLE.replace(
                r#""weight": 0.5, "assigned": 10000}, "treatment""#,
                r#""weight": 0.5, "assigned": 10000, "x": 1}, "treatment""#,
            ),
            "arms.control: unknown field `x`",
        ),
        (
            EXAMPLE.replace(
                r#""n": 10000, "successes": 1100"#,
                r#""n": "10000", "successes": 1100"#,
            ),
            "metrics.accepted.arms.treatment.n: invalid type: string",
        ),
        (
            EXAMPLE.replace(r#""alpha": 0.05"#, r#""alpha": "high""#),
            "alpha: invalid type: string",
        ),
        (
            EXAMPLE.replace(r#""type": "binary""#, r#""type": "ratio""#),
            "metrics.accepted.type: unknown variant `ratio`",
        ),
        (
            EXAMPLE.replace(r#""alpha": 0.05"#, r#""alpha": 0.7"#),
            "alpha: must be in (0, 0.5)",
        ),
        (
            EXAMPLE.replace(r#""mean": 101.0, "variance""#, r#""variance""#),
            "metrics.latency_ms.arms.treatment.mean: missing",
        ),
        (
            EXAMPLE.replace(
                r#""n": 10000, "successes": 1100"#,
                r#""n": 10000, "successes": 1100, "mean": 0.1"#,
            ),
            "metrics.accepted.arms.treatment.mean: not allowed",
        ),
    ];
    for (input, want) in cases {
        let got = bad(&input);
        assert!(got.starts_with(want), "got `{got}`, want prefix `{want}`");
    }
    assert!(matches!(
        analyze_json("{not json"),
        Err(AnalyzeError::Syntax(_))
    ));
}

#[test]
fn default_evidence_is_empty_and_waits() {
    let ev = ExperimentEvidence::default();
    assert_eq!(ev.srm.min_p, 1.0);
    let v = decide(&ab_policy(), &ev, &GO);
    assert!(matches!(v, Verdict::InsufficientData { .. }), "{v:?}");
    let spent = StepFacts {
        step_minimums_met: false,
        budget_exhausted: true,
    };
    assert!(matches!(
        decide(&ab_policy(), &ev, &spent),
        Verdict::Inconclusive { .. }
    ));
}

#[test]
fn ramped_srm_monitor_keeps_validity_across_steps() {
    use abgate::stats::SrmMonitor;
    // Canary 10 % then 50 %, both honoured: no SRM evidence.
    let mut m = SrmMonitor::new(vec![0.9, 0.1], 10_000.0).unwrap();
    m.observe(&[9_000, 1_000]).unwrap();
    m.set_weights(vec![0.5, 0.5]).unwrap();
    m.observe(&[5_000, 5_000]).unwrap();
    assert_eq!(m.p_value(), 1.0);
    // Canary losing traffic in the second step (crashing before logging).
    m.observe(&[5_000, 4_000]).unwrap();
    assert!(m.p_value() < 0.001, "{}", m.p_value());
    let mut snap = ab_snapshot(1300, 100.0);
    snap.srm_monitor = Some(m);
    let (v, _) = verdict_for(&ab_policy(), &snap, &GO);
    assert!(matches!(v, Verdict::Hold { .. }), "{v:?}");
}

#[test]
fn invalid_policy_and_snapshot_are_typed_errors() {
    let mut p = ab_policy();
    p.alpha = 0.7;
    let mut ev = ExperimentEvidence::new();
    assert!(ev.observe(&p, &ab_snapshot(1000, 100.0)).is_err());
    let mut snap = ab_snapshot(1000, 100.0);
    snap.baseline = "nope".into();
    assert!(ev.observe(&ab_policy(), &snap).is_err());
    let mut p = canary_policy();
    p.guardrails[0].margin = Margin::Absolute(0.1);
    assert!(ev.observe(&p, &canary_snapshot(10, 90, 100.0)).is_err());
}

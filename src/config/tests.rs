use super::*;

const EXAMPLE: &str = r#"
listen: 127.0.0.1:8080
admin: { listen: 127.0.0.1:9901 }
state_dir: ./abgate-state
backends:
  sentiment-v1: { url: "http://127.0.0.1:9001" }
  sentiment-v2: { url: "http://127.0.0.1:9002/base/" }
experiments:
  - name: sentiment
    match: { path_prefix: /v1/models/sentiment }
    unit: { header: x-user-id }
    allow_override: true
    arms:
      - { name: stable, backend: sentiment-v1, weight: 90 }
      - { name: canary, backend: sentiment-v2, weight: 10 }
"#;

#[test]
fn the_issue_example_parses() {
    let c = parse(EXAMPLE).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.backends.len(), 2);
    assert_eq!(c.backends[1].url.base_path, "/base");
    let e = &c.experiments[0];
    assert_eq!(e.salt, "sentiment");
    assert_eq!(
        e.unit,
        Some(UnitSource::Header("x-user-id".parse().unwrap()))
    );
    assert!(e.allow_override);
    assert_eq!(e.arms[0].weight, 9000);
    assert_eq!(e.arms[1].weight, 1000);
}

#[test]
fn every_error_is_reported_with_path_and_line() {
    let bad = r#"
listen: nowhere
backends:
  a: { url: "http://127.0.0.1:1" }
experiments:
  - name: one
    colour: blue
    unit: { header: x-u, cookie: c }
    arms:
      - { name: x, backend: a, weight: 120 }
      - { name: y, backend: missing, weight: 10 }
  - name: one
    arms:
      - { name: x, backend: a, weight: 50 }
      - { name: x, backend: a, weight: 40 }
timeouts: { upstream_connect: 5 }
"#;
    let errs = parse(bad).unwrap_err().0;
    let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    let has = |needle: &str| text.iter().any(|t| t.contains(needle));
    assert!(
        has("listen: \"nowhere\" is not an IP:port address"),
        "{text:#?}"
    );
    assert!(has("experiments[0].colour: unknown field"), "{text:#?}");
    assert!(has("experiments[0].unit: give exactly one"), "{text:#?}");
    assert!(
        has("experiments[0].arms[0].weight: must be a percentage"),
        "{text:#?}"
    );
    assert!(
        has("experiments[0].arms[1].backend: unknown backend \"missing\""),
        "{text:#?}"
    );
    assert!(
        has("experiments[1].arms[1].name: duplicate arm name"),
        "{text:#?}"
    );
    assert!(
        has("experiments[1].name: duplicate experiment name"),
        "{text:#?}"
    );
    assert!(
        has("timeouts.upstream_connect: duration \"5\" needs a unit"),
        "{text:#?}"
    );
    let colour = errs
        .iter()
        .find(|e| e.path == "experiments[0].colour")
        .unwrap();
    assert_eq!(colour.line, Some(7));
    let weight = errs
        .iter()
        .find(|e| e.path.ends_with("arms[0].weight"))
        .unwrap();
    assert_eq!(weight.line, Some(10));
}

#[test]
fn weights_must_sum_to_100() {
    let bad = r#"
backends: { a: { url: "http://127.0.0.1:1" } }
experiments:
  - name: e
    arms:
      - { name: x, backend: a, weight: 90 }
      - { name: y, backend: a, weight: 5.5 }
"#;
    let errs = parse(bad).unwrap_err().0;
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].path, "experiments[0].arms");
    assert!(errs[0].message.contains("got 95.50"), "{}", errs[0].message);
    assert_eq!(errs[0].line, Some(5), "the `arms:` key's line");
}

#[test]
fn fractional_weights_keep_two_decimals() {
    let ok = r#"
backends: { a: { url: "http://127.0.0.1:1" } }
experiments:
  - name: e
    arms:
      - { name: x, backend: a, weight: 99.75 }
      - { name: y, backend: a, weight: 0.25 }
"#;
    let c = parse(ok).unwrap();
    assert_eq!(c.experiments[0].arms[1].weight, 25);
    let bad = ok.replace("99.75", "99.745").replace("0.25", "0.255");
    assert!(parse(&bad).is_err());
}

#[test]
fn header_matches_and_cookie_units_decode() {
    let ok = r#"
backends: { a: { url: "http://127.0.0.1:1" } }
default_backend: a
experiments:
  - name: e
    match:
      host: API.example.com
      headers:
        - { name: x-tenant, exact: acme }
        - { name: x-model, regex: "^gpt-[0-9]+$" }
    unit: { cookie: uid }
    arms:
      - { name: x, backend: a, weight: 100 }
"#;
    let c = parse(ok).unwrap();
    let e = &c.experiments[0];
    assert_eq!(e.matcher.host.as_deref(), Some("api.example.com"));
    assert_eq!(e.matcher.headers.len(), 2);
    assert_eq!(e.unit, Some(UnitSource::Cookie("uid".into())));
    assert_eq!(c.default_backend.as_deref(), Some("a"));
}

#[test]
fn bad_regex_and_bad_default_backend_are_reported() {
    let bad = r#"
backends: { a: { url: "ftp://x" } }
default_backend: nope
experiments:
  - name: e
    match: { headers: [ { name: x, regex: "(" } ], path_prefix: v1 }
    arms: [ { name: x, backend: a, weight: 100 } ]
"#;
    let errs = parse(bad).unwrap_err().0;
    let text = ConfigErrors(errs).to_string();
    assert!(
        text.contains("backends.a.url: scheme ftp is not supported"),
        "{text}"
    );
    assert!(
        text.contains("default_backend: unknown backend \"nope\""),
        "{text}"
    );
    assert!(text.contains("invalid regex"), "{text}");
    assert!(
        text.contains("path_prefix: \"v1\" must start with '/'"),
        "{text}"
    );
}

#[test]
fn syntax_errors_name_the_line() {
    let errs = parse("backends:\n  a: { url: \"http://x\"\nexperiments: []\n").unwrap_err();
    assert!(errs.0[0].line.is_some());
    assert!(errs.to_string().contains("YAML syntax error"));
}

#[test]
fn an_empty_document_is_a_valid_empty_config() {
    let c = parse("").unwrap();
    assert!(c.experiments.is_empty());
    assert_eq!(c.admin.listen.to_string(), DEFAULT_ADMIN_LISTEN);
}

/// An A/B experiment whose primary block is `primary` (line 12).
fn ab_with_primary(primary: &str) -> String {
    format!(
        r#"
backends: {{ a: {{ url: "http://127.0.0.1:1" }} }}
experiments:
  - name: e
    kind: ab
    metrics: [ {{ name: accepted, source: feedback, type: binary }} ]
    arms:
      - {{ name: control, backend: a, weight: 50 }}
      - {{ name: treatment, backend: a, weight: 50 }}
    analysis:
      guardrails: [ {{ metric: latency_ms, max_relative_increase: 0.1 }} ]
      primary: {primary}
"#
    )
}

#[test]
fn what_the_statistics_engine_refuses_is_a_config_error_at_its_line() {
    // The schema takes any number for min_effect; the engine needs >= 0. Before
    // the schema ran the engine's validation, this passed `abgate check` and the
    // controller then refused to start.
    let bad = ab_with_primary("{ metric: accepted, direction: increase, min_effect: -0.05 }");
    let errs = parse(&bad).unwrap_err().0;
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].path, "experiments[0].analysis.primary.min_effect");
    assert_eq!(errs[0].line, Some(12));
    assert_eq!(
        errs[0].to_string(),
        "experiments[0].analysis.primary.min_effect: must be >= 0, got -0.05 (line 12)"
    );
    let ok = ab_with_primary("{ metric: accepted, direction: increase, min_effect: 0.05 }");
    let c = parse(&ok).unwrap();
    let policy = c.experiments[0].policy.as_ref().unwrap();
    assert_eq!(stats_policy(policy).validate(), Ok(()));
}

#[test]
fn every_configurable_statistics_field_maps_back_to_its_config_key() {
    // Built directly: the schema would refuse most of these values itself.
    let ok = ab_with_primary("{ metric: accepted, direction: increase }");
    let mut p = parse(&ok).unwrap().experiments[0].policy.clone().unwrap();
    p.alpha = 0.7;
    p.design_samples = 0.0;
    p.guardrails[0].margin = -1.0;
    p.guardrails[0].harm = Direction::Decrease;
    p.primary.as_mut().unwrap().min_effect = -1.0;
    let keys: Vec<Option<String>> = stats_policy(&p)
        .problems()
        .iter()
        .map(|e| match e {
            crate::stats::PolicyError::BadParameter { field, .. } => policy::config_key(field, &p),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    let want = [
        "analysis.alpha",
        "analysis.alpha",
        "analysis.design_samples",
        "analysis.guardrails[0].max_relative_decrease",
        "analysis.primary.min_effect",
    ];
    assert_eq!(keys, want.map(|k| Some(k.to_string())));
}

#[test]
fn look_every_and_min_exact_events_default_and_parse() {
    let plain = ab_with_primary("{ metric: accepted, direction: increase }");
    let p = parse(&plain).unwrap().experiments[0]
        .policy
        .clone()
        .unwrap();
    assert_eq!((p.look_every, p.min_exact_events), (10, 5));
    assert_eq!(p.min_look_gap, std::time::Duration::from_millis(200));
    assert_eq!(stats_policy(&p).min_exact_events, 5);
    let set = plain.replace(
        "    analysis:\n",
        "    analysis:\n      look_every: 0\n      min_exact_events: 8\n      min_look_gap: 50ms\n",
    );
    let p = parse(&set).unwrap().experiments[0].policy.clone().unwrap();
    assert_eq!((p.look_every, p.min_exact_events), (0, 8));
    assert_eq!(p.min_look_gap, std::time::Duration::from_millis(50));
    assert_eq!(stats_policy(&p).min_exact_events, 8);
    let bad = plain.replace(
        "    analysis:\n",
        "    analysis:\n      min_exact_events: 0\n",
    );
    let errs = parse(&bad).unwrap_err().0;
    assert_eq!(
        errs[0].path, "experiments[0].analysis.min_exact_events",
        "{errs:?}"
    );
}

#[test]
fn model_rules_body_units_arm_models_and_backend_headers_decode() {
    std::env::set_var("ABGATE_CONFIG_TEST_KEY", "sk-env");
    let c = parse(
        r#"
backends:
  a: { url: "http://127.0.0.1:1" }
  b: { url: "http://127.0.0.1:2", headers: { authorization: "Bearer ${env:ABGATE_CONFIG_TEST_KEY}", x-org: acme } }
experiments:
  - name: exact
    match: { model: gpt-x }
    unit: { body: user }
    arms:
      - { name: stable, backend: a, weight: 50 }
      - { name: canary, backend: b, weight: 50, model: llama-x }
  - name: prefix
    match: { model_prefix: "gpt-", max_peek: 1KiB }
    arms: [{ name: only, backend: a, weight: 100 }]
"#,
    )
    .unwrap();
    let e = &c.experiments[0];
    assert_eq!(e.matcher.model, Some(ModelRule::Exact("gpt-x".into())));
    assert_eq!(e.matcher.max_peek, DEFAULT_MAX_PEEK);
    assert_eq!(e.unit, Some(UnitSource::Body("user".into())));
    assert_eq!(e.arms[1].model.as_deref(), Some("llama-x"));
    assert_eq!(
        e.arm_models(),
        vec![
            ("stable".to_string(), "gpt-x".to_string()),
            ("canary".to_string(), "llama-x".to_string())
        ]
    );
    let p = &c.experiments[1];
    assert_eq!(p.matcher.model, Some(ModelRule::Prefix("gpt-".into())));
    assert_eq!(p.matcher.max_peek, 1024);
    assert!(p.arm_models().is_empty(), "a prefix names no one model");
    let h = &c.backends[1].headers;
    assert_eq!(h[0].name, "authorization");
    assert_eq!(h[0].value.as_ref().unwrap(), "Bearer sk-env");
    assert!(h[0].value.as_ref().unwrap().is_sensitive());
    assert_eq!(h[1].value.as_ref().unwrap(), "acme");
    // The whole config's Debug output never holds a value.
    let debug = format!("{c:?}");
    assert!(
        !debug.contains("sk-env") && !debug.contains("acme"),
        "{debug}"
    );
}

#[test]
fn model_and_header_mistakes_are_located() {
    let errors = parse(
        r#"
backends:
  a:
    url: "http://127.0.0.1:1"
    headers:
      host: x
      authorization: "${vault:key}"
experiments:
  - name: e
    match: { model: a, model_prefix: b, max_peek: 0 }
    unit: { body: user, header: x-user }
    arms: [{ name: only, backend: a, weight: 100, model: "" }]
"#,
    )
    .unwrap_err()
    .to_string();
    for want in [
        "backends.a.headers.host: abgate sets this header itself (line 6)",
        "backends.a.headers.authorization: unknown reference ${vault:key}",
        "experiments[0].match.model_prefix: give at most one of `model` or `model_prefix` (line 10)",
        "experiments[0].match.max_peek: must be in 1..=16MiB, got 0 (line 10)",
        "experiments[0].unit: give exactly one of `header`, `cookie` or `body` (line 11)",
        "experiments[0].arms[0].model: must not be empty (line 12)",
    ] {
        assert!(errors.contains(want), "missing {want:?} in:\n{errors}");
    }
}

#[test]
fn a_shadow_arm_decodes_with_its_defaults_and_stays_out_of_the_live_arms() {
    let c = parse(
        r#"
backends: { a: { url: "http://127.0.0.1:1" }, b: { url: "http://127.0.0.1:2" } }
experiments:
  - name: e
    unit: { header: x-user-id }
    arms:
      - { name: stable, backend: a, weight: 100 }
      - { name: candidate, backend: b, model: gpt-x, shadow: { percent: 20 } }
      - name: tight
        backend: b
        shadow: { percent: 0.5, max_body: 64KiB, max_in_flight: 4, timeout: 2s }
"#,
    )
    .unwrap();
    let e = &c.experiments[0];
    assert_eq!(e.arms.len(), 1, "shadows are not live arms");
    assert_eq!(e.baseline, "stable");
    let s = &e.shadows[0];
    assert_eq!(
        (s.arm.name.as_str(), s.arm.backend.as_str()),
        ("candidate", "b")
    );
    assert_eq!((s.arm.weight, s.arm.model.as_deref()), (0, Some("gpt-x")));
    assert_eq!(s.percent, 2000);
    assert_eq!(s.max_body, DEFAULT_SHADOW_MAX_BODY);
    assert_eq!(s.max_in_flight, DEFAULT_SHADOW_MAX_IN_FLIGHT);
    assert_eq!(s.timeout, DEFAULT_SHADOW_TIMEOUT);
    let t = &e.shadows[1];
    assert_eq!((t.percent, t.max_body, t.max_in_flight), (50, 64 * 1024, 4));
    assert_eq!(t.timeout, std::time::Duration::from_secs(2));
}

#[test]
fn shadow_mistakes_are_reported_with_path_and_line() {
    let bad = r#"
backends: { a: { url: "http://127.0.0.1:1" } }
experiments:
  - name: e
    baseline: ghost
    arms:
      - { name: stable, backend: a, weight: 100 }
      - { name: ghost, backend: a, weight: 10, shadow: { percent: 20 } }
      - { name: big, backend: a, shadow: { percent: 120 } }
      - { name: none, backend: a, shadow: { max_in_flight: 0, timeout: 0s, colour: red } }
  - name: only-shadows
    arms:
      - { name: s, backend: a, shadow: { percent: 5 } }
"#;
    let errs = parse(bad).unwrap_err().0;
    let find = |path: &str| {
        errs.iter()
            .find(|e| e.path == path)
            .unwrap_or_else(|| panic!("no error at {path}: {errs:#?}"))
    };
    let w = find("experiments[0].arms[1].weight");
    assert!(w.message.contains("a shadow arm takes no weight"), "{w}");
    assert_eq!(w.line, Some(8));
    let p = find("experiments[0].arms[2].shadow.percent");
    assert!(p.message.contains("0..=100"), "{p}");
    assert_eq!(p.line, Some(9));
    let missing = find("experiments[0].arms[3].shadow");
    assert!(
        missing.message.contains("missing field `percent`"),
        "{missing}"
    );
    assert_eq!(missing.line, Some(10));
    let m = find("experiments[0].arms[3].shadow.max_in_flight");
    assert!(m.message.contains("1..=65536"), "{m}");
    let t = find("experiments[0].arms[3].shadow.timeout");
    assert!(t.message.contains("longer than 0s"), "{t}");
    find("experiments[0].arms[3].shadow.colour");
    let live = find("experiments[1].arms");
    assert!(live.message.contains("at least one live arm"), "{live}");
    assert_eq!(live.line, Some(12));

    // A shadow can never be the baseline (it serves nobody).
    let bad = r#"
backends: { a: { url: "http://127.0.0.1:1" } }
experiments:
  - name: e
    baseline: cand
    arms:
      - { name: stable, backend: a, weight: 100 }
      - { name: cand, backend: a, shadow: { percent: 20 } }
"#;
    let errs = parse(bad).unwrap_err().0;
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].path, "experiments[0].baseline");
    assert_eq!(errs[0].line, Some(5));
    assert!(errs[0].message.contains("is a shadow arm"), "{}", errs[0]);
}

#[test]
fn a_canary_keeps_its_two_live_arms_beside_a_shadow() {
    // The canary's "exactly two arms" and the controller count live arms
    // only: a shadow next to them is neither baseline nor candidate.
    let c = parse(
        r#"
backends: { a: { url: "http://127.0.0.1:1" }, b: { url: "http://127.0.0.1:2" } }
experiments:
  - name: e
    kind: canary
    steps: [10, 100]
    arms:
      - { name: stable, backend: a, weight: 100 }
      - { name: canary, backend: b, weight: 0 }
      - { name: candidate, backend: b, shadow: { percent: 20 } }
"#,
    )
    .unwrap();
    let e = &c.experiments[0];
    let names: Vec<&str> = e.arms.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["stable", "canary"]);
    assert_eq!(e.shadows[0].arm.name, "candidate");
    assert!(e.policy.is_some());
}

fn canary_with_steps(steps: &str) -> String {
    format!(
        r#"
backends: {{ v1: {{ url: "http://127.0.0.1:1" }}, v2: {{ url: "http://127.0.0.1:2" }} }}
experiments:
  - name: exp
    kind: canary
    baseline: stable
    steps: {steps}
    arms:
      - {{ name: stable, backend: v1, weight: 100 }}
      - {{ name: canary, backend: v2, weight: 0 }}
"#
    )
}

#[test]
fn a_canary_may_begin_with_a_shadow_step() {
    let c = parse(&canary_with_steps("[shadow, 5, 100]")).unwrap();
    let p = c.experiments[0].policy.as_ref().unwrap();
    assert_eq!(p.steps.len(), 3);
    let m = p.steps[0].mirror().unwrap();
    assert_eq!(m.percent, BUCKETS, "a bare `shadow` copies every request");
    assert_eq!(m.max_in_flight, DEFAULT_SHADOW_MAX_IN_FLIGHT);
    assert_eq!(p.steps[1], Step::Live(500));
    let c = parse(&canary_with_steps(
        "[{ shadow: { percent: 20, timeout: 5s } }, 50, 100]",
    ))
    .unwrap();
    let m = c.experiments[0].policy.as_ref().unwrap().steps[0]
        .mirror()
        .unwrap();
    assert_eq!(
        (m.percent, m.timeout),
        (2000, std::time::Duration::from_secs(5))
    );
}

#[test]
fn a_shadow_step_elsewhere_or_alone_is_refused_with_its_place() {
    let err = |steps: &str| parse(&canary_with_steps(steps)).unwrap_err().to_string();
    let e = err("[5, shadow, 100]");
    assert!(
        e.contains("experiments[0].steps[1]") && e.contains("only be the first"),
        "{e}"
    );
    let e = err("[shadow]");
    assert!(e.contains("live steps after it"), "{e}");
    let e = err("[{ shadow: { percent: 0 } }, 10]");
    assert!(e.contains("more than 0%"), "{e}");
    let e = err("[{ shadow: { percent: 20, bogus: 1 } }, 10]");
    assert!(e.contains("bogus"), "{e}");
}

#[test]
fn feedback_corrections_have_a_size_limit_with_a_default() {
    assert_eq!(parse("").unwrap().feedback.max_correction, 16 * 1024);
    let c = parse("feedback: { max_correction: 64KiB }\n").unwrap();
    assert_eq!(c.feedback.max_correction, 64 * 1024);
    let err = parse("feedback:\n  max_correction: 0\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("feedback.max_correction") && err.contains("line 2"),
        "{err}"
    );
}

fn watched(extra: &str) -> String {
    format!(
        r#"
backends: {{ v1: {{ url: "http://127.0.0.1:1" }}, v2: {{ url: "http://127.0.0.1:2" }} }}
experiments:
  - name: exp
    metrics:
      - {{ name: accepted, source: feedback, type: binary }}
{extra}
    arms:
      - {{ name: stable, backend: v1, weight: 100 }}
      - {{ name: canary, backend: v2, weight: 0 }}
"#
    )
}

#[test]
fn a_watch_reads_its_metrics_directions_and_bounds() {
    let c = parse(&watched(
        "    watch: { metrics: [error, accepted, {metric: prompt_tokens}, {metric: latency_ms, harm: either}], reference: 10m, arl: 7d, interval: 2s, tolerance: 0.2 }\n    on_drift: { webhook: \"http://127.0.0.1:7/retrain\", revert: true }",
    ))
    .unwrap();
    let e = &c.experiments[0];
    let w = e.watch.as_ref().unwrap();
    let harm: Vec<(&str, Option<Direction>)> = w
        .metrics
        .iter()
        .map(|m| (m.metric.as_str(), m.harm))
        .collect();
    assert_eq!(
        harm,
        [
            ("error", Some(Direction::Increase)),
            ("accepted", None),
            ("prompt_tokens", None),
            ("latency_ms", None)
        ]
    );
    assert_eq!(w.reference, Some(std::time::Duration::from_secs(600)));
    assert_eq!(w.arl, std::time::Duration::from_secs(7 * 86400));
    assert_eq!(w.interval, std::time::Duration::from_secs(2));
    assert!(w.declared && (w.tolerance - 0.2).abs() < 1e-12);
    assert_eq!(
        e.on_drift,
        OnDrift {
            webhook: Some("http://127.0.0.1:7/retrain".into()),
            revert: true
        }
    );
    let c = parse(&watched(
        "    watch: { metrics: [error] }\n    on_drift: revert",
    ))
    .unwrap();
    assert!(c.experiments[0].on_drift.revert);
}

#[test]
fn a_canary_watches_its_guardrails_after_a_promotion_unless_told_not_to() {
    let c = parse(&canary_with_steps("[5, 100]")).unwrap();
    let w = c.experiments[0].watch.as_ref().unwrap();
    assert!(!w.declared && w.reference.is_none());
    assert_eq!(w.metrics.len(), 2, "error and latency without guardrails");
    let off = canary_with_steps("[5, 100]").replace("steps:", "watch: false\n    steps:");
    assert!(parse(&off).unwrap().experiments[0].watch.is_none());
    // A manually run experiment watches only what it declares.
    assert!(parse(&watched("")).unwrap().experiments[0].watch.is_none());
}

#[test]
fn bad_watches_are_refused_with_their_place() {
    let err = |extra: &str| parse(&watched(extra)).unwrap_err().to_string();
    let e = err("    watch: { metrics: [nope] }");
    assert!(
        e.contains("experiments[0].watch.metrics[0]") && e.contains("unknown metric"),
        "{e}"
    );
    let e = err("    watch: { metrics: [error], tolerance: 1.5 }");
    assert!(e.contains("watch.tolerance") && e.contains("line 7"), "{e}");
    let e = err("    watch: { metrics: [error], arl: 10s }");
    assert!(e.contains("watch.arl: must be at least 100s"), "{e}");
    let e = err("    watch: { metrics: [] }");
    assert!(e.contains("at least one metric"), "{e}");
    let e = err("    watch: { metrics: [{metric: error, harm: sideways}] }");
    assert!(e.contains("watch.metrics[0].harm"), "{e}");
    let e = err("    on_drift: revert");
    assert!(
        e.contains("experiments[0].on_drift") && e.contains("no watch"),
        "{e}"
    );
    let e = err("    watch: { metrics: [error] }\n    on_drift: { webhook: \"ftp://x\" }");
    assert!(e.contains("on_drift.webhook"), "{e}");
    let e = err("    watch: { metrics: [error] }\n    on_drift: restart");
    assert!(e.contains("expected `revert`"), "{e}");
}

#[test]
fn a_capture_reads_its_share_bounds_and_redaction() {
    let c = parse(&watched(
        "    capture: { percent: 0.5, max_body: 16KiB, max_total: 10MiB, redact_headers: [X-User-Email], drop_fields: [user, email] }",
    ))
    .unwrap();
    assert_eq!(
        c.experiments[0].capture,
        Some(Capture {
            percent: 50,
            max_body: 16 << 10,
            max_total: 10 << 20,
            redact_headers: vec!["x-user-email".into()],
            drop_fields: vec!["user".into(), "email".into()],
        })
    );
    let c = parse(&watched("    capture: { percent: 1 }")).unwrap();
    let cap = c.experiments[0].capture.as_ref().unwrap();
    assert_eq!(
        (cap.max_body, cap.max_total),
        (DEFAULT_CAPTURE_MAX_BODY, DEFAULT_CAPTURE_MAX_TOTAL)
    );
    assert!(parse(&watched("")).unwrap().experiments[0]
        .capture
        .is_none());
}

#[test]
fn bad_captures_are_refused_with_their_place() {
    let err = |extra: &str| parse(&watched(extra)).unwrap_err().to_string();
    let e = err("    capture: { max_body: 1KiB }");
    assert!(
        e.contains("experiments[0].capture")
            && e.contains("missing field `percent`")
            && e.contains("line 7"),
        "{e}"
    );
    let e = err("    capture: { percent: 0 }");
    assert!(
        e.contains("capture.percent") && e.contains("more than 0%"),
        "{e}"
    );
    let e = err("    capture: { percent: 101 }");
    assert!(e.contains("capture.percent"), "{e}");
    let e = err("    capture: { percent: 1, max_body: 2MiB, max_total: 1MiB }");
    assert!(
        e.contains("capture.max_body") && e.contains("larger than max_total"),
        "{e}"
    );
    let e = err("    capture: { percent: 1, max_total: 1KiB }");
    assert!(e.contains("capture.max_total: must be in"), "{e}");
    let e = err("    capture: { percent: 1, redact_headers: [\"bad header\"] }");
    assert!(
        e.contains("capture.redact_headers[0]") && e.contains("not a valid header name"),
        "{e}"
    );
    let e = err("    capture: { percent: 1, drop_fields: [\"\"] }");
    assert!(e.contains("capture.drop_fields[0]"), "{e}");
    let e = err("    capture: { percent: 1, sample: 2 }");
    assert!(
        e.contains("capture.sample") && e.contains("unknown field"),
        "{e}"
    );
}

#[test]
fn a_store_is_sqlite_by_default_and_postgres_reads_its_url_and_pool() {
    assert_eq!(parse(EXAMPLE).unwrap().store, StoreConfig::Sqlite);
    let dir = std::env::temp_dir().join(format!("abgate-store-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pw = dir.join("pg-password");
    std::fs::write(&pw, "s3cret\n").unwrap();
    let c = parse(&format!(
        "store: {{ kind: postgres, url: \"postgres://abgate:${{file:{}}}@db:5432/abgate\", pool: 3 }}\n",
        pw.display()
    ))
    .unwrap();
    let StoreConfig::Postgres(pg) = &c.store else {
        panic!("{:?}", c.store)
    };
    assert_eq!(pg.url, "postgres://abgate:s3cret@db:5432/abgate");
    assert_eq!(pg.pool, 3);
    // Debug (logs) never shows the password.
    let shown = format!("{:?}", c.store);
    assert!(
        !shown.contains("s3cret") && shown.contains("REDACTED@db"),
        "{shown}"
    );
    let c =
        parse("store: { kind: postgres, url: \"postgres://db/abgate\", lease_ttl: 2s }").unwrap();
    let StoreConfig::Postgres(pg) = &c.store else {
        panic!("{:?}", c.store)
    };
    assert_eq!(pg.lease_ttl, std::time::Duration::from_secs(2));
    let c = parse("store: { kind: postgres, url: \"postgres://db/abgate\" }").unwrap();
    let StoreConfig::Postgres(pg) = &c.store else {
        panic!()
    };
    assert_eq!(pg.pool, DEFAULT_STORE_POOL);
    // Unresolved (`abgate check` elsewhere): the whole URL from the environment.
    assert!(parse_unresolved("store: { kind: postgres, url: \"${env:PG_URL}\" }").is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_stores_are_refused_with_their_place() {
    let err = |text: &str| parse(text).unwrap_err().to_string();
    let e = err("listen: 127.0.0.1:1\nstore: { kind: postgres }");
    assert!(
        e.contains("line 2") && e.contains("store: missing field `url`"),
        "{e}"
    );
    let e = err("store: { kind: mysql }");
    assert!(
        e.contains("store.kind") && e.contains("expected sqlite or postgres"),
        "{e}"
    );
    let e = err("store: { url: \"postgres://db/x\" }");
    assert!(e.contains("missing field `kind`"), "{e}");
    let e = err("store: { kind: postgres, url: \"mysql://db/x\" }");
    assert!(e.contains("store.url: must be a postgres://"), "{e}");
    let e = err("store: { kind: postgres, url: \"postgres://db/x\", pool: 0 }");
    assert!(e.contains("store.pool"), "{e}");
    let e = err("store: { kind: sqlite, url: \"postgres://db/x\" }");
    assert!(
        e.contains("store.url") && e.contains("only a postgres store"),
        "{e}"
    );
    let e =
        err("store: { kind: postgres, url: \"postgres://u:${file:/nonexistent/abgate/pw}@db/x\" }");
    assert!(
        e.contains("store.url") && e.contains("/nonexistent/abgate/pw"),
        "{e}"
    );
    let e = err("store: { kind: postgres, url: \"postgres://u:REDACTED@db/x\" }");
    assert!(e.contains("placeholder"), "{e}");
    let e = err(
        "store: { kind: postgres, url: \"postgres://db/x\", ca_file: /nonexistent/abgate/ca.pem }",
    );
    assert!(
        e.contains("store.ca_file") && e.contains("/nonexistent/abgate/ca.pem"),
        "{e}"
    );
    let e = err("store: { kind: sqlite, ca_file: /etc/ssl/ca.pem }");
    assert!(
        e.contains("store.ca_file") && e.contains("only a postgres store"),
        "{e}"
    );
    let e = err("store: { kind: postgres, url: \"postgres://db/x\", lease_ttl: 500ms }");
    assert!(
        e.contains("store.lease_ttl") && e.contains("from 1s to 5m"),
        "{e}"
    );
    let e = err("store: { kind: sqlite, lease_ttl: 5s }");
    assert!(
        e.contains("store.lease_ttl") && e.contains("only a postgres store"),
        "{e}"
    );
    let e = err("store: { kind: postgres, url: \"postgres://db/x\", poool: 2 }");
    assert!(
        e.contains("store.poool") && e.contains("unknown field"),
        "{e}"
    );
}

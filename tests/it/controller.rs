//! The controller end to end: real abgate, mock model backends with configured
//! error rates, latencies and rewards, and the bounded load driver.

use std::time::{Duration, Instant};

use crate::support::*;
use abgate::lab::loadgen::{LoadMode, LoadSpec, RequestKind};
use abgate::lab::mock::MockServer;
use serde_json::Value;

/// The error-rate guardrail most tests use (a YAML list item).
const ERROR_GUARDRAIL: &str = "        - { metric: error, max_relative_increase: 0.10 }";

/// Bounded open-loop load in the background (aborted when the test has its answer).
fn load(
    target: std::net::SocketAddr,
    rate: f64,
    seconds: u64,
    feedback: f64,
) -> tokio::task::JoinHandle<()> {
    spawn_load(load_spec(target, rate, seconds, feedback))
}

fn load_spec(target: std::net::SocketAddr, rate: f64, seconds: u64, feedback: f64) -> LoadSpec {
    let mut spec = open_loop(target, RequestKind::Predict, rate, seconds);
    spec.feedback.fraction = feedback;
    spec.seed = 7;
    spec
}

async fn experiment(admin: std::net::SocketAddr) -> Value {
    get(
        &client(),
        &format!("http://{admin}/v1/experiments/exp"),
        &[],
    )
    .await
    .json()
}

/// Polls until the experiment's state is `state`; returns the view.
async fn wait_state(admin: std::net::SocketAddr, state: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let v = experiment(admin).await;
        if v["state"] == state {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "experiment never became {state}: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn canary_config(
    stable: &MockServer,
    canary: &MockServer,
    extra_analysis: &str,
    guardrails: &str,
) -> String {
    CanaryYaml {
        guardrails,
        analysis_extra: extra_analysis,
        ..CanaryYaml::default()
    }
    .render(&stable.url(), &canary.url())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_with_ten_times_the_errors_is_rolled_back() {
    let _load = decision_load().await;
    let stable = mock("name=stable,error_rate=0.01,latency=fixed:1,seed=1").await;
    let canary = mock("name=canary,error_rate=0.10,latency=fixed:1,seed=2").await;
    let yaml = canary_config(&stable, &canary, "", ERROR_GUARDRAIL);
    let server = start_abgate(&yaml).await;
    let started = Instant::now();
    let traffic = load(server.data_addr, 400.0, 40, 0.0);
    let v = wait_state(server.admin_addr, "rolled_back", Duration::from_secs(40)).await;
    let took = started.elapsed();
    traffic.abort();
    let canary_requests = canary.requests_served();
    assert_eq!(v["arms"][1]["weight"], 0.0);
    let d = &v["last_decision"];
    assert_eq!(d["kind"], "rollback");
    assert_eq!(d["actor"], "controller");
    let summary = d["reason"]["summary"].as_str().unwrap();
    assert!(summary.contains("error"), "{summary}");
    eprintln!("rolled back after {took:?} and {canary_requests} canary requests: {summary}");
    let m = metrics(server.admin_addr).await;
    assert_eq!(
        metric_value(&m, "abgate_experiment_state", &[("experiment", "exp")]),
        2.0
    );
    assert_eq!(
        metric_value(&m, "abgate_experiment_weight", &[("arm", "canary")]),
        0.0
    );
    assert_eq!(
        metric_value(&m, "abgate_decisions_total", &[("kind", "rollback")]),
        1.0
    );
    // After the rollback no new traffic reaches the canary.
    let before = canary.requests_served();
    for i in 0..50 {
        get(
            &client(),
            &format!("http://{}/predict", server.data_addr),
            &[("x-user-id", &format!("u{i}"))],
        )
        .await;
    }
    assert_eq!(canary.requests_served(), before);
    server.shutdown().await;
}

/// With the default analysis settings (1 s interval, 100-unit burn-in) a 10×
/// error canary at a 5 % first step is rolled back on the exact count test's
/// evidence, before the asymptotic burn-in (100 canary units) could even be met:
/// the controller looks every `look_every` canary outcomes, not once a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_times_error_canary_is_rolled_back_within_a_hundred_canary_requests() {
    let _load = decision_load().await;
    let stable = mock("name=stable,error_rate=0.01,latency=fixed:1,seed=1").await;
    let canary = mock("name=canary,error_rate=0.10,latency=fixed:1,seed=2").await;
    let yaml = format!(
        r#"
backends: {{ v1: {{ url: "{}" }}, v2: {{ url: "{}" }} }}
experiments:
  - name: exp
    kind: canary
    baseline: stable
    steps: [5, 50, 100]
    analysis:
      guardrails:
{ERROR_GUARDRAIL}
    arms:
      - {{ name: stable, backend: v1, weight: 100 }}
      - {{ name: canary, backend: v2, weight: 0 }}
"#,
        stable.url(),
        canary.url()
    );
    let server = start_abgate(&yaml).await;
    let traffic = load(server.data_addr, 400.0, 60, 0.0);
    let v = wait_state(server.admin_addr, "rolled_back", Duration::from_secs(60)).await;
    traffic.abort();
    let canary_requests = canary.requests_served();
    let d = &v["last_decision"];
    assert_eq!(d["kind"], "rollback", "{v:#}");
    assert!(
        canary_requests < 100,
        "rolled back only after {canary_requests} canary requests: {d:#}"
    );
    eprintln!("rolled back after {canary_requests} canary requests");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_walks_every_step_and_is_promoted() {
    let _load = decision_load().await;
    let stable = mock("name=stable,latency=normal:5:0.5,seed=3").await;
    let canary = mock("name=canary,latency=normal:5:0.5,seed=4").await;
    let yaml = canary_config(
        &stable,
        &canary,
        "",
        "        - { metric: latency_ms, max_relative_increase: 0.5 }",
    );
    let server = start_abgate(&yaml).await;
    let traffic = load(server.data_addr, 300.0, 60, 0.0);
    let v = wait_state(server.admin_addr, "promoted", Duration::from_secs(60)).await;
    traffic.abort();
    assert_eq!(v["arms"][1]["weight"], 100.0);
    let history = get(
        &client(),
        &format!("http://{}/v1/decisions?experiment=exp", server.admin_addr),
        &[],
    )
    .await
    .json();
    let kinds: Vec<&str> = history["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, vec!["start", "advance", "advance", "promote"]);
    server.shutdown().await;
}

/// The kinds of the experiment's decisions, oldest first.
async fn decision_kinds(admin: std::net::SocketAddr) -> Vec<String> {
    let history = get(
        &client(),
        &format!("http://{admin}/v1/decisions?experiment=exp"),
        &[],
    )
    .await
    .json();
    history["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|d| d["kind"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_that_rises_for_every_arm_as_the_canary_ramps_is_not_the_canarys_harm() {
    // Both arms answer in 5 ms; the moment the canary reaches 50 %, both
    // answer in 40 ms. A cumulative comparison then sees a canary 3x slower
    // (its requests are mostly late ones, the baseline's mostly early ones)
    // and rolls it back; compared within each period of constant weights,
    // the arms are the same and the canary walks on to promotion.
    let _load = decision_load().await;
    static DELAY_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(5);
    DELAY_MS.store(5, std::sync::atomic::Ordering::Relaxed);
    let stable = FakeBackend::start("stable", Behaviour::Delayed(&DELAY_MS)).await;
    let canary = FakeBackend::start("canary", Behaviour::Delayed(&DELAY_MS)).await;
    let yaml = CanaryYaml {
        guardrails: "        - { metric: latency_ms, max_relative_increase: 0.2 }",
        ..CanaryYaml::default()
    }
    .render(&stable.url(), &canary.url());
    let server = start_abgate(&yaml).await;
    let traffic = load(server.data_addr, 300.0, 60, 0.0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !decision_kinds(server.admin_addr)
        .await
        .contains(&"advance".to_string())
    {
        assert!(Instant::now() < deadline, "the canary never left step 1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    DELAY_MS.store(40, std::sync::atomic::Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(40);
    let v = loop {
        let v = experiment(server.admin_addr).await;
        if v["state"] != "running" {
            break v;
        }
        assert!(Instant::now() < deadline, "no decision: {v:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    traffic.abort();
    assert_eq!(v["state"], "promoted", "{v:#}");
    assert_eq!(
        decision_kinds(server.admin_addr).await,
        ["start", "advance", "advance", "promote"]
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starved_canary_waits_and_is_never_rolled_back() {
    let _load = decision_load().await;
    let stable = mock("name=stable,seed=5").await;
    let canary = mock("name=canary,error_rate=1.0,seed=6").await;
    let yaml = canary_config(&stable, &canary, "", ERROR_GUARDRAIL);
    let server = start_abgate(&yaml).await;
    // A trickle: far below the burn-in, and every canary request fails.
    let c = client();
    for i in 0..30 {
        get(
            &c,
            &format!("http://{}/predict", server.data_addr),
            &[("x-user-id", &format!("u{i}"))],
        )
        .await;
    }
    let admin = server.admin_addr;
    eventually(
        Duration::from_secs(10),
        "the controller looked several times",
        || async move {
            experiment(admin).await["analysis"]["looks"]
                .as_u64()
                .unwrap_or(0)
                >= 5
        },
    )
    .await;
    let v = experiment(admin).await;
    assert_eq!(v["state"], "running", "{v:#}");
    assert_eq!(v["analysis"]["verdict"], "insufficient_data", "{v:#}");
    assert!(v["analysis"]["explain"].as_str().unwrap().len() > 10);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_automatic_rollback_and_resume_re_enables_it() {
    let _load = decision_load().await;
    let stable = mock("name=stable,error_rate=0.01,latency=fixed:1,seed=1").await;
    let canary = mock("name=canary,error_rate=0.30,latency=fixed:1,seed=2").await;
    let yaml = canary_config(&stable, &canary, "", ERROR_GUARDRAIL);
    let server = start_abgate_with(&yaml, Some("tok")).await;
    let admin = server.admin_addr;
    // Wait for the canary's first step, then pause before any traffic.
    eventually(Duration::from_secs(10), "canary started", || async move {
        experiment(admin).await["arms"][1]["weight"] == 10.0
    })
    .await;
    let paused = admin_call(
        "POST",
        &format!("http://{admin}/v1/experiments/exp/pause"),
        Some("tok"),
        &[],
        "",
    )
    .await;
    assert_eq!(paused.status, 200);
    let traffic = load(server.data_addr, 400.0, 40, 0.0);
    let c = client();
    // Plenty of evidence accumulates while paused; nothing is decided.
    eventually(
        Duration::from_secs(20),
        "canary traffic while paused",
        || {
            let c = c.clone();
            async move {
                let v = get(&c, &format!("http://{admin}/v1/experiments/exp"), &[])
                    .await
                    .json();
                v["arms"][1]["assigned"]["requests"].as_u64().unwrap_or(0) >= 150
            }
        },
    )
    .await;
    assert_eq!(experiment(admin).await["state"], "paused");
    let resumed = admin_call(
        "POST",
        &format!("http://{admin}/v1/experiments/exp/resume"),
        Some("tok"),
        &[],
        "",
    )
    .await;
    assert_eq!(resumed.status, 200);
    wait_state(admin, "rolled_back", Duration::from_secs(30)).await;
    traffic.abort();
    server.shutdown().await;
}

/// An A/B test on the feedback metric `accepted`, control vs treatment at
/// 50/50, with extra experiment-level and analysis keys (YAML lines).
fn ab_config(
    control: &MockServer,
    treatment: &MockServer,
    min_duration: &str,
    experiment_keys: &str,
    analysis_keys: &str,
) -> String {
    format!(
        r#"
backends: {{ a: {{ url: "{}" }}, b: {{ url: "{}" }} }}
experiments:
  - name: exp
    kind: ab
    baseline: control
    unit: {{ header: x-user-id }}
    metrics: [ {{ name: accepted, source: feedback, type: binary }} ]
    step: {{ min_samples: 50, min_duration: {min_duration} }}
{experiment_keys}
    analysis:
      interval: 200ms
      min_units_per_arm: 50
      min_events: 20
      design_samples: 2000
      primary: {{ metric: accepted, direction: increase }}
{analysis_keys}
    arms:
      - {{ name: control, backend: a, weight: 50 }}
      - {{ name: treatment, backend: b, weight: 50 }}
"#,
        control.url(),
        treatment.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ab_test_with_a_better_treatment_promotes_it() {
    let _load = decision_load().await;
    let control = mock("name=control,outcome_p=0.2,latency=fixed:1,seed=8").await;
    let treatment = mock("name=treatment,outcome_p=0.5,latency=fixed:1,seed=9").await;
    let yaml = ab_config(&control, &treatment, "2s", "", "");
    let server = start_abgate(&yaml).await;
    let traffic = load(server.data_addr, 300.0, 60, 1.0);
    let v = wait_state(server.admin_addr, "promoted", Duration::from_secs(60)).await;
    traffic.abort();
    assert_eq!(v["arms"][1]["weight"], 100.0);
    assert_eq!(v["last_decision"]["kind"], "promote");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aa_test_neither_promotes_nor_rolls_back_within_its_budget() {
    let _load = decision_load().await;
    let a = mock("name=a,outcome_p=0.3,latency=fixed:1,seed=31").await;
    let b = mock("name=b,outcome_p=0.3,latency=fixed:1,seed=32").await;
    let yaml = ab_config(
        &a,
        &b,
        "1s",
        "    max_duration: 6s",
        &format!("      guardrails:\n{ERROR_GUARDRAIL}"),
    );
    let server = start_abgate(&yaml).await;
    let traffic = load(server.data_addr, 300.0, 30, 1.0);
    let v = wait_state(server.admin_addr, "concluded", Duration::from_secs(30)).await;
    traffic.abort();
    let history = get(
        &client(),
        &format!("http://{}/v1/decisions?experiment=exp", server.admin_addr),
        &[],
    )
    .await
    .json();
    let kinds: Vec<&str> = history["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        vec!["conclude"],
        "an A/A test must end without promoting or rolling back: {v:#}"
    );
    assert_eq!(v["arms"][0]["weight"], 100.0, "it ends on the baseline");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sample_ratio_mismatch_holds_the_canary() {
    let _load = decision_load().await;
    // The canary swallows 40% of its requests: the router assigned them but
    // never records an outcome, so the recorded split drifts from the weights.
    // Its answered requests look perfectly healthy; only SRM can tell.
    let stable = mock("name=stable,latency=fixed:1,seed=11").await;
    let canary = mock("name=canary,latency=fixed:1,hang_rate=0.4,seed=12").await;
    let yaml = canary_config(&stable, &canary, "", ERROR_GUARDRAIL)
        // Stay on the first step: only SRM should move anything here.
        .replace("min_samples: 40", "min_samples: 1000000");
    let server = start_abgate(&yaml).await;
    let admin = server.admin_addr;
    // Clients wait longer than the test, so no swallowed request is ever
    // recorded as abandoned and the deficit keeps growing.
    let mut spec = load_spec(server.data_addr, 400.0, 40, 0.0);
    spec.request_timeout = Duration::from_secs(120);
    // Every swallowed request holds its HTTP/1 connection.
    spec.mode = LoadMode::OpenLoop {
        rate_per_s: 400.0,
        connections: 1000,
        max_in_flight: 1000,
    };
    let traffic = spawn_load(spec);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(30);
    let v = loop {
        let v = experiment(admin).await;
        if v["last_decision"]["kind"] == "hold" {
            break v;
        }
        assert!(Instant::now() < deadline, "never held: {v:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "held after {:?}; {} canary requests swallowed",
        started.elapsed(),
        canary
            .stats()
            .hung
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    assert_eq!(v["state"], "running", "{v:#}");
    assert_eq!(v["last_decision"]["actor"], "controller");
    let summary = v["last_decision"]["reason"]["summary"].as_str().unwrap();
    assert!(summary.contains("sample ratio"), "{summary}");
    assert_eq!(v["analysis"]["verdict"], "hold", "{v:#}");
    // The guardrail's evidence is shown even though it did not decide.
    let comparisons = v["analysis"]["comparisons"].as_array().unwrap();
    let error = comparisons
        .iter()
        .find(|c| c["evidence"]["metric"] == "error" && c["evidence"]["arm"] == "canary")
        .unwrap_or_else(|| panic!("no error comparison: {v:#}"));
    assert_eq!(error["role"], "guardrail");
    assert_eq!(error["evidence"]["test"], "harm");
    let p = error["evidence"]["p_value"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&p), "{error}");
    assert!(
        error["evidence"]["units_arm"].as_u64().unwrap() > 0,
        "{error}"
    );
    // While it stands: weights frozen at the first step, the hold recorded
    // once, no advance, promotion or rollback.
    let looks = v["analysis"]["looks"].as_u64().unwrap();
    eventually(Duration::from_secs(10), "more looks", || async move {
        experiment(admin).await["analysis"]["looks"]
            .as_u64()
            .unwrap_or(0)
            >= looks + 5
    })
    .await;
    let v = experiment(admin).await;
    assert_eq!(v["arms"][1]["weight"], 10.0, "{v:#}");
    assert_eq!(v["analysis"]["verdict"], "hold", "{v:#}");
    let m = metrics(admin).await;
    assert_eq!(
        metric_value(&m, "abgate_decisions_total", &[("kind", "hold")]),
        1.0
    );
    for kind in ["advance", "promote", "rollback"] {
        assert_eq!(
            metric_value(&m, "abgate_decisions_total", &[("kind", kind)]),
            0.0,
            "{kind}"
        );
    }
    traffic.abort();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_are_posted_to_the_webhook_with_bounded_retries() {
    let _load = decision_load().await;
    // The hook refuses every "start" notification and accepts the rest.
    let hook = RecordingBackend::answering(|body| {
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        if v["kind"] == "start" {
            500
        } else {
            200
        }
    })
    .await;
    let stable = mock("name=stable,error_rate=0.01,latency=fixed:1,seed=1").await;
    let canary = mock("name=canary,error_rate=0.10,latency=fixed:1,seed=2").await;
    let yaml = canary_config(
        &stable,
        &canary,
        &format!("    notify: {{ url: \"{}/hooks/abgate\" }}", hook.url()),
        ERROR_GUARDRAIL,
    );
    let server = start_abgate(&yaml).await;
    let traffic = load(server.data_addr, 400.0, 40, 0.0);
    wait_state(server.admin_addr, "rolled_back", Duration::from_secs(40)).await;
    traffic.abort();
    let posts = |kind: &'static str| {
        let seen = hook.seen.clone();
        move || -> Vec<(Value, u16)> {
            seen.lock()
                .unwrap()
                .iter()
                .map(|s| (serde_json::from_slice::<Value>(&s.body).unwrap(), s.status))
                .filter(|(v, _)| v["kind"] == kind)
                .collect()
        }
    };
    let (rollbacks, starts) = (posts("rollback"), posts("start"));
    eventually(Duration::from_secs(10), "the rollback is posted", || {
        let n = rollbacks().len();
        async move { n == 1 }
    })
    .await;
    let (rollback, status) = &rollbacks()[0];
    assert_eq!(*status, 200);
    assert_eq!(rollback["experiment"], "exp");
    assert_eq!(rollback["to_weights"]["canary"], 0);
    assert_eq!(rollback["from_weights"]["canary"], 1000);
    assert!(rollback["id"].as_i64().unwrap() > 0);
    assert!(rollback["reason"]["summary"]
        .as_str()
        .unwrap()
        .contains("error"));
    // The refused notification is tried three times, then given up.
    eventually(Duration::from_secs(10), "three tries of the start", || {
        let n = starts().len();
        async move { n >= 3 }
    })
    .await;
    // Longer than the next backoff (2 s) would be: no fourth try comes.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let tries = starts();
    assert_eq!(tries.len(), 3, "{tries:?}");
    assert!(tries
        .iter()
        .all(|(v, status)| *status == 500 && *v == tries[0].0));
    let seen = hook.seen.lock().unwrap().clone();
    assert!(seen.iter().all(|s| s.method == "POST"
        && s.path == "/hooks/abgate"
        && s.headers["content-type"] == "application/json"));
    server.shutdown().await;
}

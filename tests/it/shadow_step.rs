//! A canary's shadow step through real sockets: `steps: [shadow, ...]`
//! mirrors a share of the requests to the candidate, which serves nobody; the
//! controller compares each copy with the request it copies, and goes live
//! only once every guardrail the pairs carry is non-inferior, or rolls back
//! on harm before any user was served by the candidate.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::*;
use abgate::lab::loadgen::RequestKind;
use serde_json::Value;

/// A canary `exp` whose first step is a shadow (50% of requests copied),
/// with a latency and an error guardrail, and `notify` posting to `hook`.
fn shadow_canary(stable: &str, canary: &str, hook: &str) -> String {
    format!(
        r#"
backends: {{ v1: {{ url: "{stable}" }}, v2: {{ url: "{canary}" }} }}
experiments:
  - name: exp
    kind: canary
    baseline: stable
    unit: {{ header: x-user-id }}
    steps: [{{ shadow: {{ percent: 50 }} }}, 20, 100]
    step: {{ min_samples: 200, min_duration: 0s }}
    analysis:
      interval: 200ms
      min_units_per_arm: 50
      design_samples: 2000
      guardrails:
        - {{ metric: latency_ms, max_relative_increase: 0.10 }}
        - {{ metric: error, max_absolute_increase: 0.05 }}
    notify: {{ url: "{hook}/hook" }}
    arms:
      - {{ name: stable, backend: v1, weight: 100 }}
      - {{ name: canary, backend: v2, weight: 0 }}
"#
    )
}

/// The experiment's view (`GET /v1/experiments/exp`).
async fn view(admin: SocketAddr) -> Value {
    experiment_json(admin, "exp").await
}

async fn decisions(admin: SocketAddr) -> Vec<Value> {
    let mut d: Vec<Value> = get(
        &client(),
        &format!("http://{admin}/v1/decisions?experiment=exp"),
        &[],
    )
    .await
    .json()["decisions"]
        .as_array()
        .unwrap()
        .clone();
    d.reverse();
    d
}

/// Polls the view until `done` holds for it (or fails after `within`).
async fn wait_view(
    admin: SocketAddr,
    within: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let v = view(admin).await;
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "never {what}: {v:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_40_percent_slower_is_caught_in_shadow_before_any_user_sees_it() {
    let _load = decision_load().await;
    let hook = RecordingBackend::start().await;
    let stable = mock("name=stable,latency=normal:10:1,seed=1").await;
    let canary = mock("name=canary,latency=normal:14:1.4,seed=2").await;
    let server = start_abgate(&shadow_canary(&stable.url(), &canary.url(), &hook.url())).await;
    let mut spec = open_loop(server.data_addr, RequestKind::Predict, 300.0, 40);
    spec.seed = 5;
    let traffic = spawn_load(spec);
    // While in shadow, the view shows the step, the shadow and its pairs.
    let shadowing = wait_view(
        server.admin_addr,
        Duration::from_secs(20),
        "in shadow",
        |v| v["analysis"]["shadow"]["pairs"].as_u64().unwrap_or(0) > 0 || v["state"] != "running",
    )
    .await;
    if shadowing["state"] == "running" {
        assert_eq!(shadowing["analysis"]["step"], 1);
        assert_eq!(arm_of(&shadowing, "canary/shadow")["role"], "shadow");
        assert_eq!(arm_of(&shadowing, "canary/shadow")["mirror_percent"], 50.0);
        assert_eq!(arm_of(&shadowing, "canary")["weight"], 0.0);
    }
    let v = wait_view(
        server.admin_addr,
        Duration::from_secs(40),
        "rolled back",
        |v| v["state"] == "rolled_back",
    )
    .await;
    traffic.abort();
    // No user was served by the candidate: its live arm has no request, and
    // everything its backend saw were copies.
    let live = arm_of(&v, "canary")["assigned"]["requests"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(live, 0, "{v:#}");
    let kinds: Vec<String> = decisions(server.admin_addr)
        .await
        .iter()
        .map(|d| d["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["start", "rollback"]);
    let start = &decisions(server.admin_addr).await[0];
    let said = start["reason"]["summary"].as_str().unwrap();
    assert!(
        said.contains("shadow: 50% of requests copied to canary"),
        "{said}"
    );
    assert_eq!(start["to_weights"]["canary"], 0);
    let d = &v["last_decision"];
    let summary = d["reason"]["summary"].as_str().unwrap();
    assert!(
        summary.contains("latency_ms") && summary.contains("caught in shadow"),
        "{summary}"
    );
    let latency = d["reason"]["shadow"]["guardrails"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["metric"] == "latency_ms")
        .unwrap();
    assert_eq!(latency["status"], "harm", "{latency:#}");
    // The relative slowdown as the proxy sees it: +40% at the backend,
    // diluted by the proxy's own time (a millisecond or two here), and its
    // interval clear of no difference.
    let est = &latency["estimate"];
    let (e, lo) = (
        est["estimate"].as_f64().unwrap(),
        est["ci"][0].as_f64().unwrap(),
    );
    assert!((0.15..0.5).contains(&e) && lo > 0.0, "{est:#}");
    // Once rolled back, nothing is copied any more.
    let copies = canary.requests_served();
    for i in 0..50 {
        get(
            &client(),
            &format!("http://{}/predict", server.data_addr),
            &[("x-user-id", &format!("u{i}"))],
        )
        .await;
    }
    // Copies still in flight at the rollback land within their timeout.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(canary.requests_served() <= copies + 5);
    // The webhook hears of the shadow start and the rollback like any step.
    eventually(Duration::from_secs(10), "the rollback is posted", || {
        let posted: Vec<String> = hook
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter_map(|s| serde_json::from_slice::<Value>(&s.body).ok())
            .map(|v| v["kind"].as_str().unwrap_or("").to_string())
            .collect();
        async move { posted.contains(&"start".into()) && posted.contains(&"rollback".into()) }
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_candidate_advances_from_shadow_into_the_live_steps() {
    let _load = decision_load().await;
    let hook = RecordingBackend::start().await;
    let stable = mock("name=stable,latency=normal:10:1,seed=3").await;
    let canary = mock("name=canary,latency=normal:10:1,seed=4").await;
    let server = start_abgate(&shadow_canary(&stable.url(), &canary.url(), &hook.url())).await;
    let mut spec = open_loop(server.data_addr, RequestKind::Predict, 300.0, 60);
    spec.seed = 6;
    let traffic = spawn_load(spec);
    // In shadow (it takes 200 pairs, over a second here): the candidate
    // serves nobody, its copies are an arm of their own, and `abgate status`
    // says so.
    let shadowing = wait_view(
        server.admin_addr,
        Duration::from_secs(20),
        "in shadow",
        |v| v["analysis"]["shadow"]["pairs"].as_u64().unwrap_or(0) > 0,
    )
    .await;
    assert_eq!(shadowing["analysis"]["step"], 1);
    assert_eq!(arm_of(&shadowing, "canary")["weight"], 0.0);
    assert_eq!(arm_of(&shadowing, "canary/shadow")["role"], "shadow");
    assert_eq!(arm_of(&shadowing, "canary/shadow")["mirror_percent"], 50.0);
    let parsed: abgate::control::view::ExperimentView =
        serde_json::from_value(shadowing.clone()).unwrap();
    let text = abgate::control::view::render_status(&[parsed]);
    assert!(
        text.contains("step 1/3 (shadow: 50% of requests copied to canary/shadow")
            && text.contains("latency_ms on pairs:"),
        "{text}"
    );
    // The step's shadow is labelled in Prometheus like a configured one. A
    // step only moves forward, so a view still in shadow after the scrape
    // means the scrape saw the shadow step too.
    let role = |text: &str| {
        metric_value(
            text,
            "abgate_arm_role",
            &[("arm", "canary/shadow"), ("role", "shadow")],
        )
    };
    let during = metrics(server.admin_addr).await;
    let scraped_in_shadow = view(server.admin_addr).await["analysis"]["step"] == 1;
    if scraped_in_shadow {
        assert_eq!(role(&during), 1.0, "{during}");
    }
    let v = wait_view(server.admin_addr, Duration::from_secs(60), "live", |v| {
        v["analysis"]["step"].as_u64().unwrap_or(0) >= 2 || v["state"] != "running"
    })
    .await;
    traffic.abort();
    if scraped_in_shadow {
        assert_eq!(role(&metrics(server.admin_addr).await), 0.0);
    }
    assert_eq!(v["state"], "running", "{v:#}");
    let d = decisions(server.admin_addr).await;
    assert_eq!(d[0]["kind"], "start");
    assert_eq!(d[1]["kind"], "advance", "{:#}", d[1]);
    assert_eq!(d[1]["to_weights"]["canary"], 2000);
    let gates = d[1]["reason"]["shadow"]["guardrails"].as_array().unwrap();
    assert!(
        gates.iter().all(|g| g["status"] == "non_inferior"),
        "{gates:#?}"
    );
    assert!(d[1]["reason"]["shadow"]["pairs"].as_u64().unwrap() >= 200);
    // Live now: the candidate serves users, and the shadow is gone.
    let live = wait_view(server.admin_addr, Duration::from_secs(10), "serving", |v| {
        arm_of(v, "canary")["weight"] == 20.0
    })
    .await;
    assert!(live["arms"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["name"] != "canary/shadow"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_step_keeps_its_pairs_across_a_restart() {
    let _load = decision_load().await;
    let hook = RecordingBackend::start().await;
    let stable = mock("name=stable,latency=normal:10:1,seed=7").await;
    let canary = mock("name=canary,latency=normal:10:1,seed=8").await;
    // A step that cannot end in this test: it needs a million pairs.
    let yaml = shadow_canary(&stable.url(), &canary.url(), &hook.url())
        .replace("min_samples: 200", "min_samples: 1000000");
    let dir = temp_state_dir();
    let server = start_abgate_opts(&yaml, None, None, &dir).await;
    let mut spec = open_loop(server.data_addr, RequestKind::Predict, 300.0, 40);
    spec.seed = 9;
    let traffic = spawn_load(spec);
    wait_view(
        server.admin_addr,
        Duration::from_secs(20),
        "100 pairs",
        |v| v["analysis"]["shadow"]["pairs"].as_u64().unwrap_or(0) >= 100,
    )
    .await;
    traffic.abort();
    // In-flight copies settle, then the shutdown saves the run and the pairs.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = view(server.admin_addr).await["analysis"]["shadow"]["pairs"]
        .as_u64()
        .unwrap();
    server.shutdown().await;
    let server = start_abgate_opts(&yaml, None, None, &dir).await;
    let v = wait_view(server.admin_addr, Duration::from_secs(20), "a look", |v| {
        v["analysis"]["shadow"]["pairs"].is_u64()
    })
    .await;
    assert_eq!(v["analysis"]["step"], 1, "{v:#}");
    let after = v["analysis"]["shadow"]["pairs"].as_u64().unwrap();
    assert!(
        after >= before,
        "pairs {before} before the restart, {after} after"
    );
    server.shutdown().await;
}

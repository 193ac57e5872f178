//! Data plane over real sockets: split, stickiness, ramp, override, tagging.

use std::collections::HashMap;
use std::sync::Arc;

use crate::support::*;

fn split_config(
    stable: &FakeBackend,
    canary: &FakeBackend,
    canary_weight: u32,
    allow_override: bool,
) -> String {
    format!(
        r#"
backends:
  v1: {{ url: "{}" }}
  v2: {{ url: "{}" }}
experiments:
  - name: sentiment
    match: {{ path_prefix: /v1/models/sentiment }}
    unit: {{ header: x-user-id }}
    allow_override: {allow_override}
    arms:
      - {{ name: stable, backend: v1, weight: {} }}
      - {{ name: canary, backend: v2, weight: {canary_weight} }}
"#,
        stable.url(),
        canary.url(),
        100 - canary_weight
    )
}

/// Sends one request per key (concurrently, bounded) and returns key → arm.
async fn arms_for(
    client: &HttpClient,
    url: &str,
    keys: impl Iterator<Item = String>,
) -> HashMap<String, String> {
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = Vec::new();
    for key in keys {
        let (client, url, permit) = (
            client.clone(),
            url.to_string(),
            sem.clone().acquire_owned().await.unwrap(),
        );
        tasks.push(tokio::spawn(async move {
            let a = get(&client, &url, &[("x-user-id", &key)]).await;
            drop(permit);
            assert_eq!(a.status, 200, "{key}: {:?}", a.body);
            // The arm header and the backend that answered must agree.
            let arm = a.header("x-abgate-arm").unwrap().to_string();
            let body = String::from_utf8(a.body.to_vec()).unwrap();
            assert_eq!(body, if arm == "stable" { "v1" } else { "v2" });
            (key, arm)
        }));
    }
    let mut out = HashMap::new();
    for t in tasks {
        let (k, a) = t.await.unwrap();
        out.insert(k, a);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ninety_ten_split_lands_within_binomial_tolerance() {
    let (v1, v2) = (
        FakeBackend::start("v1", Behaviour::Ok).await,
        FakeBackend::start("v2", Behaviour::Ok).await,
    );
    let server = start_abgate(&split_config(&v1, &v2, 10, false)).await;
    let url = format!("http://{}/v1/models/sentiment/predict", server.data_addr);
    let c = client();
    let arms = arms_for(&c, &url, (0..10_000).map(|i| format!("user-{i}"))).await;
    let canary = arms.values().filter(|a| *a == "canary").count();
    // n = 10,000, p = 0.1: mean 1000, σ = 30; ±4σ.
    assert!(
        (880..=1120).contains(&canary),
        "canary got {canary} of 10000"
    );
    assert_eq!(
        v1.requests.load(std::sync::atomic::Ordering::SeqCst)
            + v2.requests.load(std::sync::atomic::Ordering::SeqCst),
        10_000
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_keep_their_arm_and_a_ramp_only_adds_to_the_canary() {
    let (v1, v2) = (
        FakeBackend::start("v1", Behaviour::Ok).await,
        FakeBackend::start("v2", Behaviour::Ok).await,
    );
    let server = start_abgate(&split_config(&v1, &v2, 5, false)).await;
    let url = format!("http://{}/v1/models/sentiment", server.data_addr);
    let c = client();
    let keys = || (0..1000).map(|i| format!("unit-{i}"));
    let first = arms_for(&c, &url, keys()).await;
    for _ in 0..4 {
        assert_eq!(
            arms_for(&c, &url, keys()).await,
            first,
            "a unit changed arm between requests"
        );
    }
    // Ramp 5% → 10% by swapping the table.
    let ramped = abgate::config::parse(&format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\n{}",
        split_config(&v1, &v2, 10, false)
    ))
    .unwrap();
    let version = server.shared.apply(&ramped);
    assert!(version > 1);
    let after = arms_for(&c, &url, keys()).await;
    let mut moved_in = 0;
    for (k, before) in &first {
        let now = &after[k];
        if before == "canary" {
            assert_eq!(now, "canary", "{k} left the canary during a ramp");
        } else if now == "canary" {
            moved_in += 1;
        }
    }
    assert!(moved_in > 0, "a 5% → 10% ramp should move some units in");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn override_header_is_honoured_only_when_allowed_and_marked_forced() {
    let (v1, v2) = (
        FakeBackend::start("v1", Behaviour::Ok).await,
        FakeBackend::start("v2", Behaviour::Ok).await,
    );
    let c = client();

    let strict = start_abgate(&split_config(&v1, &v2, 0, false)).await;
    let url = format!("http://{}/v1/models/sentiment", strict.data_addr);
    let a = get(&c, &url, &[("x-user-id", "u1"), ("x-abgate-arm", "canary")]).await;
    assert_eq!(a.header("x-abgate-arm"), Some("stable"));
    strict.shutdown().await;

    let open = start_abgate(&split_config(&v1, &v2, 0, true)).await;
    let url = format!("http://{}/v1/models/sentiment", open.data_addr);
    let a = get(&c, &url, &[("x-user-id", "u1"), ("x-abgate-arm", "canary")]).await;
    assert_eq!(a.header("x-abgate-arm"), Some("canary"));
    assert_eq!(a.body, "v2");
    let bad = get(&c, &url, &[("x-abgate-arm", "nope")]).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.header("content-type"), Some("application/problem+json"));
    assert!(bad.json()["detail"]
        .as_str()
        .unwrap()
        .contains("stable, canary"));
    // Forced requests are counted apart from assigned ones.
    let snap = open.shared.recorders.experiment("sentiment");
    let canary = snap.iter().find(|s| s.arm == "canary").unwrap();
    assert_eq!(canary.forced.requests(), 1);
    assert_eq!(canary.assigned.requests(), 0);
    let m = metrics(open.admin_addr).await;
    assert_eq!(
        metric_value(&m, "abgate_forced_requests_total", &[("arm", "canary")]),
        1.0
    );
    open.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_are_tagged_and_headers_are_cleaned() {
    let v1 = FakeBackend::start("v1", Behaviour::Ok).await;
    let yaml = format!(
        r#"
backends: {{ v1: {{ url: "{}" }} }}
default_backend: v1
experiments:
  - name: tagged
    match: {{ path_prefix: /exp, headers: [ {{ name: x-tenant, prefix: ac }} ] }}
    arms: [ {{ name: only, backend: v1, weight: 100 }} ]
"#,
        v1.url()
    );
    let server = start_abgate(&yaml).await;
    let c = client();
    let a = get(
        &c,
        &format!("http://{}/exp/x", server.data_addr),
        &[
            ("x-tenant", "acme"),
            ("connection", "x-private"),
            ("x-private", "secret"),
            ("x-forwarded-for", "10.1.1.1"),
        ],
    )
    .await;
    assert_eq!(a.header("x-abgate-experiment"), Some("tagged"));
    assert_eq!(a.header("x-abgate-arm"), Some("only"));
    let timing = a.header("server-timing").unwrap();
    assert!(
        timing.starts_with("abgate;dur=") && timing.contains(", upstream;dur="),
        "{timing}"
    );
    let seen = v1.seen_headers.lock().unwrap().last().cloned().unwrap();
    assert!(
        seen.get("x-private").is_none(),
        "a header named in Connection was forwarded"
    );
    assert_eq!(seen["x-forwarded-for"], "10.1.1.1, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], server.data_addr.to_string());
    assert_eq!(
        seen["host"],
        v1.addr.to_string(),
        "upstream Host must be the backend's"
    );

    // Header match fails → default backend, untagged by experiment.
    let d = get(
        &c,
        &format!("http://{}/exp/x", server.data_addr),
        &[("x-tenant", "other")],
    )
    .await;
    assert_eq!(d.status, 200);
    assert_eq!(d.header("x-abgate-experiment"), None);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_requests_without_default_get_a_404_problem() {
    let v1 = FakeBackend::start("v1", Behaviour::Ok).await;
    let server = start_abgate(&split_config(&v1, &v1, 10, false)).await;
    let a = get(
        &client(),
        &format!("http://{}/elsewhere", server.data_addr),
        &[],
    )
    .await;
    assert_eq!(a.status, 404);
    let p = a.json();
    assert_eq!(p["type"], "urn:abgate:problem:no-route");
    assert_eq!(p["title"], "Not Found");
    assert!(p["detail"].as_str().unwrap().contains("/elsewhere"));
    server.shutdown().await;
}

//! Outcome attribution over real sockets: tokens on routed responses, the
//! feedback endpoint's every answer, forgeries, key rotation, forced requests.

use std::time::Duration;

use crate::support::*;
use abgate::outcomes::token::TokenKeys;
use serde_json::{json, Value};

const KEYS: &str = "k1:0123456789abcdef0123456789";

fn config(v1: &FakeBackend, v2: &FakeBackend) -> String {
    format!(
        r#"
feedback: {{ max_body: 4096 }}
backends: {{ v1: {{ url: "{}" }}, v2: {{ url: "{}" }} }}
experiments:
  - name: exp
    unit: {{ header: x-user-id }}
    allow_override: true
    metrics:
      - {{ name: accepted, source: feedback, type: binary }}
      - {{ name: rating, source: feedback, type: continuous, min: 1, max: 5 }}
      - {{ name: tokens, source: response_header, header: x-backend-tokens, type: continuous }}
    attribution_window: 1h
    arms:
      - {{ name: stable, backend: v1, weight: 50 }}
      - {{ name: canary, backend: v2, weight: 50 }}
  - name: other
    match: {{ path_prefix: /other }}
    metrics: [ {{ name: accepted, source: feedback, type: binary }} ]
    arms: [ {{ name: only, backend: v1, weight: 100 }} ]
"#,
        v1.url(),
        v2.url()
    )
}

async fn token_for(
    server: &abgate::app::RunningServer,
    path: &str,
    headers: &[(&str, &str)],
) -> (String, String) {
    let a = get(
        &client(),
        &format!("http://{}{path}", server.data_addr),
        headers,
    )
    .await;
    assert_eq!(a.status, 200);
    (
        a.header("x-abgate-token")
            .expect("routed responses carry a token")
            .to_string(),
        a.header("x-abgate-arm").unwrap().to_string(),
    )
}

async fn post(server: &abgate::app::RunningServer, body: &str) -> Answer {
    admin_call(
        "POST",
        &format!("http://{}/_abgate/v1/feedback", server.data_addr),
        None,
        &[],
        body,
    )
    .await
}

async fn arm_metric(server: &abgate::app::RunningServer, arm: &str, metric: &str) -> Value {
    let v = get(
        &client(),
        &format!("http://{}/v1/experiments/exp", server.admin_addr),
        &[],
    )
    .await
    .json();
    v["arms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == arm)
        .unwrap()["metrics"][metric]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_round_trips_to_the_arm_that_served() {
    let (v1, v2) = (
        FakeBackend::start("v1", Behaviour::Ok).await,
        FakeBackend::start("v2", Behaviour::Ok).await,
    );
    let server = start_abgate_opts(&config(&v1, &v2), None, Some(KEYS), &temp_state_dir()).await;
    let (token, arm) = token_for(&server, "/p", &[("x-user-id", "alice")]).await;
    let r = post(
        &server,
        &json!({"token": token, "metric": "accepted", "value": 1}).to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["result"], "accepted");
    let m = arm_metric(&server, &arm, "accepted").await;
    assert_eq!(
        (m["n"].as_u64(), m["successes"].as_u64()),
        (Some(1), Some(1)),
        "{m}"
    );
    // The same event again is a duplicate, counted once.
    let again = post(
        &server,
        &json!({"token": token, "metric": "accepted", "value": 0}).to_string(),
    )
    .await;
    assert_eq!(again.json()["result"], "duplicate");
    assert_eq!(arm_metric(&server, &arm, "accepted").await["n"], 1);
    // A different metric on the same token is a separate event.
    let rating = post(
        &server,
        &json!({"token": token, "metric": "rating", "value": 4.5}).to_string(),
    )
    .await;
    assert_eq!(rating.json()["result"], "accepted");
    assert_eq!(arm_metric(&server, &arm, "rating").await["mean"], 4.5);
    // Built-ins need no declaration.
    assert_eq!(arm_metric(&server, &arm, "error").await["n"], 1);
    let export = get(
        &client(),
        &format!("http://{}/v1/experiments/exp/export", server.admin_addr),
        &[],
    )
    .await
    .json();
    assert_eq!(export["baseline"], "stable");
    let m = metrics(server.admin_addr).await;
    assert_eq!(
        metric_value(
            &m,
            "abgate_feedback_events_total",
            &[
                ("arm", arm.as_str()),
                ("metric", "accepted"),
                ("result", "accepted")
            ]
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &m,
            "abgate_feedback_events_total",
            &[("result", "duplicate")]
        ),
        1.0
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_class_has_its_status_and_records_nothing() {
    let (v1, v2) = (
        FakeBackend::start("v1", Behaviour::Ok).await,
        FakeBackend::start("v2", Behaviour::Ok).await,
    );
    let dir = temp_state_dir();
    let server = start_abgate_opts(&config(&v1, &v2), None, Some(KEYS), &dir).await;
    let (token, arm) = token_for(&server, "/p", &[("x-user-id", "bob")]).await;
    let keys = TokenKeys::parse(KEYS).unwrap();
    let now = abgate::clock::now_ms();
    let expired = keys.mint("exp", &arm, 1, now - 2 * 3600 * 1000, false);
    let unknown_key = TokenKeys::parse("k9:0123456789abcdef0123456789")
        .unwrap()
        .mint("exp", &arm, 1, now, false);
    let forged = TokenKeys::parse("k1:AAAAAAAAAAAAAAAAAAAAAAAAAA")
        .unwrap()
        .mint("exp", &arm, 1, now, false);
    let ev = |t: &str, m: &str, v: Value| json!({"token": t, "metric": m, "value": v});
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({"token": token, "metric": "accepted"}),
            400,
            "malformed",
        ),
        (
            json!({"token": 5, "metric": "accepted", "value": 1}),
            400,
            "malformed",
        ),
        (ev(&token, "nope", json!(1)), 422, "unknown-metric"),
        (ev(&token, "tokens", json!(1)), 422, "unknown-metric"),
        (ev(&token, "accepted", json!(2)), 422, "out-of-range"),
        (ev(&token, "rating", json!(9)), 422, "out-of-range"),
        (ev(&forged, "accepted", json!(1)), 401, "bad-token"),
        (ev("garbage", "accepted", json!(1)), 401, "bad-token"),
        (ev(&unknown_key, "accepted", json!(1)), 401, "unknown-key"),
        (ev(&expired, "accepted", json!(1)), 410, "expired"),
    ];
    for (body, status, slug) in &cases {
        let r = post(&server, &body.to_string()).await;
        assert_eq!(r.status, *status, "{body}: {:?}", r.body);
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        assert_eq!(
            r.json()["type"],
            format!("urn:abgate:problem:{slug}"),
            "{body}"
        );
    }
    assert_eq!(post(&server, "{not json").await.status, 400);
    assert_eq!(post(&server, "[]").await.status, 400);
    assert_eq!(post(&server, &"x".repeat(5000)).await.status, 413);
    let wrong_method = admin_call(
        "GET",
        &format!("http://{}/_abgate/v1/feedback", server.data_addr),
        None,
        &[],
        "",
    )
    .await;
    assert_eq!(wrong_method.status, 405);

    // The same classes in one batch, mixed with a valid, a duplicate-in-batch and a valid rating.
    let mut batch: Vec<Value> = cases.iter().map(|(b, _, _)| b.clone()).collect();
    batch.push(ev(&token, "accepted", json!(1)));
    batch.push(ev(&token, "accepted", json!(0)));
    batch.push(ev(&token, "rating", json!(3)));
    let r = post(&server, &Value::Array(batch).to_string()).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let body = r.json();
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), cases.len() + 3);
    for (i, (_, status, _)) in cases.iter().enumerate() {
        assert_eq!(results[i]["result"], "rejected");
        assert_eq!(results[i]["status"], *status);
    }
    let n = cases.len();
    assert_eq!(results[n]["result"], "accepted");
    assert_eq!(results[n + 1]["result"], "duplicate");
    assert_eq!(results[n + 2]["result"], "accepted");
    assert_eq!(
        (
            body["accepted"].as_u64(),
            body["duplicate"].as_u64(),
            body["rejected"].as_u64()
        ),
        (Some(2), Some(1), Some(n as u64))
    );
    // Only the valid new events were counted.
    assert_eq!(arm_metric(&server, &arm, "accepted").await["n"], 1);
    assert_eq!(arm_metric(&server, &arm, "rating").await["n"], 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tokens_are_rejected() {
    let (v1, v2) = (
        FakeBackend::start("v1", Behaviour::Ok).await,
        FakeBackend::start("v2", Behaviour::Ok).await,
    );
    let server = start_abgate_opts(&config(&v1, &v2), None, Some(KEYS), &temp_state_dir()).await;
    let (token, _) = token_for(&server, "/p", &[("x-user-id", "carol")]).await;
    use base64::Engine;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let raw = engine.decode(&token).unwrap();
    // A flipped bit in the payload, then in the MAC.
    for pos in [5, raw.len() - 3] {
        let mut bad = raw.clone();
        bad[pos] ^= 0x01;
        let r = post(
            &server,
            &json!({"token": engine.encode(&bad), "metric": "accepted", "value": 1}).to_string(),
        )
        .await;
        assert_eq!(r.status, 401, "flip at {pos}");
    }
    // Another experiment's name spliced into a token with the original MAC.
    let text = String::from_utf8_lossy(&raw).into_owned();
    assert!(text.contains("exp"));
    let spliced: Vec<u8> = {
        let i = raw.windows(3).position(|w| w == b"exp").unwrap();
        let mut v = raw[..i - 1].to_vec();
        v.push(5);
        v.extend_from_slice(b"other");
        v.extend_from_slice(&raw[i + 3..]);
        v
    };
    let r = post(
        &server,
        &json!({"token": engine.encode(&spliced), "metric": "accepted", "value": 1}).to_string(),
    )
    .await;
    assert_eq!(r.status, 401);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_keys_keep_old_tokens_valid_and_sign_with_the_newest() {
    let (v1, v2) = (
        FakeBackend::start("v1", Behaviour::Ok).await,
        FakeBackend::start("v2", Behaviour::Ok).await,
    );
    let dir = temp_state_dir();
    let server = start_abgate_opts(&config(&v1, &v2), None, Some(KEYS), &dir).await;
    let (old_token, _) = token_for(&server, "/p", &[("x-user-id", "dave")]).await;
    server.shutdown().await;
    let rotated = format!("{KEYS},k2:fedcba9876543210fedcba9876");
    let server = start_abgate_opts(&config(&v1, &v2), None, Some(&rotated), &dir).await;
    let (new_token, _) = token_for(&server, "/p", &[("x-user-id", "dave")]).await;
    let keys = TokenKeys::parse(&rotated).unwrap();
    assert_eq!(keys.verify(&old_token).unwrap().key_id, "k1");
    assert_eq!(keys.verify(&new_token).unwrap().key_id, "k2");
    for t in [&old_token, &new_token] {
        let r = post(
            &server,
            &json!({"token": t, "metric": "accepted", "value": 1}).to_string(),
        )
        .await;
        assert_eq!(r.json()["result"], "accepted", "{:?}", r.body);
    }
    server.shutdown().await;
    // Dropping k1 after the window ends old tokens: unknown key.
    let server = start_abgate_opts(
        &config(&v1, &v2),
        None,
        Some("k2:fedcba9876543210fedcba9876"),
        &dir,
    )
    .await;
    let r = post(
        &server,
        &json!({"token": old_token, "metric": "rating", "value": 3}).to_string(),
    )
    .await;
    assert_eq!(r.status, 401);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_feedback_is_accepted_but_not_counted() {
    let (v1, v2) = (
        FakeBackend::start("v1", Behaviour::Ok).await,
        FakeBackend::start("v2", Behaviour::Ok).await,
    );
    let server = start_abgate_opts(&config(&v1, &v2), None, Some(KEYS), &temp_state_dir()).await;
    let (token, arm) = token_for(&server, "/p", &[("x-abgate-arm", "canary")]).await;
    assert_eq!(arm, "canary");
    assert!(
        TokenKeys::parse(KEYS)
            .unwrap()
            .verify(&token)
            .unwrap()
            .forced
    );
    let r = post(
        &server,
        &json!({"token": token, "metric": "accepted", "value": 1}).to_string(),
    )
    .await;
    assert_eq!(r.json()["result"], "accepted");
    assert_eq!(arm_metric(&server, "canary", "accepted").await["n"], 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_header_metrics_are_recorded_per_arm() {
    // The fake backend sets no x-backend-tokens; use the mock backend, which
    // reports x-model-output-tokens.
    let spec: abgate::lab::mock::MockSpec = "name=m,chunks=7".parse().unwrap();
    let mock = abgate::lab::mock::MockServer::start(spec, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let yaml = format!(
        r#"
backends: {{ m: {{ url: "{}" }} }}
experiments:
  - name: exp
    metrics: [ {{ name: out_tokens, source: response_header, header: x-model-output-tokens, type: continuous }} ]
    arms: [ {{ name: only, backend: m, weight: 100 }} ]
"#,
        mock.url()
    );
    let dir = temp_state_dir();
    let server = start_abgate_opts(&yaml, None, Some(KEYS), &dir).await;
    for _ in 0..3 {
        let a = admin_call(
            "POST",
            &format!("http://{}/predict", server.data_addr),
            None,
            &[],
            "{}",
        )
        .await;
        assert_eq!(a.status, 200);
        assert!(a.header("x-model-output-tokens").is_some());
    }
    let v = get(
        &client(),
        &format!("http://{}/v1/experiments/exp", server.admin_addr),
        &[],
    )
    .await
    .json();
    let m = &v["arms"][0]["metrics"]["out_tokens"];
    assert_eq!(m["n"], 3, "{m}");
    eventually(Duration::from_secs(2), "mean exported", || async {
        metric_value(
            &metrics(server.admin_addr).await,
            "abgate_metric_mean",
            &[("metric", "out_tokens")],
        ) > 0.0
    })
    .await;
    let mean = m["mean"].clone();
    server.shutdown().await;
    // Saved at shutdown, restored at startup.
    let server = start_abgate_opts(&yaml, None, Some(KEYS), &dir).await;
    let v = get(
        &client(),
        &format!("http://{}/v1/experiments/exp", server.admin_addr),
        &[],
    )
    .await
    .json();
    let after = &v["arms"][0]["metrics"]["out_tokens"];
    assert_eq!(
        (&after["n"], &after["mean"]),
        (&serde_json::json!(3), &mean),
        "{after}"
    );
    assert_eq!(v["arms"][0]["assigned"]["requests"], 3);
    server.shutdown().await;
}

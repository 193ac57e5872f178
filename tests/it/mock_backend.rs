//! Integration tests of the mock model backend over real loopback sockets.
//!
//! Statistical checks use fixed seeds (so they are deterministic for a sequential client) and
//! ±4σ binomial / normal tolerances, so they would also pass for other seeds with
//! probability > 99.99 %.

use std::time::{Duration, Instant};

use abgate::lab::mock::{LatencyDist, MockServer, MockSpec, RewardDist, StreamSpec};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinSet;

type TestClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

fn h2_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new())
}

async fn start(spec: MockSpec) -> MockServer {
    MockServer::start(spec, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("mock starts")
}

fn post(server: &MockServer, path: &str, body: &str) -> Request<Full<Bytes>> {
    Request::post(format!("{}{path}", server.url()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// Status, headers and body of one exchange, plus its wall time.
struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
    elapsed: Duration,
}

async fn send(client: &TestClient, req: Request<Full<Bytes>>) -> Answer {
    let t0 = Instant::now();
    let resp = client.request(req).await.expect("response");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
        elapsed: t0.elapsed(),
    }
}

/// Sends `n` chat requests with `concurrency` parallel senders.
async fn send_many(server: &MockServer, n: usize, concurrency: usize) -> Vec<Answer> {
    let client = client();
    let url = server.url();
    let mut set = JoinSet::new();
    for w in 0..concurrency {
        let (client, url) = (client.clone(), url.clone());
        let count = n / concurrency + usize::from(w < n % concurrency);
        set.spawn(async move {
            let mut out = Vec::with_capacity(count);
            for _ in 0..count {
                let req = Request::post(format!("{url}/v1/chat/completions"))
                    .body(Full::new(Bytes::from_static(b"{\"model\":\"m\"}")))
                    .unwrap();
                out.push(send(&client, req).await);
            }
            out
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(part) = set.join_next().await {
        all.extend(part.unwrap());
    }
    all
}

fn header<'a>(a: &'a Answer, name: &str) -> &'a str {
    a.headers.get(name).unwrap().to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honours_error_rate_within_4_sigma() {
    let server = start(MockSpec {
        name: "err".into(),
        error_rate: 0.2,
        seed: 11,
        ..MockSpec::default()
    })
    .await;
    let answers = send_many(&server, 2000, 8).await;
    let errors = answers
        .iter()
        .filter(|a| a.status == StatusCode::INTERNAL_SERVER_ERROR)
        .count();
    // Binomial(2000, 0.2): mean 400, sd 17.9 → ±4σ ≈ ±72.
    assert!((328..=472).contains(&errors), "errors = {errors}");
    assert_eq!(
        answers
            .iter()
            .filter(|a| a.status == StatusCode::OK)
            .count(),
        2000 - errors
    );
    let err = answers
        .iter()
        .find(|a| a.status == StatusCode::INTERNAL_SERVER_ERROR)
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&err.body).expect("500 body is JSON");
    assert!(body["error"]["message"].is_string());
    assert_eq!(header(err, "x-mock-backend"), "err");
    assert_eq!(
        server
            .stats()
            .errors
            .load(std::sync::atomic::Ordering::Relaxed),
        errors as u64
    );
    assert_eq!(server.requests_served(), 2000);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_latency_is_a_lower_bound() {
    let server = start(MockSpec {
        latency: LatencyDist::Fixed { ms: 30.0 },
        ..MockSpec::default()
    })
    .await;
    let answers = send_many(&server, 40, 8).await;
    for a in &answers {
        assert!(a.elapsed >= Duration::from_millis(30), "{:?}", a.elapsed);
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lognormal_latency_median_within_tolerance() {
    let server = start(MockSpec {
        latency: LatencyDist::LogNormal {
            median_ms: 20.0,
            sigma: 0.5,
        },
        seed: 3,
        ..MockSpec::default()
    })
    .await;
    let answers = send_many(&server, 400, 8).await;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    // The drawn service time (x-mock-latency-ms) must be honoured: the client never sees less.
    let drawn: Vec<f64> = answers
        .iter()
        .map(|a| header(a, "x-mock-latency-ms").parse().unwrap())
        .collect();
    for (a, d) in answers.iter().zip(&drawn) {
        assert!(
            a.elapsed.as_secs_f64() * 1000.0 >= d - 0.01,
            "{:?} < {d}",
            a.elapsed
        );
    }
    // The sample median of ln(latency) has sd ≈ 1.2533·σ/√n = 0.031; ±4σ ≈ ×/÷ 1.14.
    let drawn_median = median(drawn.clone());
    assert!(
        (20.0 / 1.14..=20.0 * 1.14).contains(&drawn_median),
        "drawn median {drawn_median:.2} ms"
    );
    // Client-side, the time over the draw is timer rounding plus scheduling,
    // which a busy 2-core machine stretches (the check above already holds
    // each request to at least its draw). The bound is loose so the test
    // stays deterministic under load; it still catches a mock that sleeps
    // a request's latency twice (+20 ms at the median) or more.
    let overshoot_median = median(
        answers
            .iter()
            .zip(&drawn)
            .map(|(a, d)| a.elapsed.as_secs_f64() * 1000.0 - d)
            .collect(),
    );
    assert!(
        overshoot_median < 19.0,
        "client-side median {overshoot_median:.2} ms over the drawn latency"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcome_and_reward_match_their_distributions() {
    let server = start(MockSpec {
        name: "canary".into(),
        outcome_p: 0.3,
        reward: RewardDist::Normal { mean: 1.0, sd: 0.2 },
        stream: StreamSpec {
            chunks: 7,
            token_delay_ms: 0.0,
        },
        seed: 5,
        ..MockSpec::default()
    })
    .await;
    let answers = send_many(&server, 1000, 8).await;
    let ones = answers
        .iter()
        .filter(|a| header(a, "x-mock-outcome") == "1")
        .count();
    // Binomial(1000, 0.3): mean 300, sd 14.5 → ±4σ = ±58.
    assert!((242..=358).contains(&ones), "outcome=1 count {ones}");
    let mean_reward = answers
        .iter()
        .map(|a| header(a, "x-mock-reward").parse::<f64>().unwrap())
        .sum::<f64>()
        / 1000.0;
    // sd of the mean = 0.2/√1000 = 0.0063 → ±4σ ≈ ±0.026.
    assert!(
        (mean_reward - 1.0).abs() < 0.026,
        "mean reward {mean_reward}"
    );
    for a in &answers {
        assert_eq!(header(a, "x-mock-backend"), "canary");
        assert_eq!(header(a, "x-model-output-tokens"), "7");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_chunk_by_chunk() {
    let server = start(MockSpec {
        stream: StreamSpec {
            chunks: 5,
            token_delay_ms: 100.0,
        },
        ..MockSpec::default()
    })
    .await;
    let resp = client()
        .request(post(
            &server,
            "/v1/chat/completions",
            r#"{"model":"m","stream":true,"messages":[]}"#,
        ))
        .await
        .unwrap();
    let headers_at = Instant::now();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let mut buf = String::new();
    let mut events: Vec<(Duration, String)> = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            buf.push_str(std::str::from_utf8(&data).unwrap());
            while let Some(end) = buf.find("\n\n") {
                let event = buf[..end].to_string();
                buf.drain(..end + 2);
                events.push((headers_at.elapsed(), event));
            }
        }
    }
    let total = headers_at.elapsed();
    assert_eq!(
        events.len(),
        7,
        "role chunk + 5 chunks + [DONE]: {events:?}"
    );
    assert!(
        events[0].0 < Duration::from_millis(80),
        "first event after {:?}",
        events[0].0
    );
    assert!(total >= Duration::from_millis(400), "total {total:?}");
    let role: serde_json::Value =
        serde_json::from_str(events[0].1.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(role["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(role["choices"][0]["delta"]["content"], "");
    for (i, (_, e)) in events[1..6].iter().enumerate() {
        let json: serde_json::Value =
            serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(json["object"], "chat.completion.chunk");
        assert_eq!(json["choices"][0]["delta"]["content"], format!("tok{i} "));
    }
    assert_eq!(events[6].1, "data: [DONE]");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_rate_one_breaks_the_connection() {
    let server = start(MockSpec {
        reset_rate: 1.0,
        ..MockSpec::default()
    })
    .await;
    let result = tokio::time::timeout(
        Duration::from_secs(5),
        client().request(post(&server, "/predict", "{}")),
    )
    .await
    .expect("reset is reported promptly, not as a hang");
    let err = result.expect_err("no response on a reset connection");
    assert!(!err.is_connect(), "the connect itself succeeded: {err:?}");
    assert_eq!(
        server
            .stats()
            .resets
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_unknown_paths_and_methods() {
    let server = start(MockSpec::default()).await;
    let c = client();
    let a = send(&c, post(&server, "/nope", "")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let body: serde_json::Value = serde_json::from_slice(&a.body).expect("404 body is JSON");
    assert_eq!(body["error"]["code"], 404);
    let get = |path: &str| {
        Request::get(format!("{}{path}", server.url()))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    assert_eq!(send(&c, get("/healthz")).await.status, StatusCode::OK);
    assert_eq!(
        send(&c, get("/v1/chat/completions")).await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kserve_predict_and_body_size() {
    let server = start(MockSpec {
        response_bytes: 2048,
        ..MockSpec::default()
    })
    .await;
    let c = client();
    let a = send(
        &c,
        post(
            &server,
            "/v2/models/resnet/infer",
            r#"{"id":"r1","inputs":[]}"#,
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(v["model_name"], "resnet");
    assert_eq!(v["id"], "r1");
    assert!((2000..=2100).contains(&a.body.len()), "{}", a.body.len());
    let a = send(&c, post(&server, "/predict", "not json at all")).await;
    assert_eq!(a.status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert!(v["prediction"].is_u64());
    let a = send(&c, post(&server, "/v1/chat/completions", "{}")).await;
    let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_type_relabels_successful_json_answers_only() {
    let server = start(MockSpec {
        content_type: Some("application/octet-stream".into()),
        response_bytes: 2048,
        ..MockSpec::default()
    })
    .await;
    let c = client();
    let a = send(&c, post(&server, "/v1/chat/completions", "{}")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["content-type"], "application/octet-stream");
    let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert!((2000..=2100).contains(&a.body.len()), "{}", a.body.len());
    server.shutdown().await.unwrap();
    let failing = start(MockSpec {
        content_type: Some("application/octet-stream".into()),
        error_rate: 1.0,
        ..MockSpec::default()
    })
    .await;
    let a = send(&c, post(&failing, "/v1/chat/completions", "{}")).await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(a.headers["content-type"], "application/json");
    failing.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_h2c() {
    let server = start(MockSpec::default()).await;
    let resp = h2_client()
        .request(post(&server, "/predict", "{}"))
        .await
        .expect("h2c response");
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_seed_same_decisions_for_a_sequential_client() {
    let spec = MockSpec {
        error_rate: 0.3,
        outcome_p: 0.5,
        reward: RewardDist::Normal { mean: 0.0, sd: 1.0 },
        seed: 99,
        ..MockSpec::default()
    };
    let mut runs = Vec::new();
    for _ in 0..2 {
        let server = start(spec.clone()).await;
        let c = client();
        let mut seq = Vec::new();
        for _ in 0..50 {
            let a = send(&c, post(&server, "/predict", "{}")).await;
            seq.push((
                a.status,
                header(&a, "x-mock-outcome").to_string(),
                header(&a, "x-mock-reward").to_string(),
            ));
        }
        server.shutdown().await.unwrap();
        runs.push(seq);
    }
    assert_eq!(runs[0], runs[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_the_port() {
    let server = start(MockSpec::default()).await;
    let addr = server.local_addr();
    server.shutdown().await.unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn refuses_non_loopback_bind() {
    let err = MockServer::start(MockSpec::default(), "0.0.0.0:0".parse().unwrap()).await;
    assert!(err.is_err());
}

/// The events of one SSE body, split at blank lines.
fn sse_events(body: &[u8]) -> Vec<serde_json::Value> {
    std::str::from_utf8(body)
        .unwrap()
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(|d| {
            if d == "[DONE]" {
                serde_json::json!("[DONE]")
            } else {
                serde_json::from_str(d).unwrap()
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_report_usage_a_delayed_first_token_truncations_and_length_cuts() {
    let server = start(MockSpec {
        stream: StreamSpec {
            chunks: 10,
            token_delay_ms: 0.0,
        },
        first_token_ms: 20.0,
        truncate_rate: 0.2,
        length_rate: 0.3,
        prompt_tokens: 40,
        tokens_jitter: 0.3,
        seed: 9,
        ..MockSpec::default()
    })
    .await;
    let c = client();
    let (mut truncated, mut length, mut sizes) = (0, 0, std::collections::BTreeSet::new());
    for i in 0..200 {
        // Every other request asks for the usage chunk.
        let ask = i % 2 == 0;
        let body = if ask {
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#
        } else {
            r#"{"model":"m","stream":true,"messages":[]}"#
        };
        let a = send(&c, post(&server, "/v1/chat/completions", body)).await;
        if i < 4 {
            assert!(a.elapsed >= Duration::from_millis(20), "{:?}", a.elapsed);
        }
        let events = sse_events(&a.body);
        assert_eq!(
            events[0]["choices"][0]["delta"]["content"], "",
            "role chunk first"
        );
        let content = events
            .iter()
            .filter(|e| {
                e["choices"][0]["delta"]["content"]
                    .as_str()
                    .is_some_and(|c| !c.is_empty())
            })
            .count() as u64;
        if events.last() != Some(&serde_json::json!("[DONE]")) {
            truncated += 1;
            assert!(events
                .iter()
                .all(|e| e["choices"][0]["finish_reason"].is_null()));
            assert!(events.iter().all(|e| e.get("usage").is_none()));
            continue;
        }
        sizes.insert(content);
        assert!((7..=13).contains(&content), "{content} tokens");
        let finish = events
            .iter()
            .find_map(|e| e["choices"][0]["finish_reason"].as_str())
            .unwrap();
        length += u32::from(finish == "length");
        let usage = events
            .iter()
            .find(|e| e["choices"] == serde_json::json!([]));
        match usage {
            Some(u) if ask => {
                assert_eq!(u["usage"]["prompt_tokens"], 40);
                assert_eq!(u["usage"]["completion_tokens"], content);
            }
            None if !ask => {}
            other => panic!("usage chunk {other:?} when asked: {ask}"),
        }
    }
    // Binomial(200, 0.2): ±4σ ≈ ±23; of ~160 complete streams, 30% ± 4σ ≈ ±23.
    assert!((17..=63).contains(&truncated), "{truncated} truncated");
    assert!((25..=73).contains(&length), "{length} cut by length");
    assert!(sizes.len() > 3, "token counts vary: {sizes:?}");
    // The JSON answer carries the same usage shape.
    let a = send(
        &c,
        post(&server, "/v1/chat/completions", r#"{"model":"m"}"#),
    )
    .await;
    let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(v["usage"]["prompt_tokens"], 40);
    assert_eq!(
        v["usage"]["completion_tokens"]
            .as_u64()
            .unwrap()
            .to_string(),
        a.headers["x-model-output-tokens"].to_str().unwrap()
    );
    server.shutdown().await.unwrap();
}

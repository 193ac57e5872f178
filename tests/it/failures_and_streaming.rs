//! Streaming, client disconnects, upstream failures, Host validation and the
//! exact counts `/metrics` reports for them.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::support::*;
use http_body_util::{BodyExt, Empty};

fn one_arm(url: &str, extra_backend: &str) -> String {
    format!(
        r#"
timeouts: {{ upstream_response: 300ms, upstream_connect: 500ms }}
backends:
  main: {{ url: "{url}" }}
  {extra_backend}
experiments:
  - name: exp
    match: {{ path_prefix: /x }}
    arms: [ {{ name: arm, backend: main, weight: 100 }} ]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_reach_the_client_as_they_are_produced() {
    let sse = FakeBackend::start(
        "sse",
        Behaviour::Sse {
            events: 5,
            every: Duration::from_millis(100),
        },
    )
    .await;
    let server = start_abgate(&one_arm(&sse.url(), "")).await;
    let c = client();
    let started = Instant::now();
    let resp = c
        .request(
            http::Request::get(format!("http://{}/x/stream", server.data_addr))
                .body(Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let mut arrivals = Vec::new();
    while let Some(frame) = body.frame().await {
        if frame.unwrap().is_data() {
            arrivals.push(started.elapsed());
        }
    }
    assert!(arrivals.len() >= 5, "{arrivals:?}");
    let (first, last) = (arrivals[0], *arrivals.last().unwrap());
    // The backend produces the last event ≥ 400 ms after the first; a buffering
    // proxy would deliver them together.
    assert!(
        last - first >= Duration::from_millis(350),
        "first {first:?}, last {last:?}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_disconnect_mid_stream_cancels_the_upstream_request() {
    let sse = FakeBackend::start(
        "sse",
        Behaviour::Sse {
            events: 50,
            every: Duration::from_millis(50),
        },
    )
    .await;
    let server = start_abgate(&one_arm(&sse.url(), "")).await;
    let c = client();
    let resp = c
        .request(
            http::Request::get(format!("http://{}/x/stream", server.data_addr))
                .body(Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = resp.into_body();
    body.frame().await.unwrap().unwrap();
    drop(body);
    drop(c);
    eventually(
        Duration::from_secs(5),
        "backend notices the cancelled stream",
        || async { sse.stream_cancelled.load(Ordering::SeqCst) },
    )
    .await;
    let addr = server.admin_addr;
    eventually(
        Duration::from_secs(5),
        "client_gone counted",
        || async move {
            metric_value(
                &metrics(addr).await,
                "abgate_upstream_errors_total",
                &[("kind", "client_gone")],
            ) == 1.0
        },
    )
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_duplicate_host_is_rejected_with_400() {
    let ok = FakeBackend::start("ok", Behaviour::Ok).await;
    let server = start_abgate(&one_arm(&ok.url(), "")).await;
    let limit = Duration::from_secs(5);
    let missing = raw(
        server.data_addr,
        b"GET /x HTTP/1.1\r\nconnection: close\r\n\r\n",
        limit,
    )
    .await;
    assert!(missing.starts_with("HTTP/1.1 400"), "{missing}");
    assert!(missing.contains("missing-host"), "{missing}");
    let dup = raw(
        server.data_addr,
        b"GET /x HTTP/1.1\r\nhost: a\r\nhost: b\r\nconnection: close\r\n\r\n",
        limit,
    )
    .await;
    assert!(dup.starts_with("HTTP/1.1 400"), "{dup}");
    assert!(dup.contains("duplicate-host"), "{dup}");
    // HTTP/1.0 may omit Host.
    let old = raw(server.data_addr, b"GET /x HTTP/1.0\r\n\r\n", limit).await;
    assert!(
        old.starts_with("HTTP/1.0 200") || old.starts_with("HTTP/1.1 200"),
        "{old}"
    );
    assert_eq!(
        ok.requests.load(Ordering::SeqCst),
        1,
        "rejected requests must not reach the backend"
    );
    let m = metrics(server.admin_addr).await;
    assert_eq!(
        metric_value(
            &m,
            "abgate_rejected_requests_total",
            &[("reason", "missing-host")]
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &m,
            "abgate_rejected_requests_total",
            &[("reason", "duplicate-host")]
        ),
        1.0
    );
    server.shutdown().await;
}

/// Starts abgate with one arm on `behaviour`, sends one request, checks the
/// status and that the failure is counted, then checks that a request to a
/// healthy backend still succeeds.
async fn failure_case(backend_url: String, expect_status: u16, expect_kind: &str) {
    let ok = FakeBackend::start("ok", Behaviour::Ok).await;
    let yaml = one_arm(
        &backend_url,
        &format!("healthy: {{ url: \"{}\" }}", ok.url()),
    ) + "default_backend: healthy\n";
    let server = start_abgate(&yaml).await;
    let c = client();
    let started = Instant::now();
    let a = get(&c, &format!("http://{}/x/1", server.data_addr), &[]).await;
    assert_eq!(a.status, expect_status, "{expect_kind}: {:?}", a.body);
    assert_eq!(a.header("content-type"), Some("application/problem+json"));
    assert_eq!(a.header("x-abgate-arm"), Some("arm"));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{expect_kind} took {:?}",
        started.elapsed()
    );
    let m = metrics(server.admin_addr).await;
    assert_eq!(
        metric_value(
            &m,
            "abgate_upstream_errors_total",
            &[("arm", "arm"), ("kind", expect_kind)]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_value(
            &m,
            "abgate_requests_total",
            &[("arm", "arm"), ("class", "5xx")]
        ),
        1.0
    );
    let next = get(&c, &format!("http://{}/healthy", server.data_addr), &[]).await;
    assert_eq!(next.status, 200);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upstream_is_a_502() {
    failure_case(
        format!("http://{}", closed_port().await),
        502,
        "connect_refused",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_upstream_is_a_504_after_the_response_timeout() {
    let hang = FakeBackend::start("hang", Behaviour::Hang).await;
    failure_case(hang.url(), 504, "response_timeout").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_upstream_is_a_502() {
    let bad = FakeBackend::start("bad", Behaviour::Garbage).await;
    failure_case(bad.url(), 502, "bad_response").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_mid_body_truncates_the_response_and_is_counted() {
    let reset = FakeBackend::start("reset", Behaviour::ResetMidBody).await;
    let ok = FakeBackend::start("ok", Behaviour::Ok).await;
    let yaml = one_arm(
        &reset.url(),
        &format!("healthy: {{ url: \"{}\" }}", ok.url()),
    ) + "default_backend: healthy\n";
    let server = start_abgate(&yaml).await;
    let c = client();
    let resp = c
        .request(
            http::Request::get(format!("http://{}/x/1", server.data_addr))
                .body(Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], "1000");
    let got = resp.into_body().collect().await;
    assert!(
        got.is_err(),
        "a truncated body must surface as an error to the client"
    );
    let addr = server.admin_addr;
    eventually(Duration::from_secs(5), "reset counted", || async move {
        let m = metrics(addr).await;
        metric_value(
            &m,
            "abgate_upstream_errors_total",
            &[("arm", "arm"), ("kind", "reset")],
        ) == 1.0
    })
    .await;
    let snap = server.shared.recorders.experiment("exp");
    assert_eq!(
        snap[0].assigned.errors, 1,
        "a reset mid-body is an error of the arm"
    );
    let next = get(&c, &format!("http://{}/healthy", server.data_addr), &[]).await;
    assert_eq!(next.status, 200);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_exactly_the_counts_produced() {
    let ok = FakeBackend::start("ok", Behaviour::Ok).await;
    let fail = FakeBackend::start("fail", Behaviour::Fail).await;
    let yaml = format!(
        r#"
backends: {{ ok: {{ url: "{}" }}, fail: {{ url: "{}" }} }}
experiments:
  - name: m
    unit: {{ header: x-user-id }}
    allow_override: true
    arms:
      - {{ name: good, backend: ok, weight: 50 }}
      - {{ name: bad, backend: fail, weight: 50 }}
"#,
        ok.url(),
        fail.url()
    );
    let server = start_abgate(&yaml).await;
    let c = client();
    let url = format!("http://{}/any", server.data_addr);
    for _ in 0..7 {
        assert_eq!(get(&c, &url, &[("x-abgate-arm", "good")]).await.status, 200);
    }
    for _ in 0..3 {
        assert_eq!(get(&c, &url, &[("x-abgate-arm", "bad")]).await.status, 500);
    }
    let addr = server.admin_addr;
    eventually(
        Duration::from_secs(5),
        "all latencies recorded",
        || async move {
            let m = metrics(addr).await;
            metric_value(
                &m,
                "abgate_request_duration_seconds_count",
                &[("experiment", "m")],
            ) == 10.0
        },
    )
    .await;
    let m = metrics(server.admin_addr).await;
    assert_eq!(
        metric_value(
            &m,
            "abgate_requests_total",
            &[("arm", "good"), ("class", "2xx")]
        ),
        7.0
    );
    assert_eq!(
        metric_value(
            &m,
            "abgate_requests_total",
            &[("arm", "bad"), ("class", "5xx")]
        ),
        3.0
    );
    assert_eq!(
        metric_value(
            &m,
            "abgate_requests_total",
            &[("arm", "good"), ("class", "5xx")]
        ),
        0.0
    );
    assert_eq!(metric_value(&m, "abgate_upstream_errors_total", &[]), 0.0);
    assert_eq!(
        metric_value(
            &m,
            "abgate_time_to_first_byte_seconds_count",
            &[("arm", "good")]
        ),
        7.0
    );
    assert!(
        m.contains("# TYPE abgate_request_duration_seconds histogram"),
        "{m}"
    );
    let health = get(&c, &format!("http://{}/healthz", server.admin_addr), &[]).await;
    assert_eq!(health.status, 200);
    let ready = get(&c, &format!("http://{}/readyz", server.admin_addr), &[]).await;
    assert_eq!(ready.json()["table_version"], 1);
    server.shutdown().await;
}

//! Limits and timeouts over raw sockets: every violation gets the right status
//! (or a close) within its configured time, is counted, and the next normal
//! request succeeds.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LIMIT: Duration = Duration::from_secs(5);

async fn server(backend: &str, extra: &str) -> abgate::server::RunningServer {
    start_abgate(&default_backend_config(backend, extra)).await
}

fn json_problem(resp: &str, status: &str, slug: &str) {
    assert!(
        resp.starts_with(&format!("HTTP/1.1 {status}")),
        "want {status}: {resp}"
    );
    assert!(
        resp.contains("application/problem+json"),
        "not a JSON problem: {resp}"
    );
    assert!(
        resp.contains(&format!("urn:abgate:problem:{slug}")),
        "want {slug}: {resp}"
    );
}

/// A raw HTTP/1.1 request with `n` extra headers.
fn with_headers(n: usize) -> Vec<u8> {
    let mut head = String::from("GET /a HTTP/1.1\r\nhost: x\r\nconnection: close\r\n");
    for i in 0..n {
        head.push_str(&format!("x-h{i}: v\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_counts_past_hypers_default_follow_the_configured_limit() {
    // Up to 100 headers hyper parses in place and abgate judges (JSON); the
    // default limit (100) leaves anything beyond to hyper's bare 431.
    let ok = RecordingBackend::start().await;
    let default = server(&ok.url(), "").await;
    let (resp, _) = raw_until_close(default.data_addr, &with_headers(95), LIMIT).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let (resp, _) = raw_until_close(default.data_addr, &with_headers(120), LIMIT).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    assert_still_serving(default.data_addr, "/").await;
    // A limit above hyper's default raises hyper's ceiling with it.
    let raised = server(&ok.url(), "limits: { max_header_count: 150 }").await;
    // (Forwarded: the test backend, hyper with its default ceiling, refuses it.)
    let (resp, _) = raw_until_close(raised.data_addr, &with_headers(140), LIMIT).await;
    assert!(resp.contains("upstream;dur="), "not forwarded: {resp}");
    assert!(!resp.contains("problem+json"), "refused by abgate: {resp}");
    let (resp, _) = raw_until_close(raised.data_addr, &with_headers(160), LIMIT).await;
    json_problem(&resp, "431", "too-many-headers");
    assert_still_serving(raised.data_addr, "/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_get_431_and_long_uris_414() {
    let ok = RecordingBackend::start().await;
    let s = server(
        &ok.url(),
        "limits: { max_header_count: 20, max_header_bytes: 8KiB, max_uri_bytes: 100 }",
    )
    .await;
    // Too many headers (but under hyper's ceiling).
    let (resp, _) = raw_until_close(s.data_addr, &with_headers(25), LIMIT).await;
    json_problem(&resp, "431", "too-many-headers");
    assert_still_serving(s.data_addr, "/").await;

    // One header larger than the head limit.
    let big = format!(
        "GET /a HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-big: {}\r\n\r\n",
        "v".repeat(10 * 1024)
    );
    let (resp, _) = raw_until_close(s.data_addr, big.as_bytes(), LIMIT).await;
    json_problem(&resp, "431", "headers-too-large");
    assert_still_serving(s.data_addr, "/").await;

    // Far past the limit: hyper's own buffer ceiling answers (bare 431) and closes.
    let huge = format!(
        "GET /a HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "v".repeat(40 * 1024)
    );
    let (resp, _) = raw_until_close(s.data_addr, huge.as_bytes(), LIMIT).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    assert_still_serving(s.data_addr, "/").await;

    let long = format!(
        "GET /{} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        "p".repeat(200)
    );
    let (resp, _) = raw_until_close(s.data_addr, long.as_bytes(), LIMIT).await;
    json_problem(&resp, "414", "uri-too-long");
    assert_still_serving(s.data_addr, "/").await;

    expect_rejected(s.admin_addr, "too-many-headers", 1.0).await;
    expect_rejected(s.admin_addr, "headers-too-large", 1.0).await;
    expect_rejected(s.admin_addr, "head-too-large", 1.0).await;
    expect_rejected(s.admin_addr, "uri-too-long", 1.0).await;
    assert_eq!(
        ok.paths(),
        vec!["/", "/", "/", "/"],
        "only the normal requests reached the backend"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_body_over_the_limit_is_413_before_any_byte_is_read() {
    let ok = RecordingBackend::start().await;
    let s = server(&ok.url(), "limits: { max_request_body_bytes: 1KiB }").await;
    let started = Instant::now();
    // No body bytes follow: the answer must not wait for them.
    let (resp, _) = raw_until_close(
        s.data_addr,
        b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 1073741824\r\n\r\n",
        LIMIT,
    )
    .await;
    json_problem(&resp, "413", "body-too-large");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(ok.paths().is_empty());
    // At the limit is fine.
    let (resp, _) = raw_until_close(
        s.data_addr,
        format!(
            "POST /a HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 1024\r\n\r\n{}",
            "b".repeat(1024)
        )
        .as_bytes(),
        LIMIT,
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    expect_rejected(s.admin_addr, "body-too-large", 1.0).await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_over_the_limit_is_cut_mid_stream_with_413() {
    let ok = RecordingBackend::start().await;
    let s = server(&ok.url(), "limits: { max_request_body_bytes: 1KiB }").await;
    let mut conn = TcpStream::connect(s.data_addr).await.unwrap();
    conn.write_all(b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = format!("200\r\n{}\r\n", "c".repeat(0x200));
    // 3 x 512 bytes > 1 KiB; abgate may answer and close before the last chunk.
    for _ in 0..3 {
        if conn.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(LIMIT, conn.read_to_end(&mut out)).await;
    let resp = String::from_utf8_lossy(&out);
    json_problem(&resp, "413", "body-too-large");
    assert_still_serving(s.data_addr, "/").await;
    expect_rejected(s.admin_addr, "body-too-large", 1.0).await;
    // The backend never got a complete oversized body.
    assert!(ok.seen.lock().unwrap().iter().all(|r| r.body_len <= 1024));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_gets_408_after_the_body_idle_timeout() {
    let ok = RecordingBackend::start().await;
    let s = server(&ok.url(), "timeouts: { request_body_idle: 300ms }").await;
    let (resp, took) = raw_until_close(
        s.data_addr,
        b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\nabc",
        LIMIT,
    )
    .await;
    json_problem(&resp, "408", "body-timeout");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_still_serving(s.data_addr, "/").await;
    expect_rejected(s.admin_addr, "body-timeout", 1.0).await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_idle_keepalive_connections_are_closed_after_header_read() {
    let ok = RecordingBackend::start().await;
    let s = server(&ok.url(), "timeouts: { header_read: 300ms }").await;
    // An unfinished head, never completed.
    let (_, took) =
        raw_until_close(s.data_addr, b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: ", LIMIT).await;
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
    expect_rejected(s.admin_addr, "header-read-timeout", 1.0).await;
    // A keep-alive connection that goes quiet after one request is closed too:
    // hyper restarts the head timer as soon as the connection is idle.
    let (resp, took) =
        raw_until_close(s.data_addr, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", LIMIT).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_still_serving(s.data_addr, "/").await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_idle_cuts_a_silent_stream_but_never_a_slow_alive_one() {
    // Alive: an event every 100 ms for 1 s, with a 300 ms idle limit.
    let alive = FakeBackend::start(
        "alive",
        Behaviour::Sse {
            events: 10,
            every: Duration::from_millis(100),
        },
    )
    .await;
    // Silent: one event, then nothing for 10 s.
    let silent = FakeBackend::start(
        "silent",
        Behaviour::Sse {
            events: 2,
            every: Duration::from_secs(10),
        },
    )
    .await;
    let yaml = format!(
        r#"
timeouts: {{ stream_idle: 300ms }}
backends:
  alive: {{ url: "{}" }}
  silent: {{ url: "{}" }}
experiments:
  - name: a
    match: {{ path_prefix: /alive }}
    arms: [ {{ name: a, backend: alive, weight: 100 }} ]
  - name: s
    match: {{ path_prefix: /silent }}
    arms: [ {{ name: s, backend: silent, weight: 100 }} ]
"#,
        alive.url(),
        silent.url()
    );
    let s = start_abgate(&yaml).await;
    let c = client();
    let resp = c
        .request(
            http::Request::get(format!("http://{}/alive", s.data_addr))
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("alive stream completes");
    assert_eq!(
        String::from_utf8_lossy(&body.to_bytes())
            .matches("data:")
            .count(),
        10
    );

    let started = Instant::now();
    let resp = c
        .request(
            http::Request::get(format!("http://{}/silent", s.data_addr))
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = resp.into_body().collect().await;
    assert!(
        got.is_err(),
        "a silent stream must be cut, not ended cleanly"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let admin = s.admin_addr;
    eventually(LIMIT, "stream idle counted", || async move {
        metric_value(
            &metrics(admin).await,
            "abgate_upstream_errors_total",
            &[("arm", "s"), ("kind", "response_timeout")],
        ) == 1.0
    })
    .await;
    s.shutdown().await;
}

/// A backend that streams 64 KiB chunks forever and notes when its client
/// (abgate) stops taking them.
async fn firehose() -> (String, Arc<AtomicBool>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cancelled = Arc::new(AtomicBool::new(false));
    let flag = cancelled.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let flag = flag.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let flag = flag.clone();
                    async move {
                        let (tx, rx) =
                            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
                        tokio::spawn(async move {
                            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                            while tx.send(Ok(Frame::data(chunk.clone()))).await.is_ok() {}
                            flag.store(true, Ordering::SeqCst);
                        });
                        let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
                        Ok::<_, Infallible>(hyper::Response::new(body))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), cancelled, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_disconnected_after_the_write_idle_timeout() {
    let (url, cancelled, task) = firehose().await;
    let s = server(&url, "timeouts: { downstream_write_idle: 300ms }").await;
    let mut conn = TcpStream::connect(s.data_addr).await.unwrap();
    conn.write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // Never read: the socket buffers fill, abgate's writes block, and after
    // 300 ms it must give up and let the backend go.
    eventually(LIMIT, "backend stream released", || async {
        cancelled.load(Ordering::SeqCst)
    })
    .await;
    expect_rejected(s.admin_addr, "downstream-write-timeout", 1.0).await;
    drop(conn);
    task.abort();
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_wait_for_a_free_slot() {
    let ok = RecordingBackend::start().await;
    let s = server(&ok.url(), "limits: { max_connections: 2 }").await;
    let hold1 = TcpStream::connect(s.data_addr).await.unwrap();
    let hold2 = TcpStream::connect(s.data_addr).await.unwrap();
    // Both held connections stay idle, holding their permits.
    let mut third = TcpStream::connect(s.data_addr).await.unwrap();
    third
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(300), third.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "the third connection was served past the limit"
    );
    drop(hold1);
    let mut out = Vec::new();
    tokio::time::timeout(LIMIT, third.read_to_end(&mut out))
        .await
        .expect("served once a slot is free")
        .unwrap();
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
    drop(hold2);
    let admin = s.admin_addr;
    eventually(LIMIT, "open connections gauge back to 0", || async move {
        metric_value(&metrics(admin).await, "abgate_downstream_connections", &[]) == 0.0
    })
    .await;
    s.shutdown().await;
}

#[test]
fn limit_and_timeout_errors_name_their_path_and_line() {
    let errs = abgate::config::parse(
        "limits:\n  max_header_bytes: 100\n  max_request_body_bytes: 10MB\n  max_conections: 5\ntimeouts:\n  stream_idle: 0\n  request_body_idle: soon\n",
    )
    .unwrap_err()
    .to_string();
    for want in [
        "limits.max_header_bytes: must be in 8192..=1048576, got 100 (line 2)",
        "limits.max_request_body_bytes: \"10MB\" has unknown unit \"MB\"; use KiB, MiB or GiB (line 3)",
        "limits.max_conections: unknown field",
        "timeouts.stream_idle: must be greater than zero (line 6)",
        "timeouts.request_body_idle:",
    ] {
        assert!(errs.contains(want), "missing {want:?} in:\n{errs}");
    }
    let ok = abgate::config::parse(
        "limits: { max_connections: 5, max_request_body_bytes: 1GiB, h2_max_concurrent_streams: 10 }\ntimeouts: { keepalive_idle: 2m, tls_handshake: 5s }\n",
    )
    .unwrap();
    assert_eq!(ok.limits.max_connections, 5);
    assert_eq!(ok.limits.max_request_body_bytes, 1 << 30);
    assert_eq!(ok.limits.h2_max_concurrent_streams, 10);
    assert_eq!(ok.timeouts.keepalive_idle, Duration::from_secs(120));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_steady_upload_is_not_a_504() {
    let ok = RecordingBackend::start().await;
    let s = server(
        &ok.url(),
        "timeouts: { upstream_response: 300ms, request_body_idle: 1s }",
    )
    .await;
    let mut conn = TcpStream::connect(s.data_addr).await.unwrap();
    conn.write_all(
        b"POST /up HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 8\r\n\r\n",
    )
    .await
    .unwrap();
    // A client on a slow link: one byte every 100 ms, 800 ms in all, longer
    // than upstream_response but never idle for request_body_idle.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        conn.write_all(b"u").await.unwrap();
    }
    let mut out = Vec::new();
    tokio::time::timeout(LIMIT, conn.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let resp = String::from_utf8_lossy(&out);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(ok.seen.lock().unwrap()[0].body_len, 8);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_feedback_body_gets_408_too() {
    let ok = RecordingBackend::start().await;
    let s = server(&ok.url(), "timeouts: { request_body_idle: 300ms }").await;
    let (resp, took) = raw_until_close(
        s.data_addr,
        b"POST /_abgate/v1/feedback HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"tok",
        LIMIT,
    )
    .await;
    json_problem(&resp, "408", "body-timeout");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_still_serving(s.data_addr, "/").await;
    expect_rejected(s.admin_addr, "body-timeout", 1.0).await;
    s.shutdown().await;
}

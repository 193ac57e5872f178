//! HTTP/2 on both sides: h2c prior knowledge from clients, the concurrent-stream
//! limit, and h2c to backends with trailers passed through (what gRPC needs).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, Version};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

fn h2_client() -> HttpClient {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_with_prior_knowledge_is_served() {
    let rec = RecordingBackend::start().await;
    let s = start_abgate(&default_backend_config(&rec.url(), "")).await;
    let c = h2_client();
    let resp = c
        .request(
            Request::get(format!("http://{}/h2", s.data_addr))
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"rec");
    // The default upstream protocol is HTTP/1.1.
    assert_eq!(rec.seen.lock().unwrap()[0].version, Version::HTTP_11);
    s.shutdown().await;
}

/// A backend that holds each request for `hold` and records the peak number
/// of requests it had in flight at once.
async fn slow_backend(hold: Duration) -> (String, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let current = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let p = peak.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (current, peak) = (current.clone(), p.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| {
                    let (current, peak) = (current.clone(), peak.clone());
                    async move {
                        let now = current.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(hold).await;
                        current.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(Response::new(http_body_util::Full::new(Bytes::from(
                            "slow",
                        ))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), peak, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_streams_on_one_connection_respect_a_limit_of_100() {
    let (url, peak, task) = slow_backend(Duration::from_millis(200)).await;
    let s = start_abgate(&default_backend_config(
        &url,
        "limits: { h2_max_concurrent_streams: 100 }",
    ))
    .await;
    // Exactly one TCP connection carries all 200 streams.
    let tcp = TcpStream::connect(s.data_addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let conn_task = tokio::spawn(conn);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let mut sender = sender.clone();
        let url = format!("http://{}/s/{i}", s.data_addr);
        tasks.push(tokio::spawn(async move {
            sender.ready().await.ok()?;
            let resp = sender
                .send_request(Request::get(url).body(Empty::new()).unwrap())
                .await;
            match resp {
                Ok(r) => Some(Ok(r.status().as_u16())),
                // REFUSED_STREAM is a clean answer too; anything else is not.
                Err(e) => Some(Err(e.to_string())),
            }
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Some(Ok(200)) => ok += 1,
            Some(Err(e)) if e.contains("refused") => refused += 1,
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!(ok + refused, 200);
    assert!(ok >= 100, "ok {ok}, refused {refused}");
    let peak = peak.load(Ordering::SeqCst);
    assert!(
        peak <= 100,
        "backend saw {peak} requests in flight from one h2 connection"
    );
    assert!(!conn_task.is_finished(), "the connection must survive");
    assert_still_serving(s.data_addr, "/after").await;
    task.abort();
    s.shutdown().await;
}

/// An h2c-only backend that answers with a body and gRPC-style trailers, and
/// records whether `te: trailers` reached it.
async fn grpc_like_backend() -> (String, Arc<AtomicBool>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let saw_te = Arc::new(AtomicBool::new(false));
    let flag = saw_te.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let flag = flag.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let flag = flag.clone();
                    async move {
                        assert_eq!(req.version(), Version::HTTP_2);
                        if req.headers().get("te").is_some_and(|v| v == "trailers") {
                            flag.store(true, Ordering::SeqCst);
                        }
                        let mut trailers = HeaderMap::new();
                        trailers.insert("grpc-status", HeaderValue::from_static("0"));
                        let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
                            Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x02hi"))),
                            Ok(Frame::trailers(trailers)),
                        ];
                        let body = StreamBody::new(futures_stream(frames));
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("content-type", "application/grpc")
                                .body(body)
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), saw_te, task)
}

fn futures_stream<T: Send + 'static>(items: Vec<T>) -> tokio_stream::Iter<std::vec::IntoIter<T>> {
    tokio_stream::iter(items)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_backend_gets_te_trailers_and_its_trailers_reach_the_client() {
    let (url, saw_te, task) = grpc_like_backend().await;
    let yaml = format!(
        "backends:\n  grpc: {{ url: \"{url}\", protocol: http2 }}\ndefault_backend: grpc\n"
    );
    let s = start_abgate(&yaml).await;
    let c = h2_client();
    let resp = c
        .request(
            Request::post(format!("http://{}/pkg.Svc/Method", s.data_addr))
                .header("te", "trailers")
                .header("content-type", "application/grpc")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected
        .trailers()
        .cloned()
        .expect("trailers passed through");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(&collected.to_bytes()[..], b"\0\0\0\0\x02hi");
    assert!(saw_te.load(Ordering::SeqCst), "te: trailers was stripped");
    // A plain HTTP/1.1 client works through the h2 upstream too.
    let a = get(&client(), &format!("http://{}/plain", s.data_addr), &[]).await;
    assert_eq!(a.status, 200);
    task.abort();
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_keepalive_idle_but_long_streams_are_not() {
    let sse = FakeBackend::start(
        "sse",
        Behaviour::Sse {
            events: 8,
            every: Duration::from_millis(100),
        },
    )
    .await;
    let s = start_abgate(&default_backend_config(
        &sse.url(),
        "timeouts: { keepalive_idle: 300ms, header_read: 10s }",
    ))
    .await;
    let limit = Duration::from_secs(5);

    // HTTP/2: a stream of ~800 ms (longer than the idle limit) is activity.
    let tcp = TcpStream::connect(s.data_addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let conn_task = tokio::spawn(conn);
    let resp = sender
        .send_request(
            Request::get(format!("http://{}/stream", s.data_addr))
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let body = resp.into_body().collect().await.expect("stream not cut");
    assert_eq!(
        String::from_utf8_lossy(&body.to_bytes())
            .matches("data:")
            .count(),
        8
    );
    // Then idle: abgate sends GOAWAY and the connection ends cleanly.
    let started = std::time::Instant::now();
    tokio::time::timeout(limit, conn_task)
        .await
        .expect("idle h2 connection closed")
        .unwrap()
        .expect("closed gracefully");
    assert!(started.elapsed() < Duration::from_secs(3));

    // HTTP/1: closed after keepalive_idle even though header_read is longer.
    let (resp, took) = raw_until_close(
        s.data_addr,
        b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n",
        limit,
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_still_serving(s.data_addr, "/after").await;
    s.shutdown().await;
}

/// Writes one HTTP/2 frame header plus payload.
fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_flood_is_cut_with_goaway_and_others_are_still_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rec = RecordingBackend::start().await;
    let s = start_abgate(&default_backend_config(&rec.url(), "")).await;
    // CVE-2023-44487: open streams and cancel them at once, thousands per write.
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut bytes, 0x4, 0, 0, &[]); // SETTINGS
                                       // HPACK: :method GET, :scheme http, :path /, :authority "x" (not indexed).
    let headers = [0x82, 0x86, 0x84, 0x01, 0x01, b'x'];
    for i in 0..2000u32 {
        let id = 2 * i + 1;
        frame(&mut bytes, 0x1, 0x5, id, &headers); // HEADERS, END_STREAM|END_HEADERS
        frame(&mut bytes, 0x3, 0, id, &8u32.to_be_bytes()); // RST_STREAM CANCEL
    }
    let mut conn = TcpStream::connect(s.data_addr).await.unwrap();
    // abgate may close mid-write once it has seen enough.
    let _ = conn.write_all(&bytes).await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut got)).await;
    // Find a GOAWAY (type 7) and read its error code.
    let mut at = 0;
    let mut goaway = None;
    while at + 9 <= got.len() {
        let len = u32::from_be_bytes([0, got[at], got[at + 1], got[at + 2]]) as usize;
        if got[at + 3] == 0x7 && at + 9 + 8 <= got.len() {
            let p = &got[at + 9..];
            goaway = Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
        }
        at += 9 + len;
    }
    // ENHANCE_YOUR_CALM (0xb): h2's pending-accept reset limit tripped.
    assert_eq!(
        goaway,
        Some(0xb),
        "no GOAWAY(ENHANCE_YOUR_CALM) in {} bytes",
        got.len()
    );
    assert_still_serving(s.data_addr, "/after").await;
    assert!(
        rec.paths().len() < 2000,
        "every flooded stream reached the backend"
    );
    s.shutdown().await;
}

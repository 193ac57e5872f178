//! Integration tests of the load driver against tiny local fake servers and the mock backend.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use abgate::lab::loadgen::{
    run, run_with_progress, run_workload, LoadError, LoadMode, LoadProgress, LoadSpec, Protocol,
    Reply, RequestKind, WorkRequest, Workload,
};
use abgate::lab::mock::{LatencyDist, MockServer, MockSpec, StreamSpec};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// What the fake proxy does with request number `n` (0-based, in arrival order).
#[derive(Default)]
struct FakeBehaviour {
    /// Sleep this long before answering request `stall_index`.
    stall_index: Option<u64>,
    stall: Duration,
    /// Sleep this long before answering every request.
    every_delay: Duration,
    /// Emulate abgate: arm/token/server-timing headers and 503s (see `fake_response`).
    proxy_headers: bool,
}

#[derive(Default)]
struct FakeState {
    hits: AtomicU64,
    feedback_events: AtomicU64,
    behaviour: FakeBehaviour,
}

/// Starts a fake server on 127.0.0.1:0; it lives until the test's runtime shuts down.
async fn fake_server(behaviour: FakeBehaviour) -> (SocketAddr, Arc<FakeState>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(FakeState {
        behaviour,
        ..FakeState::default()
    });
    let st = state.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let st = st.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let st = st.clone();
                    async move { Ok::<_, Infallible>(fake_handle(req, &st).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, state)
}

async fn fake_handle(req: Request<Incoming>, st: &FakeState) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    if path == "/_abgate/v1/feedback" {
        let events: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
        for e in &events {
            assert_eq!(e["metric"], "accepted");
            assert!(e["token"].as_str().unwrap().starts_with("tok-"));
            assert!(e["value"] == 0 || e["value"] == 1, "{e}");
        }
        st.feedback_events
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        let results: Vec<_> = events
            .iter()
            .map(|_| serde_json::json!({"ok": true}))
            .collect();
        return Response::new(Full::new(Bytes::from(
            serde_json::json!({ "results": results }).to_string(),
        )));
    }
    let n = st.hits.fetch_add(1, Ordering::Relaxed);
    let b = &st.behaviour;
    if b.stall_index == Some(n) {
        tokio::time::sleep(b.stall).await;
    }
    if !b.every_delay.is_zero() {
        tokio::time::sleep(b.every_delay).await;
    }
    fake_response(n, b.proxy_headers)
}

/// With proxy headers: n % 3 == 0 → arm "B" (503 when n % 30 == 0), n % 3 == 1 → arm "A",
/// n % 3 == 2 → no arm, only `x-mock-backend: direct`. Arms carry a token and server-timing.
fn fake_response(n: u64, proxy_headers: bool) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}")));
    if !proxy_headers {
        return resp;
    }
    let h = resp.headers_mut();
    h.insert("x-mock-outcome", (n % 2).into());
    match n % 3 {
        2 => {
            h.insert("x-mock-backend", "direct".parse().unwrap());
            return resp;
        }
        0 => h.insert("x-abgate-arm", "B".parse().unwrap()),
        _ => h.insert("x-abgate-arm", "A".parse().unwrap()),
    };
    h.insert("x-abgate-token", format!("tok-{n}").parse().unwrap());
    h.insert(
        "server-timing",
        "abgate;dur=2, upstream;dur=5".parse().unwrap(),
    );
    if n.is_multiple_of(30) {
        *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    }
    resp
}

fn spec_for(addr: SocketAddr) -> LoadSpec {
    let mut spec = LoadSpec::new(format!("http://{addr}"));
    spec.kind = RequestKind::Predict;
    spec.request_timeout = Duration::from_secs(5);
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_counts_queueing_delay_no_coordinated_omission() {
    // Request #20 stalls 250 ms; with one connection the ~50 requests scheduled meanwhile
    // queue behind it. Measured from their *scheduled* times they are slow too.
    let (addr, state) = fake_server(FakeBehaviour {
        stall_index: Some(20),
        stall: Duration::from_millis(250),
        ..FakeBehaviour::default()
    })
    .await;
    let mut spec = spec_for(addr);
    spec.mode = LoadMode::OpenLoop {
        rate_per_s: 200.0,
        connections: 1,
        max_in_flight: 1000,
    };
    spec.max_requests = 200;
    spec.max_duration = Duration::from_secs(1);
    let report = run(spec).await.unwrap();
    println!("{report}");
    assert_eq!(report.requests_completed, 200, "{report}");
    assert_eq!(state.hits.load(Ordering::Relaxed), 200);
    assert!(report.latency_ms.max >= 240.0, "{report}");
    assert!(report.latency_ms.p99 >= 150.0, "{report}");
    // Service time is ~0 for all but one request, so only queueing can push p90 up: a
    // send-time-based (coordinated-omission) measurement would report p90 of ~1 ms.
    assert!(report.latency_ms.p90 >= 100.0, "{report}");
    assert!(report.latency_ms.p50 < 50.0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_tallies_arms_5xx_feedback_and_server_timing() {
    let (addr, state) = fake_server(FakeBehaviour {
        proxy_headers: true,
        ..FakeBehaviour::default()
    })
    .await;
    let mut spec = spec_for(addr);
    spec.mode = LoadMode::ClosedLoop { connections: 4 };
    spec.max_requests = 300;
    spec.feedback.fraction = 1.0;
    let report = run(spec).await.unwrap();
    assert_eq!(report.requests_completed, 300, "{report}");
    assert_eq!(report.arms["B"].responses, 100);
    assert_eq!(report.arms["B"].status_5xx, 10);
    assert_eq!(report.arms["A"].responses, 100);
    assert_eq!(report.arms["A"].status_5xx, 0);
    assert_eq!(report.arms["direct"].responses, 100);
    assert_eq!(report.errors.status_5xx, 10);
    assert_eq!(report.requests_ok, 290);
    // Tokened 2xx responses: arm B 90 + arm A 100; all get feedback at fraction 1.
    assert_eq!(report.feedback.posted, 190, "{report}");
    assert_eq!(report.feedback.accepted, 190);
    assert_eq!(report.feedback.rejected, 0);
    assert_eq!(state.feedback_events.load(Ordering::Relaxed), 190);
    assert_eq!(report.abgate_server_timing_mean_ms, Some(2.0));
    assert_eq!(report.abgate_server_timing_samples, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_is_respected_exactly() {
    let (addr, state) = fake_server(FakeBehaviour::default()).await;
    let mut spec = spec_for(addr);
    spec.mode = LoadMode::ClosedLoop { connections: 8 };
    spec.max_requests = 137;
    let report = run(spec.clone()).await.unwrap();
    assert_eq!(report.requests_sent, 137);
    assert_eq!(state.hits.load(Ordering::Relaxed), 137);

    spec.mode = LoadMode::OpenLoop {
        rate_per_s: 1000.0,
        connections: 4,
        max_in_flight: 100,
    };
    spec.max_requests = 50;
    let t0 = Instant::now();
    let report = run(spec).await.unwrap();
    assert_eq!(report.requests_sent, 50);
    assert_eq!(state.hits.load(Ordering::Relaxed), 187);
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_duration_stops_the_run() {
    let (addr, _state) = fake_server(FakeBehaviour::default()).await;
    let mut spec = spec_for(addr);
    spec.mode = LoadMode::OpenLoop {
        rate_per_s: 100.0,
        connections: 2,
        max_in_flight: 100,
    };
    spec.max_requests = 1_000_000;
    spec.max_duration = Duration::from_millis(300);
    let t0 = Instant::now();
    let report = run(spec).await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    // Arrivals at 0, 10, ..., 290 ms.
    assert_eq!(report.requests_scheduled, 30, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_beyond_max_in_flight_is_overloaded() {
    let (addr, _state) = fake_server(FakeBehaviour {
        every_delay: Duration::from_millis(200),
        ..FakeBehaviour::default()
    })
    .await;
    let mut spec = spec_for(addr);
    spec.mode = LoadMode::OpenLoop {
        rate_per_s: 100.0,
        connections: 1,
        max_in_flight: 2,
    };
    spec.max_requests = 50;
    spec.max_duration = Duration::from_millis(500);
    spec.request_timeout = Duration::from_secs(2);
    let report = run(spec).await.unwrap();
    assert_eq!(report.requests_scheduled, 50, "{report}");
    assert!(report.errors.overloaded >= 40, "{report}");
    assert_eq!(
        report.requests_scheduled,
        report.requests_sent + report.errors.overloaded
    );
}

#[tokio::test]
async fn non_loopback_targets_are_refused() {
    for target in [
        "http://10.1.2.3:8080",
        "http://example.com",
        "http://0.0.0.0:80",
    ] {
        let err = run(LoadSpec::new(target)).await.unwrap_err();
        assert!(matches!(err, LoadError::NonLoopback(_)), "{target}: {err}");
    }
    let mut spec = LoadSpec::new("http://127.0.0.1:1");
    spec.feedback.fraction = 0.1;
    spec.feedback.url = Some("http://8.8.8.8/_abgate/v1/feedback".into());
    assert!(matches!(
        run(spec).await.unwrap_err(),
        LoadError::NonLoopback(_)
    ));
}

#[tokio::test]
async fn connection_refused_is_a_connect_error() {
    // Bind then drop to get a port that is (almost certainly) closed.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let mut spec = spec_for(addr);
    spec.max_requests = 5;
    let report = run(spec).await.unwrap();
    assert_eq!(report.errors.connect, 5, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streaming_against_the_mock_with_progress() {
    let mock = MockServer::start(
        MockSpec {
            name: "canary".into(),
            latency: LatencyDist::Fixed { ms: 5.0 },
            stream: StreamSpec {
                chunks: 4,
                token_delay_ms: 10.0,
            },
            ..MockSpec::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let mut spec = LoadSpec::new(mock.url());
    spec.kind = RequestKind::ChatStream;
    spec.protocol = Protocol::H2;
    spec.mode = LoadMode::ClosedLoop { connections: 8 };
    spec.max_requests = 80;
    let (tx, rx) = tokio::sync::watch::channel(LoadProgress::default());
    let report = run_with_progress(spec, tx).await.unwrap();
    assert_eq!(report.requests_ok, 80, "{report}");
    assert_eq!(report.arms["canary"].responses, 80);
    // Headers after 5 ms, first token at once, then 3 × 10 ms more.
    assert!(report.ttfb_ms.p50 >= 5.0, "{report}");
    assert!(report.latency_ms.p50 >= 35.0, "{report}");
    assert!(
        report.latency_ms.p50 > report.ttfb_ms.p50 + 25.0,
        "{report}"
    );
    let last = rx.borrow().clone();
    assert!(last.done);
    assert_eq!(last.completed, 80);
    assert_eq!(last.in_flight, 0);
    assert_eq!(mock.requests_served(), 80);
    mock.shutdown().await.unwrap();
}

/// Sends `items` requests, then has nothing left; keeps every answer's body.
struct Numbered {
    items: u64,
    taken: AtomicU64,
    bodies: std::sync::Mutex<Vec<(u64, u16, Vec<u8>)>>,
}

impl Numbered {
    fn new(items: u64) -> Arc<Numbered> {
        Arc::new(Numbered {
            items,
            taken: AtomicU64::new(0),
            bodies: std::sync::Mutex::new(Vec::new()),
        })
    }
}

impl Workload for Numbered {
    fn request(&self, index: u64) -> Option<WorkRequest> {
        if self.taken.fetch_add(1, Ordering::Relaxed) >= self.items {
            return None;
        }
        Some(WorkRequest {
            path: format!("/work/{index}?n={index}").parse().unwrap(),
            body: Bytes::from_static(b"{}"),
            user: index.is_multiple_of(2).then_some(index),
            read_body: true,
        })
    }

    fn response(&self, index: u64, reply: &Reply<'_>) {
        self.bodies
            .lock()
            .unwrap()
            .push((index, reply.status, reply.body.to_vec()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_decides_requests_sees_answers_and_ends_the_run() {
    let (addr, state) = fake_server(FakeBehaviour::default()).await;
    let mut spec = spec_for(addr);
    spec.mode = LoadMode::ClosedLoop { connections: 3 };
    spec.max_requests = 1000;
    let work = Numbered::new(25);
    let report = run_workload(spec, work.clone()).await.unwrap();
    assert_eq!(report.requests_sent, 25, "{report}");
    assert_eq!(report.requests_scheduled, 25, "{report}");
    assert_eq!(report.url, format!("http://{addr}"));
    assert_eq!(state.hits.load(Ordering::Relaxed), 25);
    {
        let bodies = work.bodies.lock().unwrap();
        assert_eq!(bodies.len(), 25);
        assert!(bodies
            .iter()
            .all(|(_, status, body)| *status == 200 && body == b"{\"ok\":true}"));
    }

    // Open loop: running out ends scheduling long before the time bound.
    let mut spec = spec_for(addr);
    spec.mode = LoadMode::OpenLoop {
        rate_per_s: 200.0,
        connections: 4,
        max_in_flight: 100,
    };
    spec.max_requests = 10_000;
    spec.max_duration = Duration::from_secs(20);
    let started = Instant::now();
    let report = run_workload(spec, Numbered::new(10)).await.unwrap();
    assert_eq!(report.requests_sent, 10, "{report}");
    assert!(started.elapsed() < Duration::from_secs(5), "{report}");
}

//! The web page's server side over real sockets: the page and its assets
//! with their security headers, the history series (after looks, across a
//! restart), and the event stream (a decision arrives; a client that never
//! reads is dropped and its connection closed).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;
use abgate::lab::loadgen::{LoadMode, RequestKind};
use abgate::lab::mock::MockServer;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Open-loop load in the background (aborted when the test has its answer).
pub fn background_load(
    target: std::net::SocketAddr,
    rate: f64,
    seconds: u64,
) -> tokio::task::JoinHandle<()> {
    let mut spec = open_loop(target, RequestKind::Predict, rate, seconds);
    spec.mode = LoadMode::OpenLoop {
        rate_per_s: rate,
        connections: 16,
        max_in_flight: 256,
    };
    spawn_load(spec)
}

/// A canary whose error guardrail the controller looks at every 200 ms.
pub fn error_canary(stable: &MockServer, canary: &MockServer) -> String {
    CanaryYaml {
        guardrails: "        - { metric: error, max_relative_increase: 0.10 }",
        ..CanaryYaml::default()
    }
    .render(&stable.url(), &canary.url())
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_with_a_strict_csp() {
    let (a, b) = two_backends().await;
    let server = start_abgate(&two_arm(&a, &b, 10)).await;
    let c = client();
    for (path, ty) in [
        ("/ui", "text/html; charset=utf-8"),
        ("/ui/", "text/html; charset=utf-8"),
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/app.css", "text/css; charset=utf-8"),
        ("/ui/uPlot.iife.min.js", "text/javascript; charset=utf-8"),
        ("/ui/uPlot.min.css", "text/css; charset=utf-8"),
        ("/ui/LICENSE.uPlot.txt", "text/plain; charset=utf-8"),
    ] {
        let r = get(&c, &format!("http://{}{path}", server.admin_addr), &[]).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some(ty), "{path}");
        assert_eq!(r.header("content-security-policy"), Some(CSP), "{path}");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert!(!r.body.is_empty(), "{path}");
    }
    let page = get(&c, &format!("http://{}/ui", server.admin_addr), &[]).await;
    let html = String::from_utf8(page.body.to_vec()).unwrap();
    assert!(!html.contains("style="), "no inline style attribute");
    assert!(!html.contains("<style"), "no inline style element");
    for script in html.split("<script").skip(1) {
        assert!(
            script.trim_start().starts_with("src=\"/ui/"),
            "only scripts from the listener itself: <script{script}"
        );
    }
    let missing = get(&c, &format!("http://{}/ui/nope.js", server.admin_addr), &[]).await;
    assert_eq!(missing.status, 404);
    let post = admin_call(
        "POST",
        &format!("http://{}/ui", server.admin_addr),
        None,
        &[],
        "",
    )
    .await;
    assert_eq!(post.status, 405);
    // Not on the data plane.
    let data = get(&c, &format!("http://{}/ui", server.data_addr), &[]).await;
    assert_ne!(
        data.header("content-security-policy"),
        Some(CSP),
        "the page is served on the admin listener only"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn history_of_an_unknown_experiment_is_404() {
    let (a, b) = two_backends().await;
    let server = start_abgate(&two_arm(&a, &b, 10)).await;
    let r = get(
        &client(),
        &format!("http://{}/v1/experiments/nope/history", server.admin_addr),
        &[],
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json()["type"]
            .as_str()
            .map(|t| t.ends_with("unknown-experiment")),
        Some(true),
        "{}",
        r.json()
    );
    server.shutdown().await;
}

async fn history(admin: std::net::SocketAddr) -> serde_json::Value {
    let r = get(
        &client(),
        &format!("http://{admin}/v1/experiments/exp/history"),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json());
    r.json()
}

/// (series name → points) of a history answer.
fn series_points(h: &serde_json::Value) -> Vec<(String, Vec<serde_json::Value>)> {
    h["series"]
        .as_array()
        .expect("history has series")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["points"].as_array().unwrap().clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_has_series_points_after_looks_and_keeps_them_across_a_restart() {
    let _load = decision_load().await;
    let stable = mock("name=stable,error_rate=0.02,latency=fixed:1,seed=1").await;
    let canary = mock("name=canary,error_rate=0.02,latency=fixed:1,seed=2").await;
    let yaml = error_canary(&stable, &canary);
    let dir = temp_state_dir();
    let server = start_abgate_opts(&yaml, None, None, &dir).await;
    let traffic = background_load(server.data_addr, 300.0, 60);
    let admin = server.admin_addr;
    let mut before = Vec::new();
    eventually(
        Duration::from_secs(40),
        "comparison and arm points",
        || async move {
            let h = history(admin).await;
            let s = series_points(&h);
            let cmp = s
                .iter()
                .any(|(n, p)| n.starts_with("guardrail:error:") && p.len() >= 3);
            let arm = s.iter().any(|(n, p)| n == "arm:canary" && p.len() >= 2);
            cmp && arm
        },
    )
    .await;
    let h = history(admin).await;
    // The lineage the history always had is still there.
    assert!(
        h["lineage"].as_array().is_some_and(|l| !l.is_empty()),
        "{h}"
    );
    let cmp = h["series"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "comparison")
        .unwrap()
        .clone();
    assert_eq!(cmp["role"], "guardrail");
    assert_eq!(cmp["metric"], "error");
    assert_eq!(cmp["arm"], "canary");
    let fields: Vec<&str> = cmp["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    for f in ["estimate", "lo", "hi", "p_value", "threshold", "tolerance"] {
        assert!(fields.contains(&f), "{fields:?}");
    }
    let p = &cmp["points"][0];
    assert_eq!(p.as_array().unwrap().len(), fields.len() + 1, "{p}");
    let tol = fields.iter().position(|f| *f == "tolerance").unwrap() + 1;
    assert!(
        (p[tol].as_f64().unwrap() - 1.10).abs() < 1e-9,
        "an error guardrail's rate ratio must stay below 1 + margin: {p}"
    );
    before.extend(series_points(&h));
    traffic.abort();
    server.shutdown().await;

    let again = start_abgate_opts(&yaml, None, None, &dir).await;
    let after = series_points(&history(again.admin_addr).await);
    for (name, points) in &before {
        let (_, kept) = after
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("series {name} is gone after the restart"));
        assert!(
            kept.len() >= points.len(),
            "{name}: {} points before, {} after",
            points.len(),
            kept.len()
        );
        assert_eq!(kept[0], points[0], "{name}: the run's start is kept");
    }
    again.shutdown().await;
}

/// Opens `GET /v1/events` on a raw socket; returns it after the head.
async fn open_events(admin: std::net::SocketAddr) -> (TcpStream, String) {
    let mut s = TcpStream::connect(admin).await.unwrap();
    s.write_all(
        format!("GET /v1/events HTTP/1.1\r\nHost: {admin}\r\nAccept: text/event-stream\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("the stream's head")
            .unwrap();
        assert!(n > 0, "closed before the head");
        got.extend_from_slice(&buf[..n]);
    }
    (s, String::from_utf8_lossy(&got).to_string())
}

#[tokio::test]
async fn the_event_stream_delivers_a_decision() {
    let (a, b) = two_backends().await;
    let server = start_abgate(&two_arm(&a, &b, 10)).await;
    let admin = server.admin_addr;
    let (mut s, head) = open_events(admin).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );
    // The sampler has seen the decisions before the subscriber (its first
    // tick); a pause after a tick is new to it.
    let mut text = head;
    let mut buf = [0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !text.contains("event: tick") {
        let n = tokio::time::timeout_at(deadline.into(), s.read(&mut buf))
            .await
            .expect("a tick within 10 s")
            .unwrap();
        assert!(n > 0);
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let r = admin_call(
        "POST",
        &format!("http://{admin}/v1/experiments/exp/pause"),
        None,
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    let id = r.json()["decision_id"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(at) = text.find("event: decision\ndata: ") {
            let line = text[at..].lines().nth(1).unwrap_or("");
            if line.ends_with('}') {
                let d: serde_json::Value =
                    serde_json::from_str(line.trim_start_matches("data: ")).unwrap();
                assert_eq!(d["id"], id);
                assert_eq!(d["kind"], "pause");
                assert_eq!(d["experiment"], "exp");
                break;
            }
        }
        let n = tokio::time::timeout_at(deadline.into(), s.read(&mut buf))
            .await
            .expect("the decision within 10 s")
            .unwrap();
        assert!(n > 0, "the stream closed");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    drop(s);
    eventually(
        Duration::from_secs(5),
        "the closed stream leaves the hub",
        || {
            let n = server.control.events.subscribers();
            async move { n == 0 }
        },
    )
    .await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_client_that_never_reads_is_dropped_and_memory_stays_bounded() {
    use abgate::control::events::{frame, QUEUE};
    let (a, b) = two_backends().await;
    let server = start_abgate(&two_arm(&a, &b, 10)).await;
    let admin = server.admin_addr;
    let (mut stalled, _) = open_events(admin).await;
    let (mut reader, _) = open_events(admin).await;
    let reading = tokio::spawn(async move {
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0usize;
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
        }
    });
    eventually(Duration::from_secs(5), "both subscribed", || {
        let n = server.control.events.subscribers();
        async move { n == 2 }
    })
    .await;
    // 256 KiB events: the stalled client's socket buffers fill after a few,
    // then its queue (QUEUE events) does, and the hub drops it.
    let big = serde_json::json!("x".repeat(256 * 1024));
    let mut sent = 0usize;
    eventually(
        Duration::from_secs(30),
        "the stalled client is dropped",
        || {
            server.control.events.publish(frame("filler", &big));
            sent += 1;
            let dropped = server.control.events.dropped();
            async move { dropped >= 1 }
        },
    )
    .await;
    assert!(
        sent > QUEUE,
        "dropped only once its queue was full ({sent} sent)"
    );
    assert_eq!(
        server.control.events.subscribers(),
        1,
        "the reading client stays"
    );
    // Its connection is closed: after what was in flight, the socket ends.
    let mut buf = vec![0u8; 1 << 16];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stalled.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the stalled client's connection was closed");
    // The admin API still answers.
    let r = get(&client(), &format!("http://{admin}/healthz"), &[]).await;
    assert_eq!(r.status, 200);
    reading.abort();
    server.shutdown().await;
}

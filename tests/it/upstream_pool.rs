//! The HTTP/1 upstream pool, seen from a raw backend that counts the
//! connections it accepts: keep-alive reuse, a backend that closes idle
//! connections, `Connection: close`, bodiless answers, and a response the
//! client abandons.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// How the raw backend treats each connection.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Keep-alive: answer every request on the connection.
    KeepAlive,
    /// Keep-alive, answering each request after 50 ms (so concurrent ones
    /// overlap and each needs a connection of its own).
    KeepAliveSlow,
    /// Answer one request, then close without saying so (as a backend's idle
    /// timeout does, between requests).
    CloseAfterOne,
    /// Answer with `Connection: close`, then close.
    SayClose,
    /// 204 without a body, keep-alive.
    NoContent,
    /// A chunked answer cut after its first chunk, all in one write.
    CutMidBody,
}

struct RawBackend {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawBackend {
    async fn start(mode: Mode) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (a, r) = (accepted.clone(), requests.clone());
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(s, mode, r.clone()));
            }
        });
        RawBackend {
            addr,
            accepted,
            requests,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Reads request heads (bodiless GET/HEAD) and answers each per `mode`.
async fn serve(mut s: TcpStream, mode: Mode, requests: Arc<AtomicUsize>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        buf.drain(..end);
        let n = requests.fetch_add(1, Ordering::SeqCst) + 1;
        let body = format!("answer {n}");
        if mode == Mode::KeepAliveSlow {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let answer = match mode {
            Mode::NoContent => "HTTP/1.1 204 No Content\r\n\r\n".to_string(),
            Mode::CutMidBody => {
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n".to_string()
            }
            Mode::SayClose => format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            ),
            _ if head.starts_with("HEAD ") => {
                format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len())
            }
            _ => format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            ),
        };
        if s.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
        if matches!(
            mode,
            Mode::CloseAfterOne | Mode::SayClose | Mode::CutMidBody
        ) {
            return;
        }
    }
}

async fn through(mode: Mode) -> (RawBackend, abgate::app::RunningServer) {
    let backend = RawBackend::start(mode).await;
    let server = start_abgate(&default_backend_config(&backend.url(), "")).await;
    (backend, server)
}

/// `rounds` bursts of `at_once` concurrent requests, each answered 200.
async fn bursts(server: &abgate::app::RunningServer, rounds: usize, at_once: usize) {
    let c = client();
    let url = format!("http://{}/x", server.data_addr);
    for _round in 0..rounds {
        let all: Vec<_> = (0..at_once)
            .map(|_| {
                let (c, url) = (c.clone(), url.clone());
                tokio::spawn(async move { get(&c, &url, &[]).await.status })
            })
            .collect();
        for h in all {
            assert_eq!(h.await.unwrap(), 200);
        }
    }
}

#[tokio::test]
async fn sequential_requests_reuse_one_upstream_connection() {
    let (backend, server) = through(Mode::KeepAlive).await;
    let c = client();
    let url = format!("http://{}/x", server.data_addr);
    for i in 1..=50 {
        let a = get(&c, &url, &[]).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.body, format!("answer {i}"));
    }
    assert_eq!(
        backend.accepted(),
        1,
        "every request after the first reused it"
    );
}

#[tokio::test]
async fn concurrent_requests_keep_as_many_connections_as_they_need() {
    let (backend, server) = through(Mode::KeepAlive).await;
    bursts(&server, 5, 8).await;
    assert_eq!(backend.requests.load(Ordering::SeqCst), 40);
    assert!(
        backend.accepted() <= 8,
        "40 requests 8 at a time opened {} connections",
        backend.accepted()
    );
}

/// The pool keeps what a burst needed: 100 requests at once, four times, open
/// 100 connections, not 100 and then a new one for every request past a
/// small idle bound (with 64 kept, the first 64 were reused and 36 dialed
/// again each round; under 256 concurrent clients that churn cut a load test
/// at 30,000 req/s to 22,000 with a p50 of 150 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_larger_than_64_keeps_its_connections_for_the_next() {
    let (backend, server) = through(Mode::KeepAliveSlow).await;
    bursts(&server, 4, 100).await;
    assert_eq!(backend.requests.load(Ordering::SeqCst), 400);
    assert!(
        backend.accepted() <= 100,
        "400 requests 100 at a time opened {} connections",
        backend.accepted()
    );
}

#[tokio::test]
async fn a_backend_closing_idle_connections_never_loses_a_request() {
    let (backend, server) = through(Mode::CloseAfterOne).await;
    let c = client();
    let url = format!("http://{}/x", server.data_addr);
    for i in 1..=20 {
        // The backend's FIN reaches abgate while the connection sits idle:
        // the next checkout sees the end and dials again.
        let a = get(&c, &url, &[]).await;
        assert_eq!(a.status, 200, "request {i}");
        assert_eq!(a.body, format!("answer {i}"));
        eventually(Duration::from_secs(5), "backend closed", || async {
            backend.accepted() == i
        })
        .await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(backend.accepted(), 20);
}

#[tokio::test]
async fn back_to_back_requests_race_a_backend_closing_after_each_answer() {
    // No pause between requests: some checkouts find the connection before
    // the FIN arrives. A request the connection never began to send goes on
    // another; none may fail.
    let (backend, server) = through(Mode::CloseAfterOne).await;
    let c = client();
    let url = format!("http://{}/x", server.data_addr);
    let mut failed = 0;
    for _ in 0..200 {
        if get(&c, &url, &[]).await.status != 200 {
            failed += 1;
        }
    }
    assert_eq!(backend.requests.load(Ordering::SeqCst), 200 - failed);
    // A request written just as the backend closed is answered 502, never
    // dropped silently; with the retry, it is rare.
    assert!(failed <= 2, "{failed} of 200 failed");
}

#[tokio::test]
async fn connection_close_answers_are_not_pooled() {
    let (backend, server) = through(Mode::SayClose).await;
    let c = client();
    let url = format!("http://{}/x", server.data_addr);
    for i in 1..=10 {
        let a = get(&c, &url, &[]).await;
        assert_eq!(
            (a.status, a.body.as_ref()),
            (200, format!("answer {i}").as_bytes())
        );
    }
    assert_eq!(backend.accepted(), 10);
}

#[tokio::test]
async fn bodiless_answers_return_the_connection_to_the_pool() {
    let (backend, server) = through(Mode::NoContent).await;
    let c = client();
    let url = format!("http://{}/x", server.data_addr);
    for _ in 0..10 {
        assert_eq!(get(&c, &url, &[]).await.status, 204);
    }
    let keep = RawBackend::start(Mode::KeepAlive).await;
    let server2 = start_abgate(&default_backend_config(&keep.url(), "")).await;
    for _ in 0..10 {
        let req = http::Request::head(format!("http://{}/x", server2.data_addr))
            .body(http_body_util::Empty::new())
            .unwrap();
        let resp = c.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(backend.accepted(), 1, "204s");
    assert_eq!(keep.accepted(), 1, "HEADs");
    drop(server);
}

#[tokio::test]
async fn a_body_cut_in_the_first_read_still_sends_the_head_and_what_came() {
    let (_backend, server) = through(Mode::CutMidBody).await;
    let (got, _) = raw_until_close(
        server.data_addr,
        b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got:?}");
    assert!(got.contains("hello"), "{got:?}");
}

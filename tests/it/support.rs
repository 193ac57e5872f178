//! Shared test fixtures: fake backends that tag their answers, an in-process
//! abgate on 127.0.0.1:0, a pooled client, raw sockets, and deadline polling.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What a fake backend does with each request.
#[derive(Clone, Copy, Debug)]
pub enum Behaviour {
    /// 200 with body "<name>".
    Ok,
    /// SSE: `events` events, one every `every`.
    Sse { events: usize, every: Duration },
    /// Accepts the request and never answers.
    Hang,
    /// Promises 1000 bytes, sends 100, then resets the connection.
    ResetMidBody,
    /// Answers with bytes that are not HTTP.
    Garbage,
    /// Answers 500.
    Fail,
    /// 200 with body "<name>" after the delay in ms the test holds (shared
    /// between backends, so a test can move the latency of every arm at once).
    Delayed(&'static std::sync::atomic::AtomicU64),
}

pub struct FakeBackend {
    pub addr: SocketAddr,
    pub name: &'static str,
    /// Requests that reached the handler.
    pub requests: Arc<AtomicUsize>,
    /// TCP connections accepted.
    pub connections: Arc<AtomicUsize>,
    /// Set when an SSE stream noticed its client (abgate) went away.
    pub stream_cancelled: Arc<AtomicBool>,
    /// Raw request heads received (for header assertions), most recent last.
    pub seen_headers: Arc<std::sync::Mutex<Vec<http::HeaderMap>>>,
    task: JoinHandle<()>,
}

impl Drop for FakeBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeBackend {
    pub async fn start(name: &'static str, behaviour: Behaviour) -> FakeBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let stream_cancelled = Arc::new(AtomicBool::new(false));
        let seen_headers = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (r, c, s, h) = (
            requests.clone(),
            connections.clone(),
            stream_cancelled.clone(),
            seen_headers.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (r, s, h) = (r.clone(), s.clone(), h.clone());
                tokio::spawn(async move {
                    match behaviour {
                        Behaviour::ResetMidBody => reset_mid_body(stream).await,
                        Behaviour::Garbage => garbage(stream).await,
                        _ => serve_http(stream, name, behaviour, r, s, h).await,
                    }
                });
            }
        });
        FakeBackend {
            addr,
            name,
            requests,
            connections,
            stream_cancelled,
            seen_headers,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn serve_http(
    stream: TcpStream,
    name: &'static str,
    behaviour: Behaviour,
    requests: Arc<AtomicUsize>,
    cancelled: Arc<AtomicBool>,
    seen: Arc<std::sync::Mutex<Vec<http::HeaderMap>>>,
) {
    let svc = service_fn(move |req: Request<Incoming>| {
        let (requests, cancelled, seen) = (requests.clone(), cancelled.clone(), seen.clone());
        async move {
            requests.fetch_add(1, Ordering::SeqCst);
            seen.lock().unwrap().push(req.headers().clone());
            let _ = req.into_body().collect().await;
            let resp: Response<BoxBody> = match behaviour {
                Behaviour::Ok => Response::builder()
                    .header("x-backend", name)
                    .body(Full::new(Bytes::from(name)).boxed())
                    .unwrap(),
                Behaviour::Delayed(ms) => {
                    let wait = Duration::from_millis(ms.load(Ordering::Relaxed));
                    tokio::time::sleep(wait).await;
                    Response::builder()
                        .header("x-backend", name)
                        .body(Full::new(Bytes::from(name)).boxed())
                        .unwrap()
                }
                Behaviour::Fail => Response::builder()
                    .status(500)
                    .header("x-backend", name)
                    .body(Full::new(Bytes::from("boom")).boxed())
                    .unwrap(),
                Behaviour::Hang => {
                    std::future::pending::<()>().await;
                    unreachable!()
                }
                Behaviour::Sse { events, every } => {
                    let (tx, rx) =
                        tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
                    tokio::spawn(async move {
                        for i in 0..events {
                            let ev = Frame::data(Bytes::from(format!("data: event-{i}\n\n")));
                            if tx.send(Ok(ev)).await.is_err() {
                                cancelled.store(true, Ordering::SeqCst);
                                return;
                            }
                            tokio::time::sleep(every).await;
                        }
                        // Dropping the sender ends the body.
                    });
                    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
                    Response::builder()
                        .header("content-type", "text/event-stream")
                        .header("x-backend", name)
                        .body(BodyExt::boxed(body))
                        .unwrap()
                }
                Behaviour::ResetMidBody | Behaviour::Garbage => unreachable!(),
            };
            Ok::<_, Infallible>(resp)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

async fn reset_mid_body(mut stream: TcpStream) {
    let mut buf = [0u8; 4096];
    let _ = stream.read(&mut buf).await;
    let _ = stream
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\nx-backend: reset\r\n\r\n")
        .await;
    let _ = stream.write_all(&[b'x'; 100]).await;
    let _ = stream.flush().await;
    // Let the head and partial body reach abgate before the RST.
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Deprecated because a non-zero linger blocks the dropping thread; a zero
    // linger sends RST at once, which is exactly the failure under test.
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

async fn garbage(mut stream: TcpStream) {
    let mut buf = [0u8; 4096];
    let _ = stream.read(&mut buf).await;
    let _ = stream.write_all(b"NOT HTTP AT ALL\r\n\r\n").await;
    let _ = stream.flush().await;
}

/// A port nothing listens on.
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// A fresh state directory under the system temp dir, unique per call.
pub fn temp_state_dir() -> std::path::PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "abgate-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Starts abgate in-process with `yaml` (listen/admin forced to 127.0.0.1:0,
/// a fresh state_dir).
pub async fn start_abgate(yaml: &str) -> abgate::app::RunningServer {
    start_abgate_with(yaml, None).await
}

/// As [`start_abgate`], with an admin token.
pub async fn start_abgate_with(yaml: &str, token: Option<&str>) -> abgate::app::RunningServer {
    start_abgate_opts(yaml, token, None, &temp_state_dir()).await
}

/// As [`start_abgate`], with every option: admin token, token keys, state_dir.
pub async fn start_abgate_opts(
    yaml: &str,
    token: Option<&str>,
    token_keys: Option<&str>,
    state_dir: &std::path::Path,
) -> abgate::app::RunningServer {
    try_start_abgate(yaml, token, token_keys, state_dir)
        .await
        .unwrap_or_else(|e| panic!("abgate did not start: {e}"))
}

/// As [`start_abgate_opts`], for a start that may be refused.
pub async fn try_start_abgate(
    yaml: &str,
    token: Option<&str>,
    token_keys: Option<&str>,
    state_dir: &std::path::Path,
) -> Result<abgate::app::RunningServer, abgate::app::StartError> {
    abgate::app::start(abgate::app::StartOptions {
        config_text: with_test_listeners(&format!("state_dir: {}\n{yaml}", state_dir.display())),
        config_path: None,
        watch_file: false,
        admin_token: token.map(str::to_string),
        token_keys: token_keys.map(str::to_string),
    })
    .await
}

/// `yaml` with both listeners on 127.0.0.1:0, as every test server has them
/// (a config PUT sends the whole text, listeners included).
pub fn with_test_listeners(yaml: &str) -> String {
    format!("listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\n{yaml}")
}

pub type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A finished response: status, headers, whole body.
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// Reads a response to its end (a body that breaks off reads as empty).
    pub async fn read(resp: Response<Incoming>) -> Answer {
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

pub async fn get(client: &HttpClient, url: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Empty::new()).unwrap())
        .await
        .unwrap();
    Answer::read(resp).await
}

/// Sends raw bytes and reads until the server closes or `limit` passes.
pub async fn raw(addr: SocketAddr, bytes: &[u8], limit: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Polls `check` until it returns true or the deadline passes.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads `/metrics` from the admin listener.
pub async fn metrics(admin: SocketAddr) -> String {
    let c = client();
    let a = get(&c, &format!("http://{admin}/metrics"), &[]).await;
    String::from_utf8(a.body.to_vec()).unwrap()
}

/// The value of one Prometheus sample line, e.g.
/// `metric_value(&text, "abgate_requests_total", &[("arm","canary"),("class","2xx")])`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| {
            let rest = &l[name.len()..];
            rest.starts_with('{') || rest.starts_with(' ')
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// The real `abgate serve` binary in a child process, killed on drop.
pub struct Proc {
    pub child: std::process::Child,
    pub data_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub stderr: std::sync::mpsc::Receiver<String>,
}

impl Proc {
    /// Starts `abgate serve --config <path> [extra...]` and waits for its addresses.
    pub fn start(config: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> Proc {
        use std::io::BufRead;
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_abgate"));
        cmd.args(["serve", "--config"]).arg(config).args(extra);
        cmd.env_remove("ABGATE_ADMIN_TOKEN");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.stderr(std::process::Stdio::piped()).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("abgate did not start; stderr:\n{}", seen.join("\n"));
                }
            };
            if let Some(rest) = line.strip_prefix("abgate listening on ") {
                // "abgate listening on A (admin on B)"
                let mut parts = rest.split(' ');
                let data = parts.next().unwrap().parse().unwrap();
                let admin = rest
                    .split("(admin on ")
                    .nth(1)
                    .unwrap()
                    .trim_end_matches(')')
                    .parse()
                    .unwrap();
                return Proc {
                    child,
                    data_addr: data,
                    admin_addr: admin,
                    stderr: rx,
                };
            }
            seen.push(line);
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for a clean exit (status 0).
    pub fn terminate(mut self) {
        self.signal("-TERM");
        assert!(
            self.child.wait().unwrap().success(),
            "abgate did not exit cleanly"
        );
    }

    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A client that can send bodies and custom methods to the admin API.
pub async fn admin_call(
    method: &str,
    url: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let c: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::builder().method(method).uri(url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = c
        .request(req.body(Full::new(Bytes::from(body.to_string()))).unwrap())
        .await
        .unwrap();
    Answer::read(resp).await
}

/// Like [`admin_call`], but a dead server is `None` instead of a panic, and
/// the JSON answer carries its status as `_status`.
pub async fn admin_call_opt(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: &str,
) -> Option<serde_json::Value> {
    let c: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::builder().method(method).uri(url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), c.request(req))
        .await
        .ok()?
        .ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    let mut v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    v["_status"] = serde_json::json!(status);
    Some(v)
}

// ---- Hardening fixtures (appended) ----

/// What a [`RecordingBackend`] saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: http::HeaderMap,
    pub body_len: usize,
    pub body: Bytes,
    pub version: http::Version,
    /// The status it was answered with.
    pub status: u16,
}

/// An HTTP/1.1 + h2c backend that records every request it receives (method,
/// path, headers, body) and answers 200 "rec" (or what `answering` decides).
pub struct RecordingBackend {
    pub addr: SocketAddr,
    pub seen: Arc<std::sync::Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Drop for RecordingBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RecordingBackend {
    pub async fn start() -> RecordingBackend {
        Self::answering(|_| 200).await
    }

    /// Answers each request with the status `status_for(body)`.
    pub async fn answering(status_for: fn(&[u8]) -> u16) -> RecordingBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let s = s.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let status = status_for(&body);
                            s.lock().unwrap().push(Seen {
                                method: parts.method.to_string(),
                                path: parts.uri.path().to_string(),
                                headers: parts.headers,
                                body_len: body.len(),
                                body,
                                version: parts.version,
                                status,
                            });
                            let mut resp = Response::new(Full::new(Bytes::from("rec")));
                            *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        RecordingBackend { addr, seen, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn paths(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.path.clone())
            .collect()
    }
}

/// Config routing everything to `url` as the default backend, with extra YAML.
pub fn default_backend_config(url: &str, extra: &str) -> String {
    format!("backends:\n  main: {{ url: \"{url}\" }}\ndefault_backend: main\n{extra}\n")
}

/// Sends raw bytes and returns what came back before the server closed, and
/// how long that took; panics if the server has not closed within `limit`.
pub async fn raw_until_close(
    addr: SocketAddr,
    bytes: &[u8],
    limit: Duration,
) -> (String, Duration) {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let r = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        r.is_ok(),
        "server did not close within {limit:?}; got {:?}",
        String::from_utf8_lossy(&out)
    );
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

/// A plain GET to `path` on abgate must answer 200: the process still serves.
pub async fn assert_still_serving(addr: SocketAddr, path: &str) {
    let c = client();
    let a = get(&c, &format!("http://{addr}{path}"), &[]).await;
    assert_eq!(a.status, 200, "a normal request after the bad one failed");
}

/// The number of times `reason` was counted as a rejection.
pub async fn rejected(admin: SocketAddr, reason: &str) -> f64 {
    metric_value(
        &metrics(admin).await,
        "abgate_rejected_requests_total",
        &[("reason", reason)],
    )
}

/// Waits until `reason` was counted `n` times.
pub async fn expect_rejected(admin: SocketAddr, reason: &str, n: f64) {
    let reason = reason.to_string();
    eventually(
        Duration::from_secs(5),
        &format!("{reason} counted {n}"),
        || {
            let reason = reason.clone();
            async move { rejected(admin, &reason).await == n }
        },
    )
    .await;
}

/// The routing table version in force, as `GET /readyz` reports it.
pub async fn table_version(admin: SocketAddr) -> u64 {
    let a = get(&client(), &format!("http://{admin}/readyz"), &[]).await;
    a.json()["table_version"]
        .as_u64()
        .unwrap_or_else(|| panic!("readyz without table_version: {}", a.json()))
}

/// One experiment as `GET /v1/experiments/{name}` shows it.
pub async fn experiment_json(admin: SocketAddr, name: &str) -> serde_json::Value {
    let a = get(
        &client(),
        &format!("http://{admin}/v1/experiments/{name}"),
        &[],
    )
    .await;
    assert_eq!(a.status, 200, "GET /v1/experiments/{name}");
    a.json()
}

/// The named arm of an experiment's view.
pub fn arm_of<'v>(experiment: &'v serde_json::Value, arm: &str) -> &'v serde_json::Value {
    experiment["arms"]
        .as_array()
        .and_then(|arms| arms.iter().find(|a| a["name"] == arm))
        .unwrap_or_else(|| panic!("no arm {arm:?} in {experiment}"))
}

/// Replaces the running config through `PUT /v1/config` (If-Match on the
/// current version); returns the new version.
pub async fn put_config(admin: SocketAddr, token: Option<&str>, text: &str) -> u64 {
    let url = format!("http://{admin}/v1/config");
    let current = admin_call("GET", &url, token, &[], "").await.json()["version"]
        .as_u64()
        .unwrap();
    let if_match = format!("\"{current}\"");
    let a = admin_call("PUT", &url, token, &[("if-match", &if_match)], text).await;
    assert_eq!(a.status, 200, "PUT /v1/config: {}", a.json());
    a.json()["version"].as_u64().unwrap()
}

/// Two backends answering 200 with their names, `v1` and `v2`.
pub async fn two_backends() -> (FakeBackend, FakeBackend) {
    (
        FakeBackend::start("v1", Behaviour::Ok).await,
        FakeBackend::start("v2", Behaviour::Ok).await,
    )
}

/// The two-arm experiment most tests use: `exp`, sticky on `x-user-id`, arms
/// `stable` (on `a`) and `canary` (on `b`, `canary_percent` of the traffic).
pub fn two_arm(a: &FakeBackend, b: &FakeBackend, canary_percent: u32) -> String {
    format!(
        r#"
backends:
  v1: {{ url: "{}" }}
  v2: {{ url: "{}" }}
experiments:
  - name: exp
    unit: {{ header: x-user-id }}
    arms:
      - {{ name: stable, backend: v1, weight: {} }}
      - {{ name: canary, backend: v2, weight: {canary_percent} }}
"#,
        a.url(),
        b.url(),
        100 - canary_percent
    )
}

/// Sends `n` requests from users `u{from}`.. to the data plane, each answered 200.
pub async fn send_users(data: SocketAddr, from: usize, n: usize) {
    let c = client();
    for i in from..from + n {
        let a = get(
            &c,
            &format!("http://{data}/p"),
            &[("x-user-id", &format!("u{i}"))],
        )
        .await;
        assert_eq!(a.status, 200);
    }
}

/// Tests that judge a controller's decision on latency drive hundreds of
/// requests a second through a real abgate. Two of them at once on a small
/// machine slow each other *mid-ramp*, and the latency guardrail then sees a
/// canary slower than a baseline measured before the other test started. They
/// take this lock so their load never overlaps.
static DECISION_LOAD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Holds the decision-load lock (async tests).
pub async fn decision_load() -> tokio::sync::MutexGuard<'static, ()> {
    DECISION_LOAD.lock().await
}

/// Holds the decision-load lock (tests that drive the binary synchronously).
pub fn decision_load_blocking() -> tokio::sync::MutexGuard<'static, ()> {
    DECISION_LOAD.blocking_lock()
}

/// The parts of a two-arm canary that tests vary; the rest is the one shape
/// every decision test uses: stable on `v1` at 100, canary on `v2` at 0,
/// steps 10/50/100, 40 samples a step, a look every 200 ms and a burn-in of
/// 50 units per arm.
#[derive(Default)]
pub struct CanaryYaml<'a> {
    /// Lines at the top level before `backends:` (e.g. `currency: USD`).
    pub preamble: &'a str,
    /// Extra keys of each backend's map, after its url (e.g. `, price: {…}`).
    pub backend_extra: &'a str,
    /// The experiment's `unit:` value, when it has one.
    pub unit: Option<&'a str>,
    /// Guardrail list items, already indented under `guardrails:`.
    pub guardrails: &'a str,
    /// Extra lines of the `analysis:` map, already indented.
    pub analysis_extra: &'a str,
}

impl CanaryYaml<'_> {
    pub fn render(&self, stable_url: &str, canary_url: &str) -> String {
        let unit = match self.unit {
            Some(u) => format!("    unit: {u}\n"),
            None => String::new(),
        };
        format!(
            r#"
{preamble}
backends:
  v1: {{ url: "{stable_url}"{extra} }}
  v2: {{ url: "{canary_url}"{extra} }}
experiments:
  - name: exp
    kind: canary
    baseline: stable
{unit}    steps: [10, 50, 100]
    step: {{ min_samples: 40, min_duration: 0s }}
    analysis:
      interval: 200ms
      min_units_per_arm: 50
      min_events: 20
      design_samples: 2000
      guardrails:
{guardrails}
{analysis_extra}
    arms:
      - {{ name: stable, backend: v1, weight: 100 }}
      - {{ name: canary, backend: v2, weight: 0 }}
"#,
            preamble = self.preamble,
            extra = self.backend_extra,
            guardrails = self.guardrails,
            analysis_extra = self.analysis_extra,
        )
    }
}

/// Bounded open-loop load for a test's background: `rate` requests a second
/// of `kind` for at most `seconds` (a count and a time bound), 32 send slots
/// (512 in flight), 5 s per request, seed 11. A test adjusts fields (seed,
/// feedback, slots) before [`spawn_load`].
pub fn open_loop(
    target: SocketAddr,
    kind: abgate::lab::loadgen::RequestKind,
    rate: f64,
    seconds: u64,
) -> abgate::lab::loadgen::LoadSpec {
    let mut spec = abgate::lab::loadgen::LoadSpec::new(format!("http://{target}"));
    spec.kind = kind;
    spec.mode = abgate::lab::loadgen::LoadMode::OpenLoop {
        rate_per_s: rate,
        connections: 32,
        max_in_flight: 512,
    };
    spec.max_requests = (rate as u64) * seconds;
    spec.max_duration = Duration::from_secs(seconds);
    spec.request_timeout = Duration::from_secs(5);
    spec.seed = 11;
    spec
}

/// Runs `spec` in the background; the test aborts the handle once it has
/// its answer.
pub fn spawn_load(spec: abgate::lab::loadgen::LoadSpec) -> JoinHandle<()> {
    tokio::spawn(async move {
        let _ = abgate::lab::loadgen::run(spec).await;
    })
}

/// A mock model backend from its spec (`name=canary,error_rate=0.1,...`) on a
/// free loopback port.
pub async fn mock(spec: &str) -> abgate::lab::mock::MockServer {
    abgate::lab::mock::MockServer::start(
        spec.parse::<abgate::lab::mock::MockSpec>().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap()
}

//! Inference-aware outcomes over real sockets: scripted OpenAI-style backends
//! (JSON and SSE, whole, byte by byte, cut short, garbage), the real abgate,
//! a real client; token sums, time to first token and stream completeness as
//! the admin API and `/metrics` report them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::support::*;

/// How a scripted response ends after its last frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Ending {
    /// The body ends normally.
    Close,
    /// The body fails: the connection closes without the chunked terminator.
    Abort,
    /// Nothing more is sent and the body never ends.
    Stall,
}

/// One scripted answer: a content type, frames each sent after a pause, and
/// how it ends.
#[derive(Clone, Debug)]
pub struct Script {
    pub content_type: &'static str,
    pub frames: Vec<(Duration, Bytes)>,
    pub ending: Ending,
}

impl Script {
    pub fn whole(content_type: &'static str, body: impl Into<Bytes>) -> Script {
        Script {
            content_type,
            frames: vec![(Duration::ZERO, body.into())],
            ending: Ending::Close,
        }
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// A backend answering each request with `script(n)`, `n` counting requests
/// from 0; the whole request body is read first.
pub struct Scripted {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Scripted {
    pub async fn start(script: impl Fn(u64) -> Script + Send + Sync + 'static) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let script = Arc::new(script);
        let count = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (script, count) = (script.clone(), count.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (script, count) = (script.clone(), count.clone());
                        async move {
                            let _ = req.into_body().collect().await;
                            let s = script(count.fetch_add(1, Ordering::SeqCst));
                            Ok::<_, Infallible>(respond(s))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Scripted { addr, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn respond(s: Script) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
    tokio::spawn(async move {
        for (pause, bytes) in s.frames {
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            if tx.send(Ok(Frame::data(bytes))).await.is_err() {
                return;
            }
        }
        match s.ending {
            Ending::Close => {}
            Ending::Abort => {
                let _ = tx
                    .send(Err(std::io::Error::other("backend died mid-stream")))
                    .await;
            }
            Ending::Stall => {
                // Held until abgate gives up on the stream and drops it.
                tx.closed().await;
            }
        }
    });
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    Response::builder()
        .header("content-type", s.content_type)
        .body(BodyExt::boxed(body))
        .unwrap()
}

pub fn chunk(delta: &str, finish: Option<&str>) -> String {
    let finish = finish.map_or("null".to_string(), |f| format!("\"{f}\""));
    format!(
        "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n"
    )
}

pub fn usage_chunk(prompt: u64, completion: u64) -> String {
    format!(
        "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{{\"prompt_tokens\":{prompt},\"completion_tokens\":{completion},\"total_tokens\":{}}}}}\n\n",
        prompt + completion
    )
}

/// A whole chat completion stream: role chunk, `n` content chunks, the finish
/// chunk, a usage chunk when `usage` is given, `[DONE]`.
pub fn chat_stream(n: usize, finish: &str, usage: Option<(u64, u64)>) -> String {
    let mut s = chunk(r#"{"role":"assistant","content":""}"#, None);
    for i in 0..n {
        s += &chunk(&format!(r#"{{"content":"tok{i} "}}"#), None);
    }
    s += &chunk("{}", Some(finish));
    if let Some((p, c)) = usage {
        s += &usage_chunk(p, c);
    }
    s + "data: [DONE]\n\n"
}

pub fn chat_json(prompt: u64, completion: u64, finish: &str) -> String {
    format!(
        r#"{{"id":"chatcmpl-2","object":"chat.completion","created":1,"model":"m","choices":[{{"index":0,"message":{{"role":"assistant","content":"a \"quoted\" answer"}},"finish_reason":"{finish}"}}],"usage":{{"prompt_tokens":{prompt},"completion_tokens":{completion},"total_tokens":{}}}}}"#,
        prompt + completion
    )
}

/// One experiment per (name, url): `match: { path_prefix: /name/ }`, one arm
/// `arm` with all the traffic.
pub fn per_path(backends: &[(&str, String)], extra: &str) -> String {
    let mut cfg = String::from("backends:\n");
    for (name, url) in backends {
        cfg += &format!("  {name}: {{ url: \"{url}\" }}\n");
    }
    cfg += "experiments:\n";
    for (name, _) in backends {
        cfg += &format!(
            "  - name: {name}\n    match: {{ path_prefix: /{name}/ }}\n    arms: [ {{ name: arm, backend: {name}, weight: 100 }} ]\n"
        );
    }
    cfg + extra
}

/// POSTs a chat request to `path`; the whole answer.
pub async fn chat(data: SocketAddr, path: &str, user: &str) -> Answer {
    admin_call(
        "POST",
        &format!("http://{data}{path}"),
        None,
        &[("content-type", "application/json"), ("x-user-id", user)],
        r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await
}

/// The `(n, mean)` of an arm's metric in the experiment view.
pub async fn metric(admin: SocketAddr, experiment: &str, arm: &str, name: &str) -> (u64, f64) {
    let v = experiment_json(admin, experiment).await;
    let m = &arm_of(&v, arm)["metrics"][name];
    let n = m["n"]
        .as_u64()
        .unwrap_or_else(|| panic!("no {name} in {v}"));
    let mean = m["mean"]
        .as_f64()
        .or_else(|| m["rate"].as_f64())
        .unwrap_or(0.0);
    (n, mean)
}

/// An arm's Prometheus sample.
pub async fn prom(admin: SocketAddr, name: &str, experiment: &str, labels: &[(&str, &str)]) -> f64 {
    let mut all = vec![("experiment", experiment)];
    all.extend_from_slice(labels);
    metric_value(&metrics(admin).await, name, &all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_sums_per_arm_are_exactly_what_the_backends_sent_for_json_and_sse() {
    // Each backend reports varying usage and keeps the sums it sent.
    let sent = Arc::new([
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
    ]);
    let s = sent.clone();
    let json = Scripted::start(move |n| {
        let (p, c) = (10 + n % 7, 20 + n % 13);
        s[0].fetch_add(p, Ordering::SeqCst);
        s[1].fetch_add(c, Ordering::SeqCst);
        Script::whole("application/json", chat_json(p, c, "stop"))
    })
    .await;
    let s = sent.clone();
    let sse = Scripted::start(move |n| {
        let (p, c) = (30 + n % 5, 3 + n % 11);
        s[2].fetch_add(p, Ordering::SeqCst);
        s[3].fetch_add(c, Ordering::SeqCst);
        let body = chat_stream(c as usize, "stop", Some((p, c)));
        // One frame per event, as servers flush them.
        let frames = body
            .split_inclusive("\n\n")
            .map(|e| (Duration::ZERO, Bytes::from(e.to_string())))
            .collect();
        Script {
            content_type: "text/event-stream",
            frames,
            ending: Ending::Close,
        }
    })
    .await;
    let server = start_abgate(&format!(
        r#"
backends:
  j: {{ url: "{}" }}
  s: {{ url: "{}" }}
experiments:
  - name: exp
    unit: {{ header: x-user-id }}
    arms:
      - {{ name: stable, backend: j, weight: 50 }}
      - {{ name: canary, backend: s, weight: 50 }}
"#,
        json.url(),
        sse.url()
    ))
    .await;
    for i in 0..60 {
        let a = chat(server.data_addr, "/v1/chat/completions", &format!("u{i}")).await;
        assert_eq!(a.status, 200);
    }
    let admin = server.admin_addr;
    let want = |i: usize| sent[i].load(Ordering::SeqCst) as f64;
    for (arm, kind, i) in [
        ("stable", "prompt", 0),
        ("stable", "completion", 1),
        ("canary", "prompt", 2),
        ("canary", "completion", 3),
    ] {
        let got = prom(
            admin,
            "abgate_tokens_total",
            "exp",
            &[("arm", arm), ("kind", kind)],
        )
        .await;
        assert_eq!(got, want(i), "{arm} {kind} tokens");
        let (n, mean) = metric(admin, "exp", arm, &format!("{kind}_tokens")).await;
        assert!(n > 5, "{arm}: {n} responses with usage");
        assert!(
            (n as f64 * mean - want(i)).abs() < 1e-6,
            "{arm} {kind}: {n} x {mean}"
        );
    }
    // The export re-checks them offline.
    let export = get(
        &client(),
        &format!("http://{admin}/v1/experiments/exp/export"),
        &[],
    )
    .await;
    let export = export.json();
    assert_eq!(
        export["metrics"]["completion_tokens"]["type"], "continuous",
        "{export}"
    );
    // Only the stream is judged for completeness; every one ended properly.
    assert_eq!(
        metric(admin, "exp", "stable", "stream_incomplete").await.0,
        0
    );
    let (streams, rate) = metric(admin, "exp", "canary", "stream_incomplete").await;
    assert!(streams > 5 && rate == 0.0, "{streams} {rate}");
    assert_eq!(
        prom(admin, "abgate_unparsed_responses_total", "exp", &[]).await,
        0.0
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_to_first_token_is_the_first_content_not_the_role_chunk() {
    let slow_start = Scripted::start(|_| {
        let mut frames = vec![(
            Duration::ZERO,
            Bytes::from(chunk(r#"{"role":"assistant","content":""}"#, None)),
        )];
        frames.push((
            Duration::from_millis(200),
            Bytes::from(chunk(r#"{"content":"Hello"}"#, None)),
        ));
        for _ in 0..3 {
            frames.push((
                Duration::from_millis(20),
                Bytes::from(chunk(r#"{"content":" there"}"#, None)),
            ));
        }
        frames.push((Duration::ZERO, Bytes::from(chunk("{}", Some("stop")))));
        frames.push((Duration::ZERO, Bytes::from_static(b"data: [DONE]\n\n")));
        Script {
            content_type: "text/event-stream",
            frames,
            ending: Ending::Close,
        }
    })
    .await;
    let server = start_abgate(&per_path(&[("ttft", slow_start.url())], "")).await;
    for i in 0..3 {
        let a = chat(
            server.data_addr,
            "/ttft/v1/chat/completions",
            &format!("u{i}"),
        )
        .await;
        assert_eq!(a.status, 200);
    }
    let admin = server.admin_addr;
    let (n, ttft) = metric(admin, "ttft", "arm", "ttft_ms").await;
    let (_, ttfb) = metric(admin, "ttft", "arm", "ttfb_ms").await;
    assert_eq!(n, 3);
    assert!((195.0..400.0).contains(&ttft), "ttft {ttft} ms");
    assert!(
        ttfb < 100.0,
        "the role chunk is the first byte: ttfb {ttfb} ms"
    );
    let (_, itl) = metric(admin, "ttft", "arm", "itl_ms").await;
    assert!((15.0..100.0).contains(&itl), "itl {itl} ms");
    let sum = prom(admin, "abgate_time_to_first_token_seconds_sum", "ttft", &[]).await;
    assert!((0.58..1.2).contains(&sum), "three streams of ~0.2 s: {sum}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_delivered_a_byte_at_a_time_reads_as_one_delivered_whole() {
    let body = chat_stream(4, "length", Some((17, 5)));
    assert!(body.len() < 1500, "a millisecond per byte must stay short");
    let b = body.clone();
    let whole = Scripted::start(move |_| Script::whole("text/event-stream", b.clone())).await;
    let b = body.clone();
    let bytewise = Scripted::start(move |_| Script {
        content_type: "text/event-stream",
        frames: b
            .bytes()
            .map(|x| (Duration::from_millis(1), Bytes::from(vec![x])))
            .collect(),
        ending: Ending::Close,
    })
    .await;
    let server = start_abgate(&per_path(
        &[("whole", whole.url()), ("bytes", bytewise.url())],
        "",
    ))
    .await;
    for path in ["whole", "bytes"] {
        let a = chat(
            server.data_addr,
            &format!("/{path}/v1/chat/completions"),
            "u",
        )
        .await;
        assert_eq!(a.status, 200);
        assert_eq!(
            a.body,
            body.as_bytes(),
            "{path}: passed through byte for byte"
        );
    }
    let admin = server.admin_addr;
    for m in [
        "prompt_tokens",
        "completion_tokens",
        "stream_incomplete",
        "finish_length",
    ] {
        let w = metric(admin, "whole", "arm", m).await;
        let b = metric(admin, "bytes", "arm", m).await;
        assert_eq!(w, b, "{m}");
        assert_eq!(w.0, 1, "{m}");
    }
    assert_eq!(
        metric(admin, "bytes", "arm", "completion_tokens").await.1,
        5.0
    );
    assert_eq!(metric(admin, "bytes", "arm", "finish_length").await.1, 1.0);
    assert_eq!(metric(admin, "bytes", "arm", "ttft_ms").await.0, 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_streams_are_incomplete_and_client_disconnects_are_not() {
    // Two content events, then: a clean close, a broken connection, silence.
    let cut = |ending: Ending| {
        move |_| Script {
            content_type: "text/event-stream",
            frames: vec![
                (
                    Duration::ZERO,
                    Bytes::from(chunk(r#"{"role":"assistant"}"#, None)),
                ),
                (
                    Duration::ZERO,
                    Bytes::from(chunk(r#"{"content":"a"}"#, None)),
                ),
                (
                    Duration::ZERO,
                    Bytes::from(chunk(r#"{"content":"b"}"#, None)),
                ),
            ],
            ending,
        }
    };
    let close = Scripted::start(cut(Ending::Close)).await;
    let abort = Scripted::start(cut(Ending::Abort)).await;
    let stall = Scripted::start(cut(Ending::Stall)).await;
    // A complete stream, slow enough that the client leaves in the middle.
    let slow = Scripted::start(|_| Script {
        content_type: "text/event-stream",
        frames: chat_stream(30, "stop", None)
            .split_inclusive("\n\n")
            .map(|e| (Duration::from_millis(30), Bytes::from(e.to_string())))
            .collect(),
        ending: Ending::Close,
    })
    .await;
    let fine =
        Scripted::start(|_| Script::whole("text/event-stream", chat_stream(2, "stop", None))).await;
    let server = start_abgate(&per_path(
        &[
            ("close", close.url()),
            ("abort", abort.url()),
            ("stall", stall.url()),
            ("gone", slow.url()),
            ("fine", fine.url()),
        ],
        "timeouts: { stream_idle: 300ms }\n",
    ))
    .await;
    let data = server.data_addr;
    for name in ["close", "abort", "stall", "fine"] {
        let c: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let req = Request::post(format!("http://{data}/{name}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(b"{\"stream\":true}")))
            .unwrap();
        let resp = c
            .request(req)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(resp.status(), 200, "{name}");
        // The client reads to the end (or to the error abgate passes on).
        let _ = resp.into_body().collect().await;
    }
    // The client leaves after the first event.
    let c: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::post(format!("http://{data}/gone/v1/chat/completions"))
        .body(Full::new(Bytes::from_static(b"{\"stream\":true}")))
        .unwrap();
    let mut body = c.request(req).await.unwrap().into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    drop(body);
    drop(c);
    let admin = server.admin_addr;
    eventually(
        Duration::from_secs(5),
        "the disconnect is recorded",
        || async move {
            prom(
                admin,
                "abgate_upstream_errors_total",
                "gone",
                &[("kind", "client_gone")],
            )
            .await
                == 1.0
        },
    )
    .await;
    for name in ["close", "abort", "stall"] {
        eventually(Duration::from_secs(5), name, || async move {
            metric(admin, name, "arm", "stream_incomplete").await == (1, 1.0)
        })
        .await;
        assert_eq!(
            prom(admin, "abgate_stream_incomplete_total", name, &[]).await,
            1.0,
            "{name}"
        );
        // What came before the cut still counts.
        assert_eq!(metric(admin, name, "arm", "ttft_ms").await.0, 1, "{name}");
    }
    assert_eq!(
        metric(admin, "fine", "arm", "stream_incomplete").await,
        (1, 0.0)
    );
    // The client's disconnect is not the model's fault: no stream judged.
    assert_eq!(metric(admin, "gone", "arm", "stream_incomplete").await.0, 0);
    assert_eq!(
        prom(admin, "abgate_stream_incomplete_total", "gone", &[]).await,
        0.0
    );
    assert_eq!(prom(admin, "abgate_streams_total", "gone", &[]).await, 0.0);
    server.shutdown().await;
}

/// Reads a whole answer as a stream, counting bytes and checking each against
/// `expect(offset)`, so a 100 MB body is never held by the test either.
async fn stream_equals(data: SocketAddr, path: &str, len: u64, expect: impl Fn(u64) -> u8) {
    let c: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::post(format!("http://{data}{path}"))
        .body(Full::new(Bytes::from_static(b"{\"stream\":true}")))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), c.request(req))
        .await
        .expect("the head is not blocked")
        .unwrap();
    assert_eq!(resp.status(), 200, "{path}");
    let mut body = resp.into_body();
    let mut at = 0u64;
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("the body is not cut");
            if let Some(d) = frame.data_ref() {
                for &b in d.iter() {
                    assert_eq!(b, expect(at), "{path}: byte {at}");
                    at += 1;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), read)
        .await
        .expect("the stream is not blocked");
    assert_eq!(at, len, "{path}: every byte arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_stream_through_byte_for_byte_and_count_as_unparsed() {
    let bodies: Vec<(&str, &'static str, &'static [u8])> = vec![
        ("malformed", "application/json", br#"{"choices":[{"message":{"content":"x"}},],"usage":{"#),
        ("html", "application/json", b"<!doctype html><html><body>upstream error</body></html>"),
        (
            "garbage",
            "text/event-stream",
            b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\nhello\n\x00\xff\xfe\ndata: {{{{\n\ndata: [DONE]\n\n",
        ),
    ];
    let mut backends = Vec::new();
    for (name, ct, body) in &bodies {
        let (ct, body) = (*ct, *body);
        backends.push((
            *name,
            Scripted::start(move |_| Script::whole(ct, body)).await,
        ));
    }
    // 100 MB on one line, no newline, in 64 KiB frames.
    const HUGE: u64 = 100 << 20;
    let huge = Scripted::start(|_| {
        let frame = Bytes::from(vec![b'a'; 64 << 10]);
        let mut frames = vec![(Duration::ZERO, Bytes::from_static(b"data: "))];
        let n = (HUGE - 6) / (64 << 10);
        frames.extend((0..n).map(|_| (Duration::ZERO, frame.clone())));
        let rest = (HUGE - 6 - n * (64 << 10)) as usize;
        frames.push((Duration::ZERO, Bytes::from(vec![b'a'; rest])));
        Script {
            content_type: "text/event-stream",
            frames,
            ending: Ending::Close,
        }
    })
    .await;
    let mut cfg: Vec<(&str, String)> = backends.iter().map(|(n, b)| (*n, b.url())).collect();
    cfg.push(("huge", huge.url()));
    let server = start_abgate(&per_path(&cfg, "")).await;
    let data = server.data_addr;
    for (name, _, body) in &bodies {
        let path = format!("/{name}/v1/chat/completions");
        stream_equals(data, &path, body.len() as u64, |i| body[i as usize]).await;
    }
    stream_equals(data, "/huge/v1/chat/completions", HUGE, |i| {
        if i < 6 {
            b"data: "[i as usize]
        } else {
            b'a'
        }
    })
    .await;
    let admin = server.admin_addr;
    for name in ["malformed", "html", "garbage", "huge"] {
        eventually(Duration::from_secs(5), name, || async move {
            prom(
                admin,
                "abgate_unparsed_responses_total",
                name,
                &[("arm", "arm")],
            )
            .await
                == 1.0
        })
        .await;
        // The HTTP outcome still counts; the inference metrics are left out.
        assert_eq!(
            prom(admin, "abgate_requests_total", name, &[("class", "2xx")]).await,
            1.0,
            "{name}"
        );
        for m in ["ttft_ms", "stream_incomplete", "completion_tokens"] {
            assert_eq!(metric(admin, name, "arm", m).await.0, 0, "{name} {m}");
        }
    }
    // And abgate still serves.
    let a = chat(data, "/fine-after/v1/chat/completions", "u").await;
    assert_eq!(a.status, 404, "no route, but an answer");
    server.shutdown().await;
}

// ---- The controller on inference metrics ----

use abgate::lab::loadgen::RequestKind;
use abgate::lab::mock::MockServer;

/// Bounded open-loop load of `kind` requests in the background.
fn load(target: SocketAddr, kind: RequestKind, rate: f64, seconds: u64) -> JoinHandle<()> {
    spawn_load(open_loop(target, kind, rate, seconds))
}

/// A canary of `canary` against `stable`, judged on `guardrails` (YAML list
/// items), both backends priced alike.
fn inference_canary(stable: &MockServer, canary: &MockServer, guardrails: &str) -> String {
    CanaryYaml {
        preamble: "currency: USD",
        backend_extra: ", price: { input_per_mtok: 1.0, output_per_mtok: 2.0 }",
        unit: Some("{ header: x-user-id }"),
        guardrails,
        ..CanaryYaml::default()
    }
    .render(&stable.url(), &canary.url())
}

/// Polls until the experiment is `state` (or `within` passes); the view.
async fn wait_state(admin: SocketAddr, state: &str, within: Duration) -> serde_json::Value {
    let deadline = std::time::Instant::now() + within;
    loop {
        let v = experiment_json(admin, "exp").await;
        if v["state"] == state {
            return v;
        }
        assert!(v["state"] == "running", "expected {state}, got {v:#}");
        assert!(std::time::Instant::now() < deadline, "never {state}: {v:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_with_half_again_the_time_to_first_token_is_rolled_back() {
    let _load = decision_load().await;
    let stable =
        mock("name=stable,latency=fixed:1,first_token_ms=200,chunks=4,token_delay_ms=1,seed=1")
            .await;
    let canary =
        mock("name=canary,latency=fixed:1,first_token_ms=300,chunks=4,token_delay_ms=1,seed=2")
            .await;
    let yaml = inference_canary(
        &stable,
        &canary,
        "        - { metric: ttft_ms, max_relative_increase: 0.10 }",
    );
    let server = start_abgate(&yaml).await;
    let traffic = load(server.data_addr, RequestKind::ChatStream, 120.0, 40);
    let v = wait_state(server.admin_addr, "rolled_back", Duration::from_secs(40)).await;
    traffic.abort();
    let d = &v["last_decision"];
    assert_eq!(d["kind"], "rollback");
    let summary = d["reason"]["summary"].as_str().unwrap();
    assert!(summary.contains("ttft_ms"), "{summary}");
    // TTFB is the role chunk, sent at once: the first token comes later.
    // (Exact means depend on how loaded the machine is; the order does not.)
    let ttft = |arm: &str| {
        arm_of(&v, arm)["metrics"]["ttft_ms"]["mean"]
            .as_f64()
            .unwrap()
    };
    let ttfb = |arm: &str| {
        arm_of(&v, arm)["metrics"]["ttfb_ms"]["mean"]
            .as_f64()
            .unwrap()
    };
    assert!(ttft("canary") > ttft("stable"), "{v:#}");
    for arm in ["stable", "canary"] {
        assert!(ttfb(arm) + 30.0 < ttft(arm), "{arm}: {v:#}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_with_thirty_percent_more_completion_tokens_is_rolled_back_on_cost() {
    let _load = decision_load().await;
    let stable = mock("name=stable,latency=fixed:1,chunks=10,tokens_jitter=0.2,seed=3").await;
    let canary = mock("name=canary,latency=fixed:1,chunks=13,tokens_jitter=0.2,seed=4").await;
    let yaml = inference_canary(
        &stable,
        &canary,
        "        - { metric: cost, max_relative_increase: 0.10 }",
    );
    let server = start_abgate(&yaml).await;
    let traffic = load(server.data_addr, RequestKind::Chat, 300.0, 40);
    let v = wait_state(server.admin_addr, "rolled_back", Duration::from_secs(40)).await;
    traffic.abort();
    let summary = v["last_decision"]["reason"]["summary"].as_str().unwrap();
    assert!(summary.contains("cost"), "{summary}");
    let mean = |arm: &str, m: &str| arm_of(&v, arm)["metrics"][m]["mean"].as_f64().unwrap();
    let ratio = mean("canary", "completion_tokens") / mean("stable", "completion_tokens");
    assert!(
        (1.2..1.4).contains(&ratio),
        "completion tokens ratio {ratio}"
    );
    assert!(mean("canary", "cost") > mean("stable", "cost"));
    // Prometheus: the cost so far, from the same usage.
    let m = metrics(server.admin_addr).await;
    let cost = metric_value(
        &m,
        "abgate_cost_total",
        &[("experiment", "exp"), ("arm", "stable")],
    );
    let tokens = |kind: &str| {
        metric_value(
            &m,
            "abgate_tokens_total",
            &[("experiment", "exp"), ("arm", "stable"), ("kind", kind)],
        )
    };
    let want = (tokens("prompt") + 2.0 * tokens("completion")) / 1e6;
    assert!(
        (cost - want).abs() <= want * 1e-6 + 1e-12,
        "{cost} vs {want}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_with_equal_cost_and_time_to_first_token_is_not_rolled_back() {
    let _load = decision_load().await;
    // A first token at 200 ms: scheduling noise on a busy test machine (tens
    // of ms, heavy-tailed) stays small beside the 10% margin.
    let spec = "latency=fixed:1,first_token_ms=200,chunks=6,token_delay_ms=1,tokens_jitter=0.2";
    let stable = mock(&format!("name=stable,{spec},seed=5")).await;
    let canary = mock(&format!("name=canary,{spec},seed=6")).await;
    let yaml = inference_canary(
        &stable,
        &canary,
        "        - { metric: ttft_ms, max_relative_increase: 0.10 }\n        - { metric: cost, max_relative_increase: 0.10 }",
    );
    let server = start_abgate(&yaml).await;
    let traffic = load(server.data_addr, RequestKind::ChatStream, 150.0, 60);
    // Promoted, or at least never rolled back while the canary is judged on
    // hundreds of streams (how fast non-inferiority is shown depends on how
    // noisy the machine's timing is).
    let started = std::time::Instant::now();
    let admin = server.admin_addr;
    loop {
        let v = experiment_json(admin, "exp").await;
        assert!(
            v["state"] == "running" || v["state"] == "promoted",
            "an equal canary was judged: {v:#}"
        );
        if v["state"] == "promoted" {
            assert_eq!(arm_of(&v, "canary")["weight"], 100.0);
            break;
        }
        if started.elapsed() > Duration::from_secs(40) {
            let judged = arm_of(&v, "canary")["metrics"]["ttft_ms"]["n"]
                .as_u64()
                .unwrap();
            assert!(judged >= 300, "the canary was barely judged: {v:#}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    traffic.abort();
    server.shutdown().await;
}

// ---- gRPC outcomes ----

/// An h2c backend answering like gRPC: `/ok` with trailers `grpc-status: 0`,
/// `/unavailable` with trailers `grpc-status: 14`, `/trailers-only` with
/// `grpc-status: 5` in the head and no body.
async fn grpc_backend() -> (String, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let path = req.uri().path().to_string();
                    let resp = Response::builder().header("content-type", "application/grpc");
                    let status = match path.as_str() {
                        p if p.ends_with("/ok") => "0",
                        p if p.ends_with("/unavailable") => "14",
                        _ => {
                            let empty: Body = http_body_util::Empty::new()
                                .map_err(|never| match never {})
                                .boxed();
                            return Ok::<_, Infallible>(
                                resp.header("grpc-status", "5")
                                    .header("grpc-message", "not found")
                                    .body(empty)
                                    .unwrap(),
                            );
                        }
                    };
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", http::HeaderValue::from_static(status));
                    let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
                        Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x02hi"))),
                        Ok(Frame::trailers(trailers)),
                    ];
                    let body: Body = BodyExt::boxed(StreamBody::new(tokio_stream::iter(frames)));
                    Ok(resp.body(body).unwrap())
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_zero_grpc_status_is_an_error_for_the_arm_by_code() {
    let (url, task) = grpc_backend().await;
    let server = start_abgate(&format!(
        r#"
backends:
  g: {{ url: "{url}", protocol: http2 }}
experiments:
  - name: grpc
    arms: [ {{ name: arm, backend: g, weight: 100 }} ]
"#
    ))
    .await;
    let c: Client<_, http_body_util::Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    for (path, want) in [
        ("/pkg.Svc/ok", Some("0")),
        ("/pkg.Svc/unavailable", Some("14")),
        ("/pkg.Svc/trailers-only", None),
        ("/pkg.Svc/ok", Some("0")),
    ] {
        let resp = c
            .request(
                Request::post(format!("http://{}{path}", server.data_addr))
                    .header("te", "trailers")
                    .header("content-type", "application/grpc")
                    .body(http_body_util::Empty::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let head_status = resp.headers().get("grpc-status").cloned();
        let collected = resp.into_body().collect().await.unwrap();
        match want {
            Some(code) => assert_eq!(collected.trailers().unwrap()["grpc-status"], code),
            None => assert_eq!(head_status.unwrap(), "5", "trailers-only passes through"),
        }
    }
    let admin = server.admin_addr;
    let v = experiment_json(admin, "grpc").await;
    let error = &arm_of(&v, "arm")["metrics"]["error"];
    assert_eq!(
        (error["n"].as_u64(), error["successes"].as_u64()),
        (Some(4), Some(2)),
        "{v}"
    );
    assert_eq!(arm_of(&v, "arm")["assigned"]["errors"], 2);
    let m = metrics(admin).await;
    let code = |c: &str| {
        metric_value(
            &m,
            "abgate_grpc_errors_total",
            &[("experiment", "grpc"), ("code", c)],
        )
    };
    assert_eq!((code("14"), code("5")), (1.0, 1.0));
    assert!(!m.contains("abgate_grpc_errors_total{experiment=\"grpc\",arm=\"arm\",code=\"0\""));
    task.abort();
    server.shutdown().await;
}

// ---- inject_usage ----

/// What a usage-aware backend saw of one request: its body and Content-Length.
type SeenBodies = Arc<std::sync::Mutex<Vec<(Bytes, Option<String>)>>>;

/// A backend that streams `chat_stream(3, "stop", ..)`, with the usage chunk
/// (prompt 11, completion 3) only when the request asks for it, as OpenAI does.
async fn usage_aware_backend() -> (String, SeenBodies, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: SeenBodies = Arc::default();
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
                        let len = req
                            .headers()
                            .get("content-length")
                            .map(|v| v.to_str().unwrap().to_string());
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        s.lock().unwrap().push((body, len));
                        let usage = v["stream_options"]["include_usage"] == true;
                        let answer = if v["stream"] == true {
                            chat_stream(3, "stop", usage.then_some((11, 3)))
                        } else {
                            chat_json(11, 3, "stop")
                        };
                        let frames = answer
                            .split_inclusive("\n\n")
                            .map(|e| (Duration::ZERO, Bytes::from(e.to_string())))
                            .collect();
                        let ct = if v["stream"] == true {
                            "text/event-stream"
                        } else {
                            "application/json"
                        };
                        Ok::<_, Infallible>(respond(Script {
                            content_type: ct,
                            frames,
                            ending: Ending::Close,
                        }))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), seen, task)
}

async fn post_json(data: SocketAddr, path: &str, body: &'static str) -> Answer {
    admin_call(
        "POST",
        &format!("http://{data}{path}"),
        None,
        &[("content-type", "application/json")],
        body,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inject_usage_is_invisible_to_a_client_that_did_not_ask() {
    let (url, seen, task) = usage_aware_backend().await;
    let server = start_abgate(&format!(
        r#"
backends:
  b: {{ url: "{url}" }}
experiments:
  - name: inject
    inject_usage: true
    match: {{ path_prefix: /inject/ }}
    arms: [ {{ name: arm, backend: b, weight: 100 }} ]
"#
    ))
    .await;
    let data = server.data_addr;
    let path = "/inject/v1/chat/completions";
    // A client that did not ask: the stream exactly as without the option.
    let plain = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let a = post_json(data, path, plain).await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.body,
        chat_stream(3, "stop", None).as_bytes(),
        "the usage chunk is hidden"
    );
    assert!(a.header("content-length").is_none());
    {
        let seen = seen.lock().unwrap();
        let (body, len) = &seen[0];
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(
            v["stream_options"]["include_usage"], true,
            "the backend was asked"
        );
        assert_eq!(v["messages"][0]["content"], "hi");
        assert_eq!(
            len.as_deref(),
            Some(body.len().to_string().as_str()),
            "Content-Length fixed"
        );
    }
    // ...and abgate counted the tokens the backend reported.
    let admin = server.admin_addr;
    let tokens = |kind: &'static str| async move {
        prom(admin, "abgate_tokens_total", "inject", &[("kind", kind)]).await
    };
    assert_eq!(
        (tokens("prompt").await, tokens("completion").await),
        (11.0, 3.0)
    );
    // A client that asked gets its usage chunk, and its body is untouched.
    let asked = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#;
    let a = post_json(data, path, asked).await;
    assert_eq!(a.body, chat_stream(3, "stop", Some((11, 3))).as_bytes());
    assert_eq!(seen.lock().unwrap()[1].0, asked.as_bytes());
    // A non-streaming request passes as it was.
    let json = r#"{"model":"m","stream":false}"#;
    let a = post_json(data, path, json).await;
    assert_eq!(a.body, chat_json(11, 3, "stop").as_bytes());
    assert_eq!(seen.lock().unwrap()[2].0, json.as_bytes());
    assert_eq!(
        (tokens("prompt").await, tokens("completion").await),
        (33.0, 9.0)
    );
    task.abort();
    server.shutdown().await;
}

//! Model-aware arms: routing on the body's `model`, rewriting it per arm,
//! per-backend credentials and the unit key from the body's `user`, through
//! real sockets with backends that record every byte they received.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

const SECRET: &str = "sk-canary-0123456789abcdef";

type BodyClient =
    Client<hyper_util::client::legacy::connect::HttpConnector, BoxBody<Bytes, Infallible>>;

fn body_client() -> BodyClient {
    Client::builder(TokioExecutor::new()).build_http()
}

struct Setup {
    server: abgate::app::RunningServer,
    stable: RecordingBackend,
    canary: RecordingBackend,
    other: RecordingBackend,
    secret_file: std::path::PathBuf,
}

fn secret_file(value: &str) -> std::path::PathBuf {
    let dir = temp_state_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("canary-key");
    std::fs::write(&f, format!("{value}\n")).unwrap();
    f
}

fn yaml(stable: &str, canary: &str, other: &str, secret: &std::path::Path) -> String {
    format!(
        r#"backends:
  stable: {{ url: "{stable}" }}
  canary:
    url: "{canary}"
    headers:
      authorization: "Bearer ${{file:{}}}"
  other: {{ url: "{other}" }}
default_backend: other
experiments:
  - name: gptx
    match: {{ path_prefix: /v1/chat/completions, model: gpt-x, max_peek: 4KiB }}
    unit: {{ body: user }}
    arms:
      - {{ name: stable, backend: stable, weight: 50 }}
      - {{ name: canary, backend: canary, weight: 50, model: llama-x }}
"#,
        secret.display()
    )
}

async fn setup() -> Setup {
    let (stable, canary, other) = (
        RecordingBackend::start().await,
        RecordingBackend::start().await,
        RecordingBackend::start().await,
    );
    let secret_file = secret_file(SECRET);
    let server = start_abgate(&yaml(
        &stable.url(),
        &canary.url(),
        &other.url(),
        &secret_file,
    ))
    .await;
    Setup {
        server,
        stable,
        canary,
        other,
        secret_file,
    }
}

fn chat_url(addr: SocketAddr) -> String {
    format!("http://{addr}/v1/chat/completions")
}

async fn post_body(
    c: &BodyClient,
    url: &str,
    body: BoxBody<Bytes, Infallible>,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = Request::post(url).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = c.request(req.body(body).unwrap()).await.unwrap();
    Answer::read(resp).await
}

async fn post(c: &BodyClient, url: &str, body: &[u8], headers: &[(&str, &str)]) -> Answer {
    let full = Full::new(Bytes::copy_from_slice(body)).boxed();
    post_body(c, url, full, headers).await
}

/// A chunked upload (no Content-Length), one frame per piece.
async fn post_chunked(c: &BodyClient, url: &str, pieces: &[&[u8]]) -> Answer {
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = pieces
        .iter()
        .map(|p| Ok(Frame::data(Bytes::copy_from_slice(p))))
        .collect();
    let body = StreamBody::new(futures_stream(frames)).boxed();
    post_body(c, url, body, &[]).await
}

fn futures_stream<T: Send + 'static>(items: Vec<T>) -> impl tokio_stream::Stream<Item = T> {
    tokio_stream::iter(items)
}

fn chat(user: &str) -> String {
    format!(
        r#"{{"model":"gpt-x","messages":[{{"role":"user","content":"hello"}}],"user":"{user}"}}"#
    )
}

fn last_body(b: &RecordingBackend) -> Seen {
    b.seen.lock().unwrap().last().cloned().expect("a request")
}

fn count(b: &RecordingBackend) -> usize {
    b.seen.lock().unwrap().len()
}

/// A user the experiment assigns to `arm`.
async fn user_on(s: &Setup, c: &BodyClient, arm: &str) -> String {
    for i in 0..200 {
        let user = format!("finder-{i}");
        let a = post(
            c,
            &chat_url(s.server.data_addr),
            chat(&user).as_bytes(),
            &[],
        )
        .await;
        if a.header("x-abgate-arm") == Some(arm) {
            return user;
        }
    }
    panic!("no user on {arm}");
}

#[tokio::test]
async fn requests_for_gpt_x_split_by_body_user_sticky_and_other_models_fall_through() {
    let s = setup().await;
    let c = body_client();
    let url = chat_url(s.server.data_addr);
    let mut arms = std::collections::HashMap::new();
    for i in 0..200 {
        let user = format!("user-{i}");
        let a = post(&c, &url, chat(&user).as_bytes(), &[]).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.header("x-abgate-experiment"), Some("gptx"));
        arms.insert(user, a.header("x-abgate-arm").unwrap().to_string());
    }
    let canaries = arms.values().filter(|a| *a == "canary").count();
    // 50/50 over 200 users: far inside 60..140 unless assignment is broken.
    assert!(
        (60..=140).contains(&canaries),
        "{canaries} of 200 on canary"
    );
    // Sticky: the same user lands on the same arm every time.
    for (user, arm) in arms.iter().take(40) {
        for _ in 0..2 {
            let a = post(&c, &url, chat(user).as_bytes(), &[]).await;
            assert_eq!(a.header("x-abgate-arm"), Some(arm.as_str()), "{user}");
        }
    }
    assert_eq!(count(&s.stable) + count(&s.canary), 200 + 80);
    // Other models go to the default backend, untouched.
    let body = br#"{"model":"gpt-4o","user":"user-1","messages":[]}"#;
    let a = post(&c, &url, body, &[]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-abgate-experiment"), None);
    assert_eq!(last_body(&s.other).body.as_ref(), body);
    // Another path is not peeked at all and goes to the default too.
    let a = post(
        &c,
        &format!("http://{}/v1/embeddings", s.server.data_addr),
        chat("user-1").as_bytes(),
        &[],
    )
    .await;
    assert_eq!(a.header("x-abgate-experiment"), None);
    assert_eq!(count(&s.other), 2);
    // A request without `user` is keyless: still in the experiment, on a random arm.
    let a = post(&c, &url, br#"{"model":"gpt-x"}"#, &[]).await;
    assert_eq!(a.header("x-abgate-experiment"), Some("gptx"));
    s.server.shutdown().await;
}

#[tokio::test]
async fn the_canary_receives_llama_x_with_every_other_byte_identical() {
    let s = setup().await;
    let c = body_client();
    let url = chat_url(s.server.data_addr);
    let user = user_on(&s, &c, "canary").await;
    // Spacing, a nested `model`, escapes and non-ASCII text must survive as sent.
    let body = format!(
        "{{ \"metadata\": {{\"model\": \"gpt-x\"}},\n  \"model\" :  \"gpt-x\" ,\"messages\":[{{\"role\":\"user\",\"content\":\"caf\u{e9} \\\"gpt-x\\\" \\u00e9\"}}],\"user\":\"{user}\"}}"
    );
    let want = body.replacen("\"model\" :  \"gpt-x\"", "\"model\" :  \"llama-x\"", 1);
    assert_ne!(want, body);
    let a = post(&c, &url, body.as_bytes(), &[]).await;
    assert_eq!(a.header("x-abgate-arm"), Some("canary"));
    let seen = last_body(&s.canary);
    assert_eq!(seen.body.as_ref(), want.as_bytes());
    assert_eq!(
        seen.headers["content-length"].to_str().unwrap(),
        want.len().to_string()
    );
    // The stable arm's backend gets the client's bytes exactly.
    let user = user_on(&s, &c, "stable").await;
    let body = chat(&user);
    post(&c, &url, body.as_bytes(), &[]).await;
    assert_eq!(last_body(&s.stable).body.as_ref(), body.as_bytes());
    // A chunked upload with the field split across chunks still matches and is
    // rewritten; it stays chunked (no Content-Length invented).
    let user = user_on(&s, &c, "canary").await;
    let body = chat(&user);
    let bytes = body.as_bytes();
    let a = post_chunked(&c, &url, &[&bytes[..4], &bytes[4..12], &bytes[12..]]).await;
    assert_eq!(a.header("x-abgate-arm"), Some("canary"));
    let seen = last_body(&s.canary);
    assert_eq!(
        seen.body.as_ref(),
        body.replace("gpt-x", "llama-x").as_bytes()
    );
    assert!(seen.headers.get("content-length").is_none());
    s.server.shutdown().await;
}

#[tokio::test]
async fn the_injected_authorization_replaces_the_clients_for_that_backend_only() {
    let s = setup().await;
    let c = body_client();
    let url = chat_url(s.server.data_addr);
    let client_auth = [("authorization", "Bearer client-own")];
    for arm in ["canary", "stable"] {
        let user = user_on(&s, &c, arm).await;
        let a = post(&c, &url, chat(&user).as_bytes(), &client_auth).await;
        assert_eq!(a.header("x-abgate-arm"), Some(arm));
    }
    let canary = last_body(&s.canary);
    let auths: Vec<_> = canary.headers.get_all("authorization").iter().collect();
    assert_eq!(auths.len(), 1);
    assert_eq!(auths[0], format!("Bearer {SECRET}").as_str());
    assert_eq!(
        last_body(&s.stable).headers["authorization"],
        "Bearer client-own"
    );
    post(&c, &url, br#"{"model":"other"}"#, &client_auth).await;
    assert_eq!(
        last_body(&s.other).headers["authorization"],
        "Bearer client-own"
    );
    // A rotated secret file is read again on reload.
    std::fs::write(&s.secret_file, "sk-rotated\n").unwrap();
    let text = yaml(
        &s.stable.url(),
        &s.canary.url(),
        &s.other.url(),
        &s.secret_file,
    );
    put_config(s.server.admin_addr, None, &format!("# rotated\n{text}")).await;
    let user = user_on(&s, &c, "canary").await;
    post(&c, &url, chat(&user).as_bytes(), &client_auth).await;
    assert_eq!(
        last_body(&s.canary).headers["authorization"],
        "Bearer sk-rotated"
    );
    s.server.shutdown().await;
}

#[tokio::test]
async fn bodies_routing_cannot_read_fall_through_untouched() {
    let s = setup().await;
    let c = body_client();
    let url = chat_url(s.server.data_addr);
    let big = format!(
        r#"{{"model":"gpt-x","user":"u","pad":"{}"}}"#,
        "x".repeat(5000)
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("not JSON", b"model=gpt-x&user=u".to_vec()),
        ("model not a string", br#"{"model":42,"user":"u"}"#.to_vec()),
        ("model nested only", br#"{"x":{"model":"gpt-x"}}"#.to_vec()),
        ("larger than max_peek", big.clone().into_bytes()),
        ("empty", Vec::new()),
        ("truncated JSON", br#"{"model":"gpt-x""#.to_vec()),
    ];
    for (i, (what, body)) in cases.iter().enumerate() {
        let a = post(&c, &url, body, &[]).await;
        assert_eq!(a.status, 200, "{what}");
        assert_eq!(a.header("x-abgate-experiment"), None, "{what}");
        assert_eq!(count(&s.other), i + 1, "{what}");
        assert_eq!(last_body(&s.other).body.as_ref(), &body[..], "{what}");
    }
    // Chunked and larger than the peek: forwarded whole, after the peek, unmatched.
    let b = big.as_bytes();
    let a = post_chunked(&c, &url, &[&b[..3000], &b[3000..]]).await;
    assert_eq!(a.header("x-abgate-experiment"), None);
    assert_eq!(last_body(&s.other).body.as_ref(), b);
    assert_eq!(count(&s.stable) + count(&s.canary), 0);
    s.server.shutdown().await;
}

/// Reads from `s` until `needle` has arrived (or the deadline passes).
async fn read_until(s: &mut tokio::net::TcpStream, needle: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&out).contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => panic!(
                "no {needle:?} within {within:?}; got {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn expect_100_continue_works_with_a_peeked_body() {
    let s = setup().await;
    let body = chat("expecting-user");
    let mut sock = tokio::net::TcpStream::connect(s.server.data_addr)
        .await
        .unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nexpect: 100-continue\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    // The body is sent only once abgate asks for it (the peek polls the body).
    read_until(&mut sock, "100 Continue", Duration::from_secs(10)).await;
    sock.write_all(body.as_bytes()).await.unwrap();
    let answer = read_until(&mut sock, "x-abgate-arm", Duration::from_secs(10)).await;
    assert!(answer.contains("200 OK"), "{answer}");
    assert!(answer.contains("x-abgate-experiment: gptx"), "{answer}");
    let got = count(&s.stable) + count(&s.canary);
    assert_eq!(got, 1);
    s.server.shutdown().await;
}

#[tokio::test]
async fn a_large_upload_is_forwarded_while_it_is_still_arriving() {
    // A backend that reports its first body bytes before reading the rest.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    let first_tx = std::sync::Arc::new(std::sync::Mutex::new(Some(first_tx)));
    let server_task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let first_tx = first_tx.clone();
            async move {
                let mut body = req.into_body();
                let mut total = 0usize;
                while let Some(f) = body.frame().await {
                    if let Ok(d) = f.unwrap().into_data() {
                        total += d.len();
                        if let Some(tx) = first_tx.lock().unwrap().take() {
                            let _ = tx.send(());
                        }
                    }
                }
                Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(
                    total.to_string(),
                ))))
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
            .await;
    });
    let other = RecordingBackend::start().await;
    let server = start_abgate(&format!(
        r#"backends:
  big: {{ url: "http://{backend}" }}
  other: {{ url: "{}" }}
default_backend: big
experiments:
  - name: m
    match: {{ model: gpt-x }}
    arms: [{{ name: only, backend: other, weight: 100, model: llama-x }}]
"#,
        other.url()
    ))
    .await;
    // 10 MB, chunked, `model` up front: peeked (a rule reads the model), larger
    // than the peek, so unmatched and sent on to the default as it arrives.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed();
    let c = body_client();
    let url = format!("http://{}/v1/chat/completions", server.data_addr);
    let answer = tokio::spawn(async move { post_body(&c, &url, body, &[]).await });
    let head = Bytes::from_static(br#"{"model":"gpt-x","pad":""#);
    let chunk = Bytes::from(vec![b'a'; 100 * 1024]);
    tx.send(Ok(Frame::data(head.clone()))).await.unwrap();
    tx.send(Ok(Frame::data(chunk.clone()))).await.unwrap();
    // The backend sees bytes while 99% of the upload is still unsent.
    tokio::time::timeout(Duration::from_secs(10), first_rx)
        .await
        .expect("the backend received nothing before the upload finished")
        .unwrap();
    let mut sent = head.len() + chunk.len();
    while sent < 10_000_000 {
        tx.send(Ok(Frame::data(chunk.clone()))).await.unwrap();
        sent += chunk.len();
    }
    tx.send(Ok(Frame::data(Bytes::from_static(b"\"}"))))
        .await
        .unwrap();
    drop(tx);
    let a = tokio::time::timeout(Duration::from_secs(60), answer)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-abgate-experiment"), None);
    assert_eq!(count(&other), 0);
    // Not rewritten, every byte forwarded.
    assert_eq!(
        String::from_utf8_lossy(&a.body),
        (sent + 2).to_string(),
        "bytes the backend received"
    );
    server.shutdown().await;
    server_task.abort();
}

#[tokio::test]
async fn a_missing_secret_is_a_config_error_naming_the_key() {
    let text = r#"backends:
  v2:
    url: "http://127.0.0.1:1"
    headers:
      authorization: "Bearer ${file:/nonexistent/abgate/key}"
      x-org: "${env:ABGATE_TEST_SURELY_UNSET}"
"#;
    let errors = abgate::config::parse(text).unwrap_err().to_string();
    assert!(
        errors.contains(
            "backends.v2.headers.authorization: cannot read secret file /nonexistent/abgate/key"
        ),
        "{errors}"
    );
    assert!(errors.contains("(line 5)"), "{errors}");
    assert!(
        errors.contains("backends.v2.headers.x-org: environment variable ABGATE_TEST_SURELY_UNSET"),
        "{errors}"
    );
    // Read without secrets (history, client-side checks), the text is valid.
    assert!(abgate::config::parse_unresolved(text).is_ok());
}

#[tokio::test]
async fn the_secret_appears_nowhere_but_the_backend_request() {
    let (stable, canary, other) = (
        RecordingBackend::start().await,
        RecordingBackend::start().await,
        RecordingBackend::start().await,
    );
    let secret = secret_file(SECRET);
    let dir = temp_state_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("abgate.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nstate_dir: {}\n{}",
            dir.join("state").display(),
            yaml(&stable.url(), &canary.url(), &other.url(), &secret)
        ),
    )
    .unwrap();
    let p = Proc::start(&config, &[], &[("RUST_LOG", "trace")]);
    let c = body_client();
    let url = chat_url(p.data_addr);
    for i in 0..20 {
        post(&c, &url, chat(&format!("u{i}")).as_bytes(), &[]).await;
    }
    assert!(count(&canary) > 0);
    let admin = p.admin_addr;
    let mut shown = Vec::new();
    for path in [
        "/v1/config",
        "/v1/config/versions",
        "/v1/config/versions/1",
        "/v1/experiments/gptx",
        "/v1/experiments/gptx/export",
        "/v1/experiments/gptx/history",
        "/metrics",
    ] {
        let a = get(&client(), &format!("http://{admin}{path}"), &[]).await;
        assert_eq!(a.status, 200, "{path}");
        shown.push(String::from_utf8_lossy(&a.body).into_owned());
    }
    // A config error about that backend names the key, not the value.
    let bad = std::fs::read_to_string(&config)
        .unwrap()
        .replace("authorization: \"Bearer", "authorization: \"Bearer\u{1}");
    let version = get(&client(), &format!("http://{admin}/v1/config"), &[])
        .await
        .json()["version"]
        .as_u64()
        .unwrap();
    let if_match = format!("\"{version}\"");
    let a = admin_call(
        "PUT",
        &format!("http://{admin}/v1/config"),
        None,
        &[("if-match", &if_match)],
        &bad,
    )
    .await;
    assert_eq!(a.status, 422, "{:?}", a.body);
    let detail = String::from_utf8_lossy(&a.body).into_owned();
    assert!(
        detail.contains("backends.canary.headers.authorization"),
        "{detail}"
    );
    shown.push(detail);
    let config_get: serde_json::Value = serde_json::from_str(&shown[0]).unwrap();
    let text = config_get["text"].as_str().unwrap();
    // A reference names where the secret is, not what it is: shown as written.
    assert!(text.contains("authorization: \"Bearer ${file:"), "{text}");
    let mut p = p;
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    let mut logs = String::new();
    while let Ok(line) = p.stderr.recv_timeout(Duration::from_secs(5)) {
        logs.push_str(&line);
        logs.push('\n');
    }
    assert!(!logs.is_empty());
    shown.push(logs);
    for text in &shown {
        assert!(!text.contains(SECRET), "the secret leaked:\n{text}");
        assert!(
            !text.contains("sk-canary"),
            "part of the secret leaked:\n{text}"
        );
    }
}

#[tokio::test]
async fn views_status_and_metrics_name_each_arms_model() {
    let s = setup().await;
    let c = body_client();
    post(&c, &chat_url(s.server.data_addr), chat("u").as_bytes(), &[]).await;
    let e = experiment_json(s.server.admin_addr, "gptx").await;
    assert_eq!(arm_of(&e, "canary")["model"], "llama-x");
    // No rewrite: the arm is sent the client's model it matched.
    assert_eq!(arm_of(&e, "stable")["model"], "gpt-x");
    let view: abgate::control::view::ExperimentView = serde_json::from_value(e).unwrap();
    let status = abgate::control::view::render_status(&[view]);
    assert!(status.contains("canary (llama-x)"), "{status}");
    let m = metrics(s.server.admin_addr).await;
    assert_eq!(
        metric_value(
            &m,
            "abgate_arm_model_info",
            &[
                ("experiment", "gptx"),
                ("arm", "canary"),
                ("backend", "canary"),
                ("model", "llama-x")
            ]
        ),
        1.0,
        "{m}"
    );
    // A promotion records the models: "llama-x replaced gpt-x".
    let admin = s.server.admin_addr;
    let a = admin_call(
        "POST",
        &format!("http://{admin}/v1/experiments/gptx/promote"),
        None,
        &[],
        r#"{"arm":"canary"}"#,
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let d = get(&client(), &format!("http://{admin}/v1/decisions"), &[])
        .await
        .json();
    let reason = &d["decisions"][0]["reason"];
    assert_eq!(reason["serving_model"], "llama-x", "{d}");
    assert_eq!(
        reason["replaced_models"],
        serde_json::json!(["gpt-x"]),
        "{d}"
    );
    assert_eq!(reason["models"]["stable"], "gpt-x", "{d}");
    let h = get(
        &client(),
        &format!("http://{admin}/v1/experiments/gptx/history"),
        &[],
    )
    .await
    .json();
    let promoted = h["lineage"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "promote")
        .unwrap_or_else(|| panic!("{h}"));
    assert_eq!(promoted["serving_model"], "llama-x");
    assert_eq!(promoted["replaced_models"], serde_json::json!(["gpt-x"]));
    // A model no longer configured reads 0; its successor 1.
    let text = yaml(
        &s.stable.url(),
        &s.canary.url(),
        &s.other.url(),
        &s.secret_file,
    )
    .replace("model: llama-x", "model: llama-y");
    put_config(admin, None, &text).await;
    let m = metrics(admin).await;
    let info = |model| {
        metric_value(
            &m,
            "abgate_arm_model_info",
            &[("arm", "canary"), ("model", model)],
        )
    };
    assert_eq!((info("llama-x"), info("llama-y")), (0.0, 1.0), "{m}");
    s.server.shutdown().await;
}

#[tokio::test]
async fn a_peek_counts_against_the_body_size_limit() {
    let other = RecordingBackend::start().await;
    let server = start_abgate(&format!(
        r#"backends: {{ other: {{ url: "{}" }} }}
default_backend: other
limits: {{ max_request_body_bytes: 1KiB }}
experiments:
  - name: m
    match: {{ model: gpt-x }}
    arms: [{{ name: only, backend: other, weight: 100 }}]
"#,
        other.url()
    ))
    .await;
    let c = body_client();
    let big = format!(r#"{{"model":"gpt-x","pad":"{}"}}"#, "x".repeat(3000));
    let b = big.as_bytes();
    // Chunked, so only the streamed count can catch it: inside the peek.
    let a = post_chunked(&c, &chat_url(server.data_addr), &[&b[..800], &b[800..]]).await;
    assert_eq!(a.status, 413);
    assert_eq!(count(&other), 0);
    server.shutdown().await;
}

#[tokio::test]
async fn a_model_rewrite_and_inject_usage_compose() {
    let canary = RecordingBackend::start().await;
    let server = start_abgate(&format!(
        r#"backends: {{ canary: {{ url: "{}" }} }}
experiments:
  - name: m
    match: {{ model: gpt-x }}
    inject_usage: true
    arms: [{{ name: canary, backend: canary, weight: 100, model: llama-x }}]
"#,
        canary.url()
    ))
    .await;
    let c = body_client();
    let body = br#"{"model":"gpt-x","stream":true,"messages":[]}"#;
    let a = post(&c, &chat_url(server.data_addr), body, &[]).await;
    assert_eq!(a.status, 200);
    let seen = last_body(&canary);
    let want = br#"{"stream_options":{"include_usage":true},"model":"llama-x","stream":true,"messages":[]}"#;
    assert_eq!(seen.body.as_ref(), want, "{:?}", seen.body);
    assert_eq!(
        seen.headers["content-length"],
        want.len().to_string().as_str()
    );
    server.shutdown().await;
}

/// `config get` → `config apply` of the shown text: a header made only of
/// secret references is shown as written and survives the round trip; a
/// literal secret is shown as the placeholder, and applying the placeholder
/// back is refused naming the key, so the running secret is never replaced.
#[tokio::test]
async fn a_shown_config_applied_back_keeps_its_references_and_never_applies_the_placeholder() {
    let s = setup().await;
    let admin = s.server.admin_addr;
    let c = body_client();
    let url = chat_url(s.server.data_addr);
    let config_url = format!("http://{admin}/v1/config");
    let shown = |a: &Answer| -> (String, String) {
        let v = a.json();
        (
            v["text"].as_str().unwrap().to_string(),
            v["version"].to_string(),
        )
    };
    let (text, version) = shown(&admin_call("GET", &config_url, None, &[], "").await);
    assert!(text.contains("${file:"), "{text}");
    assert!(!text.contains(SECRET), "{text}");
    let etag = format!("\"{version}\"");
    let put = admin_call("PUT", &config_url, None, &[("if-match", &etag)], &text).await;
    assert_eq!(put.status, 200, "{}", put.json());
    let user = user_on(&s, &c, "canary").await;
    post(&c, &url, chat(&user).as_bytes(), &[]).await;
    assert_eq!(
        last_body(&s.canary).headers["authorization"],
        format!("Bearer {SECRET}").as_str()
    );

    // A literal secret: shown as the placeholder, refused when applied back.
    let reference = format!("\"Bearer ${{file:{}}}\"", s.secret_file.display());
    let literal = text.replace(&reference, "Bearer sk-literal-77");
    assert_ne!(literal, text);
    put_config(admin, None, &literal).await;
    let (text, version) = shown(&admin_call("GET", &config_url, None, &[], "").await);
    assert!(!text.contains("sk-literal-77"), "{text}");
    assert!(text.contains("authorization: REDACTED"), "{text}");
    let etag = format!("\"{version}\"");
    let put = admin_call("PUT", &config_url, None, &[("if-match", &etag)], &text).await;
    let problem = String::from_utf8_lossy(&put.body).to_string();
    assert!((400..500).contains(&put.status), "{} {problem}", put.status);
    assert!(
        problem.contains("backends.canary.headers.authorization"),
        "{problem}"
    );
    assert!(!problem.contains("sk-literal-77"), "{problem}");
    let user = user_on(&s, &c, "canary").await;
    post(&c, &url, chat(&user).as_bytes(), &[]).await;
    assert_eq!(
        last_body(&s.canary).headers["authorization"],
        "Bearer sk-literal-77"
    );
    s.server.shutdown().await;
}

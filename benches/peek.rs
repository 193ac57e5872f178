//! Model-aware routing's cost on the data path (targets: ≤ 1 µs of CPU for
//! the peek and match of a 1 KiB JSON request, ≤ 2 µs with a `model`
//! rewrite). The socket reads are the same with or without a peek; what a
//! peek adds is parsing what was read, matching on it, and (for a rewrite)
//! slicing the frames around the new value. Each case starts from the frames
//! as they came off the socket.

use std::hint::black_box;

use abgate::config;
use abgate::proxy::peek::Peek;
use abgate::proxy::wiring::model_json;
use abgate::routing::{RequestView, Route, RoutingTable};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::HeaderMap;

/// An OpenAI chat request of exactly 1 KiB (the prompt padded).
fn chat_1k() -> Bytes {
    let head = r#"{"model":"gpt-x","temperature":0.2,"stream":true,"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":""#;
    let tail = r#""}],"metadata":{"model":"not-this-one","tags":["a","b"]},"user":"user-12345"}"#;
    let words = "Summarize the \\\"quarterly\\\" report in three bullet points, please. ";
    let mut content = String::new();
    while content.len() + head.len() + tail.len() < 1024 {
        content.push_str(words);
    }
    content.truncate(1024 - head.len() - tail.len());
    while content.ends_with('\\') {
        content.pop();
        content.push('x');
    }
    let body = format!("{head}{content}{tail}");
    assert_eq!(body.len(), 1024);
    Bytes::from(body)
}

const CONFIG: &str = r#"
backends: { a: { url: "http://127.0.0.1:1" }, b: { url: "http://127.0.0.1:2" } }
default_backend: a
experiments:
  - name: gptx
    match: { path_prefix: /v1/chat/completions, model: gpt-x }
    unit: { body: user }
    arms:
      - { name: stable, backend: a, weight: 50 }
      - { name: canary, backend: b, weight: 50, model: llama-x }
"#;

/// Peek (parse what was read), route on its model, assign on its `user`;
/// the arm index (or `usize::MAX`) and the peek.
fn peek_route(table: &RoutingTable<()>, headers: &HeaderMap, frames: Vec<Bytes>) -> (usize, Peek) {
    let peek = Peek::of_frames(frames, Some("user"));
    let fields = peek.fields();
    let view = RequestView {
        host: None,
        path: "/v1/chat/completions",
        headers,
        body: Some(&fields),
    };
    let arm = match table.route(&view) {
        Route::Experiment(e) => e
            .assign_with(headers, Some(&fields), || 0)
            .map_or(usize::MAX, |a| a.arm),
        _ => usize::MAX,
    };
    drop(fields);
    (arm, peek)
}

fn peek(c: &mut Criterion) {
    let config = config::parse(CONFIG).unwrap();
    let table = RoutingTable::build(&config, |_, _| (), |_| ());
    let headers = HeaderMap::new();
    let body = chat_1k();
    let (arm, _) = peek_route(&table, &headers, vec![body.clone()]);
    assert_ne!(arm, usize::MAX, "the bench request must match");
    let model = model_json("llama-x");

    let mut g = c.benchmark_group("peek");
    g.bench_function("1KiB top-level scan only", |b| {
        b.iter(|| black_box(abgate::routing::body::scan(black_box(&body), Some("user"))))
    });
    g.bench_function("1KiB peek+match+assign, one frame", |b| {
        b.iter(|| black_box(peek_route(&table, &headers, vec![black_box(body.clone())]).0))
    });
    let four: Vec<Bytes> = (0..4).map(|i| body.slice(i * 256..(i + 1) * 256)).collect();
    g.bench_function("1KiB peek+match+assign, four frames (joined)", |b| {
        b.iter(|| black_box(peek_route(&table, &headers, black_box(four.clone())).0))
    });
    g.bench_function("1KiB peek+match+assign+rewrite, one frame", |b| {
        b.iter(|| {
            let (_, mut p) = peek_route(&table, &headers, vec![black_box(body.clone())]);
            black_box(p.rewrite_model(&model));
            black_box(p.frames().len())
        })
    });
    // For comparison: the same request routed on its head alone (no model rule).
    let plain = config::parse(
        &CONFIG
            .replace(", model: gpt-x", "")
            .replace("{ body: user }", "{ header: x-user }"),
    )
    .unwrap();
    let plain = RoutingTable::build(&plain, |_, _| (), |_| ());
    g.bench_function("head-only route+assign (no peek), for reference", |b| {
        b.iter(|| {
            let view = RequestView {
                host: None,
                path: "/v1/chat/completions",
                headers: &headers,
                body: None,
            };
            black_box(match plain.route(&view) {
                Route::Experiment(e) => e.assign(&headers, || 0).map_or(usize::MAX, |a| a.arm),
                _ => usize::MAX,
            })
        })
    });
    g.finish();
}

criterion_group!(benches, peek);
criterion_main!(benches);

//! The response scanner's cost on the data path (targets: ≤ 2 µs of CPU per
//! SSE event, and a small share of a request's proxy cost for a 2 KiB JSON
//! completion). Each case scans a whole response the way `RecordingBody`
//! feeds it: one `feed` per frame, then `finish`.

use std::hint::black_box;

use abgate::outcomes::scan::{BodyKind, End, Scanner};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const CHAT_STREAM: &[u8] = include_bytes!("../src/outcomes/scan/fixtures/chat-stream-usage.sse");
const RESPONSES_STREAM: &[u8] =
    include_bytes!("../src/outcomes/scan/fixtures/responses-stream.sse");

/// An OpenAI chat completion of exactly 2 KiB (the content string padded).
fn json_2k() -> Vec<u8> {
    let head = r#"{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion","created":1741569952,"model":"gpt-4.1-2025-04-14","choices":[{"index":0,"message":{"role":"assistant","content":""#;
    let tail = r#"","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":19,"completion_tokens":410,"total_tokens":429,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_b705f0c291"}"#;
    let words = "The quick brown fox jumps over the lazy dog, and \\\"quotes\\\" stay escaped. ";
    let mut content = String::new();
    while content.len() + head.len() + tail.len() < 2048 {
        content.push_str(words);
    }
    content.truncate(2048 - head.len() - tail.len());
    // Never end on half an escape.
    while content.ends_with('\\') {
        content.pop();
        content.push('x');
    }
    let body = format!("{head}{content}{tail}");
    assert_eq!(body.len(), 2048);
    body.into_bytes()
}

/// A stream's events, one frame each, as servers flush them.
fn events(stream: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..stream.len() {
        if stream[i - 1] == b'\n' && stream[i] == b'\n' {
            out.push(&stream[start..=i]);
            start = i + 1;
        }
    }
    out
}

fn scan(kind: BodyKind, frames: &[&[u8]]) -> abgate::outcomes::scan::ScanReport {
    let mut s = Scanner::new(kind, false, true);
    for (i, f) in frames.iter().enumerate() {
        s.feed(black_box(f), i as u64 * 1000);
    }
    s.finish(End::Eof, 1_000_000)
}

fn scanner(c: &mut Criterion) {
    let mut g = c.benchmark_group("scan");
    for (name, stream) in [
        ("chat_stream", CHAT_STREAM),
        ("responses_stream", RESPONSES_STREAM),
    ] {
        let frames = events(stream);
        g.throughput(Throughput::Elements(frames.len() as u64));
        g.bench_function(format!("{name}_per_event"), |b| {
            b.iter(|| scan(BodyKind::Sse, &frames))
        });
    }
    let body = json_2k();
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("json_2k", |b| b.iter(|| scan(BodyKind::Json, &[&body])));
    // What a response the scanner does not read costs (new + finish).
    g.throughput(Throughput::Elements(1));
    g.bench_function("not_scanned", |b| {
        b.iter(|| scan(BodyKind::Other, &[&body]))
    });
    g.finish();
}

criterion_group!(benches, scanner);
criterion_main!(benches);

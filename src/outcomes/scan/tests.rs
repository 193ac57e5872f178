//! The scanner against captured-style responses of each format, split at
//! every byte, cut short, and fed garbage.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

const CHAT_USAGE: &[u8] = include_bytes!("fixtures/chat-stream-usage.sse");
const CHAT_CRLF: &[u8] = include_bytes!("fixtures/chat-stream-crlf.sse");
const CHAT_TOOLS: &[u8] = include_bytes!("fixtures/chat-tools-stream.sse");
const CHAT_N2: &[u8] = include_bytes!("fixtures/chat-n2-stream.sse");
const COMPLETIONS: &[u8] = include_bytes!("fixtures/completions-stream.sse");
const RESPONSES: &[u8] = include_bytes!("fixtures/responses-stream.sse");
const CHAT_JSON: &[u8] = include_bytes!("fixtures/chat.json");
const RESPONSES_JSON: &[u8] = include_bytes!("fixtures/responses-incomplete.json");

const FIXTURES: &[(&str, BodyKind, &[u8])] = &[
    ("chat-stream-usage", BodyKind::Sse, CHAT_USAGE),
    ("chat-stream-crlf", BodyKind::Sse, CHAT_CRLF),
    ("chat-tools-stream", BodyKind::Sse, CHAT_TOOLS),
    ("chat-n2-stream", BodyKind::Sse, CHAT_N2),
    ("completions-stream", BodyKind::Sse, COMPLETIONS),
    ("responses-stream", BodyKind::Sse, RESPONSES),
    ("chat.json", BodyKind::Json, CHAT_JSON),
    ("responses-incomplete.json", BodyKind::Json, RESPONSES_JSON),
];

/// Feeds `pieces` in order, each at time 0, and finishes at EOF, as the
/// answer to a generation endpoint.
fn scan_pieces<'a>(kind: BodyKind, pieces: impl IntoIterator<Item = &'a [u8]>) -> ScanReport {
    let mut s = Scanner::new(kind, false, true);
    for p in pieces {
        s.feed(p, 0);
    }
    s.finish(End::Eof, 0)
}

fn scan(kind: BodyKind, body: &[u8]) -> ScanReport {
    scan_pieces(kind, [body])
}

fn parsed(r: ScanReport) -> Inference {
    match r {
        ScanReport::Parsed(i) => i,
        other => panic!("not parsed: {other:?}"),
    }
}

/// Feeds `frames` as (bytes, arrival µs), finishing with `end`.
fn timed(kind: BodyKind, frames: &[(&[u8], u64)], end: End) -> ScanReport {
    let mut s = Scanner::new(kind, false, true);
    let mut last = 0;
    for (bytes, at) in frames {
        s.feed(bytes, *at);
        last = *at;
    }
    s.finish(end, last)
}

#[test]
fn every_split_of_every_fixture_reads_as_the_whole() {
    let mut rng = StdRng::seed_from_u64(7);
    for (name, kind, body) in FIXTURES {
        let whole = scan(*kind, body);
        assert!(matches!(whole, ScanReport::Parsed(_)), "{name}: {whole:?}");
        // One byte per write.
        let bytewise = scan_pieces(*kind, body.chunks(1));
        assert_eq!(bytewise, whole, "{name}: byte by byte");
        // Every two-piece split.
        for i in 0..=body.len() {
            let two = scan_pieces(*kind, [&body[..i], &body[i..]]);
            assert_eq!(two, whole, "{name}: split at {i}");
        }
        // Random many-piece splits (seeded).
        for _ in 0..200 {
            let mut cuts: Vec<usize> = (0..rng.random_range(1..12))
                .map(|_| rng.random_range(0..=body.len()))
                .collect();
            cuts.push(0);
            cuts.push(body.len());
            cuts.sort_unstable();
            let pieces: Vec<&[u8]> = cuts.windows(2).map(|w| &body[w[0]..w[1]]).collect();
            assert_eq!(
                scan_pieces(*kind, pieces.iter().copied()),
                whole,
                "{name}: {cuts:?}"
            );
        }
    }
}

#[test]
fn each_format_says_what_it_should() {
    let chat = parsed(scan(BodyKind::Sse, CHAT_USAGE));
    assert_eq!(
        (chat.prompt_tokens, chat.completion_tokens),
        (Some(19), Some(7))
    );
    assert_eq!(chat.finish, Some(Finish::Stop));
    assert_eq!(chat.complete, Some(true));
    assert!(chat.streamed);
    assert_eq!(chat.ttft_us, Some(0));

    let crlf = parsed(scan(BodyKind::Sse, CHAT_CRLF));
    assert_eq!(crlf.finish, Some(Finish::Length));
    assert_eq!(crlf.complete, Some(true));
    assert_eq!(
        crlf.prompt_tokens, None,
        "no usage chunk without include_usage"
    );

    let tools = parsed(scan(BodyKind::Sse, CHAT_TOOLS));
    assert_eq!(tools.finish, Some(Finish::ToolCalls));
    assert!(
        tools.ttft_us.is_some(),
        "tool-call deltas are generated content"
    );

    let n2 = parsed(scan(BodyKind::Sse, CHAT_N2));
    assert_eq!(
        n2.finish,
        Some(Finish::Length),
        "one of two choices hit the limit"
    );

    let legacy = parsed(scan(BodyKind::Sse, COMPLETIONS));
    assert_eq!(
        (legacy.prompt_tokens, legacy.completion_tokens),
        (Some(5), Some(4))
    );
    assert_eq!(legacy.finish, Some(Finish::Length));

    let responses = parsed(scan(BodyKind::Sse, RESPONSES));
    assert_eq!(
        (responses.prompt_tokens, responses.completion_tokens),
        (Some(37), Some(3))
    );
    assert_eq!(responses.finish, Some(Finish::Stop));
    assert_eq!(
        responses.complete,
        Some(true),
        "response.completed ends it; no [DONE]"
    );

    let json = parsed(scan(BodyKind::Json, CHAT_JSON));
    assert_eq!(
        (json.prompt_tokens, json.completion_tokens),
        (Some(19), Some(10))
    );
    assert_eq!(json.finish, Some(Finish::Stop));
    assert!(!json.streamed);
    assert_eq!((json.ttft_us, json.complete), (None, None));

    let rj = parsed(scan(BodyKind::Json, RESPONSES_JSON));
    assert_eq!(
        (rj.prompt_tokens, rj.completion_tokens),
        (Some(36), Some(16))
    );
    assert_eq!(rj.finish, Some(Finish::Length));
}

/// The byte offsets just past each event's blank line.
fn event_ends(body: &[u8]) -> Vec<usize> {
    body.windows(2)
        .enumerate()
        .filter(|(_, w)| w == b"\n\n")
        .map(|(i, _)| i + 2)
        .collect()
}

#[test]
fn time_to_first_token_is_the_first_content_event_not_the_first_byte() {
    let ends = event_ends(CHAT_USAGE);
    // The role-only chunk at 0 ms, each later event 200 ms + 10 ms per event.
    let mut frames: Vec<(&[u8], u64)> = vec![(&CHAT_USAGE[..ends[0]], 0)];
    for (k, w) in ends.windows(2).enumerate() {
        frames.push((&CHAT_USAGE[w[0]..w[1]], 200_000 + 10_000 * k as u64));
    }
    let r = parsed(timed(BodyKind::Sse, &frames, End::Eof));
    assert_eq!(r.ttft_us, Some(200_000));
    // Seven content events, 10 ms apart.
    assert_eq!(r.itl_us, Some(10_000));

    // The Responses API: lifecycle events first, the first text delta later.
    let ends = event_ends(RESPONSES);
    let frames: Vec<(&[u8], u64)> = std::iter::once(0)
        .chain(ends.iter().copied())
        .zip(ends.iter().copied())
        .enumerate()
        .map(|(k, (a, b))| (&RESPONSES[a..b], 1000 * k as u64))
        .collect();
    let r = parsed(timed(BodyKind::Sse, &frames, End::Eof));
    assert_eq!(r.ttft_us, Some(4000), "the fifth event is the first delta");
}

#[test]
fn a_stream_cut_before_its_end_is_incomplete_unless_the_client_left() {
    let ends = event_ends(CHAT_USAGE);
    // Cut after the third content event, and in the middle of the fourth.
    for cut in [ends[3], ends[3] + 40] {
        let body = &CHAT_USAGE[..cut];
        for (end, want) in [
            (End::Eof, Some(false)),
            (End::BackendCut, Some(false)),
            (End::ClientGone, None),
        ] {
            let r = parsed(timed(BodyKind::Sse, &[(body, 5)], end));
            assert_eq!(r.complete, want, "cut at {cut}, {end:?}");
            assert_eq!(r.completion_tokens, None, "the usage chunk never came");
            assert!(r.ttft_us.is_some());
        }
    }
    // A finish reason is enough, even without [DONE] or a usage chunk.
    let finish_chunk_end = ends[ends.len() - 3];
    let r = parsed(scan(BodyKind::Sse, &CHAT_USAGE[..finish_chunk_end]));
    assert_eq!(r.complete, Some(true));
    // [DONE] as the very last bytes, without its blank line.
    let r = parsed(scan(
        BodyKind::Sse,
        CHAT_USAGE.strip_suffix(b"\n\n").unwrap(),
    ));
    assert_eq!(r.complete, Some(true));
    // Responses API: cut before response.completed.
    let ends = event_ends(RESPONSES);
    let r = parsed(timed(
        BodyKind::Sse,
        &[(&RESPONSES[..ends[ends.len() - 2]], 0)],
        End::Eof,
    ));
    assert_eq!(r.complete, Some(false));
    // An inference endpoint that sent headers and closed before any event.
    let r = parsed(timed(BodyKind::Sse, &[], End::BackendCut));
    assert_eq!(r.complete, Some(false));
}

#[test]
fn bad_input_is_unparsed_and_never_fails() {
    let cases: &[(&str, BodyKind, &[u8], ScanReport)] = &[
        (
            "malformed JSON",
            BodyKind::Json,
            br#"{"choices":[{"message":{"content":"x"}},]}"#,
            ScanReport::Unparsed(Unparsed::Malformed),
        ),
        (
            "HTML with a JSON content type",
            BodyKind::Json,
            b"<!doctype html><html><body>502 Bad Gateway</body></html>",
            ScanReport::Unparsed(Unparsed::Malformed),
        ),
        (
            "garbage data line",
            BodyKind::Sse,
            b"data: {\"choices\":[]}\n\ndata: not json at all\n\ndata: [DONE]\n\n",
            ScanReport::Unparsed(Unparsed::Malformed),
        ),
        (
            "JSON that is not an inference response",
            BodyKind::Json,
            br#"{"status":"ok","items":[1,2,3]}"#,
            ScanReport::Skipped,
        ),
    ];
    for (what, kind, body, want) in cases {
        assert_eq!(scan(*kind, body), *want, "{what}");
        assert_eq!(
            scan_pieces(*kind, body.chunks(1)),
            *want,
            "{what}, bytewise"
        );
    }
    // The same bodies from an endpoint that is not a generation endpoint are
    // other traffic, not inference gone wrong.
    for body in [&b"<html>"[..], b"data: plain text\n\n"] {
        for kind in [BodyKind::Json, BodyKind::Sse] {
            let mut s = Scanner::new(kind, false, false);
            s.feed(body, 0);
            assert_eq!(s.finish(End::Eof, 0), ScanReport::Skipped);
        }
    }
    // Unless they had shown inference fields before going wrong.
    let mut s = Scanner::new(BodyKind::Sse, false, false);
    s.feed(b"data: {\"choices\":[]}\n\ndata: oops\n\n", 0);
    assert_eq!(
        s.finish(End::Eof, 0),
        ScanReport::Unparsed(Unparsed::Malformed)
    );
    // Lines that are not `data:` are framing, not errors: unknown fields,
    // lines without a colon, comments, binary noise outside data lines.
    let mut noisy = b"garbage without colon\n\x00\x01\xff: \xfe\nbogus: field\n".to_vec();
    noisy.extend_from_slice(CHAT_USAGE);
    assert_eq!(scan(BodyKind::Sse, &noisy), scan(BodyKind::Sse, CHAT_USAGE));
    // A compressed body, and a non-JSON answer to a generation endpoint.
    let mut s = Scanner::new(BodyKind::Sse, true, true);
    s.feed(CHAT_USAGE, 0);
    assert_eq!(
        s.finish(End::Eof, 0),
        ScanReport::Unparsed(Unparsed::Compressed)
    );
    let mut s = Scanner::new(BodyKind::Other, false, true);
    s.feed(b"<html>", 0);
    assert_eq!(
        s.finish(End::Eof, 0),
        ScanReport::Unparsed(Unparsed::NotInference)
    );
    // Other content types elsewhere are none of the scanner's business.
    let mut s = Scanner::new(BodyKind::Other, false, false);
    s.feed(b"\x00\x01", 0);
    assert_eq!(s.finish(End::Eof, 0), ScanReport::Skipped);
    // A JSON body the backend cut short is a transport failure, counted elsewhere.
    let mut s = Scanner::new(BodyKind::Json, false, true);
    s.feed(&CHAT_JSON[..100], 0);
    assert_eq!(s.finish(End::BackendCut, 0), ScanReport::Skipped);
}

#[test]
fn a_100_mb_line_without_newline_is_scanned_in_constant_memory() {
    // The scanner owns no heap memory at all: its size is its memory.
    assert!(
        std::mem::size_of::<Scanner>() < 512,
        "{}",
        std::mem::size_of::<Scanner>()
    );
    let chunk = vec![b'a'; 64 * 1024];
    for (kind, prefix, want) in [
        (BodyKind::Sse, &b"data: "[..], Unparsed::LineTooLong),
        (BodyKind::Sse, &b": comment "[..], Unparsed::LineTooLong),
        (
            BodyKind::Sse,
            &b"data: {\"choices\":\""[..],
            Unparsed::LineTooLong,
        ),
        (BodyKind::Json, &b"{\"x\":\""[..], Unparsed::TooLarge),
    ] {
        let mut s = Scanner::new(kind, false, true);
        s.feed(prefix, 0);
        let mut fed = prefix.len();
        while fed < 100 << 20 {
            s.feed(&chunk, 0);
            fed += chunk.len();
        }
        assert!(!s.is_active(), "gave up well before the end");
        assert_eq!(s.finish(End::Eof, 0), ScanReport::Unparsed(want));
    }
}

#[test]
fn content_types_are_classified_by_their_essence() {
    for (ct, want) in [
        (&b"application/json"[..], BodyKind::Json),
        (b"Application/JSON; charset=utf-8", BodyKind::Json),
        (b"application/problem+json", BodyKind::Json),
        (b"text/event-stream", BodyKind::Sse),
        (b"text/event-stream;charset=UTF-8", BodyKind::Sse),
        (b"text/plain", BodyKind::Other),
        (b"application/grpc", BodyKind::Other),
        (b"", BodyKind::Other),
    ] {
        assert_eq!(
            BodyKind::of(Some(ct)),
            want,
            "{:?}",
            String::from_utf8_lossy(ct)
        );
    }
    assert_eq!(BodyKind::of(None), BodyKind::Other);
    assert!(is_inference_path("/v1/chat/completions"));
    assert!(is_inference_path("/openai/v1/responses"));
    assert!(!is_inference_path("/v1/embeddings"));
}

//! `inject_usage`: asking a streaming completion for its usage chunk on the
//! client's behalf, and hiding that chunk from a client that never asked.
//!
//! Owns: deciding whether a request may be rewritten ([`may_inject`]), the
//! bounded rewrite of its JSON body ([`inject`]), and the response filter that
//! removes the usage-only chunk ([`UsageStrip`]).
//!
//! Never: touches a request it cannot bound (no `Content-Length`, or larger
//! than [`MAX_INJECT_BODY`]), a non-streaming one, or one that asked for usage
//! itself; or changes a byte of the answer other than the one chunk it asked
//! for. Until the stream's finish reason has passed, every byte goes out as it
//! arrives; after it (where OpenAI sends the usage chunk, right before
//! `[DONE]`), each event is held only until its blank line, to see whether it
//! is the usage chunk, and at most [`MAX_HELD`] bytes of it.

use bytes::{Bytes, BytesMut};
use http::header;

use crate::outcomes::scan::json::Fields;
use crate::outcomes::scan::sse::{Event, SseScanner};

/// Largest request body rewritten, in bytes. Prompts are usually far smaller;
/// a larger one passes untouched (and without usage, as before).
pub const MAX_INJECT_BODY: u64 = 1 << 20;

/// Longest event held back to check whether it is the usage chunk. The usage
/// chunk is a few hundred bytes; an event past this is passed on as it is.
pub const MAX_HELD: usize = 64 << 10;

/// Whether `parts` is a request `inject_usage` may rewrite: a POST with a
/// JSON body of known, bounded length to a chat completions or completions
/// endpoint.
pub fn may_inject(parts: &http::request::Parts) -> bool {
    let path = parts.uri.path();
    let json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    let bounded = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n <= MAX_INJECT_BODY);
    parts.method == http::Method::POST
        && (path.ends_with("/chat/completions") || path.ends_with("/completions"))
        && json
        && bounded
}

#[derive(serde::Deserialize)]
struct Probe {
    #[serde(default)]
    stream: Option<bool>,
    /// Present (even `null`) or absent.
    #[serde(default, deserialize_with = "present")]
    stream_options: Option<serde_json::Value>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde::Deserialize::deserialize(d).map(Some)
}

/// The body with `stream_options.include_usage: true` added, or `None` when
/// it is not a streaming request, already asks for usage, or is not JSON.
///
/// Without `stream_options` the member is inserted as text right after the
/// opening brace, so every other byte stays as the client wrote it; with a
/// `stream_options` that lacks `include_usage: true`, the document is
/// re-serialized (member order may change; JSON objects are unordered).
pub fn inject(body: &[u8]) -> Option<Bytes> {
    let probe: Probe = serde_json::from_slice(body).ok()?;
    if probe.stream != Some(true) {
        return None;
    }
    match probe.stream_options {
        None => {
            let open = body.iter().position(|&b| b == b'{')?;
            let after = &body[open + 1..];
            let empty = after.trim_ascii_start().starts_with(b"}");
            let member: &[u8] = if empty {
                br#""stream_options":{"include_usage":true}"#
            } else {
                br#""stream_options":{"include_usage":true},"#
            };
            let mut out = BytesMut::with_capacity(body.len() + member.len());
            out.extend_from_slice(&body[..=open]);
            out.extend_from_slice(member);
            out.extend_from_slice(after);
            Some(out.freeze())
        }
        Some(opts) if opts.get("include_usage") == Some(&serde_json::Value::Bool(true)) => None,
        Some(_) => {
            let mut doc: serde_json::Value = serde_json::from_slice(body).ok()?;
            let obj = doc.as_object_mut()?;
            let opts = obj
                .entry("stream_options")
                .or_insert_with(|| serde_json::json!({}));
            if !opts.is_object() {
                *opts = serde_json::json!({});
            }
            opts.as_object_mut()?
                .insert("include_usage".into(), serde_json::Value::Bool(true));
            serde_json::to_vec(&doc).ok().map(Bytes::from)
        }
    }
}

/// Finds the ends of SSE events (the blank line after them) across chunks.
#[derive(Default)]
struct Boundaries {
    /// No byte on the current line yet.
    at_line_start: bool,
    /// The last byte was a `\r` line end; a `\n` now is part of it.
    after_cr: bool,
}

impl Boundaries {
    fn new() -> Self {
        Boundaries {
            at_line_start: true,
            after_cr: false,
        }
    }

    /// The index just past the first event end in `bytes`, if any.
    fn next(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut k = 0;
        while k < bytes.len() {
            let b = bytes[k];
            if std::mem::take(&mut self.after_cr) && b == b'\n' {
                k += 1;
                continue;
            }
            match b {
                b'\n' | b'\r' => {
                    let blank = self.at_line_start;
                    self.at_line_start = true;
                    self.after_cr = b == b'\r';
                    if blank {
                        // Keep a `\r\n` blank line whole when both bytes are here.
                        if self.after_cr && bytes.get(k + 1) == Some(&b'\n') {
                            self.after_cr = false;
                            return Some(k + 2);
                        }
                        return Some(k + 1);
                    }
                }
                _ => self.at_line_start = false,
            }
            k += 1;
        }
        None
    }
}

/// Removes the usage-only chunk from an event stream whose request asked for
/// it only because of `inject_usage`.
pub struct UsageStrip {
    bounds: Boundaries,
    /// Before the finish reason: bytes go out at once (and are read here only
    /// to see the finish reason go by).
    passing: bool,
    events: SseScanner,
    held: BytesMut,
    /// An event was too long to be the usage chunk: everything passes from now.
    gave_up: bool,
    /// The last event's blank line ended in `\r` at the end of a frame: a
    /// `\n` starting the next frame belongs to it, and goes where it went
    /// (`true`: to the client; `false`: it was the dropped usage chunk).
    lf_owner: Option<bool>,
}

impl Default for UsageStrip {
    fn default() -> Self {
        UsageStrip {
            bounds: Boundaries::new(),
            passing: true,
            events: SseScanner::default(),
            held: BytesMut::new(),
            gave_up: false,
            lf_owner: None,
        }
    }
}

/// Whether a dispatched event is the usage-only chunk: usage and nothing a
/// client reads (no choice content, no finish reason).
fn is_usage_only(f: &Fields) -> bool {
    (f.prompt_tokens.is_some() || f.completion_tokens.is_some())
        && !f.content
        && f.finish.is_none()
        && f.recognized
}

impl UsageStrip {
    /// What of `data` the client gets now (possibly nothing: it is held, or
    /// it was the usage chunk).
    pub fn filter(&mut self, data: Bytes) -> Bytes {
        if self.gave_up {
            return data;
        }
        let mut out = BytesMut::new();
        let mut rest = &data[..];
        while !rest.is_empty() {
            if self.gave_up {
                out.extend_from_slice(rest);
                break;
            }
            if let Some(keep) = self.lf_owner.take() {
                if rest[0] == b'\n' {
                    self.bounds.after_cr = false;
                    if keep {
                        out.extend_from_slice(b"\n");
                    }
                    rest = &rest[1..];
                    continue;
                }
            }
            let end = self.bounds.next(rest);
            let seg = &rest[..end.unwrap_or(rest.len())];
            if self.passing {
                out.extend_from_slice(seg);
                let mut finished = false;
                let _ = self.events.feed(seg, &mut |e| {
                    if let Event::Json(f) = e {
                        finished |= f.finish.is_some();
                    }
                });
                if end.is_some() {
                    self.lf_owner = seg.ends_with(b"\r").then_some(true);
                    if finished {
                        self.passing = false;
                    }
                }
            } else {
                self.held.extend_from_slice(seg);
                if self.held.len() > MAX_HELD {
                    out.extend_from_slice(&self.held);
                    self.held.clear();
                    self.gave_up = true;
                } else if end.is_some() {
                    let mut usage_only = false;
                    let mut one = SseScanner::default();
                    let _ = one.feed(&self.held, &mut |e| {
                        usage_only = matches!(e, Event::Json(f) if is_usage_only(&f));
                    });
                    if !usage_only {
                        out.extend_from_slice(&self.held);
                    }
                    self.lf_owner = self.held.ends_with(b"\r").then_some(!usage_only);
                    self.held.clear();
                }
            }
            rest = &rest[seg.len()..];
        }
        out.freeze()
    }

    /// The stream ended: whatever is still held goes out as it came.
    pub fn finish(&mut self) -> Option<Bytes> {
        (!self.held.is_empty()).then(|| self.held.split().freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n\
        data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}],\"usage\":null}\n\n\
        data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n";
    const USAGE: &str = "data: {\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":1,\"total_tokens\":10}}\n\n";
    const DONE: &str = "data: [DONE]\n\n";

    fn strip(pieces: &[&[u8]]) -> Vec<u8> {
        let mut s = UsageStrip::default();
        let mut out = Vec::new();
        for p in pieces {
            out.extend_from_slice(&s.filter(Bytes::copy_from_slice(p)));
        }
        out.extend_from_slice(&s.finish().unwrap_or_default());
        out
    }

    #[test]
    fn the_usage_chunk_is_removed_at_any_split_and_nothing_else_changes() {
        for eol in ["\n", "\r\n"] {
            let conv = |s: &str| s.replace('\n', eol);
            let with = conv(&format!("{STREAM}{USAGE}{DONE}"));
            let without = conv(&format!("{STREAM}{DONE}"));
            let b = with.as_bytes();
            assert_eq!(strip(&[b]), without.as_bytes());
            for i in 0..=b.len() {
                assert_eq!(
                    strip(&[&b[..i], &b[i..]]),
                    without.as_bytes(),
                    "split at {i} ({eol:?})"
                );
            }
            let bytewise: Vec<&[u8]> = b.chunks(1).collect();
            assert_eq!(strip(&bytewise), without.as_bytes());
            // A stream without the chunk (the backend ignored the option), or
            // cut short, passes as it is.
            assert_eq!(strip(&[without.as_bytes()]), without.as_bytes());
            // Cut inside the usage chunk: an event never completed is never
            // dropped.
            let cut = &b[..b.len() - 20];
            assert_eq!(strip(&[cut]), cut);
        }
    }

    #[test]
    fn before_the_finish_nothing_is_held() {
        let mut s = UsageStrip::default();
        let first = &STREAM.as_bytes()[..30];
        assert_eq!(&s.filter(Bytes::copy_from_slice(first))[..], first);
    }

    #[test]
    fn only_streaming_requests_without_usage_are_rewritten() {
        let out = inject(br#"{"model":"m","stream":true,"messages":[]}"#).unwrap();
        assert_eq!(
            &out[..],
            br#"{"stream_options":{"include_usage":true},"model":"m","stream":true,"messages":[]}"#
        );
        let out = inject(br#" {"stream":true, "stream_options":{"include_usage":false}}"#).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        let out = inject(br#"{"stream":true,"stream_options":null}"#).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        for body in [
            &br#"{"stream":false}"#[..],
            br#"{"model":"m"}"#,
            br#"{"stream":true,"stream_options":{"include_usage":true}}"#,
            b"not json",
            br#"[1,2]"#,
        ] {
            assert_eq!(inject(body), None, "{}", String::from_utf8_lossy(body));
        }
    }
}

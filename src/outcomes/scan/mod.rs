//! The response scanner: what an OpenAI-compatible response said about the
//! inference behind it (tokens, time to first token, gaps between tokens, why it
//! stopped, whether a stream ended properly), read while the bytes pass.
//!
//! Owns: recognizing chat completions, completions and the Responses API, in
//! `application/json` and `text/event-stream`, from bytes fed in pieces of any
//! size and split anywhere; and the report of one response ([`ScanReport`]).
//!
//! Never: holds, copies, delays or changes a byte (it is handed each chunk
//! after the proxy has it, and only looks), allocates, or reads a clock (the
//! caller passes the time of each chunk, so the scanner is pure and tested
//! without sockets). Its memory is fixed per response whatever the response's
//! size: no line buffer ([`sse`] streams `data:` values into [`json`]), a
//! fixed container stack, a 48-byte capture for the few strings compared.
//! Past a limit ([`sse::MAX_LINE`], [`MAX_JSON_BODY`]) or on malformed input
//! it stops looking and reports the response as unparsed.
//!
//! Why here, below the proxy, and not in it: nothing in it is HTTP. The proxy
//! classifies the response from its headers ([`BodyKind::of`]) and feeds the
//! body; the recorder turns the report into per-arm metrics.

pub mod json;
pub mod sse;

pub use json::{EventType, Fields, Finish};

use json::{JsonScanner, Outcome};
use sse::{Event, SseScanner};

/// Largest `application/json` body scanned, in bytes. A non-streamed
/// completion is rarely above a few hundred KiB; past this the response is
/// unparsed instead of costing CPU to its end.
pub const MAX_JSON_BODY: u64 = 16 << 20;

/// How a response body is framed, from its `content-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `application/json` or any `+json` type.
    Json,
    /// `text/event-stream`.
    Sse,
    /// Anything else (or no content type): not scanned.
    Other,
}

impl BodyKind {
    /// Classifies a `content-type` value (parameters and case ignored).
    pub fn of(content_type: Option<&[u8]>) -> BodyKind {
        let Some(ct) = content_type else {
            return BodyKind::Other;
        };
        let essence = ct.split(|&b| b == b';').next().unwrap_or(ct).trim_ascii();
        let plus_json =
            essence.len() > 5 && essence[essence.len() - 5..].eq_ignore_ascii_case(b"+json");
        if essence.eq_ignore_ascii_case(b"application/json") || plus_json {
            BodyKind::Json
        } else if essence.eq_ignore_ascii_case(b"text/event-stream") {
            BodyKind::Sse
        } else {
            BodyKind::Other
        }
    }
}

/// Whether a request path is one of the OpenAI-style generation endpoints, so
/// a response to it that is not a recognizable completion is worth counting
/// as unparsed (e.g. an HTML error page sent with status 200).
pub fn is_inference_path(path: &str) -> bool {
    path.ends_with("/chat/completions")
        || path.ends_with("/completions")
        || path.ends_with("/responses")
}

/// Why a response could not be scanned. Counted only for responses that
/// were, or were expected to be, inference: the request went to a generation
/// endpoint ([`is_inference_path`]) or the body had shown inference fields
/// before it went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unparsed {
    /// Malformed JSON, or an SSE `data:` payload that is neither JSON nor `[DONE]`.
    Malformed,
    /// An SSE line longer than [`sse::MAX_LINE`].
    LineTooLong,
    /// A JSON body larger than [`MAX_JSON_BODY`].
    TooLarge,
    /// A compressed body (`content-encoding` other than `identity`): scanning
    /// it would mean decompressing a copy, which abgate does not do.
    Compressed,
    /// An answer to a generation endpoint that is neither JSON nor SSE.
    NotInference,
}

impl Unparsed {
    pub fn label(self) -> &'static str {
        match self {
            Unparsed::Malformed => "malformed",
            Unparsed::LineTooLong => "line_too_long",
            Unparsed::TooLarge => "too_large",
            Unparsed::Compressed => "compressed",
            Unparsed::NotInference => "not_inference",
        }
    }
}

/// How the body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The backend ended the body normally.
    Eof,
    /// The backend cut it: a reset or an idle timeout.
    BackendCut,
    /// The client went away first.
    ClientGone,
}

/// What one response said about its inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Inference {
    /// An event stream (else a JSON body).
    pub streamed: bool,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// Streams: from the request's start to the first event with generated
    /// content (not the first byte, which is usually a role-only chunk), µs.
    pub ttft_us: Option<u64>,
    /// Streams with two or more content events: the mean gap between them, µs.
    pub itl_us: Option<u64>,
    pub finish: Option<Finish>,
    /// Streams whose end the backend decided: whether it ended properly
    /// (`[DONE]`, a finish reason, or a Responses API terminal event).
    /// `None` for JSON bodies and for streams the client left.
    pub complete: Option<bool>,
}

/// The scanner's verdict on one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanReport {
    /// Not an inference response (another content type, a JSON document
    /// without inference fields, or a JSON body the backend cut short, which is
    /// already counted as a transport failure).
    Skipped,
    /// Could not be read; the HTTP outcome still counts.
    Unparsed(Unparsed),
    Parsed(Inference),
}

/// The scanner of the body's framing (one of them: a JSON body or an event
/// stream), so a scanner is only as large, and as costly to set up, as one.
#[derive(Clone)]
enum Mode {
    Json(JsonScanner),
    Sse(SseScanner),
    Off,
}

/// What the events of a stream added up to so far.
#[derive(Debug, Clone, Copy, Default)]
struct Facts {
    recognized: bool,
    content_events: u64,
    first_content_us: u64,
    last_content_us: u64,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    finish: Option<Finish>,
    /// `[DONE]`, a finish reason or a terminal Responses API event was seen.
    terminal: bool,
}

impl Facts {
    fn apply(&mut self, f: &Fields, now_us: u64) {
        self.recognized |= f.recognized;
        if f.prompt_tokens.is_some() {
            self.prompt_tokens = f.prompt_tokens;
        }
        if f.completion_tokens.is_some() {
            self.completion_tokens = f.completion_tokens;
        }
        if f.content || (f.event == EventType::ContentDelta && f.top_delta) {
            if self.content_events == 0 {
                self.first_content_us = now_us;
            }
            self.last_content_us = now_us;
            self.content_events += 1;
        }
        let finish = match f.event {
            EventType::Completed => Some(f.finish.unwrap_or(Finish::Stop)),
            EventType::Incomplete => Some(f.incomplete_reason.unwrap_or(Finish::Length)),
            EventType::Failed => Some(Finish::Failed),
            _ => f.finish,
        };
        if let Some(fin) = finish {
            self.finish = Some(Finish::merge(self.finish, fin));
            self.terminal = true;
        }
    }
}

/// Scans one response body. Create it when the response head arrives, feed it
/// every data chunk with the time it arrived, and [`Scanner::finish`] it once.
#[derive(Clone)]
pub struct Scanner {
    mode: Mode,
    /// The body was expected to be a completion (see [`is_inference_path`]).
    expect_inference: bool,
    facts: Facts,
    unparsed: Option<Unparsed>,
    json_bytes: u64,
}

impl Scanner {
    /// A scanner for a body of `kind`. `compressed` bodies are not scanned;
    /// `expect_inference` says the request went to a generation endpoint.
    pub fn new(kind: BodyKind, compressed: bool, expect_inference: bool) -> Scanner {
        let (mode, unparsed) = match kind {
            BodyKind::Other if expect_inference => (Mode::Off, Some(Unparsed::NotInference)),
            BodyKind::Other => (Mode::Off, None),
            _ if compressed => (Mode::Off, Some(Unparsed::Compressed)),
            BodyKind::Json => (Mode::Json(JsonScanner::new()), None),
            BodyKind::Sse => (Mode::Sse(SseScanner::default()), None),
        };
        Scanner {
            mode,
            expect_inference,
            facts: Facts::default(),
            unparsed,
            json_bytes: 0,
        }
    }

    /// A scanner that looks at nothing and reports [`ScanReport::Skipped`].
    pub fn off() -> Scanner {
        Scanner::new(BodyKind::Other, false, false)
    }

    /// Whether the body is scanned as an event stream.
    pub fn is_sse(&self) -> bool {
        matches!(self.mode, Mode::Sse(_))
    }

    /// Whether feeding bytes can still change the report.
    pub fn is_active(&self) -> bool {
        !matches!(self.mode, Mode::Off) && self.unparsed.is_none()
    }

    /// Looks at the next chunk of the body, which arrived `now_us` µs after
    /// the request started.
    pub fn feed(&mut self, chunk: &[u8], now_us: u64) {
        if !self.is_active() {
            return;
        }
        match &mut self.mode {
            Mode::Json(json) => {
                self.json_bytes += chunk.len() as u64;
                if self.json_bytes > MAX_JSON_BODY {
                    self.unparsed = Some(Unparsed::TooLarge);
                    return;
                }
                json.feed(chunk);
                if json.is_invalid() {
                    self.unparsed = Some(Unparsed::Malformed);
                }
            }
            Mode::Sse(sse) => {
                let (facts, unparsed) = (&mut self.facts, &mut self.unparsed);
                let mut emit = |e: Event| match e {
                    Event::Done => facts.terminal = true,
                    Event::Json(f) => facts.apply(&f, now_us),
                    Event::Malformed => *unparsed = Some(Unparsed::Malformed),
                };
                if sse.feed(chunk, &mut emit).is_err() {
                    self.unparsed = Some(Unparsed::LineTooLong);
                }
            }
            Mode::Off => {}
        }
    }

    /// The report, once the body has ended as `end` (at `now_us`).
    pub fn finish(&mut self, end: End, now_us: u64) -> ScanReport {
        if let Some(u) = self.unparsed {
            // Other traffic through abgate (a plain-text event stream, a
            // model server's own JSON) is not inference gone wrong.
            let json_recognized = matches!(&self.mode, Mode::Json(j) if j.recognized());
            let ours = self.expect_inference || self.facts.recognized || json_recognized;
            return if ours {
                ScanReport::Unparsed(u)
            } else {
                ScanReport::Skipped
            };
        }
        match &mut self.mode {
            Mode::Off => ScanReport::Skipped,
            Mode::Json(json) => match json.finish() {
                Outcome::Complete(f) if f.recognized => {
                    let finish = f.finish.or(match f.status {
                        Some(Finish::Length) => Some(f.incomplete_reason.unwrap_or(Finish::Length)),
                        s => s,
                    });
                    ScanReport::Parsed(Inference {
                        streamed: false,
                        prompt_tokens: f.prompt_tokens,
                        completion_tokens: f.completion_tokens,
                        finish,
                        ..Inference::default()
                    })
                }
                Outcome::Invalid if end == End::Eof => ScanReport::Unparsed(Unparsed::Malformed),
                _ => ScanReport::Skipped,
            },
            Mode::Sse(sse) => {
                let facts = &mut self.facts;
                sse.finish(&mut |e| match e {
                    Event::Done => facts.terminal = true,
                    Event::Json(f) => facts.apply(&f, now_us),
                    Event::Malformed => {}
                });
                let f = &self.facts;
                if !(f.recognized || f.terminal || self.expect_inference) {
                    return ScanReport::Skipped;
                }
                ScanReport::Parsed(Inference {
                    streamed: true,
                    prompt_tokens: f.prompt_tokens,
                    completion_tokens: f.completion_tokens,
                    ttft_us: (f.content_events > 0).then_some(f.first_content_us),
                    itl_us: (f.content_events > 1)
                        .then(|| (f.last_content_us - f.first_content_us) / (f.content_events - 1)),
                    finish: f.finish,
                    complete: match end {
                        End::ClientGone => None,
                        End::Eof | End::BackendCut => Some(f.terminal),
                    },
                })
            }
        }
    }
}

#[cfg(test)]
mod tests;

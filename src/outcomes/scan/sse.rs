//! Server-sent events framing, incrementally: lines split anywhere (even
//! between a `\r` and its `\n`), `data:` lines streamed into the JSON scanner
//! as they arrive, an event dispatched at its blank line.
//!
//! Owns: the SSE line grammar (`field: value`, comments, `\n`, `\r\n` and lone
//! `\r` line ends, several `data:` lines joined by `\n`), recognizing the
//! `[DONE]` sentinel, and the cap on a line's length.
//! Never: keeps a line. A `data:` value goes straight to the JSON scanner and
//! only its first few bytes are kept (to recognize `[DONE]`), so memory is the
//! same for a 100-byte event and a 100 MB one.

use super::json::{Fields, JsonScanner, Outcome};

/// Longest SSE line scanned, in bytes. An OpenAI-style chunk is well under a
/// KiB and a tool-call delta a few KiB; a line of a MiB is not a token event,
/// and past it the response is left unparsed rather than scanned to its end.
pub const MAX_LINE: usize = 1 << 20;

/// The head of an event's data kept to recognize `[DONE]` (with some room for
/// trailing whitespace).
const HEAD: usize = 8;

/// One dispatched event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// `data: [DONE]`.
    Done,
    /// A data payload that is one JSON value.
    Json(Fields),
    /// A data payload that is neither JSON nor `[DONE]`.
    Malformed,
}

/// A line longer than [`MAX_LINE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineTooLong;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Data,
    /// `event`, `id`, `retry` or an unknown field: ignored, as the SSE spec says.
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// At the start of a line.
    Start,
    /// Reading the field name.
    Name,
    /// Just after `field:`, where one space is dropped.
    ValueStart(Field),
    Value(Field),
    /// A comment (`: keep-alive`).
    Comment,
}

/// The SSE layer of the response scanner.
#[derive(Clone)]
pub struct SseScanner {
    line: Line,
    /// Bytes of the current line so far.
    line_len: usize,
    /// The field name, if it is short enough to be one we know.
    name: [u8; 5],
    name_len: usize,
    /// The previous byte was a `\r` ending a line: a `\n` right after it
    /// belongs to the same line end.
    after_cr: bool,
    /// `data:` lines in the event being read.
    data_lines: u32,
    /// The first bytes of the event's data, and its total length.
    head: [u8; HEAD],
    data_len: usize,
    json: JsonScanner,
}

impl Default for SseScanner {
    fn default() -> Self {
        SseScanner {
            line: Line::Start,
            line_len: 0,
            name: [0; 5],
            name_len: 0,
            after_cr: false,
            data_lines: 0,
            head: [0; HEAD],
            data_len: 0,
            json: JsonScanner::new(),
        }
    }
}

impl SseScanner {
    /// Scans the next piece of the stream, calling `emit` for every event
    /// completed in it, in order.
    pub fn feed(&mut self, bytes: &[u8], emit: &mut impl FnMut(Event)) -> Result<(), LineTooLong> {
        let n = bytes.len();
        let mut i = 0;
        while i < n {
            let b = bytes[i];
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    i += 1;
                    continue;
                }
            }
            match self.line {
                Line::Start => match b {
                    b'\n' | b'\r' => {
                        self.after_cr = b == b'\r';
                        self.dispatch(emit);
                        i += 1;
                    }
                    b':' => {
                        self.line = Line::Comment;
                        self.line_len = 1;
                        i += 1;
                    }
                    _ => {
                        self.line = Line::Name;
                        self.line_len = 0;
                        self.name_len = 0;
                    }
                },
                Line::Name => {
                    match b {
                        b':' => {
                            let field = self.field();
                            if field == Field::Data {
                                self.begin_data_line();
                            }
                            self.line = Line::ValueStart(field);
                        }
                        b'\n' | b'\r' => {
                            // A line without a colon is a field with an empty value.
                            if self.field() == Field::Data {
                                self.begin_data_line();
                            }
                            self.end_line(b);
                        }
                        _ => {
                            if self.name_len < self.name.len() {
                                self.name[self.name_len] = b;
                            }
                            self.name_len = self.name_len.saturating_add(1);
                        }
                    }
                    i += 1;
                    self.grow(1)?;
                }
                Line::ValueStart(field) => {
                    self.line = Line::Value(field);
                    if b == b' ' {
                        i += 1;
                        self.grow(1)?;
                    }
                }
                Line::Value(field) => {
                    let rest = &bytes[i..];
                    let j = memchr::memchr2(b'\n', b'\r', rest).unwrap_or(rest.len());
                    self.grow(j)?;
                    if field == Field::Data {
                        self.data_bytes(&rest[..j]);
                    }
                    i += j;
                    if i < n {
                        self.end_line(bytes[i]);
                        i += 1;
                    }
                }
                Line::Comment => {
                    let rest = &bytes[i..];
                    let j = memchr::memchr2(b'\n', b'\r', rest).unwrap_or(rest.len());
                    self.grow(j)?;
                    i += j;
                    if i < n {
                        self.end_line(bytes[i]);
                        i += 1;
                    }
                }
            }
        }
        Ok(())
    }

    /// The stream ended: an event whose blank line never came is dispatched if
    /// its data is whole (`data: [DONE]` as the very last bytes is common);
    /// one cut in the middle is dropped, as the SSE spec drops it.
    pub fn finish(&mut self, emit: &mut impl FnMut(Event)) {
        if self.data_lines == 0 {
            return;
        }
        if self.is_done() {
            emit(Event::Done);
        } else if let Outcome::Complete(f) = self.json.finish() {
            emit(Event::Json(f));
        }
        self.data_lines = 0;
    }

    fn grow(&mut self, by: usize) -> Result<(), LineTooLong> {
        self.line_len += by;
        if self.line_len > MAX_LINE {
            return Err(LineTooLong);
        }
        Ok(())
    }

    fn field(&self) -> Field {
        if &self.name[..self.name_len.min(5)] == b"data" && self.name_len == 4 {
            Field::Data
        } else {
            Field::Other
        }
    }

    fn end_line(&mut self, eol: u8) {
        self.after_cr = eol == b'\r';
        self.line = Line::Start;
    }

    fn begin_data_line(&mut self) {
        // The SSE spec joins an event's data lines with a line feed.
        if self.data_lines > 0 {
            self.data_bytes(b"\n");
        }
        self.data_lines += 1;
    }

    fn data_bytes(&mut self, s: &[u8]) {
        if s.is_empty() {
            return;
        }
        if self.data_len < HEAD {
            let take = s.len().min(HEAD - self.data_len);
            self.head[self.data_len..self.data_len + take].copy_from_slice(&s[..take]);
        }
        self.data_len += s.len();
        self.json.feed(s);
    }

    fn is_done(&self) -> bool {
        self.data_len <= HEAD && self.head[..self.data_len].trim_ascii_end() == b"[DONE]"
    }

    fn dispatch(&mut self, emit: &mut impl FnMut(Event)) {
        if self.data_lines == 0 {
            return;
        }
        let event = if self.is_done() {
            Some(Event::Done)
        } else {
            match self.json.finish() {
                Outcome::Complete(f) => Some(Event::Json(f)),
                Outcome::Empty => None,
                Outcome::Invalid => Some(Event::Malformed),
            }
        };
        self.json.reset();
        self.data_lines = 0;
        self.data_len = 0;
        if let Some(e) = event {
            emit(e);
        }
    }
}

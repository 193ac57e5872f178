//! The bounded peek at a request body that model-aware routing needs, and
//! the `model` rewrite an arm asks for.
//!
//! Owns: reading at most `max_peek` bytes of a body through its
//! [`RequestBody`] (so the size limit, the idle timeout and `Expect:
//! 100-continue` work as for any body), finding the top-level `model` and unit
//! field in what was read, replacing the model's value bytes, and handing the
//! frames back to go out first.
//!
//! Never: copies a frame it forwards. The frames read go upstream as the same
//! `Bytes` (a rewrite slices them around the new value); only a peek of more
//! than one frame is joined, into a scratch buffer that is parsed and dropped.
//! A body larger than the peek, or one whose `Content-Length` says it will
//! be, is not read to the end: what was read goes on, followed by the rest
//! of the stream as it arrives.

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body_util::BodyExt;

use super::guarded_body::{BoxError, RequestBody};
use crate::routing::body::{scan, StrSpan, TopFields};
use crate::routing::BodyFields;

/// What a peek read.
pub struct Peek {
    frames: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    /// The frames joined, when there are several (for parsing only).
    joined: Option<Bytes>,
    /// Bytes read.
    len: usize,
    /// The whole body was read (it fit within the peek).
    complete: bool,
    fields: TopFields,
}

impl Peek {
    /// Reads `body` until it ends or more than `max_peek` bytes have arrived;
    /// `declared` is its `Content-Length`, if any (a larger one is not read at
    /// all). `unit_field` is the body field a unit key may come from. An error
    /// is the body's own (its trip wire says whether a limit cut it).
    pub async fn read(
        body: &mut RequestBody,
        max_peek: usize,
        declared: Option<u64>,
        unit_field: Option<&str>,
    ) -> Result<Peek, BoxError> {
        let mut p = Peek {
            frames: Vec::new(),
            trailers: None,
            joined: None,
            len: 0,
            complete: false,
            fields: TopFields::default(),
        };
        if declared.is_some_and(|n| n > max_peek as u64) {
            return Ok(p);
        }
        body.begin_peek();
        let result = loop {
            if http_body::Body::is_end_stream(body) {
                break Ok(true);
            }
            match body.frame().await {
                None => break Ok(true),
                Some(Err(e)) => break Err(e),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        p.len += data.len();
                        if !data.is_empty() {
                            p.frames.push(data);
                        }
                        if p.len > max_peek {
                            break Ok(false);
                        }
                    }
                    Err(frame) => {
                        p.trailers = frame.into_trailers().ok();
                        break Ok(true);
                    }
                },
            }
        };
        p.complete = result?;
        if p.complete {
            p.parse(unit_field);
        }
        Ok(p)
    }

    /// A peek of a whole body already read as `frames` (benches, tests):
    /// parsed as [`Peek::read`] parses what it read.
    pub fn of_frames(frames: Vec<Bytes>, unit_field: Option<&str>) -> Peek {
        let len = frames.iter().map(Bytes::len).sum();
        let mut p = Peek {
            frames,
            trailers: None,
            joined: None,
            len,
            complete: true,
            fields: TopFields::default(),
        };
        p.parse(unit_field);
        p
    }

    /// Whether the peek read the whole body (it fit within `max_peek`).
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// The frames as they will be sent (after any rewrite).
    pub fn frames(&self) -> &[Bytes] {
        &self.frames
    }

    fn parse(&mut self, unit_field: Option<&str>) {
        if self.frames.len() > 1 {
            let mut buf = BytesMut::with_capacity(self.len);
            for f in &self.frames {
                buf.extend_from_slice(f);
            }
            self.joined = Some(buf.freeze());
        }
        self.fields = scan(self.contiguous(), unit_field);
    }

    /// Scans again for another unit field (a later rule's).
    pub fn rescan(&mut self, unit_field: Option<&str>) {
        if self.complete {
            self.fields = scan(self.contiguous(), unit_field);
        }
    }

    fn contiguous(&self) -> &[u8] {
        match (&self.joined, self.frames.first()) {
            (Some(j), _) => j,
            (None, Some(f)) => f,
            (None, None) => &[],
        }
    }

    /// What routing reads from the body.
    pub fn fields(&self) -> BodyFields<'_> {
        if !self.complete {
            return BodyFields::unread();
        }
        let body = self.contiguous();
        BodyFields {
            model: self.fields.model.and_then(|s| s.text(body)),
            unit: self.fields.unit.and_then(|s| s.text(body)),
            len: self.len,
        }
    }

    /// Replaces the value of the body's top-level `model` with `value` (JSON
    /// string content, already escaped). Returns how many bytes longer the
    /// body became (negative: shorter), or `None` when there is no model to
    /// replace (the body is then left as it was).
    pub fn rewrite_model(&mut self, value: &Bytes) -> Option<i64> {
        let span = self.fields.model?;
        if &self.contiguous()[span.start..span.end] == value.as_ref() {
            return Some(0);
        }
        self.frames = splice(&self.frames, span, value.clone());
        self.joined = None;
        self.fields = TopFields::default();
        Some(value.len() as i64 - (span.end - span.start) as i64)
    }

    /// Gives the frames back to `body`, to be sent first.
    pub fn restore(self, body: &mut RequestBody) {
        body.end_peek(self.frames, self.trailers);
    }
}

/// `frames` with bytes `span.start..span.end` (of their concatenation)
/// replaced by `value`: slices of the same buffers around the new value.
fn splice(frames: &[Bytes], span: StrSpan, value: Bytes) -> Vec<Bytes> {
    let mut out = Vec::with_capacity(frames.len() + 2);
    let mut at = 0usize;
    let mut placed = false;
    for f in frames {
        let (start, end) = (at, at + f.len());
        at = end;
        // The part of this frame before the span.
        if start < span.start {
            out.push(f.slice(0..span.start.min(end) - start));
        }
        if !placed && end >= span.start && (start <= span.start) {
            out.push(value.clone());
            placed = true;
        }
        // The part after the span.
        if end > span.end {
            out.push(f.slice(span.end.max(start) - start..));
        }
    }
    if !placed {
        out.push(value);
    }
    out.retain(|b| !b.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(frames: &[Bytes]) -> Vec<u8> {
        frames.iter().flat_map(|f| f.iter().copied()).collect()
    }

    fn peek_of(frames: Vec<Bytes>) -> Peek {
        Peek::of_frames(frames, Some("user"))
    }

    /// Every split of a body into two or three frames reads and rewrites the
    /// same as the body in one piece.
    #[test]
    fn any_split_reads_and_rewrites_the_same() {
        let body = br#"{"messages":[{"role":"user","content":"hi \"model\""}],"model":"gpt-x","user":"u-7"}"#;
        let whole = Bytes::from_static(body);
        let want = br#"{"messages":[{"role":"user","content":"hi \"model\""}],"model":"llama-x","user":"u-7"}"#;
        let new = Bytes::from_static(b"llama-x");
        for i in 0..=body.len() {
            for j in i..=body.len() {
                let frames = vec![whole.slice(..i), whole.slice(i..j), whole.slice(j..)]
                    .into_iter()
                    .filter(|b| !b.is_empty())
                    .collect::<Vec<_>>();
                let mut p = peek_of(frames);
                let f = p.fields();
                assert_eq!(f.model.as_deref(), Some("gpt-x"), "split {i},{j}");
                assert_eq!(f.unit.as_deref(), Some("u-7"), "split {i},{j}");
                assert_eq!(p.rewrite_model(&new), Some(2));
                assert_eq!(joined(&p.frames), want, "split {i},{j}");
            }
        }
    }

    #[test]
    fn a_rewrite_slices_the_frames_it_was_given() {
        let whole = Bytes::from(br#"{"model":"a","x":1}"#.to_vec());
        let base = whole.as_ptr();
        let mut p = peek_of(vec![whole.clone()]);
        assert_eq!(p.rewrite_model(&Bytes::from_static(b"bbb")), Some(2));
        assert_eq!(joined(&p.frames), br#"{"model":"bbb","x":1}"#);
        // The bytes around the value are the client's own buffer, not copies.
        assert_eq!(p.frames[0].as_ptr(), base);
        assert_eq!(p.frames[2].as_ptr(), base.wrapping_add(11));
    }

    #[test]
    fn no_model_no_rewrite() {
        let mut p = peek_of(vec![Bytes::from_static(br#"{"metadata":{"model":"a"}}"#)]);
        assert_eq!(p.rewrite_model(&Bytes::from_static(b"b")), None);
        assert_eq!(joined(&p.frames), br#"{"metadata":{"model":"a"}}"#);
        let mut empty = peek_of(vec![]);
        assert_eq!(empty.fields().model, None);
        assert_eq!(empty.rewrite_model(&Bytes::from_static(b"b")), None);
    }
}

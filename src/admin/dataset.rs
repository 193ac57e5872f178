//! `GET /v1/experiments/{name}/dataset?since=&until=`: the training-data
//! export as JSON Lines, streamed.
//!
//! Owns: the range's grammar, the streaming body, and moving rows from the
//! blocking reader to the connection with backpressure. Never: reads the
//! store itself (`outcomes::feedback` does, through `store::feedback`).
//!
//! Memory stays constant however many rows there are: the reader runs on the
//! blocking pool and hands lines, gathered into chunks of about
//! [`CHUNK`] bytes, to a channel of [`QUEUED`] chunks; it waits while the
//! client reads slowly, and stops when the client goes away. An error after
//! the head was sent aborts the body, so a truncated export never looks
//! complete.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame};
use tokio::sync::mpsc;

use crate::outcomes::feedback::FeedbackService;
use crate::proxy::problem::Problem;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bytes of lines gathered before they are sent.
const CHUNK: usize = 32 * 1024;
/// Chunks waiting for the client at most.
const QUEUED: usize = 8;

/// The export's body: chunks from the reader, then the end (or an error).
pub struct DatasetBody {
    rx: mpsc::Receiver<Result<Bytes, String>>,
}

impl Body for DatasetBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| c.map(Frame::data).map_err(BoxError::from)))
    }
}

/// The requested range, `[since, until)` in ms since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub since_ms: u64,
    pub until_ms: u64,
}

/// Reads `since=` and `until=` (each: ms since the epoch, an RFC 3339 time,
/// or a duration ago such as `24h`); both optional, from the beginning to
/// now. 400 for anything else, an inverted range, or another parameter.
pub fn range(query: Option<&str>, now: u64) -> Result<Range, Problem> {
    let bad = |detail: String| Problem::client(StatusCode::BAD_REQUEST, "bad-range", detail);
    let mut r = Range {
        since_ms: 0,
        until_ms: now.saturating_add(1),
    };
    // Decoded as a form: `%2B` is an RFC 3339 offset's `+`, a bare `+` a space.
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let at = instant(&v, now).map_err(|e| bad(format!("{k}: {e}")));
        match k.as_ref() {
            "since" => r.since_ms = at?,
            "until" => r.until_ms = at?,
            _ => {
                return Err(bad(format!(
                    "unknown parameter {k:?}; use since= and until="
                )))
            }
        }
    }
    if r.since_ms >= r.until_ms {
        return Err(bad(format!(
            "since ({}) must be before until ({})",
            crate::store::feedback::rfc3339(r.since_ms),
            crate::store::feedback::rfc3339(r.until_ms)
        )));
    }
    Ok(r)
}

/// One end of the range.
fn instant(v: &str, now: u64) -> Result<u64, String> {
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return v.parse().map_err(|_| format!("{v:?} is too large"));
    }
    if let Ok(d) = crate::config::parse_duration(v) {
        return Ok(now.saturating_sub(d.as_millis() as u64));
    }
    match time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339) {
        Ok(t) if t.unix_timestamp() >= 0 => Ok((t.unix_timestamp_nanos() / 1_000_000) as u64),
        Ok(_) => Err(format!("{v:?} is before 1970")),
        Err(_) => Err(format!(
            "{v:?} is not ms since the epoch, an RFC 3339 time (2026-12-01T00:00:00Z) or a duration ago (24h)"
        )),
    }
}

/// Starts the export of `experiment` over `range` and answers with its stream.
pub fn serve(
    service: &Arc<FeedbackService>,
    experiment: &str,
    range: Range,
) -> Response<DatasetBody> {
    let (tx, rx) = mpsc::channel(QUEUED);
    let (service, experiment) = (service.clone(), experiment.to_string());
    tokio::task::spawn_blocking(move || {
        let mut chunk = Vec::with_capacity(CHUNK + 1024);
        let done = service.export(&experiment, range.since_ms, range.until_ms, |row| {
            if serde_json::to_writer(&mut chunk, &row).is_err() {
                return false;
            }
            chunk.push(b'\n');
            if chunk.len() < CHUNK {
                return true;
            }
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK + 1024));
            // Waits while the client is slow; false once it is gone.
            tx.blocking_send(Ok(Bytes::from(full))).is_ok()
        });
        match done {
            Ok(()) if !chunk.is_empty() => {
                let _ = tx.blocking_send(Ok(Bytes::from(chunk)));
            }
            Ok(()) => {}
            Err(e) => {
                tracing::error!(error = %e, experiment, "dataset export failed");
                let _ = tx.blocking_send(Err(format!("the export failed: {e}")));
            }
        }
    });
    let mut r = Response::new(DatasetBody { rx });
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_780_000_000_000;

    #[test]
    fn ranges_take_epoch_ms_rfc3339_and_durations_ago() {
        let r = range(Some("since=24h&until=1780000000000"), NOW).unwrap();
        assert_eq!(r.since_ms, NOW - 86_400_000);
        assert_eq!(r.until_ms, NOW);
        let r = range(Some("since=2026-01-01T00:00:00Z"), NOW).unwrap();
        assert_eq!(r.since_ms, 1_767_225_600_000);
        assert_eq!(r.until_ms, NOW + 1);
        let r = range(Some("since=2026-01-01T01:00:00%2B01:00"), NOW).unwrap();
        assert_eq!(r.since_ms, 1_767_225_600_000);
        assert_eq!(range(None, NOW).unwrap().since_ms, 0);
    }

    #[test]
    fn bad_ranges_are_named() {
        for (q, needle) in [
            ("since=1h&until=2h", "must be before"),
            ("since=yesterday", "not ms since the epoch"),
            ("from=1", "unknown parameter"),
            ("since=2026-13-01T00:00:00Z", "RFC 3339"),
        ] {
            let p = range(Some(q), NOW).unwrap_err();
            assert_eq!(p.status, StatusCode::BAD_REQUEST, "{q}");
            assert!(p.detail.contains(needle), "{q}: {}", p.detail);
        }
    }
}

//! Per-request limits checked before routing, and the per-connection write-idle
//! guard.
//!
//! Owns: the size, count and framing checks every request passes before it can
//! reach a backend, and cutting connections whose client stopped reading.
//! Never: reads a body (that is `guarded_body`) or routes.
//!
//! What hyper already enforces below us, with a bare status and a closed
//! connection (no JSON body; counted by the listener as `malformed-request`,
//! `head-too-large` or `header-read-timeout`):
//! - request heads past the read buffer (set to twice `max_header_bytes`, so a
//!   moderately oversized head still reaches [`check_head`] and gets a JSON 431);
//! - more than 100 headers (hyper's in-place default) or, when `max_header_count`
//!   is above 100, more than twice that (431); a request target of 64 KiB or
//!   more (414);
//! - conflicting `Content-Length` values, a `Transfer-Encoding` whose last coding
//!   is not `chunked`, `Transfer-Encoding` on HTTP/1.0, NUL/CR/LF in a header (400);
//! - `Content-Length` together with `Transfer-Encoding`: hyper drops the length,
//!   decodes chunked and closes the connection after the response (RFC 9112
//!   §6.3), so bytes after the chunked body are never parsed as a request.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderMap};
use http::Request;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::problem::ProxyError;
use crate::config::{Limits, Timeouts};

/// The limits the request path needs, copied out of the config at startup.
#[derive(Debug, Clone)]
pub struct RequestLimits {
    /// Request line plus headers, in bytes, as on the wire (431 above).
    pub max_header_bytes: usize,
    /// Header fields, counting each repeated name (431 above).
    pub max_header_count: usize,
    /// Authority plus path and query, in bytes (414 above).
    pub max_uri_bytes: usize,
    /// Request body bytes (413 above).
    pub max_body_bytes: u64,
    /// Longest gap between two request body frames (408 on expiry).
    pub body_idle: Duration,
    /// Longest gap between two response body frames from a backend (stream cut).
    pub stream_idle: Duration,
}

impl RequestLimits {
    pub fn new(limits: &Limits, timeouts: &Timeouts) -> Self {
        RequestLimits {
            max_header_bytes: limits.max_header_bytes,
            max_header_count: limits.max_header_count,
            max_uri_bytes: limits.max_uri_bytes,
            max_body_bytes: limits.max_request_body_bytes,
            body_idle: timeouts.request_body_idle,
            stream_idle: timeouts.stream_idle,
        }
    }
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits::new(&Limits::default(), &Timeouts::default())
    }
}

/// Checks a request head against the limits and framing rules. Cheap: no
/// allocation, one pass over the headers.
pub fn check_head<B>(req: &Request<B>, limits: &RequestLimits) -> Result<(), ProxyError> {
    let uri = req.uri();
    let uri_len = uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len > limits.max_uri_bytes {
        return Err(ProxyError::UriTooLong {
            limit: limits.max_uri_bytes,
        });
    }
    let headers = req.headers();
    if headers.len() > limits.max_header_count {
        return Err(ProxyError::TooManyHeaders {
            limit: limits.max_header_count,
        });
    }
    // As on the wire: "name: value\r\n" per header, plus the request line.
    let head_bytes = req.method().as_str().len()
        + uri_len
        + 12
        + headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>();
    if head_bytes > limits.max_header_bytes {
        return Err(ProxyError::HeadersTooLarge {
            limit: limits.max_header_bytes,
        });
    }
    check_framing(headers)?;
    if let Some(len) = content_length(headers)? {
        if len > limits.max_body_bytes {
            return Err(ProxyError::BodyTooLarge {
                limit: limits.max_body_bytes,
            });
        }
    }
    Ok(())
}

/// Only a single `chunked` coding is accepted: `chunked, chunked`, `gzip, chunked`
/// and the like are how request-smuggling attempts start (HAProxy answers 400
/// to the same set).
fn check_framing(headers: &HeaderMap) -> Result<(), ProxyError> {
    let mut te = headers.get_all(header::TRANSFER_ENCODING).iter();
    if let Some(first) = te.next() {
        let single = first
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"chunked");
        if !single || te.next().is_some() {
            return Err(ProxyError::BadTransferEncoding);
        }
    }
    Ok(())
}

/// The declared body length; several differing values are an error (hyper
/// already rejects them on HTTP/1; this covers HTTP/2).
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ProxyError> {
    let mut found = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        let n = v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or(ProxyError::ConflictingContentLength)?;
        match found {
            Some(prev) if prev != n => return Err(ProxyError::ConflictingContentLength),
            _ => found = Some(n),
        }
    }
    Ok(found)
}

/// A client connection's socket with a write-idle limit: when a write has been
/// blocked (the client stopped reading and the kernel buffer is full) for longer
/// than the limit, writes fail and hyper closes the connection, which drops the
/// upstream body and frees the backend.
pub struct WriteIdleIo<T> {
    inner: T,
    limit: Duration,
    sleep: Pin<Box<Sleep>>,
    blocked: bool,
}

impl<T> WriteIdleIo<T> {
    pub fn new(inner: T, limit: Duration) -> Self {
        WriteIdleIo {
            inner,
            limit,
            sleep: Box::pin(tokio::time::sleep(limit)),
            blocked: false,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    fn on_write<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        match polled {
            Poll::Ready(r) => {
                self.blocked = false;
                Poll::Ready(r)
            }
            Poll::Pending => {
                if !self.blocked {
                    self.blocked = true;
                    let deadline = Instant::now() + self.limit;
                    self.sleep.as_mut().reset(deadline);
                }
                match self.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "client did not read for the downstream write idle timeout",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteIdleIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteIdleIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.on_write(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.on_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.on_write(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.on_write(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::post("/x");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn transfer_encoding_must_be_a_single_chunked() {
        let l = RequestLimits::default();
        assert!(check_head(&req(&[("transfer-encoding", "chunked")]), &l).is_ok());
        assert!(check_head(&req(&[("transfer-encoding", "Chunked ")]), &l).is_ok());
        for bad in ["chunked, chunked", "gzip, chunked", "gzip", "identity"] {
            assert_eq!(
                check_head(&req(&[("transfer-encoding", bad)]), &l),
                Err(ProxyError::BadTransferEncoding),
                "{bad}"
            );
        }
        assert_eq!(
            check_head(
                &req(&[
                    ("transfer-encoding", "chunked"),
                    ("transfer-encoding", "chunked")
                ]),
                &l
            ),
            Err(ProxyError::BadTransferEncoding)
        );
    }

    #[test]
    fn content_length_is_checked_before_reading() {
        let l = RequestLimits {
            max_body_bytes: 10,
            ..RequestLimits::default()
        };
        assert!(check_head(&req(&[("content-length", "10")]), &l).is_ok());
        assert!(matches!(
            check_head(&req(&[("content-length", "11")]), &l),
            Err(ProxyError::BodyTooLarge { .. })
        ));
        assert_eq!(
            check_head(
                &req(&[("content-length", "1"), ("content-length", "2")]),
                &l
            ),
            Err(ProxyError::ConflictingContentLength)
        );
    }

    #[test]
    fn uri_and_header_limits() {
        let l = RequestLimits {
            max_uri_bytes: 8,
            max_header_count: 2,
            max_header_bytes: 100,
            ..RequestLimits::default()
        };
        assert!(check_head(&req(&[]), &l).is_ok());
        let long = Request::get("/0123456789").body(()).unwrap();
        assert!(matches!(
            check_head(&long, &l),
            Err(ProxyError::UriTooLong { .. })
        ));
        assert!(matches!(
            check_head(&req(&[("a", "1"), ("b", "1"), ("c", "1")]), &l),
            Err(ProxyError::TooManyHeaders { .. })
        ));
        let big = "v".repeat(100);
        assert!(matches!(
            check_head(&req(&[("a", &big)]), &l),
            Err(ProxyError::HeadersTooLarge { .. })
        ));
    }
}

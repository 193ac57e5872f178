//! Per-connection activity: how many requests are in flight, since when the
//! connection has had none, and whether a request head has begun to arrive:
//! the keep-alive idle timeout and the HTTP/1 header-read timeout.
//!
//! Owns: counting a request from its head until its response body is finished
//! or dropped, and noting reads between requests ([`ReadNotes`]). Never:
//! closes anything itself (the listener decides).
//!
//! Why the header-read timeout is here and not hyper's: hyper's allocates and
//! registers a timer for every request head and drops it once the head is
//! parsed (about 1.4% of the proxy's CPU per request in a profile). The
//! connection's one idle timer already knows when the connection last had no
//! request in flight, which is exactly when hyper starts its head timer, so
//! the same rule costs nothing per request: an HTTP/1 connection with no
//! request in flight for `header_read` is closed, and counted as a
//! `header-read-timeout` when part of a head had arrived (a slowloris).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// What the connection's first bytes said about its protocol.
const PROTO_UNKNOWN: u8 = 0;
const PROTO_H1: u8 = 1;
const PROTO_H2: u8 = 2;

/// Why a connection's idle wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleEnd {
    /// Nothing arrived for the limit.
    Quiet,
    /// Part of an HTTP/1 request head arrived, and not the rest in time.
    HeadTimeout,
}

/// The limits [`Activity::idle_for`] applies.
#[derive(Debug, Clone, Copy)]
pub struct IdleLimits {
    /// Any connection with no request in flight.
    pub keepalive: Duration,
    /// An HTTP/1 connection with no request in flight (hyper's header-read
    /// rule: the head timer starts as soon as the previous response is done).
    pub header_read: Duration,
}

/// Activity of one connection. A few atomics, touched twice per request and
/// once per read.
pub struct Activity {
    base: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `base` when the last request finished (or the
    /// connection opened).
    last_idle_ms: AtomicU64,
    /// Bytes arrived since the last request began (a head in progress).
    head_bytes: AtomicBool,
    /// `PROTO_*`, from the first bytes read.
    proto: AtomicU8,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    pub fn new() -> Self {
        Activity {
            base: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_idle_ms: AtomicU64::new(0),
            head_bytes: AtomicBool::new(false),
            proto: AtomicU8::new(PROTO_UNKNOWN),
        }
    }

    /// Marks a request as started; the guard marks it finished when dropped.
    pub fn begin(self: &Arc<Self>) -> ActivityGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_bytes.store(false, Ordering::Relaxed);
        ActivityGuard(self.clone())
    }

    /// Notes bytes read from the client: between requests they are the start
    /// of a head; the connection's first bytes tell HTTP/2's preface apart.
    fn note_read(&self, first: &[u8]) {
        if self.proto.load(Ordering::Relaxed) == PROTO_UNKNOWN && !first.is_empty() {
            // The h2 client preface starts `PRI * HTTP/2.0`; no HTTP/1 method is `PRI`.
            let h2 = first.len() >= 3 && &first[..3] == b"PRI";
            let proto = if h2 { PROTO_H2 } else { PROTO_H1 };
            self.proto.store(proto, Ordering::Relaxed);
        }
        if self.in_flight.load(Ordering::Relaxed) == 0 && !self.head_bytes.load(Ordering::Relaxed) {
            self.head_bytes.store(true, Ordering::Relaxed);
        }
    }

    /// The limit in force while no request is in flight.
    fn limit_ms(&self, limits: IdleLimits) -> u64 {
        let limit = match self.proto.load(Ordering::Relaxed) {
            PROTO_H2 => limits.keepalive,
            _ => limits.keepalive.min(limits.header_read),
        };
        limit.as_millis() as u64
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// Resolves once the connection has had no request in flight for its
    /// limit (see [`IdleLimits`]). Checks at most once per limit while busy,
    /// so the idle timer costs one timer entry per connection.
    pub async fn idle_for(&self, limits: IdleLimits) -> IdleEnd {
        loop {
            let limit_ms = self.limit_ms(limits);
            let wait_ms = if self.in_flight.load(Ordering::Acquire) > 0 {
                limit_ms
            } else {
                let idle = self
                    .now_ms()
                    .saturating_sub(self.last_idle_ms.load(Ordering::Acquire));
                if idle >= limit_ms {
                    let head = self.head_bytes.load(Ordering::Relaxed)
                        && self.proto.load(Ordering::Relaxed) != PROTO_H2;
                    return if head {
                        IdleEnd::HeadTimeout
                    } else {
                        IdleEnd::Quiet
                    };
                }
                limit_ms - idle
            };
            tokio::time::sleep(Duration::from_millis(wait_ms.max(1))).await;
        }
    }
}

/// A client connection's stream that tells its [`Activity`] about reads.
pub struct ReadNotes<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> ReadNotes<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        ReadNotes { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadNotes<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let read = &buf.filled()[before..];
            if !read.is_empty() {
                self.activity.note_read(read);
            }
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ReadNotes<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One in-flight request; dropping it ends the request.
pub struct ActivityGuard(Arc<Activity>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        let a = &self.0;
        a.last_idle_ms.store(a.now_ms(), Ordering::Release);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as in flight until the body
/// is finished or dropped (a long stream is activity, not idleness).
pub struct ActivityBody<B> {
    inner: B,
    _guard: ActivityGuard,
}

impl<B> ActivityBody<B> {
    pub fn new(inner: B, guard: ActivityGuard) -> Self {
        ActivityBody {
            inner,
            _guard: guard,
        }
    }
}

impl<B> Body for ActivityBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: IdleLimits = IdleLimits {
        keepalive: Duration::from_millis(400),
        header_read: Duration::from_millis(100),
    };

    /// Runs `idle_for` and tells how it ended and after how long.
    async fn wait(a: &Activity) -> (IdleEnd, Duration) {
        let t = Instant::now();
        (a.idle_for(LIMITS).await, t.elapsed())
    }

    #[tokio::test]
    async fn an_http1_connection_gets_the_header_read_limit_and_h2_the_keepalive_one() {
        // Quiet HTTP/1 (or not yet known): closed after header_read, as hyper's
        // head timer would.
        let (end, took) = wait(&Activity::new()).await;
        assert_eq!(end, IdleEnd::Quiet);
        assert!(
            took >= LIMITS.header_read && took < LIMITS.keepalive,
            "{took:?}"
        );

        // Half a head, then nothing: a head timeout.
        let a = Arc::new(Activity::new());
        a.note_read(b"GET / HTTP/1.1\r\nhost: x\r\n");
        assert_eq!(wait(&a).await.0, IdleEnd::HeadTimeout);

        // A whole head began a request: bytes during it are not a head, a
        // request in flight is never idle, and the limit counts from its end.
        let a = Arc::new(Activity::new());
        a.note_read(b"GET / HTTP/1.1\r\n\r\n");
        let guard = a.begin();
        a.note_read(b"body bytes");
        let ended = tokio::select! {
            _ = a.idle_for(LIMITS) => false,
            _ = tokio::time::sleep(LIMITS.header_read * 3) => true,
        };
        assert!(ended, "idle while a request was in flight");
        drop(guard);
        let (end, took) = wait(&a).await;
        assert_eq!(end, IdleEnd::Quiet);
        assert!(
            took >= LIMITS.header_read && took < LIMITS.keepalive,
            "{took:?}"
        );

        // HTTP/2 (its preface): the keep-alive limit, never a head timeout.
        let a = Arc::new(Activity::new());
        a.note_read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        let (end, took) = wait(&a).await;
        assert_eq!(end, IdleEnd::Quiet);
        assert!(took >= LIMITS.keepalive, "{took:?}");
    }
}

//! Per-connection activity: how many requests are in flight and since when the
//! connection has had none, for the keep-alive idle timeout.
//!
//! Owns: counting a request from its head until its response body is finished
//! or dropped. Never: closes anything itself (the listener decides).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

/// Activity of one connection. Two atomics, touched twice per request.
pub struct Activity {
    base: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `base` when the last request finished (or the
    /// connection opened).
    last_idle_ms: AtomicU64,
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
        }
    }

    /// Marks a request as started; the guard marks it finished when dropped.
    pub fn begin(self: &Arc<Self>) -> ActivityGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        ActivityGuard(self.clone())
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// Resolves once the connection has had no request in flight for `limit`.
    /// Checks at most once per `limit` while busy, so an idle timer costs one
    /// timer entry per connection.
    pub async fn idle_for(&self, limit: Duration) {
        let limit_ms = limit.as_millis() as u64;
        loop {
            let wait_ms = if self.in_flight.load(Ordering::Acquire) > 0 {
                limit_ms
            } else {
                let idle = self
                    .now_ms()
                    .saturating_sub(self.last_idle_ms.load(Ordering::Acquire));
                if idle >= limit_ms {
                    return;
                }
                limit_ms - idle
            };
            tokio::time::sleep(Duration::from_millis(wait_ms.max(1))).await;
        }
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

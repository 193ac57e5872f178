//! Bodies with limits: the client's request body streamed upstream (size cap and
//! idle timeout) and the backend's response body (idle timeout).
//!
//! Owns: cutting a body that is too large or has stalled, and telling the
//! handler which of the two happened so it can answer 413 or 408.
//! Never: buffers a body; every frame passes through as it arrives. (A body
//! that `inject_usage` rewrites is read whole by `forward` first, within the
//! same limits, and sent on from here in one frame. A body peeked for its
//! `model` is read through this same body, so the peek counts against the
//! size limit and the idle timeout, and its frames are handed back with
//! [`RequestBody::end_peek`] to go out first, as they were.)

use std::collections::VecDeque;
use std::fmt;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

/// Errors of guarded bodies, as hyper wants them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request body was cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyTrip {
    /// More bytes than `limits.max_request_body_bytes`.
    TooLarge,
    /// No bytes for `timeouts.request_body_idle`.
    Idle,
}

impl fmt::Display for BodyTrip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BodyTrip::TooLarge => "request body exceeds the size limit",
            BodyTrip::Idle => "request body stalled past the idle timeout",
        })
    }
}

impl std::error::Error for BodyTrip {}

/// Shared between a [`RequestBody`] (inside the upstream connection task) and
/// the handler awaiting the upstream response: the handler reads it to tell a
/// client-side failure (413/408) from an upstream one (502), and to start the
/// response-header timeout only once the whole body has been sent.
#[derive(Clone)]
pub struct TripWire(Arc<WireState>);

struct WireState {
    trip: AtomicU8,
    /// Milliseconds after `base` when the body's last byte was handed to the
    /// upstream connection; `u64::MAX` while it is still being sent.
    sent_ms: AtomicU64,
    base: Instant,
}

impl TripWire {
    /// `already_sent` is true for a request without a body.
    pub fn new(already_sent: bool) -> Self {
        TripWire(Arc::new(WireState {
            trip: AtomicU8::new(0),
            sent_ms: AtomicU64::new(if already_sent { 0 } else { u64::MAX }),
            base: Instant::now(),
        }))
    }

    fn set(&self, trip: BodyTrip) {
        let v = match trip {
            BodyTrip::TooLarge => 1,
            BodyTrip::Idle => 2,
        };
        self.0.trip.store(v, Ordering::Release);
    }

    fn sent(&self) {
        let ms = self.0.base.elapsed().as_millis() as u64;
        let _ = self
            .0
            .sent_ms
            .compare_exchange(u64::MAX, ms, Ordering::AcqRel, Ordering::Acquire);
    }

    pub fn get(&self) -> Option<BodyTrip> {
        match self.0.trip.load(Ordering::Acquire) {
            1 => Some(BodyTrip::TooLarge),
            2 => Some(BodyTrip::Idle),
            _ => None,
        }
    }

    /// When the whole body had been sent, or `None` while it is still uploading.
    pub fn sent_at(&self) -> Option<Instant> {
        match self.0.sent_ms.load(Ordering::Acquire) {
            u64::MAX => None,
            ms => Some(self.0.base + Duration::from_millis(ms)),
        }
    }
}

/// A lazily armed idle timer: armed when the body is polled and has nothing,
/// disarmed by any frame. One timer reset per stall, none per frame.
struct IdleTimer {
    limit: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl IdleTimer {
    fn new(limit: Duration) -> Self {
        IdleTimer {
            limit,
            sleep: None,
            armed: false,
        }
    }

    fn progress(&mut self) {
        self.armed = false;
    }

    /// Called when the inner body is pending; true once the limit has passed.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.armed {
            self.armed = true;
            let deadline = Instant::now() + self.limit;
            match &mut self.sleep {
                Some(s) => s.as_mut().reset(deadline),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        match &mut self.sleep {
            Some(s) => s.as_mut().poll(cx).is_ready(),
            None => false,
        }
    }
}

/// Where a [`RequestBody`]'s bytes come from.
enum Source {
    /// Streamed from the client as it arrives.
    Client(Incoming),
    /// Read whole and rewritten (`inject_usage`); `None` once sent.
    Buffered(Option<Bytes>),
}

/// The client's request body on its way upstream.
pub struct RequestBody {
    inner: Source,
    limit: u64,
    seen: u64,
    idle: IdleTimer,
    wire: TripWire,
    tripped: bool,
    /// Frames already read (by a peek), sent before anything else.
    prefix: VecDeque<Frame<Bytes>>,
    /// Data bytes in `prefix`.
    prefix_len: u64,
    /// The client's stream has ended (it may still have `prefix` to send).
    inner_done: bool,
    /// Read by a peek, not yet sent: the end of the stream is not the end of
    /// the upload (the response-head clock starts when the last byte goes up).
    peeking: bool,
    /// The client declared the body's length; a chunked upload stays chunked
    /// upstream even once a peek has read all of it.
    sized: bool,
    /// Copies of the frames sent, for shadow arms (boxed: most requests
    /// are not mirrored and keep the body small).
    tee: Option<Box<Tee>>,
}

/// How a teed body ended for its copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TeeCut {
    /// More data than the tee's limit: the copy was abandoned.
    TooLarge,
    /// The upload failed (or was never sent): there is no whole body to copy.
    Failed,
}

/// What a shadow copy gets from a teed body: every data frame, once the
/// upload has ended (the frames are the same `Bytes` the primary sent).
pub type TeeResult = Result<Vec<Bytes>, TeeCut>;

/// Copies the data frames a [`RequestBody`] sends, up to `limit` bytes.
/// Copying is a `Bytes` clone pushed onto a `Vec`: it never waits, so the
/// primary's upload is never held back by its copies. Past `limit` the
/// frames already held are dropped and the copies are told at once, so a
/// large upload costs a copy nothing more.
struct Tee {
    frames: Vec<Bytes>,
    len: u64,
    limit: u64,
    /// One per shadow copy waiting for the body. Dropped unsent (the body
    /// dropped before its end), a copy reads that as [`TeeCut::Failed`].
    to: Vec<tokio::sync::oneshot::Sender<TeeResult>>,
}

impl Tee {
    fn push(&mut self, data: &Bytes) {
        self.len += data.len() as u64;
        if self.len > self.limit {
            self.end(Some(TeeCut::TooLarge));
        } else if !data.is_empty() {
            self.frames.push(data.clone());
        }
    }

    /// Tells every copy how the body ended (`None`: whole, here it is).
    fn end(&mut self, cut: Option<TeeCut>) {
        let frames = std::mem::take(&mut self.frames);
        let mut to = std::mem::take(&mut self.to);
        let result = |frames| match cut {
            None => Ok(frames),
            Some(c) => Err(c),
        };
        // The last copy takes the frames themselves, the others a clone
        // (reference counts, not bytes).
        if let Some(last) = to.pop() {
            for tx in to {
                let _ = tx.send(result(frames.clone()));
            }
            let _ = last.send(result(frames));
        }
    }

    fn done(&self) -> bool {
        self.to.is_empty()
    }
}

impl RequestBody {
    pub fn new(inner: Incoming, limit: u64, idle: Duration, wire: TripWire) -> Self {
        let sized = inner.size_hint().exact().is_some();
        RequestBody {
            sized,
            inner: Source::Client(inner),
            limit,
            seen: 0,
            idle: IdleTimer::new(idle),
            wire,
            tripped: false,
            prefix: VecDeque::new(),
            prefix_len: 0,
            inner_done: false,
            peeking: false,
            tee: None,
        }
    }

    /// Copies what is sent from now on (after any peek has been restored) for
    /// a shadow copy: the receiver gets every data frame once the upload
    /// ends, or [`TeeCut`] as soon as it exceeds `limit` bytes or fails.
    /// Trailers are not copied. Call once per copy; the largest limit
    /// asked for applies (each copy checks its own on receipt).
    pub fn tee(&mut self, limit: u64) -> tokio::sync::oneshot::Receiver<TeeResult> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        match &mut self.tee {
            Some(t) => {
                t.limit = t.limit.max(limit);
                t.to.push(tx);
            }
            None => {
                self.tee = Some(Box::new(Tee {
                    frames: Vec::new(),
                    len: 0,
                    limit,
                    to: vec![tx],
                }))
            }
        }
        rx
    }

    /// Starts a peek: frames read from now on (with `BodyExt::frame`) are
    /// checked against the limits as usual but not counted as sent.
    pub fn begin_peek(&mut self) {
        self.peeking = true;
    }

    /// Ends a peek: `data` (then `trailers`) go out before the rest of the
    /// stream. They were counted against the size limit when read.
    pub fn end_peek(&mut self, data: Vec<Bytes>, trailers: Option<http::HeaderMap>) {
        self.peeking = false;
        for d in data {
            self.prefix_len += d.len() as u64;
            self.prefix.push_back(Frame::data(d));
        }
        if let Some(t) = trailers {
            self.prefix.push_back(Frame::trailers(t));
        }
        if self.prefix.is_empty() && self.inner_done {
            self.wire.sent();
        }
    }

    /// Whether the client's stream has ended (during a peek: all of it was read).
    pub fn inner_done(&self) -> bool {
        self.inner_done
    }

    /// A body already read from the client (and checked against the limits):
    /// sent upstream in one frame. The upload is over, so the response-head
    /// timeout starts now. (Its idle timer is never armed: it is never pending.)
    pub fn buffered(bytes: Bytes, wire: TripWire) -> Self {
        wire.sent();
        RequestBody {
            inner: Source::Buffered(Some(bytes)),
            sized: true,
            limit: u64::MAX,
            seen: 0,
            idle: IdleTimer::new(Duration::ZERO),
            wire,
            tripped: false,
            prefix: VecDeque::new(),
            prefix_len: 0,
            inner_done: false,
            peeking: false,
            tee: None,
        }
    }

    /// No body at all (a shadow copy of a body-less request): at its end
    /// from the start, so nothing is framed upstream.
    pub fn empty(wire: TripWire) -> Self {
        let mut b = Self::buffered(Bytes::new(), wire);
        b.inner = Source::Buffered(None);
        b
    }

    fn trip(&mut self, why: BodyTrip) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.tripped = true;
        self.wire.set(why);
        Poll::Ready(Some(Err(Box::new(why))))
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = this.poll_guarded(cx);
        if this.tee.is_some() {
            this.copy(&polled);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.guarded_end()
    }

    fn size_hint(&self) -> SizeHint {
        self.guarded_size_hint()
    }
}

impl RequestBody {
    /// Hands what was just polled to the tee. hyper stops polling once a
    /// body reports its end, so the copy is completed on the frame after
    /// which the body is at its end, not only on `None`.
    fn copy(&mut self, polled: &Poll<Option<Result<Frame<Bytes>, BoxError>>>) {
        let ended = self.guarded_end();
        let Some(tee) = self.tee.as_mut() else {
            return;
        };
        match polled {
            Poll::Pending => return,
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    tee.push(d);
                }
                if ended && !tee.done() {
                    tee.end(None);
                }
            }
            Poll::Ready(Some(Err(_))) => tee.end(Some(TeeCut::Failed)),
            Poll::Ready(None) => tee.end(None),
        }
        if tee.done() {
            self.tee = None;
        }
    }

    fn poll_guarded(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self;
        if this.tripped {
            return Poll::Ready(None);
        }
        if let Some(frame) = this.prefix.pop_front() {
            if let Some(d) = frame.data_ref() {
                this.prefix_len -= d.len() as u64;
            }
            if this.prefix.is_empty() && this.inner_done {
                this.wire.sent();
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        if this.inner_done {
            return Poll::Ready(None);
        }
        let inner = match &mut this.inner {
            Source::Client(inner) => inner,
            Source::Buffered(bytes) => {
                return Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b))))
            }
        };
        match Pin::new(&mut *inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.idle.progress();
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.seen > this.limit {
                        return this.trip(BodyTrip::TooLarge);
                    }
                }
                // A sized body is not polled again after its last frame.
                if inner.is_end_stream() {
                    this.inner_done = true;
                    if !this.peeking {
                        this.wire.sent();
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => {
                this.inner_done = true;
                if !this.peeking {
                    this.wire.sent();
                }
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.idle.expired(cx) {
                    this.trip(BodyTrip::Idle)
                } else {
                    Poll::Pending
                }
            }
        }
    }

    fn guarded_end(&self) -> bool {
        self.tripped
            || (self.prefix.is_empty()
                && (self.inner_done
                    || match &self.inner {
                        Source::Client(inner) => inner.is_end_stream(),
                        Source::Buffered(bytes) => bytes.is_none(),
                    }))
    }

    fn guarded_size_hint(&self) -> SizeHint {
        let rest = if self.inner_done {
            SizeHint::with_exact(0)
        } else {
            match &self.inner {
                Source::Client(inner) => inner.size_hint(),
                Source::Buffered(bytes) => {
                    SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
                }
            }
        };
        // Hyper reads the remaining length of a client's body, so peeked
        // (and rewritten) bytes plus the rest is the exact length still to go.
        match rest.exact() {
            Some(n) if self.sized => SizeHint::with_exact(self.prefix_len + n),
            _ => {
                // No upper bound: a bound equal to the lower one would read as
                // an exact length and turn a chunked upload into a sized one.
                let mut h = SizeHint::new();
                h.set_lower(self.prefix_len + rest.lower());
                h
            }
        }
    }
}

/// A backend's response body went quiet for longer than `timeouts.stream_idle`.
#[derive(Debug, Clone, Copy)]
pub struct StreamIdle;

impl fmt::Display for StreamIdle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("backend response body produced nothing within the stream idle timeout")
    }
}

impl std::error::Error for StreamIdle {}

/// A backend's response body, cut when no frame arrives for the idle limit.
/// Frames only reset the timer, so a slow but alive stream runs forever.
pub struct IdleBody<B> {
    inner: B,
    idle: IdleTimer,
    cut: bool,
}

impl<B> IdleBody<B> {
    pub fn new(inner: B, limit: Duration) -> Self {
        IdleBody {
            inner,
            idle: IdleTimer::new(limit),
            cut: false,
        }
    }
}

impl<B> Body for IdleBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.cut {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.idle.progress();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if this.idle.expired(cx) {
                    this.cut = true;
                    Poll::Ready(Some(Err(Box::new(StreamIdle))))
                } else {
                    Poll::Pending
                }
            }
        }
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
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_tee_hands_every_copy_the_frames_sent_or_why_not() {
        // Two copies of one body: both get the same frames once it ends,
        // and the body sends exactly what it would without them.
        let mut body = RequestBody::buffered(Bytes::from_static(b"hello"), TripWire::new(false));
        let (a, b) = (body.tee(100), body.tee(3));
        let sent = body.collect().await.unwrap().to_bytes();
        assert_eq!(sent, "hello");
        assert_eq!(a.await.unwrap(), Ok(vec![Bytes::from_static(b"hello")]));
        // The largest limit applies; each copy checks its own.
        assert_eq!(b.await.unwrap(), Ok(vec![Bytes::from_static(b"hello")]));

        // Past the limit the copy is told at once, and the body goes on.
        let mut body = RequestBody::buffered(Bytes::from_static(b"too long"), TripWire::new(false));
        let rx = body.tee(4);
        assert_eq!(body.collect().await.unwrap().to_bytes(), "too long");
        assert_eq!(rx.await.unwrap(), Err(TeeCut::TooLarge));

        // A body dropped before its end leaves its copy nothing.
        let mut body =
            RequestBody::buffered(Bytes::from_static(b"never sent"), TripWire::new(false));
        let rx = body.tee(100);
        drop(body);
        assert!(rx.await.is_err());

        // An empty body is at its end before it is polled.
        assert!(RequestBody::empty(TripWire::new(true)).is_end_stream());
    }
}

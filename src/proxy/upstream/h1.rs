//! HTTP/1 upstream connections driven by the request's own task.
//!
//! Owns: one backend's idle HTTP/1 connections, checking one out (or dialing
//! a new one), sending a request on it, and putting it back once its response
//! body has been read to the end.
//!
//! Why not hyper-util's pooled client: it runs every connection on a task of
//! its own, so each request hops a channel to that task, its response comes
//! back through a oneshot, each body chunk crosses tasks, and every response
//! spawns one more task to wait for the connection to be idle again. Here the
//! connection (hyper's `client::conn::http1` dispatcher) is polled by whoever
//! is using it: the request's future while it waits for the head, then the
//! response body while the client's connection task streams it. Nothing is
//! spawned and nothing crosses tasks (Pingora's model).
//!
//! An idle connection is polled by nobody, so a backend closing it is noticed
//! at the next checkout: the connection is polled once there, and one that
//! has ended or is not ready is dropped for the next. A request that a
//! connection could not even begin to send (`try_send_request` hands it back)
//! is retried on another, so a race with a backend's idle close never loses a
//! request without an answer. One already partly sent is answered as a
//! failure, as before: it may not be idempotent.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tower::Service;

use super::{UpstreamError, UpstreamRequestBody};

type Io = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;
type Dispatcher = http1::Connection<Io, UpstreamRequestBody>;

/// How long a connection may sit idle in the pool (backends close idle
/// keep-alive connections too; 90 s like Go's `http.Transport`).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long one connection is reused at most: long-lived connections pin a
/// backend replica, so load balancers in front of backends never rebalance.
pub const MAX_LIFETIME: Duration = Duration::from_secs(600);
/// Idle connections kept per backend. It must cover the concurrency a
/// backend sees: every connection returned past the bound is closed, and the
/// next request past it dials again. At 64, 256 concurrent clients (a few
/// hundred streaming completions are ordinary) kept it dialing, and an open
/// loop offered 30,000 req/s got 18,000 to 22,000 with a p50 of 150 to 190 ms
/// (`load/results/upstream-idle-2026-12-03.md`). 1,024 still bounds what a
/// burst pins: about 10 KiB each (the boxed dispatcher and hyper's buffers),
/// aged out after `IDLE_TIMEOUT`. (hyper-util's default is unbounded.)
pub const MAX_IDLE: usize = 1024;

/// One HTTP/1 connection: the handle that sends on it and the dispatcher that
/// must be polled for anything to happen.
struct Conn {
    sender: http1::SendRequest<UpstreamRequestBody>,
    dispatcher: Dispatcher,
    born: Instant,
}

/// Boxed once per connection: the dispatcher is about 1.8 KB, and a request
/// moves its connection out of the pool, into its body and back.
type BoxedConn = Box<Conn>;

struct Idle {
    conn: BoxedConn,
    since: Instant,
}

/// Limits of a pool (tests shorten them).
#[derive(Debug, Clone, Copy)]
pub struct PoolLimits {
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
    pub max_idle: usize,
}

impl Default for PoolLimits {
    fn default() -> Self {
        PoolLimits {
            idle_timeout: IDLE_TIMEOUT,
            max_lifetime: MAX_LIFETIME,
            max_idle: MAX_IDLE,
        }
    }
}

/// One backend's HTTP/1 connections.
pub struct H1Pool {
    connector: HttpsConnector<HttpConnector>,
    /// Where to dial: the backend's scheme and authority.
    dial: Uri,
    /// Most recently used last, so the warmest connection is reused first
    /// and surplus ones age out at the front. The lock is held for a push or
    /// a pop only, never across an await.
    idle: Mutex<Vec<Idle>>,
    limits: PoolLimits,
}

impl H1Pool {
    pub fn new(connector: HttpsConnector<HttpConnector>, dial: Uri, limits: PoolLimits) -> Self {
        H1Pool {
            connector,
            dial,
            idle: Mutex::new(Vec::new()),
            limits,
        }
    }

    /// Idle connections held now.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().map_or(0, |v| v.len())
    }

    /// Sends `req` (its URI already in origin form) on a pooled connection,
    /// or a new one, and returns the response whose body drives the
    /// connection from now on.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<UpstreamRequestBody>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        loop {
            let (mut conn, reused) = match self.checkout() {
                Some(conn) => (conn, true),
                // Boxed: dialing (TCP, maybe TLS) is most of this future's
                // size, and every request's future is moved whole into
                // hyper's connection task; only a request that dials pays
                // for the box.
                None => (Box::pin(self.dial()).await?, false),
            };
            let sending = conn.sender.try_send_request(req);
            match drive(sending, &mut conn.dispatcher).await {
                Ok(response) => {
                    return Ok(response.map(|inner| PooledBody {
                        inner,
                        conn: Some(conn),
                        pool: self.clone(),
                        held: None,
                    }))
                }
                Err(Failed::Send(mut e)) => match e.take_message() {
                    // Never written: safe to send again, on another connection.
                    Some(back) if reused => req = back,
                    _ => return Err(UpstreamError::Hyper(e.into_error())),
                },
                Err(Failed::Ended(Some(e))) => return Err(UpstreamError::Hyper(e)),
                Err(Failed::Ended(None)) => return Err(UpstreamError::Closed),
            }
        }
    }

    /// The warmest idle connection still alive, if any.
    fn checkout(&self) -> Option<BoxedConn> {
        loop {
            let idle = self.idle.lock().ok()?.pop()?;
            let now = Instant::now();
            if now.duration_since(idle.since) > self.limits.idle_timeout {
                // The stack is LIFO by check-in time: everything below this
                // one has been idle longer still.
                if let Ok(mut v) = self.idle.lock() {
                    v.clear();
                }
                return None;
            }
            if now.duration_since(idle.conn.born) > self.limits.max_lifetime {
                // Birth order is not check-in order: an old connection can sit
                // on top of younger ones, so drop only this one.
                continue;
            }
            let mut conn = idle.conn;
            if alive(&mut conn) {
                return Some(conn);
            }
        }
    }

    async fn dial(&self) -> Result<BoxedConn, UpstreamError> {
        let mut connector = self.connector.clone();
        poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(UpstreamError::Connect)?;
        let io = connector
            .call(self.dial.clone())
            .await
            .map_err(UpstreamError::Connect)?;
        let (sender, dispatcher) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(UpstreamError::Hyper)?;
        Ok(Box::new(Conn {
            sender,
            dispatcher,
            born: Instant::now(),
        }))
    }

    fn checkin(&self, mut conn: BoxedConn) {
        let now = Instant::now();
        if now.duration_since(conn.born) > self.limits.max_lifetime {
            return;
        }
        // The last request's poll left its task's waker with the dispatcher;
        // a quiet poll replaces it, so the next request on this connection
        // does not wake a task that has moved on. It also finishes the
        // response's bookkeeping, or finds that the backend closed.
        if Pin::new(&mut conn.dispatcher).poll(&mut quiet()).is_ready() {
            return;
        }
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        // Age out from the front; at the bound, the coldest makes room.
        let stale = idle
            .iter()
            .take_while(|i| now.duration_since(i.since) > self.limits.idle_timeout)
            .count();
        let over = (idle.len() + 1).saturating_sub(self.limits.max_idle);
        let drop_n = stale.max(over).min(idle.len());
        if drop_n > 0 {
            idle.drain(..drop_n);
        }
        if self.limits.max_idle > 0 {
            idle.push(Idle { conn, since: now });
        }
    }
}

/// A context whose waker does nothing.
///
/// Why: everything that makes a pooled connection's futures ready (the
/// response head's callback, a body frame, its readiness for a request)
/// happens inside a poll of its dispatcher, and whoever polls the dispatcher
/// polls those right after. A real waker registered with them would only be
/// woken from within the task's own poll, and tokio answers each such
/// self-wake by rescheduling the task and waking a parked worker to steal it:
/// a futex and an eventfd write per request, measured with `strace -c`. Only
/// the dispatcher's own waits (socket readiness) need the real waker.
fn quiet() -> Context<'static> {
    Context::from_waker(Waker::noop())
}

/// Polls an idle connection once: it is usable if its dispatcher has not
/// ended (the backend did not close it) and it is ready for a request.
/// Polled quietly: the request's next poll of the dispatcher (in `drive`)
/// registers what it waits for.
fn alive(conn: &mut Conn) -> bool {
    let mut cx = quiet();
    if Pin::new(&mut conn.dispatcher).poll(&mut cx).is_ready() {
        return false;
    }
    matches!(conn.sender.poll_ready(&mut cx), Poll::Ready(Ok(())))
}

type SendError = hyper::client::conn::TrySendError<Request<UpstreamRequestBody>>;

/// Why no response head came.
// The large variant carries the request back for a retry; it lives only
// between a failed send and the next attempt.
#[allow(clippy::large_enum_variant)]
enum Failed {
    /// hyper answered the request with an error (the request may be in it).
    Send(SendError),
    /// The dispatcher ended without answering (its error, if it had one).
    Ended(Option<hyper::Error>),
}

/// Waits for the response head while driving the connection (which writes
/// the request, streams its body up and reads the head).
async fn drive<F>(sending: F, dispatcher: &mut Dispatcher) -> Result<Response<Incoming>, Failed>
where
    F: Future<Output = Result<Response<Incoming>, SendError>>,
{
    let mut sending = std::pin::pin!(sending);
    poll_fn(|cx| {
        // The answer can only come from a poll of the dispatcher, so it is
        // looked for (quietly) after each one.
        let mut q = quiet();
        if let Poll::Ready(r) = sending.as_mut().poll(&mut q) {
            return Poll::Ready(r.map_err(Failed::Send));
        }
        let ended = Pin::new(&mut *dispatcher).poll(cx);
        match (sending.as_mut().poll(&mut q), ended) {
            (Poll::Ready(r), _) => Poll::Ready(r.map_err(Failed::Send)),
            (Poll::Pending, Poll::Pending) => Poll::Pending,
            // hyper answers the request before its dispatcher ends; if it
            // did not, the end itself is the answer.
            (Poll::Pending, Poll::Ready(ended)) => Poll::Ready(Err(Failed::Ended(ended.err()))),
        }
    })
    .await
}

/// A response body from a pooled HTTP/1 connection. Polling it drives the
/// connection; read to the end, it returns the connection to its pool, and
/// dropped before the end, it closes it (which also cancels the backend's
/// work on the request).
pub struct PooledBody {
    inner: Incoming,
    /// `None` once the dispatcher ended (the backend closed the connection
    /// after this response, or it broke): nothing goes back to the pool.
    conn: Option<BoxedConn>,
    pool: Arc<H1Pool>,
    /// An error held back for one poll (see `poll_frame`).
    held: Option<hyper::Error>,
}

impl PooledBody {
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.checkin(conn);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(e) = this.held.take() {
            return Poll::Ready(Some(Err(e)));
        }
        // Drive first, so what the dispatcher reads reaches `inner` now.
        if let Some(conn) = &mut this.conn {
            if Pin::new(&mut conn.dispatcher).poll(cx).is_ready() {
                this.conn = None;
            }
        }
        // Frames only arrive through the dispatcher just polled (or, once it
        // ended, are already there): looked for quietly, see `quiet`.
        let polled = match this.conn {
            Some(_) => Pin::new(&mut this.inner).poll_frame(&mut quiet()),
            None => Pin::new(&mut this.inner).poll_frame(cx),
        };
        match polled {
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.finish(),
            Poll::Ready(Some(Err(e))) => {
                this.conn = None;
                // hyper's server drops what it has buffered but not yet
                // written when a body fails, so an error that arrives in the
                // same read as the head or the last frames would take them
                // with it. Yielding once lets it flush them first (across a
                // task hop, as with a pooled client, that happened anyway).
                this.held = Some(e);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body nobody polled (HEAD, 204, 304: hyper's server skips a body
        // that is already at its end) is complete all the same.
        if self.inner.is_end_stream() {
            self.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::proxy::guarded_body::{RequestBody, TripWire};

    /// A keep-alive backend on 127.0.0.1 that answers every request with
    /// "ok" and counts the connections it accepted.
    async fn backend() -> (Uri, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        let Ok(n) = sock.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        // Requests here have no body: each ends at its blank line.
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if sock.write_all(reply).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        let uri = format!("http://{addr}/").parse().unwrap();
        (uri, accepted)
    }

    fn pool(dial: Uri, limits: PoolLimits) -> Arc<H1Pool> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(crate::proxy::tls::plain_client_config())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Arc::new(H1Pool::new(connector, dial, limits))
    }

    fn get() -> Request<RequestBody> {
        let wire = TripWire::new(true);
        Request::get("/")
            .header(http::header::HOST, "backend")
            .body(RequestBody::buffered(Bytes::new(), wire))
            .unwrap()
    }

    /// Sends one request and reads its body to the end (which checks the
    /// connection back in).
    async fn round_trip(pool: &Arc<H1Pool>) {
        let response = pool.send(get()).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
    }

    fn limits(idle_timeout: Duration, max_lifetime: Duration, max_idle: usize) -> PoolLimits {
        PoolLimits {
            idle_timeout,
            max_lifetime,
            max_idle,
        }
    }

    #[tokio::test]
    async fn a_connection_is_reused_while_within_its_limits() {
        let (uri, accepted) = backend().await;
        let pool = pool(
            uri,
            limits(Duration::from_secs(60), Duration::from_secs(60), 4),
        );
        for _ in 0..5 {
            round_trip(&pool).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn connections_past_their_idle_time_or_lifetime_are_not_reused() {
        // Idle timeout: zero, so every checked-in connection is stale by the
        // next checkout.
        let (uri, accepted) = backend().await;
        let idle = pool(uri, limits(Duration::ZERO, Duration::from_secs(60), 4));
        round_trip(&idle).await;
        std::thread::sleep(Duration::from_millis(2));
        round_trip(&idle).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);

        // Lifetime: zero, so no connection is ever checked back in.
        let (uri, accepted) = backend().await;
        let old = pool(uri, limits(Duration::from_secs(60), Duration::ZERO, 4));
        round_trip(&old).await;
        std::thread::sleep(Duration::from_millis(2));
        round_trip(&old).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(old.idle_count(), 0);
    }

    #[tokio::test]
    async fn an_expired_connection_on_top_does_not_discard_younger_ones() {
        // Two connections: the older (born first) is checked in last, so it
        // sits on top. Once it is past its lifetime, the younger one below
        // it is still reused.
        let (uri, accepted) = backend().await;
        let pool = pool(
            uri,
            limits(Duration::from_secs(60), Duration::from_millis(1000), 4),
        );
        let first = pool.send(get()).await.unwrap();
        std::thread::sleep(Duration::from_millis(600));
        let second = pool.send(get()).await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        second.into_body().collect().await.unwrap();
        first.into_body().collect().await.unwrap();
        assert_eq!(pool.idle_count(), 2);
        // The first is 600+ ms older than the second: after 500 ms more,
        // only the first is past its lifetime (the second has 500 ms of slack
        // for a slow machine).
        std::thread::sleep(Duration::from_millis(500));
        round_trip(&pool).await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "the younger connection was reused"
        );
        assert_eq!(pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn at_most_max_idle_connections_are_kept() {
        let (uri, accepted) = backend().await;
        let pool = pool(
            uri,
            limits(Duration::from_secs(60), Duration::from_secs(60), 2),
        );
        let mut open = Vec::new();
        for _ in 0..4 {
            open.push(pool.send(get()).await.unwrap());
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
        for response in open {
            response.into_body().collect().await.unwrap();
        }
        assert_eq!(pool.idle_count(), 2);
    }
}

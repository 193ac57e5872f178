//! The data-plane listener: what each accepted connection does (TLS handshake
//! bounded by its own timeout, then HTTP/1 or HTTP/2 with abgate's limits,
//! closed when idle, closed gracefully on shutdown). Accepting and draining is
//! the shared loop in [`super::accept`].

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::accept::{accept_loop, stop_requested, AcceptLimits};
use super::activity::{Activity, ActivityBody, IdleEnd, IdleLimits, ReadNotes};
use super::handler::handle;
use super::limits::WriteIdleIo;
use super::plane::{ConnInfo, DataPlane};
use super::tls::TlsTerminator;
use super::wake_gate::WakeGate;
use crate::config::Config;

/// Listener settings that do not change with the routing table.
#[derive(Clone)]
pub struct ListenerSettings {
    /// A client must send a complete request head within this (and an idle
    /// HTTP/1 connection is closed after it).
    pub header_read_timeout: Duration,
    /// How long in-flight requests may take to finish after shutdown starts.
    pub shutdown_grace: Duration,
    /// Open connections at most; the accept loop waits for a free permit.
    pub max_connections: usize,
    /// Request line plus headers, in bytes (`limits.max_header_bytes`).
    pub max_header_bytes: usize,
    /// Header fields per request (`limits.max_header_count`).
    pub max_header_count: usize,
    /// Concurrent streams per HTTP/2 connection.
    pub h2_max_concurrent_streams: u32,
    /// A write to a client blocked this long closes the connection.
    pub downstream_write_idle: Duration,
    /// A connection with no request in flight for this long is closed gracefully.
    pub keepalive_idle: Duration,
    /// A TLS client must complete its handshake within this.
    pub tls_handshake_timeout: Duration,
    /// `Some` terminates TLS on this listener.
    pub tls: Option<Arc<TlsTerminator>>,
}

impl ListenerSettings {
    /// Settings for `config`'s data-plane listener; `tls` was built from `config.tls`.
    pub fn from_config(config: &Config, tls: Option<Arc<TlsTerminator>>) -> Self {
        ListenerSettings {
            header_read_timeout: config.timeouts.header_read,
            shutdown_grace: config.timeouts.shutdown_grace,
            max_connections: config.limits.max_connections,
            max_header_bytes: config.limits.max_header_bytes,
            max_header_count: config.limits.max_header_count,
            h2_max_concurrent_streams: config.limits.h2_max_concurrent_streams,
            downstream_write_idle: config.timeouts.downstream_write_idle,
            keepalive_idle: config.timeouts.keepalive_idle,
            tls_handshake_timeout: config.timeouts.tls_handshake,
            tls,
        }
    }
}

/// HTTP/2 keep-alive pings find peers that vanished without a FIN (NAT timeouts,
/// pulled cables); 20 s matches hyper's ping timeout.
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);

/// hyper's default header-count ceiling for HTTP/1 (`DEFAULT_MAX_HEADERS`).
const HYPER_INLINE_HEADERS: usize = 100;

fn http_builder(settings: &ListenerSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's own limits sit above ours, so a moderately oversized head still
    // reaches `limits::check_head` and gets a JSON 431; only abuse far past the
    // limit meets hyper's bare answer and a closed connection.
    builder
        .http1()
        .timer(TokioTimer::new())
        // The header-read timeout is the connection's idle timer's (see
        // `activity`): hyper's costs a timer per request.
        .header_read_timeout(None)
        .max_buf_size((settings.max_header_bytes * 2).max(8192));
    // hyper parses up to HYPER_INLINE_HEADERS headers in arrays on the stack;
    // any explicit cap makes it allocate and fill two arrays on the heap for
    // every request (about 3% of the proxy's CPU in a profile). So hyper keeps
    // its default unless our limit is above it.
    if settings.max_header_count > HYPER_INLINE_HEADERS {
        builder.http1().max_headers(settings.max_header_count * 2);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.h2_max_concurrent_streams)
        // Pinned explicitly (hyper's defaults are not promised stable): the
        // Rapid Reset (CVE-2023-44487) and error-reset (RUSTSEC-2024-0003) guards.
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(1024)
        .max_header_list_size(settings.max_header_bytes as u32)
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_INTERVAL);
    builder
}

/// Serves until `shutdown` flips to true, then drains connections for up to the
/// grace period (see [`super::accept`]). Returns when every connection has
/// finished or the grace is over.
pub async fn serve(
    listener: TcpListener,
    plane: Arc<DataPlane>,
    settings: ListenerSettings,
    shutdown: watch::Receiver<bool>,
) {
    let builder = Arc::new(http_builder(&settings));
    let limits = AcceptLimits {
        max_connections: settings.max_connections,
        shutdown_grace: settings.shutdown_grace,
    };
    let settings = Arc::new(settings);
    let open = plane.telemetry.gauge("abgate_downstream_connections", &[]);
    let conn_shutdown = shutdown.clone();
    accept_loop(
        listener,
        limits,
        shutdown,
        "data plane",
        move |stream, peer| {
            let _ = stream.set_nodelay(true);
            let conn = Conn {
                peer,
                plane: plane.clone(),
                builder: builder.clone(),
                settings: settings.clone(),
                shutdown: conn_shutdown.clone(),
            };
            let open = open.clone();
            open.increment(1.0);
            async move {
                conn.run(stream).await;
                open.decrement(1.0);
            }
        },
    )
    .await;
}

/// One client connection and what it needs.
struct Conn {
    peer: std::net::SocketAddr,
    plane: Arc<DataPlane>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    settings: Arc<ListenerSettings>,
    shutdown: watch::Receiver<bool>,
}

impl Conn {
    /// Optional TLS handshake (bounded), then HTTP.
    async fn run(self, stream: TcpStream) {
        let io = WriteIdleIo::new(stream, self.settings.downstream_write_idle);
        let Some(tls) = &self.settings.tls else {
            // Boxed so a plain connection's task does not reserve room for the
            // (much larger) TLS variant of this future, and vice versa.
            Box::pin(self.serve_http(io, "http")).await;
            return;
        };
        let acceptor = tls.acceptor();
        let handshake = acceptor.accept(io);
        match tokio::time::timeout(self.settings.tls_handshake_timeout, handshake).await {
            Ok(Ok(tls_stream)) => Box::pin(self.serve_http(tls_stream, "https")).await,
            Ok(Err(e)) => {
                tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed");
                self.plane.telemetry.rejected("tls-handshake-failed");
            }
            Err(_) => {
                tracing::debug!(peer = %self.peer, "TLS handshake timed out");
                self.plane.telemetry.rejected("tls-handshake-timeout");
            }
        }
    }

    /// Serves HTTP/1 or HTTP/2 until the client leaves, the connection has been
    /// idle for `keepalive_idle`, or shutdown is requested (then it finishes its
    /// in-flight requests: GOAWAY on h2, close after the response on h1).
    async fn serve_http<I>(self, io: I, proto: &'static str)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let conn_info = Arc::new(ConnInfo {
            peer: self.peer,
            peer_header: super::headers::peer_value(self.peer.ip()),
            proto,
        });
        let activity = Arc::new(Activity::new());
        let (plane, act) = (self.plane.clone(), activity.clone());
        let svc = service_fn(move |req| {
            let guard = act.begin();
            // hyper keeps a slot sized for this future in every connection, idle
            // or not; boxing the request's own future keeps that slot small and
            // costs one allocation per request instead of ~5 KiB per connection.
            let fut = Box::pin(handle(plane.clone(), conn_info.clone(), req));
            async move {
                let resp = fut.await?;
                Ok::<_, std::convert::Infallible>(resp.map(|b| ActivityBody::new(b, guard)))
            }
        });
        let io = ReadNotes::new(io, activity.clone());
        let conn = self.builder.serve_connection(TokioIo::new(io), svc);
        tokio::pin!(conn);
        let idle = IdleLimits {
            keepalive: self.settings.keepalive_idle,
            header_read: self.settings.header_read_timeout,
        };
        // What ends the connection, polled only when one of them fired (see
        // `wake_gate`): the connection's task is woken several times per
        // request, these once per connection at most.
        let mut shutdown = self.shutdown.clone();
        let mut ending = WakeGate::new({
            let activity = activity.clone();
            async move {
                tokio::select! {
                    _ = stop_requested(&mut shutdown) => None,
                    end = activity.idle_for(idle) => Some(end),
                }
            }
        });
        let mut closing = false;
        let result = loop {
            tokio::select! {
                biased;
                r = conn.as_mut() => break r,
                end = &mut ending, if !closing => {
                    if end == Some(IdleEnd::HeadTimeout) {
                        // As hyper did: the connection is dropped, not drained.
                        self.plane.telemetry.rejected("header-read-timeout");
                        break Ok(());
                    }
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        };
        if let Err(e) = result {
            if let Some(reason) = connection_error_reason(&*e) {
                self.plane.telemetry.rejected(reason);
            }
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}

/// Requests hyper refused before our handler saw them, named for
/// `abgate_rejected_requests_total{reason}`; `None` for ordinary disconnects.
fn connection_error_reason(e: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut source = Some(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            if h.is_timeout() {
                return Some("header-read-timeout");
            }
            if h.is_parse_too_large() {
                return Some("head-too-large");
            }
            if h.is_parse() {
                return Some("malformed-request");
            }
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return Some("downstream-write-timeout");
            }
        }
        source = s.source();
    }
    None
}

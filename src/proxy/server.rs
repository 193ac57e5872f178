//! The data-plane listener: accept loop, per-connection tasks, graceful drain.
//!
//! Shape (after mini-redis): take a connection permit, then accept, one task per
//! connection (TLS handshake bounded by its own timeout, then HTTP/1 or HTTP/2),
//! a shutdown signal that stops accepting, then a drain bounded by the grace period.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use super::handler::{handle, ConnInfo, DataPlane};
use super::limits::WriteIdleIo;
use super::tls::TlsTerminator;
use crate::config::Config;

/// Listener settings that do not change with the routing table.
#[derive(Clone)]
pub struct ListenerSettings {
    pub header_read_timeout: Duration,
    pub shutdown_grace: Duration,
    /// Open connections at most; the accept loop waits for a free permit.
    pub max_connections: usize,
    /// Request line plus headers, in bytes (`limits.max_header_bytes`).
    pub max_header_bytes: usize,
    pub max_header_count: usize,
    pub h2_max_concurrent_streams: u32,
    pub downstream_write_idle: Duration,
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
            tls_handshake_timeout: config.timeouts.tls_handshake,
            tls,
        }
    }
}

/// Default ceiling of hyper's HTTP/1 read buffer (used when settings give none).
/// hyper's own default (~400 KiB) lets one client pin a lot of memory; Envoy's
/// `max_request_headers_kb` default is 60 KiB and nginx's
/// `large_client_header_buffers` 4×8 KiB, so 64 KiB fits real clients.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// HTTP/2 keep-alive pings find peers that vanished without a FIN (NAT timeouts,
/// pulled cables); 20 s matches hyper's ping timeout.
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);

fn http_builder(settings: &ListenerSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's own limits sit at twice ours, so a moderately oversized head still
    // reaches `limits::check_head` and gets a JSON 431; only abuse far past the
    // limit meets hyper's bare answer and a closed connection.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size((settings.max_header_bytes * 2).max(8192))
        .max_headers(settings.max_header_count * 2);
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
/// grace period. Returns when every connection has finished or been cut.
pub async fn serve(
    listener: TcpListener,
    plane: Arc<DataPlane>,
    settings: ListenerSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let builder = Arc::new(http_builder(&settings));
    let settings = Arc::new(settings);
    let permits = Arc::new(Semaphore::new(settings.max_connections));
    let open = plane.telemetry.gauge("abgate_downstream_connections", &[]);
    let graceful = GracefulShutdown::new();
    loop {
        // The permit is taken before accept: at the limit, new clients wait in
        // the kernel's accept queue instead of costing abgate memory.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = stop_requested(&mut shutdown) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop_requested(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        let (plane, builder, settings) = (plane.clone(), builder.clone(), settings.clone());
        let watcher = graceful.watcher();
        let open = open.clone();
        open.increment(1.0);
        tokio::spawn(async move {
            connection(stream, peer, plane, builder, settings, watcher).await;
            open.decrement(1.0);
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections drained"),
        _ = tokio::time::sleep(settings.shutdown_grace) => {
            tracing::warn!(grace = ?settings.shutdown_grace, "grace period over; cutting remaining connections");
        }
    }
}

/// One client connection: optional TLS handshake (bounded), then HTTP.
async fn connection(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    plane: Arc<DataPlane>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    settings: Arc<ListenerSettings>,
    watcher: Watcher,
) {
    let io = WriteIdleIo::new(stream, settings.downstream_write_idle);
    let Some(tls) = &settings.tls else {
        serve_http(
            io,
            ConnInfo {
                peer,
                proto: "http",
            },
            plane,
            &builder,
            watcher,
        )
        .await;
        return;
    };
    let acceptor = tls.acceptor();
    match tokio::time::timeout(settings.tls_handshake_timeout, acceptor.accept(io)).await {
        Ok(Ok(tls_stream)) => {
            let info = ConnInfo {
                peer,
                proto: "https",
            };
            serve_http(tls_stream, info, plane, &builder, watcher).await;
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            plane.telemetry.rejected("tls-handshake-failed");
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            plane.telemetry.rejected("tls-handshake-timeout");
        }
    }
}

async fn serve_http<I>(
    io: I,
    info: ConnInfo,
    plane: Arc<DataPlane>,
    builder: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn_info = Arc::new(info);
    let svc_plane = plane.clone();
    let svc = service_fn(move |req| handle(svc_plane.clone(), conn_info.clone(), req));
    let conn = builder.serve_connection(TokioIo::new(io), svc).into_owned();
    if let Err(e) = watcher.watch(conn).await {
        if let Some(reason) = connection_error_reason(&*e) {
            plane.telemetry.rejected(reason);
        }
        tracing::debug!(error = %e, "connection ended with an error");
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

/// Resolves once `rx` reads true (or its sender is gone). Kept in its own fn so
/// the non-`Send` watch guard never lives inside a `select!`.
pub async fn stop_requested(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await.is_ok();
}

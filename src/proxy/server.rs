//! The data-plane listener: accept loop, per-connection tasks, graceful drain.
//!
//! Shape (after mini-redis): accept, one task per connection, a shutdown signal
//! that stops accepting, then a drain bounded by the grace period.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::handler::{handle, ConnInfo, DataPlane};

/// Listener settings that do not change with the routing table.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    pub header_read_timeout: Duration,
    pub shutdown_grace: Duration,
}

/// Largest request head abgate buffers. hyper's default (~400 KiB) lets one
/// client pin a lot of memory; Envoy's `max_request_headers_kb` default is 60 KiB
/// and nginx's `large_client_header_buffers` 4×8 KiB, so 64 KiB fits real clients.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Serves until `shutdown` flips to true, then drains connections for up to the
/// grace period. Returns when every connection has finished or been cut.
pub async fn serve(
    listener: TcpListener,
    plane: Arc<DataPlane>,
    settings: ListenerSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let conn_info = Arc::new(ConnInfo { peer, proto: "http" });
                let plane = plane.clone();
                let svc = service_fn(move |req| handle(plane.clone(), conn_info.clone(), req));
                let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            _ = stop_requested(&mut shutdown) => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections drained"),
        _ = tokio::time::sleep(settings.shutdown_grace) => {
            tracing::warn!(grace = ?settings.shutdown_grace, "grace period over; cutting remaining connections");
        }
    }
}

/// Resolves once `rx` reads true (or its sender is gone). Kept in its own fn so
/// the non-`Send` watch guard never lives inside a `select!`.
pub async fn stop_requested(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await.is_ok();
}

//! Accept loop, per-connection serving (HTTP/1.1 and h2c) and the `MockServer` handle.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::{JoinHandle, JoinSet};

use super::decision::Decider;
use super::error::{MockError, SpecError};
use super::handlers::{handle, Handled};
use super::spec::MockSpec;
pub use super::state::MockStats;
use super::state::Shared;

/// Serves `spec` on `listener` until `shutdown` resolves, then aborts every open connection
/// (in-flight requests are dropped: a mock needs no graceful drain) and returns once all
/// connection tasks have ended.
pub async fn serve(
    spec: MockSpec,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), MockError> {
    serve_with_stats(spec, listener, shutdown, Arc::new(MockStats::default())).await
}

/// Like [`serve`], updating the caller's `stats`.
pub async fn serve_with_stats(
    spec: MockSpec,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    stats: Arc<MockStats>,
) -> Result<(), MockError> {
    spec.validate()?;
    let shared = Arc::new(Shared {
        decider: Decider::new(&spec),
        spec,
        stats,
    });
    let mut conns = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(serve_conn(stream, shared.clone()));
                }
                Err(e) => {
                    // Usually EMFILE/ECONNABORTED: transient, so back off instead of spinning.
                    tracing::warn!(error = %e, "mock accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            // Reap finished connections so the set does not grow without bound.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.shutdown().await;
    Ok(())
}

async fn serve_conn(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    if shared.spec.reset_rate > 0.0 {
        // SO_LINGER 0: dropping the socket sends RST instead of FIN, i.e. a real reset.
        let _ = stream.set_zero_linger();
    }
    // Dropped when this task ends (normally or aborted), which cancels h2 stream tasks.
    let (_alive_tx, alive_rx) = watch::channel(());
    let kill = Arc::new(Notify::new());
    let svc = {
        let kill = kill.clone();
        service_fn(move |req| {
            let shared = shared.clone();
            let kill = kill.clone();
            async move {
                match handle(req, &shared).await {
                    Handled::Respond(resp) => Ok::<_, Infallible>(resp),
                    Handled::Reset => {
                        // Never answer: the connection task drops the socket on this signal.
                        kill.notify_one();
                        std::future::pending().await
                    }
                }
            }
        })
    };
    let builder = auto::Builder::new(ConnExecutor { alive: alive_rx });
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::select! {
        _ = conn => {}
        _ = kill.notified() => {}
    }
}

/// Executor for h2 stream tasks that ties them to their connection's lifetime, so a reset or
/// a server shutdown leaves no stream task behind.
#[derive(Clone)]
struct ConnExecutor {
    alive: watch::Receiver<()>,
}

impl<F> hyper::rt::Executor<F> for ConnExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        let mut alive = self.alive.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = fut => {}
                // Err only when the connection task dropped the sender.
                _ = alive.changed() => {}
            }
        });
    }
}

/// A running mock server; shut it down with [`MockServer::shutdown`] (dropping it also stops it).
pub struct MockServer {
    addr: SocketAddr,
    name: String,
    stats: Arc<MockStats>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), MockError>>>,
}

impl MockServer {
    /// Binds `addr` (must be loopback; port 0 picks a free port) and serves `spec` in a
    /// background task.
    pub async fn start(spec: MockSpec, addr: SocketAddr) -> Result<MockServer, MockError> {
        if !addr.ip().is_loopback() {
            return Err(SpecError::NonLoopback(addr).into());
        }
        spec.validate()?;
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(MockStats::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let name = spec.name.clone();
        let task = tokio::spawn(serve_with_stats(
            spec,
            listener,
            async move {
                let _ = stopped.await;
            },
            stats.clone(),
        ));
        Ok(MockServer {
            addr,
            name,
            stats,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL, e.g. `http://127.0.0.1:9001`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Backend name from the spec.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<MockStats> {
        self.stats.clone()
    }

    /// Number of HTTP requests received so far (any path).
    pub fn requests_served(&self) -> u64 {
        self.stats.requests()
    }

    /// Stops accepting, aborts open connections and waits until the server task has ended.
    pub async fn shutdown(mut self) -> Result<(), MockError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => match task.await {
                Ok(result) => result,
                // The task only ends by returning or by being aborted in Drop, never panics on purpose.
                Err(e) => Err(MockError::Io(std::io::Error::other(e))),
            },
            None => Ok(()),
        }
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

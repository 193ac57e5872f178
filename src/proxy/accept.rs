//! The accept loop every listener shares (the data plane and the admin API).
//!
//! Shape (after mini-redis): take a connection permit, *then* accept, so at the
//! limit new clients wait in the kernel's accept queue instead of costing abgate
//! memory; back off on accept errors (EMFILE and friends) instead of spinning;
//! one task per connection; on shutdown stop accepting, then drain: wait until
//! every connection task has returned its permit, bounded by the grace period.
//!
//! Never: speaks HTTP. What a connection does is the caller's closure, which must
//! itself finish promptly once shutdown is requested (graceful close).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// How long the loop waits after a failed accept before trying again: long
/// enough that a process out of file descriptors does not spin a core, short
/// enough that a freed descriptor is used within a blink.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Bounds of one listener.
#[derive(Debug, Clone, Copy)]
pub struct AcceptLimits {
    /// Open connections at most; the loop waits for a free permit to accept.
    pub max_connections: usize,
    /// How long open connections may take to finish after shutdown starts.
    pub shutdown_grace: Duration,
}

/// Accepts until `shutdown` reads true, running `serve(stream, peer)` as one
/// task per connection, then drains. `what` names the listener in logs.
/// Returns when every connection has finished or the grace period is over.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    limits: AcceptLimits,
    mut shutdown: watch::Receiver<bool>,
    what: &'static str,
    mut serve: F,
) where
    F: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = stop_requested(&mut shutdown) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(listener = what, error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = stop_requested(&mut shutdown) => break,
        };
        let conn = serve(stream, peer);
        tokio::spawn(async move {
            conn.await;
            drop(permit);
        });
    }
    drop(listener);
    // Every connection task holds one permit until it ends, so having them all
    // back means every connection has drained.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    tokio::select! {
        _ = permits.acquire_many(all) => tracing::info!(listener = what, "all connections drained"),
        _ = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!(listener = what, grace = ?limits.shutdown_grace, "grace period over; cutting remaining connections");
        }
    }
}

/// Resolves once `rx` reads true (or its sender is gone). Kept in its own fn so
/// the non-`Send` watch guard never lives inside a `select!`.
pub async fn stop_requested(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await.is_ok();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Each connection echoes one byte back after `hold` elapses.
    async fn start(
        max_connections: usize,
        hold: Duration,
    ) -> (
        SocketAddr,
        watch::Sender<bool>,
        Arc<AtomicUsize>,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = watch::channel(false);
        let served = Arc::new(AtomicUsize::new(0));
        let counter = served.clone();
        let limits = AcceptLimits {
            max_connections,
            shutdown_grace: Duration::from_secs(10),
        };
        let task = tokio::spawn(accept_loop(
            listener,
            limits,
            stopped,
            "test",
            move |mut s, _| {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let mut b = [0u8; 1];
                    if s.read_exact(&mut b).await.is_ok() {
                        tokio::time::sleep(hold).await;
                        let _ = s.write_all(&b).await;
                    }
                }
            },
        ));
        (addr, stop, served, task)
    }

    #[tokio::test]
    async fn a_connection_past_the_limit_waits_for_a_permit() {
        let (addr, stop, served, task) = start(1, Duration::ZERO).await;
        let mut first = TcpStream::connect(addr).await.unwrap();
        let mut second = TcpStream::connect(addr).await.unwrap();
        second.write_all(b"2").await.unwrap();
        // The second client is in the kernel's queue: nothing answers it while
        // the first holds the only permit.
        let mut b = [0u8; 1];
        let early =
            tokio::time::timeout(Duration::from_millis(200), second.read_exact(&mut b)).await;
        assert!(early.is_err(), "served past the connection limit");
        assert_eq!(served.load(Ordering::SeqCst), 1);
        first.write_all(b"1").await.unwrap();
        first.read_exact(&mut b).await.unwrap();
        drop(first);
        second.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"2");
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn shutdown_stops_accepting_and_waits_for_open_connections() {
        let (addr, stop, served, task) = start(4, Duration::from_millis(300)).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"x").await.unwrap();
        // Let the connection be accepted before shutdown starts.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while served.load(Ordering::SeqCst) == 0 {
            assert!(std::time::Instant::now() < deadline, "never accepted");
            tokio::task::yield_now().await;
        }
        stop.send(true).unwrap();
        // The in-flight exchange still completes during the drain.
        let mut b = [0u8; 1];
        c.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"x");
        task.await.unwrap();
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "still accepting after shutdown"
        );
    }
}

//! Assembles a running abgate: data plane, admin API, and the state they share.
//!
//! Owns: startup (bind, build the first table), table swaps, and shutdown.
//! Everything is per instance (no globals) so tests can run several servers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::outcomes::RecorderRegistry;
use crate::proxy::handler::DataPlane;
use crate::proxy::limits::RequestLimits;
use crate::proxy::server::{self as listener, ListenerSettings};
use crate::proxy::tls::TlsTerminator;
use crate::proxy::upstream::UpstreamPool;
use crate::routing::RoutingTable;
use crate::telemetry::Telemetry;

/// State shared by the data plane, the admin API and (later) the controller.
pub struct Shared {
    pub plane: Arc<DataPlane>,
    pub telemetry: Arc<Telemetry>,
    pub recorders: RecorderRegistry,
    pub pools: UpstreamPool,
    /// The data-plane listener's certificate, when it terminates TLS.
    pub tls: Option<Arc<TlsTerminator>>,
    next_version: AtomicU64,
}

impl Shared {
    /// Builds a table from `config` off the hot path and publishes it in one store.
    /// Returns the new version.
    pub fn apply(&self, config: &Config) -> u64 {
        let version = self.next_version.fetch_add(1, Ordering::SeqCst);
        let table = RoutingTable::build(config, version, &self.pools, &self.recorders);
        self.plane.table.store(Arc::new(table));
        self.pools.prune();
        version
    }

    /// Re-reads the listener certificate and key named by `config.tls`; call it
    /// whenever a config is re-applied so renewed certificates take effect for
    /// new connections. On error the old certificate stays in use. Turning TLS on
    /// or off needs a restart (the listener's mode is fixed at bind).
    pub fn reload_tls(&self, config: &Config) -> Result<(), String> {
        match (&self.tls, &config.tls) {
            (Some(t), Some(files)) => t.reload(files),
            (None, None) => Ok(()),
            _ => Err("enabling or disabling TLS on the listener needs a restart".into()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("cannot set up TLS on the data plane: {0}")]
    Tls(String),
}

/// A started server. Dropping it does not stop it; call [`RunningServer::shutdown`].
pub struct RunningServer {
    pub data_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    data_task: JoinHandle<()>,
    admin_task: JoinHandle<()>,
    upkeep_task: JoinHandle<()>,
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, what, source })
}

/// Binds both listeners and starts serving `config`.
pub async fn start(config: &Config) -> Result<RunningServer, StartError> {
    let data = bind(config.listen, "data plane").await?;
    let admin = bind(config.admin.listen, "admin").await?;
    let tls = match &config.tls {
        Some(files) => Some(Arc::new(
            TlsTerminator::new(files).map_err(StartError::Tls)?,
        )),
        None => None,
    };
    let telemetry = Telemetry::new();
    let recorders = RecorderRegistry::new(telemetry.clone());
    let pools = UpstreamPool::default();
    let table = RoutingTable::build(config, 1, &pools, &recorders);
    let plane = Arc::new(DataPlane {
        table: ArcSwap::from_pointee(table),
        telemetry: telemetry.clone(),
        limits: RequestLimits::new(&config.limits, &config.timeouts),
    });
    let shared = Arc::new(Shared {
        plane: plane.clone(),
        telemetry: telemetry.clone(),
        recorders,
        pools,
        tls: tls.clone(),
        next_version: AtomicU64::new(2),
    });
    let (stop, stopped) = watch::channel(false);
    let settings = ListenerSettings::from_config(config, tls);
    let data_addr = data.local_addr().expect("bound socket has an address");
    let admin_addr = admin.local_addr().expect("bound socket has an address");
    let data_task = tokio::spawn(listener::serve(data, plane, settings, stopped.clone()));
    let admin_task = tokio::spawn(crate::admin::serve(admin, shared.clone(), stopped));
    let upkeep_task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            telemetry.upkeep();
        }
    });
    tracing::info!(%data_addr, %admin_addr, "abgate serving");
    Ok(RunningServer {
        data_addr,
        admin_addr,
        shared,
        stop,
        data_task,
        admin_task,
        upkeep_task,
    })
}

impl RunningServer {
    /// Stops accepting, drains in-flight requests (bounded by the grace period)
    /// and returns when everything has stopped.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.data_task.await;
        let _ = self.admin_task.await;
        self.upkeep_task.abort();
    }
}

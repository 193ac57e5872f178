//! Assembles a running abgate: store, control plane, data plane, admin API.
//!
//! Owns: startup (bind, restore state, publish the first table), the periodic
//! tasks, and shutdown. Process assembly only: no request handling, no table
//! building, no decisions. Everything is per instance (no globals) so tests
//! can run several servers in one process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::auth::{AdminAuth, AuthError};
use crate::admin::runtime::AdminRuntime;
use crate::admin::Admin;
use crate::config::{self, ConfigErrors, StoreConfig};
use crate::control::publish::Publisher;
use crate::control::{ControlPlane, PlaneHandles};
use crate::outcomes::capture::CaptureSink;
use crate::outcomes::feedback::FeedbackService;
use crate::outcomes::token::{KeyError, TokenKeys};
use crate::outcomes::RecorderRegistry;
use crate::proxy::limits::RequestLimits;
use crate::proxy::listener::{self, ListenerSettings};
use crate::proxy::plane::DataPlane;
use crate::proxy::tls::{TlsError, TlsTerminator};
use crate::proxy::upstream::UpstreamPool;
use crate::proxy::wiring::Published;
use crate::store::capture::CaptureDb;
use crate::store::feedback::{DatasetSource, FeedbackLog, FeedbackSink, LocalDataset};
use crate::store::{PgStore, ReplicaOptions, SqliteStore, Store, StoreError};
use crate::telemetry::Telemetry;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid config:\n{0}")]
    Config(ConfigErrors),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        source: std::io::Error,
    },
    #[error(
        "refusing to start: the admin listener {0} is not loopback and no admin token is configured \
         (set ABGATE_ADMIN_TOKEN or admin.token_file, or listen on 127.0.0.1)"
    )]
    InsecureAdmin(SocketAddr),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    TokenKeys(#[from] KeyError),
    #[error("cannot set up TLS on the data plane: {0}")]
    Tls(TlsError),
    #[error("cannot start the admin runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot start the capture writer thread: {0}")]
    Thread(std::io::Error),
}

/// What to start from.
pub struct StartOptions {
    /// The config text (YAML or JSON).
    pub config_text: String,
    /// The file it came from: re-read on SIGHUP (and on change with `watch_file`).
    pub config_path: Option<PathBuf>,
    /// Watch `config_path` for changes.
    pub watch_file: bool,
    /// The admin bearer token from the environment (`ABGATE_ADMIN_TOKEN`).
    pub admin_token: Option<String>,
    /// Outcome-token keys from the environment (`ABGATE_TOKEN_KEYS`, `id:secret,...`).
    pub token_keys: Option<String>,
}

/// A started server. Call [`RunningServer::shutdown`] to stop it.
pub struct RunningServer {
    pub data_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub control: Arc<ControlPlane>,
    stop: watch::Sender<bool>,
    data_task: JoinHandle<()>,
    admin_task: JoinHandle<()>,
    upkeep_task: JoinHandle<()>,
    controller_task: JoinHandle<()>,
    snapshot_task: JoinHandle<()>,
    series_task: JoinHandle<()>,
    fleet_task: JoinHandle<()>,
    _watcher: Option<notify::RecommendedWatcher>,
    /// Where the admin API and the page's updates run; dropped last.
    admin_rt: AdminRuntime,
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, what, source })
}

/// The durable records and the feedback log.
struct Opened {
    store: Arc<dyn Store>,
    feedback: Box<dyn FeedbackSink>,
    dataset: Arc<dyn DatasetSource>,
}

/// The store the file's `store:` names, and the feedback log beside it (in
/// `state_dir` with SQLite, in the shared database in a fleet). Blocks: call
/// it off the async workers.
fn open_store(kind: &StoreConfig, state_dir: &Path) -> Result<Opened, StoreError> {
    Ok(match kind {
        StoreConfig::Sqlite => {
            let log = FeedbackLog::open(state_dir)?;
            Opened {
                store: Arc::new(SqliteStore::open(state_dir)?),
                dataset: Arc::new(LocalDataset(log.path().to_path_buf())),
                feedback: Box::new(log),
            }
        }
        StoreConfig::Postgres(pg) => {
            let who = ReplicaOptions {
                replica: crate::store::fleet::replica_id(state_dir)?,
                lease_ttl: pg.lease_ttl,
            };
            let replica = who.replica.clone();
            let store = PgStore::open(&pg.url, pg.pool, pg.ca_file.as_deref(), who)?;
            tracing::info!(url = %config::without_credentials(&pg.url), %replica, "using the postgres store");
            let feedback = store
                .feedback()
                .with_captures(state_dir.join(crate::store::capture::FILE));
            Opened {
                store: Arc::new(store),
                dataset: Arc::new(feedback.clone()),
                feedback: Box::new(feedback),
            }
        }
    })
}

/// Validates the config, opens the store, binds both listeners and serves.
pub async fn start(opts: StartOptions) -> Result<RunningServer, StartError> {
    let file_config = config::parse(&opts.config_text).map_err(StartError::Config)?;
    let auth = AdminAuth::load(
        opts.admin_token.as_deref(),
        file_config.admin.token_file.as_deref(),
    )?;
    if !file_config.admin.listen.ip().is_loopback() && !auth.is_configured() {
        return Err(StartError::InsecureAdmin(file_config.admin.listen));
    }
    let data = bind(file_config.listen, "data plane").await?;
    let admin = bind(file_config.admin.listen, "admin").await?;
    let tls = match &file_config.tls {
        Some(files) => Some(Arc::new(
            TlsTerminator::new(files).map_err(StartError::Tls)?,
        )),
        None => None,
    };
    let telemetry = Telemetry::new();
    let recorders = Arc::new(RecorderRegistry::new(telemetry.clone()));
    // Opening the store and reading back saved counts blocks (SQLite): it runs
    // on the blocking pool like every other store call.
    let (opened, captures) = {
        let (dir, recorders) = (file_config.state_dir.clone(), recorders.clone());
        let kind = file_config.store.clone();
        crate::control::off_thread(move || -> Result<_, StartError> {
            let opened = open_store(&kind, &dir)?;
            let restored = crate::outcomes::persist::restore(&recorders, opened.store.as_ref())?;
            if restored > 0 {
                tracing::info!(arms = restored, "restored per-arm outcome counts");
            }
            Ok((opened, CaptureDb::open(&dir)?))
        })
        .await?
    };
    let store = opened.store;
    let pools = UpstreamPool::default();
    // Placeholder until the control plane publishes the restored table.
    let empty = config::parse("").map_err(StartError::Config)?;
    let tokens = Arc::new(TokenKeys::load(
        opts.token_keys.as_deref(),
        file_config.tokens.key_file.as_deref(),
        &file_config.state_dir,
    )?);
    // Rebuilding the sums reads the log: off the async workers.
    let feedback = {
        let (tokens, book, telemetry) =
            (tokens.clone(), recorders.metrics.clone(), telemetry.clone());
        let (sink, dataset) = (opened.feedback, opened.dataset);
        crate::control::off_thread(move || {
            FeedbackService::start(sink, dataset, tokens, book, telemetry)
        })
        .await?
    };
    let capture = CaptureSink::start(captures, telemetry.clone()).map_err(StartError::Thread)?;
    let plane = Arc::new(DataPlane {
        table: ArcSwap::from_pointee(Published::build(&empty, 0, &pools, &recorders)),
        telemetry: telemetry.clone(),
        tokens,
        feedback,
        capture,
        limits: RequestLimits::new(&file_config.limits, &file_config.timeouts),
    });
    let settings = ListenerSettings::from_config(&file_config, tls.clone());
    let grace = file_config.timeouts.shutdown_grace;
    let publisher = Publisher::new(plane.clone(), pools, recorders.clone(), tls);
    let handles = PlaneHandles {
        plane: plane.clone(),
        recorders,
        telemetry: telemetry.clone(),
    };
    let (config_path, config_text) = (opts.config_path.clone(), opts.config_text);
    // In a fleet, a starting replica restores under the change lock: two
    // replicas starting on an empty database record one first version, and
    // none restores from another's change half made.
    let changes = match store.fleet() {
        Some(fleet) => Some(fleet.lock_changes().await?),
        None => None,
    };
    // Restoring reads and writes the store: off the async workers.
    let control = crate::control::off_thread(move || {
        ControlPlane::restore(
            publisher,
            handles,
            store,
            config_path,
            config_text,
            file_config,
        )
    })
    .await?;
    drop(changes);
    let control = Arc::new(control);
    let watcher = if opts.watch_file {
        crate::control::watch::watch_file(control.clone())
    } else {
        None
    };
    if opts.config_path.is_some() {
        crate::control::watch::reload_on_sighup(control.clone());
    }

    let (stop, stopped) = watch::channel(false);
    let controller_task = crate::control::controller::spawn(control.clone(), stopped.clone());
    let fleet_task = crate::control::fleet::spawn(control.clone(), stopped.clone());
    let snapshot_task = {
        let control = control.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                control.save_outcomes().await;
            }
        })
    };
    // The page's work (the admin API, its live ticks, history) runs apart
    // from the data plane's workers, at a lower priority.
    let admin_rt = AdminRuntime::start().map_err(StartError::Runtime)?;
    let series_task = admin_rt.spawn(crate::control::series::run(control.clone()));
    let data_addr = data.local_addr().expect("bound socket has an address");
    let admin_addr = admin.local_addr().expect("bound socket has an address");
    control.set_admin_addr(admin_addr);
    let admin_state = Arc::new(Admin {
        control: control.clone(),
        auth,
        listen: admin_addr,
    });
    let data_task = tokio::spawn(listener::serve(data, plane, settings, stopped.clone()));
    let admin_task = admin_rt.spawn(crate::admin::serve(admin, admin_state, stopped, grace));
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
        control,
        stop,
        data_task,
        admin_task,
        upkeep_task,
        controller_task,
        snapshot_task,
        series_task,
        fleet_task,
        _watcher: watcher,
        admin_rt,
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
        // The controller saw the stop at once and publishes each run as its
        // loop ends (bounded inside); only then is the last snapshot taken.
        let _ = self.controller_task.await;
        self.snapshot_task.abort();
        self.series_task.abort();
        self.fleet_task.abort();
        // A last snapshot once traffic has drained, so a clean stop loses nothing.
        self.control.save_outcomes().await;
        self.control.save_series().await;
        drop(self.admin_rt);
    }
}

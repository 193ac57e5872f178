//! The PostgreSQL store (`store: { kind: postgres }`): the same records as
//! the embedded SQLite store, in a database that replicas can share.
//!
//! Owns: the pool of connections, the versioned schema migrations applied at
//! startup, and the [`Store`] calls in SQL.
//!
//! The [`Store`] trait is synchronous and, by its contract, only ever called
//! from tokio's blocking pool (`control::off_thread`). Each call therefore
//! runs its async queries with `Handle::block_on` on that blocking thread: the
//! connections' own tasks run on the process's runtime, and no second runtime
//! or client library is needed.
//!
//! Committed means durable: PostgreSQL acknowledges a commit after its WAL is
//! flushed (the default `synchronous_commit = on`), like SQLite's
//! `synchronous=FULL` here.

use std::future::Future;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::runtime::Handle;
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use std::sync::Arc;

use super::fleet::{FleetLink, Link};
use super::*;
use crate::clock::now_ms;

/// A migration: its version, what it does, and its SQL (one transaction).
struct Migration {
    version: i32,
    name: &'static str,
    sql: &'static str,
}

/// Applied in order, each once, recorded in `abgate_migrations`. Never edit
/// one that has shipped: add the next.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "config versions, decisions, states, weight history, saved counts and runs, series",
        sql: V1,
    },
    Migration {
        version: 2,
        name: "per-replica saved counts; a revision bumped and notified by every recorded change",
        sql: V2,
    },
    Migration {
        version: 3,
        name: "the fleet's feedback log",
        sql: V3,
    },
];

const V1: &str = "
CREATE TABLE config_versions (
    version BIGINT PRIMARY KEY,
    text TEXT NOT NULL,
    hash TEXT NOT NULL,
    applied_at_ms BIGINT NOT NULL,
    actor TEXT NOT NULL,
    source TEXT NOT NULL
);
CREATE TABLE decisions (
    id BIGSERIAL PRIMARY KEY,
    experiment TEXT NOT NULL,
    kind TEXT NOT NULL,
    from_weights TEXT NOT NULL,
    to_weights TEXT NOT NULL,
    reason TEXT NOT NULL,
    actor TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    applied BOOLEAN NOT NULL DEFAULT false
);
CREATE INDEX decisions_by_experiment ON decisions (experiment, id);
CREATE INDEX decisions_unapplied ON decisions (id) WHERE NOT applied;
CREATE TABLE arm_stats (
    experiment TEXT NOT NULL,
    arm TEXT NOT NULL,
    stats TEXT NOT NULL,
    PRIMARY KEY (experiment, arm)
);
CREATE TABLE controller_runs (
    experiment TEXT PRIMARY KEY,
    run TEXT NOT NULL
);
CREATE TABLE experiment_state (
    experiment TEXT PRIMARY KEY,
    state TEXT NOT NULL
);
CREATE TABLE weight_history (
    experiment TEXT NOT NULL,
    seq BIGINT NOT NULL,
    layout_key TEXT NOT NULL,
    weights TEXT NOT NULL,
    recorded_at_ms BIGINT NOT NULL,
    PRIMARY KEY (experiment, seq)
);
CREATE TABLE series (
    experiment TEXT NOT NULL,
    series TEXT NOT NULL,
    meta TEXT NOT NULL,
    PRIMARY KEY (experiment, series)
);
CREATE TABLE series_points (
    experiment TEXT NOT NULL,
    series TEXT NOT NULL,
    seq BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    point TEXT NOT NULL,
    PRIMARY KEY (experiment, series, seq)
);
";

/// Feedback unique per (token id, metric) across the fleet. Byte-order keys:
/// the export pages through them in the order captures are kept.
const V3: &str = "
CREATE TABLE feedback (
    token_id TEXT COLLATE \"C\" NOT NULL,
    metric TEXT COLLATE \"C\" NOT NULL,
    experiment TEXT NOT NULL,
    arm TEXT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    forced BOOLEAN NOT NULL,
    issued_at_ms BIGINT NOT NULL,
    received_at_ms BIGINT NOT NULL,
    counted BOOLEAN NOT NULL,
    table_version BIGINT NOT NULL,
    actor TEXT NOT NULL,
    label TEXT,
    correction TEXT,
    backend TEXT,
    model TEXT,
    replica TEXT NOT NULL,
    PRIMARY KEY (token_id, metric)
);
CREATE INDEX feedback_by_time ON feedback (experiment, issued_at_ms, token_id, metric);
CREATE INDEX feedback_by_replica ON feedback (replica, experiment, arm, metric)
    WHERE counted AND NOT forced;
";

/// Each replica saves its own counts (the fleet's are the sum); rows saved
/// before replicas were told apart belong to replica ''. The revision is
/// what followers compare with what they applied.
const V2: &str = "
ALTER TABLE arm_stats ADD COLUMN replica TEXT NOT NULL DEFAULT '';
ALTER TABLE arm_stats ADD COLUMN saved_at_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE arm_stats DROP CONSTRAINT arm_stats_pkey;
ALTER TABLE arm_stats ADD PRIMARY KEY (replica, experiment, arm);
CREATE INDEX arm_stats_by_time ON arm_stats (saved_at_ms);
CREATE TABLE abgate_revision (
    one BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
    n BIGINT NOT NULL,
    at_ms BIGINT NOT NULL
);
INSERT INTO abgate_revision (one, n, at_ms) VALUES (true, 0, 0);
CREATE FUNCTION abgate_bump() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v BIGINT;
    t BIGINT := (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT;
BEGIN
    UPDATE abgate_revision SET n = n + 1, at_ms = t RETURNING n INTO v;
    PERFORM pg_notify('abgate_changes', v || ':' || t || ':' || current_setting('application_name'));
    RETURN NULL;
END $$;
CREATE TRIGGER config_versions_bump AFTER INSERT OR UPDATE OR DELETE ON config_versions
    FOR EACH STATEMENT EXECUTE FUNCTION abgate_bump();
CREATE TRIGGER decisions_bump AFTER INSERT OR UPDATE OR DELETE ON decisions
    FOR EACH STATEMENT EXECUTE FUNCTION abgate_bump();
CREATE TRIGGER experiment_state_bump AFTER INSERT OR UPDATE OR DELETE ON experiment_state
    FOR EACH STATEMENT EXECUTE FUNCTION abgate_bump();
CREATE TRIGGER weight_history_bump AFTER INSERT OR UPDATE OR DELETE ON weight_history
    FOR EACH STATEMENT EXECUTE FUNCTION abgate_bump();
";

/// The advisory lock that serialises migrations when replicas start at once
/// (an arbitrary constant: "abgate" in ASCII).
const MIGRATION_LOCK: i64 = 0x6162_6761_7465;

/// How long a call waits for a connection, and a new connection for its
/// handshake, before it fails (the caller answers 503 or retries; it never
/// hangs on a store that is gone).
const WAIT: Duration = Duration::from_secs(5);

pub struct PgStore {
    pool: Pool,
    rt: Handle,
    /// This replica's id: the key of its saved counts.
    replica: String,
    /// The lease, the change lock and the revision (see [`super::fleet`]).
    fleet: Arc<FleetLink>,
}

/// Who a replica is and how it holds the lease.
pub struct ReplicaOptions {
    /// Persisted in the replica's state_dir, so a restart is the same replica.
    pub replica: String,
    pub lease_ttl: Duration,
}

impl PgStore {
    /// Connects, takes the replica lock, and applies pending migrations.
    /// With `ca_file`, or `sslmode=require` in the URL, every connection is
    /// TLS and the server's certificate is verified (against `ca_file`, or the
    /// system roots); otherwise connections are plain TCP. Call from the
    /// blocking pool (inside the runtime, off its workers).
    pub fn open(
        url: &str,
        pool_size: usize,
        ca_file: Option<&Path>,
        who: ReplicaOptions,
    ) -> Result<PgStore, StoreError> {
        let mut config = tokio_postgres::Config::from_str(&libpq_sslmode(url))
            .map_err(|e| StoreError::Url(e.to_string()))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(WAIT);
        }
        // The triggers' notifications name who made the change.
        config.application_name(format!("abgate/{}", who.replica));
        let tls = match (config.get_ssl_mode(), ca_file) {
            (SslMode::Disable, Some(_)) => {
                return Err(StoreError::Url(
                    "sslmode=disable contradicts store.ca_file (drop one)".into(),
                ))
            }
            (SslMode::Require, _) | (_, Some(_)) => {
                // Asked for: never fall back to plain TCP.
                config.ssl_mode(SslMode::Require);
                Some(MakeRustlsConnect::new(client_tls(ca_file)?))
            }
            _ => None,
        };
        match tls {
            Some(tls) => Self::open_with(config, pool_size, tls, who),
            None => Self::open_with(config, pool_size, NoTls, who),
        }
    }

    fn open_with<T>(
        config: tokio_postgres::Config,
        pool_size: usize,
        tls: T,
        who: ReplicaOptions,
    ) -> Result<PgStore, StoreError>
    where
        T: MakeTlsConnect<Socket> + Clone + Sync + Send + 'static,
        T::Stream: Sync + Send + 'static,
        T::TlsConnect: Sync + Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .wait_timeout(Some(WAIT))
            .create_timeout(Some(WAIT))
            .recycle_timeout(Some(WAIT))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Url(e.to_string()))?;
        let rt = Handle::current();
        rt.block_on(async {
            let mut c = pool.get().await.map_err(pool_error)?;
            migrate(&mut c).await
        })?;
        // After the migrations: the fleet's connections poll their tables.
        let connect: super::fleet::Connect = Arc::new(move || {
            let (config, tls) = (config.clone(), tls.clone());
            Box::pin(async move {
                let (client, connection) = config.connect(tls).await?;
                Ok(Link::drive(client, connection))
            })
        });
        let fleet = {
            let _runtime = rt.enter();
            FleetLink::new(who.replica.clone(), who.lease_ttl, connect)
        };
        Ok(PgStore {
            pool,
            rt,
            replica: who.replica,
            fleet,
        })
    }

    /// The lease, the change lock and the revision of this replica.
    pub fn fleet(&self) -> Arc<FleetLink> {
        self.fleet.clone()
    }

    /// The fleet's feedback log, written and read as this replica.
    pub fn feedback(&self) -> super::pg_feedback::PgFeedback {
        super::pg_feedback::PgFeedback {
            pool: self.pool.clone(),
            rt: self.rt.clone(),
            replica: self.replica.clone(),
            captures: None,
        }
    }

    /// Runs `work` on a pooled connection, blocking this (blocking-pool)
    /// thread until it is done.
    fn run<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        F: AsyncFnOnce(&mut deadpool_postgres::Client) -> Result<T, StoreError>,
    {
        self.block(async {
            let mut client = self.pool.get().await.map_err(pool_error)?;
            work(&mut client).await
        })
    }

    /// One statement on a pooled connection, for calls that are nothing more.
    fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<(), StoreError> {
        self.run(async |c| {
            c.execute(sql, params).await?;
            Ok(())
        })
    }

    fn block<T>(&self, f: impl Future<Output = T>) -> T {
        self.rt.block_on(f)
    }
}

/// A connection could not be had from the pool: in time, or at all.
pub(super) fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => StoreError::from(e),
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// libpq's `sslmode=verify-full` and `verify-ca` read as `require`, which
/// here always verifies the certificate and the host name (tokio-postgres
/// knows only disable, prefer and require).
fn libpq_sslmode(url: &str) -> String {
    url.replace("sslmode=verify-full", "sslmode=require")
        .replace("sslmode=verify-ca", "sslmode=require")
}

/// The TLS client config: trust `ca_file`, or the system roots.
fn client_tls(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, StoreError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs =
                crate::config::pem::load_certs(path).map_err(|e| StoreError::Tls(e.to_string()))?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| StoreError::Tls(format!("{}: {e}", path.display())))?;
            }
        }
        None => {
            // Certificates the platform store holds but webpki cannot parse
            // are skipped, as every rustls-based client does.
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

async fn migrate(c: &mut deadpool_postgres::Client) -> Result<(), StoreError> {
    let tx = c.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS abgate_migrations (
            version INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
    )
    .await?;
    let applied: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM abgate_migrations",
            &[],
        )
        .await?
        .get(0);
    let known = MIGRATIONS.last().map_or(0, |m| m.version);
    if applied > known {
        return Err(StoreError::SchemaTooNew { applied, known });
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > applied) {
        tx.batch_execute(m.sql).await?;
        tx.execute(
            "INSERT INTO abgate_migrations (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name],
        )
        .await?;
        tracing::info!(
            version = m.version,
            name = m.name,
            "applied a store migration"
        );
    }
    tx.commit().await?;
    Ok(())
}

fn i(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

fn u(v: i64) -> u64 {
    v.max(0) as u64
}

fn config_from_row(r: &Row) -> ConfigRecord {
    ConfigRecord {
        version: u(r.get(0)),
        text: r.get(1),
        hash: r.get(2),
        applied_at_ms: u(r.get(3)),
        actor: r.get(4),
        source: r.get(5),
    }
}

fn decision_from_row(r: &Row) -> Result<Decision, StoreError> {
    Ok(Decision {
        id: r.get(0),
        experiment: r.get(1),
        kind: r.get(2),
        from_weights: serde_json::from_str(r.get(3))?,
        to_weights: serde_json::from_str(r.get(4))?,
        reason: serde_json::from_str(r.get(5))?,
        actor: r.get(6),
        created_at_ms: u(r.get(7)),
        applied: r.get(8),
    })
}

impl Store for PgStore {
    fn record_config(&self, r: &ConfigRecord) -> Result<(), StoreError> {
        self.execute(
            // A plain insert: two replicas applying the same next version
            // get one success and one conflict, never an overwrite.
            "INSERT INTO config_versions (version, text, hash, applied_at_ms, actor, source)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &i(r.version),
                &r.text,
                &r.hash,
                &i(r.applied_at_ms),
                &r.actor,
                &r.source,
            ],
        )
        .map_err(|e| match e {
            StoreError::Postgres(m) if m.contains("(23505)") => StoreError::Conflict(format!(
                "config version {} was recorded meanwhile (by another replica)",
                r.version
            )),
            other => other,
        })
    }

    fn latest_config(&self) -> Result<Option<ConfigRecord>, StoreError> {
        self.run(async |c| {
            let row = c
                .query_opt(
                    "SELECT version, text, hash, applied_at_ms, actor, source
                     FROM config_versions ORDER BY version DESC LIMIT 1",
                    &[],
                )
                .await?;
            Ok(row.as_ref().map(config_from_row))
        })
    }

    fn config_versions(
        &self,
        before: Option<u64>,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<ConfigVersionInfo>, StoreError> {
        let before = before.map_or(i64::MAX, i);
        let (limit, offset) = (limit.min(10_000) as i64, i(offset as u64));
        self.run(async |c| {
            let rows = c
                .query(
                    "SELECT version, applied_at_ms, actor, source, hash FROM config_versions
                     WHERE version < $1 ORDER BY version DESC LIMIT $2 OFFSET $3",
                    &[&before, &limit, &offset],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| ConfigVersionInfo {
                    version: u(r.get(0)),
                    applied_at_ms: u(r.get(1)),
                    actor: r.get(2),
                    source: r.get(3),
                    hash: r.get(4),
                })
                .collect())
        })
    }

    fn config_version(&self, version: u64) -> Result<Option<ConfigRecord>, StoreError> {
        if version > i64::MAX as u64 {
            return Ok(None);
        }
        self.run(async |c| {
            let row = c
                .query_opt(
                    "SELECT version, text, hash, applied_at_ms, actor, source
                     FROM config_versions WHERE version = $1",
                    &[&(version as i64)],
                )
                .await?;
            Ok(row.as_ref().map(config_from_row))
        })
    }

    fn config_version_range(&self) -> Result<Option<(u64, u64)>, StoreError> {
        self.run(async |c| {
            let r = c
                .query_one(
                    "SELECT MIN(version), MAX(version) FROM config_versions",
                    &[],
                )
                .await?;
            let (min, max): (Option<i64>, Option<i64>) = (r.get(0), r.get(1));
            Ok(min.zip(max).map(|(a, b)| (u(a), u(b))))
        })
    }

    fn record_decision(&self, d: &NewDecision) -> Result<i64, StoreError> {
        let (from, to) = (
            serde_json::to_string(&d.from_weights)?,
            serde_json::to_string(&d.to_weights)?,
        );
        let reason = d.reason.to_string();
        self.run(async |c| {
            let r = c
                .query_one(
                    "INSERT INTO decisions (experiment, kind, from_weights, to_weights, reason, actor, created_at_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                    &[&d.experiment, &d.kind, &from, &to, &reason, &d.actor, &i(now_ms())],
                )
                .await?;
            Ok(r.get(0))
        })
    }

    fn mark_applied(&self, id: i64) -> Result<(), StoreError> {
        self.execute("UPDATE decisions SET applied = true WHERE id = $1", &[&id])
    }

    fn decisions(
        &self,
        experiment: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Decision>, StoreError> {
        let limit = limit.min(10_000) as i64;
        self.run(async |c| {
            let rows = match experiment {
                Some(e) => {
                    c.query(
                        &format!(
                            "SELECT {DECISION_COLUMNS} FROM decisions WHERE experiment = $1 ORDER BY id DESC LIMIT $2"
                        ),
                        &[&e, &limit],
                    )
                    .await?
                }
                None => {
                    c.query(
                        &format!("SELECT {DECISION_COLUMNS} FROM decisions ORDER BY id DESC LIMIT $1"),
                        &[&limit],
                    )
                    .await?
                }
            };
            rows.iter().map(decision_from_row).collect()
        })
    }

    fn unapplied_decisions(&self) -> Result<Vec<Decision>, StoreError> {
        self.run(async |c| {
            let rows = c
                .query(
                    &format!(
                        "SELECT {DECISION_COLUMNS} FROM decisions WHERE NOT applied ORDER BY id"
                    ),
                    &[],
                )
                .await?;
            rows.iter().map(decision_from_row).collect()
        })
    }

    fn save_state(&self, s: &ExperimentState) -> Result<(), StoreError> {
        let json = serde_json::to_string(s)?;
        self.execute(
            "INSERT INTO experiment_state (experiment, state) VALUES ($1, $2)
             ON CONFLICT (experiment) DO UPDATE SET state = EXCLUDED.state",
            &[&s.experiment, &json],
        )
    }

    fn clear_state(&self, experiment: &str) -> Result<(), StoreError> {
        self.execute(
            "DELETE FROM experiment_state WHERE experiment = $1",
            &[&experiment],
        )
    }

    fn states(&self) -> Result<Vec<ExperimentState>, StoreError> {
        self.run(async |c| {
            let rows = c
                .query(
                    "SELECT state FROM experiment_state ORDER BY experiment",
                    &[],
                )
                .await?;
            rows.iter()
                .map(|r| serde_json::from_str(r.get(0)).map_err(StoreError::from))
                .collect()
        })
    }

    fn record_weight_step(&self, step: &WeightStep) -> Result<(), StoreError> {
        let weights = serde_json::to_string(&step.weights)?;
        self.run(async |c| {
            let tx = c.transaction().await?;
            if step.seq == 0 {
                tx.execute(
                    "DELETE FROM weight_history WHERE experiment = $1",
                    &[&step.experiment],
                )
                .await?;
            }
            tx.execute(
                "INSERT INTO weight_history (experiment, seq, layout_key, weights, recorded_at_ms)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (experiment, seq) DO UPDATE SET layout_key = EXCLUDED.layout_key,
                   weights = EXCLUDED.weights, recorded_at_ms = EXCLUDED.recorded_at_ms",
                &[
                    &step.experiment,
                    &i(step.seq),
                    &step.layout_key,
                    &weights,
                    &i(step.recorded_at_ms),
                ],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn clear_weight_steps(&self, experiment: &str) -> Result<(), StoreError> {
        self.execute(
            "DELETE FROM weight_history WHERE experiment = $1",
            &[&experiment],
        )
    }

    fn weight_steps(&self) -> Result<Vec<WeightStep>, StoreError> {
        self.run(async |c| {
            let rows = c
                .query(
                    "SELECT experiment, seq, layout_key, weights, recorded_at_ms
                     FROM weight_history ORDER BY experiment, seq",
                    &[],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(WeightStep {
                        experiment: r.get(0),
                        seq: u(r.get(1)),
                        layout_key: r.get(2),
                        weights: serde_json::from_str(r.get(3))?,
                        recorded_at_ms: u(r.get(4)),
                    })
                })
                .collect()
        })
    }

    fn save_snapshot(&self, snapshot: &MemorySnapshot<'_>) -> Result<(), StoreError> {
        self.run(async |c| {
            let tx = c.transaction().await?;
            let put_stats = tx
                .prepare_cached(
                    "INSERT INTO arm_stats (replica, experiment, arm, stats, saved_at_ms)
                     VALUES ($1, $2, $3, $4, (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT)
                     ON CONFLICT (replica, experiment, arm)
                     DO UPDATE SET stats = EXCLUDED.stats, saved_at_ms = EXCLUDED.saved_at_ms",
                )
                .await?;
            for (e, a, json) in snapshot.arm_stats {
                tx.execute(&put_stats, &[&self.replica, e, a, json]).await?;
            }
            let put_run = tx
                .prepare_cached(
                    "INSERT INTO controller_runs (experiment, run) VALUES ($1, $2)
                     ON CONFLICT (experiment) DO UPDATE SET run = EXCLUDED.run",
                )
                .await?;
            for (e, json) in snapshot.controller_runs {
                tx.execute(&put_run, &[e, json]).await?;
            }
            // A removed experiment's evidence must not greet a new one of the same name.
            if let Some(controlled) = snapshot.controlled {
                tx.execute(
                    "DELETE FROM controller_runs WHERE NOT (experiment = ANY($1))",
                    &[&controlled],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn arm_stats(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        self.run(async |c| {
            let rows = c
                .query(
                    "SELECT experiment, arm, stats FROM arm_stats WHERE replica = $1",
                    &[&self.replica],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect())
        })
    }

    fn fleet_arm_stats(&self, since_ms: Option<u64>) -> Result<FleetRows, StoreError> {
        let since = since_ms.map_or(i64::MIN, i);
        self.run(async |c| {
            let now: i64 = c
                .query_one(
                    "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT",
                    &[],
                )
                .await?
                .get(0);
            let rows = c
                .query(
                    "SELECT replica, experiment, arm, stats FROM arm_stats
                     WHERE replica <> $1 AND saved_at_ms >= $2",
                    &[&self.replica, &since],
                )
                .await?;
            Ok(FleetRows {
                rows: rows
                    .iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
                    .collect(),
                read_at_ms: u(now),
            })
        })
    }

    fn fleet(&self) -> Option<Arc<FleetLink>> {
        Some(self.fleet.clone())
    }

    fn controller_runs(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.run(async |c| {
            let rows = c
                .query("SELECT experiment, run FROM controller_runs", &[])
                .await?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    fn save_series(&self, writes: &[SeriesWrite]) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        self.run(async |c| {
            let tx = c.transaction().await?;
            let meta = tx
                .prepare_cached(
                    "INSERT INTO series (experiment, series, meta) VALUES ($1, $2, $3)
                     ON CONFLICT (experiment, series) DO UPDATE SET meta = EXCLUDED.meta",
                )
                .await?;
            let clear = tx
                .prepare_cached("DELETE FROM series_points WHERE experiment = $1 AND series = $2")
                .await?;
            let put = tx
                .prepare_cached(
                    "INSERT INTO series_points (experiment, series, seq, at_ms, point)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (experiment, series, seq) DO UPDATE SET at_ms = EXCLUDED.at_ms,
                       point = EXCLUDED.point",
                )
                .await?;
            for w in writes {
                tx.execute(&meta, &[&w.experiment, &w.series, &w.meta])
                    .await?;
                if w.replace {
                    tx.execute(&clear, &[&w.experiment, &w.series]).await?;
                }
                for (k, (at, point)) in w.points.iter().enumerate() {
                    let seq = i(w.first_seq + k as u64);
                    tx.execute(&put, &[&w.experiment, &w.series, &seq, &i(*at), point])
                        .await?;
                }
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn series(&self) -> Result<Vec<StoredSeries>, StoreError> {
        self.run(async |c| {
            let mut out: Vec<StoredSeries> = c
                .query(
                    "SELECT experiment, series, meta FROM series
                     ORDER BY experiment COLLATE \"C\", series COLLATE \"C\"",
                    &[],
                )
                .await?
                .iter()
                .map(|r| StoredSeries {
                    experiment: r.get(0),
                    series: r.get(1),
                    meta: r.get(2),
                    points: Vec::new(),
                })
                .collect();
            let rows = c
                .query(
                    "SELECT experiment, series, at_ms, point FROM series_points
                     ORDER BY experiment COLLATE \"C\", series COLLATE \"C\", seq",
                    &[],
                )
                .await?;
            // COLLATE "C": the byte order `attach_points` pairs in, whatever
            // the database's collation.
            attach_points(
                &mut out,
                rows.iter()
                    .map(|r| Ok((r.get(0), r.get(1), u(r.get(2)), r.get(3)))),
            )?;
            Ok(out)
        })
    }

    fn clear_series(&self, experiment: &str) -> Result<(), StoreError> {
        self.run(async |c| {
            let tx = c.transaction().await?;
            tx.execute("DELETE FROM series WHERE experiment = $1", &[&experiment])
                .await?;
            tx.execute(
                "DELETE FROM series_points WHERE experiment = $1",
                &[&experiment],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }
}

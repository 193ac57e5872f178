//! Durable state: applied config versions, decisions (the audit log), each
//! experiment's manual/automatic state, each experiment's weight history (what
//! its bucket layout is replayed from), saved per-arm counts and controller
//! runs ([`Store`], SQLite in [`sqlite`]), and the feedback log ([`feedback`]).
//!
//! Owns: the [`Store`] trait and its records, in the store's own types (it
//! imports no layer above it). A shared store for fleets can implement the same
//! trait.
//!
//! Never: called from an async worker thread. Every call blocks (a mutex and an
//! fsync), so the control plane runs them on the blocking pool and the feedback
//! log has its own writer thread. The feedback endpoint is the one request that
//! waits for the store, through that writer's queue, never by calling it.

pub mod fleet;
pub mod pg_feedback;
pub mod postgres;
pub mod sqlite;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use postgres::{PgStore, ReplicaOptions};
pub use sqlite::SqliteStore;

/// One applied config version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRecord {
    pub version: u64,
    pub text: String,
    /// SHA-256 of `text`, hex.
    pub hash: String,
    /// Unix milliseconds.
    pub applied_at_ms: u64,
    /// Token name, `file`, `sighup`, `startup`.
    pub actor: String,
    /// Remote address for API changes, the file path for file changes.
    pub source: String,
}

/// What the history lists of one applied config version (its text is read
/// one version at a time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigVersionInfo {
    pub version: u64,
    /// Unix milliseconds.
    pub applied_at_ms: u64,
    pub actor: String,
    pub source: String,
    /// SHA-256 of the text, hex.
    pub hash: String,
}

/// Lifecycle of an experiment as changed by people or the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExperimentPhase {
    Running,
    /// Weights frozen; no automatic decisions until resumed.
    Paused,
    /// All traffic on the baseline arm; ended.
    RolledBack,
    /// All traffic on the promoted arm; ended.
    Promoted,
    /// Ended without a winner (no difference, inconclusive); all traffic on the baseline.
    Concluded,
}

impl ExperimentPhase {
    pub fn is_ended(self) -> bool {
        matches!(
            self,
            ExperimentPhase::RolledBack | ExperimentPhase::Promoted
        )
    }
}

/// Weights in basis points by arm name (ordered for stable output).
pub type Weights = BTreeMap<String, u32>;

/// An experiment's recorded state, layered over the config's weights.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExperimentState {
    pub experiment: String,
    pub phase: ExperimentPhase,
    /// Weights in force, when they differ from the config's.
    pub weights: Option<Weights>,
    /// Fingerprint of the config's arms when this state was recorded: if the
    /// experimenter later edits the arms, the edit wins and this state is dropped.
    pub arms_fingerprint: String,
    pub updated_at_ms: u64,
    /// Canary: the index of the step in force.
    #[serde(default)]
    pub step: Option<usize>,
    /// When the current step began (Unix ms).
    #[serde(default)]
    pub step_started_ms: u64,
    /// When the controller first started the experiment (Unix ms).
    #[serde(default)]
    pub started_ms: u64,
}

/// A manual or automatic change to an experiment, written before it is applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub id: i64,
    pub experiment: String,
    /// e.g. `pause`, `resume`, `rollback`, `promote`, later `advance`.
    pub kind: String,
    pub from_weights: Weights,
    pub to_weights: Weights,
    /// Free-form JSON: who, why, the evidence.
    pub reason: serde_json::Value,
    pub actor: String,
    pub created_at_ms: u64,
    pub applied: bool,
}

/// One weight vector in an experiment's weight history: the layout of its
/// buckets is the replay of these, oldest first (see `routing::layout`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightStep {
    pub experiment: String,
    /// 0 for the first vector of a history; recording a step 0 discards the
    /// experiment's earlier history (its arms changed, so it starts again).
    pub seq: u64,
    /// Identifies the arms (and salt) the history is for; a history whose key
    /// no longer matches the config is not replayed.
    pub layout_key: String,
    /// The weights in force from this step on, in basis points by arm.
    pub weights: Weights,
    /// Unix milliseconds.
    pub recorded_at_ms: u64,
}

/// A decision before the store assigns its id.
#[derive(Debug, Clone)]
pub struct NewDecision {
    pub experiment: String,
    pub kind: String,
    pub from_weights: Weights,
    pub to_weights: Weights,
    pub reason: serde_json::Value,
    pub actor: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create state directory {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot start the WAL checkpoint thread: {0}")]
    Checkpointer(std::io::Error),
    #[error("state database holds invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("postgres store: {0}")]
    Postgres(String),
    /// The database cannot be reached (no connection in time, or one that
    /// broke): nothing was written, and the same call may succeed later.
    #[error("postgres store: cannot reach the database: {0}")]
    Unavailable(String),
    #[error("postgres store: store.url is not a valid connection URL: {0}")]
    Url(String),
    #[error("postgres store: TLS: {0}")]
    Tls(String),
    #[error(
        "postgres store: the database's schema is at version {applied}, newer than this \
         abgate knows ({known}); run a newer abgate"
    )]
    SchemaTooNew { applied: i32, known: i32 },
    /// Another replica recorded the same thing first (e.g. the same next
    /// config version): nothing was written.
    #[error("{0}")]
    Conflict(String),
}

impl From<tokio_postgres::Error> for StoreError {
    /// The server's own message (tokio-postgres' `Display` alone says only
    /// "db error"), never the connection URL. A lost or refused connection
    /// is [`StoreError::Unavailable`]; the server's refusals are not.
    fn from(e: tokio_postgres::Error) -> Self {
        let source = std::error::Error::source(&e);
        let detail = match (e.as_db_error(), source) {
            (Some(db), _) => format!("{e}: {} ({})", db.message(), db.code().code()),
            (None, Some(source)) => format!("{e}: {source}"),
            (None, None) => e.to_string(),
        };
        let io = source.is_some_and(|s| s.is::<std::io::Error>());
        let connection = e.is_closed() || io || e.to_string().starts_with("error connecting");
        if e.as_db_error().is_none() && connection {
            StoreError::Unavailable(detail)
        } else {
            StoreError::Postgres(detail)
        }
    }
}

impl StoreError {
    /// Whether the store could not be reached: the caller answers 503 with
    /// `Retry-After`, since the same request may succeed shortly.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Durable state behind a small interface, so a shared store can follow.
pub trait Store: Send + Sync {
    fn record_config(&self, record: &ConfigRecord) -> Result<(), StoreError>;
    fn latest_config(&self) -> Result<Option<ConfigRecord>, StoreError>;
    /// Applied versions, newest first: those below `before` (all when `None`),
    /// skipping `offset`, at most `limit`. Past the end: empty.
    fn config_versions(
        &self,
        before: Option<u64>,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<ConfigVersionInfo>, StoreError>;
    /// One applied version with its text, if it is kept.
    fn config_version(&self, version: u64) -> Result<Option<ConfigRecord>, StoreError>;
    /// The oldest and newest versions kept, if any.
    fn config_version_range(&self) -> Result<Option<(u64, u64)>, StoreError>;
    /// Records a decision (not yet applied) and returns its id.
    fn record_decision(&self, decision: &NewDecision) -> Result<i64, StoreError>;
    fn mark_applied(&self, id: i64) -> Result<(), StoreError>;
    /// Newest first.
    fn decisions(
        &self,
        experiment: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Decision>, StoreError>;
    fn unapplied_decisions(&self) -> Result<Vec<Decision>, StoreError>;
    fn save_state(&self, state: &ExperimentState) -> Result<(), StoreError>;
    fn clear_state(&self, experiment: &str) -> Result<(), StoreError>;
    fn states(&self) -> Result<Vec<ExperimentState>, StoreError>;
    /// Appends a step to an experiment's weight history; a step with `seq` 0
    /// replaces the whole history, in one transaction.
    fn record_weight_step(&self, step: &WeightStep) -> Result<(), StoreError>;
    /// Forgets an experiment's weight history (the experiment was removed).
    fn clear_weight_steps(&self, experiment: &str) -> Result<(), StoreError>;
    /// Every recorded weight step, by experiment, then by `seq`.
    fn weight_steps(&self) -> Result<Vec<WeightStep>, StoreError>;
    /// Saves one snapshot of what the process otherwise holds only in memory,
    /// in one transaction (so the counts and the controller runs agree).
    fn save_snapshot(&self, snapshot: &MemorySnapshot<'_>) -> Result<(), StoreError>;
    /// The saved per-arm outcome counts: (experiment, arm, JSON).
    fn arm_stats(&self) -> Result<Vec<(String, String, String)>, StoreError>;
    /// The per-arm counts the fleet's other replicas saved at or after
    /// `since_ms` (all with `None`), by the store's clock. A store one process
    /// owns has none.
    fn fleet_arm_stats(&self, _since_ms: Option<u64>) -> Result<FleetRows, StoreError> {
        Ok(FleetRows::default())
    }
    /// The lease, change lock and revision of a store replicas share.
    fn fleet(&self) -> Option<std::sync::Arc<fleet::FleetLink>> {
        None
    }
    /// The saved controller runs: (experiment, JSON).
    fn controller_runs(&self) -> Result<Vec<(String, String)>, StoreError>;
    /// Saves what the history recorder added to its series since the last
    /// save, in one transaction. A write with `replace` first deletes the
    /// series' stored points (it was downsampled, so every point moved).
    fn save_series(&self, writes: &[SeriesWrite]) -> Result<(), StoreError>;
    /// Every stored series with its points in order.
    fn series(&self) -> Result<Vec<StoredSeries>, StoreError>;
    /// Forgets an experiment's series (the experiment was removed).
    fn clear_series(&self, experiment: &str) -> Result<(), StoreError>;
}

/// Other replicas' saved counts, and when the store read them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetRows {
    /// (replica, experiment, arm, JSON).
    pub rows: Vec<(String, String, String, String)>,
    /// The store's clock at the read (Unix ms): the next read asks from a
    /// little before it.
    pub read_at_ms: u64,
}

/// Points to save for one series of one experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesWrite {
    pub experiment: String,
    pub series: String,
    /// What the series is (JSON, owned by the recorder).
    pub meta: String,
    /// Delete the stored points first.
    pub replace: bool,
    /// Position of the first point in `points` within the series (0-based).
    pub first_seq: u64,
    /// (Unix ms, JSON array of values), in order.
    pub points: Vec<(u64, String)>,
}

/// One series as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSeries {
    pub experiment: String,
    pub series: String,
    pub meta: String,
    /// (Unix ms, JSON array of values), in order.
    pub points: Vec<(u64, String)>,
}

/// The columns both stores read a decision from, in this order.
const DECISION_COLUMNS: &str =
    "id, experiment, kind, from_weights, to_weights, reason, actor, created_at_ms, applied";

/// Hands each stored point to its series. `series` and `points` come in the
/// same byte order of (experiment, series), so one pass pairs them; a point
/// of a series not listed is skipped.
fn attach_points(
    series: &mut [StoredSeries],
    points: impl IntoIterator<Item = Result<(String, String, u64, String), StoreError>>,
) -> Result<(), StoreError> {
    let mut i = 0;
    for point in points {
        let (e, name, at, value) = point?;
        while i < series.len()
            && (series[i].experiment.as_str(), series[i].series.as_str())
                < (e.as_str(), name.as_str())
        {
            i += 1;
        }
        if let Some(s) = series
            .get_mut(i)
            .filter(|s| s.experiment == e && s.series == name)
        {
            s.points.push((at, value));
        }
    }
    Ok(())
}

/// Counts and controller evidence, saved every second and at shutdown.
pub struct MemorySnapshot<'a> {
    /// Per-arm outcome counts to save: (experiment, arm, JSON).
    pub arm_stats: &'a [(String, String, String)],
    /// Controller runs that changed since the last snapshot: (experiment, JSON).
    pub controller_runs: &'a [(String, String)],
    /// Experiments the controller runs; saved runs of any other are deleted.
    /// `None`: leave the saved runs alone (a fleet replica that does not lead).
    pub controlled: Option<&'a [String]>,
}

pub mod capture;
pub mod feedback;

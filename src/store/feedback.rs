//! The feedback log: every accepted outcome event, unique per (token id, metric),
//! with the labels and corrections people gave, and the training-data export
//! that reads it back.
//!
//! Written only by the group-commit writer thread (one connection, batched
//! transactions); read once at startup to rebuild per-arm sums, and by each
//! dataset export on a connection of its own (WAL: readers never block the
//! writer).

use std::path::{Path, PathBuf};
use std::sync::Weak;
use std::time::Duration;

use rusqlite::{params, Connection};

use super::StoreError;

/// One event to make durable.
#[derive(Debug, Clone)]
pub struct FeedbackEvent {
    pub token_id: String,
    /// The dedup key beside the token id: the metric's name, or for an
    /// event with no metric [`annotation_key`] of its actor.
    pub metric: String,
    pub experiment: String,
    pub arm: String,
    /// The metric's value; `None` for a label or correction alone, which
    /// counts towards no statistic.
    pub value: Option<f64>,
    pub forced: bool,
    pub issued_at_ms: u64,
    pub table_version: u64,
    /// Who gave it: `client` on the data plane, the admin token's name for
    /// a reviewer.
    pub actor: String,
    pub label: Option<String>,
    /// Any JSON value, as its text.
    pub correction: Option<String>,
    /// The arm's backend and model rewrite when the event was accepted.
    pub backend: Option<String>,
    pub model: Option<String>,
}

/// The dedup key of an event that carries no metric: one label and
/// correction per (request, actor), so a retried post counts once and two
/// reviewers of the same answer are both kept. Config names start with a
/// letter or digit, so no metric is ever named so.
pub fn annotation_key(actor: &str) -> String {
    format!("_annotation/{actor}")
}

/// Where accepted events are made durable: the embedded log here, or a
/// fleet's database (`store::pg_feedback`). Owned by the feedback writer
/// thread, which alone calls it.
pub trait FeedbackSink: Send {
    /// Inserts a batch in one transaction; `true` where the event is new,
    /// `false` where (token id, metric) was already recorded (by anyone).
    fn insert_batch(&mut self, events: &[FeedbackEvent]) -> Result<Vec<bool>, StoreError>;
    /// The sums this process's recorders start from (see [`FeedbackLog::sums`]).
    fn sums(&self) -> Result<Vec<FeedbackTotal>, StoreError>;
    /// Starts whatever upkeep the sink needs beside the writer, until `alive`
    /// is gone.
    fn start_upkeep(&self, _alive: Weak<()>) -> Result<(), StoreError> {
        Ok(())
    }
}

/// What the training-data export reads (see [`export`]).
pub trait DatasetSource: Send + Sync {
    /// Streams `experiment`'s requests issued in `[since_ms, until_ms)` to
    /// `sink` in time order, until it returns false. Blocking.
    fn export(
        &self,
        experiment: &str,
        since_ms: u64,
        until_ms: u64,
        sink: &mut dyn FnMut(DatasetRow) -> bool,
    ) -> Result<(), StoreError>;
}

/// The embedded log's export: a read-only connection of its own.
pub struct LocalDataset(pub PathBuf);

impl DatasetSource for LocalDataset {
    fn export(
        &self,
        experiment: &str,
        since_ms: u64,
        until_ms: u64,
        sink: &mut dyn FnMut(DatasetRow) -> bool,
    ) -> Result<(), StoreError> {
        export(&self.0, experiment, since_ms, until_ms, sink)
    }
}

pub struct FeedbackLog {
    conn: Connection,
    path: PathBuf,
}

impl FeedbackSink for FeedbackLog {
    fn insert_batch(&mut self, events: &[FeedbackEvent]) -> Result<Vec<bool>, StoreError> {
        FeedbackLog::insert_batch(self, events)
    }
    fn sums(&self) -> Result<Vec<FeedbackTotal>, StoreError> {
        FeedbackLog::sums(self)
    }
    fn start_upkeep(&self, alive: Weak<()>) -> Result<(), StoreError> {
        self.spawn_checkpointer(alive)
    }
}

/// How often the checkpointer copies the write-ahead log into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

impl FeedbackLog {
    pub fn open(state_dir: &Path) -> Result<FeedbackLog, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::Dir {
            path: state_dir.display().to_string(),
            source,
        })?;
        let path = state_dir.join("abgate.db");
        let conn = Connection::open(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a committed event survives power loss, not just a process crash.
        conn.pragma_update(None, "synchronous", "FULL")?;
        // A checkpoint copies the WAL into the database file and syncs it:
        // milliseconds that would stall every event queued behind the commit
        // that happened to trigger it. The writer never checkpoints; the
        // checkpointer does, on its own connection and thread.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS feedback (
                token_id TEXT NOT NULL,
                metric TEXT NOT NULL,
                experiment TEXT NOT NULL,
                arm TEXT NOT NULL,
                value REAL NOT NULL,
                forced INTEGER NOT NULL,
                issued_at_ms INTEGER NOT NULL,
                received_at_ms INTEGER NOT NULL,
                PRIMARY KEY (token_id, metric)
            ) WITHOUT ROWID;",
        )?;
        migrate(&conn)?;
        Ok(FeedbackLog { conn, path })
    }

    /// The database file (what [`export`] opens).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts the thread that checkpoints the WAL every `CHECKPOINT_EVERY`
    /// (PASSIVE: it never blocks the writer), until `alive` is gone.
    pub fn spawn_checkpointer(&self, alive: Weak<()>) -> Result<(), StoreError> {
        let conn = Connection::open(&self.path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let spawned = std::thread::Builder::new()
            .name("abgate-checkpoint".into())
            .spawn(move || {
                while alive.upgrade().is_some() {
                    std::thread::sleep(CHECKPOINT_EVERY);
                    let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                    if let Err(e) = done {
                        tracing::warn!(error = %e, "WAL checkpoint failed; the next one retries");
                    }
                }
            });
        spawned.map(|_| ()).map_err(StoreError::Checkpointer)
    }

    /// Inserts a batch in one transaction; `true` where the event is new,
    /// `false` where (token id, metric) was already recorded.
    pub fn insert_batch(&mut self, events: &[FeedbackEvent]) -> Result<Vec<bool>, StoreError> {
        let tx = self.conn.transaction()?;
        let mut inserted = Vec::with_capacity(events.len());
        {
            let mut st = tx.prepare_cached(
                "INSERT OR IGNORE INTO feedback
                 (token_id, metric, experiment, arm, value, forced, issued_at_ms, received_at_ms,
                  counted, table_version, actor, label, correction, backend, model)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            )?;
            let now = crate::clock::now_ms() as i64;
            for e in events {
                let n = st.execute(params![
                    e.token_id,
                    e.metric,
                    e.experiment,
                    e.arm,
                    e.value.unwrap_or(0.0),
                    e.forced as i64,
                    e.issued_at_ms as i64,
                    now,
                    e.value.is_some() as i64,
                    e.table_version as i64,
                    e.actor,
                    e.label,
                    e.correction,
                    e.backend,
                    e.model,
                ])?;
                inserted.push(n == 1);
            }
        }
        tx.commit()?;
        Ok(inserted)
    }

    /// Sums per (experiment, arm, metric) over non-forced events, to rebuild the
    /// in-memory statistics at startup.
    pub fn sums(&self) -> Result<Vec<FeedbackTotal>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT experiment, arm, metric, COUNT(*), SUM(value), SUM(value * value)
             FROM feedback WHERE forced = 0 AND counted = 1 GROUP BY experiment, arm, metric",
        )?;
        let rows = st
            .query_map([], |r| {
                Ok(FeedbackTotal {
                    experiment: r.get(0)?,
                    arm: r.get(1)?,
                    metric: r.get(2)?,
                    n: r.get::<_, i64>(3)? as u64,
                    sum: r.get(4)?,
                    sum_sq: r.get(5)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }
}

/// Columns added after the first release, for labels, corrections and the
/// export: added in place (`ALTER TABLE ... ADD COLUMN` keeps every row; old
/// rows read as counted metric events from the data plane), then the index
/// the export reads in time order.
fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let mut have = Vec::new();
    {
        let mut st = conn.prepare("PRAGMA table_info(feedback)")?;
        let rows = st.query_map([], |r| r.get::<_, String>(1))?;
        for r in rows {
            have.push(r?);
        }
    }
    let columns = [
        ("counted", "INTEGER NOT NULL DEFAULT 1"),
        ("table_version", "INTEGER NOT NULL DEFAULT 0"),
        ("actor", "TEXT NOT NULL DEFAULT 'client'"),
        ("label", "TEXT"),
        ("correction", "TEXT"),
        ("backend", "TEXT"),
        ("model", "TEXT"),
    ];
    for (name, decl) in columns {
        if !have.iter().any(|h| h == name) {
            conn.execute_batch(&format!("ALTER TABLE feedback ADD COLUMN {name} {decl}"))?;
        }
    }
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS feedback_by_time ON feedback (experiment, issued_at_ms, token_id)",
    )?;
    Ok(())
}

/// One request's feedback as one line of the training-data export.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DatasetRow {
    pub token_id: String,
    /// When the request was answered (the token's issue time), RFC 3339 UTC...
    pub time: String,
    /// ...and in ms since the epoch.
    pub issued_at_ms: u64,
    pub experiment: String,
    pub arm: String,
    pub backend: Option<String>,
    /// The arm's model rewrite (`null`: the client's model went through).
    pub model: Option<String>,
    pub table_version: u64,
    /// Routed by the override header (never in the statistics).
    pub forced: bool,
    /// Metric name to value.
    pub metrics: std::collections::BTreeMap<String, f64>,
    pub labels: Vec<Given<String>>,
    pub corrections: Vec<Given<serde_json::Value>>,
    /// The captured example (request and answer, redacted), if it was sampled.
    pub capture: Option<CaptureDoc>,
}

/// A stored example's JSON document, written into the line as it is
/// (validated, never re-parsed into a tree).
#[derive(Debug, Clone, PartialEq)]
pub struct CaptureDoc(pub String);

impl serde::Serialize for CaptureDoc {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let raw: &serde_json::value::RawValue =
            serde_json::from_str(&self.0).map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

/// A label or correction and who gave it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Given<T> {
    pub value: T,
    pub actor: String,
    pub received_at_ms: u64,
}

/// Streams the export of `experiment` for requests issued in
/// `[since_ms, until_ms)`: one [`DatasetRow`] per request that has feedback
/// or a captured example (from the capture database beside `db`, see
/// `store::capture`), in time order, handed to `sink` as it is complete,
/// until `sink` returns false. Memory holds one request's rows, however
/// many there are in all: both indexes order rows by (time, token), so a
/// request's feedback rows are adjacent and the two streams merge as they
/// are read.
pub fn export(
    db: &Path,
    experiment: &str,
    since_ms: u64,
    until_ms: u64,
    sink: impl FnMut(DatasetRow) -> bool,
) -> Result<(), StoreError> {
    let conn = Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
            | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX
            | rusqlite::OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let captured = super::capture::attach(&conn, &db.with_file_name(super::capture::FILE))?;
    let mut st = conn.prepare(
        "SELECT token_id, metric, arm, value, forced, issued_at_ms, received_at_ms, counted,
                table_version, actor, label, correction, backend, model
         FROM feedback INDEXED BY feedback_by_time
         WHERE experiment = ?1 AND issued_at_ms >= ?2 AND issued_at_ms < ?3
         ORDER BY issued_at_ms, token_id",
    )?;
    let rows = st.query(params![
        experiment,
        since_ms.min(i64::MAX as u64) as i64,
        until_ms.min(i64::MAX as u64) as i64
    ])?;
    let mut groups = Groups {
        rows,
        experiment,
        current: None,
    };
    let mut cap_st = match captured {
        true => Some(conn.prepare(super::capture::EXAMPLES_SQL)?),
        false => None,
    };
    let mut examples = match cap_st.as_mut() {
        Some(st) => Some(super::capture::Examples::query(
            st, experiment, since_ms, until_ms,
        )?),
        None => None,
    };
    merge(
        || groups.next(),
        || match examples.as_mut() {
            Some(e) => e.next_example(),
            None => Ok(None),
        },
        sink,
    )
}

/// Streams the examples of `capture_db` (this replica's captures, when the
/// file exists) for the export of a fleet, whose feedback is elsewhere:
/// `with(next)` reads them one at a time.
pub fn with_examples(
    capture_db: &Path,
    experiment: &str,
    since_ms: u64,
    until_ms: u64,
    with: impl FnOnce(
        &mut dyn FnMut() -> Result<Option<super::capture::CaptureRow>, StoreError>,
    ) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let conn = Connection::open_in_memory()?;
    if !super::capture::attach(&conn, capture_db)? {
        return with(&mut || Ok(None));
    }
    let mut st = conn.prepare(super::capture::EXAMPLES_SQL)?;
    let mut examples = super::capture::Examples::query(&mut st, experiment, since_ms, until_ms)?;
    with(&mut || examples.next_example())
}

/// Merges a request's feedback (complete per request, in (time, token)
/// order) with the captured examples (the same order) into the export's
/// lines, handed to `sink` until it returns false.
pub fn merge(
    mut next_feedback: impl FnMut() -> Result<Option<DatasetRow>, StoreError>,
    mut next_example: impl FnMut() -> Result<Option<super::capture::CaptureRow>, StoreError>,
    mut sink: impl FnMut(DatasetRow) -> bool,
) -> Result<(), StoreError> {
    let (mut fb, mut ex) = (next_feedback()?, next_example()?);
    loop {
        let row = match (fb.take(), ex.take()) {
            (None, None) => return Ok(()),
            (Some(f), None) => {
                fb = next_feedback()?;
                f
            }
            (None, Some(e)) => {
                ex = next_example()?;
                example_row(e)
            }
            (Some(mut f), Some(e)) => {
                let (fk, ek) = ((f.issued_at_ms, &f.token_id), (e.issued_at_ms, &e.token_id));
                if fk < ek {
                    ex = Some(e);
                    fb = next_feedback()?;
                    f
                } else if ek < fk {
                    fb = Some(f);
                    ex = next_example()?;
                    example_row(e)
                } else {
                    f.capture = Some(CaptureDoc(e.doc));
                    fb = next_feedback()?;
                    ex = next_example()?;
                    f
                }
            }
        };
        if !sink(row) {
            return Ok(());
        }
    }
}

/// A request with an example and no feedback.
fn example_row(e: super::capture::CaptureRow) -> DatasetRow {
    finish(DatasetRow {
        token_id: e.token_id,
        time: String::new(),
        issued_at_ms: e.issued_at_ms,
        experiment: e.experiment,
        arm: e.arm,
        backend: Some(e.backend),
        model: e.model,
        table_version: e.table_version,
        forced: e.forced,
        metrics: Default::default(),
        labels: Vec::new(),
        corrections: Vec::new(),
        capture: Some(CaptureDoc(e.doc)),
    })
}

/// The feedback rows of one experiment, gathered per request.
struct Groups<'s, 'e> {
    rows: rusqlite::Rows<'s>,
    experiment: &'e str,
    /// The request being gathered (its first row already read).
    current: Option<DatasetRow>,
}

impl Groups<'_, '_> {
    /// The next request's feedback, complete, or `None` at the end.
    fn next(&mut self) -> Result<Option<DatasetRow>, StoreError> {
        let Groups {
            rows,
            experiment,
            current,
        } = self;
        next_line(current, experiment, || match rows.next()? {
            Some(r) => StoredFeedback::read(r).map(Some),
            None => Ok(None),
        })
    }
}

/// The next request's line from stored rows in (time, token) order, either
/// store's: `current` holds the request being gathered (its first row
/// already read) between calls; `None` at the end.
pub fn next_line(
    current: &mut Option<DatasetRow>,
    experiment: &str,
    mut next_row: impl FnMut() -> Result<Option<StoredFeedback>, StoreError>,
) -> Result<Option<DatasetRow>, StoreError> {
    while let Some(r) = next_row()? {
        let done = match current {
            Some(c) if c.token_id != r.token_id => current.take(),
            _ => None,
        };
        let row = current.get_or_insert_with(|| r.start_line(experiment));
        add(row, r);
        if let Some(d) = done {
            return Ok(Some(finish(d)));
        }
    }
    Ok(current.take().map(finish))
}

/// One stored feedback row, as either store reads it back.
#[derive(Debug, Clone)]
pub struct StoredFeedback {
    pub token_id: String,
    pub metric: String,
    pub arm: String,
    pub value: f64,
    pub forced: bool,
    pub issued_at_ms: u64,
    pub received_at_ms: u64,
    pub counted: bool,
    pub table_version: u64,
    pub actor: String,
    pub label: Option<String>,
    pub correction: Option<String>,
    pub backend: Option<String>,
    pub model: Option<String>,
}

impl StoredFeedback {
    fn read(r: &rusqlite::Row<'_>) -> Result<StoredFeedback, StoreError> {
        Ok(StoredFeedback {
            token_id: r.get(0)?,
            metric: r.get(1)?,
            arm: r.get(2)?,
            value: r.get(3)?,
            forced: r.get::<_, i64>(4)? != 0,
            issued_at_ms: r.get::<_, i64>(5)? as u64,
            received_at_ms: r.get::<_, i64>(6)? as u64,
            counted: r.get::<_, i64>(7)? != 0,
            table_version: r.get::<_, i64>(8)? as u64,
            actor: r.get(9)?,
            label: r.get(10)?,
            correction: r.get(11)?,
            backend: r.get(12)?,
            model: r.get(13)?,
        })
    }

    /// A line of the export with only this row in it.
    fn start_line(&self, experiment: &str) -> DatasetRow {
        DatasetRow {
            token_id: self.token_id.clone(),
            time: String::new(),
            issued_at_ms: 0,
            experiment: experiment.to_string(),
            arm: String::new(),
            backend: None,
            model: None,
            table_version: 0,
            forced: false,
            metrics: Default::default(),
            labels: Vec::new(),
            corrections: Vec::new(),
            capture: None,
        }
    }
}

/// Adds one feedback row to its request's line.
fn add(row: &mut DatasetRow, r: StoredFeedback) {
    row.arm = r.arm;
    row.forced = r.forced;
    row.issued_at_ms = r.issued_at_ms;
    row.table_version = r.table_version;
    // Rows from before the columns existed have none: keep what another
    // row of the same request said.
    if let Some(b) = r.backend {
        row.backend = Some(b);
    }
    if let Some(m) = r.model {
        row.model = Some(m);
    }
    let (received_at_ms, actor) = (r.received_at_ms, r.actor);
    if r.counted {
        row.metrics.insert(r.metric, r.value);
    }
    if let Some(label) = r.label {
        row.labels.push(Given {
            value: label,
            actor: actor.clone(),
            received_at_ms,
        });
    }
    if let Some(text) = r.correction {
        // Written by ingestion from a parsed value, so it parses back.
        let value = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        row.corrections.push(Given {
            value,
            actor,
            received_at_ms,
        });
    }
}

/// The line complete: its time in words.
fn finish(mut row: DatasetRow) -> DatasetRow {
    row.time = rfc3339(row.issued_at_ms);
    row
}

/// `ms` since the epoch as RFC 3339 UTC (fractional seconds when not whole).
pub fn rfc3339(ms: u64) -> String {
    let t = time::OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(ms as i64);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The recorded (non-forced) feedback of one metric of one arm.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackTotal {
    pub experiment: String,
    pub arm: String,
    pub metric: String,
    /// Events.
    pub n: u64,
    /// Sum of values.
    pub sum: f64,
    /// Sum of squared values.
    pub sum_sq: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: usize) -> FeedbackEvent {
        FeedbackEvent {
            token_id: format!("{i:032x}"),
            metric: "accepted".into(),
            experiment: "exp".into(),
            arm: "a".into(),
            value: Some(1.0),
            forced: false,
            issued_at_ms: 0,
            table_version: 1,
            actor: "client".into(),
            label: None,
            correction: None,
            backend: Some("v1".into()),
            model: None,
        }
    }

    #[test]
    fn the_checkpointer_moves_the_log_into_the_database_off_the_writer() {
        let dir = std::env::temp_dir().join(format!(
            "abgate-ckpt-{}-{}",
            std::process::id(),
            crate::clock::now_ms()
        ));
        let mut log = FeedbackLog::open(&dir).unwrap();
        let db_size = || std::fs::metadata(dir.join("abgate.db")).unwrap().len();
        let empty = db_size();
        // The writer alone never checkpoints: its pages stay in the WAL.
        for b in 0..20 {
            let batch: Vec<_> = (b * 100..(b + 1) * 100).map(event).collect();
            assert!(log.insert_batch(&batch).unwrap().iter().all(|new| *new));
        }
        assert_eq!(db_size(), empty, "the writer checkpointed");
        let alive = std::sync::Arc::new(());
        log.spawn_checkpointer(std::sync::Arc::downgrade(&alive))
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while db_size() <= empty {
            assert!(std::time::Instant::now() < deadline, "no checkpoint ran");
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(alive);
        assert_eq!(log.sums().unwrap()[0].n, 2000);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "abgate-{name}-{}-{}",
            std::process::id(),
            crate::clock::now_ms()
        ))
    }

    #[test]
    fn an_old_log_gains_the_new_columns_and_keeps_its_rows() {
        let dir = temp("fb-migrate");
        std::fs::create_dir_all(&dir).unwrap();
        {
            let old = Connection::open(dir.join("abgate.db")).unwrap();
            old.execute_batch(
                "CREATE TABLE feedback (token_id TEXT NOT NULL, metric TEXT NOT NULL,
                   experiment TEXT NOT NULL, arm TEXT NOT NULL, value REAL NOT NULL,
                   forced INTEGER NOT NULL, issued_at_ms INTEGER NOT NULL,
                   received_at_ms INTEGER NOT NULL, PRIMARY KEY (token_id, metric)) WITHOUT ROWID;
                 INSERT INTO feedback VALUES ('t1', 'accepted', 'exp', 'a', 1.0, 0, 5, 6);",
            )
            .unwrap();
        }
        let log = FeedbackLog::open(&dir).unwrap();
        assert_eq!(log.sums().unwrap()[0].n, 1);
        drop(log);
        // Opening again finds the columns there already.
        let log = FeedbackLog::open(&dir).unwrap();
        let mut rows = Vec::new();
        export(log.path(), "exp", 0, 100, |r| {
            rows.push(r);
            true
        })
        .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].metrics.get("accepted"), Some(&1.0));
        assert_eq!((rows[0].backend.clone(), rows[0].table_version), (None, 0));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_export_gives_each_request_once_in_time_order_and_stops_when_asked() {
        let dir = temp("fb-export");
        let mut log = FeedbackLog::open(&dir).unwrap();
        let at = |token: &str, metric: &str, t: u64| FeedbackEvent {
            token_id: token.into(),
            metric: metric.into(),
            issued_at_ms: t,
            ..event(0)
        };
        let note = |token: &str, actor: &str, t: u64| FeedbackEvent {
            value: None,
            actor: actor.into(),
            label: Some(format!("{token} by {actor}")),
            correction: Some("{\"fixed\":true}".into()),
            ..at(token, &annotation_key(actor), t)
        };
        // Token "b" was answered first; its rows arrive in several batches.
        log.insert_batch(&[at("a", "accepted", 200), note("b", "ann", 100)])
            .unwrap();
        log.insert_batch(&[at("b", "accepted", 100), note("a", "client", 200)])
            .unwrap();
        log.insert_batch(&[at("c", "rating", 300), note("b", "bob", 100)])
            .unwrap();
        let mut rows = Vec::new();
        export(log.path(), "exp", 0, u64::MAX, |r| {
            rows.push(r);
            true
        })
        .unwrap();
        let tokens: Vec<&str> = rows.iter().map(|r| r.token_id.as_str()).collect();
        assert_eq!(tokens, ["b", "a", "c"]);
        assert_eq!(rows[0].labels.len(), 2);
        assert_eq!(
            rows[0].corrections[0].value,
            serde_json::json!({"fixed": true})
        );
        assert_eq!(rows[0].metrics.len(), 1, "annotations are not metrics");
        assert_eq!(rows[0].time, "1970-01-01T00:00:00.1Z");
        // The annotation rows count towards no sum.
        let sums = log.sums().unwrap();
        assert!(sums.iter().all(|t| !t.metric.starts_with('_')), "{sums:?}");
        // A range, and a sink that stops.
        let mut n = 0;
        export(log.path(), "exp", 150, 300, |_| {
            n += 1;
            true
        })
        .unwrap();
        assert_eq!(n, 1);
        let mut n = 0;
        export(log.path(), "exp", 0, u64::MAX, |_| {
            n += 1;
            false
        })
        .unwrap();
        assert_eq!(n, 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

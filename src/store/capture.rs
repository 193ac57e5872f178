//! The capture store: sampled examples (request and answer, already
//! redacted) in `captures.db`, a database of its own beside `abgate.db`, so
//! a large capture never slows the feedback log's commits or the state's.
//!
//! Owns: the schema, the per-experiment byte budget (oldest examples go
//! first), and reading examples back in export order. Written only by the
//! capture writer thread; read by each dataset export on a connection of its
//! own (WAL: readers never block the writer).
//!
//! Durability is relaxed on purpose (`synchronous = NORMAL`): an example is a
//! sample, never acknowledged to anyone, so losing the last few to a power
//! cut costs nothing while a sync per batch would cost the disk.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use super::StoreError;

/// The file, in the state directory.
pub const FILE: &str = "captures.db";

/// One example, as it is kept and as the export reads it back.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptureRow {
    pub token_id: String,
    pub experiment: String,
    pub arm: String,
    pub backend: String,
    pub model: Option<String>,
    pub table_version: u64,
    pub forced: bool,
    pub issued_at_ms: u64,
    /// The example as one JSON object (see `outcomes::capture`): what the
    /// export puts under `capture`, and what the budget counts.
    pub doc: String,
}

/// What a batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Written {
    /// Examples stored, per experiment.
    pub stored: HashMap<String, u64>,
    /// Examples removed to stay within a budget, per experiment.
    pub evicted: HashMap<String, u64>,
    /// Examples not stored because one alone is larger than its budget.
    pub too_large: HashMap<String, u64>,
}

pub struct CaptureDb {
    conn: Connection,
    path: PathBuf,
    /// Bytes of `doc` stored per experiment (kept in step with the table).
    totals: HashMap<String, u64>,
}

impl CaptureDb {
    pub fn open(state_dir: &Path) -> Result<CaptureDb, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::Dir {
            path: state_dir.display().to_string(),
            source,
        })?;
        let path = state_dir.join(FILE);
        let conn = Connection::open(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // The WAL is truncated back to this after each checkpoint, so the
        // files are the examples, SQLite's pages and at most this besides.
        conn.pragma_update(None, "journal_size_limit", 4 << 20)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS captures (
                id INTEGER PRIMARY KEY,
                token_id TEXT NOT NULL UNIQUE,
                experiment TEXT NOT NULL,
                arm TEXT NOT NULL,
                backend TEXT NOT NULL,
                model TEXT,
                table_version INTEGER NOT NULL,
                forced INTEGER NOT NULL,
                issued_at_ms INTEGER NOT NULL,
                bytes INTEGER NOT NULL,
                doc TEXT NOT NULL
            );
            CREATE INDEX IF NOT EXISTS captures_by_time ON captures (experiment, issued_at_ms, token_id);
            CREATE INDEX IF NOT EXISTS captures_by_age ON captures (experiment, id);",
        )?;
        let mut totals = HashMap::new();
        {
            let mut st =
                conn.prepare("SELECT experiment, SUM(bytes) FROM captures GROUP BY experiment")?;
            let mut rows = st.query([])?;
            while let Some(r) = rows.next()? {
                totals.insert(r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64);
            }
        }
        Ok(CaptureDb { conn, path, totals })
    }

    /// The database file (what an export opens).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes stored for `experiment`.
    pub fn total(&self, experiment: &str) -> u64 {
        self.totals.get(experiment).copied().unwrap_or(0)
    }

    /// Every experiment's stored bytes.
    pub fn totals(&self) -> &HashMap<String, u64> {
        &self.totals
    }

    /// Stores a batch in one transaction, then removes each experiment's
    /// oldest examples until it is within `budget(experiment)` bytes. An
    /// example larger than its whole budget is not stored; one whose token
    /// is already stored is ignored.
    pub fn insert_batch(
        &mut self,
        rows: &[CaptureRow],
        budget: impl Fn(&str) -> u64,
    ) -> Result<Written, StoreError> {
        let mut written = Written::default();
        let tx = self.conn.transaction()?;
        let mut totals = self.totals.clone();
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO captures (token_id, experiment, arm, backend, model,
                   table_version, forced, issued_at_ms, bytes, doc)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            for r in rows {
                let bytes = r.doc.len() as u64;
                if bytes > budget(&r.experiment) {
                    *written.too_large.entry(r.experiment.clone()).or_default() += 1;
                    continue;
                }
                let n = insert.execute(params![
                    r.token_id,
                    r.experiment,
                    r.arm,
                    r.backend,
                    r.model,
                    r.table_version.min(i64::MAX as u64) as i64,
                    r.forced as i64,
                    r.issued_at_ms.min(i64::MAX as u64) as i64,
                    bytes as i64,
                    r.doc,
                ])?;
                if n == 1 {
                    *totals.entry(r.experiment.clone()).or_default() += bytes;
                    *written.stored.entry(r.experiment.clone()).or_default() += 1;
                }
            }
            let mut oldest = tx.prepare_cached(
                "SELECT id, bytes FROM captures INDEXED BY captures_by_age
                 WHERE experiment = ?1 ORDER BY id LIMIT 1",
            )?;
            let mut delete = tx.prepare_cached("DELETE FROM captures WHERE id = ?1")?;
            let experiments: Vec<String> = written.stored.keys().cloned().collect();
            for e in experiments {
                let limit = budget(&e);
                let total = totals.entry(e.clone()).or_default();
                while *total > limit {
                    let Some((id, bytes)) = oldest
                        .query_row(params![e], |r| {
                            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)? as u64))
                        })
                        .optional()?
                    else {
                        *total = 0;
                        break;
                    };
                    delete.execute(params![id])?;
                    *total = total.saturating_sub(bytes);
                    *written.evicted.entry(e.clone()).or_default() += 1;
                }
            }
        }
        tx.commit()?;
        self.totals = totals;
        Ok(written)
    }
}

/// Reads one experiment's examples issued in `[since_ms, until_ms)` in
/// export order (issue time, then token id), one at a time: see
/// [`Examples::next_example`].
pub struct Examples<'c> {
    rows: rusqlite::Rows<'c>,
}

/// The query behind [`Examples`], on a connection where the capture
/// database is attached as `cap`.
pub const EXAMPLES_SQL: &str =
    "SELECT token_id, experiment, arm, backend, model, table_version, forced, issued_at_ms, doc
     FROM cap.captures INDEXED BY captures_by_time
     WHERE experiment = ?1 AND issued_at_ms >= ?2 AND issued_at_ms < ?3
     ORDER BY issued_at_ms, token_id";

/// Attaches the capture database at `path` (read-only) to `conn` as `cap`.
/// False when there is none (nothing was ever captured).
pub fn attach(conn: &Connection, path: &Path) -> Result<bool, StoreError> {
    if !path.exists() {
        return Ok(false);
    }
    let uri = format!("file:{}?mode=ro", path.display());
    conn.execute("ATTACH DATABASE ?1 AS cap", params![uri])?;
    Ok(true)
}

impl<'c> Examples<'c> {
    pub fn query(
        st: &'c mut rusqlite::Statement<'_>,
        experiment: &str,
        since_ms: u64,
        until_ms: u64,
    ) -> Result<Examples<'c>, StoreError> {
        let rows = st.query(params![
            experiment,
            since_ms.min(i64::MAX as u64) as i64,
            until_ms.min(i64::MAX as u64) as i64
        ])?;
        Ok(Examples { rows })
    }

    /// The next example, as it was stored, or `None` at the end.
    pub fn next_example(&mut self) -> Result<Option<CaptureRow>, StoreError> {
        let Some(r) = self.rows.next()? else {
            return Ok(None);
        };
        Ok(Some(CaptureRow {
            token_id: r.get(0)?,
            experiment: r.get(1)?,
            arm: r.get(2)?,
            backend: r.get(3)?,
            model: r.get(4)?,
            table_version: r.get::<_, i64>(5)? as u64,
            forced: r.get::<_, i64>(6)? != 0,
            issued_at_ms: r.get::<_, i64>(7)? as u64,
            doc: r.get(8)?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "abgate-{name}-{}-{}",
            std::process::id(),
            crate::clock::now_ms()
        ))
    }

    fn row(experiment: &str, i: u64, bytes: usize) -> CaptureRow {
        CaptureRow {
            token_id: format!("{experiment}-{i:08}"),
            experiment: experiment.into(),
            arm: "a".into(),
            backend: "v1".into(),
            model: None,
            table_version: 1,
            forced: false,
            issued_at_ms: 1_000 + i,
            doc: format!("\"{}\"", "x".repeat(bytes - 2)),
        }
    }

    #[test]
    fn each_experiment_stays_within_its_budget_oldest_first() {
        let dir = temp("cap-budget");
        let mut db = CaptureDb::open(&dir).unwrap();
        let budget = |e: &str| if e == "small" { 10_000 } else { 1 << 20 };
        for b in 0..10u64 {
            let rows: Vec<_> = (b * 10..(b + 1) * 10)
                .flat_map(|i| [row("small", i, 1_000), row("big", i, 1_000)])
                .collect();
            db.insert_batch(&rows, budget).unwrap();
            assert!(db.total("small") <= 10_000, "{}", db.total("small"));
        }
        assert_eq!(db.total("small"), 10_000);
        assert_eq!(db.total("big"), 100_000);
        // Too large alone, and a duplicate token: neither is stored.
        let w = db
            .insert_batch(&[row("small", 1_000, 10_001), row("big", 5, 1_000)], budget)
            .unwrap();
        assert_eq!(w.too_large.get("small"), Some(&1));
        assert!(w.stored.is_empty());
        // The newest ten remain; reopening recounts the same totals.
        drop(db);
        let db = CaptureDb::open(&dir).unwrap();
        assert_eq!(db.total("small"), 10_000);
        let conn = Connection::open_in_memory().unwrap();
        assert!(attach(&conn, db.path()).unwrap());
        let mut st = conn.prepare(EXAMPLES_SQL).unwrap();
        let mut ex = Examples::query(&mut st, "small", 0, u64::MAX).unwrap();
        let mut tokens = Vec::new();
        while let Some(e) = ex.next_example().unwrap() {
            tokens.push(e.token_id);
        }
        let want: Vec<String> = (90..100).map(|i| format!("small-{i:08}")).collect();
        assert_eq!(tokens, want);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! The feedback log: every accepted outcome event, unique per (token id, metric).
//!
//! Used only by the group-commit writer thread (one connection, batched
//! transactions) and once at startup to rebuild per-arm sums.

use std::path::Path;

use rusqlite::{params, Connection};

use super::StoreError;
use crate::outcomes::metrics::{MetricKey, MetricSums};

/// One event to make durable.
#[derive(Debug, Clone)]
pub struct FeedbackEvent {
    pub token_id: String,
    pub metric: String,
    pub experiment: String,
    pub arm: String,
    pub value: f64,
    pub forced: bool,
    pub issued_at_ms: u64,
}

pub struct FeedbackLog {
    conn: Connection,
}

impl FeedbackLog {
    pub fn open(state_dir: &Path) -> Result<FeedbackLog, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::Dir {
            path: state_dir.display().to_string(),
            source,
        })?;
        let conn = Connection::open(state_dir.join("abgate.db"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a committed event survives power loss, not just a process crash.
        conn.pragma_update(None, "synchronous", "FULL")?;
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
        Ok(FeedbackLog { conn })
    }

    /// Inserts a batch in one transaction; `true` where the event is new,
    /// `false` where (token id, metric) was already recorded.
    pub fn insert_batch(&mut self, events: &[FeedbackEvent]) -> Result<Vec<bool>, StoreError> {
        let tx = self.conn.transaction()?;
        let mut inserted = Vec::with_capacity(events.len());
        {
            let mut st = tx.prepare_cached(
                "INSERT OR IGNORE INTO feedback
                 (token_id, metric, experiment, arm, value, forced, issued_at_ms, received_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            let now = super::now_ms() as i64;
            for e in events {
                let n = st.execute(params![
                    e.token_id,
                    e.metric,
                    e.experiment,
                    e.arm,
                    e.value,
                    e.forced as i64,
                    e.issued_at_ms as i64,
                    now
                ])?;
                inserted.push(n == 1);
            }
        }
        tx.commit()?;
        Ok(inserted)
    }

    /// Sums per (experiment, arm, metric) over non-forced events, to rebuild the
    /// in-memory statistics at startup.
    pub fn sums(&self) -> Result<Vec<(MetricKey, MetricSums)>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT experiment, arm, metric, COUNT(*), SUM(value), SUM(value * value)
             FROM feedback WHERE forced = 0 GROUP BY experiment, arm, metric",
        )?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    (r.get(0)?, r.get(1)?, r.get(2)?),
                    MetricSums {
                        n: r.get::<_, i64>(3)? as u64,
                        sum: r.get(4)?,
                        sum_sq: r.get(5)?,
                    },
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }
}

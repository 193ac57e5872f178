//! The feedback log: every accepted outcome event, unique per (token id, metric).
//!
//! Used only by the group-commit writer thread (one connection, batched
//! transactions) and once at startup to rebuild per-arm sums.

use std::path::{Path, PathBuf};
use std::sync::Weak;
use std::time::Duration;

use rusqlite::{params, Connection};

use super::StoreError;

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
    path: PathBuf,
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
        Ok(FeedbackLog { conn, path })
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
                 (token_id, metric, experiment, arm, value, forced, issued_at_ms, received_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            let now = crate::clock::now_ms() as i64;
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
    pub fn sums(&self) -> Result<Vec<FeedbackTotal>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT experiment, arm, metric, COUNT(*), SUM(value), SUM(value * value)
             FROM feedback WHERE forced = 0 GROUP BY experiment, arm, metric",
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
            value: 1.0,
            forced: false,
            issued_at_ms: 0,
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
}

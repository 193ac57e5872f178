//! The embedded SQLite store (WAL mode, synchronous=FULL for durability of
//! every acknowledged change).

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

use super::*;
use crate::clock::now_ms;

pub struct SqliteStore {
    // Control-plane writes are rare and small; one connection behind a mutex is
    // simpler than a pool and never touched by the request path.
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS config_versions (
    version INTEGER PRIMARY KEY,
    text TEXT NOT NULL,
    hash TEXT NOT NULL,
    applied_at_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    source TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    experiment TEXT NOT NULL,
    kind TEXT NOT NULL,
    from_weights TEXT NOT NULL,
    to_weights TEXT NOT NULL,
    reason TEXT NOT NULL,
    actor TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    applied INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS decisions_by_experiment ON decisions (experiment, id);
CREATE TABLE IF NOT EXISTS arm_stats (
    experiment TEXT NOT NULL,
    arm TEXT NOT NULL,
    stats TEXT NOT NULL,
    PRIMARY KEY (experiment, arm)
);
CREATE TABLE IF NOT EXISTS controller_runs (
    experiment TEXT PRIMARY KEY,
    run TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS experiment_state (
    experiment TEXT PRIMARY KEY,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS weight_history (
    experiment TEXT NOT NULL,
    seq INTEGER NOT NULL,
    layout_key TEXT NOT NULL,
    weights TEXT NOT NULL,
    recorded_at_ms INTEGER NOT NULL,
    PRIMARY KEY (experiment, seq)
);
CREATE TABLE IF NOT EXISTS series (
    experiment TEXT NOT NULL,
    series TEXT NOT NULL,
    meta TEXT NOT NULL,
    PRIMARY KEY (experiment, series)
);
CREATE TABLE IF NOT EXISTS series_points (
    experiment TEXT NOT NULL,
    series TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    point TEXT NOT NULL,
    PRIMARY KEY (experiment, series, seq)
);
";

impl SqliteStore {
    /// Opens (creating if needed) `state_dir/abgate.db`.
    pub fn open(state_dir: &Path) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::Dir {
            path: state_dir.display().to_string(),
            source,
        })?;
        let conn = Connection::open(state_dir.join("abgate.db"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (transactions
        // roll back), so a poisoned lock is safe to reuse.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn config_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ConfigRecord> {
    Ok(ConfigRecord {
        version: row.get::<_, i64>(0)? as u64,
        text: row.get(1)?,
        hash: row.get(2)?,
        applied_at_ms: row.get::<_, i64>(3)? as u64,
        actor: row.get(4)?,
        source: row.get(5)?,
    })
}

fn decision_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(Decision, [String; 3])> {
    Ok((
        Decision {
            id: row.get(0)?,
            experiment: row.get(1)?,
            kind: row.get(2)?,
            from_weights: Weights::new(),
            to_weights: Weights::new(),
            reason: serde_json::Value::Null,
            actor: row.get(6)?,
            created_at_ms: row.get::<_, i64>(7)? as u64,
            applied: row.get::<_, i64>(8)? != 0,
        },
        [row.get(3)?, row.get(4)?, row.get(5)?],
    ))
}

fn finish(rows: Vec<(Decision, [String; 3])>) -> Result<Vec<Decision>, StoreError> {
    rows.into_iter()
        .map(|(mut d, [from, to, reason])| {
            d.from_weights = serde_json::from_str(&from)?;
            d.to_weights = serde_json::from_str(&to)?;
            d.reason = serde_json::from_str(&reason)?;
            Ok(d)
        })
        .collect()
}

impl Store for SqliteStore {
    fn record_config(&self, r: &ConfigRecord) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO config_versions (version, text, hash, applied_at_ms, actor, source)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![r.version as i64, r.text, r.hash, r.applied_at_ms as i64, r.actor, r.source],
        )?;
        Ok(())
    }

    fn latest_config(&self) -> Result<Option<ConfigRecord>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT version, text, hash, applied_at_ms, actor, source
                 FROM config_versions ORDER BY version DESC LIMIT 1",
                [],
                config_from_row,
            )
            .optional()?)
    }

    fn config_versions(
        &self,
        before: Option<u64>,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<ConfigVersionInfo>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(
            "SELECT version, applied_at_ms, actor, source, hash FROM config_versions
             WHERE version < ?1 ORDER BY version DESC LIMIT ?2 OFFSET ?3",
        )?;
        let before = before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
        let rows = st
            .query_map(
                params![
                    before,
                    limit.min(10_000) as i64,
                    offset.min(i64::MAX as usize) as i64
                ],
                |row| {
                    Ok(ConfigVersionInfo {
                        version: row.get::<_, i64>(0)? as u64,
                        applied_at_ms: row.get::<_, i64>(1)? as u64,
                        actor: row.get(2)?,
                        source: row.get(3)?,
                        hash: row.get(4)?,
                    })
                },
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn config_version(&self, version: u64) -> Result<Option<ConfigRecord>, StoreError> {
        if version > i64::MAX as u64 {
            return Ok(None);
        }
        Ok(self
            .conn()
            .query_row(
                "SELECT version, text, hash, applied_at_ms, actor, source
                 FROM config_versions WHERE version = ?1",
                params![version as i64],
                config_from_row,
            )
            .optional()?)
    }

    fn config_version_range(&self) -> Result<Option<(u64, u64)>, StoreError> {
        let (min, max): (Option<i64>, Option<i64>) = self.conn().query_row(
            "SELECT MIN(version), MAX(version) FROM config_versions",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(min.zip(max).map(|(a, b)| (a as u64, b as u64)))
    }

    fn record_decision(&self, d: &NewDecision) -> Result<i64, StoreError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO decisions (experiment, kind, from_weights, to_weights, reason, actor, created_at_ms, applied)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0)",
            params![
                d.experiment,
                d.kind,
                serde_json::to_string(&d.from_weights)?,
                serde_json::to_string(&d.to_weights)?,
                d.reason.to_string(),
                d.actor,
                now_ms() as i64
            ],
        )?;
        Ok(conn.last_insert_rowid())
    }

    fn mark_applied(&self, id: i64) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE decisions SET applied = 1 WHERE id = ?1",
            params![id],
        )?;
        Ok(())
    }

    fn decisions(
        &self,
        experiment: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Decision>, StoreError> {
        let conn = self.conn();
        let limit = limit.min(10_000) as i64;
        let rows = match experiment {
            Some(e) => {
                let mut st = conn.prepare(&format!(
                    "SELECT {DECISION_COLUMNS} FROM decisions WHERE experiment = ?1 ORDER BY id DESC LIMIT ?2"
                ))?;
                let rows = st.query_map(params![e, limit], decision_from_row)?;
                rows.collect::<rusqlite::Result<Vec<_>>>()?
            }
            None => {
                let mut st = conn.prepare(&format!(
                    "SELECT {DECISION_COLUMNS} FROM decisions ORDER BY id DESC LIMIT ?1"
                ))?;
                let rows = st.query_map(params![limit], decision_from_row)?;
                rows.collect::<rusqlite::Result<Vec<_>>>()?
            }
        };
        finish(rows)
    }

    fn unapplied_decisions(&self) -> Result<Vec<Decision>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT {DECISION_COLUMNS} FROM decisions WHERE applied = 0 ORDER BY id"
        ))?;
        let rows = st
            .query_map([], decision_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        finish(rows)
    }

    fn save_state(&self, s: &ExperimentState) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO experiment_state (experiment, state) VALUES (?1, ?2)",
            params![s.experiment, serde_json::to_string(s)?],
        )?;
        Ok(())
    }

    fn clear_state(&self, experiment: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "DELETE FROM experiment_state WHERE experiment = ?1",
            params![experiment],
        )?;
        Ok(())
    }

    fn save_snapshot(&self, snapshot: &MemorySnapshot<'_>) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT OR REPLACE INTO arm_stats (experiment, arm, stats) VALUES (?1, ?2, ?3)",
            )?;
            for (e, a, json) in snapshot.arm_stats {
                st.execute(params![e, a, json])?;
            }
            let mut st = tx.prepare_cached(
                "INSERT OR REPLACE INTO controller_runs (experiment, run) VALUES (?1, ?2)",
            )?;
            for (e, json) in snapshot.controller_runs {
                st.execute(params![e, json])?;
            }
            // A removed experiment's evidence must not greet a new one of the same name.
            if let Some(controlled) = snapshot.controlled {
                let kept: Vec<&str> = controlled.iter().map(String::as_str).collect();
                let saved: Vec<String> = tx
                    .prepare_cached("SELECT experiment FROM controller_runs")?
                    .query_map([], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                let mut delete =
                    tx.prepare_cached("DELETE FROM controller_runs WHERE experiment = ?1")?;
                for e in saved.iter().filter(|e| !kept.contains(&e.as_str())) {
                    delete.execute(params![e])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn save_series(&self, writes: &[SeriesWrite]) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut meta = tx.prepare_cached(
                "INSERT OR REPLACE INTO series (experiment, series, meta) VALUES (?1, ?2, ?3)",
            )?;
            let mut clear = tx.prepare_cached(
                "DELETE FROM series_points WHERE experiment = ?1 AND series = ?2",
            )?;
            let mut put = tx.prepare_cached(
                "INSERT OR REPLACE INTO series_points (experiment, series, seq, at_ms, point) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for w in writes {
                meta.execute(params![w.experiment, w.series, w.meta])?;
                if w.replace {
                    clear.execute(params![w.experiment, w.series])?;
                }
                for (i, (at, point)) in w.points.iter().enumerate() {
                    let seq = w.first_seq + i as u64;
                    put.execute(params![
                        w.experiment,
                        w.series,
                        seq as i64,
                        *at as i64,
                        point
                    ])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn series(&self) -> Result<Vec<StoredSeries>, StoreError> {
        let conn = self.conn();
        let mut out: Vec<StoredSeries> = conn
            .prepare("SELECT experiment, series, meta FROM series ORDER BY experiment, series")?
            .query_map([], |r| {
                Ok(StoredSeries {
                    experiment: r.get(0)?,
                    series: r.get(1)?,
                    meta: r.get(2)?,
                    points: Vec::new(),
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut st = conn.prepare(
            "SELECT experiment, series, at_ms, point FROM series_points \
             ORDER BY experiment, series, seq",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?.max(0) as u64,
                r.get::<_, String>(3)?,
            ))
        })?;
        attach_points(&mut out, rows.map(|r| r.map_err(StoreError::from)))?;
        Ok(out)
    }

    fn clear_series(&self, experiment: &str) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "DELETE FROM series WHERE experiment = ?1",
            params![experiment],
        )?;
        tx.execute(
            "DELETE FROM series_points WHERE experiment = ?1",
            params![experiment],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn controller_runs(&self) -> Result<Vec<(String, String)>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare("SELECT experiment, run FROM controller_runs")?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn arm_stats(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare("SELECT experiment, arm, stats FROM arm_stats")?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn record_weight_step(&self, step: &WeightStep) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        if step.seq == 0 {
            tx.execute(
                "DELETE FROM weight_history WHERE experiment = ?1",
                params![step.experiment],
            )?;
        }
        tx.execute(
            "INSERT OR REPLACE INTO weight_history (experiment, seq, layout_key, weights, recorded_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                step.experiment,
                step.seq as i64,
                step.layout_key,
                serde_json::to_string(&step.weights)?,
                step.recorded_at_ms as i64
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn clear_weight_steps(&self, experiment: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "DELETE FROM weight_history WHERE experiment = ?1",
            params![experiment],
        )?;
        Ok(())
    }

    fn weight_steps(&self) -> Result<Vec<WeightStep>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT experiment, seq, layout_key, weights, recorded_at_ms
             FROM weight_history ORDER BY experiment, seq",
        )?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(experiment, seq, layout_key, weights, at)| {
                Ok(WeightStep {
                    experiment,
                    seq: seq as u64,
                    layout_key,
                    weights: serde_json::from_str(&weights)?,
                    recorded_at_ms: at as u64,
                })
            })
            .collect()
    }

    fn states(&self) -> Result<Vec<ExperimentState>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare("SELECT state FROM experiment_state ORDER BY experiment")?;
        let texts = st
            .query_map([], |row| row.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        texts
            .iter()
            .map(|t| serde_json::from_str(t).map_err(StoreError::from))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopening() {
        let dir = std::env::temp_dir().join(format!("abgate-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let s = SqliteStore::open(&dir).unwrap();
            s.record_config(&ConfigRecord {
                version: 3,
                text: "a: 1".into(),
                hash: "h".into(),
                applied_at_ms: 1,
                actor: "file".into(),
                source: "x.yaml".into(),
            })
            .unwrap();
            let id = s
                .record_decision(&NewDecision {
                    experiment: "e".into(),
                    kind: "rollback".into(),
                    from_weights: [("a".to_string(), 9000), ("b".to_string(), 1000)].into(),
                    to_weights: [("a".to_string(), 10000), ("b".to_string(), 0)].into(),
                    reason: serde_json::json!({"manual": true}),
                    actor: "admin".into(),
                })
                .unwrap();
            assert_eq!(s.unapplied_decisions().unwrap().len(), 1);
            s.mark_applied(id).unwrap();
            s.save_state(&ExperimentState {
                experiment: "e".into(),
                phase: ExperimentPhase::RolledBack,
                weights: Some([("a".to_string(), 10000)].into()),
                arms_fingerprint: "f".into(),
                updated_at_ms: 2,
                step: None,
                step_started_ms: 0,
                started_ms: 0,
            })
            .unwrap();
        }
        let s = SqliteStore::open(&dir).unwrap();
        assert_eq!(s.latest_config().unwrap().unwrap().version, 3);
        let d = s.decisions(Some("e"), 10).unwrap();
        assert_eq!(d.len(), 1);
        assert!(d[0].applied);
        assert_eq!(d[0].to_weights["a"], 10000);
        assert!(s.unapplied_decisions().unwrap().is_empty());
        assert_eq!(s.states().unwrap()[0].phase, ExperimentPhase::RolledBack);
        s.clear_state("e").unwrap();
        assert!(s.states().unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! The feedback log of a fleet: the same events as the embedded log, in the
//! shared database, unique per (token id, metric) across every replica, so an
//! event retried on another replica is a duplicate there too.
//!
//! Owns: the batch insert (one statement per group commit, whose `RETURNING`
//! says which events were new), this replica's sums at startup (each replica
//! counts its own; the others' reach it through the saved per-arm counts, see
//! `outcomes::fleet`), and the export's read of the table in pages.
//!
//! Never: acknowledges what it could not commit. A store that cannot be
//! reached fails the batch ([`StoreError::Unavailable`]), and the endpoint
//! answers 503 with `Retry-After`.

use std::collections::HashSet;
use std::path::PathBuf;

use deadpool_postgres::Pool;
use tokio::runtime::Handle;

use super::feedback::{
    merge, next_line, with_examples, DatasetRow, DatasetSource, FeedbackEvent, FeedbackSink,
    FeedbackTotal, StoredFeedback,
};
use super::StoreError;
use crate::clock::now_ms;

/// Rows per page of the export: memory holds one page and one request.
const PAGE: i64 = 2_000;

/// A fleet's feedback log, as one replica writes and reads it.
#[derive(Clone)]
pub struct PgFeedback {
    pub(super) pool: Pool,
    pub(super) rt: Handle,
    pub(super) replica: String,
    /// This replica's captured examples, merged into its exports.
    pub(super) captures: Option<PathBuf>,
}

impl PgFeedback {
    /// The same log, merging this replica's captured examples (`captures.db`)
    /// into the exports it serves.
    pub fn with_captures(mut self, capture_db: PathBuf) -> PgFeedback {
        self.captures = Some(capture_db);
        self
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.pool.get().await.map_err(super::postgres::pool_error)
    }
}

impl FeedbackSink for PgFeedback {
    fn insert_batch(&mut self, events: &[FeedbackEvent]) -> Result<Vec<bool>, StoreError> {
        let now = now_ms() as i64;
        let col = |f: fn(&FeedbackEvent) -> String| events.iter().map(f).collect::<Vec<_>>();
        let token_ids = col(|e| e.token_id.clone());
        let metrics = col(|e| e.metric.clone());
        let experiments = col(|e| e.experiment.clone());
        let arms = col(|e| e.arm.clone());
        let actors = col(|e| e.actor.clone());
        let values: Vec<f64> = events.iter().map(|e| e.value.unwrap_or(0.0)).collect();
        let counted: Vec<bool> = events.iter().map(|e| e.value.is_some()).collect();
        let forced: Vec<bool> = events.iter().map(|e| e.forced).collect();
        let issued: Vec<i64> = events.iter().map(|e| e.issued_at_ms as i64).collect();
        let versions: Vec<i64> = events.iter().map(|e| e.table_version as i64).collect();
        let labels: Vec<Option<String>> = events.iter().map(|e| e.label.clone()).collect();
        let corrections: Vec<Option<String>> =
            events.iter().map(|e| e.correction.clone()).collect();
        let backends: Vec<Option<String>> = events.iter().map(|e| e.backend.clone()).collect();
        let models: Vec<Option<String>> = events.iter().map(|e| e.model.clone()).collect();
        let new: HashSet<(String, String)> = self.rt.block_on(async {
            let c = self.client().await?;
            let rows = c
                .query(
                    "INSERT INTO feedback (token_id, metric, experiment, arm, value, forced,
                        issued_at_ms, received_at_ms, counted, table_version, actor, label,
                        correction, backend, model, replica)
                     SELECT t, m, e, a, v, f, i, $16, c, tv, ac, l, co, b, mo, $17
                     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::float8[],
                        $6::bool[], $7::int8[], $8::bool[], $9::int8[], $10::text[], $11::text[],
                        $12::text[], $13::text[], $14::text[], $15::int4[])
                        AS x(t, m, e, a, v, f, i, c, tv, ac, l, co, b, mo, ord)
                     ORDER BY ord
                     ON CONFLICT (token_id, metric) DO NOTHING
                     RETURNING token_id, metric",
                    &[
                        &token_ids,
                        &metrics,
                        &experiments,
                        &arms,
                        &values,
                        &forced,
                        &issued,
                        &counted,
                        &versions,
                        &actors,
                        &labels,
                        &corrections,
                        &backends,
                        &models,
                        &(0..events.len() as i32).collect::<Vec<i32>>(),
                        &now,
                        &self.replica,
                    ],
                )
                .await?;
            Ok::<_, StoreError>(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })?;
        // The first of two equal keys in one batch is the new one.
        let mut seen = HashSet::new();
        Ok(events
            .iter()
            .map(|e| {
                let key = (e.token_id.clone(), e.metric.clone());
                new.contains(&key) && seen.insert(key)
            })
            .collect())
    }

    fn sums(&self) -> Result<Vec<FeedbackTotal>, StoreError> {
        self.rt.block_on(async {
            let rows = self
                .client()
                .await?
                .query(
                    "SELECT experiment, arm, metric, COUNT(*), SUM(value), SUM(value * value)
                     FROM feedback WHERE replica = $1 AND counted AND NOT forced
                     GROUP BY experiment, arm, metric",
                    &[&self.replica],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| FeedbackTotal {
                    experiment: r.get(0),
                    arm: r.get(1),
                    metric: r.get(2),
                    n: r.get::<_, i64>(3).max(0) as u64,
                    sum: r.get(4),
                    sum_sq: r.get(5),
                })
                .collect())
        })
    }
}

impl PgFeedback {
    /// One page of `experiment`'s rows after (time, token, metric) `after`.
    fn page(
        &self,
        experiment: &str,
        after: (i64, &str, &str),
        until_ms: i64,
    ) -> Result<Vec<StoredFeedback>, StoreError> {
        self.rt.block_on(async {
            let rows = self
                .client()
                .await?
                .query(
                    "SELECT token_id, metric, arm, value, forced, issued_at_ms, received_at_ms,
                            counted, table_version, actor, label, correction, backend, model
                     FROM feedback
                     WHERE experiment = $1 AND (issued_at_ms, token_id, metric) > ($2, $3, $4)
                       AND issued_at_ms < $5
                     ORDER BY issued_at_ms, token_id, metric
                     LIMIT $6",
                    &[&experiment, &after.0, &after.1, &after.2, &until_ms, &PAGE],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| StoredFeedback {
                    token_id: r.get(0),
                    metric: r.get(1),
                    arm: r.get(2),
                    value: r.get(3),
                    forced: r.get(4),
                    issued_at_ms: r.get::<_, i64>(5).max(0) as u64,
                    received_at_ms: r.get::<_, i64>(6).max(0) as u64,
                    counted: r.get(7),
                    table_version: r.get::<_, i64>(8).max(0) as u64,
                    actor: r.get(9),
                    label: r.get(10),
                    correction: r.get(11),
                    backend: r.get(12),
                    model: r.get(13),
                })
                .collect())
        })
    }
}

impl DatasetSource for PgFeedback {
    fn export(
        &self,
        experiment: &str,
        since_ms: u64,
        until_ms: u64,
        sink: &mut dyn FnMut(DatasetRow) -> bool,
    ) -> Result<(), StoreError> {
        let until = until_ms.min(i64::MAX as u64) as i64;
        // Keyset pages in (time, token, metric) order (byte order: the
        // columns are COLLATE "C", as the captures are ordered): a request's rows stay
        // adjacent across a page boundary, and memory holds one page.
        // Every row at `since_ms` is after ('', ''): token ids are never empty.
        let mut cursor: (i64, String, String) = (
            since_ms.min(i64::MAX as u64) as i64,
            String::new(),
            String::new(),
        );
        let mut page: std::vec::IntoIter<StoredFeedback> = Vec::new().into_iter();
        let mut done = false;
        let mut current: Option<DatasetRow> = None;
        let mut next_row = || -> Result<Option<StoredFeedback>, StoreError> {
            if let Some(r) = page.next() {
                return Ok(Some(r));
            }
            if done {
                return Ok(None);
            }
            let rows = self.page(experiment, (cursor.0, &cursor.1, &cursor.2), until)?;
            done = (rows.len() as i64) < PAGE;
            if let Some(last) = rows.last() {
                cursor = (
                    last.issued_at_ms as i64,
                    last.token_id.clone(),
                    last.metric.clone(),
                );
            }
            page = rows.into_iter();
            Ok(page.next())
        };
        let mut next_feedback = || next_line(&mut current, experiment, &mut next_row);
        match &self.captures {
            Some(db) => with_examples(db, experiment, since_ms, until_ms, |next_example| {
                merge(&mut next_feedback, next_example, &mut *sink)
            }),
            None => merge(&mut next_feedback, || Ok(None), &mut *sink),
        }
    }
}

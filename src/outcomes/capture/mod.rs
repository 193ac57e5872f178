//! Capture of examples: a sampled share of an experiment's requests kept
//! with their answers, redacted, within a disk budget, for the
//! training-data export.
//!
//! Owns: which requests are sampled ([`CapturePolicy::samples`]), what an
//! example holds ([`Example`]), the bounded hand-off to the writer thread
//! ([`CaptureSink`]), redaction ([`redact`]) and turning an example into its
//! stored row.
//!
//! Never in a request's way: the proxy collects an example's bytes as
//! `Bytes` clones of the frames it forwards anyway, and hands the example
//! over with [`CaptureSink::offer`], which never waits. When the writer lags
//! (more than [`MAX_QUEUED_BYTES`] or [`MAX_QUEUED`] examples waiting), the
//! example is dropped and counted in
//! `abgate_capture_dropped_total{experiment,reason="queue_full"}`.
//! Redaction, serialising and SQLite all run on the writer's own thread.

pub mod redact;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use bytes::Bytes;
use metrics::Counter;
use serde_json::{json, Value};

use crate::config::{BasisPoints, Capture, BUCKETS};
use crate::store::capture::{CaptureDb, CaptureRow, Written};
use crate::telemetry::Telemetry;
use redact::{BodyOut, Redaction};

/// Bytes of examples waiting for the writer at most (bodies and headers).
pub const MAX_QUEUED_BYTES: u64 = 32 << 20;
/// Examples waiting for the writer at most.
pub const MAX_QUEUED: usize = 4096;
/// Examples the writer stores in one transaction at most.
const BATCH: usize = 256;
/// How long the writer waits for a batch to fill once it holds an example.
const LINGER: std::time::Duration = std::time::Duration::from_millis(100);

/// One experiment's `capture:` as the proxy and the writer use it; built
/// with each table, so a reload changes it for new requests at once.
pub struct CapturePolicy {
    pub experiment: String,
    pub percent: BasisPoints,
    pub max_body: u64,
    pub max_total: u64,
    pub redaction: Redaction,
    queue_full: Counter,
}

impl CapturePolicy {
    pub fn new(experiment: &str, c: &Capture, telemetry: &Telemetry) -> CapturePolicy {
        CapturePolicy {
            experiment: experiment.to_string(),
            percent: c.percent,
            max_body: c.max_body,
            max_total: c.max_total,
            redaction: Redaction::new(&c.redact_headers, &c.drop_fields),
            queue_full: telemetry.counter(
                "abgate_capture_dropped_total",
                &[("experiment", experiment), ("reason", "queue_full")],
            ),
        }
    }

    /// Whether the request whose token id is `id` is captured: its first
    /// four bytes, read as a fraction of 2^32, fall under `percent`. The id
    /// is random, so this is a uniform sample; it is a function of the id,
    /// so anyone holding a token can tell whether it could have an example.
    pub fn samples(&self, id: &[u8; 16]) -> bool {
        let x = u32::from_be_bytes([id[0], id[1], id[2], id[3]]) as u64;
        x * u64::from(BUCKETS) < u64::from(self.percent) << 32
    }
}

/// The arm an example was answered by, as the export names it.
#[derive(Debug, Clone, PartialEq)]
pub struct CapturedArm {
    pub arm: String,
    pub backend: String,
    /// The arm's model rewrite (`None`: the client's model went through).
    pub model: Option<String>,
}

/// A captured body.
#[derive(Debug, Clone)]
pub enum Captured {
    /// Every data frame.
    Whole(Vec<Bytes>),
    /// Larger than `max_body`.
    TooLarge,
    /// Not there: the upload failed or was still running when the answer
    /// ended, or the stream was cut.
    Missing,
}

impl Captured {
    /// Bytes held (0 for a body that is not there).
    pub fn bytes(&self) -> u64 {
        match self {
            Captured::Whole(f) => f.iter().map(|b| b.len() as u64).sum(),
            _ => 0,
        }
    }
}

/// One request and its answer, as captured (not yet redacted).
pub struct Example {
    pub policy: Arc<CapturePolicy>,
    pub arm: Arc<CapturedArm>,
    pub token_id: [u8; 16],
    pub issued_at_ms: u64,
    pub table_version: u64,
    pub forced: bool,
    pub method: String,
    /// Path and query as the client sent them.
    pub target: String,
    pub request_headers: http::HeaderMap,
    pub request_body: Captured,
    pub status: u16,
    pub response_headers: http::HeaderMap,
    pub response_body: Captured,
    /// The answer's body ended normally (not cut, not abandoned).
    pub complete: bool,
}

impl Example {
    /// About what the example holds in memory while queued.
    fn weight(&self) -> u64 {
        let headers = |h: &http::HeaderMap| {
            h.iter()
                .map(|(k, v)| (k.as_str().len() + v.len() + 32) as u64)
                .sum::<u64>()
        };
        256 + self.request_body.bytes()
            + self.response_body.bytes()
            + headers(&self.request_headers)
            + headers(&self.response_headers)
    }

    /// The stored row: redacted, as one JSON document.
    pub fn into_row(self) -> CaptureRow {
        let r = &self.policy.redaction;
        let body = |headers: &http::HeaderMap, b: &Captured, max: u64| -> (&'static str, Value) {
            match b {
                Captured::Whole(frames) => match r.body(headers, frames) {
                    BodyOut::Kept(v) => ("body", v),
                    BodyOut::Binary(b64) => ("body_base64", Value::String(b64)),
                    BodyOut::Omitted(why) => ("body_omitted", Value::String(why.to_string())),
                },
                Captured::TooLarge => (
                    "body_omitted",
                    Value::String(format!("larger than capture.max_body ({max} bytes)")),
                ),
                Captured::Missing => (
                    "body_omitted",
                    Value::String("not received whole".to_string()),
                ),
            }
        };
        let max = self.policy.max_body;
        let (rk, rv) = body(&self.request_headers, &self.request_body, max);
        let (sk, sv) = body(&self.response_headers, &self.response_body, max);
        let mut request = json!({
            "method": self.method,
            "target": self.target,
            "headers": r.headers(&self.request_headers),
        });
        request[rk] = rv;
        let mut response = json!({
            "status": self.status,
            "headers": r.headers(&self.response_headers),
            "complete": self.complete,
        });
        response[sk] = sv;
        let doc = json!({ "request": request, "response": response }).to_string();
        CaptureRow {
            token_id: super::token::id_hex(&self.token_id),
            experiment: self.policy.experiment.clone(),
            arm: self.arm.arm.clone(),
            backend: self.arm.backend.clone(),
            model: self.arm.model.clone(),
            table_version: self.table_version,
            forced: self.forced,
            issued_at_ms: self.issued_at_ms,
            doc,
        }
    }
}

/// What one experiment's capture has done since the process started
/// (`stored_bytes`: what is on disk now).
#[derive(Debug, Default)]
pub struct CaptureCounts {
    pub written: AtomicU64,
    pub evicted: AtomicU64,
    pub stored_bytes: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub dropped_too_large: AtomicU64,
    pub dropped_write_failed: AtomicU64,
}

/// Every experiment's [`CaptureCounts`], shared by the sink and its writer.
#[derive(Debug, Default)]
pub struct CaptureStats {
    by_experiment: dashmap::DashMap<String, Arc<CaptureCounts>>,
}

impl CaptureStats {
    pub fn of(&self, experiment: &str) -> Arc<CaptureCounts> {
        if let Some(c) = self.by_experiment.get(experiment) {
            return c.clone();
        }
        self.by_experiment
            .entry(experiment.to_string())
            .or_default()
            .clone()
    }

    /// The counts as JSON, for the experiment view.
    pub fn view(&self, experiment: &str) -> Value {
        let c = self.of(experiment);
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "written": get(&c.written),
            "evicted": get(&c.evicted),
            "stored_bytes": get(&c.stored_bytes),
            "dropped": {
                "queue_full": get(&c.dropped_queue_full),
                "too_large": get(&c.dropped_too_large),
                "write_failed": get(&c.dropped_write_failed),
            },
        })
    }
}

/// The hand-off from requests to the writer thread.
pub struct CaptureSink {
    tx: SyncSender<(Example, u64)>,
    queued_bytes: Arc<AtomicU64>,
    queued: Arc<AtomicUsize>,
    max_bytes: u64,
    stats: Arc<CaptureStats>,
}

impl CaptureSink {
    /// Starts the writer thread on `db`. It runs until the sink is dropped.
    pub fn start(db: CaptureDb, telemetry: Arc<Telemetry>) -> std::io::Result<Arc<CaptureSink>> {
        let stats = Arc::new(CaptureStats::default());
        let mut writer = Writer::new(db, telemetry, stats.clone());
        Self::start_with_stats(MAX_QUEUED, MAX_QUEUED_BYTES, stats, move |batch| {
            writer.write(batch)
        })
    }

    /// As [`CaptureSink::start`], with the writer given (tests block it to
    /// show what a lagging writer does) and the queue's bounds.
    pub fn start_with(
        max_queued: usize,
        max_bytes: u64,
        write: impl FnMut(Vec<Example>) + Send + 'static,
    ) -> std::io::Result<Arc<CaptureSink>> {
        Self::start_with_stats(max_queued, max_bytes, Default::default(), write)
    }

    fn start_with_stats(
        max_queued: usize,
        max_bytes: u64,
        stats: Arc<CaptureStats>,
        mut write: impl FnMut(Vec<Example>) + Send + 'static,
    ) -> std::io::Result<Arc<CaptureSink>> {
        let (tx, rx) = sync_channel::<(Example, u64)>(max_queued);
        let queued_bytes = Arc::new(AtomicU64::new(0));
        let queued = Arc::new(AtomicUsize::new(0));
        let (qb, q) = (queued_bytes.clone(), queued.clone());
        std::thread::Builder::new()
            .name("abgate-capture".into())
            .spawn(move || run(rx, &qb, &q, &mut write))?;
        Ok(Arc::new(CaptureSink {
            tx,
            queued_bytes,
            queued,
            max_bytes,
            stats,
        }))
    }

    /// What each experiment's capture has done.
    pub fn stats(&self) -> &CaptureStats {
        &self.stats
    }

    fn dropped(&self, policy: &CapturePolicy) {
        policy.queue_full.increment(1);
        self.stats
            .of(&policy.experiment)
            .dropped_queue_full
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Hands an example to the writer, or drops it (counted) when the writer
    /// lags. Never waits.
    pub fn offer(&self, example: Example) {
        let w = example.weight();
        let before = self.queued_bytes.fetch_add(w, Ordering::AcqRel);
        if before + w > self.max_bytes {
            self.queued_bytes.fetch_sub(w, Ordering::AcqRel);
            self.dropped(&example.policy);
            return;
        }
        // Counted before the send: the writer may take and release it first.
        self.queued.fetch_add(1, Ordering::AcqRel);
        if let Err(TrySendError::Full((e, _)) | TrySendError::Disconnected((e, _))) =
            self.tx.try_send((example, w))
        {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            self.queued_bytes.fetch_sub(w, Ordering::AcqRel);
            self.dropped(&e.policy);
        }
    }

    /// Examples waiting for the writer.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}

fn run(
    rx: Receiver<(Example, u64)>,
    queued_bytes: &AtomicU64,
    queued: &AtomicUsize,
    write: &mut impl FnMut(Vec<Example>),
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        // Lingers for more: at a low rate, one transaction (and one wake of
        // this thread's core) per LINGER instead of one per example.
        let until = std::time::Instant::now() + LINGER;
        while batch.len() < BATCH {
            let left = until.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let weight: u64 = batch.iter().map(|(_, w)| *w).sum();
        let n = batch.len();
        write(batch.into_iter().map(|(e, _)| e).collect());
        // Released after the write: what the writer holds counts as queued.
        queued_bytes.fetch_sub(weight, Ordering::AcqRel);
        queued.fetch_sub(n, Ordering::AcqRel);
    }
}

/// The writer thread's side: redacts, stores and counts.
struct Writer {
    db: CaptureDb,
    telemetry: Arc<Telemetry>,
    stats: Arc<CaptureStats>,
    /// The newest budget seen per experiment.
    budgets: HashMap<String, u64>,
}

impl Writer {
    fn new(db: CaptureDb, telemetry: Arc<Telemetry>, stats: Arc<CaptureStats>) -> Writer {
        for (e, bytes) in db.totals() {
            telemetry
                .gauge("abgate_capture_bytes", &[("experiment", e)])
                .set(*bytes as f64);
            stats.of(e).stored_bytes.store(*bytes, Ordering::Relaxed);
        }
        Writer {
            db,
            telemetry,
            stats,
            budgets: HashMap::new(),
        }
    }

    fn write(&mut self, batch: Vec<Example>) {
        let rows: Vec<CaptureRow> = batch
            .into_iter()
            .map(|e| {
                self.budgets
                    .insert(e.policy.experiment.clone(), e.policy.max_total);
                e.into_row()
            })
            .collect();
        let budgets = &self.budgets;
        match self
            .db
            .insert_batch(&rows, |e| budgets.get(e).copied().unwrap_or(u64::MAX))
        {
            Ok(w) => self.count(&w),
            Err(e) => {
                tracing::warn!(error = %e, examples = rows.len(), "capture write failed; the examples are dropped");
                let mut per: HashMap<&str, u64> = HashMap::new();
                for r in &rows {
                    *per.entry(r.experiment.as_str()).or_default() += 1;
                }
                for (e, n) in per {
                    self.stats
                        .of(e)
                        .dropped_write_failed
                        .fetch_add(n, Ordering::Relaxed);
                    self.telemetry
                        .counter(
                            "abgate_capture_dropped_total",
                            &[("experiment", e), ("reason", "write_failed")],
                        )
                        .increment(n);
                }
            }
        }
    }

    fn count(&self, w: &Written) {
        let t = &self.telemetry;
        for (e, n) in &w.stored {
            t.counter("abgate_capture_written_total", &[("experiment", e)])
                .increment(*n);
            self.stats.of(e).written.fetch_add(*n, Ordering::Relaxed);
        }
        for (e, n) in &w.evicted {
            t.counter("abgate_capture_evicted_total", &[("experiment", e)])
                .increment(*n);
            self.stats.of(e).evicted.fetch_add(*n, Ordering::Relaxed);
        }
        for (e, n) in &w.too_large {
            self.stats
                .of(e)
                .dropped_too_large
                .fetch_add(*n, Ordering::Relaxed);
            t.counter(
                "abgate_capture_dropped_total",
                &[("experiment", e), ("reason", "too_large")],
            )
            .increment(*n);
        }
        for e in w.stored.keys().chain(w.evicted.keys()) {
            let total = self.db.total(e);
            t.gauge("abgate_capture_bytes", &[("experiment", e)])
                .set(total as f64);
            self.stats
                .of(e)
                .stored_bytes
                .store(total, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(percent: BasisPoints) -> Arc<CapturePolicy> {
        policy_on(percent, &Telemetry::new())
    }

    fn policy_on(percent: BasisPoints, telemetry: &Telemetry) -> Arc<CapturePolicy> {
        let c = Capture {
            percent,
            max_body: 1024,
            max_total: 1 << 20,
            redact_headers: vec![],
            drop_fields: vec![],
        };
        Arc::new(CapturePolicy::new("exp", &c, telemetry))
    }

    fn example(p: &Arc<CapturePolicy>, body: usize) -> Example {
        Example {
            policy: p.clone(),
            arm: Arc::new(CapturedArm {
                arm: "a".into(),
                backend: "v1".into(),
                model: None,
            }),
            token_id: [7; 16],
            issued_at_ms: 1,
            table_version: 1,
            forced: false,
            method: "POST".into(),
            target: "/v1/chat/completions".into(),
            request_headers: http::HeaderMap::new(),
            request_body: Captured::Whole(vec![Bytes::from(vec![b'x'; body])]),
            status: 200,
            response_headers: http::HeaderMap::new(),
            response_body: Captured::TooLarge,
            complete: true,
        }
    }

    #[test]
    fn sampling_follows_the_token_id_and_the_percent() {
        let p = policy(250);
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let n = 200_000;
        let mut hits = 0;
        for _ in 0..n {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&rng.to_be_bytes());
            if p.samples(&id) {
                hits += 1;
                assert!(p.samples(&id), "the same id, the same answer");
            }
        }
        let share = hits as f64 / n as f64;
        assert!((share - 0.025).abs() < 0.002, "{share}");
        assert!(!policy(0).samples(&[0; 16]));
        assert!(policy(BUCKETS).samples(&[0xff; 16]));
    }

    #[test]
    fn a_lagging_writer_costs_requests_nothing_and_drops_are_counted() {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (entered, busy) = std::sync::mpsc::channel::<()>();
        let (done, written) = std::sync::mpsc::channel::<usize>();
        let sink = CaptureSink::start_with(4, 1 << 20, move |batch| {
            let _ = entered.send(());
            let _ = held.recv();
            let _ = done.send(batch.len());
        })
        .unwrap();
        let telemetry = Telemetry::new();
        let p = policy_on(BUCKETS, &telemetry);
        // The writer takes the first and stalls; four more fit the queue.
        sink.offer(example(&p, 100));
        busy.recv().unwrap();
        let started = std::time::Instant::now();
        for _ in 0..19 {
            sink.offer(example(&p, 100));
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(sink.queued(), 5);
        drop(release);
        let total: usize = written.iter().take(2).sum();
        assert_eq!(total, 5);
        let dropped = r#"abgate_capture_dropped_total{experiment="exp",reason="queue_full"}"#;
        let count = |text: String| {
            text.lines()
                .find_map(|l| l.strip_prefix(dropped))
                .map(|v| v.trim().to_string())
        };
        assert_eq!(count(telemetry.render()).as_deref(), Some("15"));
        // The byte bound drops too, whatever the count.
        let sink = CaptureSink::start_with(100, 1000, |_| {}).unwrap();
        sink.offer(example(&p, 2000));
        assert_eq!(sink.queued(), 0);
        assert_eq!(count(telemetry.render()).as_deref(), Some("16"));
    }
}

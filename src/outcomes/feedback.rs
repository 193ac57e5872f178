//! Feedback ingestion, the domain half: outcome events posted later against a
//! signed token. (The HTTP half, `proxy::feedback`, reads the body and maps the
//! results to statuses.)
//!
//! Owns: validating each event (token, window, metric, value, label,
//! correction), making accepted events durable with group commit *before* the
//! caller may answer 2xx, counting each event once per (token id, metric),
//! and updating the per-arm sums afterwards.
//!
//! An event carries a metric and its value, a `label` (a string of at most
//! [`MAX_LABEL`] bytes) and a `correction` (any JSON value, at most the
//! configured size), or several of them. A label or correction alone counts
//! towards no statistic; it is deduplicated per (token id, actor), so a
//! retried post counts once and two reviewers are both kept. It is accepted
//! whenever the token verifies: the attribution window bounds what the
//! statistics count, and a reviewer may take longer than that.
//!
//! Never: names an HTTP type. Rejections carry a [`RejectReason`]; the HTTP
//! half chooses the status.
//!
//! Group commit: one writer thread owns the feedback log. Requests queue their
//! events; the writer takes everything queued, writes it in one transaction and
//! answers each request after the commit. While one commit syncs to disk the
//! next batch forms, so throughput grows with load without a timer adding latency.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::metrics::MetricBook;
use super::token::{TokenError, TokenKeys};
use crate::clock::now_ms;
use crate::config::{MetricKind, MetricSource};
use crate::routing::RoutingTable;
use crate::store::feedback::{annotation_key, DatasetSource, FeedbackEvent, FeedbackSink};
use crate::telemetry::Telemetry;

/// Most events in one POST.
pub const MAX_EVENTS: usize = 1000;
/// Longest label, in bytes.
pub const MAX_LABEL: usize = 256;
/// Most events one transaction takes (bounds a commit's duration).
const MAX_BATCH: usize = 5000;
/// Queued requests beyond this are answered 503 (memory stays bounded).
const QUEUE: usize = 10_000;

struct Job {
    events: Vec<FeedbackEvent>,
    reply: oneshot::Sender<Result<Vec<bool>, String>>,
}

pub struct FeedbackService {
    queue: mpsc::Sender<Job>,
    /// Where exports read the log (each on its own connection).
    dataset: Arc<dyn DatasetSource>,
    keys: Arc<TokenKeys>,
    book: Arc<MetricBook>,
    telemetry: Arc<Telemetry>,
}

/// Why one event was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// Not an event object, or a field of the wrong type.
    Malformed,
    /// The token names a signing key abgate does not have.
    UnknownKey,
    /// The token is not one abgate signed.
    BadToken,
    /// The experiment is gone or declares no such feedback metric.
    UnknownMetric,
    /// The token is older than the experiment's attribution window.
    Expired,
    /// The value is outside the metric's declared range (or not 0/1).
    OutOfRange,
    /// The label or the correction is over its size limit.
    TooLarge,
}

impl RejectReason {
    /// The stable slug of the problem `type` and of the counter's `result`.
    pub fn slug(self) -> &'static str {
        match self {
            RejectReason::Malformed => "malformed",
            RejectReason::UnknownKey => "unknown-key",
            RejectReason::BadToken => "bad-token",
            RejectReason::UnknownMetric => "unknown-metric",
            RejectReason::Expired => "expired",
            RejectReason::OutOfRange => "out-of-range",
            RejectReason::TooLarge => "too-large",
        }
    }
}

/// One refused event: why, in words for the client.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
    /// Labels for the counter (config names only).
    experiment: String,
    arm: String,
    metric: String,
}

impl Rejection {
    fn new(
        reason: RejectReason,
        detail: String,
        experiment: &str,
        arm: &str,
        metric: &str,
    ) -> Self {
        Rejection {
            reason,
            detail,
            experiment: experiment.to_string(),
            arm: arm.to_string(),
            metric: metric.to_string(),
        }
    }
}

/// What became of one event.
#[derive(Debug, Clone)]
pub enum EventResult {
    /// Durable and counted.
    Accepted,
    /// Already recorded for this (token, metric): counted once, before.
    Duplicate,
    Rejected(Rejection),
}

impl EventResult {
    /// `accepted`, `duplicate` or `rejected`, as the endpoint reports it.
    pub fn name(&self) -> &'static str {
        match self {
            EventResult::Accepted => "accepted",
            EventResult::Duplicate => "duplicate",
            EventResult::Rejected(_) => "rejected",
        }
    }
}

/// Why a whole submission was refused (nothing was recorded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedbackError {
    #[error("{0}")]
    Malformed(String),
    #[error("the feedback queue is full; retry later")]
    Overloaded,
    #[error("the events could not be made durable; nothing was recorded, retry")]
    StoreUnavailable,
}

/// What ingestion needs of an arm's carry: its backend and the model it is
/// sent, recorded with each event for the training-data export.
pub trait ArmOrigin {
    fn backend(&self) -> &str;
    /// The arm's `model` rewrite, if it has one.
    fn model(&self) -> Option<String>;
}

/// Who posts, and the limits that apply to them.
#[derive(Debug, Clone, Copy)]
pub struct Poster<'a> {
    /// `client` on the data plane; the admin token's name for a reviewer.
    pub actor: &'a str,
    /// Largest `correction`, in bytes of its JSON text.
    pub max_correction: usize,
}

/// A parsed submission: one event or a batch of them.
pub struct Submission {
    items: Vec<Value>,
    /// Posted as an array: answered per event, even for one.
    pub batch: bool,
}

impl Submission {
    /// Parses a body: an event object, or an array of 1..=[`MAX_EVENTS`] of them.
    pub fn parse(body: &[u8]) -> Result<Submission, FeedbackError> {
        let parsed: Value = serde_json::from_slice(body)
            .map_err(|e| FeedbackError::Malformed(format!("body is not JSON: {e}")))?;
        match parsed {
            Value::Array(items) => {
                if items.is_empty() || items.len() > MAX_EVENTS {
                    return Err(FeedbackError::Malformed(format!(
                        "a batch holds 1 to {MAX_EVENTS} events, got {}",
                        items.len()
                    )));
                }
                Ok(Submission { items, batch: true })
            }
            v @ Value::Object(_) => Ok(Submission {
                items: vec![v],
                batch: false,
            }),
            _ => Err(FeedbackError::Malformed(
                "body must be an event object or an array of them".into(),
            )),
        }
    }
}

impl FeedbackService {
    /// Rebuilds per-arm sums from the log, then starts the writer thread.
    pub fn start(
        mut log: Box<dyn FeedbackSink>,
        dataset: Arc<dyn DatasetSource>,
        keys: Arc<TokenKeys>,
        book: Arc<MetricBook>,
        telemetry: Arc<Telemetry>,
    ) -> Result<Arc<FeedbackService>, crate::store::StoreError> {
        for t in log.sums()? {
            book.cell(&t.experiment, &t.arm, &t.metric)
                .restore(super::metrics::MetricSums {
                    n: t.n,
                    sum: t.sum,
                    sum_sq: t.sum_sq,
                });
        }
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
        let writer_book = book.clone();
        // The sink's upkeep (the embedded log's checkpointer) lives as long
        // as the writer.
        let alive = Arc::new(());
        log.start_upkeep(Arc::downgrade(&alive))?;
        std::thread::Builder::new()
            .name("abgate-feedback-writer".into())
            .spawn(move || {
                let _alive = alive;
                while let Some(first) = rx.blocking_recv() {
                    let mut jobs = vec![first];
                    let mut n = jobs[0].events.len();
                    while n < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(j) => {
                                n += j.events.len();
                                jobs.push(j);
                            }
                            Err(_) => break,
                        }
                    }
                    let all: Vec<FeedbackEvent> = jobs.iter().flat_map(|j| j.events.iter().cloned()).collect();
                    match log.insert_batch(&all) {
                        Ok(inserted) => {
                            // Durable now: count, then answer.
                            for (e, new) in all.iter().zip(&inserted) {
                                if let (true, false, Some(v)) = (*new, e.forced, e.value) {
                                    writer_book.cell(&e.experiment, &e.arm, &e.metric).record(v);
                                }
                            }
                            let mut offset = 0;
                            for j in jobs {
                                let k = j.events.len();
                                let _ = j.reply.send(Ok(inserted[offset..offset + k].to_vec()));
                                offset += k;
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "feedback commit failed; events not acknowledged");
                            for j in jobs {
                                let _ = j.reply.send(Err(e.to_string()));
                            }
                        }
                    }
                }
            })
            .expect("spawning the feedback writer thread");
        Ok(Arc::new(FeedbackService {
            queue: tx,
            dataset,
            keys,
            book,
            telemetry,
        }))
    }

    pub fn book(&self) -> &Arc<MetricBook> {
        &self.book
    }

    /// Streams the training-data export (see [`crate::store::feedback::export`]).
    /// Blocking: call it off the async workers.
    pub fn export(
        &self,
        experiment: &str,
        since_ms: u64,
        until_ms: u64,
        mut sink: impl FnMut(crate::store::feedback::DatasetRow) -> bool,
    ) -> Result<(), crate::store::StoreError> {
        self.dataset
            .export(experiment, since_ms, until_ms, &mut sink)
    }

    fn count(&self, experiment: &str, arm: &str, metric: &str, result: &'static str) {
        self.telemetry
            .counter(
                "abgate_feedback_events_total",
                &[
                    ("experiment", experiment),
                    ("arm", arm),
                    ("metric", metric),
                    ("result", result),
                ],
            )
            .increment(1);
    }

    /// Validates every event, makes the valid ones durable (one group commit),
    /// and returns each event's result in order. `Err` means nothing was
    /// recorded and the client should retry.
    pub async fn ingest<A: ArmOrigin>(
        &self,
        submission: Submission,
        table: &RoutingTable<A>,
        poster: Poster<'_>,
    ) -> Result<Vec<EventResult>, FeedbackError> {
        let now = now_ms();
        let checked: Vec<Result<FeedbackEvent, Rejection>> = submission
            .items
            .iter()
            .map(|v| self.validate(v, table, now, poster))
            .collect();
        let valid: Vec<FeedbackEvent> = checked
            .iter()
            .filter_map(|c| c.as_ref().ok().cloned())
            .collect();
        let inserted = if valid.is_empty() {
            Vec::new()
        } else {
            let (reply, answer) = oneshot::channel();
            if self
                .queue
                .try_send(Job {
                    events: valid,
                    reply,
                })
                .is_err()
            {
                return Err(FeedbackError::Overloaded);
            }
            match tokio::time::timeout(Duration::from_secs(30), answer).await {
                Ok(Ok(Ok(v))) => v,
                _ => return Err(FeedbackError::StoreUnavailable),
            }
        };
        let mut new_iter = inserted.into_iter();
        let results = checked
            .into_iter()
            .map(|c| match c {
                Ok(e) => {
                    let result = if new_iter.next().unwrap_or(false) {
                        EventResult::Accepted
                    } else {
                        EventResult::Duplicate
                    };
                    self.count(&e.experiment, &e.arm, &e.metric, result.name());
                    result
                }
                Err(r) => {
                    self.count(&r.experiment, &r.arm, &r.metric, r.reason.slug());
                    EventResult::Rejected(r)
                }
            })
            .collect();
        Ok(results)
    }

    fn validate<A: ArmOrigin>(
        &self,
        v: &Value,
        table: &RoutingTable<A>,
        now: u64,
        poster: Poster<'_>,
    ) -> Result<FeedbackEvent, Rejection> {
        let reject = Rejection::new;
        const UNKNOWN: &str = "_unknown";
        let malformed = |detail: &str| {
            reject(
                RejectReason::Malformed,
                detail.to_string(),
                UNKNOWN,
                UNKNOWN,
                UNKNOWN,
            )
        };
        let obj = v
            .as_object()
            .ok_or_else(|| malformed("an event must be a JSON object"))?;
        let token = obj
            .get("token")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed("`token` must be a string"))?;
        let metric = match obj.get("metric") {
            None | Some(Value::Null) => None,
            Some(Value::String(m)) => Some(m.as_str()),
            Some(_) => return Err(malformed("`metric` must be a string")),
        };
        let value = match (metric, obj.get("value")) {
            (_, Some(Value::Number(n))) => Some(
                n.as_f64()
                    .ok_or_else(|| malformed("`value` must be a finite number"))?,
            ),
            (_, Some(Value::Bool(b))) => Some(f64::from(u8::from(*b))),
            (None, None | Some(Value::Null)) => None,
            _ => return Err(malformed("`value` must be a number")),
        };
        if metric.is_none() && value.is_some() {
            return Err(malformed("a `value` needs the `metric` it is a value of"));
        }
        let label = match obj.get("label") {
            None | Some(Value::Null) => None,
            Some(Value::String(l)) => Some(l.clone()),
            Some(_) => return Err(malformed("`label` must be a string")),
        };
        let correction = match obj.get("correction") {
            None | Some(Value::Null) => None,
            Some(c) => Some(c.to_string()),
        };
        if metric.is_none() && label.is_none() && correction.is_none() {
            return Err(malformed(
                "an event carries a `metric` and its `value`, a `label` or a `correction`",
            ));
        }
        let claims = self.keys.verify(token).map_err(|e| {
            let reason = match e {
                TokenError::UnknownKey(_) => RejectReason::UnknownKey,
                TokenError::Malformed | TokenError::BadSignature => RejectReason::BadToken,
            };
            reject(reason, e.to_string(), UNKNOWN, UNKNOWN, UNKNOWN)
        })?;
        let (exp, arm) = (claims.experiment.as_str(), claims.arm.as_str());
        let Some(route) = table.experiment(exp) else {
            return Err(reject(
                RejectReason::UnknownMetric,
                format!("experiment {exp:?} is no longer configured"),
                exp,
                arm,
                "_undeclared",
            ));
        };
        let too_large = |detail: String| {
            reject(
                RejectReason::TooLarge,
                detail,
                exp,
                arm,
                metric.unwrap_or("_annotation"),
            )
        };
        if let Some(l) = &label {
            if l.len() > MAX_LABEL {
                return Err(too_large(format!(
                    "`label` is {} bytes; at most {MAX_LABEL}",
                    l.len()
                )));
            }
        }
        if let Some(c) = &correction {
            if c.len() > poster.max_correction {
                return Err(too_large(format!(
                    "`correction` is {} bytes of JSON; at most {} (feedback.max_correction)",
                    c.len(),
                    poster.max_correction
                )));
            }
        }
        if let Some(metric) = metric {
            let value = value.ok_or_else(|| malformed("`value` must be a number"))?;
            self.check_metric(route, exp, arm, metric, value, claims.issued_at_ms, now)?;
        }
        let origin = route.arms.iter().find(|a| a.name == arm).map(|a| &a.carry);
        Ok(FeedbackEvent {
            token_id: claims.id_hex(),
            metric: metric.map_or_else(|| annotation_key(poster.actor), str::to_string),
            experiment: claims.experiment.clone(),
            arm: claims.arm.clone(),
            value,
            forced: claims.forced,
            issued_at_ms: claims.issued_at_ms,
            table_version: claims.table_version,
            actor: poster.actor.to_string(),
            label,
            correction,
            backend: origin.map(|o| o.backend().to_string()),
            model: origin.and_then(ArmOrigin::model),
        })
    }

    /// A metric event's checks: declared, within the attribution window, in range.
    #[allow(clippy::too_many_arguments)]
    fn check_metric<A>(
        &self,
        route: &crate::routing::ExperimentRoute<A>,
        exp: &str,
        arm: &str,
        metric: &str,
        value: f64,
        issued_at_ms: u64,
        now: u64,
    ) -> Result<(), Rejection> {
        let reject = Rejection::new;
        let def =
            route
                .metrics
                .iter()
                .find(|m| m.name == metric && m.source == MetricSource::Feedback)
                .ok_or_else(|| {
                    let declared: Vec<&str> = route
                        .metrics
                        .iter()
                        .filter(|m| m.source == MetricSource::Feedback)
                        .map(|m| m.name.as_str())
                        .collect();
                    reject(
                        RejectReason::UnknownMetric,
                        format!(
                        "experiment {exp:?} declares no feedback metric {metric:?}; declared: {}",
                        if declared.is_empty() { "(none)".to_string() } else { declared.join(", ") }
                    ),
                        exp,
                        arm,
                        "_undeclared",
                    )
                })?;
        let age = now.saturating_sub(issued_at_ms);
        if u128::from(age) > route.attribution_window.as_millis() {
            return Err(reject(
                RejectReason::Expired,
                format!(
                    "the token is {}s old; experiment {exp:?} attributes feedback for {}s",
                    age / 1000,
                    route.attribution_window.as_secs()
                ),
                exp,
                arm,
                metric,
            ));
        }
        let out_of_range =
            |detail: String| reject(RejectReason::OutOfRange, detail, exp, arm, metric);
        match def.kind {
            MetricKind::Binary if value != 0.0 && value != 1.0 => {
                return Err(out_of_range(format!(
                    "{metric} is binary: value must be 0 or 1, got {value}"
                )))
            }
            MetricKind::Continuous => {
                if def.min.is_some_and(|lo| value < lo) || def.max.is_some_and(|hi| value > hi) {
                    return Err(out_of_range(format!(
                        "{metric} must be within [{}, {}], got {value}",
                        def.min.map_or("-inf".into(), |v| v.to_string()),
                        def.max.map_or("inf".into(), |v| v.to_string())
                    )));
                }
            }
            MetricKind::Binary => {}
        }
        Ok(())
    }
}

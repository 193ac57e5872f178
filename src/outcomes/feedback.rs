//! The feedback endpoint: outcome events posted later against a signed token.
//!
//! Owns: validating each event (token, window, metric, value), making accepted
//! events durable with group commit *before* answering 2xx, counting each event
//! once per (token id, metric), and updating the per-arm sums afterwards.
//!
//! Group commit: one writer thread owns the feedback log. Requests queue their
//! events; the writer takes everything queued, writes it in one transaction and
//! answers each request after the commit. While one commit syncs to disk the
//! next batch forms, so throughput grows with load without a timer adding latency.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use super::metrics::MetricBook;
use super::token::{TokenError, TokenKeys};
use crate::clock::now_ms;
use crate::config::{MetricKind, MetricSource};
use crate::proxy::body::ProxyBody;
use crate::routing::RoutingTable;
use crate::store::feedback::{FeedbackEvent, FeedbackLog};
use crate::telemetry::Telemetry;

/// Most events in one POST.
pub const MAX_EVENTS: usize = 1000;
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
    keys: Arc<TokenKeys>,
    book: Arc<MetricBook>,
    telemetry: Arc<Telemetry>,
}

/// Why one event was refused.
struct Rejection {
    status: StatusCode,
    slug: &'static str,
    detail: String,
    /// Labels for the counter (config names only).
    experiment: String,
    arm: String,
    metric: String,
}

impl FeedbackService {
    /// Rebuilds per-arm sums from the log, then starts the writer thread.
    pub fn start(
        mut log: FeedbackLog,
        keys: Arc<TokenKeys>,
        book: Arc<MetricBook>,
        telemetry: Arc<Telemetry>,
    ) -> Result<Arc<FeedbackService>, crate::store::StoreError> {
        for ((e, a, m), sums) in log.sums()? {
            book.cell(&e, &a, &m).restore(sums);
        }
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
        let writer_book = book.clone();
        // The checkpointer lives as long as the writer.
        let alive = Arc::new(());
        log.spawn_checkpointer(Arc::downgrade(&alive))?;
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
                                if *new && !e.forced {
                                    writer_book.cell(&e.experiment, &e.arm, &e.metric).record(e.value);
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
            keys,
            book,
            telemetry,
        }))
    }

    pub fn book(&self) -> &Arc<MetricBook> {
        &self.book
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

    /// Serves `POST <feedback path>`.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        table: &RoutingTable,
        max_body: usize,
    ) -> Response<ProxyBody> {
        if req.method() != Method::POST {
            return problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "POST feedback events".into(),
            );
        }
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > max_body) {
            return too_large(max_body);
        }
        let body = match Limited::new(req.into_body(), max_body).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => return too_large(max_body),
            Err(e) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "malformed",
                    format!("cannot read the body: {e}"),
                )
            }
        };
        let parsed: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "malformed",
                    format!("body is not JSON: {e}"),
                )
            }
        };
        let (items, batch) = match parsed {
            Value::Array(items) => {
                if items.is_empty() || items.len() > MAX_EVENTS {
                    return problem(
                        StatusCode::BAD_REQUEST,
                        "malformed",
                        format!(
                            "a batch holds 1 to {MAX_EVENTS} events, got {}",
                            items.len()
                        ),
                    );
                }
                (items, true)
            }
            v @ Value::Object(_) => (vec![v], false),
            _ => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "malformed",
                    "body must be an event object or an array of them".into(),
                )
            }
        };
        let now = now_ms();
        let checked: Vec<Result<FeedbackEvent, Rejection>> =
            items.iter().map(|v| self.validate(v, table, now)).collect();
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
                return problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    "the feedback queue is full; retry later".into(),
                );
            }
            match tokio::time::timeout(Duration::from_secs(30), answer).await {
                Ok(Ok(Ok(v))) => v,
                _ => {
                    return problem(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "store-unavailable",
                        "the events could not be made durable; nothing was recorded, retry".into(),
                    )
                }
            }
        };
        let mut new_iter = inserted.into_iter();
        let mut results = Vec::with_capacity(checked.len());
        let (mut accepted, mut duplicates, mut rejected) = (0, 0, 0);
        for c in checked {
            match c {
                Ok(e) => {
                    let new = new_iter.next().unwrap_or(false);
                    let result = if new { "accepted" } else { "duplicate" };
                    if new {
                        accepted += 1;
                    } else {
                        duplicates += 1;
                    }
                    self.count(&e.experiment, &e.arm, &e.metric, result);
                    results.push(Ok(result));
                }
                Err(r) => {
                    rejected += 1;
                    self.count(&r.experiment, &r.arm, &r.metric, r.slug);
                    results.push(Err(r));
                }
            }
        }
        if !batch {
            return match results.pop() {
                Some(Ok(result)) => json_response(StatusCode::OK, &json!({"result": result})),
                Some(Err(r)) => problem(r.status, r.slug, r.detail),
                None => problem(StatusCode::BAD_REQUEST, "malformed", "no event".into()),
            };
        }
        let results: Vec<Value> = results
            .into_iter()
            .map(|r| match r {
                Ok(result) => json!({"result": result}),
                Err(r) => json!({
                    "result": "rejected",
                    "status": r.status.as_u16(),
                    "type": format!("urn:abgate:problem:{}", r.slug),
                    "detail": r.detail,
                }),
            })
            .collect();
        json_response(
            StatusCode::OK,
            &json!({"results": results, "accepted": accepted, "duplicate": duplicates, "rejected": rejected}),
        )
    }

    fn validate(
        &self,
        v: &Value,
        table: &RoutingTable,
        now: u64,
    ) -> Result<FeedbackEvent, Rejection> {
        let reject = |status, slug, detail: String, e: &str, a: &str, m: &str| Rejection {
            status,
            slug,
            detail,
            experiment: e.to_string(),
            arm: a.to_string(),
            metric: m.to_string(),
        };
        const UNKNOWN: &str = "_unknown";
        let malformed = |detail: &str| {
            reject(
                StatusCode::BAD_REQUEST,
                "malformed",
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
        let metric = obj
            .get("metric")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed("`metric` must be a string"))?;
        let value = match obj.get("value") {
            Some(Value::Number(n)) => n
                .as_f64()
                .ok_or_else(|| malformed("`value` must be a finite number"))?,
            Some(Value::Bool(b)) => f64::from(u8::from(*b)),
            _ => return Err(malformed("`value` must be a number")),
        };
        let claims = self.keys.verify(token).map_err(|e| {
            let slug = match e {
                TokenError::UnknownKey(_) => "unknown-key",
                TokenError::Malformed | TokenError::BadSignature => "bad-token",
            };
            reject(
                StatusCode::UNAUTHORIZED,
                slug,
                e.to_string(),
                UNKNOWN,
                UNKNOWN,
                UNKNOWN,
            )
        })?;
        let (exp, arm) = (claims.experiment.as_str(), claims.arm.as_str());
        let Some(route) = table.experiment(exp) else {
            return Err(reject(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown-metric",
                format!("experiment {exp:?} is no longer configured"),
                exp,
                arm,
                "_undeclared",
            ));
        };
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
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "unknown-metric",
                        format!(
                        "experiment {exp:?} declares no feedback metric {metric:?}; declared: {}",
                        if declared.is_empty() { "(none)".to_string() } else { declared.join(", ") }
                    ),
                        exp,
                        arm,
                        "_undeclared",
                    )
                })?;
        let age = now.saturating_sub(claims.issued_at_ms);
        if u128::from(age) > route.attribution_window.as_millis() {
            return Err(reject(
                StatusCode::GONE,
                "expired",
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
        let out_of_range = |detail: String| {
            reject(
                StatusCode::UNPROCESSABLE_ENTITY,
                "out-of-range",
                detail,
                exp,
                arm,
                metric,
            )
        };
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
        Ok(FeedbackEvent {
            token_id: claims.id_hex(),
            metric: metric.to_string(),
            experiment: claims.experiment.clone(),
            arm: claims.arm.clone(),
            value,
            forced: claims.forced,
            issued_at_ms: claims.issued_at_ms,
        })
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn problem(status: StatusCode, slug: &str, detail: String) -> Response<ProxyBody> {
    crate::proxy::problem::problem_response(status, slug, &detail).map(ProxyBody::full)
}

fn too_large(max: usize) -> Response<ProxyBody> {
    problem(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too-large",
        format!("the body is over the {max}-byte limit"),
    )
}

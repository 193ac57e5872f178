//! Batched posting of true outcomes to the proxy's feedback endpoint.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::client::HttpClient;
use super::recorder::Recorder;
use super::spec::FeedbackSpec;

/// Events buffered between the request tasks and the poster; beyond this they are dropped
/// (and counted) rather than slowing the load down.
const QUEUE_CAPACITY: usize = 10_000;

/// One feedback event as posted: `{"token": "...", "metric": "accepted", "value": 1}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeedbackEvent {
    /// The response's `x-abgate-token`.
    pub token: String,
    /// Metric name.
    pub metric: String,
    /// Outcome (integer 0/1) or reward (number).
    pub value: Value,
}

/// Background task that batches and posts events; see [`FeedbackSpec`] for the batching rule.
pub struct FeedbackPoster {
    tx: mpsc::Sender<FeedbackEvent>,
    recorder: Arc<Recorder>,
    task: JoinHandle<()>,
}

struct PostTarget {
    client: HttpClient,
    uri: Uri,
    timeout: Duration,
    recorder: Arc<Recorder>,
}

impl FeedbackPoster {
    /// Starts the poster; each POST is bounded by `timeout`.
    pub fn spawn(
        client: HttpClient,
        uri: Uri,
        spec: &FeedbackSpec,
        timeout: Duration,
        recorder: Arc<Recorder>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let target = PostTarget {
            client,
            uri,
            timeout,
            recorder: recorder.clone(),
        };
        let task = tokio::spawn(run(
            rx,
            target,
            spec.batch_max.clamp(1, 1000),
            spec.flush_interval.max(Duration::from_millis(1)),
        ));
        FeedbackPoster { tx, recorder, task }
    }

    /// A handle for request tasks to queue events.
    pub fn sink(&self) -> FeedbackSink {
        FeedbackSink {
            tx: self.tx.clone(),
            recorder: self.recorder.clone(),
        }
    }

    /// Closes the queue, flushes what is left (for at most one `timeout`) and waits for the
    /// task. The task ends only once every [`FeedbackSink`] has been dropped too.
    pub async fn finish(self) {
        drop(self.tx);
        let _ = self.task.await;
    }
}

/// Cloneable producer side of a [`FeedbackPoster`].
#[derive(Clone)]
pub struct FeedbackSink {
    tx: mpsc::Sender<FeedbackEvent>,
    recorder: Arc<Recorder>,
}

impl FeedbackSink {
    /// Queues an event without waiting; counts it as dropped if the queue is full.
    pub fn offer(&self, event: FeedbackEvent) {
        if self.tx.try_send(event).is_err() {
            self.recorder.feedback_dropped(1);
        }
    }

    /// Counts an event that was selected but had no value to post.
    pub fn skip(&self) {
        self.recorder.feedback_dropped(1);
    }
}

async fn run(
    mut rx: mpsc::Receiver<FeedbackEvent>,
    target: PostTarget,
    batch_max: usize,
    flush_interval: Duration,
) {
    let mut buf = Vec::with_capacity(batch_max);
    let mut tick = tokio::time::interval(flush_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = rx.recv() => match event {
                Some(event) => {
                    buf.push(event);
                    if buf.len() >= batch_max {
                        target.post(&mut buf, None).await;
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                if !buf.is_empty() {
                    target.post(&mut buf, None).await;
                }
            }
        }
    }
    // The load is over: a stuck proxy must not keep us here longer than one timeout.
    let drain_deadline = Instant::now() + target.timeout;
    while !buf.is_empty() {
        let rest = buf.split_off(buf.len().min(batch_max));
        target.post(&mut buf, Some(drain_deadline)).await;
        buf = rest;
    }
}

impl PostTarget {
    /// Posts and clears `buf`, recording the per-event results.
    async fn post(&self, buf: &mut Vec<FeedbackEvent>, deadline: Option<Instant>) {
        let n = buf.len() as u64;
        let body = match serde_json::to_vec(&*buf) {
            Ok(body) => body,
            Err(_) => {
                self.recorder.feedback_dropped(n);
                buf.clear();
                return;
            }
        };
        buf.clear();
        let mut deadline_at = Instant::now() + self.timeout;
        if let Some(d) = deadline {
            if d <= Instant::now() {
                self.recorder.feedback_dropped(n);
                return;
            }
            deadline_at = deadline_at.min(d);
        }
        let mut req = Request::new(Full::new(Bytes::from(body)));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.uri.clone();
        req.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let exchange = async {
            let resp = self.client.request(req).await.ok()?;
            let status = resp.status();
            let bytes = resp.into_body().collect().await.ok()?.to_bytes();
            Some((status, bytes))
        };
        let (accepted, rejected) = match tokio::time::timeout_at(deadline_at, exchange).await {
            Ok(Some((status, bytes))) if status.is_success() => count_results(&bytes, n),
            _ => (0, n),
        };
        self.recorder.feedback_post(n, accepted, rejected);
    }
}

/// Splits the `n` posted events into (accepted, rejected) from a 2xx response body.
///
/// The proxy answers with per-event results; accepted shapes, tried in order:
/// an object with numeric `accepted` and `rejected`; an array of results (top level or under
/// `results`) whose elements count as accepted when they are `true` or have `ok: true`,
/// `accepted: true` or `status` "ok"/"accepted" (missing elements count as rejected);
/// anything else means all `n` were accepted, as the status was 2xx.
pub fn count_results(body: &[u8], n: u64) -> (u64, u64) {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return (n, 0);
    };
    if let (Some(a), Some(r)) = (
        value.get("accepted").and_then(Value::as_u64),
        value.get("rejected").and_then(Value::as_u64),
    ) {
        return (a, r);
    }
    let results = value
        .as_array()
        .or_else(|| value.get("results").and_then(Value::as_array));
    let Some(results) = results else {
        return (n, 0);
    };
    let accepted = results.iter().filter(|r| is_accepted(r)).count() as u64;
    let accepted = accepted.min(n);
    (accepted, n - accepted)
}

fn is_accepted(r: &Value) -> bool {
    r.as_bool() == Some(true)
        || r.get("ok").and_then(Value::as_bool) == Some(true)
        || r.get("accepted").and_then(Value::as_bool) == Some(true)
        || matches!(
            r.get("status").and_then(Value::as_str),
            Some("ok" | "accepted")
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_result_shapes() {
        assert_eq!(count_results(br#"{"accepted":3,"rejected":1}"#, 4), (3, 1));
        assert_eq!(
            count_results(
                br#"{"results":[{"ok":true},{"ok":false,"error":"bad token"}]}"#,
                2
            ),
            (1, 1)
        );
        assert_eq!(
            count_results(br#"[{"status":"accepted"},{"status":"duplicate"}]"#, 2),
            (1, 1)
        );
        assert_eq!(count_results(b"not json", 5), (5, 0));
        assert_eq!(count_results(br#"{"results":[{"ok":true}]}"#, 3), (1, 2));
    }
}

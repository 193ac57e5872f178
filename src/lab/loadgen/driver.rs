//! Open- and closed-loop scheduling of a bounded load run.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::client::{self, HttpClient};
use super::error::LoadError;
use super::feedback::{FeedbackEvent, FeedbackPoster, FeedbackSink};
use super::recorder::{ErrorKind, InFlightGuard, LoadProgress, Recorder, ResponseSample};
use super::report::LoadReport;
use super::request::{abgate_server_timing, arm_of, exchange, RequestTemplate, HEADER_TOKEN};
use super::spec::{loopback_uri, FeedbackValue, LoadMode, LoadSpec, Protocol};
use super::workload::{Reply, Workload};

/// How often progress snapshots are published.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// Runs `spec` to completion and reports. Stops by itself: scheduling ends at `max_requests`
/// or `max_duration`, whichever comes first, and every request (including time queued for a
/// slot) is abandoned as `timeout` at `max_duration + request_timeout` after the start at the
/// latest; the feedback flush adds at most one more `request_timeout`.
pub async fn run(spec: LoadSpec) -> Result<LoadReport, LoadError> {
    run_inner(spec, None, None).await
}

/// Like [`run`], publishing a [`LoadProgress`] snapshot every 100 ms and a final one with
/// `done: true`.
pub async fn run_with_progress(
    spec: LoadSpec,
    progress: watch::Sender<LoadProgress>,
) -> Result<LoadReport, LoadError> {
    run_inner(spec, Some(progress), None).await
}

/// Like [`run`], with each request decided and each answer seen by `workload`
/// instead of the spec's request kind. The spec's target, arrival process,
/// protocol, bounds, timeouts and unit header apply; its `kind`, `model`, `path`,
/// `users`, `seed` and `feedback` are not used. The run also ends once the workload
/// has nothing left to send. The report's `url` is the target.
pub async fn run_workload(
    mut spec: LoadSpec,
    workload: Arc<dyn Workload>,
) -> Result<LoadReport, LoadError> {
    spec.feedback.fraction = 0.0;
    run_inner(spec, None, Some(workload)).await
}

/// Shared by all request tasks of one run.
struct Ctx {
    client: HttpClient,
    template: RequestTemplate,
    recorder: Arc<Recorder>,
    feedback: Option<FeedbackSink>,
    feedback_metric: String,
    feedback_value: FeedbackValue,
    request_timeout: Duration,
    hard_deadline: Instant,
    /// Decides requests instead of `template`'s kind, if set.
    workload: Option<Arc<dyn Workload>>,
    /// Set once the workload has nothing left to send: scheduling stops.
    exhausted: AtomicBool,
}

async fn run_inner(
    spec: LoadSpec,
    progress: Option<watch::Sender<LoadProgress>>,
    workload: Option<Arc<dyn Workload>>,
) -> Result<LoadReport, LoadError> {
    spec.validate()?;
    let uri = loopback_uri(&spec.request_url())?;
    let url = match workload {
        Some(_) => spec.target.clone(),
        None => spec.request_url(),
    };
    let connections = match spec.mode {
        LoadMode::OpenLoop { connections, .. } | LoadMode::ClosedLoop { connections } => {
            connections
        }
    };
    let client = client::build(spec.protocol, connections, spec.request_timeout);
    let recorder = Arc::new(Recorder::default());
    let poster = if spec.feedback.fraction > 0.0 {
        let fb_uri = loopback_uri(&spec.feedback_url())?;
        Some(FeedbackPoster::spawn(
            client.clone(),
            fb_uri,
            &spec.feedback,
            spec.request_timeout,
            recorder.clone(),
        ))
    } else {
        None
    };
    let start = Instant::now();
    let ctx = Arc::new(Ctx {
        client,
        template: RequestTemplate::new(&spec, uri),
        recorder: recorder.clone(),
        feedback: poster.as_ref().map(FeedbackPoster::sink),
        feedback_metric: spec.feedback.metric.clone(),
        feedback_value: spec.feedback.value,
        request_timeout: spec.request_timeout,
        hard_deadline: start + spec.max_duration + spec.request_timeout,
        workload,
        exhausted: AtomicBool::new(false),
    });
    let ticker = progress.clone().map(|tx| {
        let recorder = recorder.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
            loop {
                tick.tick().await;
                tx.send_replace(recorder.progress(start.elapsed(), false));
            }
        })
    });

    let end = start + spec.max_duration;
    let mode: Result<&str, LoadError> = match spec.mode {
        LoadMode::OpenLoop {
            rate_per_s,
            connections,
            max_in_flight,
        } => open_loop(
            &ctx,
            start,
            end,
            spec.max_requests,
            rate_per_s,
            connections,
            max_in_flight,
        )
        .await
        .map(|()| "open_loop"),
        LoadMode::ClosedLoop { connections } => {
            closed_loop(&ctx, end, spec.max_requests, connections).await;
            Ok("closed_loop")
        }
    };
    let duration = start.elapsed();
    // All request tasks are done, so this is the last reference: dropping it releases the
    // feedback sink and lets the poster drain and exit.
    drop(ctx);
    if let Some(poster) = poster {
        poster.finish().await;
    }
    if let Some(ticker) = ticker {
        ticker.abort();
        let _ = ticker.await;
    }
    // Every task is stopped; now a run that could not start reports why.
    let mode = mode?;
    if let Some(tx) = progress {
        tx.send_replace(recorder.progress(duration, true));
    }
    let protocol = match spec.protocol {
        Protocol::Http1 => "http1",
        Protocol::H2 => "h2",
    };
    Ok(recorder.report(url, mode, protocol, duration))
}

/// Releases request `i` at `start + i / rate` (paced by [`pacer`]). A request that is due is
/// released even when the driver is late (with its original timestamp); it then waits for one
/// of `connections` send slots unless `max_in_flight` requests are already outstanding
/// (→ `overloaded`).
async fn open_loop(
    ctx: &Arc<Ctx>,
    start: Instant,
    end: Instant,
    max_requests: u64,
    rate_per_s: f64,
    connections: usize,
    max_in_flight: usize,
) -> Result<(), LoadError> {
    let slots = Arc::new(Semaphore::new(connections));
    let outstanding = Arc::new(Semaphore::new(max_in_flight));
    let mut tasks = JoinSet::new();
    // A late driver finds many requests due at once; `recv` then returns without
    // waiting, and tokio's cooperative budget still yields now and then, so request
    // tasks make progress on a current-thread runtime too (e.g. an in-process demo).
    let mut due = pacer(start, end, max_requests, rate_per_s)?;
    while let Some((i, scheduled)) = due.recv().await {
        if ctx.exhausted.load(Ordering::Relaxed) {
            break;
        }
        ctx.recorder.scheduled.fetch_add(1, Ordering::Relaxed);
        match outstanding.clone().try_acquire_owned() {
            Ok(permit) => {
                let (ctx, slots) = (ctx.clone(), slots.clone());
                tasks.spawn(async move {
                    let _permit = permit;
                    one_request(&ctx, i, scheduled, Some(slots)).await;
                });
            }
            Err(_) => ctx.recorder.error(ErrorKind::Overloaded),
        }
        // Reap finished tasks so the set stays as small as the in-flight count.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Request indices with their scheduled instants, released on time by a dedicated OS
/// thread. tokio's timer wheel has 1 ms resolution: `sleep_until` released requests in
/// 1 ms bursts and added 0–1 ms of scheduling delay to every open-loop latency, more than
/// the proxy overhead being measured. `std::thread::sleep` (hrtimers) wakes within tens of
/// microseconds. The thread ends with the schedule, or at its next release once the
/// receiver is gone (a cancelled run).
fn pacer(
    start: Instant,
    end: Instant,
    max_requests: u64,
    rate_per_s: f64,
) -> Result<mpsc::UnboundedReceiver<(u64, Instant)>, LoadError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (start, end) = (start.into_std(), end.into_std());
    let release = move || {
        for i in 0..max_requests {
            let scheduled = start + Duration::from_secs_f64(i as f64 / rate_per_s);
            if scheduled >= end {
                break;
            }
            let now = std::time::Instant::now();
            if scheduled > now {
                std::thread::sleep(scheduled - now);
            }
            if tx.send((i, Instant::from_std(scheduled))).is_err() {
                break;
            }
        }
    };
    std::thread::Builder::new()
        .name("abgate-load-pacer".into())
        .spawn(release)
        .map_err(|e| LoadError::Pacer(e.to_string()))?;
    Ok(rx)
}

/// `connections` workers claim request indices from a shared counter (so exactly
/// `max_requests` at most are sent) until the counter or `end` is reached.
async fn closed_loop(ctx: &Arc<Ctx>, end: Instant, max_requests: u64, connections: usize) {
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..connections {
        let (ctx, next) = (ctx.clone(), next.clone());
        workers.spawn(async move {
            loop {
                if Instant::now() >= end || ctx.exhausted.load(Ordering::Relaxed) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= max_requests {
                    break;
                }
                ctx.recorder.scheduled.fetch_add(1, Ordering::Relaxed);
                one_request(&ctx, i, Instant::now(), None).await;
            }
        });
    }
    while workers.join_next().await.is_some() {}
}

/// Sends request `index` (after taking a send slot, if any) and records its outcome, with
/// latency measured from `origin`.
async fn one_request(ctx: &Ctx, index: u64, origin: Instant, slots: Option<Arc<Semaphore>>) {
    let rec = &ctx.recorder;
    let _in_flight = InFlightGuard::new(rec);
    let _slot = match slots {
        Some(slots) => {
            match tokio::time::timeout_at(ctx.hard_deadline, slots.acquire_owned()).await {
                Ok(Ok(slot)) => Some(slot),
                // Still queued at the hard deadline (or semaphore closed, which never happens).
                _ => {
                    rec.error(ErrorKind::Timeout);
                    return;
                }
            }
        }
        None => None,
    };
    let (req, draw, keep_body) = match &ctx.workload {
        None => {
            let draw = ctx.template.draw(index);
            (ctx.template.build(draw), Some(draw), false)
        }
        Some(w) => match w.request(index) {
            Some(work) => {
                let keep_body = work.read_body;
                (ctx.template.build_work(work), None, keep_body)
            }
            None => {
                ctx.exhausted.store(true, Ordering::Relaxed);
                rec.scheduled.fetch_sub(1, Ordering::Relaxed);
                return;
            }
        },
    };
    rec.sent.fetch_add(1, Ordering::Relaxed);
    let deadline = (Instant::now() + ctx.request_timeout).min(ctx.hard_deadline);
    let sent = exchange(&ctx.client, req, origin, keep_body);
    match tokio::time::timeout_at(deadline, sent).await {
        Err(_) => rec.error(ErrorKind::Timeout),
        Ok(Err(kind)) => rec.error(kind),
        Ok(Ok(ex)) => {
            rec.response(&ResponseSample {
                status: ex.status,
                arm: arm_of(&ex.headers),
                latency: ex.latency,
                ttfb: ex.ttfb,
                abgate_dur_ms: abgate_server_timing(&ex.headers),
            });
            if let Some(w) = &ctx.workload {
                w.response(
                    index,
                    &Reply {
                        status: ex.status,
                        headers: &ex.headers,
                        body: &ex.body,
                        latency: ex.latency,
                    },
                );
            } else if draw.is_some_and(|d| d.feedback) && (200..300).contains(&ex.status) {
                ctx.offer_feedback(&ex.headers);
            }
        }
    }
}

impl Ctx {
    /// Queues feedback for a successful response that carries a proxy token.
    fn offer_feedback(&self, headers: &HeaderMap) {
        let Some(sink) = &self.feedback else { return };
        let Some(token) = headers.get(HEADER_TOKEN).and_then(|v| v.to_str().ok()) else {
            // Not routed through abgate: there is nothing to attribute feedback to.
            return;
        };
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let value: Option<Value> = match self.feedback_value {
            FeedbackValue::Outcome => header(crate::lab::mock::HEADER_OUTCOME)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|v| json!(v)),
            FeedbackValue::Reward => header(crate::lab::mock::HEADER_REWARD)
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite())
                .map(|v| json!(v)),
        };
        match value {
            Some(value) => sink.offer(FeedbackEvent {
                token: token.to_string(),
                metric: self.feedback_metric.clone(),
                value,
            }),
            None => sink.skip(),
        }
    }
}

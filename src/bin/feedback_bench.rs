//! `abgate-feedback-bench`: bounded measurements of abgate's feedback endpoint, plus a
//! traffic spreader for the controller CPU measurement.
//!
//! ```text
//! # feedback ingestion: tokens first, then (a) batched throughput, (b) single-event latency
//! abgate-feedback-bench feedback --target http://127.0.0.1:28200 --path /predict \
//!     --tokens 30000 --metric-prefix m --metrics 10 \
//!     --clients 8 --batch 100 --batched-duration 10s \
//!     --single-rate 2000 --single-duration 10s --server-pid 1234
//!
//! # open-loop traffic spread round-robin over N experiment paths ({} = 0..N-1)
//! abgate-feedback-bench spread --target http://127.0.0.1:28200 \
//!     --path-template /v2/models/m{}/infer --paths 100 --rate 200 --duration 30s
//! ```
//!
//! Every event posted is unique: event `i` is (token `i % T`, metric `m{i / T}`), handed out
//! from one counter, so a `duplicate` answer means the server miscounted. Accepted events are
//! counted from the responses' `accepted` field (batches) or `result` (single events).
//! Single-event latency is measured from each event's *scheduled* send time (open loop, no
//! coordinated omission) into an HDR histogram. Only `http://127.0.0.1` targets are accepted;
//! every phase is bounded by a count and a duration. Requests are driven by the load driver
//! (`abgate::lab::loadgen`, one [`Workload`] per phase), which owns the schedule, the bounds,
//! the timeouts and the timing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use abgate::lab::loadgen::{
    loopback_uri, parse_duration_flag, run_workload, LoadMode, LoadReport, LoadSpec, Reply,
    RequestKind, WorkRequest, Workload, HEADER_TOKEN,
};
use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use http::uri::PathAndQuery;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    name = "abgate-feedback-bench",
    about = "Bounded feedback-ingestion benchmark for abgate (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Obtain tokens through abgate, then measure batched throughput and single-event latency.
    Feedback(FeedbackArgs),
    /// Open-loop requests spread round-robin over several paths (controller CPU runs).
    Spread(SpreadArgs),
}

#[derive(clap::Args)]
struct FeedbackArgs {
    /// abgate's data-plane base URL; must be http://127.0.0.1:PORT.
    #[arg(long)]
    target: String,
    /// Path routed to the experiment (POSTed with a small JSON body).
    #[arg(long, default_value = "/predict")]
    path: String,
    /// Feedback endpoint path.
    #[arg(long, default_value = "/_abgate/v1/feedback")]
    feedback_path: String,
    /// Tokens to obtain (requests sent through abgate).
    #[arg(long, default_value_t = 30_000)]
    tokens: u64,
    /// Concurrent requests while obtaining tokens.
    #[arg(long, default_value_t = 32)]
    token_concurrency: usize,
    /// Declared feedback metrics are PREFIX0 .. PREFIX{N-1}.
    #[arg(long, default_value = "m")]
    metric_prefix: String,
    /// Number of declared binary feedback metrics (events per token).
    #[arg(long, default_value_t = 10)]
    metrics: u64,
    /// (a) concurrent batch clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// (a) events per POST.
    #[arg(long, default_value_t = 100)]
    batch: u64,
    /// (a) time bound.
    #[arg(long, default_value = "10s", value_parser = parse_duration_flag)]
    batched_duration: Duration,
    /// (b) open-loop single events per second.
    #[arg(long, default_value_t = 2000.0)]
    single_rate: f64,
    /// (b) scheduling time bound.
    #[arg(long, default_value = "10s", value_parser = parse_duration_flag)]
    single_duration: Duration,
    /// (b) cap on in-flight single events; beyond it an event counts as `overloaded`.
    #[arg(long, default_value_t = 2048)]
    max_in_flight: usize,
    /// Per-request timeout.
    #[arg(long, default_value = "10s", value_parser = parse_duration_flag)]
    timeout: Duration,
    /// abgate's pid: its CPU time (utime+stime, /proc) is reported per phase.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Skip phase (a) or (b).
    #[arg(long)]
    skip_batched: bool,
    #[arg(long)]
    skip_single: bool,
}

#[derive(clap::Args)]
struct SpreadArgs {
    /// abgate's data-plane base URL; must be http://127.0.0.1:PORT.
    #[arg(long)]
    target: String,
    /// Path template; `{}` is replaced by 0..paths-1.
    #[arg(long, default_value = "/v2/models/m{}/infer")]
    path_template: String,
    /// Number of distinct paths.
    #[arg(long, default_value_t = 100)]
    paths: usize,
    /// Open-loop requests per second (round-robin over the paths).
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Scheduling time bound.
    #[arg(long, default_value = "30s", value_parser = parse_duration_flag)]
    duration: Duration,
    /// Request count bound.
    #[arg(long, default_value_t = 20_000)]
    max_requests: u64,
    /// Per-request timeout.
    #[arg(long, default_value = "5s", value_parser = parse_duration_flag)]
    timeout: Duration,
    /// Simulated users (x-user-id user-0 .. user-N-1, round-robin).
    #[arg(long, default_value_t = 10_000)]
    users: u64,
}

/// The path and query of `base` + `path`, accepted only on `http://127.0.0.1[:port]`
/// (stricter than the load driver's loopback check).
fn local_path(base: &str, path: &str) -> anyhow::Result<PathAndQuery> {
    let url = format!("{}{}", base.trim_end_matches('/'), path);
    let uri = loopback_uri(&url)?;
    if uri.host() != Some("127.0.0.1") {
        bail!("refusing `{url}`: only http://127.0.0.1 targets are allowed");
    }
    Ok(uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/")))
}

/// Runs one bounded phase on the load driver; a phase with nothing to schedule (no
/// requests or no time) sends nothing and reports nothing.
async fn drive(spec: LoadSpec, workload: Arc<dyn Workload>) -> anyhow::Result<LoadReport> {
    if spec.max_requests == 0 || spec.max_duration.is_zero() {
        return Ok(LoadReport::default());
    }
    Ok(run_workload(spec, workload).await?)
}

/// Requests that got no response at all (connect, timeout, reset).
fn transport_errors(r: &LoadReport) -> u64 {
    r.errors.connect + r.errors.timeout + r.errors.io
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// utime+stime of a process in seconds (all threads), from /proc/PID/stat.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the comm: state is field 3 (index 0), utime 14 (index 11), stime 15 (index 12).
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // CLK_TCK is 100 on every Linux this runs on.
    Some(ticks / 100.0)
}

/// CPU seconds of the server's feedback writer thread (comm `abgate-feedback`, truncated).
fn writer_cpu_seconds(pid: &str) -> Option<f64> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let tid = task.file_name().to_string_lossy().to_string();
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.starts_with("abgate-feedback") {
            return cpu_seconds(&format!("{pid}/task/{tid}"));
        }
    }
    None
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// CPU seconds used by the server and by this process over a phase.
struct CpuMeter {
    server: Option<String>,
    s0: Option<f64>,
    w0: Option<f64>,
    c0: Option<f64>,
    t0: Instant,
}

impl CpuMeter {
    fn start(server_pid: Option<u32>) -> CpuMeter {
        let server = server_pid.map(|p| p.to_string());
        CpuMeter {
            s0: server.as_deref().and_then(cpu_seconds),
            w0: server.as_deref().and_then(writer_cpu_seconds),
            c0: cpu_seconds("self"),
            server,
            t0: Instant::now(),
        }
    }

    /// `{server_cores, bench_cores}`: CPU seconds per wall second.
    fn stop(&self) -> Value {
        let wall = self.t0.elapsed().as_secs_f64().max(1e-9);
        let s1 = self.server.as_deref().and_then(cpu_seconds);
        let w1 = self.server.as_deref().and_then(writer_cpu_seconds);
        let c1 = cpu_seconds("self");
        let d = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => json!(((b - a) / wall * 1000.0).round() / 1000.0),
            _ => Value::Null,
        };
        json!({
            "server_cores": d(self.s0, s1),
            "writer_thread_cores": d(self.w0, w1),
            "bench_cores": d(self.c0, c1),
            "wall_s": wall,
        })
    }
}

/// The event space: event `i` is (token `i % T`, metric `i / T`).
struct Events {
    tokens: Vec<String>,
    metrics: Vec<String>,
    next: AtomicU64,
}

impl Events {
    fn capacity(&self) -> u64 {
        self.tokens.len() as u64 * self.metrics.len() as u64
    }

    /// Takes `n` fresh event indices below `limit`; fewer (or none) near the end.
    fn take(&self, n: u64, limit: u64) -> std::ops::Range<u64> {
        let start = self.next.fetch_add(n, Ordering::Relaxed);
        start.min(limit)..(start + n).min(limit)
    }

    fn write(&self, i: u64, out: &mut String) {
        let t = self.tokens.len() as u64;
        let token = &self.tokens[(i % t) as usize];
        let metric = &self.metrics[(i / t) as usize];
        // Tokens are URL-safe base64 and metric names plain, so no JSON escaping is needed.
        out.push_str("{\"token\":\"");
        out.push_str(token);
        out.push_str("\",\"metric\":\"");
        out.push_str(metric);
        out.push_str("\",\"value\":");
        out.push_str(if i.is_multiple_of(3) { "0" } else { "1" });
        out.push('}');
    }
}

fn quantiles_ms(h: &Histogram<u64>) -> Value {
    let q = |p: f64| (h.value_at_quantile(p) as f64 / 10.0).round() / 100.0;
    json!({
        "count": h.len(),
        "p50": q(0.50), "p90": q(0.90), "p99": q(0.99), "p999": q(0.999),
        "max": (h.max() as f64 / 10.0).round() / 100.0,
        "mean": (h.mean() / 10.0).round() / 100.0,
    })
}

/// Requests through abgate, one per user `user-<i>`, keeping each 200's token.
struct TokenRequests {
    path: PathAndQuery,
    body: Bytes,
    wanted: u64,
    tokens: Mutex<Vec<String>>,
    failures: AtomicU64,
}

impl Workload for TokenRequests {
    fn request(&self, index: u64) -> Option<WorkRequest> {
        if lock(&self.tokens).len() as u64 >= self.wanted {
            return None;
        }
        Some(WorkRequest {
            path: self.path.clone(),
            body: self.body.clone(),
            user: Some(index),
            read_body: false,
        })
    }

    fn response(&self, _index: u64, reply: &Reply<'_>) {
        let token = reply
            .headers
            .get(HEADER_TOKEN)
            .and_then(|v| v.to_str().ok());
        match (reply.status, token) {
            (200, Some(t)) => lock(&self.tokens).push(t.to_string()),
            _ => {
                self.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn obtain_tokens(a: &FeedbackArgs) -> anyhow::Result<Vec<String>> {
    let work = Arc::new(TokenRequests {
        path: local_path(&a.target, &a.path)?,
        body: RequestKind::Predict.body(""),
        wanted: a.tokens,
        tokens: Mutex::new(Vec::with_capacity(a.tokens as usize)),
        failures: AtomicU64::new(0),
    });
    // Bounded: N requests plus at most as many retries, and two minutes.
    let report = drive(
        LoadSpec {
            mode: LoadMode::ClosedLoop {
                connections: a.token_concurrency.max(1),
            },
            max_requests: a.tokens * 2,
            max_duration: Duration::from_secs(120),
            request_timeout: a.timeout,
            ..LoadSpec::new(&a.target)
        },
        work.clone(),
    )
    .await?;
    let mut tokens = std::mem::take(&mut *lock(&work.tokens));
    tokens.truncate(a.tokens as usize);
    let f = work.failures.load(Ordering::Relaxed) + transport_errors(&report);
    if (tokens.len() as u64) < a.tokens {
        bail!(
            "obtained only {} of {} tokens ({f} failed requests)",
            tokens.len(),
            a.tokens
        );
    }
    Ok(tokens)
}

#[derive(Default)]
struct Tally {
    posts: u64,
    events_sent: u64,
    accepted: u64,
    duplicate: u64,
    rejected: u64,
    http_errors: u64,
    transport_errors: u64,
    overloaded: u64,
}

impl Tally {
    fn to_json(&self) -> Value {
        json!({
            "posts": self.posts, "events_sent": self.events_sent, "accepted": self.accepted,
            "duplicate": self.duplicate, "rejected": self.rejected,
            "http_errors": self.http_errors, "transport_errors": self.transport_errors,
            "overloaded": self.overloaded,
        })
    }
}

/// Feedback POSTs of fresh events: `batch` events as a JSON array, or (`batch`
/// `None`) one event as an object, tallied from the answers.
struct EventPosts {
    path: PathAndQuery,
    events: Arc<Events>,
    batch: Option<u64>,
    limit: u64,
    tally: Mutex<Tally>,
    /// Latency of 200 answers (µs).
    hist: Mutex<Histogram<u64>>,
    /// When the last event was handed out: the end of scheduling.
    last_request: Mutex<Option<Instant>>,
}

impl EventPosts {
    fn new(
        path: PathAndQuery,
        events: &Arc<Events>,
        batch: Option<u64>,
        limit: u64,
        hist: Histogram<u64>,
    ) -> Self {
        EventPosts {
            path,
            events: events.clone(),
            batch,
            limit,
            tally: Mutex::new(Tally::default()),
            hist: Mutex::new(hist),
            last_request: Mutex::new(None),
        }
    }
}

impl Workload for EventPosts {
    fn request(&self, _index: u64) -> Option<WorkRequest> {
        let range = self.events.take(self.batch.unwrap_or(1), self.limit);
        if range.is_empty() {
            return None;
        }
        let n = range.end - range.start;
        let mut body = String::with_capacity(n as usize * 200);
        match self.batch {
            Some(_) => {
                body.push('[');
                for i in range {
                    if body.len() > 1 {
                        body.push(',');
                    }
                    self.events.write(i, &mut body);
                }
                body.push(']');
            }
            None => self.events.write(range.start, &mut body),
        }
        {
            let mut t = lock(&self.tally);
            t.posts += 1;
            t.events_sent += n;
        }
        *lock(&self.last_request) = Some(Instant::now());
        Some(WorkRequest {
            path: self.path.clone(),
            body: Bytes::from(body),
            user: None,
            read_body: true,
        })
    }

    fn response(&self, _index: u64, reply: &Reply<'_>) {
        let mut t = lock(&self.tally);
        match reply.status {
            200 => {
                let v: Value = serde_json::from_slice(reply.body).unwrap_or(Value::Null);
                match self.batch {
                    Some(_) => {
                        let field = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
                        t.accepted += field("accepted");
                        t.duplicate += field("duplicate");
                        t.rejected += field("rejected");
                    }
                    None => match v.get("result").and_then(Value::as_str) {
                        Some("accepted") => t.accepted += 1,
                        Some("duplicate") => t.duplicate += 1,
                        _ => t.rejected += 1,
                    },
                }
                let us = reply.latency.as_micros() as u64;
                let _ = lock(&self.hist).record(us.max(1));
            }
            503 => t.overloaded += 1,
            _ => t.http_errors += 1,
        }
    }
}

/// The tally with the driver's counts of requests that got no answer (transport)
/// or were never sent (over the in-flight cap).
fn final_tally(work: &EventPosts, report: &LoadReport) -> Value {
    let mut t = lock(&work.tally);
    t.transport_errors += transport_errors(report);
    t.overloaded += report.errors.overloaded;
    t.to_json()
}

/// (a): C clients, each POSTing B-event arrays back to back.
async fn batched(a: &FeedbackArgs, events: &Arc<Events>, limit: u64) -> anyhow::Result<Value> {
    let work = Arc::new(EventPosts::new(
        local_path(&a.target, &a.feedback_path)?,
        events,
        Some(a.batch),
        limit,
        Histogram::<u64>::new(3)?,
    ));
    let cpu = CpuMeter::start(a.server_pid);
    let started = Instant::now();
    let report = drive(
        LoadSpec {
            mode: LoadMode::ClosedLoop {
                connections: a.clients.max(1),
            },
            // Every POST but the last takes a full batch, so this never cuts a run short.
            max_requests: limit.div_ceil(a.batch),
            max_duration: a.batched_duration,
            request_timeout: a.timeout,
            ..LoadSpec::new(&a.target)
        },
        work.clone(),
    )
    .await?;
    let elapsed = started.elapsed().as_secs_f64();
    let tally = final_tally(&work, &report);
    let accepted = tally["accepted"].as_u64().unwrap_or(0);
    Ok(json!({
        "clients": a.clients, "batch": a.batch, "elapsed_s": elapsed,
        "accepted_per_s": (accepted as f64 / elapsed).round(),
        "tally": tally,
        "post_latency_ms": quantiles_ms(&lock(&work.hist)),
        "cpu": cpu.stop(),
    }))
}

/// (b): open loop at `single_rate`, one event per POST, latency from the scheduled time.
async fn single(a: &FeedbackArgs, events: &Arc<Events>, limit: u64) -> anyhow::Result<Value> {
    let work = Arc::new(EventPosts::new(
        local_path(&a.target, &a.feedback_path)?,
        events,
        None,
        limit,
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?,
    ));
    let in_flight = a.max_in_flight.max(1);
    let cpu = CpuMeter::start(a.server_pid);
    let origin = Instant::now();
    let report = drive(
        LoadSpec {
            mode: LoadMode::OpenLoop {
                rate_per_s: a.single_rate,
                // As many send slots as the cap: an admitted event is sent at once.
                connections: in_flight,
                max_in_flight: in_flight,
            },
            max_requests: (a.single_rate * a.single_duration.as_secs_f64()) as u64,
            max_duration: a.single_duration,
            request_timeout: a.timeout,
            ..LoadSpec::new(&a.target)
        },
        work.clone(),
    )
    .await?;
    let scheduled_for = lock(&work.last_request).map_or(0.0, |t| (t - origin).as_secs_f64());
    let tally = final_tally(&work, &report);
    let accepted = tally["accepted"].as_u64().unwrap_or(0);
    Ok(json!({
        "rate": a.single_rate, "scheduled_s": scheduled_for,
        "achieved_per_s": (accepted as f64 / scheduled_for).round(),
        "tally": tally,
        "latency_ms": quantiles_ms(&lock(&work.hist)),
        "cpu": cpu.stop(),
    }))
}

async fn feedback(a: FeedbackArgs) -> anyhow::Result<()> {
    if a.metrics == 0 || a.tokens == 0 || a.batch == 0 || a.batch > 1000 {
        bail!("need --tokens > 0, --metrics > 0 and 1 <= --batch <= 1000");
    }
    if !(a.single_rate.is_finite() && a.single_rate > 0.0 && a.single_rate <= 100_000.0) {
        bail!("--single-rate must be in (0, 100000]");
    }
    let load_start = loadavg();
    let t0 = Instant::now();
    let cpu = CpuMeter::start(a.server_pid);
    let tokens = obtain_tokens(&a).await.context("obtaining tokens")?;
    let token_phase = json!({
        "tokens": tokens.len(), "elapsed_s": t0.elapsed().as_secs_f64(), "cpu": cpu.stop(),
    });
    eprintln!(
        "[bench] {} tokens in {:.1}s; load {}",
        tokens.len(),
        t0.elapsed().as_secs_f64(),
        loadavg()
    );
    let events = Arc::new(Events {
        tokens,
        metrics: (0..a.metrics)
            .map(|m| format!("{}{m}", a.metric_prefix))
            .collect(),
        next: AtomicU64::new(0),
    });
    let capacity = events.capacity();
    // The single-event phase's events are reserved from the end of the space.
    let single_need = if a.skip_single {
        0
    } else {
        (a.single_rate * a.single_duration.as_secs_f64()) as u64 + 1
    };
    let batched_limit = capacity.saturating_sub(single_need);
    let mut report = json!({
        "target": a.target, "metrics_per_token": a.metrics, "event_space": capacity,
        "loadavg_start": load_start, "token_phase": token_phase,
    });
    if !a.skip_batched {
        let load = loadavg();
        let r = batched(&a, &events, batched_limit).await?;
        eprintln!(
            "[bench] batched: {} accepted/s  {}",
            r["accepted_per_s"], r["tally"]
        );
        report["batched"] = r;
        report["batched"]["loadavg_before"] = json!(load);
        report["batched"]["loadavg_after"] = json!(loadavg());
        report["batched"]["bounded_by_event_space"] =
            json!(events.next.load(Ordering::Relaxed) >= batched_limit);
    }
    if !a.skip_single {
        // Single events start after everything the batched phase could have used.
        events.next.store(batched_limit, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let load = loadavg();
        let r = single(&a, &events, capacity).await?;
        eprintln!(
            "[bench] single: latency {}  {}",
            r["latency_ms"], r["tally"]
        );
        report["single"] = r;
        report["single"]["loadavg_before"] = json!(load);
        report["single"]["loadavg_after"] = json!(loadavg());
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// Requests round-robin over the paths, user `user-<k mod users>` for request `k`.
struct Spread {
    paths: Vec<PathAndQuery>,
    body: Bytes,
    users: u64,
    ok: AtomicU64,
    failed: AtomicU64,
}

impl Workload for Spread {
    fn request(&self, index: u64) -> Option<WorkRequest> {
        Some(WorkRequest {
            path: self.paths[(index % self.paths.len() as u64) as usize].clone(),
            body: self.body.clone(),
            user: Some(index % self.users),
            read_body: false,
        })
    }

    fn response(&self, _index: u64, reply: &Reply<'_>) {
        let count = if reply.status == 200 {
            &self.ok
        } else {
            &self.failed
        };
        count.fetch_add(1, Ordering::Relaxed);
    }
}

async fn spread(a: SpreadArgs) -> anyhow::Result<()> {
    if !(a.rate.is_finite() && a.rate > 0.0 && a.rate <= 20_000.0) || a.paths == 0 {
        bail!("need 0 < --rate <= 20000 and --paths > 0");
    }
    if !a.path_template.contains("{}") {
        bail!("--path-template needs a `{{}}`");
    }
    let paths: Vec<PathAndQuery> = (0..a.paths)
        .map(|i| local_path(&a.target, &a.path_template.replace("{}", &i.to_string())))
        .collect::<anyhow::Result<_>>()?;
    let work = Arc::new(Spread {
        paths,
        body: RequestKind::Kserve.body(""),
        users: a.users.max(1),
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let total = ((a.rate * a.duration.as_secs_f64()) as u64).min(a.max_requests);
    let origin = Instant::now();
    let report = drive(
        LoadSpec {
            mode: LoadMode::OpenLoop {
                rate_per_s: a.rate,
                connections: 512,
                max_in_flight: 512,
            },
            max_requests: total,
            max_duration: a.duration,
            request_timeout: a.timeout,
            ..LoadSpec::new(&a.target)
        },
        work.clone(),
    )
    .await?;
    println!(
        "{}",
        json!({"scheduled": total, "ok": work.ok.load(Ordering::Relaxed),
               "failed": work.failed.load(Ordering::Relaxed) + transport_errors(&report),
               "skipped": report.errors.overloaded,
               "elapsed_s": origin.elapsed().as_secs_f64()})
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Feedback(a) => feedback(a).await,
        Cmd::Spread(a) => spread(a).await,
    }
}

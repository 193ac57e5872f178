//! Per-arm outcome recorders.
//!
//! Owns: counting what happened to each routed request, per (experiment, arm),
//! with atomics only. Recorders live in a [`RecorderRegistry`] keyed by names so
//! they outlive routing-table swaps: reweighting keeps counts, a renamed arm
//! starts fresh.
//!
//! Forced requests (arm chosen by the override header) are kept in a separate
//! [`OutcomeSet`] so statistics can exclude them while `/metrics` counts both.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;

use super::exposition::{ArmSeries, SecondsHistogram, GRPC_CODES};
use super::histogram::{AtomicHistogram, HistogramSnapshot, HistogramState};
use super::metrics::{MetricCell, MetricSums};
use super::scan::{Finish, Inference};
use crate::telemetry::Telemetry;

/// HTTP status class of the response abgate sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    Informational,
    Success,
    Redirect,
    ClientError,
    ServerError,
}

impl StatusClass {
    pub const ALL: [StatusClass; 5] = [
        StatusClass::Informational,
        StatusClass::Success,
        StatusClass::Redirect,
        StatusClass::ClientError,
        StatusClass::ServerError,
    ];

    pub fn of(status: http::StatusCode) -> StatusClass {
        match status.as_u16() {
            100..=199 => StatusClass::Informational,
            200..=299 => StatusClass::Success,
            300..=399 => StatusClass::Redirect,
            400..=499 => StatusClass::ClientError,
            _ => StatusClass::ServerError,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            StatusClass::Informational => "1xx",
            StatusClass::Success => "2xx",
            StatusClass::Redirect => "3xx",
            StatusClass::ClientError => "4xx",
            StatusClass::ServerError => "5xx",
        }
    }
}

/// Why a request did not complete normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The backend refused or failed the TCP connection.
    ConnectRefused,
    /// The backend did not accept the connection in time.
    ConnectTimeout,
    /// No response headers within the response timeout.
    ResponseTimeout,
    /// The connection broke (before or during the response body).
    Reset,
    /// The backend answered with something that is not valid HTTP.
    BadResponse,
    /// The client went away before the response was complete.
    ClientGone,
}

impl FailureKind {
    pub const ALL: [FailureKind; 6] = [
        FailureKind::ConnectRefused,
        FailureKind::ConnectTimeout,
        FailureKind::ResponseTimeout,
        FailureKind::Reset,
        FailureKind::BadResponse,
        FailureKind::ClientGone,
    ];

    pub fn label(self) -> &'static str {
        match self {
            FailureKind::ConnectRefused => "connect_refused",
            FailureKind::ConnectTimeout => "connect_timeout",
            FailureKind::ResponseTimeout => "response_timeout",
            FailureKind::Reset => "reset",
            FailureKind::BadResponse => "bad_response",
            FailureKind::ClientGone => "client_gone",
        }
    }

    /// Whether this counts as the arm's fault for the `error` metric
    /// (a client leaving is not the model's failure).
    pub fn is_upstream_fault(self) -> bool {
        !matches!(self, FailureKind::ClientGone)
    }
}

/// Counts for one population of requests (assigned or forced) of one arm.
#[derive(Default)]
pub struct OutcomeSet {
    classes: [AtomicU64; 5],
    failures: [AtomicU64; 6],
    /// Requests whose response was a 5xx or that failed in transport (each request once).
    errors: AtomicU64,
    /// Requests whose client left before any response head was sent.
    abandoned: AtomicU64,
    /// Requests whose latency exceeded the experiment's `slow_threshold`.
    slow: AtomicU64,
    latency: AtomicHistogram,
    ttfb: AtomicHistogram,
    inference: InferenceSet,
}

/// What the response scanner read from one population's responses: token
/// usage, cost, time to first token, gaps between tokens, how streams ended.
/// Each is counted over the responses that reported it (a stream without a
/// usage chunk adds no token observation), never over unparsed ones.
#[derive(Default)]
pub struct InferenceSet {
    prompt_tokens: MetricCell,
    completion_tokens: MetricCell,
    /// Per response, in the config's `currency`; only backends with a `price`.
    cost: MetricCell,
    /// Time to the first event with generated content, µs (streams).
    ttft: AtomicHistogram,
    /// Per stream, the mean gap between content events, µs.
    itl: AtomicHistogram,
    /// Streams whose end the backend decided (the client stayed)...
    streams: AtomicU64,
    /// ...and of those, the ones that ended before `[DONE]`, a finish reason
    /// or a terminal event.
    incomplete: AtomicU64,
    /// Responses that said why they stopped...
    finished: AtomicU64,
    /// ...and of those, the ones cut by the token limit.
    finish_length: AtomicU64,
    /// Responses the scanner could not read.
    unparsed: AtomicU64,
}

/// A copy of an [`InferenceSet`].
#[derive(Debug, Clone)]
pub struct InferenceSnapshot {
    pub prompt_tokens: MetricSums,
    pub completion_tokens: MetricSums,
    pub cost: MetricSums,
    pub ttft: HistogramSnapshot,
    pub itl: HistogramSnapshot,
    pub streams: u64,
    pub incomplete: u64,
    pub finished: u64,
    pub finish_length: u64,
    pub unparsed: u64,
}

/// An [`InferenceSet`]'s contents for the store (absent in state saved
/// before abgate scanned responses, hence the defaults).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct InferenceState {
    pub prompt_tokens: MetricSums,
    pub completion_tokens: MetricSums,
    pub cost: MetricSums,
    pub ttft: HistogramState,
    pub itl: HistogramState,
    pub streams: u64,
    pub incomplete: u64,
    pub finished: u64,
    pub finish_length: u64,
    pub unparsed: u64,
}

impl InferenceSet {
    fn record(&self, r: &Inference, cost: Option<f64>) {
        if let Some(t) = r.prompt_tokens {
            self.prompt_tokens.record(t as f64);
        }
        if let Some(t) = r.completion_tokens {
            self.completion_tokens.record(t as f64);
        }
        if let Some(c) = cost {
            self.cost.record(c);
        }
        if let Some(us) = r.ttft_us {
            self.ttft.record(us);
        }
        if let Some(us) = r.itl_us {
            self.itl.record(us);
        }
        if let Some(complete) = r.complete {
            self.streams.fetch_add(1, Relaxed);
            if !complete {
                self.incomplete.fetch_add(1, Relaxed);
            }
        }
        if let Some(f) = r.finish {
            self.finished.fetch_add(1, Relaxed);
            if f == Finish::Length {
                self.finish_length.fetch_add(1, Relaxed);
            }
        }
    }

    fn snapshot(&self) -> InferenceSnapshot {
        InferenceSnapshot {
            prompt_tokens: self.prompt_tokens.sums(),
            completion_tokens: self.completion_tokens.sums(),
            cost: self.cost.sums(),
            ttft: self.ttft.snapshot(),
            itl: self.itl.snapshot(),
            streams: self.streams.load(Relaxed),
            incomplete: self.incomplete.load(Relaxed),
            finished: self.finished.load(Relaxed),
            finish_length: self.finish_length.load(Relaxed),
            unparsed: self.unparsed.load(Relaxed),
        }
    }

    fn state(&self) -> InferenceState {
        InferenceState {
            prompt_tokens: self.prompt_tokens.sums(),
            completion_tokens: self.completion_tokens.sums(),
            cost: self.cost.sums(),
            ttft: self.ttft.state(),
            itl: self.itl.state(),
            streams: self.streams.load(Relaxed),
            incomplete: self.incomplete.load(Relaxed),
            finished: self.finished.load(Relaxed),
            finish_length: self.finish_length.load(Relaxed),
            unparsed: self.unparsed.load(Relaxed),
        }
    }

    fn restore(&self, s: &InferenceState) {
        self.prompt_tokens.restore(s.prompt_tokens);
        self.completion_tokens.restore(s.completion_tokens);
        self.cost.restore(s.cost);
        self.ttft.restore(&s.ttft);
        self.itl.restore(&s.itl);
        self.streams.fetch_add(s.streams, Relaxed);
        self.incomplete.fetch_add(s.incomplete, Relaxed);
        self.finished.fetch_add(s.finished, Relaxed);
        self.finish_length.fetch_add(s.finish_length, Relaxed);
        self.unparsed.fetch_add(s.unparsed, Relaxed);
    }
}

/// A point-in-time copy of an [`OutcomeSet`].
#[derive(Debug, Clone)]
pub struct OutcomeSnapshot {
    /// Responses by [`StatusClass::ALL`] order.
    pub classes: [u64; 5],
    /// Failures by [`FailureKind::ALL`] order.
    pub failures: [u64; 6],
    pub errors: u64,
    pub abandoned: u64,
    pub slow: u64,
    pub latency: HistogramSnapshot,
    pub ttfb: HistogramSnapshot,
    pub inference: InferenceSnapshot,
}

impl OutcomeSnapshot {
    /// Requests that got a response head plus those whose client left before one
    /// (every upstream failure produces a 502/504 head, so it is in `classes`).
    pub fn requests(&self) -> u64 {
        self.classes.iter().sum::<u64>() + self.abandoned
    }

    pub fn class(&self, class: StatusClass) -> u64 {
        self.classes[class as usize]
    }

    pub fn failure(&self, kind: FailureKind) -> u64 {
        self.failures[kind as usize]
    }
}

/// An [`OutcomeSet`]'s counts and running sums, without histogram buckets:
/// what the controller reads at every look (a full [`OutcomeSnapshot`] copies
/// four histograms of 672 buckets each).
#[derive(Debug, Clone, Copy)]
pub struct OutcomeTotals {
    /// Responses by [`StatusClass::ALL`] order.
    pub classes: [u64; 5],
    pub errors: u64,
    pub abandoned: u64,
    pub slow: u64,
    pub latency: MetricSums,
    pub ttfb: MetricSums,
    pub prompt_tokens: MetricSums,
    pub completion_tokens: MetricSums,
    pub cost: MetricSums,
    pub ttft: MetricSums,
    pub itl: MetricSums,
    pub streams: u64,
    pub incomplete: u64,
    pub finished: u64,
    pub finish_length: u64,
}

impl OutcomeTotals {
    /// As [`OutcomeSnapshot::requests`].
    pub fn requests(&self) -> u64 {
        self.classes.iter().sum::<u64>() + self.abandoned
    }
}

/// An [`OutcomeSet`]'s counts for the store.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OutcomeState {
    pub classes: [u64; 5],
    pub failures: [u64; 6],
    pub errors: u64,
    pub abandoned: u64,
    pub slow: u64,
    pub latency: HistogramState,
    pub ttfb: HistogramState,
    #[serde(default)]
    pub inference: InferenceState,
}

/// An arm's counts for the store, so a restart does not zero its statistics.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ArmState {
    pub assigned: OutcomeState,
    pub forced: OutcomeState,
    /// Sums of the arm's response-header metrics (feedback metrics are rebuilt
    /// from the feedback log instead, so they are not saved here).
    #[serde(default)]
    pub header_metrics: std::collections::BTreeMap<String, super::metrics::MetricSums>,
    /// In a fleet only: the sums of the feedback this replica accepted, for
    /// the other replicas to add (never restored by the replica itself: its
    /// own are rebuilt from the feedback log, which a crash never loses).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub feedback_metrics: std::collections::BTreeMap<String, super::metrics::MetricSums>,
    /// A shadow arm's pairs with its primary twins, so a canary's shadow
    /// step keeps its evidence across a restart like a live step does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pairs: Option<super::pairs::PairSnapshot>,
}

impl OutcomeSet {
    fn state(&self) -> OutcomeState {
        OutcomeState {
            classes: std::array::from_fn(|i| self.classes[i].load(Relaxed)),
            failures: std::array::from_fn(|i| self.failures[i].load(Relaxed)),
            errors: self.errors.load(Relaxed),
            abandoned: self.abandoned.load(Relaxed),
            slow: self.slow.load(Relaxed),
            latency: self.latency.state(),
            ttfb: self.ttfb.state(),
            inference: self.inference.state(),
        }
    }

    fn restore(&self, s: &OutcomeState) {
        for (slot, v) in self.classes.iter().zip(s.classes) {
            slot.fetch_add(v, Relaxed);
        }
        for (slot, v) in self.failures.iter().zip(s.failures) {
            slot.fetch_add(v, Relaxed);
        }
        self.errors.fetch_add(s.errors, Relaxed);
        self.abandoned.fetch_add(s.abandoned, Relaxed);
        self.slow.fetch_add(s.slow, Relaxed);
        self.latency.restore(&s.latency);
        self.ttfb.restore(&s.ttfb);
        self.inference.restore(&s.inference);
    }

    fn totals(&self) -> OutcomeTotals {
        let inf = &self.inference;
        OutcomeTotals {
            classes: std::array::from_fn(|i| self.classes[i].load(Relaxed)),
            errors: self.errors.load(Relaxed),
            abandoned: self.abandoned.load(Relaxed),
            slow: self.slow.load(Relaxed),
            latency: self.latency.sums_ms(),
            ttfb: self.ttfb.sums_ms(),
            prompt_tokens: inf.prompt_tokens.sums(),
            completion_tokens: inf.completion_tokens.sums(),
            cost: inf.cost.sums(),
            ttft: inf.ttft.sums_ms(),
            itl: inf.itl.sums_ms(),
            streams: inf.streams.load(Relaxed),
            incomplete: inf.incomplete.load(Relaxed),
            finished: inf.finished.load(Relaxed),
            finish_length: inf.finish_length.load(Relaxed),
        }
    }

    fn snapshot(&self) -> OutcomeSnapshot {
        OutcomeSnapshot {
            classes: std::array::from_fn(|i| self.classes[i].load(Relaxed)),
            failures: std::array::from_fn(|i| self.failures[i].load(Relaxed)),
            errors: self.errors.load(Relaxed),
            abandoned: self.abandoned.load(Relaxed),
            slow: self.slow.load(Relaxed),
            latency: self.latency.snapshot(),
            ttfb: self.ttfb.snapshot(),
            inference: self.inference.snapshot(),
        }
    }
}

/// What `/metrics` shows of one arm beyond the sets' own counts: the seconds
/// histograms (Prometheus' bucket bounds), gRPC statuses, and what was
/// restored at startup (subtracted, so counters count from process start).
#[derive(Default)]
struct Exposed {
    duration: SecondsHistogram,
    ttfb: SecondsHistogram,
    ttft: SecondsHistogram,
    itl: SecondsHistogram,
    grpc: [AtomicU64; GRPC_CODES],
    /// Locked at restore and at scrape only, never by a request.
    restored: std::sync::Mutex<Restored>,
}

/// The restored counts `/metrics` leaves out, both populations together.
#[derive(Debug, Clone, Copy, Default)]
struct Restored {
    classes: [u64; 5],
    failures: [u64; 6],
    forced: u64,
    tokens: [f64; 2],
    cost: f64,
    streams: u64,
    incomplete: u64,
    unparsed: u64,
}

impl Restored {
    fn add(&mut self, s: &ArmState) {
        for o in [&s.assigned, &s.forced] {
            for (slot, v) in self.classes.iter_mut().zip(o.classes) {
                *slot += v;
            }
            for (slot, v) in self.failures.iter_mut().zip(o.failures) {
                *slot += v;
            }
            let i = &o.inference;
            self.tokens[0] += i.prompt_tokens.sum;
            self.tokens[1] += i.completion_tokens.sum;
            self.cost += i.cost.sum;
            self.streams += i.streams;
            self.incomplete += i.incomplete;
            self.unparsed += i.unparsed;
        }
        self.forced += s.forced.classes.iter().sum::<u64>();
    }
}

/// Everything recorded for one (experiment, arm).
pub struct ArmRecorder {
    pub experiment: String,
    pub arm: String,
    assigned: OutcomeSet,
    forced: OutcomeSet,
    exposed: Exposed,
    /// Set from the experiment's config at each table build.
    slow_threshold_us: AtomicU64,
    /// Assigned requests completed (latency recorded), for [`Self::look`].
    completed: AtomicU64,
    /// Poke [`Self::look`] every this many completions (0: never). Set by the
    /// controller watching this arm.
    look_every: AtomicU64,
    /// Woken every `look_every` completed assigned requests, so the controller
    /// looks when enough new evidence has arrived rather than on a timer.
    look: tokio::sync::Notify,
}

/// A point-in-time copy of an arm's recorder.
#[derive(Debug, Clone)]
pub struct ArmSnapshot {
    pub experiment: String,
    pub arm: String,
    /// Requests routed by assignment: what statistics use.
    pub assigned: OutcomeSnapshot,
    /// Requests routed by the override header: shown, never analysed.
    pub forced: OutcomeSnapshot,
}

impl ArmRecorder {
    fn new(experiment: &str, arm: &str) -> Self {
        ArmRecorder {
            experiment: experiment.to_string(),
            arm: arm.to_string(),
            assigned: OutcomeSet::default(),
            forced: OutcomeSet::default(),
            exposed: Exposed::default(),
            slow_threshold_us: AtomicU64::new(u64::MAX),
            completed: AtomicU64::new(0),
            look_every: AtomicU64::new(0),
            look: tokio::sync::Notify::new(),
        }
    }

    fn set(&self, forced: bool) -> &OutcomeSet {
        if forced {
            &self.forced
        } else {
            &self.assigned
        }
    }

    /// A response head was sent to the client with this status.
    pub fn record_response(&self, forced: bool, status: http::StatusCode) {
        let class = StatusClass::of(status);
        let set = self.set(forced);
        set.classes[class as usize].fetch_add(1, Relaxed);
        if class == StatusClass::ServerError {
            set.errors.fetch_add(1, Relaxed);
        }
    }

    /// A transport failure or client disconnect. `counted_as_error` is false when
    /// the request was already counted as an error (e.g. a 5xx head, then a reset).
    pub fn record_failure(&self, forced: bool, kind: FailureKind, counted_as_error: bool) {
        let set = self.set(forced);
        set.failures[kind as usize].fetch_add(1, Relaxed);
        if kind.is_upstream_fault() && !counted_as_error {
            set.errors.fetch_add(1, Relaxed);
        }
    }

    /// A response (HTTP 200, as gRPC answers) whose `grpc-status` was `code`,
    /// not 0: an error for the arm, counted once per request
    /// (`counted_as_error` when it already was, e.g. a 5xx head).
    pub fn record_grpc_error(&self, forced: bool, code: u32, counted_as_error: bool) {
        if !counted_as_error {
            self.set(forced).errors.fetch_add(1, Relaxed);
        }
        let slot = if (1..GRPC_CODES as u32).contains(&code) {
            code as usize
        } else {
            0
        };
        self.exposed.grpc[slot].fetch_add(1, Relaxed);
    }

    /// The client left before a response head was sent: not the arm's fault.
    pub fn record_abandoned(&self, forced: bool) {
        let set = self.set(forced);
        set.abandoned.fetch_add(1, Relaxed);
        set.failures[FailureKind::ClientGone as usize].fetch_add(1, Relaxed);
    }

    /// Time to the first response body byte.
    pub fn record_ttfb(&self, forced: bool, elapsed: Duration) {
        let us = elapsed.as_micros() as u64;
        self.set(forced).ttfb.record(us);
        self.exposed.ttfb.record(us);
    }

    /// What the response scanner read from one response; `cost` is its price
    /// (from the backend's price table), when the backend has one and the
    /// response reported usage.
    pub fn record_inference(&self, forced: bool, r: &Inference, cost: Option<f64>) {
        self.set(forced).inference.record(r, cost);
        if let Some(us) = r.ttft_us {
            self.exposed.ttft.record(us);
        }
        if let Some(us) = r.itl_us {
            self.exposed.itl.record(us);
        }
    }

    /// The scanner could not read a response: its inference metrics are left
    /// out; its HTTP outcome is counted as usual.
    pub fn record_unparsed(&self, forced: bool) {
        self.set(forced).inference.unparsed.fetch_add(1, Relaxed);
    }

    /// Latency above `threshold` counts as slow from now on.
    pub fn set_slow_threshold(&self, threshold: Duration) {
        self.slow_threshold_us
            .store(threshold.as_micros() as u64, Relaxed);
    }

    /// Time to the last response byte (or to the failure).
    pub fn record_latency(&self, forced: bool, elapsed: Duration) {
        let us = elapsed.as_micros() as u64;
        let set = self.set(forced);
        set.latency.record(us);
        if us > self.slow_threshold_us.load(Relaxed) {
            set.slow.fetch_add(1, Relaxed);
        }
        self.exposed.duration.record(us);
        if !forced {
            // Two relaxed atomics and a modulo per request; the wake-up itself
            // (no allocation, no lock while the controller waits or a permit
            // is already stored) happens once every `look_every` requests.
            let every = self.look_every.load(Relaxed);
            let n = self.completed.fetch_add(1, Relaxed) + 1;
            if every != 0 && n.is_multiple_of(every) {
                self.look.notify_one();
            }
        }
    }

    /// Asks for a wake-up of [`Self::look_completed`] every `every` completed
    /// assigned requests (0: none).
    pub fn set_look_every(&self, every: u64) {
        self.look_every.store(every, Relaxed);
    }

    /// Resolves after the next `look_every` completed assigned requests (at
    /// once if they completed since the last call). One waiter: the
    /// controller of the experiment.
    pub async fn look_completed(&self) {
        self.look.notified().await
    }

    /// The counts, for persisting.
    pub fn state(&self) -> ArmState {
        ArmState {
            assigned: self.assigned.state(),
            forced: self.forced.state(),
            header_metrics: Default::default(),
            feedback_metrics: Default::default(),
            pairs: None,
        }
    }

    /// Adds persisted counts (at startup, before traffic). Prometheus counters
    /// are process-lifetime and start from zero, as Prometheus expects: what
    /// was restored is kept and left out of [`Self::series`].
    pub fn restore(&self, s: &ArmState) {
        self.assigned.restore(&s.assigned);
        self.forced.restore(&s.forced);
        self.exposed
            .restored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(s);
    }

    /// What `/metrics` shows of this arm: both populations, since process
    /// start.
    pub fn series(&self) -> ArmSeries<'_> {
        let r = *self
            .exposed
            .restored
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (a, f) = (&self.assigned, &self.forced);
        let both = |x: &AtomicU64, y: &AtomicU64, restored: u64| {
            (x.load(Relaxed) + y.load(Relaxed)).saturating_sub(restored)
        };
        let sum = |x: &MetricCell, y: &MetricCell, restored: f64| {
            (x.sums().sum + y.sums().sum - restored).max(0.0)
        };
        let (ai, fi) = (&a.inference, &f.inference);
        ArmSeries {
            experiment: &self.experiment,
            arm: &self.arm,
            classes: std::array::from_fn(|i| both(&a.classes[i], &f.classes[i], r.classes[i])),
            failures: std::array::from_fn(|i| both(&a.failures[i], &f.failures[i], r.failures[i])),
            forced: f
                .classes
                .iter()
                .map(|c| c.load(Relaxed))
                .sum::<u64>()
                .saturating_sub(r.forced),
            tokens: [
                sum(&ai.prompt_tokens, &fi.prompt_tokens, r.tokens[0]),
                sum(&ai.completion_tokens, &fi.completion_tokens, r.tokens[1]),
            ],
            cost: sum(&ai.cost, &fi.cost, r.cost),
            streams: both(&ai.streams, &fi.streams, r.streams),
            incomplete: both(&ai.incomplete, &fi.incomplete, r.incomplete),
            unparsed: both(&ai.unparsed, &fi.unparsed, r.unparsed),
            grpc: std::array::from_fn(|i| self.exposed.grpc[i].load(Relaxed)),
            duration: &self.exposed.duration,
            ttfb: &self.exposed.ttfb,
            ttft: &self.exposed.ttft,
            itl: &self.exposed.itl,
        }
    }

    pub fn snapshot(&self) -> ArmSnapshot {
        ArmSnapshot {
            experiment: self.experiment.clone(),
            arm: self.arm.clone(),
            assigned: self.assigned.snapshot(),
            forced: self.forced.snapshot(),
        }
    }
}

/// All recorders of a server, keyed by (experiment, arm) names. Tables resolve
/// their arms' recorders here at build time, so the request path never looks up.
pub struct RecorderRegistry {
    telemetry: Arc<Telemetry>,
    arms: DashMap<(String, String), Arc<ArmRecorder>>,
    /// Declared metrics (feedback, response headers), by (experiment, arm, metric).
    pub metrics: Arc<super::metrics::MetricBook>,
    /// Shadow arms' pairs with their primary twins, by (experiment, shadow arm).
    pairs: DashMap<(String, String), Arc<super::pairs::PairBook>>,
}

impl RecorderRegistry {
    pub fn new(telemetry: Arc<Telemetry>) -> Self {
        RecorderRegistry {
            telemetry,
            arms: DashMap::new(),
            metrics: Arc::default(),
            pairs: DashMap::new(),
        }
    }

    /// The pairs of (experiment, shadow arm), created on first use; kept
    /// across table swaps like the recorders.
    pub fn pair_book(&self, experiment: &str, arm: &str) -> Arc<super::pairs::PairBook> {
        self.pairs
            .entry((experiment.to_string(), arm.to_string()))
            .or_default()
            .clone()
    }

    /// A copy of (experiment, shadow arm)'s pairs, if it has any book.
    pub fn pairs(&self, experiment: &str, arm: &str) -> Option<super::pairs::PairSnapshot> {
        self.pairs
            .get(&(experiment.to_string(), arm.to_string()))
            .map(|b| b.snapshot())
    }

    /// The recorder for (experiment, arm), created on first use.
    pub fn arm(&self, experiment: &str, arm: &str) -> Arc<ArmRecorder> {
        if let Some(r) = self.arms.get(&(experiment.to_string(), arm.to_string())) {
            return r.clone();
        }
        self.arms
            .entry((experiment.to_string(), arm.to_string()))
            .or_insert_with(|| Arc::new(ArmRecorder::new(experiment, arm)))
            .clone()
    }

    /// The assigned requests' totals of one arm, if it has a recorder.
    pub fn totals(&self, experiment: &str, arm: &str) -> Option<OutcomeTotals> {
        self.arms
            .get(&(experiment.to_string(), arm.to_string()))
            .map(|r| r.assigned.totals())
    }

    /// Snapshots of every arm of an experiment (including arms no longer routed).
    pub fn experiment(&self, experiment: &str) -> Vec<ArmSnapshot> {
        let mut out: Vec<ArmSnapshot> = self
            .arms
            .iter()
            .filter(|e| e.key().0 == experiment)
            .map(|e| e.value().snapshot())
            .collect();
        out.sort_by(|a, b| a.arm.cmp(&b.arm));
        out
    }

    /// Every arm's counts, for persisting.
    pub fn states(&self) -> Vec<(String, String, ArmState)> {
        self.arms
            .iter()
            .map(|e| (e.key().0.clone(), e.key().1.clone(), e.value().state()))
            .collect()
    }

    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// Appends every arm's Prometheus series to `out` (the `/metrics` body
    /// after the exporter's own), arms by (experiment, arm).
    pub fn render_prometheus(&self, out: &mut String) {
        let mut arms: Vec<Arc<ArmRecorder>> = self.arms.iter().map(|e| e.value().clone()).collect();
        arms.sort_by(|a, b| (&a.experiment, &a.arm).cmp(&(&b.experiment, &b.arm)));
        let series: Vec<ArmSeries> = arms.iter().map(|a| a.series()).collect();
        super::exposition::render(&series, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcomes::scan::{Finish, Inference};

    #[test]
    fn inference_outcomes_survive_a_restart_and_stay_apart_from_forced_requests() {
        let registry = RecorderRegistry::new(Telemetry::new());
        let a = registry.arm("exp", "canary");
        let stream = Inference {
            streamed: true,
            prompt_tokens: Some(12),
            completion_tokens: Some(40),
            ttft_us: Some(200_000),
            itl_us: Some(20_000),
            finish: Some(Finish::Length),
            complete: Some(false),
        };
        a.record_inference(false, &stream, Some(0.5));
        a.record_inference(true, &stream, Some(0.5));
        a.record_unparsed(false);
        let inf = a.snapshot().assigned.inference;
        assert_eq!((inf.prompt_tokens.n, inf.prompt_tokens.sum), (1, 12.0));
        assert_eq!((inf.streams, inf.incomplete), (1, 1));
        assert_eq!((inf.finished, inf.finish_length, inf.unparsed), (1, 1, 1));
        assert_eq!(inf.ttft.count(), 1);
        // Saved as JSON, restored into a fresh recorder.
        let json = serde_json::to_string(&a.state()).unwrap();
        let b = ArmRecorder::new("exp", "canary");
        b.restore(&serde_json::from_str(&json).unwrap());
        assert_eq!(b.state(), a.state());
        // State saved before the scanner existed reads back with none of it.
        let old: ArmState = serde_json::from_str(&json.replace(
            &format!(
                ",\"inference\":{}",
                serde_json::to_string(&a.state().assigned.inference).unwrap()
            ),
            "",
        ))
        .unwrap();
        assert_eq!(old.assigned.inference, InferenceState::default());
        // Prometheus counts both populations.
        let mut text = String::new();
        registry.render_prometheus(&mut text);
        assert!(
            text.contains(
                "abgate_tokens_total{experiment=\"exp\",arm=\"canary\",kind=\"completion\"} 80"
            ),
            "{text}"
        );
        assert!(
            text.contains("abgate_stream_incomplete_total{experiment=\"exp\",arm=\"canary\"} 2"),
            "{text}"
        );
    }
}

//! Thread-safe accumulation of per-request results and live progress counters.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::report::{ArmCounts, ErrorCounts, FeedbackCounts, LoadReport, Quantiles};

/// Live counters of a running load, published every ~100 ms and once at the end.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LoadProgress {
    /// Time since the run started.
    pub elapsed: Duration,
    /// Requests released by the scheduler so far.
    pub scheduled: u64,
    /// Requests handed to the HTTP client so far.
    pub sent: u64,
    /// Complete responses so far (any status).
    pub completed: u64,
    /// 2xx responses so far.
    pub ok: u64,
    /// Failed requests so far (all kinds).
    pub errors: u64,
    /// Requests queued or active right now.
    pub in_flight: u64,
    /// Feedback events posted so far.
    pub feedback_posted: u64,
    /// True in the final snapshot.
    pub done: bool,
}

/// Failure kind of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// TCP connect failed.
    Connect,
    /// Timed out.
    Timeout,
    /// Reset or other I/O / protocol error.
    Io,
    /// Refused by the max-in-flight cap.
    Overloaded,
}

/// A complete response, as far as the report cares.
#[derive(Debug, Clone)]
pub struct ResponseSample {
    /// HTTP status code.
    pub status: u16,
    /// Arm key (`x-abgate-arm`, else `x-mock-backend`, else `unknown`).
    pub arm: String,
    /// Until the last body byte.
    pub latency: Duration,
    /// Until the first body byte.
    pub ttfb: Duration,
    /// `server-timing: abgate;dur=` in ms, if present.
    pub abgate_dur_ms: Option<f64>,
}

#[derive(Default)]
struct Tallies {
    latency: Option<Histogram<u64>>,
    ttfb: Option<Histogram<u64>>,
    errors: ErrorCounts,
    arms: BTreeMap<String, ArmCounts>,
    feedback: FeedbackCounts,
    server_timing_sum_ms: f64,
    server_timing_n: u64,
}

/// Collects results from all request tasks.
#[derive(Default)]
pub struct Recorder {
    /// Requests released by the scheduler.
    pub scheduled: AtomicU64,
    /// Requests handed to the client.
    pub sent: AtomicU64,
    completed: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
    /// Requests queued or active.
    pub in_flight: AtomicU64,
    feedback_posted: AtomicU64,
    tallies: Mutex<Tallies>,
}

/// 1 µs .. 1 h at 3 significant digits; larger values saturate at the top.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds are valid")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

impl Recorder {
    fn tallies(&self) -> std::sync::MutexGuard<'_, Tallies> {
        // A panic in another recording thread leaves consistent-enough counters; keep going.
        self.tallies.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a complete response.
    pub fn response(&self, s: &ResponseSample) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        let is_5xx = (500..600).contains(&s.status);
        let is_4xx = (400..500).contains(&s.status);
        if (200..300).contains(&s.status) {
            self.ok.fetch_add(1, Ordering::Relaxed);
        }
        if is_4xx || is_5xx {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let mut t = self.tallies();
        t.latency
            .get_or_insert_with(new_histogram)
            .saturating_record(micros(s.latency));
        t.ttfb
            .get_or_insert_with(new_histogram)
            .saturating_record(micros(s.ttfb));
        if is_5xx {
            t.errors.status_5xx += 1;
        } else if is_4xx {
            t.errors.status_4xx += 1;
        }
        let arm = t.arms.entry(s.arm.clone()).or_default();
        arm.responses += 1;
        arm.status_5xx += u64::from(is_5xx);
        if let Some(ms) = s.abgate_dur_ms {
            t.server_timing_sum_ms += ms;
            t.server_timing_n += 1;
        }
    }

    /// Records a request that got no complete response.
    pub fn error(&self, kind: ErrorKind) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut t = self.tallies();
        match kind {
            ErrorKind::Connect => t.errors.connect += 1,
            ErrorKind::Timeout => t.errors.timeout += 1,
            ErrorKind::Io => t.errors.io += 1,
            ErrorKind::Overloaded => t.errors.overloaded += 1,
        }
    }

    /// Records the result of one feedback POST carrying `posted` events.
    pub fn feedback_post(&self, posted: u64, accepted: u64, rejected: u64) {
        self.feedback_posted.fetch_add(posted, Ordering::Relaxed);
        let mut t = self.tallies();
        t.feedback.posts += 1;
        t.feedback.posted += posted;
        t.feedback.accepted += accepted;
        t.feedback.rejected += rejected;
    }

    /// Records feedback events that were selected but never posted.
    pub fn feedback_dropped(&self, n: u64) {
        self.tallies().feedback.dropped += n;
    }

    /// Current live counters.
    pub fn progress(&self, elapsed: Duration, done: bool) -> LoadProgress {
        LoadProgress {
            elapsed,
            scheduled: self.scheduled.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            completed: self.completed.load(Ordering::Relaxed),
            ok: self.ok.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            feedback_posted: self.feedback_posted.load(Ordering::Relaxed),
            done,
        }
    }

    /// Builds the final report; `duration` is the load phase length.
    pub fn report(
        &self,
        url: String,
        mode: &str,
        protocol: &str,
        duration: Duration,
    ) -> LoadReport {
        let p = self.progress(duration, true);
        let t = self.tallies();
        let secs = duration.as_secs_f64();
        LoadReport {
            url,
            mode: mode.to_string(),
            protocol: protocol.to_string(),
            duration_s: secs,
            requests_scheduled: p.scheduled,
            requests_sent: p.sent,
            requests_completed: p.completed,
            requests_ok: p.ok,
            throughput_rps: if secs > 0.0 {
                p.completed as f64 / secs
            } else {
                0.0
            },
            latency_ms: t
                .latency
                .as_ref()
                .map(Quantiles::from_micros)
                .unwrap_or_default(),
            ttfb_ms: t
                .ttfb
                .as_ref()
                .map(Quantiles::from_micros)
                .unwrap_or_default(),
            errors: t.errors.clone(),
            arms: t.arms.clone(),
            feedback: t.feedback.clone(),
            abgate_server_timing_mean_ms: (t.server_timing_n > 0)
                .then(|| t.server_timing_sum_ms / t.server_timing_n as f64),
            abgate_server_timing_samples: t.server_timing_n,
        }
    }
}

/// Decrements `in_flight` when a request task ends, however it ends.
pub struct InFlightGuard<'a>(&'a Recorder);

impl<'a> InFlightGuard<'a> {
    /// Increments `in_flight` until the guard is dropped.
    pub fn new(r: &'a Recorder) -> Self {
        r.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(r)
    }
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

//! The result of a load run and its human-readable summary.

use std::collections::BTreeMap;
use std::fmt;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency quantiles in milliseconds (recorded at microsecond resolution, 3 significant digits).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Quantiles {
    /// Number of samples.
    pub count: u64,
    /// Mean (ms).
    pub mean: f64,
    /// Median (ms).
    pub p50: f64,
    /// 90th percentile (ms).
    pub p90: f64,
    /// 99th percentile (ms).
    pub p99: f64,
    /// 99.9th percentile (ms).
    pub p999: f64,
    /// Maximum (ms).
    pub max: f64,
}

impl Quantiles {
    /// Quantiles of a histogram whose values are microseconds; all zero when it is empty.
    pub fn from_micros(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Quantiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Quantiles {
            count: h.len(),
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// Failed requests by kind. A request counts in exactly one kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ErrorCounts {
    /// TCP connect failed (refused, unreachable, connect timeout).
    pub connect: u64,
    /// No complete response within `request_timeout` (or before the run's hard deadline).
    pub timeout: u64,
    /// Complete response with status 500..=599.
    pub status_5xx: u64,
    /// Complete response with status 400..=499.
    pub status_4xx: u64,
    /// Connection reset/closed mid-exchange or another I/O or protocol error.
    pub io: u64,
    /// Open loop only: not sent because `max_in_flight` requests were already outstanding.
    pub overloaded: u64,
}

impl ErrorCounts {
    /// Sum over all kinds.
    pub fn total(&self) -> u64 {
        self.connect + self.timeout + self.status_5xx + self.status_4xx + self.io + self.overloaded
    }
}

/// Tallies for one arm: keyed by `x-abgate-arm`, else `x-mock-backend`, else `unknown`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ArmCounts {
    /// Complete responses (any status).
    pub responses: u64,
    /// Responses with status 500..=599.
    pub status_5xx: u64,
}

/// Feedback posting tallies (events, not HTTP posts, unless stated).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FeedbackCounts {
    /// Events sent in a POST.
    pub posted: u64,
    /// Events the proxy reported as accepted.
    pub accepted: u64,
    /// Events the proxy rejected, or that were in a failed POST.
    pub rejected: u64,
    /// Events selected for feedback but not posted (no truth header, queue full, or the run
    /// ended before they could be sent).
    pub dropped: u64,
    /// HTTP POSTs made.
    pub posts: u64,
}

/// Outcome of a load run. Latencies are in milliseconds; durations in seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LoadReport {
    /// Request URL.
    pub url: String,
    /// `open_loop` or `closed_loop`.
    pub mode: String,
    /// `http1` or `h2`.
    pub protocol: String,
    /// From start until the last request finished (s).
    pub duration_s: f64,
    /// Requests the scheduler released (≤ `max_requests`), including `overloaded` ones.
    pub requests_scheduled: u64,
    /// Requests handed to the HTTP client.
    pub requests_sent: u64,
    /// Requests with a complete response, any status.
    pub requests_completed: u64,
    /// Completed requests with a 2xx status.
    pub requests_ok: u64,
    /// `requests_completed / duration_s` (responses per second).
    pub throughput_rps: f64,
    /// Latency of completed requests until the last body byte, from the scheduled send time
    /// (open loop) or the actual send time (closed loop).
    pub latency_ms: Quantiles,
    /// Time to the first body byte (first SSE event for streams; response headers when the
    /// body is empty), from the same origin as `latency_ms`.
    pub ttfb_ms: Quantiles,
    /// Failures by kind.
    pub errors: ErrorCounts,
    /// Per-arm tallies.
    pub arms: BTreeMap<String, ArmCounts>,
    /// Feedback tallies.
    pub feedback: FeedbackCounts,
    /// Mean of the proxy's self-reported `server-timing: abgate;dur=` (ms), if any response had it.
    pub abgate_server_timing_mean_ms: Option<f64>,
    /// Number of responses that carried `abgate;dur=`.
    pub abgate_server_timing_samples: u64,
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "target     {} ({}, {})",
            self.url, self.mode, self.protocol
        )?;
        writeln!(
            f,
            "requests   scheduled {}  sent {}  completed {}  ok {}  in {:.2} s  ({:.1} resp/s)",
            self.requests_scheduled,
            self.requests_sent,
            self.requests_completed,
            self.requests_ok,
            self.duration_s,
            self.throughput_rps
        )?;
        for (name, q) in [("latency", &self.latency_ms), ("ttfb", &self.ttfb_ms)] {
            writeln!(
                f,
                "{name:<10} p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  mean {:.2} ms",
                q.p50, q.p90, q.p99, q.p999, q.max, q.mean
            )?;
        }
        let e = &self.errors;
        writeln!(
            f,
            "errors     {} total: connect {}  timeout {}  5xx {}  4xx {}  io/reset {}  overloaded {}",
            e.total(),
            e.connect,
            e.timeout,
            e.status_5xx,
            e.status_4xx,
            e.io,
            e.overloaded
        )?;
        for (arm, c) in &self.arms {
            writeln!(
                f,
                "arm        {arm:<20} responses {:>8}  5xx {:>6}",
                c.responses, c.status_5xx
            )?;
        }
        let fb = &self.feedback;
        if fb.posted + fb.dropped > 0 {
            writeln!(
                f,
                "feedback   posted {}  accepted {}  rejected {}  dropped {}  ({} POSTs)",
                fb.posted, fb.accepted, fb.rejected, fb.dropped, fb.posts
            )?;
        }
        if let Some(mean) = self.abgate_server_timing_mean_ms {
            writeln!(
                f,
                "abgate     self-reported server-timing mean {mean:.3} ms over {} responses",
                self.abgate_server_timing_samples
            )?;
        }
        Ok(())
    }
}

//! Prometheus metrics owned by one server instance.
//!
//! Owns: the exporter's recorder and rendering `/metrics`.
//! Why per instance and not the global `metrics` recorder: several servers run in
//! one test process, and each `/metrics` must show exactly its own counts.
//! Hot-path code never looks metrics up by name: it registers handles once (per
//! arm, per table build) and increments those. The one counter keyed by a
//! per-request value, rejections by reason, goes through a copy-on-write cache
//! (one lock-free load and a short scan; registered once per reason).

use std::sync::Arc;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// Upper bounds (seconds) of the duration histograms: sub-millisecond proxy
/// overhead up to minute-long streamed completions.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

pub struct Telemetry {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// `abgate_rejected_requests_total` per reason seen so far. Reasons are a
    /// small closed set of slugs, so the list stays short; a miss (the first
    /// time a reason is seen) registers it and swaps in a longer list.
    rejections: arc_swap::ArcSwap<Vec<(&'static str, Counter)>>,
}

static METADATA: Metadata<'static> = Metadata::new("abgate", Level::INFO, Some("abgate"));

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|(k, v)| Label::new(*k, v.to_string()))
        .collect();
    Key::from_parts(name, labels)
}

impl Telemetry {
    pub fn new() -> Arc<Self> {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), DURATION_BUCKETS)
            .expect("bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        let t = Telemetry {
            recorder,
            handle,
            rejections: arc_swap::ArcSwap::from_pointee(Vec::new()),
        };
        t.describe();
        Arc::new(t)
    }

    fn describe(&self) {
        let counters = [
            ("abgate_requests_total", "Responses sent to clients, by experiment, arm and status class."),
            ("abgate_upstream_errors_total", "Transport failures and client disconnects, by experiment, arm and kind."),
            ("abgate_forced_requests_total", "Requests whose arm was forced by the x-abgate-arm header (excluded from statistics)."),
            ("abgate_rejected_requests_total", "Requests rejected before routing, by reason."),
            ("abgate_tokens_total", "Tokens reported in responses' usage, by experiment, arm and kind (prompt, completion)."),
            ("abgate_streams_total", "Event streams whose end the backend decided (client disconnects excluded), by experiment and arm."),
            ("abgate_stream_incomplete_total", "Event streams that ended before [DONE], a finish reason or a terminal event, by experiment and arm."),
            ("abgate_grpc_errors_total", "Responses whose grpc-status (trailer, or header of a trailers-only response) was not 0, by experiment, arm and code (1-16, or other)."),
            ("abgate_controller_looks_total", "Controller looks (evidence read, verdict computed) measured for their CPU time, by experiment."),
            ("abgate_unparsed_responses_total", "Responses the inference scanner could not read (their HTTP outcome still counts), by experiment and arm."),
        ];
        for (name, help) in counters {
            self.recorder
                .describe_counter(KeyName::from(name), Some(Unit::Count), help.into());
        }
        let histograms = [
            (
                "abgate_request_duration_seconds",
                "Time from request received to last response byte.",
            ),
            (
                "abgate_time_to_first_byte_seconds",
                "Time from request received to the first response body byte.",
            ),
            (
                "abgate_time_to_first_token_seconds",
                "Time from request received to the first event with generated content (streams).",
            ),
            (
                "abgate_inter_token_latency_seconds",
                "Per stream, the mean gap between events with generated content.",
            ),
        ];
        for (name, help) in histograms {
            self.recorder
                .describe_histogram(KeyName::from(name), Some(Unit::Seconds), help.into());
        }
        self.recorder.describe_gauge(
            KeyName::from("abgate_controller_look_cpu_seconds_total"),
            Some(Unit::Seconds),
            "CPU time of the controller's looks counted in abgate_controller_looks_total, by experiment (only grows; a gauge because it is fractional)."
                .into(),
        );
        self.recorder.describe_gauge(
            KeyName::from("abgate_arm_model_info"),
            None,
            "1 for each arm of a model-aware experiment: the model its backend is sent (the arm's rewrite, else the client model matched), by experiment, arm, backend and model."
                .into(),
        );
        self.recorder.describe_gauge(
            KeyName::from("abgate_cost_total"),
            None,
            "Cost of responses from their usage and the backend's price table, in the config's currency, by experiment and arm (only grows; a gauge because it is fractional)."
                .into(),
        );
    }

    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        self.recorder
            .register_counter(&key(name, labels), &METADATA)
    }

    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        self.recorder.register_gauge(&key(name, labels), &METADATA)
    }

    pub fn histogram(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Histogram {
        self.recorder
            .register_histogram(&key(name, labels), &METADATA)
    }

    /// Counts a request rejected before routing (bad Host, limits, ...).
    /// Allocation-free once `reason` has been seen.
    pub fn rejected(&self, reason: &'static str) {
        if let Some((_, c)) = self.rejections.load().iter().find(|(r, _)| *r == reason) {
            c.increment(1);
            return;
        }
        let counter = self.counter("abgate_rejected_requests_total", &[("reason", reason)]);
        counter.increment(1);
        // Two first sightings at once may both add the reason; the registry
        // hands both the same underlying counter, so nothing is double counted.
        self.rejections.rcu(|list| {
            let mut next = Vec::clone(list);
            if !next.iter().any(|(r, _)| *r == reason) {
                next.push((reason, counter.clone()));
            }
            next
        });
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Folds buffered histogram samples; call periodically so memory stays bounded
    /// even when nobody scrapes.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected_count(t: &Telemetry, reason: &str) -> f64 {
        t.render()
            .lines()
            .find(|l| {
                l.starts_with("abgate_rejected_requests_total")
                    && l.contains(&format!("reason=\"{reason}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .map_or(0.0, |v| v.parse().unwrap())
    }

    #[test]
    fn rejections_are_counted_once_each_through_the_cache() {
        let t = Telemetry::new();
        for _ in 0..3 {
            t.rejected("no-route");
        }
        t.rejected("missing-host");
        assert_eq!(rejected_count(&t, "no-route"), 3.0);
        assert_eq!(rejected_count(&t, "missing-host"), 1.0);
        assert_eq!(t.rejections.load().len(), 2);
    }
}

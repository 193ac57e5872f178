//! Prometheus metrics owned by one server instance.
//!
//! Owns: the exporter's recorder and rendering its part of `/metrics` (the
//! per-arm outcome series are rendered from the recorders themselves, after
//! it: `outcomes::exposition`).
//! Why per instance and not the global `metrics` recorder: several servers run in
//! one test process, and each `/metrics` must show exactly its own counts.
//! Hot-path code never looks metrics up by name: it registers handles once (per
//! arm, per table build) and increments those. The one counter keyed by a
//! per-request value, rejections by reason, goes through a copy-on-write cache
//! (one lock-free load and a short scan; registered once per reason).

use std::sync::Arc;

use metrics::{Counter, Gauge, Key, KeyName, Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

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
        let recorder = PrometheusBuilder::new().build_recorder();
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
            ("abgate_rejected_requests_total", "Requests rejected before routing, by reason."),
            ("abgate_controller_looks_total", "Controller looks (evidence read, verdict computed) measured for their CPU time, by experiment."),
        ];
        for (name, help) in counters {
            self.recorder
                .describe_counter(KeyName::from(name), Some(Unit::Count), help.into());
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
    }

    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        self.recorder
            .register_counter(&key(name, labels), &METADATA)
    }

    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        self.recorder.register_gauge(&key(name, labels), &METADATA)
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

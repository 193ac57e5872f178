//! The data plane's per-arm wiring: what the proxy hangs on each route of the
//! pure routing table (an upstream pool, the arm's recorder, the response-header
//! metrics), and the published snapshot a request loads once.
//!
//! Owns: building a [`Published`] table from a validated config, reusing
//! upstream pools (warm connections survive a swap) and recorders (counts
//! survive a swap) keyed by backend and by (experiment, arm).
//!
//! Never: swaps the table in (the control plane's publisher does), decides
//! routing (see `routing`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::config::{Config, MetricKind, MetricSource, Price};
use crate::outcomes::capture::{CapturePolicy, CapturedArm};
use crate::outcomes::metrics::MetricCell;
use crate::outcomes::{ArmRecorder, RecorderRegistry};
use crate::routing::{Layout, RoutingTable, DEFAULT_ROUTE_EXPERIMENT};

use super::capture::ArmCapture;
use super::shadow::{ShadowGates, ShadowWiring};
use super::upstream::{Upstream, UpstreamPool};

/// Where a routed request goes.
pub struct Target {
    pub upstream: Arc<Upstream>,
    /// The backend's config name (for error details).
    pub backend: String,
    /// How long the backend has to send response headers once the request is sent.
    pub response_timeout: Duration,
    /// The backend's token prices, for each response's `cost`.
    pub price: Option<Price>,
    /// Headers set on every request to this backend, replacing the client's
    /// of the same name (credentials: sensitive values, never logged).
    pub headers: Box<[(http::HeaderName, http::HeaderValue)]>,
}

/// What the data plane carries on each arm (and on the default route).
pub struct ArmWiring {
    pub target: Target,
    pub recorder: Arc<ArmRecorder>,
    /// Metrics read from the backend's response headers, with their cells.
    /// Empty on the default route.
    pub header_metrics: Box<[HeaderMetric]>,
    /// The experiment's `inject_usage` (false on the default route).
    pub inject_usage: bool,
    /// The arm's `model`, as JSON string content (escaped, without quotes):
    /// what replaces the body's top-level `model` value for this backend.
    pub model: Option<Bytes>,
    /// On a shadow arm only: what its copies need (see `proxy::shadow`).
    pub shadow: Option<Arc<ShadowWiring>>,
    /// The experiment's `capture:`, with this arm's identity.
    pub capture: Option<ArmCapture>,
}

/// One declared response-header metric of one arm.
pub struct HeaderMetric {
    pub header: http::HeaderName,
    pub kind: MetricKind,
    pub cell: Arc<MetricCell>,
}

/// One published version of everything a request needs, swapped whole.
pub struct Published {
    /// Monotonically increasing across swaps (carried in outcome tokens).
    pub version: u64,
    pub routes: RoutingTable<ArmWiring>,
    /// The feedback endpoint's path on the data-plane listener.
    pub feedback_path: String,
    /// Largest feedback body accepted, in bytes.
    pub feedback_max_body: usize,
    /// Largest `correction` in a feedback event, in bytes of JSON.
    pub feedback_max_correction: usize,
}

impl crate::outcomes::feedback::ArmOrigin for ArmWiring {
    fn backend(&self) -> &str {
        &self.target.backend
    }

    /// The rewrite is kept as JSON string content (escaped, unquoted) for
    /// the request path; unescaped here, once per feedback event.
    fn model(&self) -> Option<String> {
        let m = self.model.as_ref()?;
        let quoted = [&b"\""[..], m, &b"\""[..]].concat();
        serde_json::from_slice(&quoted).ok()
    }
}

impl Published {
    /// Builds the wiring for a validated config with contiguous bucket layouts.
    pub fn build(
        config: &Config,
        version: u64,
        pools: &UpstreamPool,
        recorders: &RecorderRegistry,
    ) -> Published {
        Self::build_with(config, |_| None, version, pools, recorders)
    }

    /// Builds the wiring for a validated config, each experiment's buckets laid
    /// out by `layout(name)` (its replayed weight history). Recorders get the
    /// experiment's slow threshold here, before the table is visible to any
    /// request.
    pub fn build_with<'l>(
        config: &Config,
        layout: impl Fn(&str) -> Option<&'l Layout>,
        version: u64,
        pools: &UpstreamPool,
        recorders: &RecorderRegistry,
    ) -> Published {
        Self::build_shadowed(
            config,
            layout,
            version,
            pools,
            recorders,
            &ShadowGates::default(),
        )
    }

    /// As [`Published::build_with`], with shadow arms' in-flight gates from
    /// `gates` (the publisher keeps them across builds, as it keeps pools).
    pub fn build_shadowed<'l>(
        config: &Config,
        layout: impl Fn(&str) -> Option<&'l Layout>,
        version: u64,
        pools: &UpstreamPool,
        recorders: &RecorderRegistry,
        gates: &ShadowGates,
    ) -> Published {
        let target = |backend: &str| {
            let b = config
                .backend(backend)
                .expect("validated config: arms and default_backend name declared backends");
            Target {
                upstream: pools.get(b, config.timeouts.upstream_connect),
                backend: b.name.clone(),
                response_timeout: b
                    .response_timeout
                    .unwrap_or(config.timeouts.upstream_response),
                price: b.price,
                // A config read without its secrets is never published; a
                // header without a value is left out rather than sent empty.
                headers: b
                    .headers
                    .iter()
                    .filter_map(|h| Some((h.name.clone(), h.value.clone()?)))
                    .collect(),
            }
        };
        // One policy per experiment, shared by its arms.
        let mut captures: std::collections::HashMap<String, Arc<CapturePolicy>> =
            Default::default();
        let routes = RoutingTable::build_with(
            config,
            layout,
            |e, a| {
                let capture = e.capture.as_ref().map(|c| ArmCapture {
                    policy: captures
                        .entry(e.name.clone())
                        .or_insert_with(|| {
                            Arc::new(CapturePolicy::new(&e.name, c, recorders.telemetry()))
                        })
                        .clone(),
                    arm: Arc::new(CapturedArm {
                        arm: a.name.clone(),
                        backend: a.backend.clone(),
                        model: a.model.clone(),
                    }),
                });
                let recorder = recorders.arm(&e.name, &a.name);
                recorder.set_slow_threshold(e.slow_threshold);
                ArmWiring {
                    target: target(&a.backend),
                    recorder: recorder.clone(),
                    header_metrics: e
                        .metrics
                        .iter()
                        .filter_map(|m| match &m.source {
                            MetricSource::ResponseHeader(h) => Some(HeaderMetric {
                                header: h.clone(),
                                kind: m.kind,
                                cell: recorders.metrics.cell(&e.name, &a.name, &m.name),
                            }),
                            MetricSource::Feedback => None,
                        })
                        .collect(),
                    inject_usage: e.inject_usage,
                    model: a.model.as_deref().map(model_json),
                    shadow: e.shadows.iter().find(|s| s.arm.name == a.name).map(|s| {
                        Arc::new(ShadowWiring {
                            target: target(&a.backend),
                            recorder: recorder.clone(),
                            gate: gates.get(&e.name, s, recorders.telemetry()),
                            pairs: recorders.pair_book(&e.name, &a.name),
                            model: a.model.as_deref().map(model_json),
                            max_body: s.max_body,
                            timeout: s.timeout,
                            inject_usage: e.inject_usage,
                            stream_idle: config.timeouts.stream_idle,
                        })
                    }),
                    capture,
                }
            },
            |b| ArmWiring {
                target: target(b),
                recorder: recorders.arm(DEFAULT_ROUTE_EXPERIMENT, b),
                header_metrics: Box::new([]),
                inject_usage: false,
                model: None,
                shadow: None,
                capture: None,
            },
        );
        Published {
            version,
            routes,
            feedback_path: config.feedback.path.clone(),
            feedback_max_body: config.feedback.max_body,
            feedback_max_correction: config.feedback.max_correction,
        }
    }
}

/// A model name as the content of a JSON string (escaped, without quotes).
pub fn model_json(name: &str) -> Bytes {
    let quoted = serde_json::to_string(name).unwrap_or_else(|_| "\"\"".into());
    Bytes::from(quoted.as_bytes()[1..quoted.len() - 1].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Telemetry;

    fn split(canary: u32) -> Config {
        crate::config::parse(&format!(
            r#"
backends: {{ a: {{ url: "http://127.0.0.1:1" }}, b: {{ url: "http://127.0.0.1:2" }} }}
experiments:
  - name: s
    unit: {{ header: x-user-id }}
    arms:
      - {{ name: stable, backend: a, weight: {} }}
      - {{ name: canary, backend: b, weight: {canary} }}
"#,
            100 - canary
        ))
        .unwrap()
    }

    #[test]
    fn pools_and_recorders_are_shared_across_builds() {
        let recorders = RecorderRegistry::new(Telemetry::new());
        let pools = UpstreamPool::default();
        let t1 = Published::build(&split(10), 1, &pools, &recorders);
        let t2 = Published::build(&split(20), 2, &pools, &recorders);
        let (a1, a2) = (
            &t1.routes.experiments[0].arms[1].carry,
            &t2.routes.experiments[0].arms[1].carry,
        );
        assert!(Arc::ptr_eq(&a1.target.upstream, &a2.target.upstream));
        assert!(Arc::ptr_eq(&a1.recorder, &a2.recorder));
        assert_eq!(pools.len(), 2);
    }
}

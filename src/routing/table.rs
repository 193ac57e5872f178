//! The routing table: one immutable snapshot of everything a request needs.
//!
//! Owns: compiling a validated [`Config`] into lookup-ready routes, and the
//! per-request decisions (which experiment, which arm). Published behind one
//! `ArcSwap` by the server; a request loads it once and keeps that version.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};

use super::bucket;
use super::matcher::{self, RequestView};
use crate::config::{
    BasisPoints, Config, Match, MetricDef, MetricKind, MetricSource, UnitSource, BUCKETS,
};
use crate::outcomes::metrics::MetricCell;
use crate::outcomes::{ArmRecorder, RecorderRegistry};
use crate::proxy::upstream::{Upstream, UpstreamPool};

/// Header that forces an arm when the experiment allows overrides.
pub const OVERRIDE_HEADER: &str = "x-abgate-arm";
/// Experiment label under which unmatched traffic to `default_backend` is recorded.
pub const DEFAULT_ROUTE_EXPERIMENT: &str = "_default";

/// Where a routed request goes.
pub struct Target {
    pub upstream: Arc<Upstream>,
    pub backend: String,
    pub response_timeout: Duration,
}

pub struct ArmRoute {
    pub name: String,
    /// Pre-encoded for the `x-abgate-arm` response header.
    pub name_header: HeaderValue,
    pub weight: BasisPoints,
    pub target: Target,
    pub recorder: Arc<ArmRecorder>,
    /// Metrics read from the backend's response headers, with their cells.
    pub header_metrics: Box<[HeaderMetric]>,
}

pub struct HeaderMetric {
    pub header: http::HeaderName,
    pub kind: MetricKind,
    pub cell: Arc<MetricCell>,
}

pub struct ExperimentRoute {
    pub name: String,
    pub name_header: HeaderValue,
    seed: u64,
    matcher: Match,
    unit: Option<UnitSource>,
    pub allow_override: bool,
    pub arms: Box<[ArmRoute]>,
    /// Exclusive upper bucket bound of each arm, cumulative in declared order.
    bounds: Box<[u32]>,
    /// Declared metrics (for validating feedback).
    pub metrics: Vec<MetricDef>,
    pub attribution_window: Duration,
}

pub struct DefaultRoute {
    pub target: Target,
    pub recorder: Arc<ArmRecorder>,
}

pub struct RoutingTable {
    /// Monotonically increasing across swaps.
    pub version: u64,
    pub experiments: Box<[ExperimentRoute]>,
    pub default: Option<DefaultRoute>,
    /// The feedback endpoint's path on the data-plane listener.
    pub feedback_path: String,
    pub feedback_max_body: usize,
}

/// The outcome of matching a request.
pub enum Route<'t> {
    Experiment(&'t ExperimentRoute),
    Default(&'t DefaultRoute),
    NotFound,
}

/// How an arm was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assignment {
    pub arm: usize,
    /// Chosen by the override header: excluded from statistics.
    pub forced: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssignError {
    #[error("x-abgate-arm names no arm of experiment {experiment:?}; arms: {arms}")]
    UnknownArm { experiment: String, arms: String },
}

fn header_value(s: &str) -> HeaderValue {
    // Config names are validated as non-empty strings; a name with bytes that
    // cannot be a header value is sent percent-free as a lossy copy.
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid-name"))
}

impl RoutingTable {
    /// Builds a table from a validated config, reusing pools and recorders.
    pub fn build(
        config: &Config,
        version: u64,
        pools: &UpstreamPool,
        recorders: &RecorderRegistry,
    ) -> RoutingTable {
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
            }
        };
        let experiments = config
            .experiments
            .iter()
            .map(|e| {
                let mut acc = 0;
                let bounds = e
                    .arms
                    .iter()
                    .map(|a| {
                        acc += a.weight;
                        acc
                    })
                    .collect();
                ExperimentRoute {
                    name: e.name.clone(),
                    name_header: header_value(&e.name),
                    seed: bucket::salt_seed(&e.salt),
                    matcher: e.matcher.clone(),
                    unit: e.unit.clone(),
                    allow_override: e.allow_override,
                    arms: e
                        .arms
                        .iter()
                        .map(|a| {
                            let recorder = recorders.arm(&e.name, &a.name);
                            recorder.set_slow_threshold(e.slow_threshold);
                            ArmRoute {
                                name: a.name.clone(),
                                name_header: header_value(&a.name),
                                weight: a.weight,
                                target: target(&a.backend),
                                recorder,
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
                            }
                        })
                        .collect(),
                    bounds,
                    metrics: e.metrics.clone(),
                    attribution_window: e.attribution_window,
                }
            })
            .collect();
        let default = config.default_backend.as_deref().map(|b| DefaultRoute {
            target: target(b),
            recorder: recorders.arm(DEFAULT_ROUTE_EXPERIMENT, b),
        });
        RoutingTable {
            version,
            experiments,
            default,
            feedback_path: config.feedback.path.clone(),
            feedback_max_body: config.feedback.max_body,
        }
    }

    /// The first experiment (in declared order) that matches, else the default.
    pub fn route(&self, req: &RequestView<'_>) -> Route<'_> {
        for e in self.experiments.iter() {
            if matcher::matches(&e.matcher, req) {
                return Route::Experiment(e);
            }
        }
        match &self.default {
            Some(d) => Route::Default(d),
            None => Route::NotFound,
        }
    }

    pub fn experiment(&self, name: &str) -> Option<&ExperimentRoute> {
        self.experiments.iter().find(|e| e.name == name)
    }
}

impl ExperimentRoute {
    /// Chooses an arm: the override header when allowed, else the unit key's
    /// sticky bucket, else `random_bucket()` (0..10_000) for keyless requests.
    pub fn assign(
        &self,
        headers: &HeaderMap,
        random_bucket: impl FnOnce() -> u32,
    ) -> Result<Assignment, AssignError> {
        if self.allow_override {
            if let Some(v) = headers.get(OVERRIDE_HEADER) {
                let forced = self
                    .arms
                    .iter()
                    .position(|a| a.name.as_bytes() == v.as_bytes());
                return match forced {
                    Some(arm) => Ok(Assignment { arm, forced: true }),
                    None => Err(AssignError::UnknownArm {
                        experiment: self.name.clone(),
                        arms: self
                            .arms
                            .iter()
                            .map(|a| a.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    }),
                };
            }
        }
        let b = match self.unit_key(headers) {
            Some(key) => bucket::bucket(self.seed, key),
            None => random_bucket() % BUCKETS,
        };
        Ok(Assignment {
            arm: self.arm_for_bucket(b),
            forced: false,
        })
    }

    /// The unit key bytes, if the request carries one.
    pub fn unit_key<'h>(&self, headers: &'h HeaderMap) -> Option<&'h [u8]> {
        match self.unit.as_ref()? {
            UnitSource::Header(name) => headers
                .get(name)
                .map(|v| v.as_bytes())
                .filter(|v| !v.is_empty()),
            UnitSource::Cookie(name) => cookie(headers, name),
        }
    }

    /// The arm owning bucket `b`: arms own contiguous ranges in declared order,
    /// so growing the last arm only moves units into it.
    pub fn arm_for_bucket(&self, b: u32) -> usize {
        self.bounds
            .iter()
            .position(|&upper| b < upper)
            .unwrap_or(self.arms.len() - 1)
    }
}

/// Finds cookie `name` in the request's Cookie headers without allocating.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            let (k, v) = (&pair[..eq], &pair[eq + 1..]);
            (k == name.as_bytes() && !v.is_empty()).then_some(v)
        })
}

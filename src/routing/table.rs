//! The routing table: matching order, salts and bucket layouts, in one
//! immutable value.
//!
//! Owns: compiling a validated [`Config`] (and each experiment's replayed
//! [`Layout`], when the caller keeps one) into lookup-ready routes, in declared
//! order, and finding the route a request belongs to. Generic over what each arm
//! carries (`A`): the data plane hangs its upstream and recorders there, a bench
//! or a test hangs nothing.
//!
//! Never: builds sockets or clients, touches recorders, reads a clock. What an
//! arm carries is built by the caller and only stored here.

use std::time::Duration;

use http::HeaderValue;

use super::bucket;
use super::layout::{self, Layout};
use super::matcher::{self, RequestView};
use crate::config::{self, BasisPoints, Config, Match, MetricDef, UnitSource};

/// Experiment label under which unmatched traffic to `default_backend` is recorded.
pub const DEFAULT_ROUTE_EXPERIMENT: &str = "_default";

/// One arm: its name, weight and whatever the caller hangs on it.
pub struct ArmRoute<A> {
    pub name: String,
    /// Pre-encoded for the `x-abgate-arm` response header.
    pub name_header: HeaderValue,
    /// Share of the experiment's buckets, in basis points (0..=10,000).
    pub weight: BasisPoints,
    /// What the caller built for this arm (the data plane: upstream, recorder).
    pub carry: A,
}

/// One shadow arm: it gets a copy of `percent` of the experiment's assigned
/// requests and serves nobody (see [`ExperimentRoute::mirrors`]).
pub struct ShadowRoute<A> {
    pub name: String,
    /// Share of the experiment's assigned requests copied, in basis points.
    pub percent: BasisPoints,
    /// The mirror hash seed (see [`bucket::mirror_seed`]): independent of
    /// the assignment hash, so which users are mirrored does not depend on
    /// their arm, and of other shadows.
    pub(super) seed: u64,
    /// What the caller built for this shadow (the data plane: its own
    /// upstream, recorder and in-flight gate).
    pub carry: A,
}

/// One experiment: how a request is matched, and the arms it is split over.
pub struct ExperimentRoute<A> {
    pub name: String,
    pub name_header: HeaderValue,
    /// The experiment's salt, hashed once (see [`bucket::salt_seed`]).
    pub(super) seed: u64,
    matcher: Match,
    pub(super) unit: Option<UnitSource>,
    pub allow_override: bool,
    pub arms: Box<[ArmRoute<A>]>,
    /// Shadow arms, in declared order: never assigned, never forced.
    pub shadows: Box<[ShadowRoute<A>]>,
    /// The bucket layout as runs: run `i` starts at bucket `run_starts[i]`
    /// (`run_starts[0] == 0`) and belongs to arm `run_arms[i]`. Precomputed at
    /// build so assignment is one binary search, without allocating.
    pub(super) run_starts: Box<[u32]>,
    pub(super) run_arms: Box<[u32]>,
    /// Declared metrics (for validating feedback).
    pub metrics: Vec<MetricDef>,
    pub attribution_window: Duration,
}

/// Every experiment in matching order, and where unmatched requests go.
pub struct RoutingTable<A> {
    pub experiments: Box<[ExperimentRoute<A>]>,
    /// What the caller built for `default_backend`, if the config names one.
    pub default: Option<A>,
    /// The largest `max_peek` of the experiments that read the body (0: none
    /// does): how much of a body one peek reads, for every rule at once.
    pub max_peek: usize,
}

/// The outcome of matching a request.
pub enum Route<'t, A> {
    Experiment(&'t ExperimentRoute<A>),
    Default(&'t A),
    NotFound,
    /// A rule whose head matches reads the body's `model`: peek at most
    /// `max_peek` bytes and route again with [`RequestView::body`] set.
    NeedsBody {
        max_peek: usize,
    },
}

pub(super) fn header_value(s: &str) -> HeaderValue {
    // Config names are validated as non-empty strings; a name with bytes that
    // cannot be a header value is sent as a fixed placeholder instead.
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid-name"))
}

impl<A> RoutingTable<A> {
    /// Compiles a validated config with contiguous layouts (each experiment's
    /// weight history is just its configured weights). `arm` builds what each
    /// arm carries (called once per arm, in declared order); `default` builds
    /// what the `default_backend` route carries, given the backend's name.
    pub fn build(
        config: &Config,
        arm: impl FnMut(&config::Experiment, &config::Arm) -> A,
        default: impl FnOnce(&str) -> A,
    ) -> RoutingTable<A> {
        Self::build_with(config, |_| None, arm, default)
    }

    /// As [`RoutingTable::build`], laying out each experiment's buckets by
    /// `layout(name)`, the replay of its recorded weight history. A layout that
    /// does not give the configured weights (another arm count, other shares)
    /// is not used: the weights are what the control plane decided, and the
    /// contiguous layout of them is the safe fallback.
    pub fn build_with<'l>(
        config: &Config,
        layout: impl Fn(&str) -> Option<&'l Layout>,
        mut arm: impl FnMut(&config::Experiment, &config::Arm) -> A,
        default: impl FnOnce(&str) -> A,
    ) -> RoutingTable<A> {
        let experiments = config
            .experiments
            .iter()
            .map(|e| {
                let weights: Vec<u32> = e.arms.iter().map(|a| a.weight).collect();
                let (run_starts, run_arms) = match layout(&e.name) {
                    Some(l)
                        if l.arms() == weights.len() && l.shares() == layout::shares(&weights) =>
                    {
                        l.runs()
                    }
                    _ => Layout::contiguous_runs(&weights),
                };
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
                        .map(|a| ArmRoute {
                            name: a.name.clone(),
                            name_header: header_value(&a.name),
                            weight: a.weight,
                            carry: arm(e, a),
                        })
                        .collect(),
                    shadows: e
                        .shadows
                        .iter()
                        .map(|s| ShadowRoute {
                            name: s.arm.name.clone(),
                            percent: s.percent,
                            seed: bucket::mirror_seed(&e.salt, &s.arm.name),
                            carry: arm(e, &s.arm),
                        })
                        .collect(),
                    run_starts,
                    run_arms,
                    metrics: e.metrics.clone(),
                    attribution_window: e.attribution_window,
                }
            })
            .collect();
        let max_peek = config
            .experiments
            .iter()
            .filter(|e| {
                e.matcher.needs_body() || e.unit.as_ref().is_some_and(|u| u.body_field().is_some())
            })
            .map(|e| e.matcher.max_peek)
            .max()
            .unwrap_or(0);
        RoutingTable {
            experiments,
            default: config.default_backend.as_deref().map(default),
            max_peek,
        }
    }

    /// The first experiment (in declared order) that matches, else the
    /// default. With the body unread (`req.body` is `None`), the first rule
    /// whose head matches and that reads the body's `model` answers
    /// [`Route::NeedsBody`]; every request for which no such rule's head
    /// matches is routed without reading its body.
    pub fn route(&self, req: &RequestView<'_>) -> Route<'_, A> {
        for e in self.experiments.iter() {
            if !matcher::matches_head(&e.matcher, req) {
                continue;
            }
            if e.matcher.needs_body() {
                match req.body {
                    None => {
                        return Route::NeedsBody {
                            max_peek: self.max_peek,
                        }
                    }
                    Some(b) if !matcher::matches_body(&e.matcher, b) => continue,
                    Some(_) => {}
                }
            }
            return Route::Experiment(e);
        }
        match &self.default {
            Some(d) => Route::Default(d),
            None => Route::NotFound,
        }
    }

    pub fn experiment(&self, name: &str) -> Option<&ExperimentRoute<A>> {
        self.experiments.iter().find(|e| e.name == name)
    }
}

impl<A> ExperimentRoute<A> {
    /// The body field the unit key comes from (`unit: { body: user }`).
    pub fn unit_body_field(&self) -> Option<&str> {
        self.unit.as_ref().and_then(|u| u.body_field())
    }

    /// The largest body this experiment reads (`match.max_peek`).
    pub fn max_peek(&self) -> usize {
        self.matcher.max_peek
    }

    /// The `model` rule this experiment matches on, if any.
    pub fn model_rule(&self) -> Option<&config::ModelRule> {
        self.matcher.model.as_ref()
    }
}

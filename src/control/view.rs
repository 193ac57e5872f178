//! The experiment view: what `GET /v1/experiments` and `GET /v1/experiments/{name}`
//! answer, as typed structs that the admin API serializes and `abgate status` and
//! the scenario runner read back, plus the text both print ([`render_status`]).
//!
//! Owns the view's shape: field names, which fields are `null` and which absent.
//! Never changes state; reading a view takes the control plane's lock only to
//! copy what it needs.

mod render;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::actions::phase_name;
use super::ControlPlane;
use crate::outcomes::recorder::OutcomeSnapshot;
use crate::outcomes::summary::MetricStats;
use crate::stats::{ComparisonView, Verdict};
use crate::store::{Decision, ExperimentPhase};

pub use render::{render_fleet, render_status};

/// `GET /v1/experiments`: every experiment in force, in declared order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentList {
    pub experiments: Vec<ExperimentView>,
}

/// One experiment: its state, weights, per-arm outcomes, last decision and the
/// controller's latest analysis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentView {
    pub name: String,
    /// `running`, `paused`, `rolled_back`, `promoted` or `concluded`.
    pub state: String,
    /// The arm every other arm is compared with.
    pub baseline: String,
    /// Version of the routing table in force.
    pub table_version: u64,
    /// Version of the config in force.
    pub config_version: u64,
    /// Configured arms, in declared order.
    pub arms: Vec<ArmView>,
    /// Arms no longer configured whose counts are still held.
    pub removed_arms: Vec<RemovedArmView>,
    /// The latest decision (manual or automatic); `null` before the first.
    pub last_decision: Option<Decision>,
    /// The controller's latest look; `null` for an experiment without a `kind`
    /// or before the first look.
    pub analysis: Option<AnalysisView>,
    /// The drift watch on the arm in force: its status, reference, each
    /// metric's detector and any alarm; absent for an unwatched experiment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<Value>,
    /// `capture:` and what it has done (examples written, evicted, dropped,
    /// bytes stored); absent for an experiment that captures nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<Value>,
}

/// One configured arm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmView {
    /// Every metric of the arm's assigned traffic, by name.
    pub metrics: BTreeMap<String, MetricView>,
    pub name: String,
    pub backend: String,
    /// The model the arm's backend is sent: the arm's `model` rewrite, else
    /// the client model the experiment matches; absent when not known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Share of traffic in percent (0..=100); 0 on a shadow arm.
    pub weight: f64,
    pub baseline: bool,
    /// `primary` for an arm that serves clients, `shadow` for one that only
    /// gets copies (its outcomes are shown, never compared by the controller).
    /// Views saved before shadow arms existed read as `primary`.
    #[serde(default = "primary_role")]
    pub role: String,
    /// A shadow arm's share of the experiment's requests copied to it, in
    /// percent (0..=100); absent on live arms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_percent: Option<f64>,
    /// Outcomes of assigned (not forced) requests; `null` until the arm has a recorder.
    pub assigned: Option<OutcomeView>,
    /// Requests sent to the arm by an override, kept out of every statistic.
    pub forced_requests: u64,
    /// A shadow arm's copies paired with their primary twins; absent on
    /// live arms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paired: Option<PairedView>,
}

/// A shadow arm's pairs: each mirrored request's primary twin (x) and its
/// copy (y), on the same request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairedView {
    /// Pairs with both sides recorded.
    pub pairs: u64,
    /// Pairs left out: the client left before the primary's end, or the
    /// copy was never sent.
    pub dropped: u64,
    /// Continuous metrics over the pairs where both sides have them.
    pub metrics: BTreeMap<String, PairedMetricView>,
    /// Binary metrics as discordant pairs.
    pub events: BTreeMap<String, PairedEventView>,
}

/// One continuous metric over pairs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairedMetricView {
    pub pairs: u64,
    pub primary_mean: Option<f64>,
    pub shadow_mean: Option<f64>,
    /// Mean of `shadow − primary` per pair.
    pub mean_difference: Option<f64>,
    /// The paired sequential test of `shadow − primary` (absolute, in the
    /// metric's units): estimate, always-valid confidence sequence and
    /// p-value at α = 0.05; absent until it can be computed (two pairs with
    /// some spread).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<crate::stats::SequentialEstimate>,
}

/// One binary metric over pairs: the discordant counts and the sequential
/// McNemar test on them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairedEventView {
    #[serde(flatten)]
    pub counts: crate::outcomes::pairs::Discordant,
    /// Risk difference `shadow − primary`, its confidence sequence and the
    /// exact sequential McNemar p-value at α = 0.05; absent until a pair is
    /// discordant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<crate::stats::SequentialEstimate>,
}

impl PairedView {
    pub fn from_snapshot(p: &crate::outcomes::pairs::PairSnapshot) -> PairedView {
        use crate::stats::paired;
        let metric = |m: &paired::PairedSums| {
            let some = m.n > 0;
            PairedMetricView {
                pairs: m.n,
                primary_mean: some.then(|| m.mean_primary()),
                shadow_mean: some.then(|| m.mean_shadow()),
                mean_difference: some.then(|| m.mean_shadow() - m.mean_primary()),
                test: paired::paired_two_sided(
                    m,
                    crate::stats::Scale::Absolute,
                    &crate::stats::MixtureConfig::default(),
                )
                .ok(),
            }
        };
        let event = |d: crate::outcomes::pairs::Discordant| PairedEventView {
            counts: d,
            test: paired::DiscordantPairs::new(d.pairs, d.primary_only, d.shadow_only)
                .ok()
                .and_then(|pairs| {
                    paired::discordant_two_sided(&pairs, &paired::DiscordantConfig::default()).ok()
                }),
        };
        PairedView {
            pairs: p.pairs(),
            dropped: p.dropped,
            metrics: [
                ("latency_ms", metric(&p.latency_ms)),
                ("ttfb_ms", metric(&p.ttfb_ms)),
                ("ttft_ms", metric(&p.ttft_ms)),
                ("completion_tokens", metric(&p.completion_tokens)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            events: [
                ("error", p.error),
                ("stream_incomplete", p.stream_incomplete),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), event(v)))
            .collect(),
        }
    }
}

/// The role of every arm that serves clients.
pub const PRIMARY: &str = "primary";
/// The role of an arm that only gets shadow copies.
pub const SHADOW: &str = "shadow";

fn primary_role() -> String {
    PRIMARY.to_string()
}

/// An arm no longer configured: its counts stay readable until they are dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemovedArmView {
    pub name: String,
    pub assigned: OutcomeView,
}

/// Outcomes of an arm's requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomeView {
    pub requests: u64,
    pub errors: u64,
    /// `errors / requests` (fraction 0..1); `null` without requests.
    pub error_rate: Option<f64>,
    pub latency_ms: LatencyView,
    pub ttfb_ms: TtfbView,
}

/// Whole-response latency (ms, to the microsecond); `null` without samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyView {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub mean: Option<f64>,
}

/// Time to first byte (ms, to the microsecond); `null` without samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TtfbView {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

/// One metric of one arm's assigned traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MetricView {
    Binary {
        n: u64,
        successes: u64,
        /// `successes / n`; `null` when `n` is 0.
        rate: Option<f64>,
    },
    Continuous {
        n: u64,
        /// `null` when `n` is 0.
        mean: Option<f64>,
        /// Sample variance; `null` when `n` < 2.
        variance: Option<f64>,
    },
}

impl MetricView {
    /// Observations (binary: trials).
    pub fn n(&self) -> u64 {
        match self {
            MetricView::Binary { n, .. } | MetricView::Continuous { n, .. } => *n,
        }
    }
}

/// The controller's latest look at an experiment, as it published it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AnalysisView {
    /// A running experiment, judged.
    Judged(Box<Judgement>),
    /// Automatic decisions are off (the experiment is not running).
    Off {
        /// The phase, e.g. `paused`.
        status: String,
        note: String,
    },
    /// Anything else the controller publishes, passed through as it is so the
    /// admin API never drops a field it does not know.
    Other(Value),
}

/// One look of the controller at a running experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    /// Always `running`.
    pub status: String,
    /// The verdict's name, e.g. `continue`, `rollback`.
    pub verdict: String,
    /// The verdict in words, starting with its name.
    pub explain: String,
    /// The verdict with its evidence.
    pub details: Option<Verdict>,
    /// Canary: the step in force, from 1; `null` for an A/B test.
    pub step: Option<u64>,
    /// Canary: each step's candidate weight in percent.
    pub steps: Vec<f64>,
    /// Candidate units since the step began (A/B: the smallest arm's units).
    pub step_units: u64,
    pub step_minimums_met: bool,
    /// Looks taken so far.
    pub looks: u64,
    /// Every guardrail and primary comparison behind the verdict.
    pub comparisons: Vec<ComparisonView>,
    /// Units per arm the evidence has seen.
    pub samples: BTreeMap<String, u64>,
    /// Canary in its shadow step: the pairs and each guardrail on them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowStepView>,
}

/// A canary's shadow step: the candidate serves nobody, `arm` (its backend
/// under [`crate::config::step_shadow_name`]) gets copies of
/// `mirror_percent` of the requests, and each copy is compared with the
/// request it copies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowStepView {
    pub arm: String,
    pub mirror_percent: f64,
    /// Pairs since the step began, and pairs left out.
    pub pairs: u64,
    pub dropped: u64,
    pub guardrails: Vec<crate::stats::ShadowGuardrail>,
}

impl AnalysisView {
    /// The look, if the controller judged the experiment.
    pub fn judgement(&self) -> Option<&Judgement> {
        match self {
            AnalysisView::Judged(j) => Some(j),
            _ => None,
        }
    }
}

impl ExperimentView {
    /// Requests assigned to the arms other than the baseline: what the
    /// statistics compare with it (shadow copies are no treatment).
    pub fn treatment_requests(&self) -> u64 {
        self.arms
            .iter()
            .filter(|a| !a.baseline && a.role != SHADOW)
            .filter_map(|a| a.assigned.as_ref())
            .map(|o| o.requests)
            .sum()
    }
}

/// The `summary` a decision's reason carries (free-form JSON), or "".
pub fn decision_summary(d: &Decision) -> &str {
    d.reason
        .get("summary")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Microseconds to milliseconds, rounded to the microsecond.
fn ms(us: Option<f64>) -> Option<f64> {
    us.map(|v| (v / 1000.0 * 1000.0).round() / 1000.0)
}

impl From<&OutcomeSnapshot> for OutcomeView {
    fn from(o: &OutcomeSnapshot) -> Self {
        let requests = o.requests();
        OutcomeView {
            requests,
            errors: o.errors,
            error_rate: (requests > 0).then(|| o.errors as f64 / requests as f64),
            latency_ms: LatencyView {
                p50: ms(o.latency.quantile_us(0.5)),
                p99: ms(o.latency.quantile_us(0.99)),
                mean: ms(o.latency.mean_us()),
            },
            ttfb_ms: TtfbView {
                p50: ms(o.ttfb.quantile_us(0.5)),
                p99: ms(o.ttfb.quantile_us(0.99)),
            },
        }
    }
}

impl From<&MetricStats> for MetricView {
    fn from(m: &MetricStats) -> Self {
        match m {
            MetricStats::Binary(b) => MetricView::Binary {
                n: b.n,
                successes: b.successes,
                rate: (b.n > 0).then(|| b.mean()),
            },
            MetricStats::Continuous(c) => MetricView::Continuous {
                n: c.n,
                mean: (c.n > 0).then_some(c.mean),
                variance: (c.n > 1).then(|| c.variance()),
            },
        }
    }
}

impl ControlPlane {
    /// Names of the experiments in force, in declared order.
    pub async fn experiment_names(&self) -> Vec<String> {
        let cur = self.current.lock().await;
        cur.config
            .experiments
            .iter()
            .map(|e| e.name.clone())
            .collect()
    }

    /// One experiment's state, weights and per-arm outcomes; `None` if unknown.
    pub async fn experiment_view(&self, name: &str) -> Option<ExperimentView> {
        let (config_version, phase, baseline, arms_cfg, experiment) = {
            let cur = self.current.lock().await;
            let mut experiment = cur.config.experiment(name)?.clone();
            // A canary in its shadow step shows the shadow its candidate
            // has for now.
            super::add_step_shadow(&mut experiment, cur.states.get(name));
            let e = &experiment;
            let phase = cur
                .states
                .get(name)
                .map_or(ExperimentPhase::Running, |s| s.phase);
            // Live arms, then shadow arms (with their mirrored percent).
            let arms: Vec<(String, String, Option<String>, Option<u32>)> = e
                .arms
                .iter()
                .map(|a| (a, None))
                .chain(e.shadows.iter().map(|s| (&s.arm, Some(s.percent))))
                .map(|(a, mirror)| {
                    (
                        a.name.clone(),
                        a.backend.clone(),
                        e.arm_model(a).map(str::to_string),
                        mirror,
                    )
                })
                .collect();
            (
                cur.config_version,
                phase,
                e.baseline.clone(),
                arms,
                experiment,
            )
        };
        // Shadow arms' statistics, summed as a live arm's are: the same
        // recorder reads, on the experiment's shadows in place of its arms.
        let shadows_only = crate::config::Experiment {
            arms: experiment.shadows.iter().map(|s| s.arm.clone()).collect(),
            ..experiment.clone()
        };
        let mut metric_stats =
            crate::outcomes::summary::experiment_metrics(&self.recorders, &experiment);
        metric_stats.extend(crate::outcomes::summary::experiment_metrics(
            &self.recorders,
            &shadows_only,
        ));
        let table = self.plane.table.load_full();
        let route = table.routes.experiment(name)?;
        let snaps = self.recorders.experiment(name);
        let arms = arms_cfg
            .iter()
            .map(|(arm, backend, model, mirror)| {
                let weight = route
                    .arms
                    .iter()
                    .find(|a| &a.name == arm)
                    .map_or(0, |a| a.weight);
                let snap = snaps.iter().find(|s| &s.arm == arm);
                let metrics = metric_stats
                    .iter()
                    .find(|m| &m.arm == arm)
                    .map(|m| {
                        m.metrics
                            .iter()
                            .map(|(k, v)| (k.clone(), MetricView::from(v)))
                            .collect()
                    })
                    .unwrap_or_default();
                ArmView {
                    metrics,
                    name: arm.clone(),
                    backend: backend.clone(),
                    model: model.clone(),
                    weight: f64::from(weight) / 100.0,
                    baseline: *arm == baseline,
                    role: if mirror.is_some() { SHADOW } else { PRIMARY }.to_string(),
                    mirror_percent: mirror.map(|p| f64::from(p) / 100.0),
                    assigned: snap.map(|s| OutcomeView::from(&s.assigned)),
                    forced_requests: snap.map_or(0, |s| s.forced.requests()),
                    paired: mirror.map(|_| {
                        let p = self.recorders.pairs(name, arm).unwrap_or_default();
                        PairedView::from_snapshot(&p)
                    }),
                }
            })
            .collect();
        // Arms no longer configured keep their counts readable.
        let removed_arms = snaps
            .iter()
            .filter(|s| !arms_cfg.iter().any(|(a, _, _, _)| a == &s.arm))
            .map(|s| RemovedArmView {
                name: s.arm.clone(),
                assigned: OutcomeView::from(&s.assigned),
            })
            .collect();
        let owned = name.to_string();
        let last_decision = self
            .blocking(move |s| s.decisions(Some(&owned), 1))
            .await
            .ok()
            .and_then(|d| d.into_iter().next());
        // The controller publishes JSON; read here, off its loop, only when asked.
        let analysis = self
            .analysis(name)
            .map(|v| serde_json::from_value(v.clone()).unwrap_or(AnalysisView::Other(v)));
        Some(ExperimentView {
            name: name.to_string(),
            state: phase_name(phase).to_string(),
            baseline,
            table_version: table.version,
            config_version,
            arms,
            removed_arms,
            last_decision,
            analysis,
            watch: self.watch_view(name),
            capture: experiment.capture.as_ref().map(|c| {
                let mut v = self.plane.capture.stats().view(name);
                v["percent"] = serde_json::json!(f64::from(c.percent) / 100.0);
                v["max_body"] = serde_json::json!(c.max_body);
                v["max_total"] = serde_json::json!(c.max_total);
                v
            }),
        })
    }
}

impl ControlPlane {
    /// The `abgate analyze` input for an experiment's current statistics.
    pub async fn export(&self, name: &str) -> Option<Value> {
        let experiment = {
            let cur = self.current.lock().await;
            cur.config.experiment(name)?.clone()
        };
        let table = self.plane.table.load_full();
        let weights = table
            .routes
            .experiment(name)?
            .arms
            .iter()
            .map(|a| (a.name.clone(), a.weight))
            .collect();
        let arms = crate::outcomes::summary::experiment_metrics(&self.recorders, &experiment);
        let mut input = crate::outcomes::summary::analyze_input(&experiment, &weights, &arms);
        // Live arms are what `abgate analyze` compares; shadow arms ride
        // along under their own key, labelled, and are never analysed.
        if let Some(roles) = input["arms"].as_object_mut() {
            for arm in roles.values_mut() {
                arm["role"] = PRIMARY.into();
            }
        }
        if !experiment.shadows.is_empty() {
            let shadows_only = crate::config::Experiment {
                arms: experiment.shadows.iter().map(|s| s.arm.clone()).collect(),
                ..experiment.clone()
            };
            let stats =
                crate::outcomes::summary::experiment_metrics(&self.recorders, &shadows_only);
            let shadows: serde_json::Map<String, Value> = experiment
                .shadows
                .iter()
                .zip(&stats)
                .map(|(s, m)| {
                    let metrics: BTreeMap<String, MetricView> = m
                        .metrics
                        .iter()
                        .map(|(k, v)| (k.clone(), MetricView::from(v)))
                        .collect();
                    (
                        s.arm.name.clone(),
                        serde_json::json!({
                            "role": SHADOW,
                            "backend": s.arm.backend,
                            "mirror_percent": f64::from(s.percent) / 100.0,
                            "assigned": m.assigned,
                            "metrics": metrics,
                        }),
                    )
                })
                .collect();
            input["shadows"] = Value::Object(shadows);
        }
        Some(input)
    }
}

impl ControlPlane {
    /// Refreshes `abgate_experiment_state` (0 running, 1 paused, 2 rolled back,
    /// 3 promoted, 4 concluded), `abgate_experiment_weight{arm}` (percent),
    /// `abgate_arm_model_info` and `abgate_arm_role{role}` (1 for each
    /// configured arm's role) before a scrape.
    pub async fn refresh_gauges(&self) {
        let phases: Vec<(String, ExperimentPhase)> = {
            let cur = self.current.lock().await;
            cur.config
                .experiments
                .iter()
                .map(|e| {
                    let p = cur
                        .states
                        .get(&e.name)
                        .map_or(ExperimentPhase::Running, |s| s.phase);
                    (e.name.clone(), p)
                })
                .collect()
        };
        let models: Vec<[String; 4]> = {
            let cur = self.current.lock().await;
            cur.config
                .experiments
                .iter()
                .flat_map(|e| {
                    e.arms.iter().filter_map(move |a| {
                        Some([
                            e.name.clone(),
                            a.name.clone(),
                            a.backend.clone(),
                            e.arm_model(a)?.to_string(),
                        ])
                    })
                })
                .collect()
        };
        let t = &self.telemetry;
        // An info metric: which model each arm's backend is sent (1), and 0
        // for what was shown before and is no longer configured.
        let info = |[e, a, b, m]: &[String; 4], v: f64| {
            t.gauge(
                "abgate_arm_model_info",
                &[("experiment", e), ("arm", a), ("backend", b), ("model", m)],
            )
            .set(v)
        };
        let previous = std::mem::replace(
            &mut *self
                .model_info
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            models.clone(),
        );
        for gone in previous.iter().filter(|p| !models.contains(p)) {
            info(gone, 0.0);
        }
        for m in &models {
            info(m, 1.0);
        }
        // Another info metric: each configured arm's role. Per-arm series
        // keep their labels (a new label would split every existing series
        // and break the queries written against them); join on
        // (experiment, arm) to split a dashboard by role.
        let roles: Vec<[String; 3]> = {
            let cur = self.current.lock().await;
            cur.config
                .experiments
                .iter()
                .flat_map(|e| {
                    // A canary's shadow step adds its `CANDIDATE/shadow` arm
                    // for the step's length: labelled like a configured one.
                    let step = super::step_shadow(e, cur.states.get(&e.name))
                        .map(|(c, _)| (crate::config::step_shadow_name(&c.name), SHADOW));
                    let live = e.arms.iter().map(|a| (a.name.clone(), PRIMARY));
                    let shadow = e.shadows.iter().map(|s| (s.arm.name.clone(), SHADOW));
                    live.chain(shadow)
                        .chain(step)
                        .map(|(a, r)| [e.name.clone(), a, r.to_string()])
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let role = |[e, a, r]: &[String; 3], v: f64| {
            t.gauge(
                "abgate_arm_role",
                &[("experiment", e), ("arm", a), ("role", r)],
            )
            .set(v)
        };
        let previous = std::mem::replace(
            &mut *self
                .role_info
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            roles.clone(),
        );
        for gone in previous.iter().filter(|p| !roles.contains(p)) {
            role(gone, 0.0);
        }
        for r in &roles {
            role(r, 1.0);
        }
        for (name, phase) in &phases {
            let code = match phase {
                ExperimentPhase::Running => 0.0,
                ExperimentPhase::Paused => 1.0,
                ExperimentPhase::RolledBack => 2.0,
                ExperimentPhase::Promoted => 3.0,
                ExperimentPhase::Concluded => 4.0,
            };
            t.gauge("abgate_experiment_state", &[("experiment", name)])
                .set(code);
        }
        let table = self.plane.table.load_full();
        for e in table.routes.experiments.iter() {
            for a in e.arms.iter() {
                t.gauge(
                    "abgate_experiment_weight",
                    &[("experiment", &e.name), ("arm", &a.name)],
                )
                .set(f64::from(a.weight) / 100.0);
            }
        }
    }
}

impl ControlPlane {
    /// Saves per-arm outcome counts and the controller runs to the store, off
    /// the async worker threads (SQLite is blocking I/O). Failures are logged;
    /// the next snapshot retries.
    pub async fn save_outcomes(self: &std::sync::Arc<Self>) {
        // Runs first, counts second: a saved run never saw counts the saved
        // counts lack, so after a restart its per-period deltas are never negative.
        // Only the leader's runs are saved: a replica that stepped down
        // must not overwrite the new leader's.
        let leads = self.leads();
        let runs = if leads {
            self.take_unsaved_runs()
        } else {
            Vec::new()
        };
        let controlled: Vec<String> = self
            .controlled_experiments()
            .await
            .into_iter()
            .map(|(name, _)| name)
            .chain(
                self.watched_experiments()
                    .await
                    .into_iter()
                    .map(|(name, _)| super::controller::watch_run_key(&name)),
            )
            .collect();
        let c = self.clone();
        let saved = tokio::task::spawn_blocking(move || {
            let states = crate::outcomes::persist::states(
                &c.recorders,
                &c.plane.table.load_full().routes,
                c.fleet.is_some(),
            );
            // In a fleet the recorders hold everyone's counts; this
            // replica's row is its own.
            let states = match &c.fleet {
                Some(f) => f.counts.own(states),
                None => states,
            };
            let mut arm_stats = crate::outcomes::persist::rows(states)?;
            {
                let saved = c.saved_rows.lock().unwrap_or_else(|e| e.into_inner());
                arm_stats.retain(|(e, a, json)| saved.get(&(e.clone(), a.clone())) != Some(json));
            }
            c.store.save_snapshot(&crate::store::MemorySnapshot {
                arm_stats: &arm_stats,
                controller_runs: &runs,
                controlled: leads.then_some(controlled.as_slice()),
            })?;
            // Only once committed: a failed save writes the rows again next time.
            c.saved_rows
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(arm_stats.into_iter().map(|(e, a, json)| ((e, a), json)));
            if let Some(f) = &c.fleet {
                let others = c.store.fleet_arm_stats(f.counts.next_read())?;
                f.counts.absorb(&c.recorders, &others.rows)?;
                f.counts.read_done(others.read_at_ms);
            }
            Ok::<(), crate::store::StoreError>(())
        })
        .await;
        if let Ok(Err(e)) = saved {
            tracing::warn!(error = %e, "cannot save per-arm outcome counts and controller runs");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{ComparisonEvidence, EffectScale, TestKind};
    use serde_json::json;

    fn evidence(metric: &str) -> ComparisonEvidence {
        ComparisonEvidence {
            metric: metric.into(),
            arm: "canary".into(),
            test: TestKind::NonInferiority,
            effect: EffectScale::Relative,
            estimate: 0.012,
            ci: [-0.03, f64::MAX],
            ci_alpha: 0.025,
            p_value: 0.004,
            threshold: 0.025,
            units_arm: 500,
            units_baseline: 4500,
            events_arm: 9,
            events_baseline: 80,
        }
    }

    /// The controller publishes its look as JSON; the view must hand it on
    /// exactly, whatever its shape.
    #[test]
    fn every_analysis_shape_passes_through_unchanged() {
        let verdict = Verdict::Promote {
            arm: "canary".into(),
            evidence: evidence("accepted"),
            guardrails: vec![evidence("error")],
        };
        let comparison = ComparisonView {
            role: "primary".into(),
            evidence: evidence("accepted"),
            ready: true,
            non_inferior: None,
        };
        // As the controller builds it.
        let judged = json!({
            "status": "running",
            "verdict": "promote",
            "explain": "promote: canary is better",
            "details": serde_json::to_value(&verdict).unwrap(),
            "step": null,
            "steps": [0.1, 0.5, 1.0],
            "step_units": 120,
            "step_minimums_met": true,
            "looks": 17,
            "comparisons": [comparison],
            "samples": {"stable": 4500, "canary": 500},
        });
        let off = json!({"status": "paused", "note": "automatic decisions are off"});
        let other = json!({"status": "warming", "progress": 0.5});
        for v in [&judged, &off, &other] {
            let a: AnalysisView = serde_json::from_value(v.clone()).unwrap();
            assert_eq!(&serde_json::to_value(&a).unwrap(), v);
        }
        let a: AnalysisView = serde_json::from_value(judged).unwrap();
        let j = a.judgement().expect("a judged look");
        assert_eq!(j.details, Some(verdict));
        assert_eq!(j.comparisons, vec![comparison]);
        assert!(serde_json::from_value::<AnalysisView>(off)
            .unwrap()
            .judgement()
            .is_none());
    }

    #[test]
    fn the_view_keeps_its_json_shape() {
        let old = json!({
            "name": "exp", "state": "running", "baseline": "stable",
            "table_version": 3, "config_version": 2,
            "arms": [
                {"metrics": {
                    "accepted": {"type": "binary", "n": 0, "successes": 0, "rate": null},
                    "latency_ms": {"type": "continuous", "n": 1, "mean": 12.5, "variance": null}},
                 "name": "stable", "backend": "b1", "weight": 90.0, "baseline": true,
                 "assigned": {"requests": 4, "errors": 1, "error_rate": 0.25,
                              "latency_ms": {"p50": 1.5, "p99": 9.0, "mean": 2.25},
                              "ttfb_ms": {"p50": 1.0, "p99": null}},
                 "forced_requests": 2},
                {"metrics": {}, "name": "canary", "backend": "b2", "weight": 10.0,
                 "baseline": false, "assigned": null, "forced_requests": 0},
            ],
            "removed_arms": [{"name": "old", "assigned": {"requests": 0, "errors": 0,
                "error_rate": null, "latency_ms": {"p50": null, "p99": null, "mean": null},
                "ttfb_ms": {"p50": null, "p99": null}}}],
            "last_decision": {"id": 7, "experiment": "exp", "kind": "pause",
                "from_weights": {"stable": 9000, "canary": 1000},
                "to_weights": {"stable": 9000, "canary": 1000},
                "reason": {"summary": "by hand"}, "actor": "ops",
                "created_at_ms": 1700000000000u64, "applied": true},
            "analysis": null,
        });
        let view: ExperimentView = serde_json::from_value(old.clone()).unwrap();
        // Views from before shadow arms read back with every arm a primary;
        // that field is the only addition.
        let mut now = old.clone();
        for a in now["arms"].as_array_mut().unwrap() {
            a["role"] = json!("primary");
        }
        assert_eq!(serde_json::to_value(&view).unwrap(), now);
        assert!(view.arms.iter().all(|a| a.mirror_percent.is_none()));
        assert_eq!(view.treatment_requests(), 0);
        assert_eq!(
            decision_summary(view.last_decision.as_ref().unwrap()),
            "by hand"
        );
    }
}

//! One experiment's control loop.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::clock::{now_ms, thread_cpu_time};
use crate::config::{stats_policy, uses_events};
use crate::config::{
    ControlPolicy, Experiment, ExperimentKind, OnFailure, OnSuccess, Step, BUCKETS,
};
use crate::control::decision::{all_to, DecisionKind};
use crate::control::{arms_fingerprint, ControlPlane};
use crate::outcomes::pairs::PairSnapshot;
use crate::outcomes::recorder::ArmRecorder;
use crate::outcomes::summary::{experiment_sums_of, ArmMetrics, ArmSums, MetricStats};
use crate::stats::{
    self, decide, ArmSnapshot, ErrorAttribution, ExperimentEvidence, MetricData, MetricSnapshot,
    PairedData, ShadowEvidence, ShadowFacts, ShadowVerdict, Snapshot, SrmMonitor, StepFacts,
    Verdict,
};
use crate::store::{ExperimentPhase, ExperimentState, Weights};

use super::periods::Periods;

/// What the loop carries between ticks. It is saved with the per-arm counts
/// (at most once per store snapshot, and when the loop stops), so after a restart the
/// experiment resumes with its evidence (running minima, intersected intervals,
/// attribution likelihoods, SRM segments) instead of starting afresh.
#[derive(Default, Serialize, Deserialize)]
struct Carried {
    /// Whose run this is: the policy and the arms as configured. A saved run
    /// is resumed only by the same experiment definition.
    owner: String,
    /// When the recorded experiment began (None before its first decision).
    started_ms: Option<u64>,
    evidence: ExperimentEvidence,
    /// Per guardrail metric, per treatment arm: the attribution test.
    attribution: BTreeMap<String, BTreeMap<String, ErrorAttribution>>,
    srm: Option<(Vec<String>, SrmMonitor)>,
    /// Cumulative per-arm counts at the previous tick.
    prev: BTreeMap<String, PeriodCounts>,
    /// Candidate units assigned when the current step began.
    step_base: Option<(usize, u64)>,
    /// The last one-off decision recorded (to record a Hold once, not every tick).
    last_once: Option<DecisionKind>,
    /// Where a run saved by an earlier version began (read, never written:
    /// it becomes the first of `periods`).
    #[serde(default, skip_serializing)]
    window_start: Option<Vec<ArmSums>>,
    /// The run's periods of constant weights, from its first look: arms are
    /// compared only on what accumulated while they ran side by side (so the
    /// baseline's history from before the experiment never looks like a
    /// difference between arms), and within each period.
    #[serde(default)]
    periods: Periods,
    /// When this loop first looked at the experiment (Unix ms).
    first_seen_ms: Option<u64>,
    /// A canary's shadow step: its pairs and tests (None outside one).
    #[serde(default)]
    shadow: Option<ShadowRun>,
}

/// What a shadow step carries: the candidate's pair book when the step
/// began (earlier pairs belong to an earlier run) and the tests' evidence.
#[derive(Default, Serialize, Deserialize)]
struct ShadowRun {
    step: usize,
    base: PairSnapshot,
    evidence: ShadowEvidence,
}

impl Carried {
    fn fresh(owner: String, started_ms: Option<u64>) -> Carried {
        Carried {
            owner,
            started_ms,
            ..Carried::default()
        }
    }

    /// Whether this run belongs to the experiment as it is now. A run saved
    /// before the experiment's first decision belongs to what follows it.
    fn belongs_to(&self, owner: &str, started_ms: Option<u64>) -> bool {
        self.owner == owner && (self.started_ms.is_none() || self.started_ms == started_ms)
    }
}

/// Identifies an experiment definition: its arms as configured and its policy
/// (`policy_hash`, fixed for a controller task: a new policy means a new task).
fn owner_of(e: &Experiment, policy_hash: u64) -> String {
    format!("{}-{policy_hash:016x}", arms_fingerprint(e))
}

struct Run {
    policy: stats::Policy,
    c: Carried,
    /// Whether a run saved before a restart was looked for.
    looked_for_saved: bool,
    /// The next look only records counts (see [`period_deltas`]).
    rebase_periods: bool,
    /// The weights of the last look, and until when (Unix ms) looks after
    /// they changed only record counts: in a fleet, the other replicas'
    /// counts from before a weight change arrive up to a couple of snapshots
    /// later, and counted after it they would look like a sample ratio
    /// mismatch (see `ControlPlane::counts_settle`).
    last_weights: Vec<(String, u32)>,
    settle_until_ms: u64,
    counts_settle_ms: u64,
    /// Hash of the task's policy, part of every owner ([`owner_of`]).
    policy_hash: u64,
    /// The candidate arm's recorder, which wakes the loop every `look_every`
    /// completed candidate requests (None: look on the interval only).
    watch: Option<Arc<ArmRecorder>>,
    /// Whether `c` changed since it was last published.
    unpublished: bool,
    /// The store snapshot count ([`ControlPlane::runs_taken`]) when `c` was
    /// last published: the loop publishes again only once a snapshot has
    /// taken the previous copy. Serializing the run costs more than the rest
    /// of a look, and looks follow the traffic (one per `look_every` canary
    /// requests), while the store saves once a second.
    published_at: Option<u64>,
    /// The metrics a look reads: the guardrails', the primary's, and the
    /// error and slow counts the per-period tests use.
    needed: Vec<String>,
    /// The verdict last shown in the analysis, and when (Unix ms).
    shown: Option<(&'static str, u64)>,
    /// Cache of [`owner_of`]: a hash of the arms as configured, and the owner.
    owner: Option<(u64, String)>,
    /// Where and when the current look's work began (thread, its CPU time),
    /// set once the look holds its view of the experiment.
    look_clock: Option<(std::thread::ThreadId, std::time::Duration)>,
    /// Whether a run that does not read back was logged (once per run).
    unsaveable_logged: bool,
}

/// How often the analysis shown by the admin API is rebuilt while its
/// verdict stays the same (ms): once a second, the pace of `abgate status
/// --watch` and of the store's snapshot.
const SHOW_EVERY_MS: u64 = 1000;

/// One arm's cumulative counts at a look: (assigned, errors, slow).
type PeriodCounts = (u64, u64, u64);

/// What each arm accumulated since the previous look, for the tests fed per
/// period with the weights in force (SRM segments, error attribution); `prev`
/// becomes the current counts. With `rebase` (the first look after resuming a
/// saved run) the deltas are zero: what accrued between the run's last save
/// and the restart may span a weight change, and leaving it out keeps those
/// tests valid at the cost of at most a second of their data (the cumulative
/// comparisons still see it).
fn period_deltas(
    prev: &mut BTreeMap<String, PeriodCounts>,
    arms: &[ArmMetrics],
    rebase: bool,
) -> BTreeMap<String, PeriodCounts> {
    arms.iter()
        .map(|a| {
            let now = (
                a.assigned,
                binary_successes(a, "error"),
                binary_successes(a, "slow"),
            );
            let before = prev.insert(a.arm.clone(), now).unwrap_or((0, 0, 0));
            let delta = if rebase {
                (0, 0, 0)
            } else {
                (
                    now.0.saturating_sub(before.0),
                    now.1.saturating_sub(before.1),
                    now.2.saturating_sub(before.2),
                )
            };
            (a.arm.clone(), delta)
        })
        .collect()
}

/// Runs one experiment's loop until `stop` turns true (or its sender is
/// gone); the run is then published, so a clean stop saves its last look.
pub async fn run(
    control: Arc<ControlPlane>,
    name: String,
    cfg: ControlPolicy,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let policy = stats_policy(&cfg);
    if let Err(e) = policy.validate() {
        tracing::error!(experiment = %name, error = %e, "invalid analysis policy; the controller will not run");
        return;
    }
    let mut r = Run {
        policy,
        c: Carried::default(),
        looked_for_saved: false,
        rebase_periods: false,
        last_weights: Vec::new(),
        settle_until_ms: 0,
        counts_settle_ms: control.counts_settle().as_millis() as u64,
        policy_hash: xxhash_rust::xxh3::xxh3_64(format!("{cfg:?}").as_bytes()),
        watch: None,
        unpublished: false,
        published_at: None,
        look_clock: None,
        unsaveable_logged: false,
        shown: None,
        owner: None,
        needed: cfg
            .guardrails
            .iter()
            .map(|g| g.metric.clone())
            .chain(cfg.primary.iter().map(|p| p.metric.clone()))
            .chain(["error".to_string(), "slow".to_string()])
            .collect(),
    };
    // A look happens after `look_every` new candidate outcomes or after
    // `interval`, whichever comes first: decisions follow the evidence, and
    // the interval still looks at an idle experiment (budget, step duration).
    // Every look is anytime-valid, so looking more often costs no validity.
    // What the looks cost (`abgate_controller_look_cpu_seconds_total` over
    // `abgate_controller_looks_total` is the mean CPU per look).
    let labels = [("experiment", name.as_str())];
    let looks = control
        .telemetry
        .counter("abgate_controller_looks_total", &labels);
    let look_cpu = control
        .telemetry
        .gauge("abgate_controller_look_cpu_seconds_total", &labels);
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_look = tokio::time::Instant::now();
    loop {
        if *stop.borrow() {
            break;
        }
        let watch = r.watch.clone();
        let woken = async {
            match &watch {
                Some(rec) => rec.look_completed().await,
                None => std::future::pending().await,
            }
            // Evidence-triggered looks keep `min_look_gap` apart.
            tokio::time::sleep_until(last_look + cfg.min_look_gap).await;
        };
        tokio::select! {
            _ = tick.tick() => {}
            _ = woken => tick.reset(),
            changed = stop.changed() => {
                if changed.is_err() {
                    break;
                }
                continue;
            }
        }
        r.look_clock = None;
        last_look = tokio::time::Instant::now();
        if let Err(e) = r.tick(&control, &name, &cfg).await {
            tracing::warn!(experiment = %name, error = %e, "controller tick failed");
        }
        if r.published_at != Some(control.runs_taken()) {
            r.publish(&control, &name);
        }
        // A look whose task moved or waited mid-way (a decision waits on the
        // store) is not counted: its thread's clock would include other work.
        if let (Some((thread, a)), Some(b)) = (r.look_clock.take(), thread_cpu_time()) {
            if std::thread::current().id() == thread {
                looks.increment(1);
                look_cpu.increment(b.saturating_sub(a).as_secs_f64());
            }
        }
    }
    r.publish(&control, &name);
}

/// Why one look failed (logged; the next look tries again).
#[derive(Debug, thiserror::Error)]
enum TickError {
    #[error("statistics: {0}")]
    Stats(#[from] crate::stats::StatsError),
    #[error("applying the decision: {0}")]
    Act(#[from] crate::control::ActionError),
    #[error("the analysis policy: {0}")]
    Policy(#[from] crate::stats::PolicyError),
    #[error("a canary needs a candidate arm")]
    NoCandidate,
}

fn weights_of(e: &Experiment, w: &Weights) -> Vec<(String, u32)> {
    e.arms
        .iter()
        .map(|a| (a.name.clone(), w.get(&a.name).copied().unwrap_or(0)))
        .collect()
}

/// One metric's per-arm statistics, as the snapshot carries them (None: no
/// arm has the metric).
fn metric_data(arms: &[ArmMetrics], name: &str) -> Option<MetricData> {
    let per_arm = || {
        arms.iter()
            .filter_map(|a| a.metrics.get(name).map(|m| (a.arm.clone(), m)))
    };
    match per_arm().next()?.1 {
        MetricStats::Binary(_) => Some(MetricData::Binary(
            per_arm()
                .filter_map(|(a, m)| match m {
                    MetricStats::Binary(b) => Some((a, *b)),
                    _ => None,
                })
                .collect(),
        )),
        MetricStats::Continuous(_) => Some(MetricData::Continuous(
            per_arm()
                .filter_map(|(a, m)| match m {
                    MetricStats::Continuous(c) => Some((a, *c)),
                    _ => None,
                })
                .collect(),
        )),
    }
}

fn binary_successes(m: &ArmMetrics, metric: &str) -> u64 {
    match m.metrics.get(metric) {
        Some(MetricStats::Binary(b)) => b.successes,
        _ => 0,
    }
}

impl Run {
    async fn tick(
        &mut self,
        control: &ControlPlane,
        name: &str,
        cfg: &ControlPolicy,
    ) -> Result<(), TickError> {
        let Some((e, state, weights)) = control.controller_view(name).await else {
            return Ok(());
        };
        // The view took the control plane's lock, which may have waited; the
        // look's own work starts here.
        self.look_clock = thread_cpu_time().map(|t| (std::thread::current().id(), t));
        let phase = state.as_ref().map_or(ExperimentPhase::Running, |s| s.phase);
        let shadow_step = state
            .as_ref()
            .and_then(|s| s.step)
            .filter(|&i| matches!(cfg.steps.get(i), Some(Step::Shadow(_))));
        self.watch_candidate(
            control,
            name,
            &e,
            cfg,
            phase == ExperimentPhase::Running,
            shadow_step.is_some(),
        );
        if phase != ExperimentPhase::Running {
            control.set_analysis(name, json!({"status": format!("{phase:?}").to_lowercase(), "note": "automatic decisions are off"}));
            return Ok(());
        }
        let candidate = e
            .arms
            .iter()
            .find(|a| a.name != e.baseline)
            .map(|a| a.name.clone());
        // A canary starts at its first step.
        if cfg.kind == ExperimentKind::Canary && state.as_ref().and_then(|s| s.step).is_none() {
            let cand = candidate.clone().ok_or(TickError::NoCandidate)?;
            let to = canary_weights(&e, &cand, cfg.steps[0].live_weight());
            let summary = format!(
                "started: step 1/{} ({})",
                cfg.steps.len(),
                step_words(cfg.steps[0], &cand)
            );
            control
                .controller_decide(
                    name,
                    DecisionKind::Start,
                    to,
                    json!({"step": 0, "summary": summary}),
                )
                .await?;
            // Look again at once: that look opens the comparison window
            // (`window_start`), so the canary's first requests count.
            return Box::pin(self.tick(control, name, cfg)).await;
        }
        self.adopt(control, name, &e, state.as_ref().map(|s| s.started_ms));
        // A canary's shadow step is judged on its pairs alone.
        if let (Some(st), Some(cand), Some(i)) = (state.as_ref(), candidate.as_deref(), shadow_step)
        {
            return self
                .shadow_look(control, name, cfg, &e, st, &weights, cand, i)
                .await;
        }
        self.c.shadow = None;
        let needed = &self.needed;
        let now_sums =
            experiment_sums_of(&control.recorders, &e, |m| needed.iter().any(|n| n == m));
        let w = weights_of(&e, &weights);
        if !self.c.periods.begun() {
            let origin = self
                .c
                .window_start
                .take()
                .unwrap_or_else(|| now_sums.clone());
            self.c.periods.begin(w.clone(), origin);
        }
        self.c.periods.look(&w, &now_sums);
        let arms: Vec<ArmMetrics> = self
            .c
            .periods
            .total(&now_sums)
            .iter()
            .map(ArmSums::stats)
            .collect();
        // One period is the totals themselves (most looks of an A/B test).
        let periods: Vec<Vec<ArmMetrics>> = match self.c.periods.count() {
            0 | 1 => Vec::new(),
            _ => self
                .c
                .periods
                .windows(&now_sums)
                .map(|p| p.iter().map(ArmSums::stats).collect())
                .collect(),
        };
        let snapshot = self.snapshot(&e, cfg, &arms, &periods, &w)?;
        self.c.evidence.observe(&self.policy, &snapshot)?;

        let now = now_ms();
        // An experiment without recorded state (an A/B test before its first
        // decision) runs from when this loop first saw it.
        let first_seen = *self.c.first_seen_ms.get_or_insert(now);
        let started = state.as_ref().map_or(first_seen, |s| s.started_ms);
        let step = state.as_ref().and_then(|s| s.step);
        let step_started = state.as_ref().map_or(first_seen, |s| s.step_started_ms);
        let assigned = |arm: &str| arms.iter().find(|a| a.arm == arm).map_or(0, |a| a.assigned);
        let cand_units = candidate.as_deref().map_or(0, assigned);
        let step_units = match (step, self.c.step_base) {
            (Some(s), Some((b, base))) if b == s => cand_units.saturating_sub(base),
            (Some(s), _) => {
                self.c.step_base = Some((s, cand_units));
                0
            }
            (None, _) => arms.iter().map(|a| a.assigned).min().unwrap_or(0),
        };
        let facts = StepFacts {
            step_minimums_met: step_units >= cfg.step_min_samples
                && now.saturating_sub(step_started) >= cfg.step_min_duration.as_millis() as u64,
            budget_exhausted: now.saturating_sub(started) >= cfg.max_duration.as_millis() as u64,
        };
        let verdict = decide(&self.policy, &self.c.evidence, &facts);
        // The analysis shown by the admin API is rebuilt (JSON, the
        // comparisons' intervals) when its verdict changes, and otherwise at
        // most every SHOW_EVERY_MS: looks follow the traffic, and building it
        // costs more than the look itself.
        let shown = match &self.shown {
            Some((v, at)) => *v == verdict.name() && now < at + SHOW_EVERY_MS,
            None => false,
        };
        if !shown {
            self.shown = Some((verdict.name(), now));
            let comparisons = stats::comparisons(&self.policy, &self.c.evidence);
            control.set_analysis(
                name,
                json!({
                    "status": "running",
                    "verdict": verdict.name(),
                    "explain": verdict.explain(),
                    "details": serde_json::to_value(&verdict).unwrap_or(Value::Null),
                    "step": step.map(|s| s + 1),
                    "steps": cfg.steps.iter().map(|s| f64::from(s.live_weight()) / 100.0).collect::<Vec<_>>(),
                    "step_units": step_units,
                    "step_minimums_met": facts.step_minimums_met,
                    "looks": self.c.evidence.looks,
                    "comparisons": &comparisons,
                    "samples": self.c.evidence.arms.iter().map(|a| (a.name.clone(), a.units)).collect::<BTreeMap<_, _>>(),
                }),
            );
            // The history's points follow the shown analysis: a point a
            // second, and one at every verdict change (a crossing).
            control.record_look(name, &self.policy, &comparisons);
        }
        let acted = self
            .act(
                control,
                name,
                cfg,
                &e,
                &weights,
                candidate.as_deref(),
                step,
                &verdict,
            )
            .await;
        self.unpublished = true;
        // The weights this look's decision put in force begin a period here.
        if let Ok(Some(to)) = &acted {
            self.c.periods.turn(weights_of(&e, to), &now_sums);
        }
        acted.map(|_| ())
    }

    /// A look at a canary in its shadow step (`step`): the candidate serves
    /// nobody and gets copies, and each copy is compared with the request it
    /// copies. Every guardrail the pairs carry non-inferior on
    /// `step.min_samples` pairs (and `step.min_duration` in the step) goes
    /// live; harm on one removes the shadow (a rollback no user saw).
    #[allow(clippy::too_many_arguments)]
    async fn shadow_look(
        &mut self,
        control: &ControlPlane,
        name: &str,
        cfg: &ControlPolicy,
        e: &Experiment,
        state: &ExperimentState,
        weights: &Weights,
        cand: &str,
        step: usize,
    ) -> Result<(), TickError> {
        let shadow_arm = crate::config::step_shadow_name(cand);
        let book = control
            .recorders
            .pairs(name, &shadow_arm)
            .unwrap_or_default();
        let run = match &mut self.c.shadow {
            Some(r) if r.step == step => r,
            slot => slot.insert(ShadowRun {
                step,
                base: book,
                evidence: ShadowEvidence::default(),
            }),
        };
        let since = book.since(&run.base);
        let now = now_ms();
        let facts = ShadowFacts {
            minimums_met: since.pairs() >= cfg.step_min_samples
                && now.saturating_sub(state.step_started_ms)
                    >= cfg.step_min_duration.as_millis() as u64,
            budget_exhausted: now.saturating_sub(state.started_ms)
                >= cfg.max_duration.as_millis() as u64,
        };
        let look = stats::shadow_gate::look(
            &self.policy,
            &mut run.evidence,
            since.pairs(),
            |m| {
                if let Some(s) = since.continuous(m) {
                    return Some(PairedData::Continuous(*s));
                }
                let d = since.binary(m)?;
                let pairs =
                    stats::DiscordantPairs::new(d.pairs, d.primary_only, d.shadow_only).ok()?;
                Some(PairedData::Events(pairs, d.both))
            },
            facts,
        );
        let looks = run.evidence.looks;
        self.unpublished = true;
        let mirror = cfg.steps[step].mirror().map_or(0, |m| m.percent);
        control.set_analysis(
            name,
            json!({
                "status": "running",
                "verdict": look.verdict.name(),
                "explain": look.explain,
                "details": null,
                "step": step + 1,
                "steps": cfg.steps.iter().map(|s| f64::from(s.live_weight()) / 100.0).collect::<Vec<_>>(),
                "step_units": since.pairs(),
                "step_minimums_met": facts.minimums_met,
                "looks": looks,
                "comparisons": [],
                "samples": {&shadow_arm: since.pairs()},
                "shadow": {
                    "arm": shadow_arm,
                    "mirror_percent": f64::from(mirror) / 100.0,
                    "pairs": since.pairs(),
                    "dropped": since.dropped,
                    "guardrails": &look.guardrails,
                },
            }),
        );
        let reason = |summary: String| json!({"summary": summary, "shadow": {"pairs": since.pairs(), "guardrails": &look.guardrails}});
        let decision = match look.verdict {
            ShadowVerdict::Continue => None,
            ShadowVerdict::Advance => {
                let next = cfg.steps[step + 1];
                let mut r = reason(format!(
                    "advanced to step {}/{} ({}): {}",
                    step + 2,
                    cfg.steps.len(),
                    step_words(next, cand),
                    look.explain
                ));
                r["step"] = json!(step + 1);
                Some((
                    DecisionKind::Advance,
                    canary_weights(e, cand, next.live_weight()),
                    r,
                ))
            }
            ShadowVerdict::Rollback => match cfg.on_failure {
                OnFailure::Pause => Some((
                    DecisionKind::Pause,
                    weights.clone(),
                    reason(look.explain.clone()),
                )),
                OnFailure::Rollback => Some((
                    DecisionKind::Rollback,
                    all_to(e, &e.baseline),
                    reason(format!(
                        "{} (caught in shadow: no user was served by {cand})",
                        look.explain
                    )),
                )),
            },
            ShadowVerdict::Inconclusive => Some((
                DecisionKind::Conclude,
                all_to(e, &e.baseline),
                reason(look.explain.clone()),
            )),
        };
        let Some((kind, to, reason)) = decision else {
            return Ok(());
        };
        self.decide(control, name, kind, to, reason).await?;
        if kind == DecisionKind::Advance {
            // The live steps' evidence starts at the first live look: what
            // the candidate's recorder holds from its copies is not what it
            // does for users (`periods` begin there; the per-period counts
            // start from zero).
            self.c.shadow = None;
            self.c.step_base = None;
            self.rebase_periods = true;
        }
        Ok(())
    }

    /// Hands the run to the next store snapshot, if it changed.
    fn publish(&mut self, control: &ControlPlane, name: &str) {
        if !self.unpublished {
            return;
        }
        // Read before serializing: a snapshot that takes runs meanwhile makes
        // the next look publish again rather than skip one.
        let taken = control.runs_taken();
        match super::saved::saveable(&self.c) {
            Ok(json) => {
                control.publish_run(name, json);
                self.unpublished = false;
                self.published_at = Some(taken);
                self.unsaveable_logged = false;
            }
            Err(err) if !self.unsaveable_logged => {
                self.unsaveable_logged = true;
                tracing::error!(experiment = name, error = %err,
                    "the controller run cannot be saved; the last saved run is kept, so a restart resumes from it");
            }
            Err(_) => {}
        }
    }

    /// Keeps [`Run::watch`] on the experiment's candidate arm while it runs;
    /// a stopped or paused experiment is looked at on the interval only.
    fn watch_candidate(
        &mut self,
        control: &ControlPlane,
        name: &str,
        e: &Experiment,
        cfg: &ControlPolicy,
        running: bool,
        shadow_step: bool,
    ) {
        let candidate = e.arms.iter().find(|a| a.name != e.baseline);
        // In a shadow step the candidate's outcomes are its copies'.
        let wanted =
            candidate
                .filter(|_| running && cfg.look_every > 0)
                .map(|c| match shadow_step {
                    true => std::borrow::Cow::Owned(crate::config::step_shadow_name(&c.name)),
                    false => std::borrow::Cow::Borrowed(c.name.as_str()),
                });
        let same = match (&self.watch, &wanted) {
            (Some(w), Some(c)) => w.experiment == name && w.arm == **c,
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        if let Some(old) = self.watch.take() {
            old.set_look_every(0);
        }
        if let Some(c) = wanted {
            let rec = control.recorders.arm(name, &c);
            rec.set_look_every(cfg.look_every);
            self.watch = Some(rec);
        }
    }

    /// [`owner_of`], recomputed only when the arms as configured change (it
    /// hashes them with SHA-256, the fingerprint the history also shows).
    fn owner_of(&mut self, e: &Experiment) -> String {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for a in &e.arms {
            h.update(a.name.as_bytes());
            h.update(&[0x1f]);
            h.update(a.backend.as_bytes());
            h.update(&a.weight.to_le_bytes());
            h.update(&[0x1e]);
        }
        let key = h.digest();
        match &self.owner {
            Some((k, owner)) if *k == key => owner.clone(),
            _ => {
                let owner = owner_of(e, self.policy_hash);
                self.owner = Some((key, owner.clone()));
                owner
            }
        }
    }

    /// Makes sure the run carried belongs to the experiment as it is now: on
    /// the first look it resumes the run saved before a restart, if that run
    /// is this experiment's; and an experiment whose definition or recorded
    /// state was replaced starts afresh.
    fn adopt(
        &mut self,
        control: &ControlPlane,
        name: &str,
        e: &Experiment,
        started_ms: Option<u64>,
    ) {
        let owner = self.owner_of(e);
        if !self.looked_for_saved {
            self.looked_for_saved = true;
            let saved = control
                .take_restored_run(name)
                .map(|json| serde_json::from_str::<Carried>(&json));
            match saved {
                Some(Ok(c)) if c.belongs_to(&owner, started_ms) => {
                    tracing::info!(experiment = name, looks = c.evidence.looks, "resuming the controller run saved before the restart");
                    self.c = c;
                    self.c.started_ms = started_ms;
                    self.rebase_periods = true;
                    return;
                }
                Some(Ok(_)) => tracing::info!(experiment = name, "the saved controller run is of an earlier definition of the experiment; starting afresh"),
                Some(Err(err)) => tracing::warn!(experiment = name, error = %err, "the saved controller run is unreadable; starting afresh"),
                None => {}
            }
            self.c = Carried::fresh(owner, started_ms);
            return;
        }
        if !self.c.belongs_to(&owner, started_ms) {
            tracing::info!(
                experiment = name,
                "the experiment was redefined; its evidence starts afresh"
            );
            self.c = Carried::fresh(owner, started_ms);
        }
        self.c.started_ms = started_ms;
    }

    fn snapshot(
        &mut self,
        e: &Experiment,
        cfg: &ControlPolicy,
        arms: &[ArmMetrics],
        periods: &[Vec<ArmMetrics>],
        w: &[(String, u32)],
    ) -> Result<Snapshot, TickError> {
        let weight = |arm: &str| w.iter().find(|(a, _)| a == arm).map_or(0, |(_, x)| *x);
        // Per-period deltas feed the ramp-aware tests.
        let now = now_ms();
        if self.last_weights != w {
            if !self.last_weights.is_empty() {
                self.settle_until_ms = now + self.counts_settle_ms;
            }
            self.last_weights = w.to_vec();
        }
        let rebase = std::mem::take(&mut self.rebase_periods) || now < self.settle_until_ms;
        let deltas = period_deltas(&mut self.c.prev, arms, rebase);
        // SRM over arms currently receiving traffic; a weight change starts a new segment.
        let live: Vec<(String, u32)> = w.iter().filter(|(_, x)| *x > 0).cloned().collect();
        if live.len() >= 2 {
            let names: Vec<String> = live.iter().map(|(a, _)| a.clone()).collect();
            let ws: Vec<f64> = live.iter().map(|(_, x)| f64::from(*x)).collect();
            match &mut self.c.srm {
                Some((n, m)) if *n == names => {
                    if m.weights != ws {
                        m.set_weights(ws)?;
                    }
                }
                _ => {
                    self.c.srm = Some((
                        names.clone(),
                        SrmMonitor::new(ws, self.policy.srm_concentration)?,
                    ))
                }
            }
            if let Some((names, m)) = &mut self.c.srm {
                let counts: Vec<u64> = names
                    .iter()
                    .map(|a| deltas.get(a).map_or(0, |d| d.0))
                    .collect();
                m.observe(&counts)?;
            }
        }
        let mut metrics = Vec::new();
        let mut wanted: Vec<String> = cfg.guardrails.iter().map(|g| g.metric.clone()).collect();
        if let Some(p) = &cfg.primary {
            wanted.push(p.metric.clone());
        }
        for g in cfg.guardrails.iter().filter(|g| uses_events(g)) {
            let wb = weight(&e.baseline);
            for a in arms.iter().filter(|a| a.arm != e.baseline) {
                let wa = weight(&a.arm);
                // The harm null is the tolerance: rate ratio 1 + margin.
                // Looked up before inserting: `entry` would allocate both
                // keys at every look.
                let per_arm = match self.c.attribution.get_mut(&g.metric) {
                    Some(m) => m,
                    None => self.c.attribution.entry(g.metric.clone()).or_default(),
                };
                if !per_arm.contains_key(&a.arm) {
                    per_arm.insert(
                        a.arm.clone(),
                        ErrorAttribution::new(1.0 + g.margin).unwrap_or_default(),
                    );
                }
                let acc = per_arm.get_mut(&a.arm).expect("inserted above");
                if wa > 0 && wb > 0 {
                    let share = f64::from(wa) / f64::from(wa + wb);
                    let pick = |d: &(u64, u64, u64)| if g.metric == "error" { d.1 } else { d.2 };
                    let (dc, db) = (
                        deltas.get(&a.arm).map_or(0, pick),
                        deltas.get(&e.baseline).map_or(0, pick),
                    );
                    acc.observe_period(share, dc, db)?;
                }
            }
            let data: BTreeMap<String, ErrorAttribution> = self
                .c
                .attribution
                .get(&g.metric)
                .cloned()
                .unwrap_or_default();
            metrics.push(MetricSnapshot {
                name: g.metric.clone(),
                data: MetricData::Events(data),
                periods: Vec::new(),
            });
        }
        for name in wanted {
            if metrics.iter().any(|m| m.name == name) {
                continue;
            }
            let Some(data) = metric_data(arms, &name) else {
                continue;
            };
            let periods = periods
                .iter()
                .filter_map(|p| metric_data(p, &name))
                .collect();
            metrics.push(MetricSnapshot {
                name,
                data,
                periods,
            });
        }
        Ok(Snapshot {
            baseline: e.baseline.clone(),
            arms: arms
                .iter()
                .map(|a| ArmSnapshot {
                    name: a.arm.clone(),
                    weight: f64::from(weight(&a.arm)),
                    assigned: a.assigned,
                })
                .collect(),
            metrics,
            srm_monitor: self.c.srm.as_ref().map(|(_, m)| m.clone()),
        })
    }

    /// Acts on the verdict; returns the weights a decision put in force.
    #[allow(clippy::too_many_arguments)]
    async fn act(
        &mut self,
        control: &ControlPlane,
        name: &str,
        cfg: &ControlPolicy,
        e: &Experiment,
        weights: &Weights,
        candidate: Option<&str>,
        step: Option<usize>,
        verdict: &Verdict,
    ) -> Result<Option<Weights>, TickError> {
        let reason = |extra: Value| {
            let mut r = json!({"summary": verdict.explain(), "verdict": serde_json::to_value(verdict).unwrap_or(Value::Null)});
            if let (Value::Object(m), Value::Object(x)) = (&mut r, extra) {
                m.extend(x);
            }
            r
        };
        let decision: Option<(DecisionKind, Weights, Value)> = match verdict {
            Verdict::Rollback { arm, .. } => match (cfg.kind, cfg.on_failure) {
                (_, OnFailure::Pause) => {
                    Some((DecisionKind::Pause, weights.clone(), reason(json!({}))))
                }
                (ExperimentKind::Canary, OnFailure::Rollback) => Some((
                    DecisionKind::Rollback,
                    all_to(e, &e.baseline),
                    reason(json!({})),
                )),
                (ExperimentKind::Ab, OnFailure::Rollback) => {
                    // Only the harmful arm stops; its share returns to the baseline.
                    let mut to = weights.clone();
                    let freed = to.insert(arm.clone(), 0).unwrap_or(0);
                    *to.entry(e.baseline.clone()).or_insert(0) += freed;
                    let any_left = e
                        .arms
                        .iter()
                        .any(|a| a.name != e.baseline && to.get(&a.name).copied().unwrap_or(0) > 0);
                    let kind = if any_left {
                        DecisionKind::RollbackArm
                    } else {
                        DecisionKind::Rollback
                    };
                    Some((kind, to, reason(json!({"arm": arm}))))
                }
            },
            Verdict::Advance { .. } => {
                let (Some(cand), Some(s)) = (candidate, step) else {
                    return Ok(None);
                };
                if s + 1 < cfg.steps.len() {
                    let next = cfg.steps[s + 1];
                    Some((
                        DecisionKind::Advance,
                        canary_weights(e, cand, next.live_weight()),
                        reason(
                            json!({"step": s + 1, "summary": format!("advanced to step {}/{} ({}): {}", s + 2, cfg.steps.len(), step_words(next, cand), verdict.explain())}),
                        ),
                    ))
                } else if cfg.on_success == OnSuccess::Promote {
                    Some((
                        DecisionKind::Promote,
                        all_to(e, cand),
                        reason(
                            json!({"summary": format!("promoted {cand} after the last step: {}", verdict.explain())}),
                        ),
                    ))
                } else {
                    self.once(
                        DecisionKind::Hold,
                        control,
                        name,
                        weights,
                        reason(json!({"summary": "last step reached; holding (on_success: hold)"})),
                    )
                    .await?;
                    None
                }
            }
            Verdict::Promote { arm, .. } => match cfg.on_success {
                OnSuccess::Promote => Some((
                    DecisionKind::Promote,
                    all_to(e, arm),
                    reason(json!({"arm": arm})),
                )),
                OnSuccess::Hold => Some((
                    DecisionKind::Winner,
                    weights.clone(),
                    reason(json!({"arm": arm})),
                )),
            },
            Verdict::NoDifference { .. } | Verdict::Inconclusive { .. } => Some((
                DecisionKind::Conclude,
                all_to(e, &e.baseline),
                reason(json!({})),
            )),
            Verdict::Hold { .. } => {
                self.once(
                    DecisionKind::Hold,
                    control,
                    name,
                    weights,
                    reason(json!({})),
                )
                .await?;
                None
            }
            Verdict::InsufficientData { .. } | Verdict::Continue { .. } => {
                self.c.last_once = None;
                None
            }
        };
        if let Some((kind, to, reason)) = decision {
            self.decide(control, name, kind, to.clone(), reason).await?;
            self.c.last_once = None;
            if matches!(kind, DecisionKind::Advance | DecisionKind::RollbackArm) {
                // A new step: its minimums count from now.
                self.c.step_base = None;
            }
            return Ok(Some(to));
        }
        Ok(None)
    }

    /// Records an automatic decision (write-ahead, then the table swap) and
    /// logs it with its summary.
    async fn decide(
        &mut self,
        control: &ControlPlane,
        name: &str,
        kind: DecisionKind,
        to: Weights,
        reason: Value,
    ) -> Result<(), TickError> {
        self.look_clock = None; // waits on the store: not a measured look
        let summary = reason["summary"].as_str().unwrap_or("").to_string();
        let id = control.controller_decide(name, kind, to, reason).await?;
        tracing::info!(experiment = name, kind = kind.as_str(), id, "{summary}");
        Ok(())
    }

    /// Records a decision that does not change weights once per episode.
    async fn once(
        &mut self,
        kind: DecisionKind,
        control: &ControlPlane,
        name: &str,
        weights: &Weights,
        reason: Value,
    ) -> Result<(), TickError> {
        if self.c.last_once == Some(kind) {
            return Ok(());
        }
        self.look_clock = None; // waits on the store: not a measured look
        control
            .controller_decide(name, kind, weights.clone(), reason)
            .await?;
        self.c.last_once = Some(kind);
        Ok(())
    }
}

/// A step in words, for decisions: "5% to canary", "shadow: 20% of requests
/// copied to canary".
fn step_words(step: Step, candidate: &str) -> String {
    match step {
        Step::Live(w) => format!("{}% to {candidate}", crate::config::percent(w)),
        Step::Shadow(m) => format!(
            "shadow: {}% of requests copied to {candidate}, which serves nobody",
            crate::config::percent(m.percent)
        ),
    }
}

fn canary_weights(e: &Experiment, candidate: &str, w: u32) -> Weights {
    e.arms
        .iter()
        .map(|a| {
            (
                a.name.clone(),
                if a.name == candidate { w } else { BUCKETS - w },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_carried_run_reads_back_exactly_what_was_saved() {
        let mut c = Carried::fresh("owner".into(), Some(7));
        let acc = c
            .attribution
            .entry("error".into())
            .or_default()
            .entry("canary".into())
            .or_insert_with(|| ErrorAttribution::new(1.1).unwrap());
        acc.observe_period(0.1, 3, 10).unwrap();
        acc.observe_period(0.25, 9, 1).unwrap();
        let mut srm = SrmMonitor::new(vec![9000.0, 1000.0], 1.0).unwrap();
        srm.observe(&[900, 60]).unwrap();
        c.srm = Some((vec!["stable".into(), "canary".into()], srm));
        c.prev.insert("canary".into(), (60, 9, 2));
        c.step_base = Some((1, 40));
        c.last_once = Some(DecisionKind::Hold);
        let json = serde_json::to_string(&c).unwrap();
        let back: Carried = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
        let a = &back.attribution["error"]["canary"];
        assert_eq!(a, &c.attribution["error"]["canary"]);
        assert!(a.max_log_e > 0.0);
        assert_eq!(back.srm.as_ref().unwrap().1, c.srm.as_ref().unwrap().1);
    }

    fn arm(name: &str, assigned: u64, errors: u64) -> ArmMetrics {
        let mut metrics = BTreeMap::new();
        metrics.insert(
            "error".to_string(),
            MetricStats::Binary(crate::stats::BinaryStats {
                n: assigned,
                successes: errors,
            }),
        );
        ArmMetrics {
            arm: name.into(),
            assigned,
            metrics,
        }
    }

    #[test]
    fn period_deltas_are_what_accrued_since_the_last_look_except_right_after_a_resume() {
        let mut prev = BTreeMap::new();
        let d = period_deltas(&mut prev, &[arm("a", 10, 1), arm("b", 4, 0)], false);
        assert_eq!(d["a"], (10, 1, 0));
        assert_eq!(d["b"], (4, 0, 0));
        let d = period_deltas(&mut prev, &[arm("a", 25, 3), arm("b", 4, 0)], false);
        assert_eq!(d["a"], (15, 2, 0));
        assert_eq!(d["b"], (0, 0, 0));
        // Resumed: counts since the saved look are recorded, not attributed.
        let d = period_deltas(&mut prev, &[arm("a", 90, 9), arm("b", 30, 2)], true);
        assert_eq!(d["a"], (0, 0, 0));
        assert_eq!(d["b"], (0, 0, 0));
        let d = period_deltas(&mut prev, &[arm("a", 91, 9), arm("b", 30, 2)], false);
        assert_eq!(d["a"], (1, 0, 0));
    }

    #[test]
    fn a_saved_run_belongs_only_to_the_same_definition_and_episode() {
        let c = Carried::fresh("a".into(), Some(100));
        assert!(c.belongs_to("a", Some(100)));
        assert!(!c.belongs_to("b", Some(100)), "another definition");
        assert!(!c.belongs_to("a", Some(200)), "the state was replaced");
        assert!(!c.belongs_to("a", None), "the state was cleared");
        // Saved before the experiment's first decision: what follows is the same run.
        let before_first_decision = Carried::fresh("a".into(), None);
        assert!(before_first_decision.belongs_to("a", Some(300)));
    }
}

//! The experiments' history over time, for the web page and
//! `GET /v1/experiments/{name}/history`: each look's analysis points (the
//! estimate of every guardrail and primary comparison with its confidence
//! sequence, tolerance and p-value) and, every second, each arm's weight,
//! request rate, error rate, latency and inference metrics.
//!
//! Owns: the series in memory, their bound ([`MAX_POINTS`] per series, older
//! points merged pairwise), what is still to be saved, and the sampler task
//! that records the arms, saves to the store and hands fresh points to the
//! event hub. Memory is bounded: points per series by [`MAX_POINTS`], series
//! per experiment by the experiment's arms and comparisons, experiments by
//! the config (a removed experiment's series are dropped).
//!
//! Never: decides anything, or runs a store call on an async worker.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::ControlPlane;
use crate::clock::now_ms;
use crate::outcomes::histogram::HistogramSnapshot;
use crate::outcomes::summary::{experiment_sums, ArmSums, MetricStats};
use crate::stats::{ComparisonView, Direction, EffectScale, Margin, Policy};
use crate::store::{SeriesWrite, StoredSeries};

/// Most points kept per series. Past it the older half is merged pairwise, so
/// the recent past stays at full resolution and the whole run stays visible:
/// at one point a second the first merge comes after about 33 minutes.
pub const MAX_POINTS: usize = 2000;

/// How often each arm is sampled (and fresh points go to the event hub).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// How often new points are saved. A crash loses at most this much history;
/// the per-look evidence itself is saved by the controller.
pub const SAVE_EVERY: Duration = Duration::from_secs(5);

/// Fields of an arm series, in order.
pub const ARM_FIELDS: &[&str] = &[
    "weight",
    "rps",
    "error_rate",
    "p50_ms",
    "p99_ms",
    "ttft_ms",
    "itl_ms",
    "completion_tokens",
    "cost",
    "stream_incomplete",
];

/// The inference metrics an arm series carries, by their metric names.
const INFERENCE: &[&str] = &[
    "ttft_ms",
    "itl_ms",
    "completion_tokens",
    "cost",
    "stream_incomplete",
];

/// Fields of a comparison series, in order. `tolerance` is where the
/// decision's test draws the line (a guardrail's margin on the estimate's
/// scale; the primary's minimum effect); a look where `p_value <= threshold`
/// is one where the test crossed it.
pub const COMPARISON_FIELDS: &[&str] = &[
    "estimate",
    "lo",
    "hi",
    "p_value",
    "threshold",
    "tolerance",
    "units_arm",
    "units_baseline",
];

/// What a series is: `kind` `arm` (per arm over time) or `comparison`
/// (a guardrail or primary metric of a treatment arm, per look).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesMeta {
    pub kind: String,
    pub arm: String,
    /// Comparisons: `guardrail` or `primary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// Comparisons: `absolute`, `relative` or `rate_ratio`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
    /// Comparisons: the direction that counts (harm for a guardrail,
    /// improvement for the primary): `increase` or `decrease`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    pub fields: Vec<String>,
}

/// One point: Unix ms and one value per field (`None`: not measured then).
pub type Point = (u64, Vec<Option<f64>>);

/// A point just added: (experiment, series, point).
pub type FreshPoint = (String, String, Point);

#[derive(Debug, Clone)]
struct Series {
    meta: SeriesMeta,
    points: Vec<Point>,
    /// Points already in the store (a prefix of `points`).
    saved: usize,
    /// The stored points no longer match (a merge moved them): save anew.
    rewrite: bool,
}

impl Series {
    fn new(meta: SeriesMeta) -> Series {
        Series {
            meta,
            points: Vec::new(),
            saved: 0,
            rewrite: false,
        }
    }

    fn push(&mut self, point: Point) {
        self.points.push(point);
        if self.points.len() > MAX_POINTS {
            // The first point stays as it is, so the run's start keeps its time.
            let half = MAX_POINTS / 2;
            let merged: Vec<Point> = self.points[1..=half]
                .chunks(2)
                .map(|pair| merge(&self.meta, pair))
                .collect();
            self.points.splice(1..=half, merged);
            self.rewrite = true;
            self.saved = 0;
        }
    }

    fn to_json(&self, name: &str) -> Value {
        let mut v = serde_json::to_value(&self.meta).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.insert("name".into(), json!(name));
            m.insert(
                "points".into(),
                Value::Array(self.points.iter().map(point_json).collect()),
            );
        }
        v
    }
}

/// `[at_ms, v1, v2, …]`, `null` for a value not measured.
pub fn point_json(p: &Point) -> Value {
    let mut a = Vec::with_capacity(p.1.len() + 1);
    a.push(json!(p.0));
    a.extend(p.1.iter().map(|v| json!(v)));
    Value::Array(a)
}

/// Two neighbouring points as one. A comparison is cumulative (each look's
/// estimate and confidence sequence already include everything before it), so
/// the later point stands for both; an arm's rates are per second, so they are
/// averaged, except the weight, which is the one in force at the later time.
fn merge(meta: &SeriesMeta, pair: &[Point]) -> Point {
    let last = pair[pair.len() - 1].clone();
    if meta.kind != "arm" || pair.len() < 2 {
        return last;
    }
    let values = meta
        .fields
        .iter()
        .enumerate()
        .map(|(i, f)| {
            if f == "weight" {
                return last.1.get(i).copied().flatten();
            }
            let got: Vec<f64> = pair
                .iter()
                .filter_map(|p| p.1.get(i).copied().flatten())
                .collect();
            (!got.is_empty()).then(|| got.iter().sum::<f64>() / got.len() as f64)
        })
        .collect();
    (last.0, values)
}

/// A value fit for a chart and for JSON: infinite or enormous bounds (a
/// one-sided confidence sequence's open end) become `None`.
fn finite(x: f64) -> Option<f64> {
    (x.is_finite() && x.abs() < 1e12).then_some(x)
}

/// Every experiment's series, keyed by experiment then series name
/// (`arm:NAME`, `guardrail:METRIC:ARM`, `primary:METRIC:ARM`).
#[derive(Default)]
pub struct SeriesBook {
    // Held for microseconds (a push, a copy of new points); never across an await.
    inner: Mutex<HashMap<String, BTreeMap<String, Series>>>,
    /// Points added since the sampler last handed them on (bounded: drained
    /// every [`SAMPLE_EVERY`], and capped).
    fresh: Mutex<Vec<FreshPoint>>,
}

/// Most fresh points held between two hand-ons (50 experiments with a few
/// arms and comparisons each stay far below).
const MAX_FRESH: usize = 20_000;

impl SeriesBook {
    /// The book as stored; unreadable rows are skipped with a warning.
    pub fn restore(stored: Vec<StoredSeries>) -> SeriesBook {
        let mut inner: HashMap<String, BTreeMap<String, Series>> = HashMap::new();
        for s in stored {
            let meta: SeriesMeta = match serde_json::from_str(&s.meta) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(experiment = %s.experiment, series = %s.series, error = %e, "skipping an unreadable stored series");
                    continue;
                }
            };
            let points: Vec<Point> = s
                .points
                .iter()
                .filter_map(|(at, p)| serde_json::from_str(p).ok().map(|v| (*at, v)))
                .collect();
            let mut series = Series::new(meta);
            series.saved = points.len();
            // A stored series longer than the bound (an older, larger bound)
            // is merged down and saved anew.
            for p in points {
                series.push(p);
            }
            inner
                .entry(s.experiment)
                .or_default()
                .insert(s.series, series);
        }
        SeriesBook {
            inner: Mutex::new(inner),
            fresh: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, BTreeMap<String, Series>>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a point to a series, creating it with `meta` when new (a
    /// changed `meta`, e.g. another tolerance scale, replaces it).
    pub fn push(&self, experiment: &str, name: &str, meta: SeriesMeta, point: Point) {
        {
            let mut all = self.lock();
            let series = all
                .entry(experiment.to_string())
                .or_default()
                .entry(name.to_string())
                .or_insert_with(|| Series::new(meta.clone()));
            if series.meta != meta {
                *series = Series::new(meta);
                series.rewrite = true;
            }
            series.push(point.clone());
        }
        let mut fresh = self.fresh.lock().unwrap_or_else(|e| e.into_inner());
        if fresh.len() < MAX_FRESH {
            fresh.push((experiment.to_string(), name.to_string(), point));
        }
    }

    /// The points added since the last call.
    pub fn take_fresh(&self) -> Vec<FreshPoint> {
        std::mem::take(&mut *self.fresh.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// One experiment's series as JSON (empty before the first point).
    pub fn json(&self, experiment: &str) -> Value {
        let all = self.lock();
        Value::Array(
            all.get(experiment)
                .map(|m| m.iter().map(|(n, s)| s.to_json(n)).collect())
                .unwrap_or_default(),
        )
    }

    /// Points in one series (tests, diagnostics).
    pub fn len(&self, experiment: &str, name: &str) -> usize {
        self.lock()
            .get(experiment)
            .and_then(|m| m.get(name))
            .map_or(0, |s| s.points.len())
    }

    /// Whether no experiment has a series.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// What to save: every series' points not yet stored. They count as saved
    /// from now on; [`SeriesBook::failed`] undoes that when the save fails.
    pub fn unsaved(&self) -> Vec<SeriesWrite> {
        let mut all = self.lock();
        let mut out = Vec::new();
        for (experiment, series) in all.iter_mut() {
            for (name, s) in series.iter_mut() {
                if !s.rewrite && s.saved >= s.points.len() {
                    continue;
                }
                let from = if s.rewrite { 0 } else { s.saved };
                out.push(SeriesWrite {
                    experiment: experiment.clone(),
                    series: name.clone(),
                    meta: serde_json::to_string(&s.meta).unwrap_or_default(),
                    replace: s.rewrite,
                    first_seq: from as u64,
                    points: s.points[from..]
                        .iter()
                        .map(|(at, v)| (*at, serde_json::to_string(v).unwrap_or_default()))
                        .collect(),
                });
                s.saved = s.points.len();
                s.rewrite = false;
            }
        }
        out
    }

    /// The save of `writes` failed: their series are saved whole next time.
    pub fn failed(&self, writes: &[SeriesWrite]) {
        let mut all = self.lock();
        for w in writes {
            if let Some(s) = all
                .get_mut(&w.experiment)
                .and_then(|m| m.get_mut(&w.series))
            {
                s.rewrite = true;
            }
        }
    }

    /// Drops the series of experiments not in `configured`; returns their names.
    fn retain(&self, configured: &[String]) -> Vec<String> {
        let mut all = self.lock();
        let gone: Vec<String> = all
            .keys()
            .filter(|k| !configured.contains(k))
            .cloned()
            .collect();
        for g in &gone {
            all.remove(g);
        }
        gone
    }
}

fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::Increase => "increase",
        Direction::Decrease => "decrease",
    }
}

fn effect_name(e: EffectScale) -> &'static str {
    match e {
        EffectScale::Absolute => "absolute",
        EffectScale::Relative => "relative",
        EffectScale::RateRatio => "rate_ratio",
    }
}

/// Where a comparison's test draws the line, on the estimate's scale.
fn tolerance(
    policy: &Policy,
    role: &str,
    metric: &str,
    effect: EffectScale,
) -> (Option<f64>, Direction) {
    if role == "primary" {
        return match &policy.primary {
            Some(p) => {
                let sign = if p.direction == Direction::Increase {
                    1.0
                } else {
                    -1.0
                };
                (Some(sign * p.min_effect), p.direction)
            }
            None => (None, Direction::Increase),
        };
    }
    let Some(g) = policy.guardrails.iter().find(|g| g.metric == metric) else {
        return (None, Direction::Increase);
    };
    let m = match g.margin {
        Margin::Relative(v) | Margin::Absolute(v) => v,
    };
    let line = match effect {
        // The rate ratio must stay below 1 + margin.
        EffectScale::RateRatio => 1.0 + m,
        _ if g.direction == Direction::Increase => m,
        _ => -m,
    };
    (Some(line), g.direction)
}

impl ControlPlane {
    /// Records one look of the controller: a point per guardrail and primary
    /// comparison (`stats::comparisons` of the look, which the controller has
    /// already computed for the analysis it shows). Cheap (no I/O).
    pub fn record_look(&self, name: &str, policy: &Policy, comparisons: &[ComparisonView]) {
        let at = now_ms();
        for c in comparisons {
            let ev = &c.evidence;
            let (line, direction) = tolerance(policy, &c.role, &ev.metric, ev.effect);
            let meta = SeriesMeta {
                kind: "comparison".into(),
                arm: ev.arm.clone(),
                role: Some(c.role.clone()),
                metric: Some(ev.metric.clone()),
                effect: Some(effect_name(ev.effect).into()),
                direction: Some(direction_name(direction).into()),
                fields: COMPARISON_FIELDS.iter().map(|f| f.to_string()).collect(),
            };
            let values = vec![
                finite(ev.estimate),
                finite(ev.ci[0]),
                finite(ev.ci[1]),
                finite(ev.p_value),
                finite(ev.threshold),
                line,
                Some(ev.units_arm as f64),
                Some(ev.units_baseline as f64),
            ];
            let series = format!("{}:{}:{}", c.role, ev.metric, ev.arm);
            self.series.push(name, &series, meta, (at, values));
        }
    }

    /// Saves the series' new points (blocking pool); a failure is logged and
    /// the series are saved whole next time.
    pub async fn save_series(&self) {
        let writes = self.series.unsaved();
        // In a fleet the leader keeps the history (every replica's points
        // are the same fleet-wide counts).
        if writes.is_empty() || !self.leads() {
            return;
        }
        let (result, writes) = self
            .blocking(move |s| (s.save_series(&writes), writes))
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot save the experiments' history");
            self.series.failed(&writes);
        }
    }
}

/// What the sampler remembers of an arm between two samples.
struct ArmBefore {
    requests: u64,
    errors: u64,
    latency: HistogramSnapshot,
    sums: ArmSums,
}

/// The sampler: every [`SAMPLE_EVERY`] it records each arm of each
/// experiment, sends the fresh points and any new decision to the event hub,
/// and every [`SAVE_EVERY`] saves the new points.
pub async fn run(control: Arc<ControlPlane>) {
    {
        let mut before: HashMap<(String, String), (Instant, ArmBefore)> = HashMap::new();
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_save = Instant::now();
        let mut last_decision: Option<i64> = None;
        loop {
            tick.tick().await;
            let names = control.experiment_names().await;
            for name in &names {
                sample(&control, name, &mut before).await;
            }
            before.retain(|(e, _), _| names.contains(e));
            let gone = control.series.retain(&names);
            if !gone.is_empty() {
                control
                    .blocking(move |s| {
                        for g in &gone {
                            if let Err(e) = s.clear_series(g) {
                                tracing::warn!(experiment = %g, error = %e, "cannot clear a removed experiment's history");
                            }
                        }
                    })
                    .await;
            }
            let fresh = control.series.take_fresh();
            control
                .events
                .tick(&control, fresh, &mut last_decision)
                .await;
            if last_save.elapsed() >= SAVE_EVERY {
                last_save = Instant::now();
                control.save_series().await;
            }
        }
    }
}

/// Records one point per arm of `name`: its weight in force (percent), its
/// requests per second and error rate since the last sample, the latency
/// p50/p99 of that period (ms) and the period's means of the inference metrics.
async fn sample(
    control: &ControlPlane,
    name: &str,
    before: &mut HashMap<(String, String), (Instant, ArmBefore)>,
) {
    let Some((e, _state, weights)) = control.controller_view(name).await else {
        return;
    };
    let now = Instant::now();
    let at = now_ms();
    let snaps = control.recorders.experiment(name);
    let sums = experiment_sums(&control.recorders, &e);
    for arm in &e.arms {
        let snap = snaps.iter().find(|s| s.arm == arm.name);
        let arm_sums = sums.iter().find(|s| s.arm == arm.name);
        let (requests, errors, latency) = match snap {
            Some(s) => (
                s.assigned.requests(),
                s.assigned.errors,
                s.assigned.latency.clone(),
            ),
            None => (0, 0, HistogramSnapshot::empty()),
        };
        let key = (name.to_string(), arm.name.clone());
        let weight = Some(f64::from(weights.get(&arm.name).copied().unwrap_or(0)) / 100.0);
        let mut values = vec![weight, None, None, None, None];
        values.extend(std::iter::repeat_n(None, INFERENCE.len()));
        if let Some((then, b)) = before.get(&key) {
            let secs = now.duration_since(*then).as_secs_f64().max(1e-3);
            let dn = requests.saturating_sub(b.requests);
            values[1] = Some(dn as f64 / secs);
            if dn > 0 {
                values[2] = Some(errors.saturating_sub(b.errors) as f64 / dn as f64);
            }
            let period = latency.since(&b.latency);
            values[3] = period.quantile_us(0.5).map(|us| us / 1000.0);
            values[4] = period.quantile_us(0.99).map(|us| us / 1000.0);
            if let Some(now_sums) = arm_sums {
                let delta = now_sums.since(&b.sums).stats();
                for (i, m) in INFERENCE.iter().enumerate() {
                    values[5 + i] = match delta.metrics.get(*m) {
                        Some(MetricStats::Continuous(c)) if c.n > 0 => finite(c.mean),
                        Some(MetricStats::Binary(b)) if b.n > 0 => finite(b.mean()),
                        _ => None,
                    };
                }
            }
        }
        if let Some(s) = arm_sums {
            before.insert(
                key,
                (
                    now,
                    ArmBefore {
                        requests,
                        errors,
                        latency,
                        sums: s.clone(),
                    },
                ),
            );
        }
        let meta = SeriesMeta {
            kind: "arm".into(),
            arm: arm.name.clone(),
            role: None,
            metric: None,
            effect: None,
            direction: None,
            fields: ARM_FIELDS.iter().map(|f| f.to_string()).collect(),
        };
        control
            .series
            .push(name, &format!("arm:{}", arm.name), meta, (at, values));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arm_meta() -> SeriesMeta {
        SeriesMeta {
            kind: "arm".into(),
            arm: "a".into(),
            role: None,
            metric: None,
            effect: None,
            direction: None,
            fields: vec!["weight".into(), "rps".into()],
        }
    }

    #[test]
    fn a_series_stays_bounded_and_keeps_its_whole_span() {
        let book = SeriesBook::default();
        for t in 0..10_000u64 {
            book.push(
                "e",
                "arm:a",
                arm_meta(),
                (t, vec![Some(t as f64), Some(2.0)]),
            );
        }
        assert!(book.len("e", "arm:a") <= MAX_POINTS);
        let v = book.json("e");
        let points = v[0]["points"].as_array().unwrap();
        assert_eq!(
            points[points.len() - 1][0],
            9999,
            "the newest point is kept"
        );
        assert_eq!(points[0][0], 0, "the run's start keeps its time");
        let times: Vec<u64> = points.iter().map(|p| p[0].as_u64().unwrap()).collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]), "in time order");
        // A rate is averaged, the weight is the later one's.
        assert!(points.iter().all(|p| p[2] == 2.0));
    }

    #[test]
    fn unsaved_points_are_handed_out_once_and_a_merge_rewrites_the_series() {
        let book = SeriesBook::default();
        for t in 0..10u64 {
            book.push("e", "arm:a", arm_meta(), (t, vec![Some(1.0), None]));
        }
        let w = book.unsaved();
        assert_eq!(w.len(), 1);
        assert_eq!(
            (w[0].replace, w[0].first_seq, w[0].points.len()),
            (false, 0, 10)
        );
        assert!(book.unsaved().is_empty());
        book.push("e", "arm:a", arm_meta(), (10, vec![Some(1.0), None]));
        let w = book.unsaved();
        assert_eq!((w[0].first_seq, w[0].points.len()), (10, 1));
        book.failed(&w);
        assert!(book.unsaved()[0].replace, "a failed save is redone whole");
        for t in 11..=(MAX_POINTS as u64) {
            book.push("e", "arm:a", arm_meta(), (t, vec![Some(1.0), None]));
        }
        let w = book.unsaved();
        assert!(w[0].replace && w[0].first_seq == 0);
        assert_eq!(w[0].points.len(), book.len("e", "arm:a"));
    }

    #[test]
    fn a_restored_book_reads_back_what_was_saved() {
        let book = SeriesBook::default();
        for t in 0..5u64 {
            book.push("e", "arm:a", arm_meta(), (t, vec![Some(t as f64), None]));
        }
        let stored: Vec<StoredSeries> = book
            .unsaved()
            .into_iter()
            .map(|w| StoredSeries {
                experiment: w.experiment,
                series: w.series,
                meta: w.meta,
                points: w.points,
            })
            .collect();
        let back = SeriesBook::restore(stored);
        assert_eq!(back.json("e"), book.json("e"));
        assert!(back.unsaved().is_empty(), "nothing new to save");
    }
}

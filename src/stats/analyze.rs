//! Offline analysis for `abgate analyze FILE|-`: JSON summary statistics in,
//! JSON results (and a table for people) out. Pure: the CLI does the I/O.
//!
//! Input (optional fields marked `?`; unknown fields anywhere are rejected):
//! ```json
//! { "alpha"?: 0.05, "design_samples"?: 5000, "srm_concentration"?: 10000,
//!   "baseline": "control",
//!   "arms": { "control": {"weight": 0.5, "assigned"?: 10000}, ... },
//!   "metrics": { "accepted": { "type": "binary", "role"?: "primary"|"guardrail",
//!       "direction"?: "increase"|"decrease", "margin"?: 0.05,
//!       "arms": { "control": {"n": 10000, "successes": 1000}, ... } },
//!     "latency_ms": { "type": "continuous",
//!       "arms": { "control": {"n": 5000, "mean": 100.0, "variance": 400.0}, ... } } } }
//! ```
//! `direction` is the improving direction of a primary metric and the harmful
//! direction of a guardrail (default `increase` for both); `margin` is relative:
//! a guardrail's non-inferiority margin, a primary's equivalence margin.
//! A `verdict` is produced only when some metric has a `role`.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::explain::{fmt_num, fmt_p};
use super::mixture::{compare, Comparison, MixtureConfig, Scale};
use super::srm::srm_test;
use super::sufficient::{BinaryStats, ContinuousStats, Moments};
use super::{
    decide, ArmSnapshot, Direction, ExperimentEvidence, ExperimentKind, GuardrailPolicy, Margin,
    MetricData, MetricSnapshot, Policy, PrimaryPolicy, Snapshot, StepFacts,
};

/// Bad analysis input; `Display` names the JSON field path, e.g.
/// `metrics.accepted.arms.treatment.successes: 12000 exceeds n 10000`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AnalyzeError {
    /// Not JSON at all.
    #[error("invalid JSON: {0}")]
    Syntax(String),
    /// A field is missing, unknown, of the wrong type or out of range.
    #[error("{path}: {message}")]
    Field {
        /// Dotted path of the offending field.
        path: String,
        /// What is wrong with it.
        message: String,
    },
}

fn err(path: &str, message: impl Into<String>) -> AnalyzeError {
    AnalyzeError::Field {
        path: path.to_string(),
        message: message.into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInput {
    alpha: Option<Value>,
    design_samples: Option<Value>,
    srm_concentration: Option<Value>,
    baseline: Option<Value>,
    arms: Option<Value>,
    metrics: Option<Value>,
    /// Shadow arms' outcomes as `/export` shows them: read past, never
    /// analysed (a shadow has no weight and no place in the comparison).
    #[allow(dead_code)]
    shadows: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArm {
    weight: Option<Value>,
    assigned: Option<Value>,
    /// `primary` in an export (only live arms are listed here); not read.
    #[allow(dead_code)]
    role: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetric {
    #[serde(rename = "type")]
    kind: Option<Value>,
    arms: Option<Value>,
    role: Option<Value>,
    direction: Option<Value>,
    margin: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetricArm {
    n: Option<Value>,
    successes: Option<Value>,
    mean: Option<Value>,
    variance: Option<Value>,
}

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum MetricType {
    Binary,
    Continuous,
}

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Role {
    Primary,
    Guardrail,
}

/// Deserialises `value` at `path`, prefixing serde's message with the path.
fn parse<T: DeserializeOwned>(value: Value, path: &str) -> Result<T, AnalyzeError> {
    serde_json::from_value(value).map_err(|e| err(path, e.to_string()))
}

fn required<T: DeserializeOwned>(v: Option<Value>, path: &str) -> Result<T, AnalyzeError> {
    match v {
        Some(v) => parse(v, path),
        None => Err(err(path, "missing")),
    }
}

fn optional<T: DeserializeOwned>(v: Option<Value>, path: &str) -> Result<Option<T>, AnalyzeError> {
    v.map(|v| parse(v, path)).transpose()
}

fn finite(x: f64, path: &str) -> Result<f64, AnalyzeError> {
    if x.is_finite() {
        Ok(x)
    } else {
        Err(err(path, format!("must be finite, got {x}")))
    }
}

enum ArmData {
    Binary(BinaryStats),
    Continuous(ContinuousStats),
}

impl ArmData {
    fn moments(&self) -> Moments {
        match self {
            Self::Binary(b) => b.moments(),
            Self::Continuous(c) => c.moments(),
        }
    }
}

struct MetricInput {
    name: String,
    kind: MetricType,
    role: Option<Role>,
    direction: Direction,
    margin: Option<f64>,
    arms: BTreeMap<String, ArmData>,
}

struct Input {
    alpha: f64,
    design_samples: f64,
    srm_concentration: f64,
    baseline: String,
    arms: Vec<(String, f64, Option<u64>)>,
    metrics: Vec<MetricInput>,
}

fn parse_metric_arm(raw: Value, kind: MetricType, path: &str) -> Result<ArmData, AnalyzeError> {
    let r: RawMetricArm = parse(raw, path)?;
    let n: u64 = required(r.n, &format!("{path}.n"))?;
    if n == 0 {
        return Err(err(&format!("{path}.n"), "must be > 0"));
    }
    match kind {
        MetricType::Binary => {
            for (name, v) in [("mean", &r.mean), ("variance", &r.variance)] {
                if v.is_some() {
                    return Err(err(
                        &format!("{path}.{name}"),
                        "not allowed for a binary metric (give successes)",
                    ));
                }
            }
            let s_path = format!("{path}.successes");
            let successes: u64 = required(r.successes, &s_path)?;
            if successes > n {
                return Err(err(&s_path, format!("{successes} exceeds n {n}")));
            }
            Ok(ArmData::Binary(BinaryStats { n, successes }))
        }
        MetricType::Continuous => {
            if r.successes.is_some() {
                return Err(err(
                    &format!("{path}.successes"),
                    "not allowed for a continuous metric (give mean and variance)",
                ));
            }
            let m_path = format!("{path}.mean");
            let mean = finite(required(r.mean, &m_path)?, &m_path)?;
            let v_path = format!("{path}.variance");
            let variance = finite(required(r.variance, &v_path)?, &v_path)?;
            if variance < 0.0 {
                return Err(err(&v_path, format!("must be >= 0, got {variance}")));
            }
            ContinuousStats::from_moments(n, mean, variance)
                .map(ArmData::Continuous)
                .map_err(|e| err(path, e.to_string()))
        }
    }
}

fn parse_input(input: &str) -> Result<Input, AnalyzeError> {
    let root: Value =
        serde_json::from_str(input).map_err(|e| AnalyzeError::Syntax(e.to_string()))?;
    if !root.is_object() {
        return Err(err("(root)", "expected a JSON object"));
    }
    let raw: RawInput = parse(root, "(root)")?;
    let alpha = optional::<f64>(raw.alpha, "alpha")?.unwrap_or(super::DEFAULT_ALPHA);
    if !(alpha > 0.0 && alpha < 0.5) {
        return Err(err("alpha", format!("must be in (0, 0.5), got {alpha}")));
    }
    let design_samples = optional::<f64>(raw.design_samples, "design_samples")?
        .unwrap_or(super::DEFAULT_DESIGN_SAMPLES);
    if !(design_samples.is_finite() && design_samples > 0.0) {
        return Err(err(
            "design_samples",
            format!("must be > 0, got {design_samples}"),
        ));
    }
    let srm_concentration = optional::<f64>(raw.srm_concentration, "srm_concentration")?
        .unwrap_or(super::DEFAULT_SRM_CONCENTRATION);
    if !(srm_concentration.is_finite() && srm_concentration > 0.0) {
        return Err(err(
            "srm_concentration",
            format!("must be > 0, got {srm_concentration}"),
        ));
    }
    let baseline: String = required(raw.baseline, "baseline")?;

    let raw_arms: Map<String, Value> = required(raw.arms, "arms")?;
    if raw_arms.len() < 2 {
        return Err(err("arms", "need at least two arms"));
    }
    let mut arms = Vec::new();
    for (name, v) in raw_arms {
        let path = format!("arms.{name}");
        let a: RawArm = parse(v, &path)?;
        let w_path = format!("{path}.weight");
        let weight = finite(required(a.weight, &w_path)?, &w_path)?;
        if weight <= 0.0 {
            return Err(err(&w_path, format!("must be > 0, got {weight}")));
        }
        let assigned: Option<u64> = optional(a.assigned, &format!("{path}.assigned"))?;
        arms.push((name, weight, assigned));
    }
    if !arms.iter().any(|(n, _, _)| *n == baseline) {
        return Err(err(
            "baseline",
            format!("`{baseline}` is not among the arms"),
        ));
    }

    let raw_metrics: Map<String, Value> = required(raw.metrics, "metrics")?;
    let mut metrics = Vec::new();
    let mut primary_seen: Option<String> = None;
    for (name, v) in raw_metrics {
        let path = format!("metrics.{name}");
        let m: RawMetric = parse(v, &path)?;
        let kind: MetricType = required(m.kind, &format!("{path}.type"))?;
        let role: Option<Role> = optional(m.role, &format!("{path}.role"))?;
        if role == Some(Role::Primary) {
            if let Some(other) = &primary_seen {
                return Err(err(
                    &format!("{path}.role"),
                    format!("only one metric can be primary (`{other}` already is)"),
                ));
            }
            primary_seen = Some(name.clone());
        }
        let direction: Direction =
            optional(m.direction, &format!("{path}.direction"))?.unwrap_or(Direction::Increase);
        let m_path = format!("{path}.margin");
        let margin: Option<f64> = optional(m.margin, &m_path)?;
        if let Some(x) = margin {
            if !(x.is_finite() && x >= 0.0) {
                return Err(err(&m_path, format!("must be finite and >= 0, got {x}")));
            }
        }
        let a_path = format!("{path}.arms");
        let raw_arm_data: Map<String, Value> = required(m.arms, &a_path)?;
        let mut data = BTreeMap::new();
        for (arm, v) in raw_arm_data {
            let p = format!("{a_path}.{arm}");
            if !arms.iter().any(|(n, _, _)| *n == arm) {
                return Err(err(&p, "unknown arm (not listed in `arms`)"));
            }
            data.insert(arm, parse_metric_arm(v, kind, &p)?);
        }
        for (arm, _, _) in &arms {
            if !data.contains_key(arm) {
                return Err(err(
                    &format!("{a_path}.{arm}"),
                    "missing (every arm needs data)",
                ));
            }
        }
        metrics.push(MetricInput {
            name,
            kind,
            role,
            direction,
            margin,
            arms: data,
        });
    }
    Ok(Input {
        alpha,
        design_samples,
        srm_concentration,
        baseline,
        arms,
        metrics,
    })
}

fn comparison_json(c: &Comparison) -> Value {
    match c {
        Ok(e) => json!({"estimate": e.estimate, "ci": [e.ci[0], e.ci[1]], "p_value": e.p_value}),
        Err(nc) => json!({"not_computable": nc, "reason": nc.to_string()}),
    }
}

/// Runs the offline analysis. Output:
/// `{"srm": {"p_value", "chi2_p", "chi2"} | null, "metrics": {metric: {arm: {"absolute":
/// {"estimate", "ci": [lo, hi], "p_value"}, "relative": {…}}}}, "verdict"?: {…}}`,
/// non-baseline arms only; a comparison that cannot be computed (e.g. relative lift
/// with baseline mean 0) is `{"not_computable": reason, "reason": text}`.
/// CSs are at level `alpha` per comparison (not multiplicity-adjusted); the
/// verdict applies the decision rule's corrections. `srm` is null unless every
/// arm has `assigned`.
pub fn analyze_json(input: &str) -> Result<Value, AnalyzeError> {
    let inp = parse_input(input)?;
    let cfg = MixtureConfig {
        alpha: inp.alpha,
        design_samples: inp.design_samples,
    };

    let srm = if inp.arms.iter().all(|(_, _, a)| a.is_some()) {
        let counts: Vec<u64> = inp.arms.iter().map(|(_, _, a)| a.unwrap_or(0)).collect();
        let weights: Vec<f64> = inp.arms.iter().map(|(_, w, _)| *w).collect();
        let r = srm_test(&counts, &weights, inp.srm_concentration)
            .map_err(|e| err("arms", e.to_string()))?;
        json!({"p_value": r.p_value, "chi2_p": r.chi2_p, "chi2": r.chi2})
    } else {
        Value::Null
    };

    let mut metrics = Map::new();
    for m in &inp.metrics {
        let base = m
            .arms
            .get(&inp.baseline)
            .map(ArmData::moments)
            .unwrap_or_default();
        let mut per_arm = Map::new();
        for (arm, data) in &m.arms {
            if *arm == inp.baseline {
                continue;
            }
            let t = data.moments();
            per_arm.insert(
                arm.clone(),
                json!({
                    "absolute": comparison_json(&compare(&base, &t, Scale::Absolute, &cfg)),
                    "relative": comparison_json(&compare(&base, &t, Scale::Relative, &cfg)),
                }),
            );
        }
        metrics.insert(m.name.clone(), Value::Object(per_arm));
    }

    let mut out = json!({"srm": srm, "metrics": metrics});
    if inp.metrics.iter().any(|m| m.role.is_some()) {
        out["verdict"] = verdict_json(&inp);
    }
    Ok(out)
}

fn verdict_json(inp: &Input) -> Value {
    let mut policy = Policy {
        kind: ExperimentKind::Ab,
        alpha: inp.alpha,
        guardrail_alpha: inp.alpha,
        design_samples: inp.design_samples,
        srm_concentration: inp.srm_concentration,
        ..Policy::default()
    };
    for m in &inp.metrics {
        match m.role {
            Some(Role::Primary) => {
                policy.primary = Some(PrimaryPolicy {
                    metric: m.name.clone(),
                    direction: m.direction,
                    scale: Scale::Relative,
                    min_effect: 0.0,
                    equivalence_margin: m.margin.filter(|x| *x > 0.0),
                });
            }
            Some(Role::Guardrail) => policy.guardrails.push(GuardrailPolicy {
                metric: m.name.clone(),
                direction: m.direction,
                margin: Margin::Relative(m.margin.unwrap_or(0.0)),
            }),
            None => {}
        }
    }
    let snapshot = Snapshot {
        baseline: inp.baseline.clone(),
        arms: inp
            .arms
            .iter()
            .map(|(name, w, a)| ArmSnapshot {
                name: name.clone(),
                weight: *w,
                assigned: a.unwrap_or(0),
            })
            .collect(),
        metrics: inp
            .metrics
            .iter()
            .map(|m| MetricSnapshot {
                name: m.name.clone(),
                data: match m.kind {
                    MetricType::Binary => MetricData::Binary(
                        m.arms
                            .iter()
                            .filter_map(|(a, d)| match d {
                                ArmData::Binary(b) => Some((a.clone(), *b)),
                                ArmData::Continuous(_) => None,
                            })
                            .collect(),
                    ),
                    MetricType::Continuous => MetricData::Continuous(
                        m.arms
                            .iter()
                            .filter_map(|(a, d)| match d {
                                ArmData::Continuous(c) => Some((a.clone(), *c)),
                                ArmData::Binary(_) => None,
                            })
                            .collect(),
                    ),
                },
                periods: Vec::new(),
            })
            .collect(),
        srm_monitor: None,
    };
    let mut evidence = ExperimentEvidence::new();
    if let Err(e) = evidence.observe(&policy, &snapshot) {
        return json!({"verdict": "error", "explain": e.to_string()});
    }
    // Offline data is taken as complete for the planned duration, budget not spent.
    let facts = StepFacts {
        step_minimums_met: true,
        budget_exhausted: false,
    };
    let verdict = decide(&policy, &evidence, &facts);
    let mut v = serde_json::to_value(&verdict).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut v {
        map.insert("explain".into(), Value::String(verdict.explain()));
    }
    v
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// Renders [`analyze_json`]'s output as an aligned text table for people:
/// metric, arm, scale, estimate, CI, p; then SRM and the verdict.
pub fn render_table(output: &Value) -> String {
    let mut rows: Vec<[String; 6]> = vec![[
        "metric".into(),
        "arm".into(),
        "scale".into(),
        "estimate".into(),
        "CI".into(),
        "p".into(),
    ]];
    if let Some(metrics) = output.get("metrics").and_then(Value::as_object) {
        for (metric, arms) in metrics {
            for (arm, scales) in arms.as_object().into_iter().flatten() {
                for scale in ["absolute", "relative"] {
                    let Some(c) = scales.get(scale) else { continue };
                    let rel = scale == "relative";
                    let f = |x: f64| {
                        if rel {
                            format!("{:+.2}%", 100.0 * x)
                        } else {
                            fmt_num(x, true)
                        }
                    };
                    let row = match (
                        c.get("estimate").and_then(num),
                        c.get("ci").and_then(Value::as_array),
                        c.get("p_value").and_then(num),
                    ) {
                        (Some(e), Some(ci), Some(p)) if ci.len() == 2 => [
                            metric.clone(),
                            arm.clone(),
                            scale.into(),
                            f(e),
                            format!(
                                "[{}, {}]",
                                f(num(&ci[0]).unwrap_or(f64::NAN)),
                                f(num(&ci[1]).unwrap_or(f64::NAN))
                            ),
                            fmt_p(p),
                        ],
                        _ => [
                            metric.clone(),
                            arm.clone(),
                            scale.into(),
                            "n/a".into(),
                            c.get("reason")
                                .and_then(Value::as_str)
                                .unwrap_or("not computable")
                                .to_string(),
                            "".into(),
                        ],
                    };
                    rows.push(row);
                }
            }
        }
    }
    let mut widths = [0usize; 6];
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in r.iter().zip(widths).enumerate() {
            let pad = w - cell.chars().count();
            // Numbers right-aligned, labels left-aligned.
            if i >= 3 {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            }
            line.push_str("  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    match output.get("srm") {
        Some(Value::Object(s)) => {
            let p = s.get("p_value").and_then(num).unwrap_or(1.0);
            let c = s.get("chi2_p").and_then(num).unwrap_or(1.0);
            out.push_str(&format!(
                "SRM: sequential p = {} (chi-square p = {})\n",
                fmt_p(p),
                fmt_p(c)
            ));
        }
        _ => out.push_str("SRM: not computed (give `assigned` for every arm)\n"),
    }
    if let Some(v) = output.get("verdict") {
        let explain = v.get("explain").and_then(Value::as_str).unwrap_or("");
        out.push_str(&format!("verdict: {explain}\n"));
    }
    out
}

//! Reproducible scenarios: mock model backends, abgate with a policy, and bounded
//! load, in one process, reporting the controller's decisions and what they took.
//!
//! A scenario file (YAML) holds:
//!
//! ```yaml
//! description: a canary with 10x the errors
//! experiment: exp                 # the experiment to watch
//! backends:                       # name -> mock backend spec (see abgate-mock)
//!   stable: "latency=lognormal:20:0.3,error_rate=0.01,seed=1"
//!   canary: "latency=lognormal:20:0.3,error_rate=0.10,seed=2"
//! load: { rate: 1000, duration: 30s, users: 20000, feedback: 0.2, kind: chat }
//! expect: rollback                # rollback | promote | none
//! abgate:                         # an abgate config; "backend:NAME" is replaced by
//!   backends:                     # that mock's URL; listen/admin/state_dir are set
//!     stable: { url: "backend:stable" }
//!   ...
//! ```

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

use crate::app::{self as server, StartOptions};
use crate::config::yaml;
use crate::control::view::{
    decision_summary, render_status, AnalysisView, ExperimentView, MetricView,
};
use crate::lab::loadgen::{self, LoadMode, LoadProgress, LoadSpec, RequestKind};
use crate::lab::mock::{MockServer, MockSpec};
use crate::stats::{ComparisonEvidence, Verdict};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub description: String,
    pub experiment: String,
    pub backends: BTreeMap<String, String>,
    pub load: LoadSettings,
    #[serde(default)]
    pub expect: Option<Expect>,
    pub abgate: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    Rollback,
    Promote,
    /// No automatic decision within the duration (e.g. an A/A test).
    None,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadSettings {
    pub rate: f64,
    /// The longest the load runs, in the config grammar (`30s`, `2m`).
    #[serde(deserialize_with = "config_duration")]
    pub duration: Duration,
    #[serde(default = "default_users")]
    pub users: u64,
    #[serde(default)]
    pub feedback: f64,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Keep-alive connections the open-loop load paces its rate over.
    #[serde(default = "default_connections")]
    pub connections: usize,
}

fn default_connections() -> usize {
    64
}

/// Reads a duration the way config files do, so a scenario and the abgate config
/// it embeds take the same `30s` (a YAML number becomes its text: `0` is allowed,
/// `30` needs a unit).
fn config_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = match Value::deserialize(d)? {
        Value::String(s) => s,
        Value::Number(n) => n.to_string(),
        other => {
            return Err(serde::de::Error::custom(format!(
                "duration must be text such as \"30s\", got {other}"
            )))
        }
    };
    crate::config::parse_duration(&text).map_err(serde::de::Error::custom)
}

fn default_users() -> u64 {
    20_000
}

fn default_seed() -> u64 {
    2026
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{0}")]
    Invalid(String),
    #[error("cannot start: {0}")]
    Start(String),
}

/// Overrides from the command line.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub rate: Option<f64>,
    pub duration: Option<Duration>,
}

/// What happened.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The final automatic decision (`rollback`, `promote`, ...), if any.
    pub decision: Option<String>,
    pub summary: String,
    pub elapsed: Duration,
    pub canary_requests: u64,
    /// From the canary's start decision (its first request follows within a
    /// request's time) to the final decision, by the decisions' own times.
    pub after_start: Option<Duration>,
    pub met_expectation: Option<bool>,
    /// Per arm, what the response scanner saw (tokens, cost, time to first
    /// token, truncated streams); empty when the arms served no inference.
    pub inference: Vec<String>,
}

impl Scenario {
    pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        let node = yaml::parse(text).map_err(|e| ScenarioError::Invalid(e.to_string()))?;
        serde_json::from_value(yaml::to_json(&node))
            .map_err(|e| ScenarioError::Invalid(e.to_string()))
    }

    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ScenarioError::Invalid(format!("{}: {e}", path.display())))?;
        Scenario::parse(&text)
            .map_err(|e| ScenarioError::Invalid(format!("{}: {e}", path.display())))
    }
}

impl Scenario {
    /// The abgate config text with every backend placeholder replaced by `url(name)`.
    pub fn config_text(&self, url: impl Fn(&str) -> String) -> String {
        serde_json::to_string_pretty(&self.config_value(url)).expect("JSON serializes")
    }

    /// The abgate config with every backend placeholder replaced by `url(name)`.
    pub fn config_value(&self, url: impl Fn(&str) -> String) -> Value {
        let urls: BTreeMap<String, String> =
            self.backends.keys().map(|n| (n.clone(), url(n))).collect();
        let mut cfg = self.abgate.clone();
        substitute(&mut cfg, &urls);
        cfg
    }
}

/// Replaces every string `backend:NAME` with that mock's URL.
fn substitute(v: &mut Value, urls: &BTreeMap<String, String>) {
    match v {
        Value::String(s) => {
            if let Some(url) = s.strip_prefix("backend:").and_then(|n| urls.get(n)) {
                *s = url.clone();
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| substitute(i, urls)),
        Value::Object(m) => m.values_mut().for_each(|i| substitute(i, urls)),
        _ => {}
    }
}

fn kind(name: Option<&str>) -> Result<RequestKind, ScenarioError> {
    Ok(match name.unwrap_or("chat") {
        "chat" => RequestKind::Chat,
        "chat-stream" => RequestKind::ChatStream,
        "kserve" => RequestKind::Kserve,
        "predict" => RequestKind::Predict,
        other => {
            return Err(ScenarioError::Invalid(format!(
                "load.kind {other:?}: use chat, chat-stream, kserve or predict"
            )))
        }
    })
}

/// Runs a scenario to its decision (or its duration), printing progress:
/// redrawn in place on a terminal, one line every two seconds otherwise.
/// abgate and the scenario's mock backends, still serving after the run.
pub struct Serving {
    server: crate::app::RunningServer,
    mocks: BTreeMap<String, MockServer>,
}

impl Serving {
    /// The admin listener's address (the web page is at `/ui` there).
    pub fn admin_addr(&self) -> std::net::SocketAddr {
        self.server.admin_addr
    }

    /// Stops abgate and the mock backends.
    pub async fn stop(self) {
        self.server.shutdown().await;
        for (_, m) in self.mocks {
            let _ = m.shutdown().await;
        }
    }
}

/// Runs the scenario until its decision (or its duration), then stops everything.
pub async fn run(s: &Scenario, o: &Overrides, state_dir: &Path) -> Result<Outcome, ScenarioError> {
    let (outcome, serving) = run_serving(s, o, state_dir).await?;
    serving.stop().await;
    outcome
}

/// As [`run`], leaving abgate and the backends serving (the load stops): the
/// caller shows the outcome, keeps the web page up as long as it likes, and
/// calls [`Serving::stop`].
pub async fn run_serving(
    s: &Scenario,
    o: &Overrides,
    state_dir: &Path,
) -> Result<(Result<Outcome, ScenarioError>, Serving), ScenarioError> {
    let duration = o.duration.unwrap_or(s.load.duration);
    let rate = o.rate.unwrap_or(s.load.rate);
    let mut mocks = BTreeMap::new();
    for (name, spec) in &s.backends {
        let spec: MockSpec = format!("name={name},{spec}")
            .trim_end_matches(',')
            .parse()
            .map_err(|e| ScenarioError::Invalid(format!("backends.{name}: {e}")))?;
        let m = MockServer::start(spec, "127.0.0.1:0".parse().expect("literal address"))
            .await
            .map_err(|e| ScenarioError::Start(e.to_string()))?;
        mocks.insert(name.clone(), m);
    }
    let mut cfg = s.config_value(|name| mocks.get(name).map(MockServer::url).unwrap_or_default());
    if let Value::Object(m) = &mut cfg {
        m.insert("listen".into(), "127.0.0.1:0".into());
        m.insert("admin".into(), serde_json::json!({"listen": "127.0.0.1:0"}));
        m.insert("state_dir".into(), state_dir.display().to_string().into());
    }
    let _ = std::fs::remove_dir_all(state_dir);
    let server = server::start(StartOptions {
        config_text: serde_json::to_string_pretty(&cfg).expect("JSON serializes"),
        config_path: None,
        watch_file: false,
        admin_token: None,
        token_keys: None,
    })
    .await
    .map_err(|e| ScenarioError::Start(e.to_string()))?;
    println!("{} ({rate} req/s for up to {duration:?})", s.description);
    println!(
        "  proxy http://{}  admin http://{}  (try: abgate status --admin http://{} --watch)",
        server.data_addr, server.admin_addr, server.admin_addr
    );
    println!("  web page: http://{}/ui", server.admin_addr);

    let mut spec = LoadSpec::new(format!("http://{}", server.data_addr));
    spec.kind = kind(s.load.kind.as_deref())?;
    spec.mode = LoadMode::OpenLoop {
        rate_per_s: rate,
        connections: s.load.connections,
        max_in_flight: 4096,
    };
    spec.max_duration = duration;
    spec.max_requests = (rate * duration.as_secs_f64()).ceil() as u64;
    spec.users = s.load.users;
    spec.feedback.fraction = s.load.feedback;
    spec.seed = s.load.seed;
    let (progress_tx, progress_rx) = tokio::sync::watch::channel(LoadProgress::default());
    let load = tokio::spawn(loadgen::run_with_progress(spec, progress_tx));

    let tty = std::io::stdout().is_terminal();
    let started = Instant::now();
    let mut last_line = Instant::now() - Duration::from_secs(10);
    let mut seen_decisions = 0usize;
    let final_view = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(view) = server.control.experiment_view(&s.experiment).await else {
            break None;
        };
        // Every new decision, as it happens.
        let decisions = server
            .control
            .store
            .decisions(Some(&s.experiment), 1000)
            .unwrap_or_default();
        for d in decisions.iter().rev().skip(seen_decisions) {
            println!(
                "  [{:>5.1}s] decision {}: {} ({} treatment requests so far)",
                started.elapsed().as_secs_f64(),
                d.kind,
                decision_summary(d),
                view.treatment_requests()
            );
        }
        seen_decisions = decisions.len();
        let completed = progress_rx.borrow().completed;
        if tty {
            print!(
                "\x1b[2J\x1b[H{}",
                render(&view, started.elapsed(), completed)
            );
        } else if last_line.elapsed() >= Duration::from_secs(2) {
            println!("{}", one_line(&view, started.elapsed()));
            last_line = Instant::now();
        }
        if view.state != "running" || started.elapsed() >= duration || load.is_finished() {
            break Some(view);
        }
    };
    load.abort();
    let elapsed = started.elapsed();
    let decisions = server
        .control
        .store
        .decisions(Some(&s.experiment), 1000)
        .unwrap_or_default();
    let at = |kind: &str| {
        decisions
            .iter()
            .filter(|d| d.kind == kind)
            .map(|d| d.created_at_ms)
            .min()
    };
    let outcome = match final_view {
        Some(v) => {
            let mut out = outcome_of(s, &v, elapsed);
            if let (Some(start), Some(end)) = (at("start"), out.decision.as_deref().and_then(at)) {
                out.after_start = Some(Duration::from_millis(end.saturating_sub(start)));
            }
            Ok(out)
        }
        None => Err(ScenarioError::Invalid(format!(
            "experiment {:?} is not in the scenario's abgate config",
            s.experiment
        ))),
    };
    Ok((outcome, Serving { server, mocks }))
}

/// What the last view says happened, and whether the scenario expected it.
fn outcome_of(s: &Scenario, view: &ExperimentView, elapsed: Duration) -> Outcome {
    let ended = view.state != "running";
    let last = view.last_decision.as_ref();
    let decision = ended.then(|| last.map_or("?", |d| d.kind.as_str()).to_string());
    Outcome {
        summary: if ended {
            last.map_or("", decision_summary).to_string()
        } else {
            view.analysis
                .as_ref()
                .and_then(AnalysisView::judgement)
                .map_or("collecting evidence", |j| j.explain.as_str())
                .to_string()
        },
        decision: decision.clone(),
        elapsed,
        canary_requests: view.treatment_requests(),
        after_start: None,
        met_expectation: s.expect.map(|e| match e {
            Expect::Rollback => decision.as_deref() == Some("rollback"),
            Expect::Promote => decision.as_deref() == Some("promote"),
            Expect::None => decision.is_none(),
        }),
        inference: inference_lines(view, s.abgate.get("currency").and_then(Value::as_str)),
    }
}

/// One line per arm with what its responses reported: requests with usage,
/// tokens and cost per request (and the cost in all), time to first token,
/// the share of streams cut short.
fn inference_lines(view: &ExperimentView, currency: Option<&str>) -> Vec<String> {
    let n = |m: Option<&MetricView>| m.map_or(0, MetricView::n);
    let seen = view.arms.iter().any(|a| {
        n(a.metrics.get("completion_tokens")) > 0 || n(a.metrics.get("stream_incomplete")) > 0
    });
    if !seen {
        return Vec::new();
    }
    let unit = currency.map_or(String::new(), |c| format!(" {c}"));
    let width = view.arms.iter().map(|a| a.name.len()).max().unwrap_or(0);
    view.arms
        .iter()
        .map(|a| {
            let m = &a.metrics;
            let cost = mean(m.get("cost"));
            let total = cost.map(|c| c * n(m.get("cost")) as f64);
            format!(
                "  {:<width$}  {} streams  tokens in/out {}/{} per request  cost {}{unit} per request ({}{unit} in all)  ttft {} ms  incomplete {}",
                a.name,
                n(m.get("stream_incomplete")),
                ms(mean(m.get("prompt_tokens"))),
                ms(mean(m.get("completion_tokens"))),
                cost.map_or("-".into(), |c| format!("{c:.6}")),
                total.map_or("-".into(), |c| format!("{c:.4}")),
                ms(mean(m.get("ttft_ms"))),
                pct(rate(m.get("stream_incomplete"))),
            )
        })
        .collect()
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{:.2}%", x * 100.0))
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.1}"))
}

/// A binary metric's rate; `None` for a continuous or missing one.
fn rate(m: Option<&MetricView>) -> Option<f64> {
    match m {
        Some(MetricView::Binary { rate, .. }) => *rate,
        _ => None,
    }
}

/// A continuous metric's mean; `None` for a binary or missing one.
fn mean(m: Option<&MetricView>) -> Option<f64> {
    match m {
        Some(MetricView::Continuous { mean, .. }) => *mean,
        _ => None,
    }
}

/// How the admin API's JSON shows a number (`90.0`, `null`), which these lines
/// have always printed.
fn json_num(v: Option<impl Into<Value>>) -> String {
    v.map_or(Value::Null, Into::into).to_string()
}

fn one_line(view: &ExperimentView, elapsed: Duration) -> String {
    let arms: Vec<String> = view
        .arms
        .iter()
        .map(|a| {
            let s = a.assigned.as_ref();
            let mut line = format!(
                "{} {}% n={} err={} p50={}ms",
                a.name,
                json_num(Some(a.weight)),
                json_num(s.map(|s| s.requests)),
                pct(s.and_then(|s| s.error_rate)),
                ms(s.and_then(|s| s.latency_ms.p50))
            );
            // Streams: what the response scanner read.
            if let Some(incomplete) = rate(a.metrics.get("stream_incomplete")) {
                line.push_str(&format!(
                    " ttft={}ms cut={}",
                    ms(mean(a.metrics.get("ttft_ms"))),
                    pct(Some(incomplete))
                ));
            }
            line
        })
        .collect();
    let explain = view
        .analysis
        .as_ref()
        .and_then(AnalysisView::judgement)
        .map_or("starting", |j| j.explain.as_str());
    format!(
        "[{:>5.1}s] {} | {} | {}",
        elapsed.as_secs_f64(),
        view.state,
        arms.join(" | "),
        explain
    )
}

/// The evidence a verdict acted on, by the name its JSON gives it.
fn evidence_sections(v: &Verdict) -> Vec<(&'static str, Vec<&ComparisonEvidence>)> {
    match v {
        Verdict::Rollback { evidence, .. } => vec![("evidence", vec![evidence])],
        Verdict::Advance { guardrails, .. } => {
            vec![("guardrails", guardrails.iter().collect())]
        }
        Verdict::Promote {
            evidence,
            guardrails,
            ..
        } => vec![
            ("guardrails", guardrails.iter().collect()),
            ("evidence", vec![evidence]),
        ],
        Verdict::NoDifference { evidence } => vec![("evidence", evidence.iter().collect())],
        _ => vec![],
    }
}

fn render(view: &ExperimentView, elapsed: Duration, completed: u64) -> String {
    let mut out = format!(
        "t={:.1}s  requests={}  state={}\n\n",
        elapsed.as_secs_f64(),
        completed,
        view.state
    );
    out.push_str(&render_status(std::slice::from_ref(view)));
    out.push_str("\n  per-arm metrics (assigned traffic):\n");
    for a in &view.arms {
        let m = &a.metrics;
        out.push_str(&format!(
            "    {:<10} error {:>7}  latency mean {:>6} ms  p99 {:>6} ms  accepted {:>7} (n={})\n",
            a.name,
            pct(rate(m.get("error"))),
            ms(mean(m.get("latency_ms"))),
            ms(a.assigned.as_ref().and_then(|s| s.latency_ms.p99)),
            pct(rate(m.get("accepted"))),
            json_num(m.get("accepted").map(MetricView::n))
        ));
    }
    let details = view
        .analysis
        .as_ref()
        .and_then(AnalysisView::judgement)
        .and_then(|j| j.details.as_ref());
    for (key, items) in details.map(evidence_sections).unwrap_or_default() {
        out.push_str(&format!("\n  {key}:\n"));
        for g in items {
            out.push_str(&format!(
                "    {:<11} estimate {:>9.4}  CS [{:.4}, {:.4}]  p={:.4}\n",
                g.metric, g.estimate, g.ci[0], g.ci[1], g.p_value
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_duration(d: &str) -> Result<Scenario, ScenarioError> {
        Scenario::parse(&format!(
            "description: x\nexperiment: e\nbackends: {{}}\nload: {{ rate: 1, duration: {d} }}\nabgate: {{}}\n"
        ))
    }

    #[test]
    fn load_duration_takes_the_config_grammar() {
        let s = with_duration("2m").unwrap();
        assert_eq!(s.load.duration, Duration::from_secs(120));
        assert_eq!(with_duration("0").unwrap().load.duration, Duration::ZERO);
        let err = with_duration("30").unwrap_err().to_string();
        assert!(err.contains("needs a unit"), "{err}");
        let err = with_duration("5y").unwrap_err().to_string();
        assert!(err.contains("unknown unit"), "{err}");
    }
}

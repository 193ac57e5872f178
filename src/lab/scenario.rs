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

use crate::config::yaml;
use crate::lab::loadgen::{self, LoadMode, LoadProgress, LoadSpec, RequestKind};
use crate::lab::mock::{MockServer, MockSpec};
use crate::server::{self, StartOptions};

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
    pub met_expectation: Option<bool>,
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
pub async fn run(s: &Scenario, o: &Overrides, state_dir: &Path) -> Result<Outcome, ScenarioError> {
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

    let mut spec = LoadSpec::new(format!("http://{}", server.data_addr));
    spec.kind = kind(s.load.kind.as_deref())?;
    spec.mode = LoadMode::OpenLoop {
        rate_per_s: rate,
        connections: 64,
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
    let baseline = s.abgate["experiments"]
        .as_array()
        .and_then(|e| e.iter().find(|x| x["name"] == s.experiment.as_str()))
        .and_then(|e| e["baseline"].as_str())
        .unwrap_or("")
        .to_string();
    // Requests abgate assigned to the non-baseline arms (what the statistics saw).
    let treatment_requests = |view: &Value| -> u64 {
        view["arms"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["name"] != baseline.as_str())
            .map(|a| a["assigned"]["requests"].as_u64().unwrap_or(0))
            .sum()
    };
    let final_view = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let view = server
            .control
            .experiment_view(&s.experiment)
            .await
            .unwrap_or(Value::Null);
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
                d.reason["summary"].as_str().unwrap_or(""),
                treatment_requests(&view)
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
        if view["state"] != "running" || started.elapsed() >= duration || load.is_finished() {
            break view;
        }
    };
    load.abort();
    let ended = final_view["state"] != "running";
    let d = &final_view["last_decision"];
    let decision = ended.then(|| d["kind"].as_str().unwrap_or("?").to_string());
    let outcome = Outcome {
        summary: if ended {
            d["reason"]["summary"].as_str().unwrap_or("").to_string()
        } else {
            final_view["analysis"]["explain"]
                .as_str()
                .unwrap_or("collecting evidence")
                .to_string()
        },
        decision: decision.clone(),
        elapsed: started.elapsed(),
        canary_requests: treatment_requests(&final_view),
        met_expectation: s.expect.map(|e| match e {
            Expect::Rollback => decision.as_deref() == Some("rollback"),
            Expect::Promote => decision.as_deref() == Some("promote"),
            Expect::None => decision.is_none(),
        }),
    };
    server.shutdown().await;
    for (_, m) in mocks {
        let _ = m.shutdown().await;
    }
    Ok(outcome)
}

fn pct(v: &Value) -> String {
    v.as_f64()
        .map_or("-".into(), |x| format!("{:.2}%", x * 100.0))
}

fn ms(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.1}"))
}

fn one_line(view: &Value, elapsed: Duration) -> String {
    let arms: Vec<String> = view["arms"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            format!(
                "{} {}% n={} err={} p50={}ms",
                a["name"].as_str().unwrap_or("?"),
                a["weight"],
                a["assigned"]["requests"],
                pct(&a["assigned"]["error_rate"]),
                ms(&a["assigned"]["latency_ms"]["p50"])
            )
        })
        .collect();
    format!(
        "[{:>5.1}s] {} | {} | {}",
        elapsed.as_secs_f64(),
        view["state"].as_str().unwrap_or("?"),
        arms.join(" | "),
        view["analysis"]["explain"].as_str().unwrap_or("starting")
    )
}

fn render(view: &Value, elapsed: Duration, completed: u64) -> String {
    let mut out = format!(
        "t={:.1}s  requests={}  state={}\n\n",
        elapsed.as_secs_f64(),
        completed,
        view["state"].as_str().unwrap_or("?")
    );
    out.push_str(&crate::cli::render_status(std::slice::from_ref(view)));
    out.push_str("\n  per-arm metrics (assigned traffic):\n");
    for a in view["arms"].as_array().into_iter().flatten() {
        let m = &a["metrics"];
        out.push_str(&format!(
            "    {:<10} error {:>7}  latency mean {:>6} ms  p99 {:>6} ms  accepted {:>7} (n={})\n",
            a["name"].as_str().unwrap_or("?"),
            pct(&m["error"]["rate"]),
            ms(&m["latency_ms"]["mean"]),
            ms(&a["assigned"]["latency_ms"]["p99"]),
            pct(&m["accepted"]["rate"]),
            m["accepted"]["n"]
        ));
    }
    for key in ["guardrails", "evidence"] {
        let items: Vec<Value> = match &view["analysis"]["details"][key] {
            Value::Array(a) => a.clone(),
            Value::Object(_) => vec![view["analysis"]["details"][key].clone()],
            _ => continue,
        };
        out.push_str(&format!("\n  {key}:\n"));
        for g in items {
            out.push_str(&format!(
                "    {:<11} estimate {:>9.4}  CS [{:.4}, {:.4}]  p={:.4}\n",
                g["metric"].as_str().unwrap_or("?"),
                g["estimate"].as_f64().unwrap_or(f64::NAN),
                g["ci"][0].as_f64().unwrap_or(f64::NAN),
                g["ci"][1].as_f64().unwrap_or(f64::NAN),
                g["p_value"].as_f64().unwrap_or(f64::NAN)
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

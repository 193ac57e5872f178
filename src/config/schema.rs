//! The abgate config schema: walks a [`Node`] tree into a validated [`Config`].
//!
//! Owns: field names, defaults and cross-field rules (weights sum to 100, arms
//! name existing backends, ...). Every rule reports through the [`Decoder`] so a
//! user sees all problems at once.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use super::decode::{field, index, Decoder, Fields};
use super::model::*;
use super::pem;
use super::policy::{config_key, stats_policy};
use super::yaml::{Node, Value};
use crate::stats::PolicyError;

const TOP: &[&str] = &[
    "listen",
    "admin",
    "state_dir",
    "store",
    "backends",
    "default_backend",
    "experiments",
    "timeouts",
    "feedback",
    "tokens",
    "limits",
    "tls",
    "currency",
];
const FEEDBACK: &[&str] = &["path", "max_body", "max_correction"];
const TOKENS: &[&str] = &["key_file"];
const METRIC: &[&str] = &["name", "source", "type", "header", "min", "max"];
const ADMIN: &[&str] = &["listen", "token_file"];
const BACKEND: &[&str] = &[
    "url",
    "response_timeout",
    "protocol",
    "ca_file",
    "client_cert",
    "client_key",
    "price",
    "headers",
];
const PRICE: &[&str] = &["input_per_mtok", "output_per_mtok"];
const LISTENER_TLS: &[&str] = &["cert", "key"];
const LIMITS: &[&str] = &[
    "max_connections",
    "max_header_bytes",
    "max_header_count",
    "max_uri_bytes",
    "max_request_body_bytes",
    "h2_max_concurrent_streams",
];
const EXPERIMENT: &[&str] = &[
    "name",
    "salt",
    "baseline",
    "match",
    "unit",
    "allow_override",
    "arms",
    "metrics",
    "attribution_window",
    "slow_threshold",
    "kind",
    "steps",
    "step",
    "analysis",
    "on_success",
    "on_failure",
    "max_duration",
    "notify",
    "inject_usage",
    "watch",
    "on_drift",
    "capture",
];
/// Default `analysis.look_every`: the controller looks after every 10 completed
/// candidate outcomes (or each `interval`, whichever comes first). Every look is
/// anytime-valid, so looking more often costs no validity; 10 puts a look within
/// 0.2 s of any crossing for a 5 % step at 1,000 req/s (five looks a second per
/// experiment instead of one per request).
pub const DEFAULT_LOOK_EVERY: u64 = 10;
/// Default `analysis.min_look_gap`: looks that evidence triggers come at most
/// every 200 ms. A look costs about 0.1 ms of CPU, so this bounds a busy
/// canary at 5 looks a second whatever its traffic (100 canaries: about 5 % of
/// one core), and at a 5 % step of 1,000 req/s it is the gap `look_every`
/// gives anyway.
pub const DEFAULT_MIN_LOOK_GAP: std::time::Duration = std::time::Duration::from_millis(200);
const STEP: &[&str] = &["min_samples", "min_duration"];
const ANALYSIS: &[&str] = &[
    "interval",
    "alpha",
    "design_samples",
    "min_units_per_arm",
    "min_events",
    "min_exact_events",
    "look_every",
    "min_look_gap",
    "guardrails",
    "primary",
];
const GUARDRAIL: &[&str] = &[
    "metric",
    "max_relative_increase",
    "max_absolute_increase",
    "max_relative_decrease",
    "max_absolute_decrease",
];
const PRIMARY: &[&str] = &["metric", "direction", "min_effect"];
const NOTIFY: &[&str] = &["url"];
const MATCH: &[&str] = &[
    "host",
    "path_prefix",
    "headers",
    "model",
    "model_prefix",
    "max_peek",
];
const HEADER_MATCH: &[&str] = &["name", "exact", "prefix", "regex"];
const UNIT: &[&str] = &["header", "cookie", "body"];
const ARM: &[&str] = &["name", "backend", "weight", "model", "shadow"];
const SHADOW: &[&str] = &["percent", "max_body", "max_in_flight", "timeout"];
const TIMEOUTS: &[&str] = &[
    "upstream_connect",
    "upstream_response",
    "header_read",
    "shutdown_grace",
    "request_body_idle",
    "stream_idle",
    "downstream_write_idle",
    "tls_handshake",
    "keepalive_idle",
];

/// Default data-plane address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default admin address: loopback only, so an unauthenticated admin API is never exposed.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";

/// Decodes and validates a whole document. `None` means errors were recorded.
pub fn decode(d: &mut Decoder, root: &Node) -> Option<Config> {
    // An empty file is an empty config (every field has a default).
    let empty = Node {
        line: root.line,
        value: Value::Map(Vec::new()),
    };
    let root = if root.value == Value::Null {
        &empty
    } else {
        root
    };
    let top = d.fields(root, "", TOP)?;
    let listen = addr(d, &top, "listen", DEFAULT_LISTEN);
    let admin = admin(d, &top);
    let state_dir = match top.get("state_dir") {
        Some(n) => d.name(n, "state_dir").map(PathBuf::from),
        None => Some(PathBuf::from("./abgate-state")),
    };
    let store = match top.get("store") {
        Some(n) => super::store::decode(d, n),
        None => Some(StoreConfig::Sqlite),
    };
    let backends = backends(d, &top);
    // Names count as declared even when their URL is wrong, so one mistake is
    // reported once rather than again at every arm that uses the backend.
    let names: HashSet<&str> = match top.get("backends").map(|n| &n.value) {
        Some(Value::Map(entries)) => entries.iter().map(|e| e.key.as_str()).collect(),
        _ => HashSet::new(),
    };
    let default_backend = top.get("default_backend").and_then(|n| {
        let name = d.name(n, "default_backend")?;
        if !names.contains(name.as_str()) {
            d.error("default_backend", n.line, unknown_backend(&name, &names));
        }
        Some(name)
    });
    let experiments = experiments(d, &top, &names);
    let timeouts = timeouts(d, &top);
    let feedback = feedback(d, &top);
    let tokens = match top.get("tokens") {
        Some(n) => d.fields(n, "tokens", TOKENS).map(|f| TokensConfig {
            key_file: f
                .get("key_file")
                .and_then(|k| d.name(k, "tokens.key_file"))
                .map(PathBuf::from),
        }),
        None => Some(TokensConfig::default()),
    };
    let currency = match top.get("currency") {
        Some(n) => d.name(n, "currency").map(Some),
        None => Some(None),
    };
    let limits = limits(d, &top);
    let tls = match top.get("tls") {
        Some(n) => listener_tls(d, n).map(Some),
        None => Some(None),
    };
    Some(Config {
        listen: listen?,
        admin: admin?,
        state_dir: state_dir?,
        store: store?,
        backends,
        default_backend,
        experiments: experiments?,
        timeouts: timeouts?,
        feedback: feedback?,
        tokens: tokens?,
        limits: limits?,
        tls: tls?,
        currency: currency?,
    })
}

fn feedback(d: &mut Decoder, top: &Fields) -> Option<FeedbackConfig> {
    let mut fb = FeedbackConfig::default();
    let Some(node) = top.get("feedback") else {
        return Some(fb);
    };
    let f = d.fields(node, "feedback", FEEDBACK)?;
    if let Some(n) = f.get("path") {
        let p = d.string(n, "feedback.path")?;
        if !p.starts_with('/') {
            d.error(
                "feedback.path",
                n.line,
                format!("{p:?} must start with '/'"),
            );
            return None;
        }
        fb.path = p;
    }
    if let Some(n) = f.get("max_body") {
        fb.max_body = d.integer(n, "feedback.max_body", 1024, 64 * 1024 * 1024)? as usize;
    }
    if let Some(n) = f.get("max_correction") {
        let v = d.size(n, "feedback.max_correction")?;
        if v == 0 || v > 16 << 20 {
            d.error(
                "feedback.max_correction",
                n.line,
                format!("must be in 1..=16MiB, got {v}"),
            );
            return None;
        }
        fb.max_correction = v as usize;
    }
    Some(fb)
}

/// Names travel in tokens, metric labels and URL paths: keep them to a safe,
/// bounded alphabet.
fn safe_name(d: &mut Decoder, node: &Node, path: &str) -> Option<String> {
    let s = d.name(node, path)?;
    let ok = s.len() <= super::MAX_NAME
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        d.error(
            path,
            node.line,
            format!("{s:?} must be 1-64 characters of letters, digits, '.', '_' or '-', starting with a letter or digit"),
        );
        return None;
    }
    Some(s)
}

fn metrics(d: &mut Decoder, node: &Node, path: &str) -> Option<Vec<MetricDef>> {
    let items = d.seq(node, path)?;
    let mut out = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let mpath = index(path, i);
        let Some(f) = d.fields(item, &mpath, METRIC) else {
            ok = false;
            continue;
        };
        let name = required(d, &f, "name").and_then(|n| {
            let name = safe_name(d, n, &f.path_of("name"))?;
            if BUILTIN_METRICS.contains(&name.as_str()) {
                d.error(
                    f.path_of("name"),
                    n.line,
                    format!("{name:?} is a built-in metric; it needs no declaration"),
                );
                return None;
            }
            if out.iter().any(|m: &MetricDef| m.name == name) {
                d.error(
                    f.path_of("name"),
                    n.line,
                    format!("duplicate metric {name:?}"),
                );
                return None;
            }
            Some(name)
        });
        let kind =
            required(d, &f, "type").and_then(|n| match d.string(n, &f.path_of("type"))?.as_str() {
                "binary" => Some(MetricKind::Binary),
                "continuous" => Some(MetricKind::Continuous),
                other => {
                    d.error(
                        f.path_of("type"),
                        n.line,
                        format!("{other:?} is not a metric type; use binary or continuous"),
                    );
                    None
                }
            });
        let source = required(d, &f, "source").and_then(|n| {
            match d.string(n, &f.path_of("source"))?.as_str() {
                "feedback" => {
                    if let Some(h) = f.get("header") {
                        d.error(
                            f.path_of("header"),
                            h.line,
                            "only response_header metrics take a header",
                        );
                        return None;
                    }
                    Some(MetricSource::Feedback)
                }
                "response_header" => match f.get("header") {
                    Some(h) => {
                        header_name(d, h, &f.path_of("header")).map(MetricSource::ResponseHeader)
                    }
                    None => {
                        d.error(&mpath, item.line, "a response_header metric needs `header`");
                        None
                    }
                },
                other => {
                    d.error(
                        f.path_of("source"),
                        n.line,
                        format!(
                            "{other:?} is not a metric source; use feedback or response_header"
                        ),
                    );
                    None
                }
            }
        });
        let min = f.get("min").and_then(|n| d.number(n, &f.path_of("min")));
        let max = f.get("max").and_then(|n| d.number(n, &f.path_of("max")));
        if let (Some(lo), Some(hi)) = (min, max) {
            if lo > hi {
                d.error(&mpath, item.line, format!("min {lo} is above max {hi}"));
                ok = false;
            }
        }
        if kind == Some(MetricKind::Binary) && (min.is_some() || max.is_some()) {
            d.error(
                &mpath,
                item.line,
                "binary metrics are 0 or 1; min/max apply to continuous metrics",
            );
            ok = false;
        }
        match (name, source, kind) {
            (Some(name), Some(source), Some(kind)) => out.push(MetricDef {
                name,
                source,
                kind,
                min,
                max,
            }),
            _ => ok = false,
        }
    }
    ok.then_some(out)
}

fn addr(d: &mut Decoder, f: &Fields, key: &str, default: &str) -> Option<SocketAddr> {
    let Some(node) = f.get(key) else {
        return default.parse().ok();
    };
    let path = f.path_of(key);
    let text = d.string(node, &path)?;
    match text.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            d.error(
                path,
                node.line,
                format!("{text:?} is not an IP:port address, e.g. \"127.0.0.1:8080\""),
            );
            None
        }
    }
}

fn admin(d: &mut Decoder, top: &Fields) -> Option<AdminConfig> {
    let Some(node) = top.get("admin") else {
        return Some(AdminConfig {
            listen: DEFAULT_ADMIN_LISTEN.parse().ok()?,
            token_file: None,
        });
    };
    let f = d.fields(node, "admin", ADMIN)?;
    let listen = addr(d, &f, "listen", DEFAULT_ADMIN_LISTEN);
    let token_file = f
        .get("token_file")
        .and_then(|n| d.name(n, "admin.token_file").map(PathBuf::from));
    Some(AdminConfig {
        listen: listen?,
        token_file,
    })
}

fn backends(d: &mut Decoder, top: &Fields) -> Vec<Backend> {
    let Some(node) = top.get("backends") else {
        return Vec::new();
    };
    let Some(f) = d.fields(node, "backends", &[]) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in f.entries() {
        let path = f.path_of(&entry.key);
        if entry.key.is_empty() {
            d.error(&path, entry.key_line, "backend name must not be empty");
            continue;
        }
        let Some(bf) = d.fields(&entry.value, &path, BACKEND) else {
            continue;
        };
        let url = match bf.get("url") {
            Some(n) => backend_url(d, n, &bf.path_of("url")),
            None => {
                d.error(&path, entry.value.line, "missing field `url`");
                None
            }
        };
        let response_timeout = bf
            .get("response_timeout")
            .and_then(|n| d.duration(n, &bf.path_of("response_timeout")));
        let protocol = match bf.get("protocol") {
            Some(n) => upstream_protocol(d, n, &bf.path_of("protocol")),
            None => Some(UpstreamProtocol::default()),
        };
        let tls = upstream_tls(d, &bf);
        let price = match bf.get("price") {
            Some(n) => price(d, n, &bf.path_of("price")).map(Some),
            None => Some(None),
        };
        let headers = match bf.get("headers") {
            Some(n) => super::secret::headers(d, n, &bf.path_of("headers")),
            None => Some(Vec::new()),
        };
        if let (Some(url), Some(protocol), Some(tls), Some(price), Some(headers)) =
            (url, protocol, tls, price, headers)
        {
            out.push(Backend {
                name: entry.key.clone(),
                url,
                response_timeout,
                protocol,
                tls,
                price,
                headers,
            });
        }
    }
    out
}

/// `{ input_per_mtok: 0.15, output_per_mtok: 0.60 }`: both required, finite, >= 0.
fn price(d: &mut Decoder, node: &Node, path: &str) -> Option<Price> {
    let f = d.fields(node, path, PRICE)?;
    let read = |d: &mut Decoder, key: &str| {
        let n = required(d, &f, key)?;
        let v = d.number(n, &f.path_of(key))?;
        if !(v.is_finite() && v >= 0.0) {
            d.error(
                f.path_of(key),
                n.line,
                format!("must be a price >= 0, got {v}"),
            );
            return None;
        }
        Some(v)
    };
    let input = read(d, "input_per_mtok");
    let output = read(d, "output_per_mtok");
    Some(Price {
        input_per_mtok: input?,
        output_per_mtok: output?,
    })
}

fn backend_url(d: &mut Decoder, node: &Node, path: &str) -> Option<BackendUrl> {
    let text = d.string(node, path)?;
    let uri: http::Uri = match text.parse() {
        Ok(u) => u,
        Err(e) => {
            d.error(path, node.line, format!("{text:?} is not a URL: {e}"));
            return None;
        }
    };
    let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned()) else {
        d.error(
            path,
            node.line,
            format!("{text:?} must be absolute, e.g. \"http://127.0.0.1:9001\""),
        );
        return None;
    };
    if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
        d.error(
            path,
            node.line,
            format!("scheme {scheme} is not supported; use http:// or https://"),
        );
        return None;
    }
    if uri.query().is_some() {
        d.error(path, node.line, "a backend URL must not have a query");
        return None;
    }
    Some(BackendUrl {
        text: text.clone(),
        scheme,
        authority,
        base_path: uri.path().trim_end_matches('/').to_string(),
    })
}

fn unknown_backend(name: &str, names: &HashSet<&str>) -> String {
    let mut known: Vec<&str> = names.iter().copied().collect();
    known.sort_unstable();
    format!(
        "unknown backend {name:?}; declared backends: {}",
        if known.is_empty() {
            "(none)".to_string()
        } else {
            known.join(", ")
        }
    )
}

fn experiments(d: &mut Decoder, top: &Fields, backends: &HashSet<&str>) -> Option<Vec<Experiment>> {
    let Some(node) = top.get("experiments") else {
        return Some(Vec::new());
    };
    let items = d.seq(node, "experiments")?;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (i, item) in items.iter().enumerate() {
        let path = index("experiments", i);
        // Checked on the raw node so a duplicate is reported even when the
        // experiment has other errors.
        if let Some(name) = peek_name(item) {
            if !seen.insert(name) {
                d.error(
                    format!("{path}.name"),
                    item.line,
                    format!("duplicate experiment name {name:?}"),
                );
            }
        }
        if let Some(exp) = experiment(d, item, &path, backends) {
            out.push(exp);
        }
    }
    Some(out)
}

fn peek_name(node: &Node) -> Option<&str> {
    let Value::Map(entries) = &node.value else {
        return None;
    };
    entries
        .iter()
        .find(|e| e.key == "name")
        .and_then(|e| match &e.value.value {
            Value::Scalar(s) => Some(s.text.as_str()),
            _ => None,
        })
}

fn experiment(
    d: &mut Decoder,
    node: &Node,
    path: &str,
    backends: &HashSet<&str>,
) -> Option<Experiment> {
    let f = d.fields(node, path, EXPERIMENT)?;
    let name = match f.get("name") {
        Some(n) => safe_name(d, n, &f.path_of("name")),
        None => {
            d.error(path, node.line, "missing field `name`");
            None
        }
    };
    let metrics = match f.get("metrics") {
        Some(n) => metrics(d, n, &f.path_of("metrics")),
        None => Some(Vec::new()),
    };
    let attribution_window = match f.get("attribution_window") {
        Some(n) => d.duration(n, &f.path_of("attribution_window")),
        // A day covers "the user accepted the suggestion later that session".
        None => Some(std::time::Duration::from_secs(24 * 3600)),
    };
    let slow_threshold = match f.get("slow_threshold") {
        Some(n) => d.duration(n, &f.path_of("slow_threshold")),
        None => Some(std::time::Duration::from_secs(1)),
    };
    let salt = f.get("salt").and_then(|n| d.name(n, &f.path_of("salt")));
    let matcher = match f.get("match") {
        Some(n) => matcher(d, n, &f.path_of("match")),
        None => Some(Match::default()),
    };
    let unit = match f.get("unit") {
        Some(n) => unit(d, n, &f.path_of("unit")).map(Some),
        None => Some(None),
    };
    let allow_override = match f.get("allow_override") {
        Some(n) => d.bool(n, &f.path_of("allow_override")),
        None => Some(false),
    };
    let inject_usage = match f.get("inject_usage") {
        Some(n) => d.bool(n, &f.path_of("inject_usage")),
        None => Some(false),
    };
    let (arms, shadows) = match f.get("arms") {
        Some(n) => match arms(d, n, &f.path_of("arms"), backends) {
            Some((arms, shadows)) => (Some(arms), Some(shadows)),
            None => (None, None),
        },
        None => {
            d.error(path, node.line, "missing field `arms`");
            (None, None)
        }
    };
    let baseline = match (f.get("baseline"), &arms) {
        (Some(n), Some(arms)) => {
            let b = d.name(n, &f.path_of("baseline"))?;
            let shadow = shadows
                .as_ref()
                .is_some_and(|s| s.iter().any(|s| s.arm.name == b));
            if shadow {
                d.error(
                    f.path_of("baseline"),
                    n.line,
                    format!("baseline {b:?} is a shadow arm; the baseline must be a live arm (one without `shadow`)"),
                );
                return None;
            }
            if !arms.iter().any(|a| a.name == b) {
                d.error(
                    f.path_of("baseline"),
                    n.line,
                    format!("baseline {b:?} is not one of this experiment's arms"),
                );
                return None;
            }
            Some(b)
        }
        (None, Some(arms)) => Some(arms[0].name.clone()),
        (_, None) => None,
    };
    let policy = match (f.get("kind"), &arms, &metrics, &baseline) {
        (Some(_), Some(arms), Some(metrics), Some(baseline)) => {
            control_policy(d, &f, arms, metrics, baseline).map(Some)
        }
        (Some(_), _, _, _) => None,
        (None, _, _, _) => {
            for key in [
                "steps",
                "step",
                "analysis",
                "on_success",
                "on_failure",
                "max_duration",
                "notify",
            ] {
                if let Some(n) = f.get(key) {
                    d.error(
                        f.path_of(key),
                        n.line,
                        "only experiments with a `kind` (canary or ab) take this",
                    );
                }
            }
            Some(None)
        }
    };
    let policy = policy?;
    let watch = match (&metrics, &arms) {
        (Some(m), Some(a)) => super::watch::decode(d, &f, m, policy.as_ref(), a.len()),
        _ => None,
    };
    let capture = match f.get("capture") {
        Some(n) => super::capture::decode(d, n, &f.path_of("capture")).map(Some),
        None => Some(None),
    };
    let name = name?;
    let (watch, on_drift) = watch?;
    Some(Experiment {
        capture: capture?,
        watch,
        on_drift,
        policy,
        baseline: baseline?,
        salt: salt.unwrap_or_else(|| name.clone()),
        name,
        matcher: matcher?,
        unit: unit?,
        allow_override: allow_override?,
        arms: arms?,
        shadows: shadows?,
        metrics: metrics?,
        attribution_window: attribution_window?,
        slow_threshold: slow_threshold?,
        inject_usage: inject_usage?,
    })
}

fn choice<T: Copy>(
    d: &mut Decoder,
    f: &Fields,
    key: &str,
    options: &[(&str, T)],
    default: Option<T>,
) -> Option<T> {
    let Some(n) = f.get(key) else {
        if default.is_none() {
            d.error(&f.path, f.line, format!("missing field `{key}`"));
        }
        return default;
    };
    let v = d.string(n, &f.path_of(key))?;
    match options.iter().find(|(name, _)| *name == v) {
        Some((_, t)) => Some(*t),
        None => {
            let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
            d.error(
                f.path_of(key),
                n.line,
                format!("{v:?} is not one of: {}", names.join(", ")),
            );
            None
        }
    }
}

fn fraction(d: &mut Decoder, node: &Node, path: &str, lo: f64, hi: f64) -> Option<f64> {
    let v = d.number(node, path)?;
    if !(v > lo && v < hi) {
        d.error(
            path,
            node.line,
            format!("must be between {lo} and {hi} (exclusive), got {v}"),
        );
        return None;
    }
    Some(v)
}

fn control_policy(
    d: &mut Decoder,
    f: &Fields,
    arms: &[Arm],
    metrics: &[MetricDef],
    baseline: &str,
) -> Option<ControlPolicy> {
    use std::time::Duration;
    let kind = choice(
        d,
        f,
        "kind",
        &[
            ("canary", ExperimentKind::Canary),
            ("ab", ExperimentKind::Ab),
        ],
        None,
    )?;
    let known = |m: &str| is_builtin_metric(m) || metrics.iter().any(|x| x.name == m);
    let mut ok = true;
    let steps = match (kind, f.get("steps")) {
        (ExperimentKind::Canary, Some(n)) => {
            let path = f.path_of("steps");
            let mut out = Vec::new();
            if let Some(items) = d.seq(n, &path) {
                let mut prev: Option<BasisPoints> = None;
                for (i, item) in items.iter().enumerate() {
                    let ipath = index(&path, i);
                    match canary_step(d, item, &ipath) {
                        Some(Step::Shadow(m)) => {
                            if i > 0 {
                                d.error(
                                    &ipath,
                                    item.line,
                                    "a shadow step can only be the first: once users see the candidate, copies tell nothing new",
                                );
                                ok = false;
                            }
                            out.push(Step::Shadow(m));
                        }
                        Some(Step::Live(w)) => {
                            if prev.is_some_and(|p| w <= p) || w == 0 {
                                d.error(
                                    &ipath,
                                    item.line,
                                    "steps must be increasing percentages above 0",
                                );
                                ok = false;
                            }
                            prev = Some(w);
                            out.push(Step::Live(w));
                        }
                        None => ok = false,
                    }
                }
                if items.is_empty() {
                    d.error(&path, n.line, "a canary needs at least one step");
                    ok = false;
                } else if ok && prev.is_none() {
                    d.error(
                        &path,
                        n.line,
                        "a shadow step needs live steps after it, e.g. [shadow, 5, 25, 100]",
                    );
                    ok = false;
                }
            }
            out
        }
        (ExperimentKind::Canary, None) => {
            d.error(
                &f.path,
                f.line,
                "a canary needs `steps`, e.g. [5, 10, 25, 50, 100]",
            );
            return None;
        }
        (ExperimentKind::Ab, Some(n)) => {
            d.error(
                f.path_of("steps"),
                n.line,
                "steps apply to canaries; an ab experiment keeps its weights",
            );
            return None;
        }
        (ExperimentKind::Ab, None) => Vec::new(),
    };
    if kind == ExperimentKind::Canary && arms.len() != 2 {
        d.error(
            f.path_of("arms"),
            f.line,
            format!(
                "a canary has exactly two arms (baseline {baseline:?} and a candidate), got {}",
                arms.len()
            ),
        );
        ok = false;
    }
    let (mut step_min_samples, mut step_min_duration) = (500, Duration::from_secs(30));
    if let Some(n) = f.get("step") {
        if let Some(sf) = d.fields(n, &f.path_of("step"), STEP) {
            if let Some(m) = sf.get("min_samples") {
                step_min_samples = d.integer(m, &sf.path_of("min_samples"), 0, u64::MAX >> 12)?;
            }
            if let Some(m) = sf.get("min_duration") {
                step_min_duration = d.duration(m, &sf.path_of("min_duration"))?;
            }
        }
    }
    let mut p = ControlPolicy {
        kind,
        steps,
        step_min_samples,
        step_min_duration,
        interval: Duration::from_secs(1),
        alpha: 0.05,
        design_samples: 5000.0,
        min_units_per_arm: 100,
        min_events: 30,
        min_exact_events: crate::stats::DEFAULT_MIN_EXACT_EVENTS,
        look_every: DEFAULT_LOOK_EVERY,
        min_look_gap: DEFAULT_MIN_LOOK_GAP,
        guardrails: Vec::new(),
        primary: None,
        on_success: OnSuccess::Promote,
        on_failure: OnFailure::Rollback,
        max_duration: Duration::from_secs(24 * 3600),
        notify_url: None,
    };
    // A guardrail that failed to decode is missing from `p`, which would shift
    // the indices the statistics check reports; it then waits for the fix.
    let mut guardrails_whole = true;
    if let Some(n) = f.get("analysis") {
        let af = d.fields(n, &f.path_of("analysis"), ANALYSIS)?;
        if let Some(m) = af.get("interval") {
            p.interval = d.duration(m, &af.path_of("interval"))?;
            if p.interval < Duration::from_millis(100) {
                d.error(af.path_of("interval"), m.line, "must be at least 100ms");
                ok = false;
            }
        }
        if let Some(m) = af.get("alpha") {
            p.alpha = fraction(d, m, &af.path_of("alpha"), 0.0, 0.5)?;
        }
        if let Some(m) = af.get("design_samples") {
            p.design_samples = d.integer(m, &af.path_of("design_samples"), 10, 1 << 40)? as f64;
        }
        if let Some(m) = af.get("min_units_per_arm") {
            p.min_units_per_arm = d.integer(m, &af.path_of("min_units_per_arm"), 2, 1 << 40)?;
        }
        if let Some(m) = af.get("min_events") {
            p.min_events = d.integer(m, &af.path_of("min_events"), 1, 1 << 40)?;
        }
        if let Some(m) = af.get("min_exact_events") {
            p.min_exact_events = d.integer(m, &af.path_of("min_exact_events"), 1, 1 << 40)?;
        }
        if let Some(m) = af.get("look_every") {
            p.look_every = d.integer(m, &af.path_of("look_every"), 0, 1 << 40)?;
        }
        if let Some(m) = af.get("min_look_gap") {
            p.min_look_gap = d.duration(m, &af.path_of("min_look_gap"))?;
        }
        if let Some(g) = af.get("guardrails") {
            let gpath = af.path_of("guardrails");
            let items = d.seq(g, &gpath).unwrap_or_default();
            for (i, item) in items.iter().enumerate() {
                let ipath = index(&gpath, i);
                let Some(gf) = d.fields(item, &ipath, GUARDRAIL) else {
                    ok = false;
                    continue;
                };
                let metric = required(d, &gf, "metric").and_then(|n| {
                    let m = d.name(n, &gf.path_of("metric"))?;
                    if !known(&m) {
                        d.error(gf.path_of("metric"), n.line, format!("unknown metric {m:?}; use a built-in ({}) or declare it under `metrics`", BUILTIN_METRICS.iter().chain(&INFERENCE_METRICS).copied().collect::<Vec<_>>().join(", ")));
                        return None;
                    }
                    Some(m)
                });
                let given: Vec<(&str, Direction, bool)> = [
                    ("max_relative_increase", Direction::Increase, true),
                    ("max_absolute_increase", Direction::Increase, false),
                    ("max_relative_decrease", Direction::Decrease, true),
                    ("max_absolute_decrease", Direction::Decrease, false),
                ]
                .into_iter()
                .filter(|(k, _, _)| gf.get(k).is_some())
                .collect();
                if given.len() != 1 {
                    d.error(&ipath, item.line, "give exactly one of max_relative_increase, max_absolute_increase, max_relative_decrease, max_absolute_decrease");
                    ok = false;
                    continue;
                }
                let (key, harm, relative) = given[0];
                let node = gf.get(key)?;
                let margin = d.number(node, &gf.path_of(key));
                match (metric, margin) {
                    (Some(metric), Some(margin)) if margin >= 0.0 => p.guardrails.push(Guardrail {
                        metric,
                        harm,
                        relative,
                        margin,
                    }),
                    (_, Some(margin)) if margin < 0.0 => {
                        d.error(gf.path_of(key), node.line, "must be >= 0");
                        ok = false;
                    }
                    _ => ok = false,
                }
            }
            guardrails_whole = p.guardrails.len() == items.len();
        }
        if let Some(pn) = af.get("primary") {
            let pf = d.fields(pn, &af.path_of("primary"), PRIMARY)?;
            let metric = required(d, &pf, "metric").and_then(|n| {
                let m = d.name(n, &pf.path_of("metric"))?;
                if !known(&m) {
                    d.error(
                        pf.path_of("metric"),
                        n.line,
                        format!("unknown metric {m:?}; declare it under `metrics`"),
                    );
                    return None;
                }
                Some(m)
            });
            let direction = choice(
                d,
                &pf,
                "direction",
                &[
                    ("increase", Direction::Increase),
                    ("decrease", Direction::Decrease),
                ],
                None,
            );
            let min_effect = match pf.get("min_effect") {
                Some(n) => d.number(n, &pf.path_of("min_effect")),
                None => Some(0.0),
            };
            match (metric, direction, min_effect) {
                (Some(metric), Some(direction), Some(min_effect)) => {
                    p.primary = Some(Primary {
                        metric,
                        direction,
                        min_effect,
                    })
                }
                _ => ok = false,
            }
        }
    }
    if kind == ExperimentKind::Ab && p.primary.is_none() {
        d.error(&f.path, f.line, "an ab experiment needs `analysis.primary`");
        ok = false;
    }
    if guardrails_whole {
        ok &= statistics(d, f, &p);
    }
    p.on_success = choice(
        d,
        f,
        "on_success",
        &[("promote", OnSuccess::Promote), ("hold", OnSuccess::Hold)],
        Some(OnSuccess::Promote),
    )?;
    p.on_failure = choice(
        d,
        f,
        "on_failure",
        &[
            ("rollback", OnFailure::Rollback),
            ("pause", OnFailure::Pause),
        ],
        Some(OnFailure::Rollback),
    )?;
    if let Some(n) = f.get("max_duration") {
        p.max_duration = d.duration(n, &f.path_of("max_duration"))?;
    }
    if let Some(n) = f.get("notify") {
        let nf = d.fields(n, &f.path_of("notify"), NOTIFY)?;
        if let Some(u) = nf.get("url") {
            let url = d.string(u, &nf.path_of("url"))?;
            match url.parse::<http::Uri>() {
                Ok(uri) if uri.scheme_str() == Some("http") && uri.authority().is_some() => {
                    p.notify_url = Some(url)
                }
                _ => {
                    d.error(
                        nf.path_of("url"),
                        u.line,
                        format!("{url:?} must be an http:// URL"),
                    );
                    ok = false;
                }
            }
        }
    }
    ok.then_some(p)
}

/// Runs the statistics engine's own validation on the translated policy, so
/// `abgate check` refuses exactly what the controller would refuse when it
/// starts (where the only recourse is to log it and run no controller). Each failure is
/// reported at the config key it came from; one without a key (an engine
/// default) at the `analysis` block. Returns whether the policy is valid.
fn statistics(d: &mut Decoder, f: &Fields, p: &ControlPolicy) -> bool {
    let mut reported: Vec<(String, String)> = Vec::new();
    for e in stats_policy(p).problems() {
        let located = match &e {
            PolicyError::BadParameter { field, message } => {
                config_key(field, p).map(|key| (key, message.clone()))
            }
            _ => None,
        };
        let (path, line, message) = match located {
            Some((key, message)) => (field(&f.path, &key), line_of(f, &key), message),
            None => (
                f.path_of("analysis"),
                f.get("analysis").map_or(f.line, |n| n.line),
                e.to_string(),
            ),
        };
        // `alpha` sets two engine levels; one report per key is enough.
        if !reported
            .iter()
            .any(|(at, said)| *at == path && *said == message)
        {
            d.error(&path, line, &message);
            reported.push((path, message));
        }
    }
    reported.is_empty()
}

/// The line of the node at `key` below `f` (e.g. `analysis.guardrails[1].max_relative_increase`),
/// or of its deepest ancestor present: a defaulted value has no node of its own.
fn line_of(f: &Fields, key: &str) -> usize {
    let mut line = f.line;
    let mut node: Option<&Node> = None;
    for part in key.split('.') {
        let (name, at) = match part.split_once('[') {
            Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let next = match node {
            None => f.get(name),
            Some(n) => match &n.value {
                Value::Map(entries) => entries.iter().find(|e| e.key == name).map(|e| &e.value),
                _ => None,
            },
        };
        let Some(mut n) = next else { break };
        line = n.line;
        if let Some(i) = at {
            match &n.value {
                Value::Seq(items) if i < items.len() => n = &items[i],
                _ => break,
            }
            line = n.line;
        }
        node = Some(n);
    }
    line
}

fn matcher(d: &mut Decoder, node: &Node, path: &str) -> Option<Match> {
    let f = d.fields(node, path, MATCH)?;
    let host = f.get("host").and_then(|n| {
        let h = d.name(n, &f.path_of("host"))?;
        match h.parse::<http::uri::Authority>() {
            Ok(a) if a.port().is_none() => Some(a.host().to_ascii_lowercase()),
            _ => {
                d.error(
                    f.path_of("host"),
                    n.line,
                    format!("{h:?} must be a host name without port"),
                );
                None
            }
        }
    });
    let path_prefix = f.get("path_prefix").and_then(|n| {
        let p = d.string(n, &f.path_of("path_prefix"))?;
        if !p.starts_with('/') {
            d.error(
                f.path_of("path_prefix"),
                n.line,
                format!("{p:?} must start with '/'"),
            );
            return None;
        }
        Some(p)
    });
    let mut headers = Vec::new();
    if let Some(n) = f.get("headers") {
        if let Some(items) = d.seq(n, &f.path_of("headers")) {
            for (i, item) in items.iter().enumerate() {
                if let Some(h) = header_match(d, item, &index(&f.path_of("headers"), i)) {
                    headers.push(h);
                }
            }
        }
    }
    let model = match (f.get("model"), f.get("model_prefix")) {
        (Some(_), Some(n)) => {
            d.error(
                f.path_of("model_prefix"),
                n.line,
                "give at most one of `model` or `model_prefix`",
            );
            None
        }
        (Some(n), None) => d.name(n, &f.path_of("model")).map(ModelRule::Exact),
        (None, Some(n)) => d.name(n, &f.path_of("model_prefix")).map(ModelRule::Prefix),
        (None, None) => None,
    };
    let max_peek = match f.get("max_peek") {
        // Above 16 MiB a peek is a buffer, which is what it must never become.
        Some(n) => d.size(n, &f.path_of("max_peek")).and_then(|v| {
            if (1..=16 << 20).contains(&v) {
                Some(v as usize)
            } else {
                d.error(
                    f.path_of("max_peek"),
                    n.line,
                    format!("must be in 1..=16MiB, got {v}"),
                );
                None
            }
        }),
        None => Some(DEFAULT_MAX_PEEK),
    };
    Some(Match {
        host,
        path_prefix,
        headers,
        model,
        max_peek: max_peek?,
    })
}

fn header_name(d: &mut Decoder, node: &Node, path: &str) -> Option<http::HeaderName> {
    let text = d.name(node, path)?;
    match http::HeaderName::from_bytes(text.as_bytes()) {
        Ok(h) => Some(h),
        Err(_) => {
            d.error(
                path,
                node.line,
                format!("{text:?} is not a valid header name"),
            );
            None
        }
    }
}

fn header_match(d: &mut Decoder, node: &Node, path: &str) -> Option<HeaderMatch> {
    let f = d.fields(node, path, HEADER_MATCH)?;
    let name = match f.get("name") {
        Some(n) => header_name(d, n, &f.path_of("name")),
        None => {
            d.error(path, node.line, "missing field `name`");
            None
        }
    };
    let given: Vec<&str> = ["exact", "prefix", "regex"]
        .into_iter()
        .filter(|k| f.get(k).is_some())
        .collect();
    if given.len() != 1 {
        d.error(
            path,
            node.line,
            "give exactly one of `exact`, `prefix` or `regex`",
        );
        return None;
    }
    let key = given[0];
    let vnode = f.get(key)?;
    let value = d.string(vnode, &f.path_of(key))?;
    let rule = match key {
        "exact" => HeaderRule::Exact(value),
        "prefix" => HeaderRule::Prefix(value),
        _ => match regex::Regex::new(&value) {
            Ok(r) => HeaderRule::Regex(r),
            Err(e) => {
                d.error(f.path_of(key), vnode.line, format!("invalid regex: {e}"));
                return None;
            }
        },
    };
    Some(HeaderMatch { name: name?, rule })
}

fn unit(d: &mut Decoder, node: &Node, path: &str) -> Option<UnitSource> {
    let f = d.fields(node, path, UNIT)?;
    match (f.get("header"), f.get("cookie"), f.get("body")) {
        (Some(h), None, None) => header_name(d, h, &f.path_of("header")).map(UnitSource::Header),
        (None, Some(c), None) => d.name(c, &f.path_of("cookie")).map(UnitSource::Cookie),
        (None, None, Some(b)) => d.name(b, &f.path_of("body")).map(UnitSource::Body),
        _ => {
            d.error(
                path,
                node.line,
                "give exactly one of `header`, `cookie` or `body`",
            );
            None
        }
    }
}

/// Live arms and shadow arms, each in declared order. Shadow arms take no
/// weight and are left out of the weights' sum.
fn arms(
    d: &mut Decoder,
    node: &Node,
    path: &str,
    backends: &HashSet<&str>,
) -> Option<(Vec<Arm>, Vec<ShadowArm>)> {
    let items = d.seq(node, path)?;
    if items.is_empty() {
        d.error(path, node.line, "an experiment needs at least one arm");
        return None;
    }
    let mut out = Vec::new();
    let mut shadows = Vec::new();
    let mut ok = true;
    let mut weights_ok = true;
    let mut total: BasisPoints = 0;
    let mut names = HashSet::new();
    for (i, item) in items.iter().enumerate() {
        let apath = index(path, i);
        let Some(f) = d.fields(item, &apath, ARM) else {
            ok = false;
            continue;
        };
        let name = required(d, &f, "name").and_then(|n| safe_name(d, n, &f.path_of("name")));
        let backend = required(d, &f, "backend").and_then(|n| {
            let b = d.name(n, &f.path_of("backend"))?;
            if !backends.contains(b.as_str()) {
                d.error(f.path_of("backend"), n.line, unknown_backend(&b, backends));
                return None;
            }
            Some(b)
        });
        let model = f.get("model").and_then(|n| d.name(n, &f.path_of("model")));
        let model_ok = f.get("model").is_none() || model.is_some();
        if let Some(name) = &name {
            if !names.insert(name.clone()) {
                d.error(
                    f.path_of("name"),
                    item.line,
                    format!("duplicate arm name {name:?}"),
                );
                ok = false;
            }
        }
        if let Some(sn) = f.get("shadow") {
            // A shadow serves nobody, so a weight would either be ignored or
            // take buckets from the live arms: both are a misreading.
            if let Some(w) = f.get("weight") {
                d.error(
                    f.path_of("weight"),
                    w.line,
                    "a shadow arm takes no weight: it only gets copies (set `shadow.percent`)",
                );
                ok = false;
            }
            let mirror = shadow(d, sn, &f.path_of("shadow"));
            match (name, backend, mirror, model_ok) {
                (Some(name), Some(backend), Some(m), true) => {
                    let arm = Arm {
                        name,
                        backend,
                        weight: 0,
                        model,
                    };
                    shadows.push(ShadowArm::new(arm, m));
                }
                _ => ok = false,
            }
            continue;
        }
        let weight = required(d, &f, "weight").and_then(|n| weight(d, n, &f.path_of("weight")));
        match weight {
            Some(w) => total += w,
            None => weights_ok = false,
        }
        match (name, backend, weight, model_ok) {
            (Some(name), Some(backend), Some(weight), true) => out.push(Arm {
                name,
                backend,
                weight,
                model,
            }),
            _ => ok = false,
        }
    }
    if ok && out.is_empty() {
        d.error(
            path,
            node.line,
            "an experiment needs at least one live arm (one without `shadow`)",
        );
        return None;
    }
    if shadows.len() > MAX_SHADOWS {
        d.error(
            path,
            node.line,
            format!(
                "at most {MAX_SHADOWS} shadow arms per experiment, got {}",
                shadows.len()
            ),
        );
        return None;
    }
    if weights_ok && total != BUCKETS {
        d.error(
            path,
            node.line,
            format!("arm weights must sum to 100, got {}", percent(total)),
        );
        return None;
    }
    ok.then_some((out, shadows))
}

/// One item of a canary's `steps`: a percentage, `shadow` (copies of every
/// request, the other bounds at their defaults) or `{ shadow: { percent,
/// max_body, max_in_flight, timeout } }`.
fn canary_step(d: &mut Decoder, node: &Node, path: &str) -> Option<Step> {
    match &node.value {
        Value::Scalar(s) if s.text == "shadow" => Some(Step::Shadow(Mirror {
            percent: BUCKETS,
            max_body: DEFAULT_SHADOW_MAX_BODY,
            max_in_flight: DEFAULT_SHADOW_MAX_IN_FLIGHT,
            timeout: DEFAULT_SHADOW_TIMEOUT,
        })),
        Value::Map(_) => {
            let f = d.fields(node, path, &["shadow"])?;
            let sn = required(d, &f, "shadow")?;
            let m = shadow(d, sn, &f.path_of("shadow"))?;
            if m.percent == 0 {
                d.error(
                    f.path_of("shadow.percent"),
                    node.line,
                    "a shadow step copies more than 0% of the requests",
                );
                return None;
            }
            Some(Step::Shadow(m))
        }
        _ => weight(d, node, path).map(Step::Live),
    }
}

/// An arm's (or a shadow step's) `shadow: { percent, max_body,
/// max_in_flight, timeout }`.
fn shadow(d: &mut Decoder, node: &Node, path: &str) -> Option<Mirror> {
    let f = d.fields(node, path, SHADOW)?;
    let percent = required(d, &f, "percent").and_then(|n| weight(d, n, &f.path_of("percent")));
    let max_body = match f.get("max_body") {
        Some(n) => d.size(n, &f.path_of("max_body")),
        None => Some(DEFAULT_SHADOW_MAX_BODY),
    };
    let max_in_flight = match f.get("max_in_flight") {
        Some(n) => {
            let path = f.path_of("max_in_flight");
            match d.size(n, &path) {
                // tokio's semaphore holds at most usize::MAX >> 3 permits;
                // far more copies than that is a typo anyway.
                Some(v) if (1..=65_536).contains(&v) => Some(v as usize),
                Some(v) => {
                    d.error(path, n.line, format!("must be in 1..=65536, got {v}"));
                    None
                }
                None => None,
            }
        }
        None => Some(DEFAULT_SHADOW_MAX_IN_FLIGHT),
    };
    let timeout = match f.get("timeout") {
        Some(n) => {
            let path = f.path_of("timeout");
            match d.duration(n, &path) {
                Some(t) if t.is_zero() => {
                    d.error(path, n.line, "must be longer than 0s");
                    None
                }
                t => t,
            }
        }
        None => Some(DEFAULT_SHADOW_TIMEOUT),
    };
    Some(Mirror {
        percent: percent?,
        max_body: max_body?,
        max_in_flight: max_in_flight?,
        timeout: timeout?,
    })
}

fn required<'a>(d: &mut Decoder, f: &Fields<'a>, key: &str) -> Option<&'a Node> {
    let n = f.get(key);
    if n.is_none() {
        d.error(&f.path, f.line, format!("missing field `{key}`"));
    }
    n
}

/// Reads a percentage with at most two decimals into basis points.
pub(super) fn weight(d: &mut Decoder, node: &Node, path: &str) -> Option<BasisPoints> {
    let v = d.number(node, path)?;
    let bp = v * 100.0;
    if !(0.0..=100.0).contains(&v) || (bp - bp.round()).abs() > 1e-6 {
        d.error(
            path,
            node.line,
            format!("must be a percentage in 0..=100 with at most two decimals, got {v}"),
        );
        return None;
    }
    Some(bp.round() as BasisPoints)
}

/// Formats basis points as a percentage for messages.
pub fn percent(bp: BasisPoints) -> String {
    if bp.is_multiple_of(100) {
        format!("{}", bp / 100)
    } else {
        format!("{:.2}", f64::from(bp) / 100.0)
    }
}

fn timeouts(d: &mut Decoder, top: &Fields) -> Option<Timeouts> {
    let mut t = Timeouts::default();
    let Some(node) = top.get("timeouts") else {
        return Some(t);
    };
    let f = d.fields(node, "timeouts", TIMEOUTS)?;
    let mut ok = true;
    for (key, slot) in [
        ("upstream_connect", &mut t.upstream_connect),
        ("upstream_response", &mut t.upstream_response),
        ("header_read", &mut t.header_read),
        ("shutdown_grace", &mut t.shutdown_grace),
        ("request_body_idle", &mut t.request_body_idle),
        ("stream_idle", &mut t.stream_idle),
        ("downstream_write_idle", &mut t.downstream_write_idle),
        ("tls_handshake", &mut t.tls_handshake),
        ("keepalive_idle", &mut t.keepalive_idle),
    ] {
        if let Some(n) = f.get(key) {
            match d.duration(n, &f.path_of(key)) {
                Some(v) if v.is_zero() && key != "shutdown_grace" => {
                    d.error(f.path_of(key), n.line, "must be greater than zero");
                    ok = false;
                }
                Some(v) => *slot = v,
                None => ok = false,
            }
        }
    }
    ok.then_some(t)
}

fn upstream_protocol(d: &mut Decoder, node: &Node, path: &str) -> Option<UpstreamProtocol> {
    match d.string(node, path)?.as_str() {
        "http1" => Some(UpstreamProtocol::Http1),
        "http2" => Some(UpstreamProtocol::Http2),
        other => {
            d.error(
                path,
                node.line,
                format!("unknown protocol {other:?}; expected http1 or http2"),
            );
            None
        }
    }
}

/// Reads a PEM file path and checks now that it holds what it should, so a
/// typo is a config error with a line rather than a failure at first request.
pub(super) fn pem_file(d: &mut Decoder, f: &Fields, key: &str, want: PemKind) -> Option<PathBuf> {
    let node = f.get(key)?;
    let path = f.path_of(key);
    let file = PathBuf::from(d.name(node, &path)?);
    let checked = match want {
        PemKind::Certs => pem::load_certs(&file).map(drop),
        PemKind::Key => pem::load_key(&file).map(drop),
    };
    match checked {
        Ok(()) => Some(file),
        Err(e) => {
            d.error(path, node.line, e.to_string());
            None
        }
    }
}

#[derive(Clone, Copy)]
pub(super) enum PemKind {
    Certs,
    Key,
}

fn upstream_tls(d: &mut Decoder, bf: &Fields) -> Option<UpstreamTls> {
    let mut ok = true;
    let mut file = |d: &mut Decoder, key: &str, kind| {
        let present = bf.get(key).is_some();
        let f = pem_file(d, bf, key, kind);
        ok &= f.is_some() || !present;
        f
    };
    let ca_file = file(d, "ca_file", PemKind::Certs);
    let client_cert = file(d, "client_cert", PemKind::Certs);
    let client_key = file(d, "client_key", PemKind::Key);
    if bf.get("client_cert").is_some() != bf.get("client_key").is_some() {
        d.error(
            &bf.path,
            bf.line,
            "client_cert and client_key must be given together",
        );
        ok = false;
    }
    ok.then_some(UpstreamTls {
        ca_file,
        client_cert,
        client_key,
    })
}

fn listener_tls(d: &mut Decoder, node: &Node) -> Option<ListenerTls> {
    let f = d.fields(node, "tls", LISTENER_TLS)?;
    let cert = required(d, &f, "cert").and_then(|_| pem_file(d, &f, "cert", PemKind::Certs));
    let key = required(d, &f, "key").and_then(|_| pem_file(d, &f, "key", PemKind::Key));
    Some(ListenerTls {
        cert: cert?,
        key: key?,
    })
}

fn limits(d: &mut Decoder, top: &Fields) -> Option<Limits> {
    let mut l = Limits::default();
    let Some(node) = top.get("limits") else {
        return Some(l);
    };
    let f = d.fields(node, "limits", LIMITS)?;
    let mut ok = true;
    // (key, minimum, maximum, slot): maxima keep values inside what hyper accepts.
    let mut read = |d: &mut Decoder, key: &str, min: u64, max: u64| -> Option<u64> {
        let n = f.get(key)?;
        let path = f.path_of(key);
        match d.size(n, &path) {
            Some(v) if (min..=max).contains(&v) => Some(v),
            Some(v) => {
                d.error(path, n.line, format!("must be in {min}..={max}, got {v}"));
                ok = false;
                None
            }
            None => {
                ok = false;
                None
            }
        }
    };
    if let Some(v) = read(d, "max_connections", 1, 1 << 20) {
        l.max_connections = v as usize;
    }
    // hyper's read buffer cannot be smaller than 8 KiB.
    if let Some(v) = read(d, "max_header_bytes", 8192, 1 << 20) {
        l.max_header_bytes = v as usize;
    }
    if let Some(v) = read(d, "max_header_count", 1, 10_000) {
        l.max_header_count = v as usize;
    }
    // hyper refuses request targets of 65,534 bytes and more with a bare 414.
    if let Some(v) = read(d, "max_uri_bytes", 1, 65_000) {
        l.max_uri_bytes = v as usize;
    }
    if let Some(v) = read(d, "max_request_body_bytes", 0, u64::MAX) {
        l.max_request_body_bytes = v;
    }
    if let Some(v) = read(d, "h2_max_concurrent_streams", 1, 10_000) {
        l.h2_max_concurrent_streams = v as u32;
    }
    ok.then_some(l)
}

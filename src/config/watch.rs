//! Decoding an experiment's `watch:` and `on_drift:` keys.
//!
//! `watch: { metrics: [error, latency_ms, {metric: accepted, harm: decrease}],
//! reference: 1h, arl: 30d, interval: 1s, tolerance: 0.1 }`, or `watch: false`
//! to turn off the watch a promotion would otherwise start. `on_drift:
//! revert`, or `on_drift: { webhook: URL, revert: true }`.

use std::time::Duration;

use super::decode::{index, Decoder, Fields};
use super::model::*;
use super::yaml::{Node, Value};

const WATCH: &[&str] = &["metrics", "reference", "arl", "interval", "tolerance"];
const WATCH_METRIC: &[&str] = &["metric", "harm"];
const ON_DRIFT: &[&str] = &["webhook", "revert"];

/// The watch an experiment runs and what its alarm does. `None`: an error
/// was recorded.
pub(super) fn decode(
    d: &mut Decoder,
    f: &Fields,
    metrics: &[MetricDef],
    policy: Option<&ControlPolicy>,
    live_arms: usize,
) -> Option<(Option<Watch>, OnDrift)> {
    let watch = match f.get("watch") {
        Some(n) if matches!(&n.value, Value::Scalar(s) if s.plain && s.text == "false") => None,
        Some(n) => Some(declared(d, n, &f.path_of("watch"), metrics, policy)?),
        None => policy.map(after_promotion),
    };
    let on_drift = match f.get("on_drift") {
        Some(n) => {
            let path = f.path_of("on_drift");
            let o = on_drift(d, n, &path)?;
            if watch.is_none() {
                d.error(
                    &path,
                    n.line,
                    "there is no watch to alarm: declare `watch:` (or give the experiment a `kind`, whose promotion starts one)",
                );
                return None;
            }
            if o.revert && live_arms < 2 {
                d.error(
                    &path,
                    n.line,
                    "revert needs a previous baseline: this experiment has one live arm",
                );
                return None;
            }
            o
        }
        None => OnDrift::default(),
    };
    Some((watch, on_drift))
}

/// The watch a promotion starts: the guardrails' metrics (error and latency
/// without guardrails), against the promoted arm's evidence window.
fn after_promotion(p: &ControlPolicy) -> Watch {
    let mut metrics: Vec<WatchMetric> = p
        .guardrails
        .iter()
        .map(|g| WatchMetric {
            metric: g.metric.clone(),
            harm: Some(g.harm),
        })
        .collect();
    metrics.dedup_by(|a, b| a.metric == b.metric);
    if metrics.is_empty() {
        metrics = ["error", "latency_ms"]
            .into_iter()
            .map(|m| WatchMetric {
                metric: m.to_string(),
                harm: Some(Direction::Increase),
            })
            .collect();
    }
    Watch {
        metrics,
        reference: None,
        arl: DEFAULT_WATCH_ARL,
        interval: DEFAULT_WATCH_INTERVAL,
        tolerance: DEFAULT_WATCH_TOLERANCE,
        declared: false,
    }
}

fn declared(
    d: &mut Decoder,
    n: &Node,
    path: &str,
    metrics: &[MetricDef],
    policy: Option<&ControlPolicy>,
) -> Option<Watch> {
    let wf = d.fields(n, path, WATCH)?;
    let mut ok = true;
    let mut w = Watch {
        metrics: Vec::new(),
        reference: None,
        arl: DEFAULT_WATCH_ARL,
        interval: DEFAULT_WATCH_INTERVAL,
        tolerance: DEFAULT_WATCH_TOLERANCE,
        declared: true,
    };
    match wf.get("metrics") {
        Some(m) => {
            let mpath = wf.path_of("metrics");
            let items = d.seq(m, &mpath)?;
            if items.is_empty() {
                d.error(&mpath, m.line, "name at least one metric to watch");
                ok = false;
            }
            for (i, item) in items.iter().enumerate() {
                match metric(d, item, &index(&mpath, i), metrics, policy) {
                    Some(m) if w.metrics.iter().any(|x| x.metric == m.metric) => {
                        d.error(index(&mpath, i), item.line, "watched twice");
                        ok = false;
                    }
                    Some(m) => w.metrics.push(m),
                    None => ok = false,
                }
            }
        }
        None => {
            d.error(path, n.line, "missing field `metrics`");
            ok = false;
        }
    }
    let at_least = |d: &mut Decoder, key: &str, min: Duration| -> Option<Option<Duration>> {
        let Some(node) = wf.get(key) else {
            return Some(None);
        };
        let v = d.duration(node, &wf.path_of(key))?;
        if v < min {
            d.error(
                wf.path_of(key),
                node.line,
                format!("must be at least {}", humantime(min)),
            );
            return None;
        }
        Some(Some(v))
    };
    match at_least(d, "reference", Duration::from_secs(1)) {
        Some(r) => w.reference = r,
        None => ok = false,
    }
    match at_least(d, "interval", Duration::from_millis(100)) {
        Some(i) => w.interval = i.unwrap_or(w.interval),
        None => ok = false,
    }
    match at_least(d, "arl", w.interval * 100) {
        Some(a) => w.arl = a.unwrap_or(w.arl),
        None => ok = false,
    }
    if wf.get("arl").is_none() && w.arl < w.interval * 100 {
        d.error(
            wf.path_of("arl"),
            wf.line,
            format!(
                "must be at least 100 looks ({}) of watch.interval",
                humantime(w.interval * 100)
            ),
        );
        ok = false;
    }
    if let Some(t) = wf.get("tolerance") {
        match d.number(t, &wf.path_of("tolerance")) {
            Some(v) if (0.0..1.0).contains(&v) => w.tolerance = v,
            Some(v) => {
                d.error(
                    wf.path_of("tolerance"),
                    t.line,
                    format!("must be in [0, 1) (a fraction of the reference), got {v}"),
                );
                ok = false;
            }
            None => ok = false,
        }
    }
    ok.then_some(w)
}

fn metric(
    d: &mut Decoder,
    item: &Node,
    path: &str,
    metrics: &[MetricDef],
    policy: Option<&ControlPolicy>,
) -> Option<WatchMetric> {
    let (name, harm, line) = match &item.value {
        Value::Map(_) => {
            let mf = d.fields(item, path, WATCH_METRIC)?;
            let Some(m) = mf.get("metric") else {
                d.error(path, item.line, "missing field `metric`");
                return None;
            };
            let name = d.name(m, &mf.path_of("metric"))?;
            let harm = match mf.get("harm") {
                Some(h) => match d.string(h, &mf.path_of("harm"))?.as_str() {
                    "increase" => Some(Some(Direction::Increase)),
                    "decrease" => Some(Some(Direction::Decrease)),
                    "either" => Some(None),
                    other => {
                        d.error(
                            mf.path_of("harm"),
                            h.line,
                            format!("{other:?}: expected increase, decrease or either"),
                        );
                        return None;
                    }
                },
                None => None,
            };
            (name, harm, m.line)
        }
        _ => (d.name(item, path)?, None, item.line),
    };
    if !is_builtin_metric(&name) && !metrics.iter().any(|m| m.name == name) {
        d.error(
            path,
            line,
            format!("unknown metric {name:?}; use a built-in or declare it under `metrics`"),
        );
        return None;
    }
    let harm = harm.unwrap_or_else(|| known_harm(&name, policy));
    Some(WatchMetric { metric: name, harm })
}

/// The harmful direction of a metric named without one: a guardrail's, the
/// opposite of the primary's goal, or the built-in's (all of which are worse
/// higher, except token counts); `None` (either way) for the rest.
fn known_harm(name: &str, policy: Option<&ControlPolicy>) -> Option<Direction> {
    if let Some(p) = policy {
        if let Some(g) = p.guardrails.iter().find(|g| g.metric == name) {
            return Some(g.harm);
        }
        if let Some(pr) = p.primary.as_ref().filter(|pr| pr.metric == name) {
            return Some(match pr.direction {
                Direction::Increase => Direction::Decrease,
                Direction::Decrease => Direction::Increase,
            });
        }
    }
    match name {
        "prompt_tokens" | "completion_tokens" => None,
        n if is_builtin_metric(n) => Some(Direction::Increase),
        _ => None,
    }
}

fn on_drift(d: &mut Decoder, n: &Node, path: &str) -> Option<OnDrift> {
    if let Value::Scalar(s) = &n.value {
        if s.text == "revert" {
            return Some(OnDrift {
                webhook: None,
                revert: true,
            });
        }
        d.error(
            path,
            n.line,
            format!(
                "{:?}: expected `revert` or a mapping with webhook and revert",
                s.text
            ),
        );
        return None;
    }
    let of = d.fields(n, path, ON_DRIFT)?;
    let mut o = OnDrift::default();
    if let Some(u) = of.get("webhook") {
        let url = d.string(u, &of.path_of("webhook"))?;
        match url.parse::<http::Uri>() {
            Ok(uri) if uri.scheme_str() == Some("http") && uri.authority().is_some() => {
                o.webhook = Some(url)
            }
            _ => {
                d.error(
                    of.path_of("webhook"),
                    u.line,
                    format!("{url:?} must be an http:// URL"),
                );
                return None;
            }
        }
    }
    if let Some(r) = of.get("revert") {
        o.revert = d.bool(r, &of.path_of("revert"))?;
    }
    if o.webhook.is_none() && !o.revert {
        d.error(path, n.line, "give a webhook, revert: true, or both");
        return None;
    }
    Some(o)
}

fn humantime(d: Duration) -> String {
    if d.as_millis().is_multiple_of(1000) {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

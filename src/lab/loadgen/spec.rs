//! What a load run does: target, request shape, arrival process, bounds, feedback.

use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use serde::Serialize;
use serde_json::json;

use super::error::LoadError;

/// Default feedback path on the proxy's listener.
pub const DEFAULT_FEEDBACK_PATH: &str = "/_abgate/v1/feedback";

/// Shape of the request body and default path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// OpenAI chat completion, `"stream": false`, `POST /v1/chat/completions`.
    Chat,
    /// OpenAI chat completion, `"stream": true` (SSE) with `stream_options.include_usage`,
    /// `POST /v1/chat/completions`.
    ChatStream,
    /// KServe v2 inference, `POST /v2/models/{model}/infer`.
    Kserve,
    /// Plain JSON features, `POST /predict`.
    Predict,
}

impl RequestKind {
    /// Path used when [`LoadSpec::path`] is `None`.
    pub fn default_path(self, model: &str) -> String {
        match self {
            RequestKind::Chat | RequestKind::ChatStream => "/v1/chat/completions".into(),
            RequestKind::Kserve => format!("/v2/models/{model}/infer"),
            RequestKind::Predict => "/predict".into(),
        }
    }

    /// The JSON request body, the same for every request of a run.
    pub fn body(self, model: &str) -> Bytes {
        let body = match self {
            RequestKind::Chat => json!({
                "model": model,
                "messages": [{"role": "user", "content": "Say hello from abgate-load."}],
                "stream": false,
            }),
            // Asks for the usage chunk, as clients that track tokens do.
            RequestKind::ChatStream => json!({
                "model": model,
                "messages": [{"role": "user", "content": "Say hello from abgate-load."}],
                "stream": true,
                "stream_options": {"include_usage": true},
            }),
            RequestKind::Kserve => json!({
                "inputs": [{"name": "input0", "shape": [1, 4], "datatype": "FP32",
                            "data": [0.1, 0.2, 0.3, 0.4]}],
            }),
            RequestKind::Predict => json!({"features": [0.1, 0.2, 0.3, 0.4]}),
        };
        Bytes::from(body.to_string())
    }
}

/// Parses `chat`, `chat-stream`, `kserve`, `predict`.
impl FromStr for RequestKind {
    type Err = LoadError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "chat" => Ok(RequestKind::Chat),
            "chat-stream" | "chat_stream" => Ok(RequestKind::ChatStream),
            "kserve" => Ok(RequestKind::Kserve),
            "predict" => Ok(RequestKind::Predict),
            _ => Err(LoadError::InvalidSpec(format!(
                "unknown request kind `{s}` (chat | chat-stream | kserve | predict)"
            ))),
        }
    }
}

/// Arrival process.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LoadMode {
    /// Constant arrival rate independent of response times. Request `i` is scheduled at
    /// `start + i / rate_per_s`; its latency is measured from that scheduled instant, so time
    /// spent queued behind slow requests is counted (no coordinated omission).
    OpenLoop {
        /// Arrivals per second.
        rate_per_s: f64,
        /// Requests actively sent at once (HTTP/1: connections; h2: concurrent streams on one
        /// connection). Further due requests wait for a slot, their clock already running.
        connections: usize,
        /// Cap on requests queued + active; a due request beyond it is not sent and is
        /// counted as error kind `overloaded`.
        max_in_flight: usize,
    },
    /// `connections` workers, each sending its next request when the previous one finished;
    /// latency is measured from the actual send.
    ClosedLoop {
        /// Number of concurrent workers (HTTP/1: connections).
        connections: usize,
    },
}

/// Wire protocol towards the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive.
    Http1,
    /// HTTP/2 over cleartext with prior knowledge (h2c).
    H2,
}

/// Which mock truth header becomes the feedback `value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedbackValue {
    /// `x-mock-outcome` (0 or 1).
    Outcome,
    /// `x-mock-reward` (f64).
    Reward,
}

/// Posting of true outcomes back to the proxy.
///
/// Events are batched: one `POST` with a JSON array of up to `batch_max` events is sent when
/// the batch is full or every `flush_interval`, whichever comes first (a single event is still
/// sent as a one-element array). Posts are sequential, so at most one is in flight.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeedbackSpec {
    /// Fraction (0..=1) of successful responses carrying `x-abgate-token` that get feedback;
    /// 0 disables feedback.
    pub fraction: f64,
    /// Metric name posted (default `accepted`).
    pub metric: String,
    /// Feedback endpoint; `None` means the target base URL + [`DEFAULT_FEEDBACK_PATH`].
    pub url: Option<String>,
    /// Source of the posted value.
    pub value: FeedbackValue,
    /// Events per POST, at most 1000 (the proxy's limit).
    pub batch_max: usize,
    /// Longest time an event waits in a partial batch.
    pub flush_interval: Duration,
}

impl Default for FeedbackSpec {
    fn default() -> Self {
        FeedbackSpec {
            fraction: 0.0,
            metric: "accepted".into(),
            url: None,
            value: FeedbackValue::Outcome,
            batch_max: 100,
            flush_interval: Duration::from_millis(50),
        }
    }
}

/// A complete, bounded load run. Both `max_requests` and `max_duration` are required; the run
/// stops scheduling at whichever is reached first, then waits for outstanding requests at most
/// `request_timeout` longer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadSpec {
    /// Base URL, e.g. `http://127.0.0.1:8080`; must be `http` on a loopback host.
    pub target: String,
    /// Request path; `None` uses [`RequestKind::default_path`].
    pub path: Option<String>,
    /// Request shape.
    pub kind: RequestKind,
    /// Model name put in request bodies (and the KServe path).
    pub model: String,
    /// Arrival process.
    pub mode: LoadMode,
    /// HTTP/1.1 or h2c.
    pub protocol: Protocol,
    /// Upper bound on requests scheduled (including ones refused as `overloaded`).
    pub max_requests: u64,
    /// Upper bound on the scheduling phase.
    pub max_duration: Duration,
    /// Per-request timeout from the moment it is sent (also bounds the final drain).
    pub request_timeout: Duration,
    /// Size of the simulated user population; request `i` carries `user-<k>`, `k` uniform
    /// in `0..users` from an RNG seeded by `(seed, i)`.
    pub users: u64,
    /// Header carrying the unit (user) key.
    pub unit_header: String,
    /// Feedback posting.
    pub feedback: FeedbackSpec,
    /// Seed for unit keys and feedback sampling.
    pub seed: u64,
}

impl LoadSpec {
    /// A closed-loop HTTP/1 chat run against `target` with 1 connection, 100 requests / 10 s
    /// bounds, 10 000 users and no feedback; adjust fields as needed.
    pub fn new(target: impl Into<String>) -> Self {
        LoadSpec {
            target: target.into(),
            path: None,
            kind: RequestKind::Chat,
            model: "mock".into(),
            mode: LoadMode::ClosedLoop { connections: 1 },
            protocol: Protocol::Http1,
            max_requests: 100,
            max_duration: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            users: 10_000,
            unit_header: "x-user-id".into(),
            feedback: FeedbackSpec::default(),
            seed: 1,
        }
    }

    /// Full request URL (target + path).
    pub fn request_url(&self) -> String {
        let path = self
            .path
            .clone()
            .unwrap_or_else(|| self.kind.default_path(&self.model));
        join_url(&self.target, &path)
    }

    /// Feedback URL (explicit or the default path on the target).
    pub fn feedback_url(&self) -> String {
        match &self.feedback.url {
            Some(url) => url.clone(),
            None => join_url(&self.target, DEFAULT_FEEDBACK_PATH),
        }
    }

    /// Checks bounds and ranges and that every URL is loopback `http`.
    pub fn validate(&self) -> Result<(), LoadError> {
        let bad = |m: &str| Err(LoadError::InvalidSpec(m.to_string()));
        loopback_uri(&self.request_url())?;
        if self.feedback.fraction > 0.0 {
            loopback_uri(&self.feedback_url())?;
        }
        if self.max_requests == 0 {
            return bad("max_requests must be > 0");
        }
        if self.max_duration.is_zero() || self.request_timeout.is_zero() {
            return bad("max_duration and request_timeout must be > 0");
        }
        match self.mode {
            LoadMode::OpenLoop {
                rate_per_s,
                connections,
                max_in_flight,
            } => {
                if !(rate_per_s.is_finite() && rate_per_s > 0.0) {
                    return bad("rate_per_s must be a positive number");
                }
                if connections == 0 || max_in_flight == 0 {
                    return bad("connections and max_in_flight must be > 0");
                }
            }
            LoadMode::ClosedLoop { connections: 0 } => return bad("connections must be > 0"),
            LoadMode::ClosedLoop { .. } => {}
        }
        if self.users == 0 {
            return bad("users must be > 0");
        }
        if http::HeaderName::from_bytes(self.unit_header.as_bytes()).is_err() {
            return bad("unit_header is not a valid header name");
        }
        if !(0.0..=1.0).contains(&self.feedback.fraction) {
            return bad("feedback fraction must be in [0, 1]");
        }
        if !(1..=1000).contains(&self.feedback.batch_max) {
            return bad("feedback batch_max must be in 1..=1000");
        }
        Ok(())
    }
}

fn join_url(base: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

/// A duration on the load tools' command lines: the config grammar
/// ([`crate::config::parse_duration`]: `250ms`, `10s`, `2m`, `1h`, `7d`), plus the
/// two forms these flags have always taken that config files do not: a bare number
/// of seconds (`--duration 10`) and a space before the unit (`10 s`).
pub fn parse_duration_flag(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if let Ok(seconds) = t.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds)
            .map_err(|_| format!("duration {t:?} is out of range"));
    }
    match t.find(char::is_alphabetic) {
        Some(unit) => {
            let (num, unit) = t.split_at(unit);
            let joined = format!("{}{unit}", num.trim_end());
            // Errors quote what was typed, not the joined form.
            crate::config::parse_duration(&joined)
                .map_err(|e| e.replace(&format!("{joined:?}"), &format!("{t:?}")))
        }
        None => crate::config::parse_duration(t),
    }
}

/// Parses `url` and accepts it only if it is `http` on `localhost`, 127.0.0.0/8 or `[::1]`.
pub fn loopback_uri(url: &str) -> Result<Uri, LoadError> {
    let invalid = |reason: &str| LoadError::InvalidUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let uri: Uri = url.parse().map_err(|_| invalid("not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(_) => return Err(invalid("only http:// (HTTP/1.1 or h2c) is supported")),
        None => return Err(invalid("missing http:// scheme")),
    }
    let host = uri.host().ok_or_else(|| invalid("missing host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if loopback {
        Ok(uri)
    } else {
        Err(LoadError::NonLoopback(url.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_only() {
        assert!(loopback_uri("http://127.0.0.1:8080/x").is_ok());
        assert!(loopback_uri("http://localhost:1").is_ok());
        assert!(loopback_uri("http://[::1]:1/").is_ok());
        assert!(matches!(
            loopback_uri("http://10.0.0.1:80/"),
            Err(LoadError::NonLoopback(_))
        ));
        assert!(matches!(
            loopback_uri("http://example.com/"),
            Err(LoadError::NonLoopback(_))
        ));
        assert!(loopback_uri("https://127.0.0.1/").is_err());
    }

    #[test]
    fn urls_are_joined() {
        let mut spec = LoadSpec::new("http://127.0.0.1:1/");
        assert_eq!(spec.request_url(), "http://127.0.0.1:1/v1/chat/completions");
        spec.kind = RequestKind::Kserve;
        spec.model = "m".into();
        assert_eq!(spec.request_url(), "http://127.0.0.1:1/v2/models/m/infer");
        assert_eq!(
            spec.feedback_url(),
            "http://127.0.0.1:1/_abgate/v1/feedback"
        );
    }

    #[test]
    fn duration_flags_take_the_config_grammar_and_bare_seconds() {
        let d = |t: &str| parse_duration_flag(t).unwrap();
        assert_eq!(d("10s"), Duration::from_secs(10));
        assert_eq!(d("500ms"), Duration::from_millis(500));
        assert_eq!(d("2m"), Duration::from_secs(120));
        assert_eq!(d("1.5s"), Duration::from_millis(1500));
        assert_eq!(d("1h"), Duration::from_secs(3600));
        assert_eq!(d("10"), Duration::from_secs(10));
        assert_eq!(d("0.25"), Duration::from_millis(250));
        assert_eq!(d(" 10 s "), Duration::from_secs(10));
        assert_eq!(d("0"), Duration::ZERO);
        for bad in ["", "s", "ten", "5y", "-1", "-1s", "3 weeks"] {
            assert!(parse_duration_flag(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn feedback_url_is_checked_too() {
        let mut spec = LoadSpec::new("http://127.0.0.1:1");
        spec.feedback.fraction = 0.5;
        spec.feedback.url = Some("http://192.168.1.1/fb".into());
        assert!(matches!(spec.validate(), Err(LoadError::NonLoopback(_))));
    }
}

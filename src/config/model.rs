//! The validated configuration: if a value of these types exists, it is valid.
//!
//! Owns: the shape of a config that has passed every check.
//! Never: parses text (see `schema`) or builds routing state (see `routing::table`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Basis points: 10,000 = 100%. Weights and buckets share this unit so that a
/// weight maps to a whole number of buckets without rounding.
pub type BasisPoints = u32;

/// The total number of assignment buckets (and basis points in 100%).
pub const BUCKETS: BasisPoints = 10_000;

/// Longest experiment, arm or metric name, in bytes: outcome tokens carry
/// names, and their size is fixed.
pub const MAX_NAME: usize = 64;

#[derive(Debug, Clone)]
pub struct Config {
    /// Data-plane listener address.
    pub listen: SocketAddr,
    pub admin: AdminConfig,
    /// Where durable state lives (created on demand). With a postgres store
    /// it still holds this replica's own files (token keys, the feedback log,
    /// captures).
    pub state_dir: PathBuf,
    /// The store of config versions, decisions, states and saved runs.
    pub store: StoreConfig,
    /// Backends in declared order; names are unique.
    pub backends: Vec<Backend>,
    /// Backend for requests no experiment matches; `None` answers 404.
    pub default_backend: Option<String>,
    /// Experiments in declared order: the first match wins.
    pub experiments: Vec<Experiment>,
    pub timeouts: Timeouts,
    /// Size and count limits of the data-plane listener.
    pub limits: Limits,
    /// TLS termination on the data-plane listener; `None` serves plain HTTP (and h2c).
    pub tls: Option<ListenerTls>,
    pub feedback: FeedbackConfig,
    pub tokens: TokensConfig,
    /// The currency of every backend's `price` (a label: shown, never converted).
    pub currency: Option<String>,
}

/// Where config versions, decisions, experiment states and saved runs live.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StoreConfig {
    /// SQLite in `state_dir` (embedded, no setup).
    #[default]
    Sqlite,
    /// A PostgreSQL database that replicas share.
    Postgres(PostgresConfig),
}

/// Connections in a postgres store's pool unless `store.pool` says otherwise.
pub const DEFAULT_STORE_POOL: usize = 8;

/// `store: { kind: postgres, ... }`.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    /// The connection URL with its references resolved: it may hold a
    /// password, so `Debug` shows it redacted.
    pub url: String,
    pub pool: usize,
    /// The CA that signs the database's certificate: TLS with verification
    /// (also what `sslmode=require` in the URL asks for, against the system
    /// roots when no CA is given).
    pub ca_file: Option<PathBuf>,
    /// How long a leader that stopped answering keeps the lease before
    /// another replica takes over (`store.lease_ttl`, 5 s by default).
    pub lease_ttl: std::time::Duration,
}

/// `store.lease_ttl` unless the config says otherwise.
pub const DEFAULT_LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(5);

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &without_credentials(&self.url))
            .field("pool", &self.pool)
            .field("ca_file", &self.ca_file)
            .field("lease_ttl", &self.lease_ttl)
            .finish()
    }
}

/// A URL with whatever stands between `://` and `@` replaced, for logs.
pub fn without_credentials(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s + 3 => {
            format!("{}REDACTED{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// The feedback endpoint on the data-plane listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedbackConfig {
    pub path: String,
    /// Largest request body accepted (413 above), bytes.
    pub max_body: usize,
    /// Largest `correction` of one event, in bytes of its JSON (413 above).
    pub max_correction: usize,
}

impl Default for FeedbackConfig {
    fn default() -> Self {
        FeedbackConfig {
            path: "/_abgate/v1/feedback".into(),
            // 1,000 events of ~200 bytes fit with room; larger is a misuse.
            max_body: 1024 * 1024,
            // A reviewer's corrected answer: a long completion fits.
            max_correction: 16 * 1024,
        }
    }
}

/// Where outcome-token keys come from when `ABGATE_TOKEN_KEYS` is not set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokensConfig {
    pub key_file: Option<PathBuf>,
}

/// Metrics every arm has without declaring them.
pub const BUILTIN_METRICS: [&str; 4] = ["error", "latency_ms", "ttfb_ms", "slow"];

/// Metrics every arm has from the response scanner (OpenAI-compatible
/// responses): tokens per response, cost per response (backends with a
/// `price`), time to first token and mean inter-token gap (ms, streams),
/// the share of streams that ended before their terminal marker, and the share
/// of responses cut by the token limit. Unlike [`BUILTIN_METRICS`] these names
/// may still be declared (they were free before the scanner existed): a
/// declared metric of the same name replaces the scanner's.
pub const INFERENCE_METRICS: [&str; 7] = [
    "prompt_tokens",
    "completion_tokens",
    "ttft_ms",
    "itl_ms",
    "stream_incomplete",
    "finish_length",
    "cost",
];

/// Whether `name` is a metric every arm has without declaring it.
pub fn is_builtin_metric(name: &str) -> bool {
    BUILTIN_METRICS.contains(&name) || INFERENCE_METRICS.contains(&name)
}

/// A backend's price per million tokens, in the config's `currency`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

impl Price {
    /// The cost of one response's usage. Cached prompt tokens are charged at
    /// the full input price: providers discount them differently, and a
    /// guardrail compares arms, which the discount rarely reorders.
    pub fn cost(&self, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        (prompt_tokens as f64 * self.input_per_mtok
            + completion_tokens as f64 * self.output_per_mtok)
            / 1e6
    }
}

/// A per-experiment metric beyond the built-ins.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricDef {
    pub name: String,
    pub source: MetricSource,
    pub kind: MetricKind,
    /// Inclusive bounds for continuous values (feedback outside is 422).
    pub min: Option<f64>,
    pub max: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricSource {
    /// Posted later by clients against a token.
    Feedback,
    /// Read from the backend's response header of that name.
    ResponseHeader(http::HeaderName),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// 0 or 1.
    Binary,
    Continuous,
}

/// Certificate chain and private key files (PEM) of the data-plane listener.
/// Both are read at startup and again by `reload_tls`, so a renewed certificate
/// takes effect on config reload without a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Backend {
    pub name: String,
    pub url: BackendUrl,
    /// Overrides `timeouts.upstream_response` for this backend.
    pub response_timeout: Option<Duration>,
    /// HTTP version spoken to the backend.
    pub protocol: UpstreamProtocol,
    /// TLS settings for `https://` backends (ignored for `http://`).
    pub tls: UpstreamTls,
    /// What its tokens cost; `None` records no `cost`.
    pub price: Option<Price>,
    /// Headers set on every request forwarded to this backend (e.g. its own
    /// `authorization`), replacing the client's header of the same name.
    /// Values are resolved from `${file:...}` / `${env:...}` when the config is
    /// loaded; they are secrets and never printed (see [`SecretHeader`]).
    pub headers: Vec<SecretHeader>,
}

/// One header a backend injects. Its value is a credential: `Debug` prints
/// `REDACTED`, and the value is marked sensitive (HTTP/2 never indexes it in
/// HPACK tables).
#[derive(Clone)]
pub struct SecretHeader {
    pub name: http::HeaderName,
    /// `None` when the config was read without resolving secrets (history,
    /// lineage, client-side checks): such a config is never served.
    pub value: Option<http::HeaderValue>,
}

impl std::fmt::Debug for SecretHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretHeader")
            .field("name", &self.name)
            .field("value", &super::redact::REDACTED)
            .finish()
    }
}

/// The HTTP version abgate speaks to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with a keep-alive pool (the default; what most model servers speak).
    #[default]
    Http1,
    /// HTTP/2 only: prior knowledge (h2c) on `http://`, ALPN `h2` on `https://`.
    /// gRPC backends need this; trailers pass through.
    Http2,
}

/// Trust and identity for an `https://` backend.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct UpstreamTls {
    /// PEM CA bundle that replaces the system roots; `None` trusts the system store.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain and key for mutual TLS (both or neither).
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// An upstream base URL, split once so the hot path never re-parses it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendUrl {
    /// As written in the config (used as the connection-pool identity).
    pub text: String,
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// Path prefix without a trailing slash; empty when the URL has none.
    pub base_path: String,
}

#[derive(Debug, Clone)]
pub struct Experiment {
    pub name: String,
    /// Mixed into the assignment hash; defaults to the name. Two experiments with
    /// different salts assign independently.
    pub salt: String,
    /// The arm a rollback sends all traffic to (default: the first arm).
    pub baseline: String,
    pub matcher: Match,
    pub unit: Option<UnitSource>,
    pub allow_override: bool,
    /// Declared order is bucket order: arm 0 owns the lowest buckets.
    /// Live arms only: shadow arms are in [`Experiment::shadows`], so nothing
    /// that splits or judges live traffic (routing weights, SRM, the
    /// controller, `abgate analyze`) can mistake one for a live arm.
    pub arms: Vec<Arm>,
    /// Arms that receive a copy of a share of the live traffic and never
    /// serve a client (`shadow:` in the config's `arms:` list), in declared order.
    pub shadows: Vec<ShadowArm>,
    pub metrics: Vec<MetricDef>,
    /// Feedback for a token older than this is refused (410).
    pub attribution_window: Duration,
    /// Latency above this counts as `slow`.
    pub slow_threshold: Duration,
    /// Automatic analysis and decisions; `None` for a manually run experiment.
    pub policy: Option<ControlPolicy>,
    /// Add `stream_options.include_usage` to streaming completion requests
    /// that lack it (and hide the extra usage chunk from their clients), so
    /// every stream reports its tokens.
    pub inject_usage: bool,
    /// The drift watch on the arm in force (`watch:`), or the default one a
    /// promotion turns on; `None` with `watch: false` or for a manually run
    /// experiment that declares none.
    pub watch: Option<Watch>,
    /// What a drift alarm does besides its decision, gauge and `notify`.
    pub on_drift: OnDrift,
    /// Sampled examples of requests and answers kept for training
    /// (`capture:`); `None`: nothing is kept.
    pub capture: Option<Capture>,
}

/// `capture:`: a share of an experiment's routed requests kept with their
/// answers, redacted, within a disk budget, for the training-data export.
#[derive(Debug, Clone, PartialEq)]
pub struct Capture {
    /// Share of routed requests captured, in basis points; which ones is
    /// decided by the token id, so the sample is uniform over requests.
    pub percent: BasisPoints,
    /// Largest request or response body kept; a larger one is left out of
    /// its example (the rest of the example is kept).
    pub max_body: u64,
    /// Bytes of stored examples this experiment may use; the oldest go first.
    pub max_total: u64,
    /// Headers whose values are replaced before anything is written, besides
    /// [`ALWAYS_REDACTED_HEADERS`] (lower-case, validated header names).
    pub redact_headers: Vec<String>,
    /// JSON object keys removed at any depth of a body (and of each SSE
    /// event's data) before anything is written.
    pub drop_fields: Vec<String>,
}

/// Default `capture.max_body`: a chat request with a long prompt, or a long
/// completion, fits.
pub const DEFAULT_CAPTURE_MAX_BODY: u64 = 64 << 10;
/// Default `capture.max_total`.
pub const DEFAULT_CAPTURE_MAX_TOTAL: u64 = 1 << 30;
/// Headers a capture never keeps the value of, whatever `redact_headers`
/// says: credentials and session cookies.
pub const ALWAYS_REDACTED_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "api-key",
    "x-abgate-token",
];

/// The drift watch: the arm in force tested against a reference period of
/// its own, for as long as no test runs on the experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct Watch {
    pub metrics: Vec<WatchMetric>,
    /// `Some(d)`: the reference is the first `d` of watching. `None`: the
    /// promoted arm's evidence window (everything it served before its
    /// promotion), or the first [`DEFAULT_WATCH_REFERENCE`] of watching
    /// when there is none.
    pub reference: Option<Duration>,
    /// The least average time to a false alarm (the detector's threshold is
    /// `arl / interval` looks).
    pub arl: Duration,
    /// One look (one batch of the detector).
    pub interval: Duration,
    /// A relative move smaller than this (0.1 = 10%) is not drift.
    pub tolerance: f64,
    /// Declared under `watch:` (watches whenever no test runs) rather than
    /// the default after a promotion (watches only a promoted arm).
    pub declared: bool,
}

/// One watched metric and the moves that count as drift (`None`: either).
#[derive(Debug, Clone, PartialEq)]
pub struct WatchMetric {
    pub metric: String,
    pub harm: Option<Direction>,
}

/// Default `watch.reference` when there is no evidence window: an hour
/// covers a day's traffic pattern poorly but a restart's warm-up well, and
/// the tolerance absorbs the rest.
pub const DEFAULT_WATCH_REFERENCE: Duration = Duration::from_secs(3600);
/// Default `watch.arl`: a false alarm a month at most, on average.
pub const DEFAULT_WATCH_ARL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Default `watch.interval`.
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// Default `watch.tolerance`.
pub const DEFAULT_WATCH_TOLERANCE: f64 = 0.1;

/// `on_drift:`: a retraining pipeline's webhook, and whether to go back to
/// the previous baseline.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OnDrift {
    pub webhook: Option<String>,
    pub revert: bool,
}

/// How the controller runs an experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlPolicy {
    pub kind: ExperimentKind,
    /// Canary: its steps in order. A shadow step can only be the first, and
    /// at least one live step follows it; live weights increase.
    pub steps: Vec<Step>,
    /// A step may advance only after this many candidate requests (in a
    /// shadow step: pairs of a mirrored request and its copy)...
    pub step_min_samples: u64,
    /// ...and this long at the step.
    pub step_min_duration: Duration,
    pub interval: Duration,
    pub alpha: f64,
    pub design_samples: f64,
    /// Burn-in per arm before any action.
    pub min_units_per_arm: u64,
    /// Burn-in in events (errors, successes) per comparison before it can act.
    pub min_events: u64,
    /// Events on the canary an exact count test needs before it may roll back.
    pub min_exact_events: u64,
    /// Look after every this many completed candidate outcomes, or after
    /// `interval`, whichever comes first (0: on the interval only).
    pub look_every: u64,
    /// The least time between two looks that evidence triggers (the interval
    /// still looks on its own). Bounds the controller's CPU on busy canaries.
    pub min_look_gap: Duration,
    pub guardrails: Vec<Guardrail>,
    pub primary: Option<Primary>,
    pub on_success: OnSuccess,
    pub on_failure: OnFailure,
    pub max_duration: Duration,
    pub notify_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExperimentKind {
    Canary,
    Ab,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Increase,
    Decrease,
}

/// A metric that must not get worse by more than a margin.
#[derive(Debug, Clone, PartialEq)]
pub struct Guardrail {
    pub metric: String,
    /// The harmful direction.
    pub harm: Direction,
    /// `true`: margin is a fraction of the baseline; `false`: metric units.
    pub relative: bool,
    pub margin: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Primary {
    pub metric: String,
    /// The improving direction.
    pub direction: Direction,
    /// Smallest relative effect worth promoting.
    pub min_effect: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnSuccess {
    Promote,
    Hold,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    Rollback,
    Pause,
}

impl Experiment {
    pub fn metric(&self, name: &str) -> Option<&MetricDef> {
        self.metrics.iter().find(|m| m.name == name)
    }

    /// The model an arm's backend is sent: its `model` rewrite, else the
    /// client model the experiment matches exactly; `None` when neither is
    /// known (no model rule, or only a prefix).
    pub fn arm_model<'a>(&'a self, arm: &'a Arm) -> Option<&'a str> {
        arm.model.as_deref().or(match &self.matcher.model {
            Some(ModelRule::Exact(m)) => Some(m.as_str()),
            _ => None,
        })
    }

    /// Each arm's model (see [`Experiment::arm_model`]), for the arms that
    /// have one; empty when the experiment is not model-aware.
    pub fn arm_models(&self) -> Vec<(String, String)> {
        self.arms
            .iter()
            .filter_map(|a| Some((a.name.clone(), self.arm_model(a)?.to_string())))
            .collect()
    }
}

/// Default `match.max_peek`: the most of a request body read before routing,
/// in bytes. A chat request with a long prompt fits; a body larger than this
/// is never held back, it simply does not match by model.
pub const DEFAULT_MAX_PEEK: usize = 64 * 1024;

#[derive(Debug, Clone, Default)]
pub struct Match {
    /// Lower-case host without port.
    pub host: Option<String>,
    /// Starts with `/`.
    pub path_prefix: Option<String>,
    pub headers: Vec<HeaderMatch>,
    /// The top-level `model` string of the JSON request body.
    pub model: Option<ModelRule>,
    /// Largest body (bytes) read for `model` or a `unit: { body: ... }` key; a
    /// larger body does not match by model and has no body unit key.
    pub max_peek: usize,
}

impl Match {
    /// Whether matching needs the request body (the cheap parts come first).
    pub fn needs_body(&self) -> bool {
        self.model.is_some()
    }
}

/// How the body's `model` is compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRule {
    Exact(String),
    Prefix(String),
}

impl ModelRule {
    pub fn matches(&self, model: &str) -> bool {
        match self {
            ModelRule::Exact(m) => model == m,
            ModelRule::Prefix(p) => model.starts_with(p.as_str()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct HeaderMatch {
    pub name: http::HeaderName,
    pub rule: HeaderRule,
}

#[derive(Debug, Clone)]
pub enum HeaderRule {
    Exact(String),
    Prefix(String),
    Regex(regex::Regex),
}

/// Where a request's unit (user) key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitSource {
    Header(http::HeaderName),
    Cookie(String),
    /// A top-level string field of the JSON request body (OpenAI's `user`).
    Body(String),
}

impl UnitSource {
    pub fn body_field(&self) -> Option<&str> {
        match self {
            UnitSource::Body(f) => Some(f),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arm {
    pub name: String,
    pub backend: String,
    pub weight: BasisPoints,
    /// Rewrites the body's top-level `model` to this for the arm's backend.
    pub model: Option<String>,
}

/// A shadow arm: a backend that gets a copy of `percent` of the experiment's
/// live (assigned) requests, sticky by unit key. Its answers are read to the
/// end and discarded; only its outcomes are recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowArm {
    /// Name, backend and `model` rewrite as for a live arm; `weight` is
    /// always 0 (a shadow has no buckets and serves nobody).
    pub arm: Arm,
    /// Share of the experiment's live requests copied, in basis points (0..=10,000).
    pub percent: BasisPoints,
    /// Largest request body (bytes) copied; larger ones are skipped and counted.
    pub max_body: u64,
    /// Copies in flight at once (waiting for their body, sent or being read);
    /// a copy beyond this is dropped and counted, never queued.
    pub max_in_flight: usize,
    /// Everything a copy may take, from the routing decision to the last byte
    /// of the shadow's answer.
    pub timeout: Duration,
}

/// How a shadow arm (or a canary's shadow step) is mirrored: everything in
/// `shadow: { ... }` but the arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mirror {
    pub percent: BasisPoints,
    pub max_body: u64,
    pub max_in_flight: usize,
    pub timeout: Duration,
}

impl ShadowArm {
    pub fn new(arm: Arm, m: Mirror) -> ShadowArm {
        ShadowArm {
            arm,
            percent: m.percent,
            max_body: m.max_body,
            max_in_flight: m.max_in_flight,
            timeout: m.timeout,
        }
    }
}

/// The name a canary's candidate has while it is mirrored in a shadow step:
/// its copies' outcomes and pairs are recorded under it, apart from what the
/// candidate later does for users under its own name.
pub fn step_shadow_name(candidate: &str) -> String {
    format!("{candidate}/shadow")
}

/// One step of a canary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The candidate serves nobody: it gets copies of a share of the
    /// requests, and each copy is compared with the request it copies.
    Shadow(Mirror),
    /// The candidate serves this share of the requests.
    Live(BasisPoints),
}

impl Step {
    /// The candidate's live weight at this step (a shadow step serves nobody).
    pub fn live_weight(self) -> BasisPoints {
        match self {
            Step::Shadow(_) => 0,
            Step::Live(w) => w,
        }
    }

    pub fn mirror(self) -> Option<Mirror> {
        match self {
            Step::Shadow(m) => Some(m),
            Step::Live(_) => None,
        }
    }
}

/// Default `shadow.max_body`: 1 MiB covers chat requests with long prompts;
/// with `max_in_flight` it bounds what copies can hold (256 MiB at most).
pub const DEFAULT_SHADOW_MAX_BODY: u64 = 1 << 20;
/// Default `shadow.max_in_flight`: enough for a few hundred requests a second
/// against a shadow answering in about a second, small enough that a stuck
/// shadow pins few sockets and little memory.
pub const DEFAULT_SHADOW_MAX_IN_FLIGHT: usize = 256;
/// Default `shadow.timeout`: a typical completion (streamed or not) finishes
/// well within 30 s; a hung shadow then frees its in-flight slots twice a
/// minute. Raise it for long generations.
pub const DEFAULT_SHADOW_TIMEOUT: Duration = Duration::from_secs(30);
/// Most shadow arms one experiment may have (each costs a copy of the traffic).
pub const MAX_SHADOWS: usize = 8;

/// Named timeouts. Defaults and their reasons are documented in README.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect to a backend (502 on expiry).
    pub upstream_connect: Duration,
    /// From sending a request until the backend's response headers (504 on expiry).
    pub upstream_response: Duration,
    /// A client must send its complete request head within this (slowloris guard).
    pub header_read: Duration,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// Longest gap between two pieces of a request body (408 on expiry).
    pub request_body_idle: Duration,
    /// Longest gap between two frames of a backend's response body; the stream is
    /// cut on expiry. An idle limit, not a total one: a slow but alive stream
    /// (SSE, token streaming) is never cut.
    pub stream_idle: Duration,
    /// Longest time a write to a client may stay blocked (a client that stops
    /// reading); the connection is closed on expiry.
    pub downstream_write_idle: Duration,
    /// A TLS client must finish its handshake within this.
    pub tls_handshake: Duration,
    /// A client connection with no request in flight for this long is closed
    /// gracefully (GOAWAY on HTTP/2). HTTP/1 connections are usually closed
    /// sooner by `header_read`, which hyper restarts as soon as they go idle.
    pub keepalive_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            // nginx proxy_connect_timeout is 60s, Envoy's cluster connect_timeout 5s;
            // a local model server that does not accept within 2s is down.
            upstream_connect: Duration::from_secs(2),
            // Same as nginx proxy_read_timeout: non-streaming LLM calls can legitimately
            // take tens of seconds before the first byte.
            upstream_response: Duration::from_secs(60),
            // nginx client_header_timeout is 60s; HAProxy recommends 5-10s for
            // `timeout http-request`. 10s stops slowloris without hurting real clients.
            header_read: Duration::from_secs(10),
            // Long enough for a typical streamed completion to finish.
            shutdown_grace: Duration::from_secs(30),
            // nginx client_body_timeout is 60s between two reads; a client uploading a
            // prompt or an image over a slow link still sends something every few
            // seconds, and a stalled one should not hold a backend connection longer.
            request_body_idle: Duration::from_secs(60),
            // Envoy's stream_idle_timeout default is 5 min. LLMs can think for a long
            // time before the next token, so this is generous; it only needs to free
            // streams whose backend died silently.
            stream_idle: Duration::from_secs(300),
            // nginx send_timeout is 60s between two writes; a client that reads
            // nothing for a minute is gone or hostile.
            downstream_write_idle: Duration::from_secs(60),
            // rustls has no handshake timeout of its own; 10s matches header_read,
            // ample for a handshake even across continents.
            tls_handshake: Duration::from_secs(10),
            // nginx keepalive_timeout is 75s; an idle HTTP/2 connection costs memory
            // on both sides, and clients reconnect transparently after a GOAWAY.
            keepalive_idle: Duration::from_secs(75),
        }
    }
}

/// Size and count limits. Every rejection is a JSON problem counted in
/// `abgate_rejected_requests_total{reason}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Open client connections; further clients wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Bytes of request line plus headers (431 above).
    pub max_header_bytes: usize,
    /// Number of request headers (431 above).
    pub max_header_count: usize,
    /// Bytes of the request target (414 above).
    pub max_uri_bytes: usize,
    /// Bytes of a request body (413: before reading when Content-Length says so,
    /// otherwise as soon as the streamed body passes it).
    pub max_request_body_bytes: u64,
    /// Concurrent streams per HTTP/2 client connection.
    pub h2_max_concurrent_streams: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // Envoy's edge guide sets a 10,000 per-listener connection_limit; each idle
            // connection costs abgate a few KiB, so this bounds memory well under 100 MiB.
            max_connections: 10_000,
            // Envoy's max_request_headers_kb default is 60 KiB, nginx allows 4x8 KiB;
            // 64 KiB fits JWTs and long cookies while bounding memory per connection.
            max_header_bytes: 64 * 1024,
            // hyper and Envoy default to 100 headers, HAProxy to 101 lines.
            max_header_count: 100,
            // nginx answers 414 above 8 KiB (large_client_header_buffers); inference
            // APIs put payloads in bodies, not query strings.
            max_uri_bytes: 8 * 1024,
            // nginx client_max_body_size is 1 MiB, which is too small for base64 images
            // and long-context prompts; 16 MiB bounds what a client can push through.
            max_request_body_bytes: 16 * 1024 * 1024,
            // HAProxy's default and Envoy's edge recommendation (nginx: 128); hyper's
            // own default of 200 lets one connection take a large share of a backend.
            h2_max_concurrent_streams: 100,
        }
    }
}

impl Config {
    pub fn backend(&self, name: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| b.name == name)
    }

    pub fn experiment(&self, name: &str) -> Option<&Experiment> {
        self.experiments.iter().find(|e| e.name == name)
    }
}

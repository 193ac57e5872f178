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

#[derive(Debug, Clone)]
pub struct Config {
    /// Data-plane listener address.
    pub listen: SocketAddr,
    pub admin: AdminConfig,
    /// Where durable state lives (created on demand).
    pub state_dir: PathBuf,
    /// Backends in declared order; names are unique.
    pub backends: Vec<Backend>,
    /// Backend for requests no experiment matches; `None` answers 404.
    pub default_backend: Option<String>,
    /// Experiments in declared order: the first match wins.
    pub experiments: Vec<Experiment>,
    pub timeouts: Timeouts,
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
    pub arms: Vec<Arm>,
}

#[derive(Debug, Clone, Default)]
pub struct Match {
    /// Lower-case host without port.
    pub host: Option<String>,
    /// Starts with `/`.
    pub path_prefix: Option<String>,
    pub headers: Vec<HeaderMatch>,
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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arm {
    pub name: String,
    pub backend: String,
    pub weight: BasisPoints,
}

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

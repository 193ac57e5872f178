//! What every connection of one mock server shares: its spec, its decider and
//! its counters. Below both the server (which builds it) and the handlers
//! (which read it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::decision::Decider;
use super::spec::MockSpec;

/// Counters of one mock server, updated as requests arrive.
#[derive(Debug, Default)]
pub struct MockStats {
    /// Every HTTP request received (any path, including health checks and 404s).
    pub requests: AtomicU64,
    /// Requests answered with an injected 500.
    pub errors: AtomicU64,
    /// Requests whose connection was deliberately reset.
    pub resets: AtomicU64,
    /// Requests held without an answer (`hang_rate`).
    pub hung: AtomicU64,
}

impl MockStats {
    /// Snapshot of `requests`.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

/// State shared by all connections of one server.
pub(crate) struct Shared {
    pub(crate) spec: MockSpec,
    pub(crate) decider: Decider,
    pub(crate) stats: Arc<MockStats>,
}

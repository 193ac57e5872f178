//! Caller-defined requests on the driver's schedule.
//!
//! The built-in [`RequestKind`](super::RequestKind)s send the same body again and
//! again. A [`Workload`] decides each request itself (e.g. a feedback POST of
//! events no other request carries) and sees each complete answer, while the
//! driver keeps what makes a run honest: the arrival process, the bounds, the
//! timeouts, latency from the scheduled send time and error counting. A workload
//! names paths, never hosts, so its requests can only go to the spec's loopback
//! target.

use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::HeaderMap;

/// What a run sends and what it makes of each answer. Called from the request
/// tasks, concurrently, so implementations synchronize their own state.
pub trait Workload: Send + Sync + 'static {
    /// Request number `index` (0-based, in release order), or `None` when there is
    /// nothing left to send: the driver then stops scheduling (requests already in
    /// flight finish) and the `None` counts neither as scheduled nor as an error.
    fn request(&self, index: u64) -> Option<WorkRequest>;

    /// Every complete response, any status, in completion order. Failures without
    /// a response (connect, timeout, reset, overloaded) are counted in the report's
    /// `errors` instead.
    fn response(&self, index: u64, reply: &Reply<'_>) {
        let _ = (index, reply);
    }
}

/// One request of a [`Workload`]: `POST` of a JSON `body` to `path` on the target.
#[derive(Debug, Clone)]
pub struct WorkRequest {
    /// Path and query on the spec's target.
    pub path: PathAndQuery,
    /// JSON request body.
    pub body: Bytes,
    /// `Some(k)`: the spec's unit header carries `user-<k>`; `None`: no unit header.
    pub user: Option<u64>,
    /// Keep the response body for [`Workload::response`]; otherwise it is read and
    /// dropped, as for the built-in kinds.
    pub read_body: bool,
}

/// A complete response as a [`Workload`] sees it.
#[derive(Debug)]
pub struct Reply<'a> {
    /// HTTP status code.
    pub status: u16,
    /// Response headers.
    pub headers: &'a HeaderMap,
    /// The body, if the request asked for it ([`WorkRequest::read_body`]); else empty.
    pub body: &'a [u8],
    /// Until the last body byte, from the scheduled send time (open loop) or the
    /// actual send time (closed loop), like the report's `latency_ms`.
    pub latency: Duration,
}

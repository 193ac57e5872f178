//! What the data plane shares: across all connections ([`DataPlane`]) and
//! within one ([`ConnInfo`]), and how an error becomes a response. Below both
//! the handler (admit, route) and forwarding, which read it.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::header::HeaderValue;
use http::Response;

use super::body::ProxyBody;
use super::limits::RequestLimits;
use super::problem::ProxyError;
use super::wiring::Published;
use crate::outcomes::capture::CaptureSink;
use crate::outcomes::feedback::FeedbackService;
use crate::outcomes::token::TokenKeys;
use crate::telemetry::Telemetry;

/// What every connection of the data plane shares.
pub struct DataPlane {
    /// The table in force; the control plane's publisher is its only writer.
    pub table: ArcSwap<Published>,
    pub telemetry: Arc<Telemetry>,
    /// Signs the outcome token on every routed response.
    pub tokens: Arc<TokenKeys>,
    pub feedback: Arc<FeedbackService>,
    /// Where sampled examples go (see `proxy::capture`).
    pub capture: Arc<CaptureSink>,
    /// Size limits and body timeouts, fixed for the listener's lifetime.
    pub limits: RequestLimits,
}

/// Facts about one client connection.
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// `peer`'s address as an `x-forwarded-for` element ([`super::headers::peer_value`]).
    pub peer_header: HeaderValue,
    /// `http` or `https`, for `x-forwarded-proto`.
    pub proto: &'static str,
}

/// The problem response for an error abgate answers itself.
pub fn error_response(e: &ProxyError) -> Response<ProxyBody> {
    e.to_response().map(ProxyBody::full)
}

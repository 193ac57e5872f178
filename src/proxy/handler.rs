//! The request path: validate, route, assign, forward, tag, record.
//!
//! Hot path rules: one `ArcSwap` load per request, no locks, no per-request
//! logging above debug, allocation only where hyper or header values need it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, Version};
use hyper::body::Incoming;

use super::body::ProxyBody;
use super::forward::{forward, Tags};
use super::limits::check_head;
use super::plane::{error_response, ConnInfo, DataPlane};
use super::problem::ProxyError;
use super::wiring::Published;
use crate::routing::{matcher, RequestView, Route};

static X_TOKEN: HeaderName = HeaderName::from_static("x-abgate-token");

/// hyper service entry point: never fails, every error becomes a response.
pub async fn handle(
    plane: Arc<DataPlane>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    if let Err(e) = check_head(&req, &plane.limits) {
        plane.telemetry.rejected(e.slug());
        let mut resp = error_response(&e);
        // Whatever follows a head with doubtful framing (or an unread body) on
        // this HTTP/1 connection cannot be trusted to be the next request.
        if req.version() <= Version::HTTP_11 {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        return Ok(resp);
    }
    let table = plane.table.load_full();
    if req.uri().path() == table.feedback_path {
        // The feedback handler reads its (small) body itself, outside the
        // guarded upstream body, so a stalled upload is bounded here: the whole
        // exchange gets `request_body_idle`. A timed-out event that was already
        // durable is deduplicated when the client retries.
        let limit = plane.limits.body_idle;
        let handled =
            super::feedback::serve(&plane.feedback, req, &table.routes, table.feedback_max_body);
        return Ok(match tokio::time::timeout(limit, handled).await {
            Ok(resp) => resp,
            Err(_) => {
                let e = ProxyError::BodyTimeout {
                    timeout_ms: limit.as_millis(),
                };
                plane.telemetry.rejected(e.slug());
                let mut resp = error_response(&e);
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                resp
            }
        });
    }
    Ok(
        match route_and_forward(&plane, &table, &conn, req, started).await {
            Ok(resp) => resp,
            Err(e) => {
                // Rejections before routing; upstream failures are recorded per arm.
                plane.telemetry.rejected(e.slug());
                error_response(&e)
            }
        },
    )
}

/// Validates Host: HTTP/1.1 needs exactly one; HTTP/2 may carry `:authority` instead.
fn request_host(req: &Request<Incoming>) -> Result<Option<&HeaderValue>, ProxyError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::DuplicateHost);
    }
    if first.is_none() && req.version() == Version::HTTP_11 {
        return Err(ProxyError::MissingHost);
    }
    Ok(first)
}

async fn route_and_forward(
    plane: &DataPlane,
    table: &Published,
    conn: &ConnInfo,
    req: Request<Incoming>,
    started: Instant,
) -> Result<Response<ProxyBody>, ProxyError> {
    let host_header = request_host(&req)?.cloned();
    let host_str = host_header
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .map(matcher::host_without_port);
    let view = RequestView {
        host: host_str,
        path: req.uri().path(),
        headers: req.headers(),
    };
    let (wiring, forced, tags, routed) = match table.routes.route(&view) {
        Route::NotFound => {
            return Err(ProxyError::NoRoute {
                path: req.uri().path().to_string(),
            })
        }
        Route::Default(d) => (
            d,
            false,
            Tags {
                experiment: None,
                arm: None,
                wiring: None,
            },
            None,
        ),
        Route::Experiment(e) => {
            let a = e
                .assign(req.headers(), || {
                    rand::random_range(0..crate::config::BUCKETS)
                })
                .map_err(|err| ProxyError::UnknownOverrideArm(err.to_string()))?;
            let arm = &e.arms[a.arm];
            (
                &arm.carry,
                a.forced,
                Tags {
                    experiment: Some(e.name_header.clone()),
                    arm: Some(arm.name_header.clone()),
                    wiring: Some(&arm.carry),
                },
                Some((e, arm)),
            )
        }
    };
    let mut resp = forward(
        plane,
        conn,
        req,
        host_header,
        &wiring.target,
        &wiring.recorder,
        forced,
        &tags,
        started,
    )
    .await;
    if let Some((e, arm)) = routed {
        let token = plane.tokens.mint(
            &e.name,
            &arm.name,
            table.version,
            crate::clock::now_ms(),
            forced,
        );
        // The token's own buffer becomes the header value (no copy).
        if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(token)) {
            resp.headers_mut().insert(X_TOKEN.clone(), v);
        }
    }
    Ok(resp)
}

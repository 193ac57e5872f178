//! The request path: validate, route (peeking at the body when a rule reads
//! its `model`), assign, rewrite, start shadow copies and captures, forward,
//! tag, record.
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
use super::capture::Pending;
use super::forward::{forward, Tags};
use super::guarded_body::{BodyTrip, RequestBody, TripWire};
use super::limits::check_head;
use super::peek::Peek;
use super::plane::{error_response, ConnInfo, DataPlane};
use super::problem::ProxyError;
use super::shadow::{self, CopyHead};
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
        // Boxed, as is every rare path below: a request's whole future is
        // moved into hyper's connection (a memcpy of its size, every
        // request), so what most requests never reach must not size it.
        let handled = Box::pin(super::feedback::serve(
            &plane.feedback,
            req,
            &table.routes,
            table.feedback_max_body,
            crate::outcomes::feedback::Poster {
                actor: "client",
                max_correction: table.feedback_max_correction,
            },
        ));
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
    let (mut parts, incoming) = req.into_parts();
    let wire = TripWire::new(http_body::Body::is_end_stream(&incoming));
    let limits = &plane.limits;
    let mut body = RequestBody::new(
        incoming,
        limits.max_body_bytes,
        limits.body_idle,
        wire.clone(),
    );
    let host_str = host_header
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .map(matcher::host_without_port);
    let path = parts.uri.path();
    let head = RequestView {
        host: host_str,
        path,
        headers: &parts.headers,
        body: None,
    };
    // The body is read only when a rule whose head matches needs it (its
    // `model`, a body unit key, an arm's model rewrite): other requests pay
    // nothing here.
    let mut peek: Option<Peek> = None;
    // Shadow copies of this request: a bit per shadow arm of its experiment
    // (config allows at most `MAX_SHADOWS`), and the head they copy.
    let mut mirror: u32 = 0;
    let mut copy_head: Option<CopyHead> = None;
    let mut route = table.routes.route(&head);
    if let Route::NeedsBody { max_peek } = route {
        let unit = table
            .routes
            .experiments
            .iter()
            .find_map(|e| e.unit_body_field());
        let p = read_peek(plane, &mut body, &wire, &parts.headers, max_peek, unit).await?;
        let fields = p.fields();
        route = table.routes.route(&RequestView {
            body: Some(&fields),
            ..head
        });
        peek = Some(p);
    }
    let (wiring, forced, tags, routed) = match route {
        Route::NotFound | Route::NeedsBody { .. } => {
            return Err(ProxyError::NoRoute {
                path: parts.uri.path().to_string(),
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
            if let Some(field) = e.unit_body_field() {
                match &mut peek {
                    // The first peek scanned for the first body unit field
                    // in the table; this experiment may name another.
                    Some(p) => p.rescan(Some(field)),
                    None => {
                        peek = Some(
                            read_peek(
                                plane,
                                &mut body,
                                &wire,
                                &parts.headers,
                                e.max_peek(),
                                Some(field),
                            )
                            .await?,
                        )
                    }
                }
            }
            let fields = peek.as_ref().map(Peek::fields);
            let a = e
                .assign_with(&parts.headers, fields.as_ref(), || {
                    rand::random_range(0..crate::config::BUCKETS)
                })
                .map_err(|err| ProxyError::UnknownOverrideArm(err.to_string()))?;
            // Which shadows get a copy, decided from the same unit key as
            // the arm (under each shadow's own seed). Forced requests are
            // not mirrored: their twins are kept out of every statistic.
            if !a.forced && !e.shadows.is_empty() {
                let key = e.unit_key_with(&parts.headers, fields.as_ref());
                for (i, s) in e.shadows.iter().enumerate() {
                    if s.mirrors(key, || rand::random_range(0..crate::config::BUCKETS)) {
                        mirror |= 1 << i;
                    }
                }
            }
            drop(fields);
            if mirror != 0 {
                // Before the arm's rewrite: a copy gets what the client sent.
                let no_body = http_body::Body::is_end_stream(&body);
                copy_head = Some(CopyHead::capture(
                    &parts,
                    host_header.as_ref(),
                    conn,
                    peek.as_ref(),
                    no_body,
                ));
            }
            let arm = &e.arms[a.arm];
            if let Some(model) = &arm.carry.model {
                if peek.is_none() {
                    peek = Some(
                        read_peek(plane, &mut body, &wire, &parts.headers, e.max_peek(), None)
                            .await?,
                    );
                }
                if let Some(delta) = peek.as_mut().and_then(|p| p.rewrite_model(model)) {
                    fix_content_length(&mut parts.headers, delta);
                }
            }
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
    if let Some(p) = peek {
        p.restore(&mut body);
    }
    // After the restore, so a copy that tees the body sees every frame sent
    // once, peeked ones included.
    // Empty (no allocation) unless the request is mirrored.
    let mut pairs = Vec::new();
    if let (Some(head), Some((e, _))) = (&copy_head, routed) {
        for (i, s) in e.shadows.iter().enumerate() {
            if let (true, Some(w)) = (mirror & (1 << i) != 0, &s.carry.shadow) {
                pairs.extend(shadow::start(w, head, &mut body));
            }
        }
    }
    drop(copy_head);
    // A capturing experiment's token id is drawn here, since it decides
    // whether this request is an example; others draw theirs at minting.
    let (id, capture) = match routed.and_then(|(_, arm)| arm.carry.capture.as_ref()) {
        Some(c) => {
            let id: [u8; 16] = rand::random();
            let pending = Pending::begin(c, id, &parts, &mut body, table.version, forced);
            (Some(id), pending)
        }
        None => (None, None),
    };
    // Boxed: forwarding's state (~3 KiB) would otherwise be copied at every
    // level above it each time a request's future is built and moved.
    let mut resp = Box::pin(forward(
        plane,
        conn,
        Request::from_parts(parts, body),
        wire,
        host_header,
        &wiring.target,
        &wiring.recorder,
        forced,
        &tags,
        started,
        pairs,
    ))
    .await;
    if let Some((e, arm)) = routed {
        let now = crate::clock::now_ms();
        if let Some(c) = capture {
            c.respond(&mut resp, now, plane.capture.clone());
        }
        let token = match id {
            Some(id) => {
                plane
                    .tokens
                    .mint_with_id(&e.name, &arm.name, table.version, now, forced, id)
            }
            None => plane
                .tokens
                .mint(&e.name, &arm.name, table.version, now, forced),
        };
        // The token's own buffer becomes the header value (no copy).
        if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(token)) {
            resp.headers_mut().insert(X_TOKEN.clone(), v);
        }
    }
    Ok(resp)
}

/// Peeks at the body (see `peek`); a body that broke a limit meanwhile is the
/// client's fault (413/408), as it would be while streaming.
async fn read_peek(
    plane: &DataPlane,
    body: &mut RequestBody,
    wire: &TripWire,
    headers: &http::HeaderMap,
    max_peek: usize,
    unit_field: Option<&str>,
) -> Result<Peek, ProxyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    Box::pin(Peek::read(body, max_peek, declared, unit_field))
        .await
        .map_err(|_| match wire.get() {
            Some(BodyTrip::TooLarge) => ProxyError::BodyTooLarge {
                limit: plane.limits.max_body_bytes,
            },
            Some(BodyTrip::Idle) => ProxyError::BodyTimeout {
                timeout_ms: plane.limits.body_idle.as_millis(),
            },
            None => ProxyError::BodyBroken,
        })
}

/// A rewritten body is `delta` bytes longer; a chunked one has no length to fix.
fn fix_content_length(headers: &mut http::HeaderMap, delta: i64) {
    if delta == 0 {
        return;
    }
    let Some(n) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
    else {
        return;
    };
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n + delta));
}

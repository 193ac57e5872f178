//! The request path: validate, route, assign, forward, tag, record.
//!
//! Hot path rules: one `ArcSwap` load per request, no locks, no per-request
//! logging above debug, allocation only where hyper or header values need it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, Version};
use hyper::body::Incoming;

use super::body::{ProxyBody, RecordingBody};
use super::guarded_body::{BodyTrip, IdleBody, RequestBody, TripWire};
use super::headers::{add_forwarded, strip_hop_by_hop};
use super::limits::{check_head, RequestLimits};
use super::problem::ProxyError;
use crate::config::UpstreamProtocol;
use crate::outcomes::feedback::FeedbackService;
use crate::outcomes::token::TokenKeys;
use crate::outcomes::{ArmRecorder, FailureKind};
use crate::routing::table::Target;
use crate::routing::{matcher, RequestView, Route, RoutingTable};
use crate::telemetry::Telemetry;

static X_EXPERIMENT: HeaderName = HeaderName::from_static("x-abgate-experiment");
static X_ARM: HeaderName = HeaderName::from_static("x-abgate-arm");
static SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");
static X_TOKEN: HeaderName = HeaderName::from_static("x-abgate-token");

/// What every connection of the data plane shares.
pub struct DataPlane {
    pub table: ArcSwap<RoutingTable>,
    pub telemetry: Arc<Telemetry>,
    /// Signs the outcome token on every routed response.
    pub tokens: Arc<TokenKeys>,
    pub feedback: Arc<FeedbackService>,
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

/// Per-request tags copied from the routing decision.
struct Tags<'t> {
    experiment: Option<HeaderValue>,
    arm: Option<HeaderValue>,
    /// The arm's route, for the token and response-header metrics.
    routed: Option<(
        &'t crate::routing::table::ExperimentRoute,
        &'t crate::routing::table::ArmRoute,
    )>,
}

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
        let handled = plane.feedback.handle(req, &table, table.feedback_max_body);
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

fn error_response(e: &ProxyError) -> Response<ProxyBody> {
    e.to_response().map(ProxyBody::full)
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
    table: &RoutingTable,
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
    let (target, recorder, forced, tags) = match table.route(&view) {
        Route::NotFound => {
            return Err(ProxyError::NoRoute {
                path: req.uri().path().to_string(),
            })
        }
        Route::Default(d) => (
            &d.target,
            &d.recorder,
            false,
            Tags {
                experiment: None,
                arm: None,
                routed: None,
            },
        ),
        Route::Experiment(e) => {
            let a = e
                .assign(req.headers(), || {
                    rand::random_range(0..crate::config::BUCKETS)
                })
                .map_err(|err| ProxyError::UnknownOverrideArm(err.to_string()))?;
            let arm = &e.arms[a.arm];
            (
                &arm.target,
                &arm.recorder,
                a.forced,
                Tags {
                    experiment: Some(e.name_header.clone()),
                    arm: Some(arm.name_header.clone()),
                    routed: Some((e, arm)),
                },
            )
        }
    };
    let mut resp = forward(
        plane,
        conn,
        req,
        host_header,
        target,
        recorder,
        forced,
        &tags,
        started,
    )
    .await;
    if let Some((e, arm)) = tags.routed {
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

/// Records a client that left before the response head, unless disarmed.
struct AbandonGuard<'a> {
    recorder: &'a ArmRecorder,
    forced: bool,
    armed: bool,
}

impl Drop for AbandonGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.recorder.record_abandoned(self.forced);
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    plane: &DataPlane,
    conn: &ConnInfo,
    req: Request<Incoming>,
    host: Option<HeaderValue>,
    target: &Target,
    recorder: &Arc<ArmRecorder>,
    forced: bool,
    tags: &Tags<'_>,
    started: Instant,
) -> Response<ProxyBody> {
    let (mut parts, body) = req.into_parts();
    // gRPC over h2 needs `te: trailers` end to end; it is the only TE value
    // HTTP/2 allows, and only an h2 upstream may see it.
    let wants_trailers = target.upstream.protocol == UpstreamProtocol::Http2
        && parts.headers.get_all(header::TE).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
        });
    strip_hop_by_hop(&mut parts.headers);
    if wants_trailers {
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    add_forwarded(
        &mut parts.headers,
        &conn.peer_header,
        conn.proto,
        host.as_ref(),
    );
    parts
        .headers
        .insert(header::HOST, target.upstream.host_header.clone());
    parts.uri = target.upstream.uri_for(parts.uri.path_and_query());
    parts.version = match target.upstream.protocol {
        UpstreamProtocol::Http1 => Version::HTTP_11,
        UpstreamProtocol::Http2 => Version::HTTP_2,
    };
    let limits = &plane.limits;
    let wire = TripWire::new(http_body::Body::is_end_stream(&body));
    let body = RequestBody::new(body, limits.max_body_bytes, limits.body_idle, wire.clone());
    let upstream_req = Request::from_parts(parts, body);

    let mut guard = AbandonGuard {
        recorder,
        forced,
        armed: true,
    };
    let sent = Instant::now();
    let result = await_response(
        target.upstream.request(upstream_req),
        target.response_timeout,
        &wire,
    )
    .await;
    let upstream_time = sent.elapsed();
    guard.armed = false;

    let outcome = match result {
        Err(_) => Err(FailureKind::ResponseTimeout),
        Ok(Err(e)) => {
            // The client's own body broke the request: answer for the client's
            // fault (413/408), not the backend's, and keep the arm's error count clean.
            if let Some(trip) = wire.get() {
                let err = match trip {
                    BodyTrip::TooLarge => ProxyError::BodyTooLarge {
                        limit: limits.max_body_bytes,
                    },
                    BodyTrip::Idle => ProxyError::BodyTimeout {
                        timeout_ms: limits.body_idle.as_millis(),
                    },
                };
                plane.telemetry.rejected(err.slug());
                recorder.record_response(forced, err.status());
                recorder.record_ttfb(forced, started.elapsed());
                recorder.record_latency(forced, started.elapsed());
                let mut response = error_response(&err);
                tag(&mut response, tags, started.elapsed(), upstream_time);
                return response;
            }
            Err(classify(&e))
        }
        Ok(Ok(resp)) => Ok(resp),
    };
    let mut response = match outcome {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            recorder.record_response(forced, parts.status);
            if let (Some((_, arm)), false) = (tags.routed, forced) {
                record_header_metrics(arm, &parts.headers);
            }
            let head_was_error = parts.status.is_server_error();
            let body = IdleBody::new(body, limits.stream_idle);
            let body = RecordingBody::new(body, recorder.clone(), forced, started, head_was_error);
            Response::from_parts(parts, ProxyBody::Upstream(body))
        }
        Err(kind) => {
            let err = ProxyError::from_failure(
                kind,
                &target.backend,
                target.response_timeout.as_millis(),
            );
            recorder.record_response(forced, err.status());
            recorder.record_failure(forced, kind, true);
            recorder.record_ttfb(forced, started.elapsed());
            recorder.record_latency(forced, started.elapsed());
            error_response(&err)
        }
    };
    tag(&mut response, tags, started.elapsed(), upstream_time);
    response
}

/// Waits for the response head. The `upstream_response` clock starts when the
/// request body has been sent completely (nginx's `proxy_read_timeout` works the
/// same way), so a slow but steady upload is never mistaken for a slow backend;
/// a stalled upload is cut by the body idle timeout instead.
async fn await_response<F, T>(fut: F, limit: Duration, wire: &TripWire) -> Result<T, ()>
where
    F: std::future::Future<Output = T>,
{
    tokio::pin!(fut);
    let sleep = tokio::time::sleep(limit);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            r = &mut fut => return Ok(r),
            _ = &mut sleep => match wire.sent_at() {
                Some(at) => {
                    let deadline = at + limit;
                    if deadline <= tokio::time::Instant::now() {
                        return Err(());
                    }
                    sleep.as_mut().reset(deadline);
                }
                // Still uploading: check again one limit later.
                None => sleep.as_mut().reset(tokio::time::Instant::now() + limit),
            },
        }
    }
}

/// Reads declared response-header metrics (e.g. token counts) into the arm's sums.
fn record_header_metrics(arm: &crate::routing::table::ArmRoute, headers: &http::HeaderMap) {
    for m in arm.header_metrics.iter() {
        let Some(v) = headers
            .get(&m.header)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite())
        else {
            continue;
        };
        if m.kind == crate::config::MetricKind::Binary && v != 0.0 && v != 1.0 {
            continue;
        }
        m.cell.record(v);
    }
}

fn tag(resp: &mut Response<ProxyBody>, tags: &Tags<'_>, total: Duration, upstream: Duration) {
    let h = resp.headers_mut();
    if let Some(e) = &tags.experiment {
        h.insert(X_EXPERIMENT.clone(), e.clone());
    }
    if let Some(a) = &tags.arm {
        h.insert(X_ARM.clone(), a.clone());
    }
    if let Some(v) = server_timing(total.saturating_sub(upstream), upstream) {
        h.append(SERVER_TIMING.clone(), v);
    }
}

/// `abgate;dur=0.123, upstream;dur=4.567` (milliseconds to the microsecond),
/// written with integer formatting into a stack buffer: one allocation, for
/// the header value itself.
fn server_timing(own: Duration, upstream: Duration) -> Option<HeaderValue> {
    use std::io::Write;
    let mut buf = [0u8; 96];
    let mut w = &mut buf[..];
    let (o, u) = (own.as_micros(), upstream.as_micros());
    write!(
        w,
        "abgate;dur={}.{:03}, upstream;dur={}.{:03}",
        o / 1000,
        o % 1000,
        u / 1000,
        u % 1000
    )
    .ok()?;
    let len = 96 - w.len();
    HeaderValue::from_bytes(&buf[..len]).ok()
}

/// Maps a client error to the failure kind recorded and reported.
fn classify(err: &hyper_util::client::legacy::Error) -> FailureKind {
    use std::error::Error as _;
    let mut source = err.source();
    let mut io_kind = None;
    let mut hyper_err = None;
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            io_kind.get_or_insert(io.kind());
        }
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            hyper_err.get_or_insert(h);
        }
        source = s.source();
    }
    if err.is_connect() {
        return if io_kind == Some(std::io::ErrorKind::TimedOut) {
            FailureKind::ConnectTimeout
        } else {
            FailureKind::ConnectRefused
        };
    }
    match hyper_err {
        Some(h) if h.is_parse() || h.is_parse_status() || h.is_parse_too_large() => {
            FailureKind::BadResponse
        }
        _ => FailureKind::Reset,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_timing_is_milliseconds_to_the_microsecond() {
        let v =
            server_timing(Duration::from_micros(123), Duration::from_micros(4_567_891)).unwrap();
        assert_eq!(v, "abgate;dur=0.123, upstream;dur=4567.891");
        let v = server_timing(Duration::ZERO, Duration::from_nanos(999)).unwrap();
        assert_eq!(v, "abgate;dur=0.000, upstream;dur=0.000");
        // The largest durations still fit the buffer.
        assert!(server_timing(Duration::MAX, Duration::MAX).is_some());
    }
}

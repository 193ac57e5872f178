//! Forwarding: one routed request to its upstream and the answer back.
//!
//! Owns: header hygiene on the way up and down, the response-head timeout (from
//! the end of the upload), wrapping the response body so its end is recorded,
//! tagging the response (`x-abgate-experiment`, `x-abgate-arm`, `server-timing`),
//! choosing how the response scanner reads the body, `inject_usage` (the
//! request rewrite and hiding the extra usage chunk), and recording failures
//! per arm.
//!
//! Hot path: no locks, no logging, one allocation for `server-timing` (a
//! request `inject_usage` rewrites is read whole, bounded: its own path).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, Version};
use http_body_util::BodyExt;

use super::body::{grpc_failure, ProxyBody, RecordingBody};
use super::classify::classify;
use super::guarded_body::{BodyTrip, IdleBody, RequestBody, TripWire};
use super::headers::{add_forwarded, strip_hop_by_hop};
use super::plane::{error_response, ConnInfo, DataPlane};
use super::problem::ProxyError;
use super::usage;
use super::wiring::{ArmWiring, Target};
use crate::config::UpstreamProtocol;
use crate::outcomes::pairs::{PairOutcome, PairSlot, Side};
use crate::outcomes::scan::{self, BodyKind, Scanner};
use crate::outcomes::{ArmRecorder, FailureKind};

static X_EXPERIMENT: HeaderName = HeaderName::from_static("x-abgate-experiment");
static X_ARM: HeaderName = HeaderName::from_static("x-abgate-arm");
static SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");

/// Per-request tags copied from the routing decision.
pub(super) struct Tags<'t> {
    pub experiment: Option<HeaderValue>,
    pub arm: Option<HeaderValue>,
    /// The arm's wiring, for response-header metrics (`None` on the default route).
    pub wiring: Option<&'t ArmWiring>,
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
pub(super) async fn forward(
    plane: &DataPlane,
    conn: &ConnInfo,
    req: Request<RequestBody>,
    wire: TripWire,
    host: Option<HeaderValue>,
    target: &Target,
    recorder: &Arc<ArmRecorder>,
    forced: bool,
    tags: &Tags<'_>,
    started: Instant,
    pairs: Vec<Arc<PairSlot>>,
) -> Response<ProxyBody> {
    // Only answers to generation endpoints count as unparsed when they are
    // neither JSON nor SSE; other traffic through abgate is not inference.
    let expect_inference = scan::is_inference_path(req.uri().path());
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
    // Only abgate's own copies carry it: a client cannot make a live arm
    // treat its request as one (and skip its side effects).
    parts.headers.remove(&super::shadow::X_SHADOW);
    if wants_trailers {
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    // The backend's own credentials replace the client's (this backend only).
    for (name, value) in target.headers.iter() {
        parts.headers.insert(name.clone(), value.clone());
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
    let mut guard = AbandonGuard {
        recorder,
        forced,
        armed: true,
    };
    let mut injected = false;
    let body = if tags.wiring.is_some_and(|w| w.inject_usage) && usage::may_inject(&parts) {
        // Read whole (its length is known and bounded) to add the option;
        // a peeked (and maybe model-rewritten) body comes out of `body` as
        // it will be sent, so both rewrites compose.
        // Boxed: a rare path that would otherwise size every request's future.
        match Box::pin(body.collect()).await {
            Ok(collected) => {
                let mut bytes = collected.to_bytes();
                if let Some(rewritten) = usage::inject(&bytes) {
                    injected = true;
                    parts
                        .headers
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(rewritten.len()));
                    bytes = rewritten;
                }
                RequestBody::buffered(bytes, wire.clone())
            }
            Err(_) => {
                guard.armed = false;
                let err = match wire.get() {
                    Some(trip) => client_body_error(trip, plane),
                    None => ProxyError::BodyBroken,
                };
                return client_fault(plane, &err, recorder, forced, tags, started, Duration::ZERO);
            }
        }
    } else {
        body
    };
    let upstream_req = Request::from_parts(parts, body);

    let sent = Instant::now();
    let result = await_response(
        target.upstream.request(upstream_req),
        sent,
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
                let err = client_body_error(trip, plane);
                return client_fault(plane, &err, recorder, forced, tags, started, upstream_time);
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
            if let (Some(arm), false) = (tags.wiring, forced) {
                record_header_metrics(arm, &parts.headers);
            }
            let mut head_was_error = parts.status.is_server_error();
            // A trailers-only gRPC response carries its status in the head.
            if let Some(code) = grpc_failure(&parts.headers) {
                recorder.record_grpc_error(forced, code, head_was_error);
                head_was_error = true;
            }
            let scanner = scanner_for(&parts, expect_inference);
            let strip = injected && scanner.is_sse();
            if strip {
                // The client gets fewer bytes than the backend sent.
                parts.headers.remove(header::CONTENT_LENGTH);
            }
            let body = IdleBody::new(body, limits.stream_idle);
            let mut body =
                RecordingBody::new(body, recorder.clone(), forced, started, head_was_error)
                    .scanning(scanner, target.price)
                    .pairing(Side::Primary, pairs);
            if strip {
                body = body.stripping_usage();
            }
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
            for slot in pairs {
                slot.report(Side::Primary, PairOutcome::failed(started.elapsed()));
            }
            error_response(&err)
        }
    };
    tag(&mut response, tags, started.elapsed(), upstream_time);
    response
}

/// The answer for a request body that broke the limits.
fn client_body_error(trip: BodyTrip, plane: &DataPlane) -> ProxyError {
    match trip {
        BodyTrip::TooLarge => ProxyError::BodyTooLarge {
            limit: plane.limits.max_body_bytes,
        },
        BodyTrip::Idle => ProxyError::BodyTimeout {
            timeout_ms: plane.limits.body_idle.as_millis(),
        },
    }
}

/// Answers for the client's own fault (413/408/400), keeping the arm's error
/// count clean: the response is counted, the request is not an arm error.
#[allow(clippy::too_many_arguments)]
fn client_fault(
    plane: &DataPlane,
    err: &ProxyError,
    recorder: &ArmRecorder,
    forced: bool,
    tags: &Tags<'_>,
    started: Instant,
    upstream_time: Duration,
) -> Response<ProxyBody> {
    plane.telemetry.rejected(err.slug());
    recorder.record_response(forced, err.status());
    recorder.record_ttfb(forced, started.elapsed());
    recorder.record_latency(forced, started.elapsed());
    let mut response = error_response(err);
    tag(&mut response, tags, started.elapsed(), upstream_time);
    response
}

/// Waits for the response head. The `upstream_response` clock starts when the
/// request body has been sent completely (nginx's `proxy_read_timeout` works the
/// same way), so a slow but steady upload is never mistaken for a slow backend;
/// a stalled upload is cut by the body idle timeout instead.
///
/// A future of its own rather than an `async fn`: an async fn keeps its
/// argument and the pinned copy it awaits side by side, doubling the upstream
/// future (~1.6 KiB) in every request's state, which is moved whole at each
/// level of the call.
fn await_response<F: Future>(
    fut: F,
    sent: Instant,
    limit: Duration,
    wire: &TripWire,
) -> HeadDeadline<'_, F> {
    HeadDeadline {
        fut,
        // From `sent`, read once by the caller (a clock read per request less).
        sleep: tokio::time::sleep_until(tokio::time::Instant::from_std(sent) + limit),
        limit,
        wire,
    }
}

pin_project_lite::pin_project! {
    /// See [`await_response`]: `Err(())` once the head is overdue.
    struct HeadDeadline<'w, F> {
        #[pin]
        fut: F,
        #[pin]
        sleep: tokio::time::Sleep,
        limit: Duration,
        wire: &'w TripWire,
    }
}

impl<F: Future> Future for HeadDeadline<'_, F> {
    type Output = Result<F::Output, ()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(r) = this.fut.poll(cx) {
            return Poll::Ready(Ok(r));
        }
        while this.sleep.as_mut().poll(cx).is_ready() {
            let next = match this.wire.sent_at() {
                Some(at) => {
                    let deadline = at + *this.limit;
                    if deadline <= tokio::time::Instant::now() {
                        return Poll::Ready(Err(()));
                    }
                    deadline
                }
                // Still uploading: check again one limit later.
                None => tokio::time::Instant::now() + *this.limit,
            };
            // Reset, then polled again by the loop to register the new deadline.
            this.sleep.as_mut().reset(next);
        }
        Poll::Pending
    }
}

/// The scanner for a response, from its head: only successful answers are
/// read (an error body is not a completion), compressed ones are reported
/// unparsed rather than decompressed.
pub(super) fn scanner_for(parts: &http::response::Parts, expect_inference: bool) -> Scanner {
    if !parts.status.is_success() {
        return Scanner::off();
    }
    let kind = BodyKind::of(
        parts
            .headers
            .get(header::CONTENT_TYPE)
            .map(HeaderValue::as_bytes),
    );
    let compressed = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    Scanner::new(kind, compressed, expect_inference)
}

/// Reads declared response-header metrics (e.g. token counts) into the arm's sums.
fn record_header_metrics(arm: &ArmWiring, headers: &http::HeaderMap) {
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

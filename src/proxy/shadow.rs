//! Shadow copies: a share of an experiment's assigned requests, copied to
//! shadow arms whose answers are read to the end, recorded and discarded.
//!
//! Owns: what a copy carries (the request head as the client sent it, its
//! body once the upload has ended), the per-shadow in-flight gate, the
//! copy's own task and overall timeout, and counting the copies that were
//! skipped (`abgate_shadow_skipped_total{experiment,reason}`).
//!
//! Never: delays, fails or changes the primary request. Deciding and
//! starting a copy never waits (a semaphore's `try_acquire`, a `Bytes`
//! clone per body frame, one `tokio::spawn`); everything that can wait runs
//! on the copy's task, bounded by `shadow.timeout`. A copy never touches the
//! primary's recorder, body or response: if every shadow backend hangs,
//! resets or answers garbage, the primary sees exactly what it would without
//! them. A copy has no client: nothing it does can panic a connection's task,
//! and a panic inside its own task stays there (tokio catches it).
//!
//! Later pairing (primary twin outcome, shadow outcome) hangs off [`ShadowCopy`]:
//! it is created once per mirrored request, next to the primary's routing
//! decision, so it can carry the twin's identity when that is needed.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};
use http_body_util::BodyExt;
use metrics::{Counter, Gauge};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::body::{grpc_failure, RecordingBody};
use super::classify::classify;
use super::guarded_body::{IdleBody, RequestBody, TeeCut, TeeResult, TripWire};
use super::headers::{add_forwarded, strip_hop_by_hop};
use super::peek::Peek;
use super::problem::ProxyError;
use super::usage;
use super::wiring::Target;
use crate::config::{ShadowArm, UpstreamProtocol};
use crate::outcomes::pairs::{PairBook, PairOutcome, PairSlot, Side};
use crate::outcomes::scan;
use crate::outcomes::{ArmRecorder, FailureKind};
use crate::telemetry::Telemetry;

/// Set on every copy, so a backend can skip side effects (billing, writes,
/// notifications) for requests no client will see. abgate removes it from
/// what clients send to live arms, so a client cannot pose as a copy.
pub static X_SHADOW: HeaderName = HeaderName::from_static("x-abgate-shadow");

/// Why a copy was not made (the `reason` of `abgate_shadow_skipped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// `shadow.max_in_flight` copies were already running.
    InFlight,
    /// The body was larger than `shadow.max_body` (declared or as uploaded).
    BodyTooLarge,
    /// The client's upload failed, stalled past `shadow.timeout`, or was
    /// never sent (the primary's backend refused it): there is no whole body.
    UploadFailed,
}

impl Skip {
    pub const ALL: [Skip; 3] = [Skip::InFlight, Skip::BodyTooLarge, Skip::UploadFailed];

    pub fn label(self) -> &'static str {
        match self {
            Skip::InFlight => "in_flight",
            Skip::BodyTooLarge => "body_too_large",
            Skip::UploadFailed => "upload_failed",
        }
    }
}

/// One shadow arm's in-flight bound and counters. Kept across table swaps
/// (see [`ShadowGates`]), so copies started on an old table count against
/// the same bound as new ones: a burst of reloads cannot multiply it.
pub struct ShadowGate {
    permits: Arc<Semaphore>,
    skipped: [Counter; 3],
    in_flight: Gauge,
}

impl ShadowGate {
    fn new(experiment: &str, arm: &str, max_in_flight: usize, telemetry: &Telemetry) -> Self {
        ShadowGate {
            permits: Arc::new(Semaphore::new(max_in_flight)),
            skipped: Skip::ALL.map(|r| {
                telemetry.counter(
                    "abgate_shadow_skipped_total",
                    &[("experiment", experiment), ("reason", r.label())],
                )
            }),
            in_flight: telemetry.gauge(
                "abgate_shadow_in_flight",
                &[("experiment", experiment), ("arm", arm)],
            ),
        }
    }

    /// Counts a copy that was not made.
    pub fn skip(&self, why: Skip) {
        self.skipped[why as usize].increment(1);
    }

    /// A slot for one more copy, or `None` (counted) when all are taken.
    /// Never waits.
    fn admit(self: &Arc<Self>) -> Option<Slot> {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                self.in_flight.increment(1.0);
                Some(Slot {
                    _permit: permit,
                    gate: self.clone(),
                })
            }
            Err(_) => {
                self.skip(Skip::InFlight);
                None
            }
        }
    }
}

/// A copy's place in its gate, given back when the copy's task ends
/// (however it ends, panics included).
struct Slot {
    _permit: OwnedSemaphorePermit,
    gate: Arc<ShadowGate>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gate.in_flight.decrement(1.0);
    }
}

/// Every shadow arm's gate, keyed by (experiment, arm, max_in_flight): held
/// by the publisher across table builds like the upstream pools. A changed
/// `max_in_flight` gets a fresh gate (copies on the old one finish there).
#[derive(Default)]
pub struct ShadowGates {
    gates: DashMap<(String, String, usize), Arc<ShadowGate>>,
}

impl ShadowGates {
    pub fn get(
        &self,
        experiment: &str,
        shadow: &ShadowArm,
        telemetry: &Telemetry,
    ) -> Arc<ShadowGate> {
        let key = (
            experiment.to_string(),
            shadow.arm.name.clone(),
            shadow.max_in_flight,
        );
        self.gates
            .entry(key)
            .or_insert_with(|| {
                Arc::new(ShadowGate::new(
                    experiment,
                    &shadow.arm.name,
                    shadow.max_in_flight,
                    telemetry,
                ))
            })
            .clone()
    }

    /// Drops gates no table (and no running copy) holds any more.
    pub fn prune(&self) {
        self.gates.retain(|_, g| Arc::strong_count(g) > 1);
    }
}

/// What a shadow arm's copies need, built with the table.
pub struct ShadowWiring {
    /// The shadow's own backend, credentials and response timeout.
    pub target: Target,
    pub recorder: Arc<ArmRecorder>,
    pub gate: Arc<ShadowGate>,
    /// Where each copy and its primary twin are paired.
    pub pairs: Arc<PairBook>,
    /// The shadow arm's `model`, as JSON string content (see `wiring::model_json`).
    pub model: Option<Bytes>,
    /// `shadow.max_body`, bytes.
    pub max_body: u64,
    /// `shadow.timeout`: the most a copy may take, from the routing decision
    /// to the last byte of the shadow's answer.
    pub timeout: Duration,
    /// The experiment's `inject_usage`: copies ask for usage like their twins.
    pub inject_usage: bool,
    /// `timeouts.stream_idle`, for the shadow's response body.
    pub stream_idle: Duration,
}

/// The head of a mirrored request as the client sent it (before the
/// primary's hygiene and `model` rewrite), captured once for all its copies.
pub struct CopyHead {
    pub method: Method,
    pub uri: Uri,
    pub headers: http::HeaderMap,
    /// The client's `Host`, for `x-forwarded-host`.
    pub host: Option<HeaderValue>,
    pub peer: HeaderValue,
    pub proto: &'static str,
    /// The whole body, when it is already known (no body, or a peek read all
    /// of it before any rewrite); otherwise each copy tees the upload.
    pub body: Option<Bytes>,
}

impl CopyHead {
    /// The head of `parts`; `peek` is what a peek read (the body is whole
    /// when the peek read it all), `no_body` says the request has none.
    pub fn capture(
        parts: &http::request::Parts,
        host: Option<&HeaderValue>,
        conn: &super::plane::ConnInfo,
        peek: Option<&Peek>,
        no_body: bool,
    ) -> CopyHead {
        let body = match peek {
            Some(p) if p.is_complete() => Some(join(p.frames().to_vec())),
            _ if no_body => Some(Bytes::new()),
            _ => None,
        };
        CopyHead {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
            host: host.cloned(),
            peer: conn.peer_header.clone(),
            proto: conn.proto,
            body,
        }
    }

    fn declared_len(&self) -> Option<u64> {
        self.headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    }
}

/// Starts one copy of a request for `shadow`, unless its body is too large
/// or its gate is full (both counted). `body` is the primary's request body
/// (after any peek was restored): a copy whose body is not known yet tees
/// it. Returns at once; the copy runs on its own task. The slot returned is
/// where the primary reports its side of the pair.
pub fn start(
    shadow: &Arc<ShadowWiring>,
    head: &CopyHead,
    body: &mut RequestBody,
) -> Option<Arc<PairSlot>> {
    let gate = &shadow.gate;
    let too_large = match &head.body {
        Some(b) => b.len() as u64 > shadow.max_body,
        None => head.declared_len().is_some_and(|n| n > shadow.max_body),
    };
    if too_large {
        gate.skip(Skip::BodyTooLarge);
        return None;
    }
    let slot = gate.admit()?;
    let pair = PairSlot::new(shadow.pairs.clone());
    let source = match &head.body {
        Some(b) => Source::Known(b.clone()),
        None => Source::Tee(body.tee(shadow.max_body)),
    };
    let copy = ShadowCopy {
        shadow: shadow.clone(),
        method: head.method.clone(),
        uri: head.uri.clone(),
        headers: head.headers.clone(),
        host: head.host.clone(),
        peer: head.peer.clone(),
        proto: head.proto,
        deadline: Instant::now() + shadow.timeout,
        pair: pair.clone(),
        _slot: slot,
    };
    tokio::spawn(copy.run(source));
    Some(pair)
}

enum Source {
    Known(Bytes),
    Tee(oneshot::Receiver<TeeResult>),
}

/// One copy of one request, on its own task.
struct ShadowCopy {
    shadow: Arc<ShadowWiring>,
    method: Method,
    uri: Uri,
    headers: http::HeaderMap,
    host: Option<HeaderValue>,
    peer: HeaderValue,
    proto: &'static str,
    deadline: Instant,
    /// The copy's side of its pair with the primary twin.
    pair: Arc<PairSlot>,
    /// Released when the copy ends, whichever way.
    _slot: Slot,
}

impl ShadowCopy {
    async fn run(self, source: Source) {
        let s = &self.shadow;
        let body = match source {
            Source::Known(b) => b,
            Source::Tee(rx) => match tokio::time::timeout_at(self.deadline, rx).await {
                Ok(Ok(Ok(frames))) => join(frames),
                Ok(Ok(Err(TeeCut::TooLarge))) => return self.skipped(Skip::BodyTooLarge),
                // Failed, dropped before its end, or still uploading at the deadline.
                _ => return self.skipped(Skip::UploadFailed),
            },
        };
        if body.len() as u64 > s.max_body {
            return self.skipped(Skip::BodyTooLarge);
        }
        let request = self.request(body);
        self.send(request).await;
    }

    /// A copy never sent: counted, and its pair left out.
    fn skipped(&self, why: Skip) {
        self.shadow.gate.skip(why);
        self.pair.report(Side::Shadow, PairOutcome::uncounted());
    }

    /// The copy as its backend gets it: the head the primary would send
    /// (hop-by-hop headers removed, forwarded headers added), with the
    /// shadow's own credentials, Host and `model`, plus `x-abgate-shadow: 1`.
    fn request(&self, mut body: Bytes) -> Request<RequestBody> {
        let s = &self.shadow;
        let target = &s.target;
        let mut headers = self.headers.clone();
        let wants_trailers = target.upstream.protocol == UpstreamProtocol::Http2
            && headers.get_all(header::TE).iter().any(|v| {
                v.to_str().is_ok_and(|v| {
                    v.split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
                })
            });
        strip_hop_by_hop(&mut headers);
        // The copy's body is whole and sent at once: there is nothing to
        // wait for a 100 Continue about (the client's was answered already).
        headers.remove(header::EXPECT);
        if wants_trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        for (name, value) in target.headers.iter() {
            headers.insert(name.clone(), value.clone());
        }
        add_forwarded(&mut headers, &self.peer, self.proto, self.host.as_ref());
        headers.insert(header::HOST, target.upstream.host_header.clone());
        headers.insert(X_SHADOW.clone(), HeaderValue::from_static("1"));
        // The same peek-and-rewrite the primary's arm uses, on the body
        // as the client sent it.
        if let Some(model) = &s.model {
            let mut p = Peek::of_frames(vec![body.clone()], None);
            if p.rewrite_model(model).is_some() {
                body = join(p.frames().to_vec());
            }
        }
        let mut req = Request::new(());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = target.upstream.uri_for(self.uri.path_and_query());
        *req.version_mut() = match target.upstream.protocol {
            UpstreamProtocol::Http1 => Version::HTTP_11,
            UpstreamProtocol::Http2 => Version::HTTP_2,
        };
        *req.headers_mut() = headers;
        let (mut parts, ()) = req.into_parts();
        if s.inject_usage && usage::may_inject(&parts) {
            if let Some(rewritten) = usage::inject(&body) {
                body = rewritten;
            }
        }
        // The body goes up whole, so its length is known: a chunked upload
        // is sent sized. A body-less request stays body-less.
        let wire = TripWire::new(true);
        let body = if body.is_empty() && !parts.headers.contains_key(header::CONTENT_LENGTH) {
            RequestBody::empty(wire)
        } else {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            RequestBody::buffered(body, wire)
        };
        Request::from_parts(parts, body)
    }

    /// Sends the copy and reads the answer to its end, discarding it, with
    /// the outcome recorded on the shadow arm as `forward` records a live
    /// arm's: status, errors, TTFB, latency and what the scanner reads.
    /// Latency is measured from sending: the copy's body is already whole,
    /// so there is no upload to wait for.
    async fn send(self, req: Request<RequestBody>) {
        let s = &self.shadow;
        let target = &s.target;
        let recorder = &s.recorder;
        let expect_inference = scan::is_inference_path(req.uri().path());
        let started = std::time::Instant::now();
        let head_by = self.deadline.min(Instant::now() + target.response_timeout);
        let kind = match tokio::time::timeout_at(head_by, target.upstream.request(req)).await {
            Err(_) => FailureKind::ResponseTimeout,
            Ok(Err(e)) => classify(&e),
            Ok(Ok(resp)) => {
                let (parts, incoming) = resp.into_parts();
                recorder.record_response(false, parts.status);
                let mut head_was_error = parts.status.is_server_error();
                if let Some(code) = grpc_failure(&parts.headers) {
                    recorder.record_grpc_error(false, code, head_was_error);
                    head_was_error = true;
                }
                let scanner = super::forward::scanner_for(&parts, expect_inference);
                // A body that goes quiet is cut by the idle limit, and never
                // later than the copy's deadline.
                let left = self
                    .deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1));
                let body = IdleBody::new(incoming, s.stream_idle.min(left));
                let mut body =
                    RecordingBody::new(body, recorder.clone(), false, started, head_was_error)
                        .scanning(scanner, target.price)
                        .pairing(Side::Shadow, vec![self.pair.clone()]);
                // Frame by frame, each dropped as it arrives: nothing of the
                // answer is held. A body still streaming at the deadline is
                // cut and counted as the shadow's response timeout.
                let read = tokio::time::timeout_at(self.deadline, async {
                    while let Some(frame) = body.frame().await {
                        if frame.is_err() {
                            break;
                        }
                    }
                })
                .await;
                if read.is_err() {
                    body.cut(FailureKind::ResponseTimeout);
                }
                return;
            }
        };
        let err =
            ProxyError::from_failure(kind, &target.backend, target.response_timeout.as_millis());
        recorder.record_response(false, err.status());
        recorder.record_failure(false, kind, true);
        recorder.record_ttfb(false, started.elapsed());
        recorder.record_latency(false, started.elapsed());
        self.pair
            .report(Side::Shadow, PairOutcome::failed(started.elapsed()));
    }
}

/// Frames as one buffer (one frame is returned as it is, without a copy).
fn join(mut frames: Vec<Bytes>) -> Bytes {
    match frames.len() {
        0 => Bytes::new(),
        1 => frames.pop().unwrap_or_default(),
        _ => {
            let mut buf = BytesMut::with_capacity(frames.iter().map(Bytes::len).sum());
            for f in &frames {
                buf.extend_from_slice(f);
            }
            buf.freeze()
        }
    }
}

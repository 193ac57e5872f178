//! Capturing a sampled request and its answer (the proxy's half of
//! `outcomes::capture`): which requests, and collecting their bytes as they
//! pass.
//!
//! Owns: starting a capture once the arm is known ([`Pending::begin`]: the
//! client's head, and a tee of the body as the backend gets it), attaching
//! it to the answer ([`Pending::respond`]), and the tap the response body
//! feeds ([`ResponseTap`]), which hands the finished example to the sink.
//!
//! Never waits and never changes a byte: the request's frames are `Bytes`
//! clones taken by the body's tee, the answer's by the recording body as it
//! forwards them; a body past `capture.max_body` stops being collected at
//! once. An answer abgate generated itself (a 502, a 504) is not an example.

use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use tokio::sync::oneshot;

use super::body::ProxyBody;
use super::guarded_body::{RequestBody, TeeCut, TeeResult};
use crate::outcomes::capture::{CapturePolicy, CaptureSink, Captured, CapturedArm, Example};

/// What a live arm of a capturing experiment carries.
pub struct ArmCapture {
    pub policy: Arc<CapturePolicy>,
    pub arm: Arc<CapturedArm>,
}

/// A request being captured, until its answer's head is known.
pub struct Pending {
    policy: Arc<CapturePolicy>,
    arm: Arc<CapturedArm>,
    pub id: [u8; 16],
    table_version: u64,
    forced: bool,
    method: String,
    target: String,
    headers: http::HeaderMap,
    body: RequestSide,
}

enum RequestSide {
    Known(Captured),
    Tee(oneshot::Receiver<TeeResult>),
}

impl Pending {
    /// Starts capturing the request whose token id is `id`, if its arm's
    /// experiment samples it. `parts` is the head as the client sent it;
    /// `body` is teed from here on (after any peek was restored, so the
    /// example gets the body the backend gets).
    pub fn begin(
        capture: &ArmCapture,
        id: [u8; 16],
        parts: &http::request::Parts,
        body: &mut RequestBody,
        table_version: u64,
        forced: bool,
    ) -> Option<Pending> {
        if !capture.policy.samples(&id) {
            return None;
        }
        let body = if http_body::Body::is_end_stream(body) {
            RequestSide::Known(Captured::Whole(Vec::new()))
        } else {
            RequestSide::Tee(body.tee(capture.policy.max_body))
        };
        Some(Pending {
            policy: capture.policy.clone(),
            arm: capture.arm.clone(),
            id,
            table_version,
            forced,
            method: parts.method.as_str().to_string(),
            target: parts
                .uri
                .path_and_query()
                .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string()),
            headers: parts.headers.clone(),
            body,
        })
    }

    /// Follows the answer: a backend's body is tapped until its end; an
    /// answer abgate generated is not captured. `issued_at_ms` is the
    /// token's issue time, the key the export orders by.
    pub fn respond(
        self,
        resp: &mut Response<ProxyBody>,
        issued_at_ms: u64,
        sink: Arc<CaptureSink>,
    ) {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        if let ProxyBody::Upstream(body) = resp.body_mut() {
            body.capturing(Box::new(ResponseTap {
                pending: self,
                issued_at_ms,
                status,
                headers,
                frames: Vec::new(),
                len: 0,
                too_large: false,
                sink,
            }));
        }
    }
}

/// The answer's side of a capture: fed each data frame as it is forwarded.
pub struct ResponseTap {
    pending: Pending,
    issued_at_ms: u64,
    status: u16,
    headers: http::HeaderMap,
    frames: Vec<Bytes>,
    len: u64,
    too_large: bool,
    sink: Arc<CaptureSink>,
}

impl ResponseTap {
    /// Keeps a clone of `data`, unless the body is past `max_body` (then
    /// what was kept is let go at once).
    pub fn push(&mut self, data: &Bytes) {
        if self.too_large {
            return;
        }
        self.len += data.len() as u64;
        if self.len > self.pending.policy.max_body {
            self.too_large = true;
            self.frames = Vec::new();
        } else if !data.is_empty() {
            self.frames.push(data.clone());
        }
    }

    /// The answer ended (`complete`: normally): the example goes to the writer.
    pub fn finish(self, complete: bool) {
        let p = self.pending;
        let max = p.policy.max_body;
        let request_body = match p.body {
            RequestSide::Known(c) => c,
            RequestSide::Tee(mut rx) => match rx.try_recv() {
                // A shadow copy may have raised the tee's limit above ours.
                Ok(Ok(frames)) => match Captured::Whole(frames) {
                    whole if whole.bytes() <= max => whole,
                    _ => Captured::TooLarge,
                },
                Ok(Err(TeeCut::TooLarge)) => Captured::TooLarge,
                // Failed, or still uploading when the answer ended.
                _ => Captured::Missing,
            },
        };
        let response_body = if self.too_large {
            Captured::TooLarge
        } else if complete {
            Captured::Whole(self.frames)
        } else {
            Captured::Missing
        };
        self.sink.offer(Example {
            policy: p.policy,
            arm: p.arm,
            token_id: p.id,
            issued_at_ms: self.issued_at_ms,
            table_version: p.table_version,
            forced: p.forced,
            method: p.method,
            target: p.target,
            request_headers: p.headers,
            request_body,
            status: self.status,
            response_headers: self.headers,
            response_body,
            complete,
        });
    }
}

//! Building one request and timing its exchange.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use super::client::HttpClient;
use super::recorder::ErrorKind;
use super::spec::{LoadSpec, RequestKind};
use super::workload::WorkRequest;

/// Proxy header naming the arm that served the request.
pub const HEADER_ARM: &str = "x-abgate-arm";
/// Proxy header carrying the opaque feedback token.
pub const HEADER_TOKEN: &str = "x-abgate-token";
/// Proxy header naming the experiment.
pub const HEADER_EXPERIMENT: &str = "x-abgate-experiment";

/// Everything constant across the requests of one run.
pub struct RequestTemplate {
    uri: Uri,
    body: Bytes,
    stream: bool,
    unit_header: HeaderName,
    users: u64,
    seed: u64,
    feedback_fraction: f64,
}

/// Per-request random choices, derived only from `(seed, index)` so they do not depend on
/// scheduling order or concurrency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Draw {
    /// User index `k` of `user-<k>`.
    pub user: u64,
    /// Whether a successful tokened response gets feedback.
    pub feedback: bool,
}

impl RequestTemplate {
    /// Prebuilds the body for `spec` (which must be validated).
    pub fn new(spec: &LoadSpec, uri: Uri) -> Self {
        RequestTemplate {
            uri,
            body: spec.kind.body(&spec.model),
            stream: spec.kind == RequestKind::ChatStream,
            // validate() checked the header name; fall back to the default rather than panic.
            unit_header: HeaderName::from_bytes(spec.unit_header.as_bytes())
                .unwrap_or(HeaderName::from_static("x-user-id")),
            users: spec.users.max(1),
            seed: spec.seed,
            feedback_fraction: spec.feedback.fraction,
        }
    }

    /// Random choices of request `index`.
    pub fn draw(&self, index: u64) -> Draw {
        // Golden-ratio mixing keeps streams of neighbouring seeds/indices apart.
        let mut rng = StdRng::seed_from_u64(self.seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let user = rng.random_range(0..self.users);
        let feedback = rng.random::<f64>() < self.feedback_fraction;
        Draw { user, feedback }
    }

    /// The HTTP request for a draw.
    pub fn build(&self, draw: Draw) -> Request<Full<Bytes>> {
        self.post(self.uri.clone(), self.body.clone(), Some(draw.user))
    }

    /// The HTTP request for a workload's item: its path on this run's target, so
    /// it cannot leave the loopback host the spec was checked for.
    pub fn build_work(&self, work: WorkRequest) -> Request<Full<Bytes>> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = self.uri.scheme().cloned();
        parts.authority = self.uri.authority().cloned();
        parts.path_and_query = Some(work.path);
        let uri = Uri::from_parts(parts).expect("scheme and authority of a checked loopback URI");
        self.post(uri, work.body, work.user)
    }

    fn post(&self, uri: Uri, body: Bytes, user: Option<u64>) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = uri;
        let h = req.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static(if self.stream {
                "text/event-stream"
            } else {
                "application/json"
            }),
        );
        if let Some(Ok(v)) = user.map(|k| HeaderValue::from_str(&format!("user-{k}"))) {
            h.insert(self.unit_header.clone(), v);
        }
        req
    }
}

/// A complete exchange, timed from `origin`.
pub struct Exchange {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// Until the first non-empty body frame (or headers if the body is empty).
    pub ttfb: Duration,
    /// Until the end of the body.
    pub latency: Duration,
    /// The body, if it was asked for; else empty.
    pub body: Bytes,
}

/// Sends `req` and reads the whole body (keeping it with `keep_body`), timing both
/// from `origin`.
pub async fn exchange(
    client: &HttpClient,
    req: Request<Full<Bytes>>,
    origin: Instant,
    keep_body: bool,
) -> Result<Exchange, ErrorKind> {
    let resp = client.request(req).await.map_err(|e| {
        if e.is_connect() {
            ErrorKind::Connect
        } else {
            ErrorKind::Io
        }
    })?;
    let headers_at = Instant::now();
    let (parts, mut body) = resp.into_parts();
    let mut first_byte = None;
    let mut kept = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ErrorKind::Io)?;
        if let Some(data) = frame.data_ref().filter(|d| !d.is_empty()) {
            first_byte.get_or_insert_with(Instant::now);
            if keep_body {
                kept.extend_from_slice(data);
            }
        }
    }
    let done = Instant::now();
    Ok(Exchange {
        status: parts.status.as_u16(),
        headers: parts.headers,
        ttfb: first_byte.unwrap_or(headers_at) - origin,
        latency: done - origin,
        body: kept.freeze(),
    })
}

/// Arm key: `x-abgate-arm`, else `x-mock-backend`, else `unknown`.
pub fn arm_of(headers: &HeaderMap) -> String {
    [HEADER_ARM, crate::lab::mock::HEADER_BACKEND]
        .iter()
        .find_map(|name| headers.get(*name).and_then(|v| v.to_str().ok()))
        .unwrap_or("unknown")
        .to_string()
}

/// `dur` of the `abgate` entry of any `server-timing` header, in ms.
pub fn abgate_server_timing(headers: &HeaderMap) -> Option<f64> {
    headers
        .get_all("server-timing")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|entry| {
            let mut params = entry.split(';').map(str::trim);
            if params.next()? != "abgate" {
                return None;
            }
            params.find_map(|p| p.strip_prefix("dur=")?.trim_matches('"').parse().ok())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_timing() {
        let mut h = HeaderMap::new();
        h.insert(
            "server-timing",
            HeaderValue::from_static("abgate;dur=1.25, upstream;dur=20"),
        );
        assert_eq!(abgate_server_timing(&h), Some(1.25));
        h.insert(
            "server-timing",
            HeaderValue::from_static("upstream;dur=20, abgate;desc=\"x\";dur=0.5"),
        );
        assert_eq!(abgate_server_timing(&h), Some(0.5));
        h.insert("server-timing", HeaderValue::from_static("upstream;dur=3"));
        assert_eq!(abgate_server_timing(&h), None);
    }

    #[test]
    fn draws_are_deterministic_and_uniform() {
        let mut spec = LoadSpec::new("http://127.0.0.1:1");
        spec.users = 10;
        spec.feedback.fraction = 0.25;
        let t = RequestTemplate::new(&spec, "http://127.0.0.1:1/".parse().unwrap());
        assert_eq!(t.draw(5), t.draw(5));
        let mut counts = [0u32; 10];
        let mut fb = 0;
        for i in 0..10_000 {
            let d = t.draw(i);
            counts[d.user as usize] += 1;
            fb += u32::from(d.feedback);
        }
        assert!(
            counts.iter().all(|&c| (850..1150).contains(&c)),
            "{counts:?}"
        );
        assert!((2300..2700).contains(&fb), "{fb}");
    }

    #[test]
    fn arm_prefers_proxy_header() {
        let mut h = HeaderMap::new();
        assert_eq!(arm_of(&h), "unknown");
        h.insert("x-mock-backend", HeaderValue::from_static("canary"));
        assert_eq!(arm_of(&h), "canary");
        h.insert(HEADER_ARM, HeaderValue::from_static("B"));
        assert_eq!(arm_of(&h), "B");
    }
}

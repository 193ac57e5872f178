//! The one error vocabulary of every answer abgate gives instead of a backend:
//! [`Problem`] (status, slug, detail, and who is at fault), rendered as an
//! RFC 9457 `application/problem+json` body in exactly one place. The data
//! plane's [`ProxyError`], the feedback endpoint's rejections and the admin
//! API's errors all convert into it.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use serde_json::{Map, Value};

use crate::outcomes::FailureKind;

/// Who is at fault: the client (fix the request), the upstream (the backend
/// failed; another try may land elsewhere) or abgate itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
    Internal,
}

/// An answer abgate gives on its own behalf.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    /// Stable and machine-readable: the problem `type` is `urn:abgate:problem:<slug>`.
    pub slug: &'static str,
    /// For people: what went wrong and what to do.
    pub detail: String,
    pub side: Side,
    /// RFC 9457 extension members (e.g. `errors` of an invalid config).
    pub extensions: Map<String, Value>,
    /// Seconds for a `Retry-After` header: the request may succeed if sent
    /// again (a store that cannot be reached right now).
    pub retry_after: Option<u32>,
}

impl Problem {
    pub fn new(side: Side, status: StatusCode, slug: &'static str, detail: String) -> Problem {
        Problem {
            status,
            slug,
            detail,
            side,
            extensions: Map::new(),
            retry_after: None,
        }
    }

    /// Asks the client to retry after `secs` seconds (`Retry-After`).
    pub fn retry_after(mut self, secs: u32) -> Problem {
        self.retry_after = Some(secs);
        self
    }

    pub fn client(status: StatusCode, slug: &'static str, detail: String) -> Problem {
        Problem::new(Side::Client, status, slug, detail)
    }

    pub fn upstream(status: StatusCode, slug: &'static str, detail: String) -> Problem {
        Problem::new(Side::Upstream, status, slug, detail)
    }

    pub fn internal(status: StatusCode, slug: &'static str, detail: String) -> Problem {
        Problem::new(Side::Internal, status, slug, detail)
    }

    /// Adds an extension member to the body.
    pub fn with(mut self, key: &str, value: Value) -> Problem {
        self.extensions.insert(key.to_string(), value);
        self
    }

    /// `urn:abgate:problem:<slug>`.
    pub fn type_uri(&self) -> String {
        format!("urn:abgate:problem:{}", self.slug)
    }

    /// The `application/problem+json` response.
    pub fn to_response(&self) -> Response<Bytes> {
        let mut body = self.extensions.clone();
        body.insert("type".into(), Value::String(self.type_uri()));
        body.insert(
            "title".into(),
            Value::String(self.status.canonical_reason().unwrap_or("Error").into()),
        );
        body.insert("status".into(), Value::from(self.status.as_u16()));
        body.insert("detail".into(), Value::String(self.detail.clone()));
        let mut resp = Response::new(Bytes::from(Value::Object(body).to_string()));
        *resp.status_mut() = self.status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// Everything that makes abgate answer instead of the backend.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("an HTTP/1.1 request must carry a Host header")]
    MissingHost,
    #[error("the request carries more than one Host header")]
    DuplicateHost,
    #[error("no experiment matches {path} and no default_backend is configured")]
    NoRoute { path: String },
    #[error("{0}")]
    UnknownOverrideArm(String),
    #[error("backend {backend} refused the connection")]
    ConnectRefused { backend: String },
    #[error("backend {backend} did not accept a connection in time")]
    ConnectTimeout { backend: String },
    #[error("backend {backend} sent no response headers within {timeout_ms} ms")]
    ResponseTimeout { backend: String, timeout_ms: u128 },
    #[error("the connection to backend {backend} broke before a response")]
    UpstreamReset { backend: String },
    #[error("backend {backend} sent an invalid HTTP response")]
    BadResponse { backend: String },
    #[error("the request target is longer than {limit} bytes")]
    UriTooLong { limit: usize },
    #[error("the request carries more than {limit} header fields")]
    TooManyHeaders { limit: usize },
    #[error("the request line and headers are larger than {limit} bytes")]
    HeadersTooLarge { limit: usize },
    #[error("Transfer-Encoding must be exactly `chunked`")]
    BadTransferEncoding,
    #[error("the request carries conflicting or invalid Content-Length values")]
    ConflictingContentLength,
    #[error("the request body is larger than {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("the client sent no request body bytes for {timeout_ms} ms")]
    BodyTimeout { timeout_ms: u128 },
    #[error("the request body broke off before it was complete")]
    BodyBroken,
}

impl ProxyError {
    pub fn from_failure(kind: FailureKind, backend: &str, timeout_ms: u128) -> ProxyError {
        let backend = backend.to_string();
        match kind {
            FailureKind::ConnectRefused => ProxyError::ConnectRefused { backend },
            FailureKind::ConnectTimeout => ProxyError::ConnectTimeout { backend },
            FailureKind::ResponseTimeout => ProxyError::ResponseTimeout {
                backend,
                timeout_ms,
            },
            FailureKind::BadResponse => ProxyError::BadResponse { backend },
            FailureKind::Reset | FailureKind::ClientGone => ProxyError::UpstreamReset { backend },
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::MissingHost
            | ProxyError::DuplicateHost
            | ProxyError::BadTransferEncoding
            | ProxyError::ConflictingContentLength
            | ProxyError::BodyBroken => StatusCode::BAD_REQUEST,
            ProxyError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            ProxyError::TooManyHeaders { .. } | ProxyError::HeadersTooLarge { .. } => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::UnknownOverrideArm(_) => StatusCode::BAD_REQUEST,
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::ResponseTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::ConnectRefused { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::UpstreamReset { .. }
            | ProxyError::BadResponse { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// A stable, machine-readable slug for the problem `type`.
    pub fn slug(&self) -> &'static str {
        match self {
            ProxyError::MissingHost => "missing-host",
            ProxyError::DuplicateHost => "duplicate-host",
            ProxyError::NoRoute { .. } => "no-route",
            ProxyError::UnknownOverrideArm(_) => "unknown-arm",
            ProxyError::ConnectRefused { .. } => "upstream-connect-refused",
            ProxyError::ConnectTimeout { .. } => "upstream-connect-timeout",
            ProxyError::ResponseTimeout { .. } => "upstream-response-timeout",
            ProxyError::UpstreamReset { .. } => "upstream-reset",
            ProxyError::BadResponse { .. } => "upstream-bad-response",
            ProxyError::UriTooLong { .. } => "uri-too-long",
            ProxyError::TooManyHeaders { .. } => "too-many-headers",
            ProxyError::HeadersTooLarge { .. } => "headers-too-large",
            ProxyError::BadTransferEncoding => "bad-transfer-encoding",
            ProxyError::ConflictingContentLength => "conflicting-content-length",
            ProxyError::BodyTooLarge { .. } => "body-too-large",
            ProxyError::BodyTimeout { .. } => "body-timeout",
            ProxyError::BodyBroken => "body-broken",
        }
    }
}

impl ProxyError {
    /// Who is at fault.
    pub fn side(&self) -> Side {
        match self {
            ProxyError::ConnectRefused { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::ResponseTimeout { .. }
            | ProxyError::UpstreamReset { .. }
            | ProxyError::BadResponse { .. } => Side::Upstream,
            _ => Side::Client,
        }
    }

    pub fn to_response(&self) -> Response<Bytes> {
        Problem::from(self).to_response()
    }
}

impl From<&ProxyError> for Problem {
    fn from(e: &ProxyError) -> Problem {
        Problem::new(e.side(), e.status(), e.slug(), e.to_string())
    }
}

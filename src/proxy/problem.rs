//! Errors the proxy answers with, mapped to a status and a JSON problem body
//! (RFC 9457) in exactly one place.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::outcomes::FailureKind;

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
            | ProxyError::ConflictingContentLength => StatusCode::BAD_REQUEST,
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
        }
    }
}

/// Builds an `application/problem+json` response.
pub fn problem_response(status: StatusCode, slug: &str, detail: &str) -> Response<Bytes> {
    let body = serde_json::json!({
        "type": format!("urn:abgate:problem:{slug}"),
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut resp = Response::new(Bytes::from(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    resp
}

impl ProxyError {
    pub fn to_response(&self) -> Response<Bytes> {
        problem_response(self.status(), self.slug(), &self.to_string())
    }
}

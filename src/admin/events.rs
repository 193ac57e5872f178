//! `GET /v1/events`: the control plane's event hub as Server-Sent Events,
//! and the admin listener's response body (a plain answer or that stream).
//!
//! Owns: the stream's framing on the wire (a comment line first, so a client
//! sees the stream open before the first tick) and its end: a stream leaves
//! the hub when its body is dropped. Read-only: no token needed, like every
//! other GET but the config.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::Notify;

use crate::control::events::Subscription;
use crate::control::ControlPlane;
use crate::proxy::body::ProxyBody;
use crate::proxy::problem::Problem;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the admin listener sends.
// Admin answers are few; boxing the plain one would only move the same bytes.
#[allow(clippy::large_enum_variant)]
pub enum AdminBody {
    /// A whole answer.
    Plain(ProxyBody),
    /// The event stream.
    Events(EventStream),
    /// A training-data export (`admin::dataset`).
    Dataset(super::dataset::DatasetBody),
}

/// A subscriber's queue as a response body; leaves the hub when dropped.
pub struct EventStream {
    hello: Option<Bytes>,
    sub: Subscription,
    control: Arc<ControlPlane>,
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.control.events.unsubscribe(self.sub.id);
    }
}

impl Body for AdminBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            AdminBody::Plain(b) => Pin::new(b).poll_frame(cx),
            AdminBody::Events(s) => {
                if let Some(h) = s.hello.take() {
                    return Poll::Ready(Some(Ok(Frame::data(h))));
                }
                s.sub
                    .rx
                    .poll_recv(cx)
                    .map(|e| e.map(|b| Ok(Frame::data(b))))
            }
            AdminBody::Dataset(d) => Pin::new(d).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            AdminBody::Plain(b) => b.is_end_stream(),
            AdminBody::Events(_) | AdminBody::Dataset(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            AdminBody::Plain(b) => b.size_hint(),
            AdminBody::Events(_) | AdminBody::Dataset(_) => SizeHint::default(),
        }
    }
}

/// Answers `/v1/events`: GET opens a stream; 503 when the hub is full.
/// `close` closes the connection if the hub drops the subscriber.
pub fn serve(
    control: &Arc<ControlPlane>,
    method: &Method,
    close: Arc<Notify>,
) -> Result<Response<AdminBody>, Problem> {
    if method != Method::GET {
        return Err(Problem::client(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            format!("{method} is not allowed on /v1/events"),
        ));
    }
    let sub = control.events.subscribe(close).map_err(|_| {
        Problem::client(
            StatusCode::SERVICE_UNAVAILABLE,
            "too-many-streams",
            format!(
                "{} event streams are open already; poll GET /v1/experiments instead",
                crate::control::events::MAX_SUBSCRIBERS
            ),
        )
    })?;
    let mut r = Response::new(AdminBody::Events(EventStream {
        // The retry hint makes a browser reconnect after a second.
        hello: Some(Bytes::from_static(b": abgate events\nretry: 1000\n\n")),
        sub,
        control: control.clone(),
    }));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    Ok(r)
}

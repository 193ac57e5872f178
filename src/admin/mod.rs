//! The admin listener: metrics and health now; experiments, decisions and config
//! changes as the control plane grows.
//!
//! Owns: admin routing and its JSON answers. Never: serves data-plane traffic.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::proxy::body::ProxyBody;
use crate::proxy::problem::problem_response;
use crate::proxy::server::stop_requested;
use crate::server::Shared;

/// Serves the admin API until `shutdown` flips to true.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _peer)) = accepted else { continue };
                let shared = shared.clone();
                let svc = service_fn(move |req| handle(shared.clone(), req));
                let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = stop_requested(&mut shutdown) => break,
        }
    }
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let resp = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => text(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            shared.telemetry.render(),
        ),
        (&Method::GET, "/healthz") => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        (&Method::GET, "/readyz") => {
            let version = shared.plane.table.load().version;
            json(
                StatusCode::OK,
                &serde_json::json!({"status": "ready", "table_version": version}),
            )
        }
        (_, "/metrics" | "/healthz" | "/readyz") => problem(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "use GET",
        ),
        (_, path) => problem(
            StatusCode::NOT_FOUND,
            "not-found",
            &format!("no admin endpoint at {path}"),
        ),
    };
    Ok(resp)
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<ProxyBody> {
    text(status, "application/json", value.to_string())
}

fn problem(status: StatusCode, slug: &str, detail: &str) -> Response<ProxyBody> {
    problem_response(status, slug, detail).map(|b: Bytes| ProxyBody::full(b))
}

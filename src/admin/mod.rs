//! The admin listener: experiments, decisions, manual actions, config, metrics, health.
//!
//! Owns: admin routing, authentication and JSON answers. GET never mutates; state
//! changes are POST/PUT only and need a bearer token when one is configured.
//! Never: serves data-plane traffic.

pub mod auth;
pub mod dataset;
pub mod events;
pub mod precondition;
pub mod runtime;
pub mod ui;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::control::{Action, ActionError, Actor, ApplyError, ControlPlane, IfMatch};
use crate::proxy::accept::{accept_loop, stop_requested, AcceptLimits};
use crate::proxy::body::ProxyBody;
use crate::proxy::problem::Problem;
use auth::{host_is_local, AdminAuth};

/// Largest config or action body accepted.
const MAX_ADMIN_BODY: usize = 4 * 1024 * 1024;

pub struct Admin {
    pub control: Arc<ControlPlane>,
    pub auth: AdminAuth,
    pub listen: SocketAddr,
}

/// Open admin connections at most: `status --watch` and scrapers hold one
/// each; more than this is a misbehaving client, which then waits in the
/// accept queue instead of costing memory.
pub const MAX_ADMIN_CONNECTIONS: usize = 256;

/// A client must send a complete request head within this.
const ADMIN_HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves the admin API until `shutdown` flips to true, then lets open
/// connections finish their requests for up to `shutdown_grace`.
pub async fn serve(
    listener: TcpListener,
    admin: Arc<Admin>,
    shutdown: watch::Receiver<bool>,
    shutdown_grace: std::time::Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(ADMIN_HEADER_READ_TIMEOUT);
    let builder = Arc::new(builder);
    let limits = AcceptLimits {
        max_connections: MAX_ADMIN_CONNECTIONS,
        shutdown_grace,
    };
    let conn_shutdown = shutdown.clone();
    accept_loop(listener, limits, shutdown, "admin", move |stream, peer| {
        let admin = admin.clone();
        let builder = builder.clone();
        let mut stop = conn_shutdown.clone();
        // Closes this connection at once: the event hub drops a client that
        // stopped reading, whose response body is then never polled again.
        let close = Arc::new(tokio::sync::Notify::new());
        async move {
            let conn_close = close.clone();
            let svc = service_fn(move |req| handle(admin.clone(), peer, conn_close.clone(), req));
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = close.notified() => return,
                _ = stop_requested(&mut stop) => conn.as_mut().graceful_shutdown(),
            }
            tokio::select! {
                _ = conn => {}
                _ = close.notified() => {}
            }
        }
    })
    .await;
}

type Answer = Result<Response<ProxyBody>, Problem>;

async fn handle(
    admin: Arc<Admin>,
    peer: SocketAddr,
    close: Arc<tokio::sync::Notify>,
    req: Request<Incoming>,
) -> Result<Response<events::AdminBody>, Infallible> {
    let answer = match check_host(&admin, &req) {
        Err(p) => Err(p),
        // The event stream and the page are answered here: the stream's body
        // is not a `ProxyBody`, and the page's assets are not JSON.
        Ok(()) if req.uri().path() == "/v1/events" => {
            events::serve(&admin.control, req.method(), close)
        }
        Ok(()) if ui::is_ui_path(req.uri().path()) => {
            ui::serve(req.method(), req.uri().path()).map(|r| r.map(events::AdminBody::Plain))
        }
        Ok(()) if dataset_experiment(req.uri().path()).is_some() => export(&admin, &req)
            .await
            .map(|r| r.map(events::AdminBody::Dataset)),
        Ok(()) => route(&admin, peer, req)
            .await
            .map(|r| r.map(events::AdminBody::Plain)),
    };
    Ok(match answer {
        Ok(r) => r,
        Err(problem) => problem
            .to_response()
            .map(|b| events::AdminBody::Plain(ProxyBody::full(b))),
    })
}

/// `NAME` of `/v1/experiments/NAME/dataset`.
fn dataset_experiment(path: &str) -> Option<&str> {
    let name = path
        .strip_prefix("/v1/experiments/")?
        .strip_suffix("/dataset")?;
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

/// The training-data export: the token is needed (corrections are people's
/// words, often about users' requests), the experiment must be configured.
async fn export(
    admin: &Admin,
    req: &Request<Incoming>,
) -> Result<Response<dataset::DatasetBody>, Problem> {
    if req.method() != Method::GET {
        return Err(Problem::client(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "GET the dataset".into(),
        ));
    }
    authorize(admin, req)?;
    let name = dataset_experiment(req.uri().path()).unwrap_or_default();
    if !admin
        .control
        .experiment_names()
        .await
        .iter()
        .any(|n| n == name)
    {
        return Err(unknown_experiment(name));
    }
    let range = dataset::range(req.uri().query(), crate::clock::now_ms())?;
    Ok(dataset::serve(&admin.control.plane.feedback, name, range))
}

/// 403 for a request whose `Host` names another server (DNS rebinding: a
/// page elsewhere must not reach the admin API through a name it controls).
fn check_host(admin: &Admin, req: &Request<Incoming>) -> Result<(), Problem> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    if let Some(h) = host {
        if !host_is_local(h, admin.listen) {
            return Err(Problem::client(
                StatusCode::FORBIDDEN,
                "foreign-host",
                format!("Host {h:?} does not name this admin listener"),
            ));
        }
    }
    Ok(())
}

async fn route(admin: &Admin, peer: SocketAddr, req: Request<Incoming>) -> Answer {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    // Everything that changes state, and the config (which may hold secrets), needs the token.
    let needs_auth = method != Method::GET || segments.starts_with(&["v1", "config"]);
    let actor_name = if needs_auth {
        authorize(admin, &req)?
    } else {
        String::new()
    };
    let actor = Actor {
        name: actor_name,
        source: peer.to_string(),
    };
    let c = &admin.control;
    match (&method, segments.as_slice()) {
        (&Method::GET, ["metrics"]) => {
            c.refresh_gauges().await;
            // Per-arm means of declared metrics, refreshed at scrape time.
            for ((e, a, m), sums) in c.recorders.metrics.all() {
                if let Some(mean) = sums.mean() {
                    c.telemetry
                        .gauge(
                            "abgate_metric_mean",
                            &[("experiment", &e), ("arm", &a), ("metric", &m)],
                        )
                        .set(mean);
                }
            }
            // A replica that stopped following (its store away) shows its lag
            // growing here, not only when it next catches up.
            if let Some(f) = c.fleet_view() {
                c.telemetry
                    .gauge("abgate_fleet_lag_seconds", &[])
                    .set(f["lag_ms"].as_f64().unwrap_or(0.0) / 1000.0);
            }
            let mut body = c.telemetry.render();
            c.recorders.render_prometheus(&mut body);
            Ok(text(StatusCode::OK, "text/plain; version=0.0.4", body))
        }
        (&Method::GET, ["healthz"]) => Ok(json_ok(&json!({"status": "ok"}))),
        (&Method::GET, ["readyz"]) => Ok(json_ok(&{
            let mut ready =
                json!({"status": "ready", "table_version": c.plane.table.load().version});
            if let Some(fleet) = c.fleet_view() {
                ready["fleet"] = fleet;
            }
            ready
        })),
        (&Method::GET, ["v1", "experiments"]) => {
            let mut list = Vec::new();
            for name in c.experiment_names().await {
                if let Some(v) = c.experiment_view(&name).await {
                    list.push(v);
                }
            }
            Ok(json_ok(&json!({"experiments": list})))
        }
        (&Method::GET, ["v1", "experiments", name, "export"]) => c
            .export(name)
            .await
            .map(|v| json_ok(&v))
            .ok_or_else(|| unknown_experiment(name)),
        (&Method::GET, ["v1", "experiments", name]) => c
            .experiment_view(name)
            .await
            .map(|v| json_ok(&json!(v)))
            .ok_or_else(|| unknown_experiment(name)),
        (&Method::POST, ["v1", "experiments", name, verb]) => {
            let name = name.to_string();
            let action = match *verb {
                "pause" => Action::Pause,
                "resume" => Action::Resume,
                "rollback" => Action::Rollback,
                "promote" => {
                    let body = read_json(req).await?;
                    let arm = body.get("arm").and_then(|a| a.as_str()).ok_or_else(|| {
                        Problem::client(
                            StatusCode::BAD_REQUEST,
                            "bad-request",
                            "promote needs a JSON body {\"arm\": \"NAME\"}".into(),
                        )
                    })?;
                    Action::Promote {
                        arm: arm.to_string(),
                    }
                }
                other => {
                    return Err(Problem::client(
                        StatusCode::NOT_FOUND,
                        "not-found",
                        format!("no action {other:?}; use pause, resume, rollback or promote"),
                    ))
                }
            };
            let id = c.act(&name, action, &actor).await.map_err(action_problem)?;
            let view = c
                .experiment_view(&name)
                .await
                .map_or(json!({}), |v| json!(v));
            Ok(json_ok(&json!({"decision_id": id, "experiment": view})))
        }
        (&Method::POST, ["v1", "feedback"]) => {
            // A label must be traceable to who gave it: a reviewer needs a
            // named token even on a loopback listener that runs without one.
            if !admin.auth.is_configured() {
                return Err(Problem::client(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "reviewer feedback needs admin tokens (ABGATE_ADMIN_TOKEN or admin.token_file) so each label names who gave it".into(),
                ));
            }
            let table = c.plane.table.load_full();
            Ok(crate::proxy::feedback::serve(
                &c.plane.feedback,
                req,
                &table.routes,
                table.feedback_max_body,
                crate::outcomes::feedback::Poster {
                    actor: &actor.name,
                    max_correction: table.feedback_max_correction,
                },
            )
            .await)
        }
        (&Method::GET, ["v1", "decisions"]) => {
            let query = req.uri().query().unwrap_or("");
            let mut experiment = None;
            let mut limit = 50usize;
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                match pair.split_once('=') {
                    Some(("experiment", v)) if !v.is_empty() => experiment = Some(v.to_string()),
                    Some(("limit", v)) => {
                        limit = v.parse().map_err(|_| {
                            Problem::client(
                                StatusCode::BAD_REQUEST,
                                "bad-request",
                                format!("limit must be a whole number, got {v:?}"),
                            )
                        })?
                    }
                    Some(("experiment", _)) => {}
                    _ => {
                        return Err(Problem::client(
                            StatusCode::BAD_REQUEST,
                            "bad-request",
                            format!("unknown query parameter {pair:?}; use experiment= and limit="),
                        ))
                    }
                }
            }
            let decisions = c
                .blocking(move |s| s.decisions(experiment.as_deref(), limit))
                .await
                .map_err(|e| {
                    Problem::internal(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string())
                })?;
            Ok(json_ok(&json!({"decisions": decisions})))
        }
        (&Method::GET, ["v1", "config"]) => {
            let (version, text_body) = c.config_text().await;
            // Shown with its secrets redacted, as the history shows it; the
            // hash is the applied text's (what `If-Match` and the audit name).
            let mut r = json_ok(&json!({
                "version": version,
                "hash": crate::control::text_hash(&text_body),
                "text": crate::config::redact(&text_body),
            }));
            if let Ok(etag) = HeaderValue::from_str(&format!("\"{version}\"")) {
                r.headers_mut().insert(header::ETAG, etag);
            }
            Ok(r)
        }
        (&Method::PUT, ["v1", "config"]) => {
            let expected = if_match(&req)?;
            let bytes = read_body(req).await?;
            let text_body = String::from_utf8(bytes.to_vec()).map_err(|_| {
                Problem::client(
                    StatusCode::BAD_REQUEST,
                    "bad-request",
                    "config must be UTF-8".into(),
                )
            })?;
            let version = c
                .apply_text(text_body, &actor, Some(expected))
                .await
                .map_err(apply_problem)?;
            Ok(with_etag(json_ok(&json!({"version": version})), version))
        }
        (&Method::GET, ["v1", "config", "versions"]) => {
            let q = query(&req, &["limit", "before", "offset"])?;
            let limit = number(&q, "limit")?.unwrap_or(50) as usize;
            let before = number(&q, "before")?;
            let offset = number(&q, "offset")?.unwrap_or(0) as usize;
            let page = c
                .config_versions(before, offset, limit)
                .await
                .map_err(store_problem)?;
            Ok(json_ok(&json!(page)))
        }
        (&Method::GET, ["v1", "config", "versions", n]) => {
            let n = version_number(n)?;
            let rec = c.config_version(n).await.map_err(version_problem)?;
            Ok(json_ok(&json!(rec)))
        }
        (&Method::POST, ["v1", "config", "versions", n, "revert"]) => {
            let n = version_number(n)?;
            let expected = if_match(&req)?;
            let version = c
                .revert(n, &actor, Some(expected))
                .await
                .map_err(apply_problem)?;
            Ok(with_etag(
                json_ok(&json!({"version": version, "reverted_to": n})),
                version,
            ))
        }
        (&Method::GET, ["v1", "experiments", name, "history"]) => c
            .experiment_history(name)
            .await
            .map_err(store_problem)?
            .map(|v| json_ok(&v))
            .ok_or_else(|| unknown_experiment(name)),
        (_, ["metrics" | "healthz" | "readyz"])
        | (_, ["v1", "experiments", ..])
        | (_, ["v1", "decisions" | "config"])
        | (_, ["v1", "config", "versions", ..]) => Err(Problem::client(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            format!("{method} is not allowed on {path}"),
        )),
        _ => Err(Problem::client(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no admin endpoint at {path}"),
        )),
    }
}

fn authorize(admin: &Admin, req: &Request<Incoming>) -> Result<String, Problem> {
    if !admin.auth.is_configured() {
        // Only possible on a loopback listener (checked at startup).
        return Ok("local".to_string());
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    admin.auth.check(presented).ok_or_else(|| {
        Problem::client(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid `Authorization: Bearer <token>` is required".into(),
        )
    })
}

/// The request's `If-Match` (see [`precondition`]): 428 when missing, 400
/// when it is not an entity-tag list.
fn if_match(req: &Request<Incoming>) -> Result<IfMatch, Problem> {
    let lines = req.headers().get_all(header::IF_MATCH);
    if lines.iter().next().is_none() {
        return Err(Problem::client(
            StatusCode::PRECONDITION_REQUIRED,
            "if-match-required",
            "a config change needs `If-Match: \"<version>\"` (the ETag of GET /v1/config) so concurrent edits are not lost".into(),
        ));
    }
    precondition::parse(lines.iter().map(|v| v.as_bytes()))
        .map_err(|e| Problem::client(StatusCode::BAD_REQUEST, "bad-request", e.to_string()))
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, Problem> {
    Limited::new(req.into_body(), MAX_ADMIN_BODY)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Problem::client(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too-large",
                    format!("body over {MAX_ADMIN_BODY} bytes"),
                )
            } else {
                Problem::client(
                    StatusCode::BAD_REQUEST,
                    "bad-request",
                    format!("cannot read body: {e}"),
                )
            }
        })
}

async fn read_json(req: Request<Incoming>) -> Result<serde_json::Value, Problem> {
    let bytes = read_body(req).await?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Problem::client(
            StatusCode::BAD_REQUEST,
            "bad-request",
            format!("invalid JSON: {e}"),
        )
    })
}

/// The Problem for a config change that was not applied.
fn apply_problem(e: ApplyError) -> Problem {
    match e {
        ApplyError::StaleVersion { current, given } => Problem::client(
            StatusCode::PRECONDITION_FAILED,
            "stale-version",
            format!("If-Match {given} does not name the config in force (version {current}, ETag \"{current}\"); GET /v1/config and retry"),
        ),
        ApplyError::Invalid(errors) => Problem::client(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-config",
            format!("{} error(s); the config was rejected whole and the running config stays", errors.0.len()),
        )
        .with("errors", json!(errors.0)),
        ApplyError::UnknownVersion { version, kept } => Problem::client(
            StatusCode::NOT_FOUND,
            "unknown-version",
            format!("no config version {version} is kept; {}", crate::control::history::kept_range(kept)),
        )
        .with("oldest", json!(kept.map(|k| k.0)))
        .with("newest", json!(kept.map(|k| k.1))),
        ApplyError::Store(e) => store_problem(e),
        // Only a file reload reads a file.
        e @ (ApplyError::NoConfigFile | ApplyError::Read { .. }) => {
            Problem::internal(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        }
    }
}

fn version_problem(e: crate::control::history::VersionError) -> Problem {
    use crate::control::history::VersionError;
    match e {
        VersionError::Unknown { version, kept } => {
            apply_problem(ApplyError::UnknownVersion { version, kept })
        }
        VersionError::Store(e) => store_problem(e),
    }
}

fn store_problem(e: crate::store::StoreError) -> Problem {
    if e.is_unavailable() {
        return store_unavailable(&e);
    }
    if let crate::store::StoreError::Conflict(m) = &e {
        return Problem::client(
            StatusCode::CONFLICT,
            "conflict",
            format!("{m}; reload and try again"),
        );
    }
    Problem::internal(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string())
}

/// Nothing was changed, and the same request may succeed in a moment.
fn store_unavailable(e: &crate::store::StoreError) -> Problem {
    Problem::internal(
        StatusCode::SERVICE_UNAVAILABLE,
        "store-unavailable",
        format!("{e}; nothing was changed: send the request again"),
    )
    .retry_after(1)
}

fn with_etag(mut r: Response<ProxyBody>, version: u64) -> Response<ProxyBody> {
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{version}\"")) {
        r.headers_mut().insert(header::ETAG, etag);
    }
    r
}

fn version_number(n: &str) -> Result<u64, Problem> {
    n.parse().map_err(|_| {
        Problem::client(
            StatusCode::BAD_REQUEST,
            "bad-request",
            format!("a config version is a whole number, got {n:?}"),
        )
    })
}

/// The query's `name=value` pairs; a name outside `allowed` is a 400.
fn query<'r>(
    req: &'r Request<Incoming>,
    allowed: &[&str],
) -> Result<Vec<(&'r str, &'r str)>, Problem> {
    let mut out = Vec::new();
    for pair in req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if !allowed.contains(&k) {
            return Err(Problem::client(
                StatusCode::BAD_REQUEST,
                "bad-request",
                format!(
                    "unknown query parameter {pair:?}; use {}",
                    allowed.join("=, ") + "="
                ),
            ));
        }
        out.push((k, v));
    }
    Ok(out)
}

/// The whole-number query parameter `name`, if given (the last one wins).
fn number(q: &[(&str, &str)], name: &str) -> Result<Option<u64>, Problem> {
    match q.iter().rev().find(|(k, _)| *k == name) {
        None => Ok(None),
        Some((_, v)) => v.parse().map(Some).map_err(|_| {
            Problem::client(
                StatusCode::BAD_REQUEST,
                "bad-request",
                format!("{name} must be a whole number, got {v:?}"),
            )
        }),
    }
}

fn unknown_experiment(name: &str) -> Problem {
    Problem::client(
        StatusCode::NOT_FOUND,
        "unknown-experiment",
        format!("no experiment named {name:?}"),
    )
}

fn action_problem(e: ActionError) -> Problem {
    match e {
        ActionError::UnknownExperiment(n) => unknown_experiment(&n),
        ActionError::UnknownArm { .. } => Problem::client(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown-arm",
            e.to_string(),
        ),
        ActionError::Conflict { .. } | ActionError::NotLeader => {
            Problem::client(StatusCode::CONFLICT, "conflict", e.to_string())
        }
        ActionError::Store(s) if s.is_unavailable() => store_unavailable(&s),
        ActionError::Store(s @ crate::store::StoreError::Conflict(_)) => store_problem(s),
        ActionError::Store(_) => {
            Problem::internal(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string())
        }
    }
}

pub(crate) fn text(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json_ok(value: &serde_json::Value) -> Response<ProxyBody> {
    text(StatusCode::OK, "application/json", value.to_string())
}

//! The feedback endpoint, the HTTP half: `POST <feedback path>` on the data
//! plane's listener.
//!
//! Owns: the method check, reading the body within `feedback.max_body`, and
//! mapping what ingestion returns (see `outcomes::feedback`) to statuses and
//! problem bodies: one event is answered with its own status; a batch with
//! 200 and a result per event.
//!
//! Never: validates events or writes them (the domain half does).

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::body::ProxyBody;
use super::problem::Problem;
use crate::outcomes::feedback::{
    ArmOrigin, EventResult, FeedbackError, FeedbackService, Poster, RejectReason, Rejection,
    Submission,
};
use crate::routing::RoutingTable;

/// Serves one feedback request: from a client on the data plane (`actor`
/// `client`), or from a reviewer on the admin listener (the token's name).
pub async fn serve<A: ArmOrigin>(
    service: &FeedbackService,
    req: Request<Incoming>,
    table: &RoutingTable<A>,
    max_body: usize,
    poster: Poster<'_>,
) -> Response<ProxyBody> {
    match answer(service, req, table, max_body, poster).await {
        Ok(resp) => resp,
        Err(p) => p.to_response().map(ProxyBody::full),
    }
}

async fn answer<A: ArmOrigin>(
    service: &FeedbackService,
    req: Request<Incoming>,
    table: &RoutingTable<A>,
    max_body: usize,
    poster: Poster<'_>,
) -> Result<Response<ProxyBody>, Problem> {
    if req.method() != Method::POST {
        return Err(Problem::client(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "POST feedback events".into(),
        ));
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max_body) {
        return Err(too_large(max_body));
    }
    let body = match Limited::new(req.into_body(), max_body).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large(max_body)),
        Err(e) => {
            return Err(Problem::client(
                StatusCode::BAD_REQUEST,
                "malformed",
                format!("cannot read the body: {e}"),
            ))
        }
    };
    let submission = Submission::parse(&body).map_err(|e| submission_problem(&e))?;
    let batch = submission.batch;
    let mut results = service
        .ingest(submission, table, poster)
        .await
        .map_err(|e| submission_problem(&e))?;
    if !batch {
        return match results.pop() {
            Some(EventResult::Rejected(r)) => Err(rejection_problem(&r)),
            Some(result) => Ok(json_response(&json!({"result": result.name()}))),
            None => Err(Problem::client(
                StatusCode::BAD_REQUEST,
                "malformed",
                "no event".into(),
            )),
        };
    }
    let count = |name: &str| results.iter().filter(|r| r.name() == name).count();
    let (accepted, duplicate, rejected) =
        (count("accepted"), count("duplicate"), count("rejected"));
    let results: Vec<Value> = results
        .iter()
        .map(|r| match r {
            EventResult::Rejected(r) => {
                let p = rejection_problem(r);
                json!({
                    "result": "rejected",
                    "status": p.status.as_u16(),
                    "type": p.type_uri(),
                    "detail": p.detail,
                })
            }
            ok => json!({"result": ok.name()}),
        })
        .collect();
    Ok(json_response(&json!({
        "results": results,
        "accepted": accepted,
        "duplicate": duplicate,
        "rejected": rejected,
    })))
}

/// The status each rejection is answered with.
fn rejection_problem(r: &Rejection) -> Problem {
    let status = match r.reason {
        RejectReason::Malformed => StatusCode::BAD_REQUEST,
        RejectReason::UnknownKey | RejectReason::BadToken => StatusCode::UNAUTHORIZED,
        RejectReason::UnknownMetric | RejectReason::OutOfRange => StatusCode::UNPROCESSABLE_ENTITY,
        RejectReason::Expired => StatusCode::GONE,
        RejectReason::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
    };
    Problem::client(status, r.reason.slug(), r.detail.clone())
}

fn submission_problem(e: &FeedbackError) -> Problem {
    match e {
        FeedbackError::Malformed(_) => {
            Problem::client(StatusCode::BAD_REQUEST, "malformed", e.to_string())
        }
        // Nothing was acknowledged: the same post may succeed in a moment.
        FeedbackError::Overloaded => {
            Problem::internal(StatusCode::SERVICE_UNAVAILABLE, "overloaded", e.to_string())
                .retry_after(1)
        }
        FeedbackError::StoreUnavailable => Problem::internal(
            StatusCode::SERVICE_UNAVAILABLE,
            "store-unavailable",
            e.to_string(),
        )
        .retry_after(1),
    }
}

fn too_large(max: usize) -> Problem {
    Problem::client(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too-large",
        format!("the body is over the {max}-byte limit"),
    )
}

fn json_response(v: &Value) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(Bytes::from(v.to_string())));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

//! Request routing and response construction for the mock endpoints.

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{header, HeaderValue, Method, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::Request;
use serde_json::{json, Value};

use super::body::{self, MockBody, SseBody, SsePlan};
use super::decision::Decision;
use super::spec::MockSpec;
use super::state::Shared;

/// Largest request body read (bytes); larger bodies get 413.
pub const MAX_REQUEST_BODY: usize = 10 * 1024 * 1024;

/// Result of handling one request.
pub enum Handled {
    /// Send this response.
    Respond(Response<MockBody>),
    /// Abort the connection without responding.
    Reset,
}

enum Endpoint {
    Health,
    Chat,
    Kserve(String),
    Predict,
    MethodNotAllowed,
    NotFound,
}

fn route(method: &Method, path: &str) -> Endpoint {
    let post = |e: Endpoint| {
        if method == Method::POST {
            e
        } else {
            Endpoint::MethodNotAllowed
        }
    };
    match path {
        "/healthz" if method == Method::GET || method == Method::HEAD => Endpoint::Health,
        "/healthz" => Endpoint::MethodNotAllowed,
        "/v1/chat/completions" => post(Endpoint::Chat),
        "/predict" => post(Endpoint::Predict),
        _ => match path
            .strip_prefix("/v2/models/")
            .and_then(|rest| rest.strip_suffix("/infer"))
        {
            Some(model) if !model.is_empty() && !model.contains('/') => {
                post(Endpoint::Kserve(model.to_string()))
            }
            _ => Endpoint::NotFound,
        },
    }
}

/// The longest a swallowed (`hang_rate`) request is held.
const HANG_CAP: std::time::Duration = std::time::Duration::from_secs(3600);

/// Handles one request: reads (and bounds) the body, draws a [`Decision`], waits the simulated
/// latency, then answers, fails with 500, or asks the connection to be reset.
pub async fn handle(req: Request<Incoming>, shared: &Shared) -> Handled {
    let n = shared.stats.requests.fetch_add(1, Ordering::Relaxed);
    let endpoint = route(req.method(), req.uri().path());
    match endpoint {
        Endpoint::Health => {
            return Handled::Respond(json_response(
                StatusCode::OK,
                &json!({"status": "ok", "backend": shared.spec.name}),
            ))
        }
        Endpoint::NotFound => {
            return Handled::Respond(error_response(StatusCode::NOT_FOUND, "not found"))
        }
        Endpoint::MethodNotAllowed => {
            return Handled::Respond(error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed",
            ))
        }
        _ => {}
    }
    // Read and discard (after a lenient JSON parse) the body, bounded so a client cannot
    // make the mock buffer without limit.
    let body = match Limited::new(req.into_body(), MAX_REQUEST_BODY)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Handled::Respond(error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large",
            ))
        }
        Err(_) => return Handled::Respond(error_response(StatusCode::BAD_REQUEST, "bad body")),
    };
    let request_json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);

    let decision = shared.decider.next();
    if !decision.latency.is_zero() {
        tokio::time::sleep(decision.latency).await;
    }
    if decision.reset {
        shared.stats.resets.fetch_add(1, Ordering::Relaxed);
        return Handled::Reset;
    }
    if decision.hang {
        shared.stats.hung.fetch_add(1, Ordering::Relaxed);
        // Dropped (and so released) when the client closes the connection.
        tokio::time::sleep(HANG_CAP).await;
    }
    let tokens = completion_tokens(&shared.spec, &decision);
    let mut resp = if decision.error {
        shared.stats.errors.fetch_add(1, Ordering::Relaxed);
        error_response(StatusCode::INTERNAL_SERVER_ERROR, "mock injected error")
    } else {
        match endpoint {
            Endpoint::Chat => chat(shared, n, &request_json, &decision, tokens),
            Endpoint::Kserve(model) => kserve(shared, &model, &request_json, &decision),
            _ => predict(shared, &decision),
        }
    };
    if let Some(ct) = shared.spec.content_type.as_deref() {
        let json = resp.headers().get(header::CONTENT_TYPE)
            == Some(&HeaderValue::from_static("application/json"));
        if let (true, false, Ok(v)) = (json, decision.error, HeaderValue::from_str(ct)) {
            resp.headers_mut().insert(header::CONTENT_TYPE, v);
        }
    }
    let tokens = if decision.error { 0 } else { tokens };
    truth_headers(&mut resp, &shared.spec.name, &decision, tokens);
    Handled::Respond(resp)
}

/// This request's completion tokens: `chunks`, scaled by the drawn jitter.
fn completion_tokens(spec: &MockSpec, d: &Decision) -> u32 {
    if d.tokens_scale == 1.0 {
        return spec.stream.chunks;
    }
    ((f64::from(spec.stream.chunks) * d.tokens_scale).round() as u32).max(1)
}

/// `prompt_tokens` from the spec, or about a token per 4 characters of the
/// request's message content (at least 1).
fn prompt_tokens(spec: &MockSpec, request: &Value) -> u32 {
    if spec.prompt_tokens > 0 {
        return spec.prompt_tokens;
    }
    let chars: usize = request
        .get("messages")
        .and_then(Value::as_array)
        .map(|ms| {
            ms.iter()
                .filter_map(|m| m.get("content").and_then(Value::as_str))
                .map(str::len)
                .sum()
        })
        .unwrap_or(0);
    (chars.div_ceil(4) as u32).max(1)
}

fn chat(shared: &Shared, n: u64, request: &Value, d: &Decision, tokens: u32) -> Response<MockBody> {
    let spec = &shared.spec;
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(&spec.name)
        .to_string();
    let id = format!("chatcmpl-{}-{n}", spec.name);
    let stream = request.get("stream").and_then(Value::as_bool) == Some(true);
    let finish = if d.length { "length" } else { "stop" };
    let prompt = prompt_tokens(spec, request);
    if stream {
        let include_usage = request
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            == Some(true);
        let plan = SsePlan {
            tokens,
            first_token: Duration::from_secs_f64(spec.first_token_ms / 1000.0),
            delay: Duration::from_secs_f64(spec.stream.token_delay_ms / 1000.0),
            finish,
            truncate_after: d.truncate.then_some(tokens / 2),
            usage: include_usage.then_some((prompt, tokens)),
        };
        let body = SseBody::new(id, model, plan);
        let mut resp = Response::new(BodyExt::boxed(body));
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return resp;
    }
    let content: Vec<String> = (0..tokens).map(|i| format!("tok{i}")).collect();
    let value = json!({
        "id": id,
        "object": "chat.completion",
        "created": crate::clock::now_ms() / 1000,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content.join(" ")},
            "finish_reason": finish,
        }],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": tokens,
            "total_tokens": prompt + tokens,
        },
    });
    json_response(StatusCode::OK, &padded(value, spec.response_bytes))
}

fn kserve(shared: &Shared, model: &str, request: &Value, d: &Decision) -> Response<MockBody> {
    let mut value = json!({
        "model_name": model,
        "model_version": "1",
        "outputs": [{
            "name": "output0",
            "datatype": "FP32",
            "shape": [1, 2],
            "data": [f64::from(u8::from(d.outcome)), d.reward],
        }],
    });
    if let Some(id) = request.get("id") {
        value["id"] = id.clone();
    }
    json_response(StatusCode::OK, &padded(value, shared.spec.response_bytes))
}

fn predict(shared: &Shared, d: &Decision) -> Response<MockBody> {
    let value = json!({
        "backend": shared.spec.name,
        "prediction": u8::from(d.outcome),
        "score": d.reward,
    });
    json_response(StatusCode::OK, &padded(value, shared.spec.response_bytes))
}

/// Adds a `padding` string field so the serialized object is about `target` bytes.
fn padded(mut value: Value, target: usize) -> Value {
    // `,"padding":""` adds 14 bytes around the padding itself.
    let len = value.to_string().len() + 14;
    if let (Some(obj), true) = (value.as_object_mut(), target > len) {
        obj.insert("padding".into(), Value::String("x".repeat(target - len)));
    }
    value
}

fn truth_headers(resp: &mut Response<MockBody>, name: &str, d: &Decision, tokens: u32) {
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(name) {
        h.insert(super::HEADER_BACKEND, v);
    }
    h.insert(
        super::HEADER_OUTCOME,
        HeaderValue::from_static(if d.outcome { "1" } else { "0" }),
    );
    if let Ok(v) = HeaderValue::from_str(&d.reward.to_string()) {
        h.insert(super::HEADER_REWARD, v);
    }
    h.insert(super::HEADER_OUTPUT_TOKENS, HeaderValue::from(tokens));
    if let Ok(v) = HeaderValue::from_str(&format!("{:.3}", d.latency.as_secs_f64() * 1000.0)) {
        h.insert(super::HEADER_LATENCY, v);
    }
}

fn json_response(status: StatusCode, value: &Value) -> Response<MockBody> {
    let mut resp = Response::new(body::json(value));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn error_response(status: StatusCode, message: &str) -> Response<MockBody> {
    json_response(
        status,
        &json!({"error": {"message": message, "code": status.as_u16()}}),
    )
}

//! Capture of examples over real sockets: which requests are kept (exactly
//! the ones whose token id samples them), what is redacted before anything
//! reaches the disk (grepping the raw database files), JSON and SSE
//! answers, examples merged with feedback in the export, and the disk
//! budget (oldest first).

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::*;
use base64::Engine;
use serde_json::{json, Value};

const SECRET_KEY: &str = "sk-live-7f3a9c";
const EMAIL: &str = "alice.secret@example.com";
const USER: &str = "user-4471-secret";

fn yaml(url: &str, capture: &str) -> String {
    format!(
        "backends: {{ m: {{ url: \"{url}\" }} }}
experiments:
  - name: chat
    match: {{ path_prefix: /v1/ }}
    metrics: [ {{ name: accepted, source: feedback, type: binary }} ]
    arms: [ {{ name: only, backend: m, weight: 100 }} ]
    capture: {capture}
"
    )
}

/// The token id a response's `x-abgate-token` carries (its layout is
/// abgate's: format, key id, experiment, arm, version, time, id, forced, MAC).
fn token_id(token: &str) -> [u8; 16] {
    let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .unwrap();
    let mut at = 1;
    for _ in 0..3 {
        at += 1 + b[at] as usize;
    }
    at += 16;
    b[at..at + 16].try_into().unwrap()
}

fn hex(id: &[u8; 16]) -> String {
    abgate::outcomes::token::id_hex(id)
}

/// A mock model backend and abgate in front of it, capturing as `capture`
/// says, with the state directory to look into.
async fn start(
    mock_spec: &str,
    capture: &str,
) -> (
    abgate::lab::mock::MockServer,
    std::path::PathBuf,
    abgate::app::RunningServer,
) {
    let backend = mock(mock_spec).await;
    let dir = temp_state_dir();
    let server = start_abgate_opts(&yaml(&backend.url(), capture), None, None, &dir).await;
    (backend, dir, server)
}

/// Whether a capture of `percent` (basis points) keeps the request with this id.
fn sampled(id: &[u8; 16], basis_points: u64) -> bool {
    let x = u32::from_be_bytes([id[0], id[1], id[2], id[3]]) as u64;
    x * 10_000 < basis_points << 32
}

async fn chat(data: std::net::SocketAddr, i: usize, stream: bool, pad: usize) -> Answer {
    let body = json!({
        "model": "m",
        "user": USER,
        "stream": stream,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": format!("marker-{i:05} {}", "p".repeat(pad)),
                      "meta": {"email": EMAIL}}],
    });
    admin_call(
        "POST",
        &format!("http://{data}/v1/chat/completions"),
        None,
        &[
            ("content-type", "application/json"),
            ("authorization", &format!("Bearer {SECRET_KEY}")),
            ("x-user-email", EMAIL),
        ],
        &body.to_string(),
    )
    .await
}

async fn export(admin: std::net::SocketAddr) -> Vec<Value> {
    let a = admin_call(
        "GET",
        &format!("http://{admin}/v1/experiments/chat/dataset"),
        None,
        &[],
        "",
    )
    .await;
    assert_eq!(a.status, 200);
    std::str::from_utf8(&a.body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn written(admin: std::net::SocketAddr) -> f64 {
    metric_value(
        &metrics(admin).await,
        "abgate_capture_written_total",
        &[("experiment", "chat")],
    )
}

/// Every file of the capture database, as bytes.
fn raw_capture_files(dir: &std::path::Path) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("captures.db")
        {
            all.extend(std::fs::read(&p).unwrap());
        }
    }
    all
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sampled_requests_are_kept_redacted_and_exported_once_each() {
    let (_backend, dir, server) = start(
        "name=m,chunks=4",
        "{ percent: 30, redact_headers: [x-user-email], drop_fields: [user, email, usage] }",
    )
    .await;
    let (data, admin) = (server.data_addr, server.admin_addr);
    let n = 300;
    let mut want = BTreeSet::new();
    let mut tokens = Vec::new();
    for i in 0..n {
        let a = chat(data, i, i % 2 == 1, 0).await;
        assert_eq!(a.status, 200, "{:?}", a.body);
        let token = a.header("x-abgate-token").unwrap().to_string();
        let id = token_id(&token);
        if sampled(&id, 3000) {
            want.insert(hex(&id));
        }
        tokens.push(token);
    }
    // About 30% (a loose bound: the exact set is checked below).
    assert!((50..=130).contains(&want.len()), "{}", want.len());
    let expect = want.len() as f64;
    eventually(Duration::from_secs(10), "every example written", || async {
        written(admin).await == expect
    })
    .await;
    // The experiment view counts what was kept.
    let view = experiment_json(admin, "chat").await;
    let c = &view["capture"];
    assert_eq!(c["percent"], 30.0, "{c}");
    assert_eq!(c["written"], want.len() as u64, "{c}");
    assert_eq!(c["dropped"]["queue_full"], 0, "{c}");
    assert!(c["stored_bytes"].as_u64().unwrap() > 0, "{c}");
    // Feedback on the first ten requests, captured or not.
    for t in &tokens[..10] {
        let a = admin_call(
            "POST",
            &format!("http://{data}/_abgate/v1/feedback"),
            None,
            &[],
            &json!({"token": t, "metric": "accepted", "value": 1}).to_string(),
        )
        .await;
        assert_eq!(a.status, 200);
    }

    let lines = export(admin).await;
    let ids: Vec<&str> = lines
        .iter()
        .map(|l| l["token_id"].as_str().unwrap())
        .collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "a request exported twice");
    let captured: BTreeSet<String> = lines
        .iter()
        .filter(|l| !l["capture"].is_null())
        .map(|l| l["token_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(captured, want, "exactly the sampled requests are kept");
    // Feedback and example of the same request share its line.
    let with_feedback: Vec<&Value> = lines
        .iter()
        .filter(|l| l["metrics"]["accepted"] == 1.0)
        .collect();
    assert_eq!(with_feedback.len(), 10);
    let first_ten: BTreeSet<String> = tokens[..10].iter().map(|t| hex(&token_id(t))).collect();
    for l in &with_feedback {
        let id = l["token_id"].as_str().unwrap();
        assert!(first_ten.contains(id));
        assert_eq!(!l["capture"].is_null(), want.contains(id), "{l}");
    }
    assert_eq!(lines.len(), want.union(&first_ten).count());

    // What an example holds, redacted.
    let mut seen_stream = false;
    let mut seen_json = false;
    for l in lines.iter().filter(|l| !l["capture"].is_null()) {
        let c = &l["capture"];
        assert_eq!(
            (l["arm"].as_str(), l["backend"].as_str()),
            (Some("only"), Some("m"))
        );
        let req = &c["request"];
        assert_eq!(req["method"], "POST");
        assert_eq!(req["target"], "/v1/chat/completions");
        assert_eq!(req["headers"]["authorization"], "[redacted]");
        assert_eq!(req["headers"]["x-user-email"], "[redacted]");
        assert_eq!(req["headers"]["content-type"], "application/json");
        let body = &req["body"];
        assert!(body["messages"][0]["content"]
            .as_str()
            .unwrap()
            .starts_with("marker-"));
        assert!(
            body.get("user").is_none() && body["messages"][0]["meta"] == json!({}),
            "{body}"
        );
        let resp = &c["response"];
        assert_eq!(resp["status"], 200);
        assert_eq!(resp["complete"], true);
        if body["stream"] == true {
            seen_stream = true;
            let text = resp["body"].as_str().expect("an SSE body is text");
            assert!(
                text.contains("data: {") && text.contains("data: [DONE]"),
                "{text}"
            );
            assert!(!text.contains("\"usage\""), "{text}");
        } else {
            seen_json = true;
            assert_eq!(resp["body"]["object"], "chat.completion", "{resp}");
            assert!(resp["body"].get("usage").is_none());
        }
    }
    assert!(seen_stream && seen_json);

    // Nothing secret reached the disk; what is kept is there to find.
    let raw = raw_capture_files(&dir);
    for secret in [SECRET_KEY, EMAIL, USER, "\"usage\""] {
        assert!(!contains(&raw, secret), "{secret} was written");
    }
    let some = captured.iter().next().unwrap();
    let i = tokens
        .iter()
        .position(|t| &hex(&token_id(t)) == some)
        .unwrap();
    assert!(contains(&raw, &format!("marker-{i:05}")));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captures_stay_within_their_budget_oldest_first() {
    let budget = 64 * 1024;
    let (_backend, dir, server) = start(
        "name=m,chunks=2",
        "{ percent: 100, max_body: 4KiB, max_total: 64KiB }",
    )
    .await;
    let (data, admin) = (server.data_addr, server.admin_addr);
    let n = 200;
    let mut tokens = Vec::new();
    for i in 0..n {
        // Every tenth request is over max_body: kept without its body.
        let pad = if i % 10 == 0 { 5000 } else { 900 };
        let a = chat(data, i, false, pad).await;
        assert_eq!(a.status, 200);
        tokens.push(hex(&token_id(a.header("x-abgate-token").unwrap())));
    }
    eventually(Duration::from_secs(10), "every example written", || async {
        written(admin).await == n as f64
    })
    .await;
    let m = metrics(admin).await;
    let stored = metric_value(&m, "abgate_capture_bytes", &[("experiment", "chat")]);
    assert!(stored > 0.0 && stored <= budget as f64, "{stored}");
    let evicted = metric_value(
        &m,
        "abgate_capture_evicted_total",
        &[("experiment", "chat")],
    );
    assert!(evicted > 100.0, "{evicted}");

    let c = experiment_json(admin, "chat").await["capture"].clone();
    assert_eq!(c["evicted"].as_f64(), Some(evicted), "{c}");
    assert_eq!(c["stored_bytes"].as_f64(), Some(stored), "{c}");
    assert_eq!(c["max_total"], budget as u64, "{c}");
    let lines = export(admin).await;
    let kept: Vec<&str> = lines
        .iter()
        .map(|l| l["token_id"].as_str().unwrap())
        .collect();
    assert_eq!(kept.len() as f64, n as f64 - evicted);
    // The newest ones, in order.
    let newest: Vec<&str> = tokens[n - kept.len()..]
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(kept, newest);
    let docs: usize = lines.iter().map(|l| l["capture"].to_string().len()).sum();
    assert!(docs <= budget, "{docs}");
    for l in &lines {
        let i = tokens
            .iter()
            .position(|t| t == l["token_id"].as_str().unwrap())
            .unwrap();
        let req = &l["capture"]["request"];
        if i % 10 == 0 {
            assert_eq!(
                req["body_omitted"], "larger than capture.max_body (4096 bytes)",
                "{req}"
            );
        } else {
            assert!(req["body"]["messages"].is_array(), "{req}");
        }
    }
    // The files stay near the budget: pages freed by evictions are reused.
    let db = std::fs::metadata(dir.join("captures.db")).unwrap().len();
    assert!(db <= 4 * budget as u64, "captures.db is {db} bytes");
    server.shutdown().await;
}

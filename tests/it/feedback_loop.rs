//! Human corrections and the training-data export over real sockets: labels
//! and corrections posted on the data plane and by reviewers on the admin
//! listener (bearer auth, the token's name recorded), size limits per event,
//! the JSON Lines export and `abgate export`, and exactly-once across a
//! kill -9 of the real binary during a storm of reviewer posts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const REVIEWER: &str = "rev-0123456789";

fn yaml(backend: &FakeBackend) -> String {
    format!(
        "backends: {{ b: {{ url: \"{}\" }} }}\nexperiments:\n  - name: exp\n    metrics: [ {{ name: accepted, source: feedback, type: binary }} ]\n    arms: [ {{ name: only, backend: b, weight: 100 }} ]\n",
        backend.url()
    )
}

async fn tokens(data: std::net::SocketAddr, n: usize) -> Vec<String> {
    let c = client();
    let mut out = Vec::new();
    for _ in 0..n {
        let a = get(&c, &format!("http://{data}/x"), &[]).await;
        out.push(a.header("x-abgate-token").expect("a token").to_string());
    }
    out
}

fn lines(body: &[u8]) -> Vec<Value> {
    std::str::from_utf8(body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The export's lines keyed by the label each test event carries.
fn by_label(lines: &[Value]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for l in lines {
        for g in l["labels"].as_array().unwrap() {
            let label = g["value"].as_str().unwrap().to_string();
            assert!(
                out.insert(label.clone(), l.clone()).is_none(),
                "label {label} exported twice"
            );
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_and_corrections_reach_the_export_with_who_gave_them() {
    let backend = FakeBackend::start("b", Behaviour::Ok).await;
    let server = start_abgate_with(&yaml(&backend), Some(REVIEWER)).await;
    let (data, admin) = (server.data_addr, server.admin_addr);
    let t = tokens(data, 4).await;
    let dp = format!("http://{data}/_abgate/v1/feedback");
    let rv = format!("http://{admin}/v1/feedback");
    let post = |url: &str, token: Option<&'static str>, body: Value| {
        let url = url.to_string();
        async move { admin_call("POST", &url, token, &[], &body.to_string()).await }
    };

    // The data plane: a metric with a label; a correction alone (twice).
    let a = post(
        &dp,
        None,
        json!({"token": t[0], "metric": "accepted", "value": 1, "label": "good"}),
    )
    .await;
    assert_eq!(
        (a.status, a.json()["result"].clone()),
        (200, json!("accepted"))
    );
    let c1 = json!({"token": t[1], "correction": {"answer": "Paris"}});
    assert_eq!(
        post(&dp, None, c1.clone()).await.json()["result"],
        "accepted"
    );
    assert_eq!(post(&dp, None, c1).await.json()["result"], "duplicate");

    // A reviewer: no bearer is 401; with one, the token's name is the actor,
    // and a reviewer's label on an answer a client annotated is kept beside it.
    let no = post(&rv, None, json!({"token": t[1], "label": "x"})).await;
    assert_eq!(no.status, 401, "{:?}", no.body);
    let r = post(
        &rv,
        Some(REVIEWER),
        json!({"token": t[1], "label": "wrong-city", "correction": {"answer": "Lyon"}}),
    )
    .await;
    assert_eq!(
        (r.status, r.json()["result"].clone()),
        (200, json!("accepted"))
    );

    // Limits per event: an oversized label is 413; in a batch, only that
    // event is refused.
    let long = "x".repeat(257);
    let big = post(&rv, Some(REVIEWER), json!({"token": t[2], "label": long})).await;
    assert_eq!(big.status, 413);
    assert!(big.json()["type"].as_str().unwrap().ends_with("too-large"));
    let huge = "y".repeat(17 * 1024);
    let batch = post(
        &rv,
        Some(REVIEWER),
        json!([{"token": t[2], "label": "spam"}, {"token": t[3], "correction": huge}]),
    )
    .await;
    let b = batch.json();
    assert_eq!(batch.status, 200, "{b}");
    assert_eq!(b["results"][0]["result"], "accepted");
    assert_eq!(b["results"][1]["status"], 413);
    let empty = post(&dp, None, json!({"token": t[3]})).await;
    assert_eq!(empty.status, 400);

    // Annotations count towards no statistic.
    let v = experiment_json(admin, "exp").await;
    assert_eq!(arm_of(&v, "only")["metrics"]["accepted"]["n"], 1, "{v:#}");

    // The export: one line per request with anything, each once.
    let url = format!("http://{admin}/v1/experiments/exp/dataset");
    let e = admin_call("GET", &url, Some(REVIEWER), &[], "").await;
    assert_eq!(e.status, 200);
    assert_eq!(e.header("content-type"), Some("application/x-ndjson"));
    let all = lines(&e.body);
    assert_eq!(all.len(), 3, "{all:#?}");
    let l = by_label(&all);
    let good = &l["good"];
    assert_eq!(good["metrics"], json!({"accepted": 1.0}));
    assert_eq!(good["labels"][0]["actor"], "client");
    assert_eq!(
        (
            good["experiment"].clone(),
            good["arm"].clone(),
            good["backend"].clone()
        ),
        (json!("exp"), json!("only"), json!("b"))
    );
    assert!(good["table_version"].as_u64().unwrap() >= 1);
    assert!(good["time"].as_str().unwrap().ends_with('Z'), "{good}");
    assert_eq!(good["token_id"].as_str().unwrap().len(), 32);
    let city = &l["wrong-city"];
    assert_eq!(city["labels"][0]["actor"], "admin");
    let corrections: Vec<(Value, Value)> = city["corrections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["actor"].clone(), c["value"]["answer"].clone()))
        .collect();
    assert_eq!(corrections.len(), 2, "{city}");
    assert!(corrections.contains(&(json!("client"), json!("Paris"))));
    assert!(corrections.contains(&(json!("admin"), json!("Lyon"))));
    assert!(l.contains_key("spam"));

    // Ranges: bad ones are 400, an empty one is empty, the token is needed,
    // the experiment must exist.
    for q in ["since=2h&until=3h", "since=yesterday", "at=1"] {
        let a = admin_call("GET", &format!("{url}?{q}"), Some(REVIEWER), &[], "").await;
        assert_eq!(a.status, 400, "{q}");
    }
    let later = admin_call("GET", &format!("{url}?since=0s"), Some(REVIEWER), &[], "").await;
    assert_eq!((later.status, later.body.len()), (200, 0));
    assert_eq!(admin_call("GET", &url, None, &[], "").await.status, 401);
    let other = format!("http://{admin}/v1/experiments/nope/dataset");
    assert_eq!(
        admin_call("GET", &other, Some(REVIEWER), &[], "")
            .await
            .status,
        404
    );

    // The CLI writes the same lines.
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_abgate"))
            .args([
                "export",
                "exp",
                "--since",
                "1h",
                "--admin",
                &format!("http://{admin}"),
                "--token",
                REVIEWER,
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(by_label(&lines(&out.stdout)), l);
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_abgate"))
        .args([
            "export",
            "exp",
            "--since",
            "soon",
            "--admin",
            &format!("http://{admin}"),
            "--token",
            REVIEWER,
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("400"));
}

/// The export of `exp`, keyed by label (each exported once).
async fn exported(admin: std::net::SocketAddr) -> BTreeMap<String, Value> {
    let a = admin_call(
        "GET",
        &format!("http://{admin}/v1/experiments/exp/dataset"),
        Some(REVIEWER),
        &[],
        "",
    )
    .await;
    assert_eq!(a.status, 200);
    by_label(&lines(&a.body))
}

/// What a reviewer learned about one label.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Fate {
    Acked,
    Refused,
    Unknown,
}

/// A reviewer's post: its answer, or `None` once the server is gone.
async fn post_opt(url: &str, body: String) -> Option<(u16, Value)> {
    let v = admin_call_opt("POST", url, Some(REVIEWER), &body).await?;
    Some((v["_status"].as_u64()? as u16, v))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_reach_the_export_exactly_once_across_a_kill_9() {
    let backend = FakeBackend::start("b", Behaviour::Ok).await;
    let dir = temp_state_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("abgate.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nstate_dir: {}\n{}",
            dir.join("state").display(),
            yaml(&backend)
        ),
    )
    .unwrap();
    let env = [
        ("ABGATE_TOKEN_KEYS", "k1:0123456789abcdef0123456789"),
        ("ABGATE_ADMIN_TOKEN", REVIEWER),
    ];
    let mut p = Proc::start(&cfg, &["--no-watch"], &env);
    let t = tokens(p.data_addr, 240).await;
    // Every 10th label is oversized: refused, and never exported.
    let label = |i: usize| {
        if i % 10 == 9 {
            format!("{i}-{}", "z".repeat(300))
        } else {
            format!("l{i}")
        }
    };
    let fates = Arc::new(Mutex::new(vec![Fate::Unknown; t.len()]));
    let acked = Arc::new(AtomicUsize::new(0));
    let kill_after = rand::rngs::StdRng::seed_from_u64(20261202).random_range(20..150);
    let url = format!("http://{}/v1/feedback", p.admin_addr);
    let mut clients = Vec::new();
    for w in 0..4usize {
        let (t, fates, acked, url) = (t.clone(), fates.clone(), acked.clone(), url.clone());
        clients.push(tokio::spawn(async move {
            let mine: Vec<usize> = (0..t.len()).filter(|i| i % 4 == w).collect();
            for chunk in mine.chunks(if w % 2 == 0 { 1 } else { 3 }) {
                let events: Vec<Value> = chunk
                    .iter()
                    .map(|&i| json!({"token": t[i], "label": label(i), "correction": {"i": i}}))
                    .collect();
                let body = if chunk.len() == 1 {
                    events[0].to_string()
                } else {
                    Value::Array(events).to_string()
                };
                let Some((status, answer)) = post_opt(&url, body).await else {
                    return;
                };
                let results = match answer["results"].as_array() {
                    Some(r) => r.clone(),
                    None => vec![json!({"result": answer["result"], "status": status})],
                };
                let mut f = fates.lock().unwrap();
                for (&i, r) in chunk.iter().zip(&results) {
                    f[i] = match (r["result"].as_str(), r["status"].as_u64()) {
                        (Some("accepted"), _) => {
                            acked.fetch_add(1, Ordering::SeqCst);
                            Fate::Acked
                        }
                        (_, Some(413)) => Fate::Refused,
                        other => panic!("event {i}: unexpected answer {other:?}"),
                    };
                }
            }
        }));
    }
    let a = acked.clone();
    eventually(Duration::from_secs(30), "enough acknowledgements", || {
        let a = a.clone();
        async move { a.load(Ordering::SeqCst) >= kill_after }
    })
    .await;
    p.kill9();
    for c in clients {
        c.await.unwrap();
    }
    let fates = fates.lock().unwrap().clone();

    let p = Proc::start(&cfg, &["--no-watch"], &env);
    // by_label fails on any label exported twice.
    let export = exported(p.admin_addr).await;
    let mut acked_n = 0;
    for (i, fate) in fates.iter().enumerate() {
        let there = export.get(&label(i));
        match fate {
            Fate::Acked => {
                acked_n += 1;
                let line = there.unwrap_or_else(|| panic!("acknowledged label {i} was lost"));
                assert_eq!(line["corrections"][0]["value"]["i"], i);
                assert_eq!(line["labels"][0]["actor"], "admin");
            }
            Fate::Refused => assert!(there.is_none(), "refused label {i} exported"),
            Fate::Unknown => {}
        }
    }
    assert!(acked_n >= kill_after);
    // A retry of everything: the acknowledged ones are duplicates, and the
    // export still holds each label once.
    for (i, fate) in fates.iter().enumerate() {
        let body = json!({"token": t[i], "label": label(i), "correction": {"i": i}}).to_string();
        let (status, r) = post_opt(&format!("http://{}/v1/feedback", p.admin_addr), body)
            .await
            .unwrap();
        match fate {
            Fate::Acked => assert_eq!(r["result"], "duplicate", "label {i}"),
            Fate::Refused => assert_eq!(status, 413),
            Fate::Unknown => {
                let want = if i % 10 == 9 { 413 } else { 200 };
                assert_eq!(status, want, "label {i}");
            }
        }
    }
    let expected = (0..t.len()).filter(|i| i % 10 != 9).count();
    assert_eq!(exported(p.admin_addr).await.len(), expected);
    eprintln!("killed after {kill_after} acks; {acked_n} acked before the kill; {expected} labels exported once each");
}

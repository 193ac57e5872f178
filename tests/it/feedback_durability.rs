//! Acknowledged feedback is never lost and never counted twice: the real binary
//! is killed with SIGKILL while several clients post, then restarted.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const KEYS: &str = "k1:0123456789abcdef0123456789";

/// What a client learned about one event.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Fate {
    /// 2xx "accepted": must be counted exactly once.
    Acked,
    /// A 4xx: must never be counted.
    Refused,
    /// No answer (the process died): may or may not have been committed.
    Unknown,
}

fn config(dir: &std::path::Path, backend: &FakeBackend) -> std::path::PathBuf {
    let path = dir.join("abgate.yaml");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        &path,
        format!(
            "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nstate_dir: {}\nbackends: {{ b: {{ url: \"{}\" }} }}\nexperiments:\n  - name: exp\n    metrics: [ {{ name: rating, source: feedback, type: continuous, min: 0, max: 10 }} ]\n    arms: [ {{ name: only, backend: b, weight: 100 }} ]\n",
            dir.join("state").display(),
            backend.url()
        ),
    )
    .unwrap();
    path
}

async fn rating_n(admin: std::net::SocketAddr) -> u64 {
    let v = get(
        &client(),
        &format!("http://{admin}/v1/experiments/exp"),
        &[],
    )
    .await
    .json();
    v["arms"][0]["metrics"]["rating"]["n"].as_u64().unwrap()
}

async fn post(addr: std::net::SocketAddr, body: String) -> Option<Value> {
    admin_call_opt(
        "POST",
        &format!("http://{addr}/_abgate/v1/feedback"),
        None,
        &body,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_feedback_survives_sigkill_exactly_once() {
    let backend = FakeBackend::start("b", Behaviour::Ok).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261128);
    for round in 0..3 {
        let dir = temp_state_dir();
        let cfg = config(&dir, &backend);
        let keys = [("ABGATE_TOKEN_KEYS", KEYS)];
        let mut p = Proc::start(&cfg, &["--no-watch"], &keys);
        // Tokens come from real routed responses.
        let c = client();
        let mut tokens = Vec::new();
        for _ in 0..300 {
            let a = get(&c, &format!("http://{}/x", p.data_addr), &[]).await;
            tokens.push(a.header("x-abgate-token").unwrap().to_string());
        }
        // Events: every 10th one is invalid (out of range) and must never count.
        let events: Vec<(String, f64)> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), if i % 10 == 9 { 99.0 } else { (i % 10) as f64 }))
            .collect();
        let fates = Arc::new(Mutex::new(vec![Fate::Unknown; events.len()]));
        let acked = Arc::new(AtomicUsize::new(0));
        // Kill after a seeded number of acknowledgements.
        let kill_after = rng.random_range(20..200);
        let data = p.data_addr;
        let mut clients = Vec::new();
        for w in 0..4usize {
            let (events, fates, acked) = (events.clone(), fates.clone(), acked.clone());
            clients.push(tokio::spawn(async move {
                // Each client posts its share: singles and batches of 3.
                let mine: Vec<usize> = (0..events.len()).filter(|i| i % 4 == w).collect();
                for chunk in mine.chunks(if w % 2 == 0 { 1 } else { 3 }) {
                    let body: Vec<Value> = chunk
                        .iter()
                        .map(|&i| json!({"token": events[i].0, "metric": "rating", "value": events[i].1}))
                        .collect();
                    let body = if chunk.len() == 1 { body[0].to_string() } else { Value::Array(body).to_string() };
                    let Some(answer) = post(data, body).await else {
                        return; // the server is gone: remaining events stay Unknown
                    };
                    let results: Vec<Value> = match answer["results"].as_array() {
                        Some(r) => r.clone(),
                        None => vec![answer.clone()],
                    };
                    let mut f = fates.lock().unwrap();
                    for (&i, r) in chunk.iter().zip(&results) {
                        f[i] = match (r["result"].as_str(), r["status"].as_u64().or(r["_status"].as_u64())) {
                            (Some("accepted"), _) => {
                                acked.fetch_add(1, Ordering::SeqCst);
                                Fate::Acked
                            }
                            (Some("duplicate"), _) => panic!("event {i} was new, yet reported duplicate"),
                            (_, Some(s)) if (400..500).contains(&s) => Fate::Refused,
                            other => panic!("unexpected answer {other:?}"),
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

        // Restart on the same state: count what survived.
        let p = Proc::start(&cfg, &["--no-watch"], &keys);
        let counted = rating_n(p.admin_addr).await;
        // Re-post everything: committed events answer "duplicate", others are new.
        let (mut acked_n, mut dup_unknown) = (0u64, 0u64);
        for (i, (token, value)) in events.iter().enumerate() {
            let r = post(
                p.data_addr,
                json!({"token": token, "metric": "rating", "value": value}).to_string(),
            )
            .await
            .unwrap();
            match fates[i] {
                Fate::Acked => {
                    acked_n += 1;
                    assert_eq!(
                        r["result"], "duplicate",
                        "round {round}: acknowledged event {i} was lost"
                    );
                }
                Fate::Refused => assert_eq!(r["_status"], 422, "round {round}: event {i}"),
                Fate::Unknown => {
                    if r["result"] == "duplicate" {
                        dup_unknown += 1;
                    }
                }
            }
        }
        assert!(acked_n as usize >= kill_after, "round {round}");
        // Exactly once: what was counted is the acknowledged events plus the
        // in-flight ones that had committed, each once.
        assert_eq!(
            counted,
            acked_n + dup_unknown,
            "round {round}: counted {counted}, acked {acked_n}, committed-unacked {dup_unknown}"
        );
        eprintln!("round {round}: killed after {kill_after} acks; {acked_n} acked, {dup_unknown} committed without ack, {counted} counted");
    }
}

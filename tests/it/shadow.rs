//! Shadow arms through real sockets: a sticky share of an experiment's
//! requests copied to a shadow backend (marked `x-abgate-shadow: 1`), and
//! nothing the shadow does (hang, reset, garbage, slowness, a full in-flight
//! gate, a large body) reaching the primary's client, answers or counts.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::*;

/// One experiment `exp` on `x-user-id`: all live traffic on `stable`, and a
/// shadow `candidate` with `shadow` settings (YAML flow map content).
fn shadowed(primary: &str, shadow: &str, settings: &str) -> String {
    format!(
        r#"
backends:
  v1: {{ url: "{primary}" }}
  v2: {{ url: "{shadow}" }}
experiments:
  - name: exp
    unit: {{ header: x-user-id }}
    arms:
      - {{ name: stable, backend: v1, weight: 100 }}
      - {{ name: candidate, backend: v2, shadow: {{ {settings} }} }}
"#
    )
}

fn shadow_copies(b: &RecordingBackend) -> Vec<Seen> {
    b.seen.lock().unwrap().clone()
}

async fn skipped(admin: SocketAddr, reason: &str) -> f64 {
    metric_value(
        &metrics(admin).await,
        "abgate_shadow_skipped_total",
        &[("experiment", "exp"), ("reason", reason)],
    )
}

#[tokio::test]
async fn a_sticky_share_is_mirrored_marked_and_the_primary_answer_is_unchanged() {
    let (primary, shadow) = (
        RecordingBackend::start().await,
        RecordingBackend::start().await,
    );
    let server = start_abgate(&shadowed(&primary.url(), &shadow.url(), "percent: 30")).await;
    let plain_primary = RecordingBackend::start().await;
    // The same experiment without its shadow: what the primary's client
    // gets must be the same bytes.
    let plain = start_abgate(&format!(
        r#"
backends: {{ v1: {{ url: "{}" }} }}
experiments:
  - name: exp
    unit: {{ header: x-user-id }}
    arms:
      - {{ name: stable, backend: v1, weight: 100 }}
"#,
        plain_primary.url()
    ))
    .await;
    let c = client();
    let users = 400;
    for round in 0..2 {
        for i in 0..users {
            let user = format!("user-{i}");
            // A client cannot pose as a copy: the live arm never sees the mark.
            let headers = [("x-user-id", user.as_str()), ("x-abgate-shadow", "1")];
            let a = get(
                &c,
                &format!("http://{}/p?r={round}", server.data_addr),
                &headers,
            )
            .await;
            let b = get(
                &c,
                &format!("http://{}/p?r={round}", plain.data_addr),
                &headers,
            )
            .await;
            assert_eq!((a.status, &a.body), (b.status, &b.body), "user-{i}");
            assert_eq!(a.header("x-abgate-arm"), b.header("x-abgate-arm"));
            assert_eq!(a.header("content-length"), b.header("content-length"));
        }
    }
    let total = 2 * users;
    assert_eq!(primary.seen.lock().unwrap().len(), total);
    assert!(primary
        .seen
        .lock()
        .unwrap()
        .iter()
        .all(|s| !s.headers.contains_key("x-abgate-shadow")));
    // Which users are mirrored is a pure function of the salt, the shadow's
    // name and the key (see `routing::bucket`): every mirrored user is
    // mirrored in both rounds, nobody else ever.
    let seed = abgate::routing::bucket::mirror_seed("exp", "candidate");
    let expected: std::collections::BTreeSet<String> = (0..users)
        .map(|i| format!("user-{i}"))
        .filter(|u| abgate::routing::bucket::bucket(seed, u.as_bytes()) < 3000)
        .collect();
    // Copies are sent on their own tasks: wait for all of them.
    eventually(Duration::from_secs(10), "copies of both rounds", || async {
        shadow.seen.lock().unwrap().len() >= 2 * expected.len()
    })
    .await;
    let seen = shadow_copies(&shadow);
    assert_eq!(seen.len(), 2 * expected.len());
    let mut per_user = std::collections::BTreeMap::<String, usize>::new();
    for s in &seen {
        assert_eq!(s.headers["x-abgate-shadow"], "1");
        assert_eq!(s.method, "GET");
        assert_eq!(
            s.headers["host"].to_str().unwrap(),
            shadow.addr.to_string(),
            "the shadow's own Host"
        );
        assert!(s.headers.contains_key("x-forwarded-for"));
        assert_eq!(s.body_len, 0);
        let user = s.headers["x-user-id"].to_str().unwrap().to_string();
        *per_user.entry(user).or_default() += 1;
    }
    assert!(per_user.values().all(|&n| n == 2), "{per_user:?}");
    assert_eq!(
        per_user
            .keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        expected
    );
    let share = expected.len() as f64 / users as f64;
    // 30% of 400 users: sd 2.3 points; a generous band.
    assert!((0.22..=0.38).contains(&share), "{share}");
}

/// Counts of the primary arm in the view: (requests, errors).
async fn primary_counts(admin: SocketAddr, experiment: &str) -> (u64, u64) {
    let v = experiment_json(admin, experiment).await;
    let a = &arm_of(&v, "stable")["assigned"];
    (
        a["requests"].as_u64().unwrap_or(0),
        a["errors"].as_u64().unwrap_or(0),
    )
}

static PRIMARY_MS: AtomicU64 = AtomicU64::new(10);
static SLOW_SHADOW_MS: AtomicU64 = AtomicU64::new(100);

#[tokio::test]
async fn a_broken_shadow_never_touches_the_primary() {
    let _load = decision_load().await;
    let primary = FakeBackend::start("v1", Behaviour::Delayed(&PRIMARY_MS)).await;
    let hang = FakeBackend::start("hang", Behaviour::Hang).await;
    let reset = FakeBackend::start("reset", Behaviour::ResetMidBody).await;
    let garbage = FakeBackend::start("garbage", Behaviour::Garbage).await;
    // Ten times slower than the primary.
    let slow = FakeBackend::start("slow", Behaviour::Delayed(&SLOW_SHADOW_MS)).await;
    let refused = closed_port().await;
    let kinds = ["plain", "hang", "reset", "garbage", "slow", "refused"];
    let mut yaml = format!(
        "backends:\n  v1: {{ url: \"{}\" }}\n  hang: {{ url: \"{}\" }}\n  reset: {{ url: \"{}\" }}\n  garbage: {{ url: \"{}\" }}\n  slow: {{ url: \"{}\" }}\n  refused: {{ url: \"http://{refused}\" }}\nexperiments:\n",
        primary.url(),
        hang.url(),
        reset.url(),
        garbage.url(),
        slow.url()
    );
    for k in kinds {
        yaml.push_str(&format!(
            "  - name: {k}\n    match: {{ path_prefix: /{k} }}\n    unit: {{ header: x-user-id }}\n    arms:\n      - {{ name: stable, backend: v1, weight: 100 }}\n"
        ));
        if k != "plain" {
            yaml.push_str(&format!(
                "      - {{ name: candidate, backend: {k}, shadow: {{ percent: 100, timeout: 2s, max_in_flight: 1000 }} }}\n"
            ));
        }
    }
    let server = start_abgate(&yaml).await;
    let c = client();
    let rounds = 60;
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); kinds.len()];
    // Interleaved, so machine noise hits every experiment alike.
    for i in 0..rounds {
        for (k, kind) in kinds.iter().enumerate() {
            let started = Instant::now();
            let a = get(
                &c,
                &format!("http://{}/{kind}/x", server.data_addr),
                &[("x-user-id", &format!("u{i}"))],
            )
            .await;
            times[k].push(started.elapsed());
            assert_eq!((a.status, &a.body[..]), (200, &b"v1"[..]), "{kind} #{i}");
            assert_eq!(a.header("x-abgate-arm"), Some("stable"));
        }
    }
    let p99 = |t: &mut Vec<Duration>| {
        t.sort();
        t[(t.len() * 99 / 100).min(t.len() - 1)]
    };
    let plain = p99(&mut times[0]);
    for (k, kind) in kinds.iter().enumerate().skip(1) {
        let p = p99(&mut times[k]);
        // Within noise of the run without a shadow: generous, since this
        // machine runs other builds, yet below what a primary waiting on its
        // copy would take (the hung shadow's 2 s timeout, the slow one's
        // 100 ms against the primary's 10 ms).
        assert!(
            p <= plain * 3 + Duration::from_millis(25),
            "{kind}: p99 {p:?} against {plain:?} without a shadow"
        );
        assert_eq!(
            primary_counts(server.admin_addr, kind).await,
            (rounds as u64, 0),
            "{kind}: the primary's counts"
        );
    }
    // The shadows' own failures are on the shadow arm, where they belong.
    for kind in ["reset", "garbage", "refused"] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = experiment_json(server.admin_addr, kind).await;
            let a = arm_of(&v, "candidate");
            if a["role"] == "shadow" && a["assigned"]["errors"].as_u64() == Some(rounds as u64) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{kind}: shadow errors not recorded: {a}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // A hanging shadow is cut by its own timeout and counted as one.
    eventually(Duration::from_secs(10), "hung copies timed out", || async {
        let text = metrics(server.admin_addr).await;
        metric_value(
            &text,
            "abgate_upstream_errors_total",
            &[
                ("experiment", "hang"),
                ("arm", "candidate"),
                ("kind", "response_timeout"),
            ],
        ) == rounds as f64
    })
    .await;
    eventually(Duration::from_secs(10), "slow copies answered", || async {
        let v = experiment_json(server.admin_addr, "slow").await;
        arm_of(&v, "candidate")["assigned"]["requests"].as_u64() == Some(rounds as u64)
    })
    .await;
    assert_eq!(
        primary.requests.load(Ordering::SeqCst),
        rounds * kinds.len()
    );
}

static HUNG: AtomicU64 = AtomicU64::new(60_000);

#[tokio::test]
async fn a_full_gate_drops_copies_counts_them_and_never_blocks_the_primary() {
    let primary = FakeBackend::start("v1", Behaviour::Ok).await;
    let stuck = FakeBackend::start("stuck", Behaviour::Delayed(&HUNG)).await;
    let server = start_abgate(&format!(
        r#"
backends: {{ v1: {{ url: "{}" }}, v2: {{ url: "{}" }} }}
experiments:
  - name: exp
    arms:
      - {{ name: stable, backend: v1, weight: 100 }}
      - {{ name: candidate, backend: v2, shadow: {{ percent: 100, max_in_flight: 3, timeout: 60s }} }}
"#,
        primary.url(),
        stuck.url()
    ))
    .await;
    // Under load (8 at once), with bodies: the stuck shadow holds at most
    // three copies (and their bodies), whatever arrives.
    let n = 200;
    let body = "x".repeat(16 * 1024);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..8 {
        let (addr, body) = (server.data_addr, body.clone());
        tasks.spawn(async move {
            for i in (w..n).step_by(8) {
                let a = admin_call(
                    "POST",
                    &format!("http://{addr}/p"),
                    None,
                    &[("x-user-id", &format!("u{i}"))],
                    &body,
                )
                .await;
                assert_eq!((a.status, &a.body[..]), (200, &b"v1"[..]));
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    // 200 requests against a stuck shadow with a 60 s timeout: done long
    // before any copy could have ended.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    eventually(
        Duration::from_secs(10),
        "copies reached the stuck shadow",
        || async { stuck.requests.load(Ordering::SeqCst) == 3 },
    )
    .await;
    assert_eq!(
        skipped(server.admin_addr, "in_flight").await,
        (n - 3) as f64
    );
    let text = metrics(server.admin_addr).await;
    assert_eq!(
        metric_value(
            &text,
            "abgate_shadow_in_flight",
            &[("experiment", "exp"), ("arm", "candidate")]
        ),
        3.0
    );
    assert!(stuck.connections.load(Ordering::SeqCst) <= 3);
    assert_eq!(primary.requests.load(Ordering::SeqCst), n);
}

#[tokio::test]
async fn bodies_over_max_body_are_skipped_and_counted() {
    let (primary, shadow) = (
        RecordingBackend::start().await,
        RecordingBackend::start().await,
    );
    let server = start_abgate(&shadowed(
        &primary.url(),
        &shadow.url(),
        "percent: 100, max_body: 1KiB",
    ))
    .await;
    let url = format!("http://{}/p", server.data_addr);
    let small = "s".repeat(512);
    let a = admin_call("POST", &url, None, &[("x-user-id", "a")], &small).await;
    assert_eq!(a.status, 200);
    eventually(
        Duration::from_secs(5),
        "the small body mirrored",
        || async { shadow.seen.lock().unwrap().len() == 1 },
    )
    .await;
    let copy = shadow_copies(&shadow).remove(0);
    assert_eq!(copy.body, small.as_bytes());
    assert_eq!(copy.headers["content-length"], "512");
    // Declared too large: skipped before anything is copied.
    let large = "L".repeat(4096);
    let a = admin_call("POST", &url, None, &[("x-user-id", "b")], &large).await;
    assert_eq!(a.status, 200);
    // Chunked, no length: the copy is abandoned as the upload passes 1 KiB.
    let mut raw_req = b"POST /p HTTP/1.1\r\nhost: x\r\nx-user-id: c\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        .to_vec();
    for _ in 0..4 {
        raw_req.extend_from_slice(b"400\r\n");
        raw_req.extend_from_slice(&[b'c'; 1024]);
        raw_req.extend_from_slice(b"\r\n");
    }
    raw_req.extend_from_slice(b"0\r\n\r\n");
    let answer = raw(server.data_addr, &raw_req, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // A chunked body that fits is mirrored whole, sent with its length.
    let fits = b"POST /p HTTP/1.1\r\nhost: x\r\nx-user-id: d\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let answer = raw(server.data_addr, fits, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    eventually(
        Duration::from_secs(5),
        "both large bodies skipped",
        || async { skipped(server.admin_addr, "body_too_large").await == 2.0 },
    )
    .await;
    eventually(
        Duration::from_secs(5),
        "the chunked body mirrored",
        || async { shadow.seen.lock().unwrap().len() == 2 },
    )
    .await;
    let copy = shadow_copies(&shadow).remove(1);
    assert_eq!(copy.body, &b"hello world"[..]);
    assert_eq!(copy.headers["content-length"], "11");
    assert!(!copy.headers.contains_key("transfer-encoding"));
    // The primary got every body whole.
    let lens: Vec<usize> = primary
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.body_len)
        .collect();
    assert_eq!(lens, [512, 4096, 4096, 11]);
    assert_eq!(skipped(server.admin_addr, "in_flight").await, 0.0);
}

#[tokio::test]
async fn shadow_outcomes_are_recorded_and_labelled_shadow() {
    let stable = mock("name=stable,seed=11").await;
    let candidate = mock("name=candidate,seed=12").await;
    let server = start_abgate(&shadowed(&stable.url(), &candidate.url(), "percent: 100")).await;
    let n = 20;
    for i in 0..n {
        let a = admin_call(
            "POST",
            &format!("http://{}/v1/chat/completions", server.data_addr),
            None,
            &[
                ("content-type", "application/json"),
                ("x-user-id", &format!("u{i}")),
            ],
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
        )
        .await;
        assert_eq!(a.status, 200);
        assert_eq!(a.header("x-abgate-arm"), Some("stable"));
    }
    eventually(
        Duration::from_secs(10),
        "shadow outcomes in the view",
        || async {
            let v = experiment_json(server.admin_addr, "exp").await;
            let a = arm_of(&v, "candidate");
            a["assigned"]["requests"].as_u64() == Some(n)
                && a["metrics"]["completion_tokens"]["n"].as_u64() == Some(n)
        },
    )
    .await;
    let v = experiment_json(server.admin_addr, "exp").await;
    let (s, c) = (arm_of(&v, "stable"), arm_of(&v, "candidate"));
    assert_eq!(
        (s["role"].as_str(), c["role"].as_str()),
        (Some("primary"), Some("shadow"))
    );
    assert_eq!(
        (c["weight"].as_f64(), c["mirror_percent"].as_f64()),
        (Some(0.0), Some(100.0))
    );
    assert_eq!(c["baseline"], false);
    assert!(c["assigned"]["ttfb_ms"]["p50"].is_number(), "{c}");
    assert!(c["metrics"]["cost"].is_object(), "{c}");
    assert_eq!(v["removed_arms"].as_array().map(Vec::len), Some(0), "{v}");
    // Prometheus: the shadow's own series, and its role.
    let text = metrics(server.admin_addr).await;
    let arm = |a| [("experiment", "exp"), ("arm", a)];
    assert_eq!(
        metric_value(
            &text,
            "abgate_requests_total",
            &[arm("candidate")[0], arm("candidate")[1], ("class", "2xx")]
        ),
        n as f64
    );
    assert_eq!(
        metric_value(
            &text,
            "abgate_arm_role",
            &[arm("candidate")[0], arm("candidate")[1], ("role", "shadow")]
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &text,
            "abgate_arm_role",
            &[arm("stable")[0], arm("stable")[1], ("role", "primary")]
        ),
        1.0
    );
    // /export labels both and keeps the shadow out of what is analysed.
    let export = get(
        &client(),
        &format!("http://{}/v1/experiments/exp/export", server.admin_addr),
        &[],
    )
    .await
    .json();
    assert_eq!(export["arms"]["stable"]["role"], "primary", "{export}");
    assert!(export["arms"].get("candidate").is_none(), "{export}");
    assert_eq!(export["shadows"]["candidate"]["role"], "shadow", "{export}");
    assert_eq!(export["shadows"]["candidate"]["assigned"], n, "{export}");
    // `abgate analyze` reads past the roles and the shadows: it answers
    // exactly as for the export without them.
    let mut bare = export.clone();
    bare.as_object_mut().unwrap().remove("shadows");
    bare["arms"]["stable"]
        .as_object_mut()
        .unwrap()
        .remove("role");
    let analyze = |v: &serde_json::Value| {
        abgate::stats::analyze::analyze_json(&v.to_string()).map_err(|e| e.to_string())
    };
    assert_eq!(analyze(&export), analyze(&bare));
}

#[tokio::test]
async fn a_copy_gets_the_clients_body_with_the_shadows_own_model_and_credentials() {
    let (primary, shadow) = (
        RecordingBackend::start().await,
        RecordingBackend::start().await,
    );
    let server = start_abgate(&format!(
        r#"
backends:
  v1: {{ url: "{}" }}
  v2: {{ url: "{}", headers: {{ authorization: "Bearer shadow-key" }} }}
experiments:
  - name: exp
    match: {{ path_prefix: /v1/chat/completions, model: gpt-x }}
    unit: {{ body: user }}
    arms:
      - {{ name: stable, backend: v1, weight: 100, model: live-model }}
      - {{ name: candidate, backend: v2, model: shadow-model, shadow: {{ percent: 100 }} }}
"#,
        primary.url(),
        shadow.url()
    ))
    .await;
    let body = r#"{"model":"gpt-x","user":"u1","messages":[{"role":"user","content":"hi"}]}"#;
    let a = admin_call(
        "POST",
        &format!("http://{}/v1/chat/completions", server.data_addr),
        None,
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer client-key"),
        ],
        body,
    )
    .await;
    assert_eq!(a.status, 200);
    eventually(Duration::from_secs(5), "the copy", || async {
        shadow.seen.lock().unwrap().len() == 1
    })
    .await;
    let live = primary.seen.lock().unwrap()[0].clone();
    let copy = shadow_copies(&shadow).remove(0);
    assert_eq!(live.body, body.replace("gpt-x", "live-model").as_bytes());
    assert_eq!(copy.body, body.replace("gpt-x", "shadow-model").as_bytes());
    assert_eq!(live.headers["authorization"], "Bearer client-key");
    assert_eq!(copy.headers["authorization"], "Bearer shadow-key");
    assert_eq!(
        copy.headers["content-length"],
        copy.body.len().to_string().as_str()
    );
    assert_eq!(copy.headers["x-abgate-shadow"], "1");
}

#[tokio::test]
async fn a_copy_still_streaming_at_its_deadline_is_a_shadow_timeout_not_a_client_leaving() {
    let primary = FakeBackend::start("v1", Behaviour::Ok).await;
    // Ten events 200 ms apart: the head comes at once, the body outlives
    // the copy's 300 ms.
    let streaming = FakeBackend::start(
        "streaming",
        Behaviour::Sse {
            events: 10,
            every: Duration::from_millis(200),
        },
    )
    .await;
    let server = start_abgate(&format!(
        r#"
backends: {{ v1: {{ url: "{}" }}, v2: {{ url: "{}" }} }}
experiments:
  - name: exp
    arms:
      - {{ name: stable, backend: v1, weight: 100 }}
      - {{ name: candidate, backend: v2, shadow: {{ percent: 100, timeout: 300ms }} }}
"#,
        primary.url(),
        streaming.url()
    ))
    .await;
    let c = client();
    for i in 0..3 {
        let url = format!("http://{}/p", server.data_addr);
        let a = get(&c, &url, &[("x-user-id", &format!("u{i}"))]).await;
        assert_eq!((a.status, &a.body[..]), (200, &b"v1"[..]));
    }
    let kind = |k: &'static str| {
        let admin = server.admin_addr;
        async move {
            metric_value(
                &metrics(admin).await,
                "abgate_upstream_errors_total",
                &[("experiment", "exp"), ("arm", "candidate"), ("kind", k)],
            )
        }
    };
    eventually(
        Duration::from_secs(10),
        "copies cut by their deadline",
        || async { kind("response_timeout").await == 3.0 },
    )
    .await;
    assert_eq!(kind("client_gone").await, 0.0);
}

static PAIR_PRIMARY_MS: AtomicU64 = AtomicU64::new(5);
static PAIR_SHADOW_MS: AtomicU64 = AtomicU64::new(25);

#[tokio::test]
async fn each_copy_is_paired_with_its_primary_twin() {
    let primary = FakeBackend::start("v1", Behaviour::Delayed(&PAIR_PRIMARY_MS)).await;
    let slower = FakeBackend::start("slower", Behaviour::Delayed(&PAIR_SHADOW_MS)).await;
    let failing = FakeBackend::start("failing", Behaviour::Fail).await;
    let server = start_abgate(&format!(
        r#"
backends: {{ v1: {{ url: "{}" }}, slower: {{ url: "{}" }}, failing: {{ url: "{}" }} }}
experiments:
  - name: slow
    match: {{ path_prefix: /slow }}
    unit: {{ header: x-user-id }}
    arms:
      - {{ name: stable, backend: v1, weight: 100 }}
      - {{ name: candidate, backend: slower, shadow: {{ percent: 100 }} }}
  - name: failing
    match: {{ path_prefix: /failing }}
    unit: {{ header: x-user-id }}
    arms:
      - {{ name: stable, backend: v1, weight: 100 }}
      - {{ name: candidate, backend: failing, shadow: {{ percent: 100 }} }}
"#,
        primary.url(),
        slower.url(),
        failing.url()
    ))
    .await;
    let c = client();
    let n = 20u64;
    for i in 0..n {
        for path in ["slow", "failing"] {
            let url = format!("http://{}/{path}", server.data_addr);
            let a = get(&c, &url, &[("x-user-id", &format!("u{i}"))]).await;
            assert_eq!(a.status, 200);
        }
    }
    let paired = |name: &'static str| {
        let admin = server.admin_addr;
        async move { arm_of(&experiment_json(admin, name).await, "candidate")["paired"].clone() }
    };
    eventually(Duration::from_secs(10), "every copy paired", || async {
        paired("slow").await["pairs"] == n && paired("failing").await["pairs"] == n
    })
    .await;
    let slow = paired("slow").await;
    let d = slow["metrics"]["latency_ms"]["mean_difference"]
        .as_f64()
        .unwrap();
    // 25 ms against 5 ms, per request: the copy is about 20 ms slower.
    assert!((15.0..40.0).contains(&d), "{slow}");
    // The paired test sees it: the confidence sequence excludes 0.
    let t = &slow["metrics"]["latency_ms"]["test"];
    assert!(t["ci"][0].as_f64().unwrap() > 0.0, "{slow}");
    assert!(t["p_value"].as_f64().unwrap() < 0.05, "{slow}");
    assert_eq!(t["n_total"], n, "{slow}");
    assert_eq!(slow["events"]["error"]["shadow_only"], 0, "{slow}");
    assert!(
        slow["events"]["error"].get("test").is_none(),
        "no discordant pair yet: {slow}"
    );
    let failing = paired("failing").await;
    assert_eq!(
        (
            &failing["events"]["error"]["shadow_only"],
            &failing["events"]["error"]["primary_only"]
        ),
        (&serde_json::json!(n), &serde_json::json!(0)),
        "{failing}"
    );
    // Every pair discordant the same way: the sequential McNemar test rejects.
    let t = &failing["events"]["error"]["test"];
    assert_eq!(t["estimate"], 1.0, "{failing}");
    assert!(t["p_value"].as_f64().unwrap() < 0.05, "{failing}");
    // Live arms have no pairs.
    let v = experiment_json(server.admin_addr, "slow").await;
    assert!(arm_of(&v, "stable").get("paired").is_none(), "{v}");
}

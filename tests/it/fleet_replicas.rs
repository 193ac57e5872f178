//! Three replicas on one PostgreSQL, over real sockets: one leader decides on
//! the fleet's counts, every replica follows its decisions, and a leader
//! killed with kill -9 mid-ramp is replaced within `lease_ttl` by one that
//! goes on from the same step with the same evidence.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use abgate::lab::loadgen::RequestKind;
use serde_json::Value;

use crate::pg::PgServer;
use crate::support::*;

const ERROR_GUARDRAIL: &str = "        - { metric: error, max_relative_increase: 0.10 }";

/// Shared by every replica: outcome tokens minted by one verify on another.
const TOKEN_KEYS: &str = "k1:fleet-test-key-0123456789abcdef";

async fn readyz(admin: SocketAddr) -> Option<Value> {
    let r = admin_call_opt("GET", &format!("http://{admin}/readyz"), None, "").await?;
    Some(r["fleet"].clone())
}

/// Waits until exactly one of `admins` leads; returns its index.
async fn the_leader(admins: &[SocketAddr], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let mut leaders = Vec::new();
        for (i, a) in admins.iter().enumerate() {
            if let Some(f) = readyz(*a).await {
                if f["role"] == "leader" {
                    leaders.push(i);
                }
            }
        }
        if leaders.len() == 1 {
            return leaders[0];
        }
        assert!(leaders.len() <= 1, "two leaders at once: {leaders:?}");
        assert!(Instant::now() < deadline, "no replica took the lease");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn canary_weight(view: &Value) -> f64 {
    arm_of(view, "canary")["weight"].as_f64().unwrap_or(-1.0)
}

fn kinds(pg: &PgServer, db: &str) -> Vec<String> {
    pg.query(
        db,
        "SELECT kind FROM decisions WHERE experiment = 'exp' ORDER BY id",
    )
    .lines()
    .map(str::to_string)
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_canary_is_rolled_back_once_and_every_replica_stops_routing_to_it() {
    let Some(pg) = PgServer::start() else { return };
    let _load = decision_load().await;
    let url = pg.database("replicas");
    let stable = mock("name=stable,error_rate=0.01,latency=fixed:1,seed=1").await;
    let canary = mock("name=canary,error_rate=0.30,latency=fixed:1,seed=2").await;
    let preamble = format!("store: {{ kind: postgres, url: \"{url}\", pool: 4 }}");
    let yaml = CanaryYaml {
        preamble: &preamble,
        guardrails: ERROR_GUARDRAIL,
        ..CanaryYaml::default()
    }
    .render(&stable.url(), &canary.url());
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(start_abgate_opts(&yaml, None, Some(TOKEN_KEYS), &temp_state_dir()).await);
    }
    let admins: Vec<SocketAddr> = replicas.iter().map(|r| r.admin_addr).collect();
    let leader = the_leader(&admins, Duration::from_secs(10)).await;
    // The load is spread over the replicas, as a load balancer would: no
    // replica alone sees enough to decide as fast as the fleet's sum.
    let traffic: Vec<_> = replicas
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut spec = open_loop(r.data_addr, RequestKind::Predict, 150.0, 40);
            spec.seed = 100 + i as u64;
            spawn_load(spec)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(40);
    let decided = loop {
        if kinds(&pg, "replicas").iter().any(|k| k == "rollback") {
            break Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "no rollback: {:?}",
            kinds(&pg, "replicas")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Every replica routes nothing to the canary soon after.
    let mut followed = Vec::new();
    for (i, admin) in admins.iter().enumerate() {
        loop {
            let v = experiment_json(*admin, "exp").await;
            if v["state"] == "rolled_back" && canary_weight(&v) == 0.0 {
                followed.push(decided.elapsed());
                break;
            }
            assert!(
                decided.elapsed() < Duration::from_secs(5),
                "replica {i} still routes to the canary: {v:#}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    for t in traffic {
        t.abort();
    }
    // Each follower measured its own swap after the leader's commit.
    for (i, admin) in admins.iter().enumerate() {
        let f = readyz(*admin).await.unwrap();
        assert_eq!(f["lag_ms"], 0, "replica {i}: {f:#}");
        if i != leader {
            let took = f["last_propagation_ms"].as_u64().unwrap();
            assert!(
                took < 1000,
                "replica {i} swapped {took} ms after the commit: {f:#}"
            );
        }
    }
    eprintln!("rollback seen on every replica within {followed:?} of the test's first look");
    // The same as gauges: one leader, no lag, a table version on each.
    let mut leaders = 0.0;
    for admin in &admins {
        let m = metrics(*admin).await;
        leaders += metric_value(&m, "abgate_fleet_leader", &[]);
        assert_eq!(metric_value(&m, "abgate_fleet_lag_seconds", &[]), 0.0);
        assert!(metric_value(&m, "abgate_table_version", &[]) >= 1.0, "{m}");
        assert!(metric_value(&m, "abgate_fleet_revision", &[]) >= 1.0, "{m}");
    }
    assert_eq!(leaders, 1.0);
    // Exactly one decision, by the leader's controller.
    let k = kinds(&pg, "replicas");
    assert_eq!(k.iter().filter(|k| *k == "rollback").count(), 1, "{k:?}");
    assert_eq!(k.iter().filter(|k| *k != "start").count(), 1, "{k:?}");
    // No new request reaches the canary, whichever replica it goes to.
    let before = canary.requests_served();
    for r in &replicas {
        for i in 0..30 {
            get(
                &client(),
                &format!("http://{}/predict", r.data_addr),
                &[("x-user-id", &format!("after-{i}"))],
            )
            .await;
        }
    }
    assert_eq!(canary.requests_served(), before);
    // The fleet's counts: once the last snapshots are in, every replica
    // shows the same totals, and they are what the backends served.
    let served = stable.requests_served() + canary.requests_served();
    let totals = |v: &Value| -> u64 {
        ["stable", "canary"]
            .iter()
            .map(|a| arm_of(v, a)["assigned"]["requests"].as_u64().unwrap_or(0))
            .sum()
    };
    eventually(
        Duration::from_secs(10),
        "every replica counts the fleet's requests",
        || {
            let admins = admins.clone();
            async move {
                let mut all = Vec::new();
                for a in &admins {
                    all.push(totals(&experiment_json(*a, "exp").await));
                }
                all.iter().all(|t| *t == served)
            }
        },
    )
    .await;
    for r in replicas {
        r.shutdown().await;
    }
}

fn proc_yaml(dir: &std::path::Path, url: &str, stable: &str, canary: &str) -> std::path::PathBuf {
    // A ramp slow enough to kill the leader mid-step: each step lasts at
    // least 5 s. Both arms answer alike, so the latency guardrail proves
    // the canary no worse quickly.
    let yaml = CanaryYaml {
        preamble: &format!(
            "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nstate_dir: {}\n\
             store: {{ kind: postgres, url: \"{url}\", pool: 4 }}",
            dir.join("state").display()
        ),
        guardrails: "        - { metric: latency_ms, max_relative_increase: 0.5 }",
        ..CanaryYaml::default()
    }
    .render(stable, canary)
    .replace(
        "step: { min_samples: 40, min_duration: 0s }",
        "step: { min_samples: 200, min_duration: 5s }",
    );
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("abgate.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_of_the_leader_mid_ramp_another_leads_and_the_ramp_goes_on_from_its_step() {
    let Some(pg) = PgServer::start() else { return };
    let _load = decision_load().await;
    let url = pg.database("failover");
    let stable = mock("name=stable,error_rate=0.01,latency=fixed:1,seed=3").await;
    let canary = mock("name=canary,error_rate=0.01,latency=fixed:1,seed=4").await;
    let env = [("ABGATE_TOKEN_KEYS", TOKEN_KEYS)];
    let mut procs: Vec<Option<Proc>> = (0..3)
        .map(|_| {
            let dir = temp_state_dir();
            let cfg = proc_yaml(&dir, &url, &stable.url(), &canary.url());
            Some(Proc::start(&cfg, &["--no-watch"], &env))
        })
        .collect();
    let admins: Vec<SocketAddr> = procs
        .iter()
        .map(|p| p.as_ref().unwrap().admin_addr)
        .collect();
    let datas: Vec<SocketAddr> = procs
        .iter()
        .map(|p| p.as_ref().unwrap().data_addr)
        .collect();
    let leader = the_leader(&admins, Duration::from_secs(10)).await;
    let traffic: Vec<_> = datas
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let mut spec = open_loop(*d, RequestKind::Predict, 150.0, 60);
            spec.seed = 200 + i as u64;
            spawn_load(spec)
        })
        .collect();
    // Mid-ramp: the second step (50 %) has begun and gathered evidence.
    let deadline = Instant::now() + Duration::from_secs(40);
    let before = loop {
        let v = experiment_json(admins[leader], "exp").await;
        let a = &v["analysis"];
        if a["step"] == 2 && a["step_units"].as_u64().unwrap_or(0) >= 150 {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "the ramp never reached step 2: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let units_before = before["analysis"]["step_units"].as_u64().unwrap();
    assert_eq!(kinds(&pg, "failover"), ["start", "advance"]);
    procs[leader].as_mut().unwrap().kill9();
    let killed = Instant::now();
    procs[leader] = None;
    let rest: Vec<SocketAddr> = (0..3).filter(|i| *i != leader).map(|i| admins[i]).collect();
    let next = the_leader(&rest, Duration::from_secs(10)).await;
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_secs(5),
        "took {took:?} to lead again (lease_ttl 5s)"
    );
    eprintln!("a new leader after {took:?}");
    // It goes on from step 2 with the step's evidence, not from scratch.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = experiment_json(rest[next], "exp").await;
        let a = &v["analysis"];
        if a["step"].is_number() {
            assert_eq!(a["step"], 2, "{a:#}");
            let units = a["step_units"].as_u64().unwrap_or(0);
            assert!(
                units >= units_before,
                "the step's evidence restarted: {units} < {units_before}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new leader never looked: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And the ramp ends in one promotion, each step decided once.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !kinds(&pg, "failover").iter().any(|k| k == "promote") {
        assert!(
            Instant::now() < deadline,
            "never promoted: {:?}",
            kinds(&pg, "failover")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for t in traffic {
        t.abort();
    }
    assert_eq!(
        kinds(&pg, "failover"),
        ["start", "advance", "advance", "promote"]
    );
    assert_eq!(
        pg.query(
            "failover",
            "SELECT count(*) FROM decisions WHERE NOT applied"
        ),
        "0\n"
    );
    for p in procs.into_iter().flatten() {
        p.terminate();
    }
}

fn feedback_yaml(url: &str, backend: &FakeBackend) -> String {
    format!(
        r#"store: {{ kind: postgres, url: "{url}", pool: 4 }}
backends: {{ b: {{ url: "{b}" }} }}
experiments:
  - name: exp
    unit: {{ header: x-user-id }}
    metrics:
      - {{ name: accepted, source: feedback, type: binary }}
    arms:
      - {{ name: stable, backend: b, weight: 50 }}
      - {{ name: canary, backend: b, weight: 50 }}
"#,
        b = backend.url()
    )
}

/// Posts one event to a replica's data plane: (status, result, Retry-After).
async fn post_event(data: SocketAddr, token: &str) -> (u16, String, Option<String>) {
    let a = admin_call(
        "POST",
        &format!("http://{data}/_abgate/v1/feedback"),
        None,
        &[],
        &serde_json::json!({"token": token, "metric": "accepted", "value": 1}).to_string(),
    )
    .await;
    let result = a.json()["result"].as_str().unwrap_or("").to_string();
    (
        a.status,
        result,
        a.header("retry-after").map(str::to_string),
    )
}

/// The fleet's `accepted` count as one replica shows it.
async fn accepted_n(admin: SocketAddr) -> u64 {
    let v = experiment_json(admin, "exp").await;
    ["stable", "canary"]
        .iter()
        .map(|a| {
            arm_of(&v, a)["metrics"]["accepted"]["n"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_counts_once_across_the_fleet_and_survives_a_database_restart() {
    let Some(mut pg) = PgServer::start() else {
        return;
    };
    let url = pg.database("feedback");
    let backend = FakeBackend::start("b", Behaviour::Ok).await;
    let yaml = feedback_yaml(&url, &backend);
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(start_abgate_opts(&yaml, None, Some(TOKEN_KEYS), &temp_state_dir()).await);
    }
    let datas: Vec<SocketAddr> = replicas.iter().map(|r| r.data_addr).collect();
    let admins: Vec<SocketAddr> = replicas.iter().map(|r| r.admin_addr).collect();
    // 100 answers, from every replica in turn.
    let mut tokens = Vec::new();
    for i in 0..100 {
        let a = get(
            &client(),
            &format!("http://{}/p", datas[i % 3]),
            &[("x-user-id", &format!("u{i}"))],
        )
        .await;
        tokens.push(a.header("x-abgate-token").expect("a token").to_string());
    }
    // Each event posted to a replica that did not mint its token, and
    // retried on the third: accepted once, a duplicate on the retry.
    for (i, t) in tokens.iter().enumerate().take(90) {
        assert_eq!(
            post_event(datas[(i + 1) % 3], t).await,
            (200, "accepted".into(), None)
        );
        assert_eq!(
            post_event(datas[(i + 2) % 3], t).await.1,
            "duplicate",
            "event {i}"
        );
    }
    assert_eq!(
        pg.query("feedback", "SELECT count(*) FROM feedback"),
        "90\n"
    );
    for a in &admins {
        let a = *a;
        eventually(
            Duration::from_secs(10),
            "every replica counts 90",
            || async move { accepted_n(a).await == 90 },
        )
        .await;
    }

    // The database goes away: requests are served, feedback is refused
    // with Retry-After and never acknowledged.
    pg.stop();
    for (i, t) in tokens.iter().enumerate().skip(90) {
        let a = get(
            &client(),
            &format!("http://{}/p", datas[i % 3]),
            &[("x-user-id", "u1")],
        )
        .await;
        assert_eq!(a.status, 200);
        let (status, _, retry) = post_event(datas[i % 3], t).await;
        assert_eq!((status, retry.as_deref()), (503, Some("1")), "event {i}");
    }
    pg.start_again();
    // The clients retry: each is accepted once the store is back.
    for (i, t) in tokens.iter().enumerate().skip(90) {
        let (data, t) = (datas[(i + 2) % 3], t.clone());
        eventually(
            Duration::from_secs(20),
            "a retried event is accepted",
            || {
                let t = t.clone();
                async move { post_event(data, &t).await.1 == "accepted" }
            },
        )
        .await;
    }
    assert_eq!(
        pg.query("feedback", "SELECT count(*) FROM feedback"),
        "100\n"
    );
    // The counts agree again: every replica shows the fleet's 100 events
    // and the 110 requests the replicas served between them.
    for a in &admins {
        let a = *a;
        eventually(
            Duration::from_secs(15),
            "every replica counts 100",
            || async move { accepted_n(a).await == 100 },
        )
        .await;
    }
    let requests = |v: &Value| -> u64 {
        ["stable", "canary"]
            .iter()
            .map(|a| arm_of(v, a)["assigned"]["requests"].as_u64().unwrap_or(0))
            .sum()
    };
    for a in &admins {
        let a = *a;
        eventually(
            Duration::from_secs(15),
            "every replica counts 110 requests",
            || async move { requests(&experiment_json(a, "exp").await) == 110 },
        )
        .await;
    }
    // The export reads the fleet's log, whichever replica serves it.
    let lines = get(
        &client(),
        &format!("http://{}/v1/experiments/exp/dataset?since=1h", admins[1]),
        &[],
    )
    .await;
    assert_eq!(lines.status, 200);
    let body = String::from_utf8_lossy(&lines.body).to_string();
    assert_eq!(body.lines().count(), 100, "{body}");
    for r in replicas {
        r.shutdown().await;
    }
}

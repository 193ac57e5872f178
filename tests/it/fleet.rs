//! Fleet mode over real sockets: the postgres store keeps what the embedded
//! SQLite store keeps, so a replica started on the same database, with an
//! empty state_dir of its own, finds every change another replica made.
//! Each test runs its own PostgreSQL (see `pg`).

use abgate::store::{
    ConfigRecord, ExperimentPhase, ExperimentState, MemorySnapshot, NewDecision, PgStore,
    ReplicaOptions, SeriesWrite, SqliteStore, Store, WeightStep,
};
use serde_json::json;

use crate::pg::PgServer;
use crate::support::*;

/// The same changes made to a store, and what it reads back after each,
/// as one comparable text.
fn exercise(s: &dyn Store) -> Vec<String> {
    let mut seen = Vec::new();
    let mut note = |what: &str, v: String| seen.push(format!("{what}: {v}"));
    for v in 1..=3u64 {
        s.record_config(&ConfigRecord {
            version: v,
            text: format!("# version {v}\nbackends: {{}}\n"),
            hash: format!("h{v}"),
            applied_at_ms: 1000 + v,
            actor: "ana".into(),
            source: "127.0.0.1:1".into(),
        })
        .unwrap();
    }
    note("latest", format!("{:?}", s.latest_config().unwrap()));
    note(
        "page",
        format!("{:?}", s.config_versions(Some(3), 0, 10).unwrap()),
    );
    note(
        "offset",
        format!("{:?}", s.config_versions(None, 1, 1).unwrap()),
    );
    note(
        "past end",
        format!("{:?}", s.config_versions(None, 5, 10).unwrap()),
    );
    note("v2", format!("{:?}", s.config_version(2).unwrap()));
    note("v9", format!("{:?}", s.config_version(9).unwrap()));
    note("huge", format!("{:?}", s.config_version(u64::MAX).unwrap()));
    note("range", format!("{:?}", s.config_version_range().unwrap()));

    let mut ids = Vec::new();
    for (e, kind) in [("exp", "pause"), ("other", "rollback"), ("exp", "resume")] {
        ids.push(
            s.record_decision(&NewDecision {
                experiment: e.into(),
                kind: kind.into(),
                from_weights: [("a".to_string(), 9000), ("b".to_string(), 1000)].into(),
                to_weights: [("a".to_string(), 10000), ("b".to_string(), 0)].into(),
                reason: json!({"why": "test", "n": 1.5, "nested": {"ü": [1, null]}}),
                actor: "bo".into(),
            })
            .unwrap(),
        );
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    s.mark_applied(ids[0]).unwrap();
    let strip = |mut d: Vec<abgate::store::Decision>| {
        for d in &mut d {
            // Ids and clocks differ by store; their order is compared above.
            d.id = 0;
            d.created_at_ms = 0;
        }
        format!("{d:?}")
    };
    note("unapplied", strip(s.unapplied_decisions().unwrap()));
    note("of exp", strip(s.decisions(Some("exp"), 10).unwrap()));
    note("all, 2", strip(s.decisions(None, 2).unwrap()));

    for e in ["b-exp", "a-exp"] {
        s.save_state(&ExperimentState {
            experiment: e.into(),
            phase: ExperimentPhase::Paused,
            weights: Some([("a".to_string(), 5000)].into()),
            arms_fingerprint: "fp".into(),
            updated_at_ms: 7,
            step: Some(1),
            step_started_ms: 8,
            started_ms: 9,
        })
        .unwrap();
    }
    s.clear_state("b-exp").unwrap();
    note("states", format!("{:?}", s.states().unwrap()));

    for seq in 0..3 {
        s.record_weight_step(&WeightStep {
            experiment: "exp".into(),
            seq,
            layout_key: "k".into(),
            weights: [("a".to_string(), 10000 - seq as u32 * 100)].into(),
            recorded_at_ms: seq,
        })
        .unwrap();
    }
    note("steps", format!("{:?}", s.weight_steps().unwrap()));
    // A step 0 starts the history again.
    s.record_weight_step(&WeightStep {
        experiment: "exp".into(),
        seq: 0,
        layout_key: "k2".into(),
        weights: [("b".to_string(), 10000)].into(),
        recorded_at_ms: 50,
    })
    .unwrap();
    note("restarted", format!("{:?}", s.weight_steps().unwrap()));
    s.clear_weight_steps("exp").unwrap();
    note("cleared", format!("{:?}", s.weight_steps().unwrap()));

    let stats = [
        ("exp".to_string(), "a".to_string(), r#"{"n":1}"#.to_string()),
        ("exp".to_string(), "b".to_string(), r#"{"n":2}"#.to_string()),
    ];
    let runs = [
        ("exp".to_string(), r#"{"run":1}"#.to_string()),
        ("gone".to_string(), r#"{"run":2}"#.to_string()),
    ];
    s.save_snapshot(&MemorySnapshot {
        arm_stats: &stats,
        controller_runs: &runs,
        controlled: Some(&["exp".to_string(), "gone".to_string()]),
    })
    .unwrap();
    // The next snapshot no longer controls `gone`: its run is deleted.
    s.save_snapshot(&MemorySnapshot {
        arm_stats: &stats[..1],
        controller_runs: &[],
        controlled: Some(&["exp".to_string()]),
    })
    .unwrap();
    // A snapshot that does not say what is controlled leaves the runs alone.
    s.save_snapshot(&MemorySnapshot {
        arm_stats: &[],
        controller_runs: &[],
        controlled: None,
    })
    .unwrap();
    let mut a = s.arm_stats().unwrap();
    a.sort();
    note("arm stats", format!("{a:?}"));
    note("runs", format!("{:?}", s.controller_runs().unwrap()));

    let write = |series: &str, replace: bool, first_seq: u64, n: u64| SeriesWrite {
        experiment: "exp".into(),
        series: series.into(),
        meta: format!("{{\"m\":\"{series}\"}}"),
        replace,
        first_seq,
        points: (0..n).map(|k| (k, format!("[{k}]"))).collect(),
    };
    s.save_series(&[write("Zeta", false, 0, 3), write("alpha", false, 0, 2)])
        .unwrap();
    s.save_series(&[write("alpha", false, 2, 2)]).unwrap();
    s.save_series(&[write("Zeta", true, 0, 1)]).unwrap();
    note("series", format!("{:?}", s.series().unwrap()));
    s.clear_series("exp").unwrap();
    note("series cleared", format!("{:?}", s.series().unwrap()));
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_store_reads_back_what_the_sqlite_store_reads_back() {
    let Some(pg) = PgServer::start() else { return };
    let url = pg.database("conformance");
    let dir = temp_state_dir();
    // Store calls block: on the blocking pool, as in the server.
    let (sqlite, postgres) = tokio::task::spawn_blocking(move || {
        let sqlite = exercise(&SqliteStore::open(&dir).unwrap());
        let store = PgStore::open(&url, 2, None, who("r1")).unwrap();
        let postgres = exercise(&store);
        // A second replica shares the database: it applies no migration
        // twice, reads the same records, and keeps its counts apart.
        let again = PgStore::open(&url, 2, None, who("r2")).unwrap();
        assert_eq!(again.config_version_range().unwrap(), Some((1, 3)));
        assert!(again.arm_stats().unwrap().is_empty());
        let read = again.fleet_arm_stats(None).unwrap();
        let mut others = read.rows.clone();
        others.sort();
        assert_eq!(
            others,
            [
                (
                    "r1".to_string(),
                    "exp".to_string(),
                    "a".to_string(),
                    r#"{"n":1}"#.to_string()
                ),
                (
                    "r1".to_string(),
                    "exp".to_string(),
                    "b".to_string(),
                    r#"{"n":2}"#.to_string()
                )
            ]
        );
        assert!(
            store.fleet_arm_stats(None).unwrap().rows.is_empty(),
            "its own rows are not the others'"
        );
        // Read from after they were saved: none of them; from before: both.
        let later = again.fleet_arm_stats(Some(read.read_at_ms + 1)).unwrap();
        assert!(later.rows.is_empty(), "{later:?}");
        assert!(later.read_at_ms >= read.read_at_ms);
        let earlier = again
            .fleet_arm_stats(Some(read.read_at_ms - 60_000))
            .unwrap();
        assert_eq!(earlier.rows.len(), 2);
        // The same next version from two replicas: one wins, one is told.
        let rec = |actor: &str| ConfigRecord {
            version: 4,
            text: "backends: {}\n".into(),
            hash: "h4".into(),
            applied_at_ms: 1,
            actor: actor.into(),
            source: "x".into(),
        };
        store.record_config(&rec("ana")).unwrap();
        let conflict = again.record_config(&rec("bo")).unwrap_err();
        assert!(
            matches!(&conflict, abgate::store::StoreError::Conflict(m) if m.contains("version 4")),
            "{conflict}"
        );
        assert_eq!(again.latest_config().unwrap().unwrap().actor, "ana");
        let _ = std::fs::remove_dir_all(&dir);
        (sqlite, postgres)
    })
    .await
    .unwrap();
    assert_eq!(sqlite.len(), postgres.len());
    for (s, p) in sqlite.iter().zip(&postgres) {
        assert_eq!(s, p);
    }
    assert_eq!(
        pg.query(
            "conformance",
            "SELECT version, name FROM abgate_migrations ORDER BY version"
        ),
        "1\tconfig versions, decisions, states, weight history, saved counts and runs, series\n\
         2\tper-replica saved counts; a revision bumped and notified by every recorded change\n\
         3\tthe fleet's feedback log\n"
    );
}

/// A replica's id and the default lease.
fn who(replica: &str) -> ReplicaOptions {
    ReplicaOptions {
        replica: replica.into(),
        lease_ttl: std::time::Duration::from_secs(5),
    }
}

fn fleet_yaml(url: &str, backend: &FakeBackend, extra: &str) -> String {
    format!(
        r#"store: {{ kind: postgres, url: "{url}", pool: 4 }}
backends:
  b: {{ url: "{b}" }}
experiments:
  - name: exp
    unit: {{ header: x-user-id }}
    arms:
      - {{ name: stable, backend: b, weight: 90 }}
      - {{ name: canary, backend: b, weight: 10 }}
{extra}"#,
        b = backend.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_on_the_same_database_finds_every_change_with_an_empty_state_dir() {
    let Some(pg) = PgServer::start() else { return };
    let url = pg.database("fleet");
    let backend = FakeBackend::start("b", Behaviour::Ok).await;
    let first = start_abgate(&fleet_yaml(&url, &backend, "")).await;
    let admin = first.admin_addr;
    // A config change and a manual action on the first replica.
    let text = with_test_listeners(&fleet_yaml(&url, &backend, "currency: EUR\n"));
    assert_eq!(put_config(admin, None, &text).await, 2);
    let paused = admin_call(
        "POST",
        &format!("http://{admin}/v1/experiments/exp/pause"),
        None,
        &[],
        "",
    )
    .await;
    assert_eq!(paused.status, 200, "{}", paused.json());
    first.shutdown().await;
    assert_eq!(
        pg.query("fleet", "SELECT kind, applied FROM decisions ORDER BY id"),
        "pause\tt\n"
    );

    // Another replica: its own (new, empty) state_dir, the same database.
    let second = start_abgate(&fleet_yaml(&url, &backend, "")).await;
    let admin = second.admin_addr;
    let history = admin_call(
        "GET",
        &format!("http://{admin}/v1/config/versions"),
        None,
        &[],
        "",
    )
    .await
    .json();
    let versions: Vec<u64> = history["versions"]
        .as_array()
        .unwrap_or_else(|| panic!("{history:#}"))
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [2, 1], "{history:#}");
    let config = admin_call("GET", &format!("http://{admin}/v1/config"), None, &[], "").await;
    assert_eq!(config.json()["version"], 2);
    assert_eq!(experiment_json(admin, "exp").await["state"], "paused");
    let decisions = get(
        &client(),
        &format!("http://{admin}/v1/decisions?experiment=exp"),
        &[],
    )
    .await
    .json();
    assert_eq!(decisions["decisions"][0]["kind"], "pause", "{decisions:#}");
    second.shutdown().await;
}

#[tokio::test]
async fn a_store_that_cannot_be_reached_stops_the_start_with_its_reason_and_no_password() {
    let port = closed_port().await.port();
    let yaml = format!(
        "store: {{ kind: postgres, url: \"postgres://abgate:s3cr3t-pw@127.0.0.1:{port}/x\" }}\n"
    );
    let err = try_start_abgate(&yaml, None, None, &temp_state_dir())
        .await
        .err()
        .expect("a store nobody answers for cannot start");
    let msg = format!("{err} / {err:?}");
    assert!(msg.contains("postgres store"), "{msg}");
    assert!(!msg.contains("s3cr3t-pw"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_store_is_down_requests_are_served_changes_refused_and_then_accepted_again() {
    let Some(mut pg) = PgServer::start() else {
        return;
    };
    let url = pg.database("outage");
    let backend = FakeBackend::start("b", Behaviour::Ok).await;
    let server = start_abgate(&fleet_yaml(&url, &backend, "")).await;
    let (data, admin) = (server.data_addr, server.admin_addr);
    let pause = format!("http://{admin}/v1/experiments/exp/pause");
    pg.stop();
    // The data plane never waits for the store.
    for user in 0..20 {
        let a = get(
            &client(),
            &format!("http://{data}/x"),
            &[("x-user-id", &user.to_string())],
        )
        .await;
        assert_eq!(a.status, 200);
    }
    // A change cannot be made durable: it is refused, not acknowledged, and
    // the client is told to send it again.
    let refused = admin_call("POST", &pause, None, &[], "").await;
    assert_eq!(refused.status, 503, "{}", refused.json());
    assert_eq!(
        refused.json()["type"],
        "urn:abgate:problem:store-unavailable"
    );
    assert_eq!(refused.headers["retry-after"], "1");
    assert_eq!(
        refused.headers["content-type"], "application/problem+json",
        "{:?}",
        refused.headers
    );
    // So is a config change.
    let text = with_test_listeners(&fleet_yaml(&url, &backend, "currency: EUR\n"));
    let cfg = format!("http://{admin}/v1/config");
    let put = admin_call("PUT", &cfg, None, &[("if-match", "\"1\"")], &text).await;
    assert_eq!(put.status, 503, "{}", put.json());
    assert_eq!(put.headers["retry-after"], "1");
    assert_eq!(experiment_json(admin, "exp").await["state"], "running");
    // The store returns: the pool replaces its broken connections.
    pg.start_again();
    eventually(
        std::time::Duration::from_secs(20),
        "a pause is accepted once the store is back",
        || {
            let pause = pause.clone();
            async move { admin_call("POST", &pause, None, &[], "").await.status == 200 }
        },
    )
    .await;
    assert_eq!(experiment_json(admin, "exp").await["state"], "paused");
    assert_eq!(
        pg.query("outage", "SELECT kind, applied FROM decisions ORDER BY id"),
        "pause\tt\n"
    );
    assert_eq!(
        pg.query("outage", "SELECT max(version) FROM config_versions"),
        "1\n",
        "the refused PUT left no version"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_store_verifies_the_database_certificate_and_never_falls_back_to_plain_tcp() {
    let Some(pg) = PgServer::start_tls() else {
        return;
    };
    let url = pg.database("tls");
    let ca = pg.ca_file();
    // The whole server: every connection of this replica is TLS.
    let backend = FakeBackend::start("b", Behaviour::Ok).await;
    let yaml = fleet_yaml(&format!("{url}?sslmode=verify-full"), &backend, "").replace(
        ", pool: 4 }",
        &format!(", pool: 4, ca_file: \"{}\" }}", ca.display()),
    );
    let server = start_abgate(&yaml).await;
    let seen = |ssl: bool| {
        pg.query(
            "tls",
            &format!(
                "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
                 WHERE application_name LIKE 'abgate/%' AND ssl = {ssl}"
            ),
        )
    };
    assert_ne!(seen(true).trim(), "0");
    assert_eq!(seen(false).trim(), "0");
    server.shutdown().await;

    let dir = temp_state_dir();
    let stranger = crate::pg::stranger_ca(&dir);
    let plain = url.clone();
    tokio::task::spawn_blocking(move || {
        // A certificate signed by a CA the store does not trust: refused,
        // and `ca_file` alone already demands TLS (no fallback to plain TCP).
        let err = PgStore::open(&plain, 1, Some(&stranger), who("t"))
            .err()
            .expect("an untrusted certificate is refused");
        assert!(err.to_string().contains("certificate"), "{err}");
        // `sslmode=disable` and a CA contradict each other.
        let err = PgStore::open(
            &format!("{plain}?sslmode=disable"),
            1,
            Some(&stranger),
            who("t"),
        )
        .err()
        .expect("contradiction refused");
        assert!(err.to_string().contains("sslmode=disable"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_feedback_log_dedups_and_exports_what_the_embedded_log_does() {
    use abgate::store::feedback::{DatasetSource, FeedbackEvent, FeedbackLog, FeedbackSink};
    let Some(pg) = PgServer::start() else { return };
    let url = pg.database("feedback_conformance");
    let dir = temp_state_dir();
    tokio::task::spawn_blocking(move || {
        // 1,500 requests, three to a millisecond, token ids out of time
        // order, most with two metrics, some labelled or corrected: more
        // rows than one page of the fleet's export, with requests across
        // its page boundaries.
        let mut events: Vec<FeedbackEvent> = Vec::new();
        for i in 0..1500u64 {
            let token_id = format!("{:032x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i);
            let base = FeedbackEvent {
                token_id,
                metric: "accepted".into(),
                experiment: if i % 10 == 0 {
                    "other".into()
                } else {
                    "exp".into()
                },
                arm: if i % 2 == 0 {
                    "stable".into()
                } else {
                    "canary".into()
                },
                value: Some((i % 2) as f64),
                forced: i % 17 == 0,
                issued_at_ms: 1_700_000_000_000 + i / 3,
                table_version: 1 + i % 4,
                actor: "client".into(),
                label: None,
                correction: None,
                backend: Some("b".into()),
                model: (i % 5 == 0).then(|| "m-1".to_string()),
            };
            if i % 3 != 0 {
                events.push(FeedbackEvent {
                    metric: "rating".into(),
                    value: Some((i % 5) as f64 + 0.5),
                    ..base.clone()
                });
            }
            if i % 7 == 0 {
                events.push(FeedbackEvent {
                    metric: "_annotation/ana".into(),
                    value: None,
                    actor: "ana".into(),
                    label: Some(format!("label {i}")),
                    correction: Some(format!("{{\"fixed\": {i}}}")),
                    ..base.clone()
                });
            }
            events.push(base);
        }
        // A retry inside the same batch counts once, the first time.
        events.push(events[5].clone());
        let mut local = FeedbackLog::open(&dir).unwrap();
        let store = PgStore::open(&url, 2, None, who("r1")).unwrap();
        let mut fleet = store.feedback();
        let mut inserted = (Vec::new(), Vec::new());
        for chunk in events.chunks(400) {
            inserted
                .0
                .extend(FeedbackSink::insert_batch(&mut local, chunk).unwrap());
            inserted
                .1
                .extend(FeedbackSink::insert_batch(&mut fleet, chunk).unwrap());
        }
        assert_eq!(inserted.0, inserted.1);
        assert_eq!(inserted.1.iter().filter(|n| !**n).count(), 1);
        // From another replica every event is a duplicate.
        let mut other = PgStore::open(&url, 2, None, who("r2")).unwrap().feedback();
        assert!(FeedbackSink::insert_batch(&mut other, &events[..50])
            .unwrap()
            .iter()
            .all(|n| !n));
        let lines = |source: &dyn DatasetSource, experiment: &str| {
            let mut out = Vec::new();
            source
                .export(
                    experiment,
                    1_700_000_000_010,
                    1_700_000_000_490,
                    &mut |mut r| {
                        // Each store stamps its own receive time.
                        for l in &mut r.labels {
                            l.received_at_ms = 0;
                        }
                        for c in &mut r.corrections {
                            c.received_at_ms = 0;
                        }
                        out.push(serde_json::to_string(&r).unwrap());
                        true
                    },
                )
                .unwrap();
            out
        };
        let embedded = abgate::store::feedback::LocalDataset(local.path().to_path_buf());
        for experiment in ["exp", "other"] {
            let (a, b) = (lines(&embedded, experiment), lines(&fleet, experiment));
            assert!(a.len() > 100, "{}", a.len());
            if experiment == "exp" {
                // A stored row per metric and per annotation.
                let rows: usize = a
                    .iter()
                    .map(|l| {
                        let v: serde_json::Value = serde_json::from_str(l).unwrap();
                        v["metrics"].as_object().unwrap().len()
                            + v["labels"].as_array().unwrap().len()
                    })
                    .sum();
                assert!(rows > 2000, "more rows than a page of 2,000: {rows}");
            }
            assert_eq!(a.len(), b.len(), "{experiment}");
            for (x, y) in a.iter().zip(&b) {
                assert_eq!(x, y, "{experiment}");
            }
        }
        let sorted = |mut t: Vec<abgate::store::feedback::FeedbackTotal>| {
            t.sort_by(|x, y| {
                (&x.experiment, &x.arm, &x.metric).cmp(&(&y.experiment, &y.arm, &y.metric))
            });
            format!("{t:?}")
        };
        assert_eq!(
            sorted(FeedbackSink::sums(&local).unwrap()),
            sorted(FeedbackSink::sums(&fleet).unwrap())
        );
        assert!(
            FeedbackSink::sums(&other).unwrap().is_empty(),
            "r2 accepted none"
        );
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await
    .unwrap();
}

//! The control plane over real sockets: table swaps under load, the admin API,
//! config changes through the API and the watched file, auth, manual actions.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;

/// A full config for a swap (listen addresses in a running server's config only
/// take effect after a restart, so these placeholders change nothing).
fn with_prefix(yaml: &str) -> String {
    format!("listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\n{yaml}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_swaps_under_load_fail_no_request() {
    let (v1, v2, v3) = (
        FakeBackend::start("v1", Behaviour::Ok).await,
        FakeBackend::start("v2", Behaviour::Ok).await,
        FakeBackend::start("v3", Behaviour::Ok).await,
    );
    let server = start_abgate(&two_arm(&v1, &v2, 10)).await;
    let url = format!("http://{}/predict", server.data_addr);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for worker in 0..8 {
        let (url, stop, done) = (url.clone(), stop.clone(), done.clone());
        load.push(tokio::spawn(async move {
            let c = client();
            let mut failures = Vec::new();
            let mut i = 0;
            // Bounded: stops when told, and never runs more than 20,000 requests.
            while !stop.load(Ordering::SeqCst) && i < 2_500 {
                let user = format!("w{worker}-{i}");
                let a = get(&c, &url, &[("x-user-id", &user)]).await;
                let arm = a.header("x-abgate-arm").unwrap_or("").to_string();
                let expected_body = match arm.as_str() {
                    "stable" => "v1",
                    "canary" => "v2",
                    "extra" => "v3",
                    _ => "?",
                };
                if a.status != 200 || a.body != expected_body {
                    failures.push(format!("{} arm={arm} body={:?}", a.status, a.body));
                }
                done.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
            failures
        }));
    }
    let extra = format!("  v3: {{ url: \"{}\" }}\n", v3.url());
    let actor = abgate::control::Actor {
        name: "test".into(),
        source: "test".into(),
    };
    for i in 0..100u32 {
        let yaml = if i % 10 == 5 {
            // Add a backend and a third arm, removed again by the next swap.
            two_arm(&v1, &v2, 10)
                .replace("backends:\n", &format!("backends:\n{extra}"))
                .replace(
                    "      - { name: canary, backend: v2, weight: 10 }",
                    "      - { name: canary, backend: v2, weight: 5 }\n      - { name: extra, backend: v3, weight: 5 }",
                )
        } else {
            two_arm(&v1, &v2, if i % 2 == 0 { 20 } else { 10 })
        };
        server
            .control
            .apply_text(with_prefix(&yaml), &actor, None)
            .await
            .unwrap();
        tokio::task::yield_now().await;
        let before = done.load(Ordering::SeqCst);
        // Let some traffic through each table version.
        eventually(Duration::from_secs(10), "traffic flows", || {
            let done = done.clone();
            async move { done.load(Ordering::SeqCst) >= before + 8 }
        })
        .await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut all_failures = Vec::new();
    for l in load {
        all_failures.extend(l.await.unwrap());
    }
    assert!(
        all_failures.is_empty(),
        "{} failed: {:?}",
        all_failures.len(),
        &all_failures[..all_failures.len().min(5)]
    );
    assert!(done.load(Ordering::SeqCst) >= 800);
    assert!(table_version(server.admin_addr).await >= 101);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_change_opens_no_new_upstream_connections() {
    let (v1, v2) = (
        FakeBackend::start("v1", Behaviour::Ok).await,
        FakeBackend::start("v2", Behaviour::Ok).await,
    );
    let server = start_abgate(&two_arm(&v1, &v2, 50)).await;
    let url = format!("http://{}/p", server.data_addr);
    let c = client();
    // Sequential requests: one pooled connection per backend is enough.
    for i in 0..40 {
        get(&c, &url, &[("x-user-id", &format!("u{i}"))]).await;
    }
    let before = (
        v1.connections.load(Ordering::SeqCst),
        v2.connections.load(Ordering::SeqCst),
    );
    assert_eq!(before, (1, 1));
    let actor = abgate::control::Actor {
        name: "test".into(),
        source: "test".into(),
    };
    for w in [30, 70, 40, 60] {
        server
            .control
            .apply_text(with_prefix(&two_arm(&v1, &v2, w)), &actor, None)
            .await
            .unwrap();
        for i in 0..40 {
            get(&c, &url, &[("x-user-id", &format!("u{i}"))]).await;
        }
    }
    let after = (
        v1.connections.load(Ordering::SeqCst),
        v2.connections.load(Ordering::SeqCst),
    );
    assert_eq!(
        after, before,
        "a pure weight change must keep the warm upstream connections"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_put_is_guarded_validated_and_applied() {
    let (v1, v2) = (
        FakeBackend::start("v1", Behaviour::Ok).await,
        FakeBackend::start("v2", Behaviour::Ok).await,
    );
    let token = "t0ken";
    let server = start_abgate_with(&two_arm(&v1, &v2, 10), Some(token)).await;
    let base = format!("http://{}", server.admin_addr);
    let cfg_url = format!("{base}/v1/config");

    // Reading the config needs the token; it returns text, version and ETag.
    assert_eq!(admin_call("GET", &cfg_url, None, &[], "").await.status, 401);
    assert_eq!(
        admin_call("GET", &cfg_url, Some("wrong"), &[], "")
            .await
            .status,
        401
    );
    let got = admin_call("GET", &cfg_url, Some(token), &[], "").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["version"], 1);
    assert_eq!(got.header("etag"), Some("\"1\""));

    let new_text = two_arm(&v1, &v2, 30);
    // Stale version → 412; missing If-Match → 428; no token → 401.
    let stale = admin_call(
        "PUT",
        &cfg_url,
        Some(token),
        &[("if-match", "\"7\"")],
        &new_text,
    )
    .await;
    assert_eq!(stale.status, 412, "{:?}", stale.body);
    assert_eq!(
        admin_call("PUT", &cfg_url, Some(token), &[], &new_text)
            .await
            .status,
        428
    );
    assert_eq!(
        admin_call("PUT", &cfg_url, None, &[("if-match", "1")], &new_text)
            .await
            .status,
        401
    );

    // Invalid → 422 with every error and its line; the running table stays.
    let table_before = table_version(server.admin_addr).await;
    let invalid = new_text
        .replace("weight: 30", "weight: 300")
        .replace("name: exp", "name: exp\n    colour: red");
    let bad = admin_call(
        "PUT",
        &cfg_url,
        Some(token),
        &[("if-match", "\"1\"")],
        &invalid,
    )
    .await;
    assert_eq!(bad.status, 422);
    let errors = bad.json()["errors"].as_array().unwrap().clone();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors.iter().all(|e| e["line"].as_u64().is_some()));
    assert_eq!(table_version(server.admin_addr).await, table_before);

    // Valid → applied, version 2, visible in the routing table.
    let ok = admin_call(
        "PUT",
        &cfg_url,
        Some(token),
        &[("if-match", "\"1\"")],
        &new_text,
    )
    .await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    assert_eq!(ok.json()["version"], 2);
    let exp = admin_call("GET", &format!("{base}/v1/experiments/exp"), None, &[], "")
        .await
        .json();
    assert_eq!(exp["arms"][1]["weight"], 30.0);
    assert_eq!(exp["config_version"], 2);
    let m = metrics(server.admin_addr).await;
    assert_eq!(
        metric_value(
            &m,
            "abgate_config_reload_total",
            &[("result", "applied"), ("source", "api")]
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &m,
            "abgate_config_reload_total",
            &[("result", "rejected"), ("source", "api")]
        ),
        2.0
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_actions_change_routing_and_are_recorded() {
    let (v1, v2) = (
        FakeBackend::start("v1", Behaviour::Ok).await,
        FakeBackend::start("v2", Behaviour::Ok).await,
    );
    let token = "t";
    let server = start_abgate_with(&two_arm(&v1, &v2, 50), Some(token)).await;
    let base = format!("http://{}", server.admin_addr);
    let data = format!("http://{}/p", server.data_addr);
    let c = client();
    let arms_seen = |n: usize| {
        let (c, data) = (c.clone(), data.clone());
        async move {
            let mut seen = HashSet::new();
            for i in 0..n {
                let a = get(&c, &data, &[("x-user-id", &format!("u{i}"))]).await;
                seen.insert(a.header("x-abgate-arm").unwrap().to_string());
            }
            seen
        }
    };
    assert_eq!(arms_seen(100).await.len(), 2);

    // GET never mutates: a GET on an action path is 405.
    let get_action = admin_call(
        "GET",
        &format!("{base}/v1/experiments/exp/rollback"),
        Some(token),
        &[],
        "",
    )
    .await;
    assert_eq!(get_action.status, 405);
    assert_eq!(arms_seen(100).await.len(), 2);

    assert_eq!(
        admin_call(
            "POST",
            &format!("{base}/v1/experiments/exp/pause"),
            None,
            &[],
            ""
        )
        .await
        .status,
        401
    );
    let paused = admin_call(
        "POST",
        &format!("{base}/v1/experiments/exp/pause"),
        Some(token),
        &[],
        "",
    )
    .await;
    assert_eq!(paused.status, 200);
    assert_eq!(paused.json()["experiment"]["state"], "paused");
    assert_eq!(
        admin_call(
            "POST",
            &format!("{base}/v1/experiments/exp/pause"),
            Some(token),
            &[],
            ""
        )
        .await
        .status,
        409
    );
    let resumed = admin_call(
        "POST",
        &format!("{base}/v1/experiments/exp/resume"),
        Some(token),
        &[],
        "",
    )
    .await;
    assert_eq!(resumed.json()["experiment"]["state"], "running");

    let bad_arm = admin_call(
        "POST",
        &format!("{base}/v1/experiments/exp/promote"),
        Some(token),
        &[],
        r#"{"arm":"nope"}"#,
    )
    .await;
    assert_eq!(bad_arm.status, 422);
    assert_eq!(
        admin_call(
            "POST",
            &format!("{base}/v1/experiments/nope/rollback"),
            Some(token),
            &[],
            ""
        )
        .await
        .status,
        404
    );
    assert_eq!(
        admin_call(
            "POST",
            &format!("{base}/v1/experiments/exp/promote"),
            Some(token),
            &[],
            "not json"
        )
        .await
        .status,
        400
    );

    let rolled = admin_call(
        "POST",
        &format!("{base}/v1/experiments/exp/rollback"),
        Some(token),
        &[],
        "",
    )
    .await;
    assert_eq!(rolled.status, 200);
    assert_eq!(rolled.json()["experiment"]["state"], "rolled_back");
    assert_eq!(arms_seen(100).await, HashSet::from(["stable".to_string()]));
    assert_eq!(
        admin_call(
            "POST",
            &format!("{base}/v1/experiments/exp/promote"),
            Some(token),
            &[],
            r#"{"arm":"canary"}"#
        )
        .await
        .status,
        409
    );

    let history = admin_call(
        "GET",
        &format!("{base}/v1/decisions?experiment=exp&limit=10"),
        None,
        &[],
        "",
    )
    .await
    .json();
    let kinds: Vec<&str> = history["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, vec!["rollback", "resume", "pause"]);
    assert!(history["decisions"][0]["applied"].as_bool().unwrap());
    assert_eq!(history["decisions"][0]["to_weights"]["stable"], 10000);
    assert_eq!(
        admin_call(
            "GET",
            &format!("{base}/v1/decisions?bogus=1"),
            None,
            &[],
            ""
        )
        .await
        .status,
        400
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_hosts_are_refused_by_the_admin_api() {
    let v1 = FakeBackend::start("v1", Behaviour::Ok).await;
    let server = start_abgate(&two_arm(&v1, &v1, 10)).await;
    let resp = raw(
        server.admin_addr,
        b"GET /v1/experiments HTTP/1.1\r\nhost: evil.example.com\r\nconnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    let ok = get(
        &client(),
        &format!("http://{}/v1/experiments", server.admin_addr),
        &[],
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["experiments"][0]["name"], "exp");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watched_file_applies_valid_changes_and_rejects_invalid_ones() {
    let (v1, v2) = (
        FakeBackend::start("v1", Behaviour::Ok).await,
        FakeBackend::start("v2", Behaviour::Ok).await,
    );
    let dir = temp_state_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("abgate.yaml");
    let prefix = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nstate_dir: {}\n",
        dir.join("state").display()
    );
    let write = |text: String| {
        // Replace atomically, as editors and config management do.
        let tmp = dir.join("abgate.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    };
    write(prefix.clone() + &two_arm(&v1, &v2, 10));
    let server = abgate::app::start(abgate::app::StartOptions {
        config_text: std::fs::read_to_string(&path).unwrap(),
        config_path: Some(path.clone()),
        watch_file: true,
        admin_token: None,
        token_keys: None,
    })
    .await
    .unwrap();
    // The canary's weight in force, in percent.
    let admin = server.admin_addr;
    let weight = || async move {
        arm_of(&experiment_json(admin, "exp").await, "canary")["weight"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(weight().await, 10.0);
    write(prefix.clone() + &two_arm(&v1, &v2, 25));
    eventually(Duration::from_secs(10), "file change applied", || async {
        weight().await == 25.0
    })
    .await;

    write(prefix.clone() + &two_arm(&v1, &v2, 25).replace("weight: 25", "weight: 26"));
    let addr = server.admin_addr;
    eventually(
        Duration::from_secs(10),
        "invalid file rejected",
        || async move {
            metric_value(
                &metrics(addr).await,
                "abgate_config_reload_total",
                &[("result", "rejected"), ("source", "file")],
            ) >= 1.0
        },
    )
    .await;
    assert_eq!(
        weight().await,
        25.0,
        "an invalid file must not change the running table"
    );
    // Traffic still flows.
    let a = get(
        &client(),
        &format!("http://{}/p", server.data_addr),
        &[("x-user-id", "u")],
    )
    .await;
    assert_eq!(a.status, 200);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_match_is_a_strong_entity_tag_comparison() {
    let (v1, v2) = (
        FakeBackend::start("v1", Behaviour::Ok).await,
        FakeBackend::start("v2", Behaviour::Ok).await,
    );
    let server = start_abgate(&two_arm(&v1, &v2, 10)).await;
    let url = format!("http://{}/v1/config", server.admin_addr);
    let put = |if_match: &'static str, canary: u32| {
        let (url, text) = (url.clone(), two_arm(&v1, &v2, canary));
        async move {
            let a = admin_call("PUT", &url, None, &[("if-match", if_match)], &text).await;
            (a.status, String::from_utf8_lossy(&a.body).into_owned())
        }
    };
    // Well-formed entity-tags that do not name the version in force are a
    // failed precondition (RFC 9110 §13.1.1), not a malformed request.
    for tag in [r#""stale-0""#, r#""7""#, r#""01""#, r#""v1""#] {
        let (status, body) = put(tag, 20).await;
        assert_eq!(status, 412, "If-Match: {tag}: {body}");
    }
    // Weak tags never match: the comparison is strong.
    let (status, body) = put(r#"W/"1""#, 20).await;
    assert_eq!(status, 412, "{body}");
    // A list matches when any strong tag names the version in force.
    let (status, body) = put(r#"W/"1", "stale-0", "1""#, 20).await;
    assert_eq!(status, 200, "{body}");
    // `*` matches any current config.
    let (status, body) = put("*", 30).await;
    assert_eq!(status, 200, "{body}");
    // The bare version number the README always documented stays accepted.
    let (status, body) = put("3", 40).await;
    assert_eq!(status, 200, "{body}");
    // Only a header that is not an entity-tag at all is a bad request.
    for bad in [
        "stale-0",
        r#""unterminated"#,
        r#"W/4"#,
        r#""4", x"#,
        r#"* , "4""#,
        "",
    ] {
        let (status, body) = put(bad, 50).await;
        assert_eq!(status, 400, "If-Match: {bad:?}: {body}");
        assert!(body.contains("entity-tag"), "{body}");
    }
    let got = admin_call("GET", &url, None, &[], "").await;
    assert_eq!(got.json()["version"], 4);
    assert_eq!(
        arm_of(&experiment_json(server.admin_addr, "exp").await, "canary")["weight"],
        40.0
    );
    server.shutdown().await;
}

/// A server started from a watched file in `dir` (atomically replaced by
/// `write`, as editors and config management do).
struct Watched {
    server: abgate::app::RunningServer,
    path: std::path::PathBuf,
    prefix: String,
}

impl Watched {
    async fn start(dir: &std::path::Path, body: &str) -> Watched {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("abgate.yaml");
        let prefix = format!(
            "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nstate_dir: {}\n",
            dir.join("state").display()
        );
        let w = |p: &std::path::Path, t: &str| {
            let tmp = p.with_extension("yaml.tmp");
            std::fs::write(&tmp, t).unwrap();
            std::fs::rename(&tmp, p).unwrap();
        };
        w(&path, &(prefix.clone() + body));
        let server = abgate::app::start(abgate::app::StartOptions {
            config_text: std::fs::read_to_string(&path).unwrap(),
            config_path: Some(path.clone()),
            watch_file: true,
            admin_token: None,
            token_keys: None,
        })
        .await
        .unwrap();
        Watched {
            server,
            path,
            prefix,
        }
    }

    fn write(&self, body: &str) {
        let tmp = self.path.with_extension("yaml.tmp");
        std::fs::write(&tmp, self.prefix.clone() + body).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }

    /// Reads the file as `cat`, an editor opening it or a backup tool do.
    fn read_like_an_operator(&self) {
        use std::io::Read;
        for _ in 0..3 {
            let _ = std::fs::read_to_string(&self.path).unwrap();
            let mut f = std::fs::File::open(&self.path).unwrap();
            let mut buf = Vec::new();
            f.read_to_end(&mut buf).unwrap();
        }
    }

    /// File reloads counted so far, whatever their result.
    async fn file_reloads(&self) -> f64 {
        metric_value(
            &metrics(self.server.admin_addr).await,
            "abgate_config_reload_total",
            &[("source", "file")],
        )
    }

    /// Rewrites the file with the bytes it already holds (config management
    /// re-asserting it): a write the watcher must look at, so once it was
    /// counted every event before it (the reads) has been handled too.
    async fn barrier(&self) {
        let before = self.file_reloads().await;
        let same = std::fs::read_to_string(&self.path).unwrap();
        let tmp = self.path.with_extension("yaml.tmp");
        std::fs::write(&tmp, same).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
        eventually(
            Duration::from_secs(10),
            "the watcher looked at the file",
            || async move { self.file_reloads().await > before },
        )
        .await;
    }

    async fn config_version(&self) -> u64 {
        admin_call(
            "GET",
            &format!("http://{}/v1/config", self.server.admin_addr),
            None,
            &[],
            "",
        )
        .await
        .json()["version"]
            .as_u64()
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_the_watched_file_never_undoes_an_api_change_a_decision_or_a_manual_action() {
    let (v1, v2) = (
        FakeBackend::start("v1", Behaviour::Ok).await,
        FakeBackend::start("v2", Behaviour::Ok).await,
    );
    let dir = temp_state_dir();
    let w = Watched::start(&dir, &two_arm(&v1, &v2, 10)).await;
    let admin = w.server.admin_addr;
    let canary = || async move {
        arm_of(&experiment_json(admin, "exp").await, "canary")["weight"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(w.config_version().await, 1);

    // The API change wins while the file is unchanged.
    assert_eq!(
        put_config(admin, None, &(w.prefix.clone() + &two_arm(&v1, &v2, 50))).await,
        2
    );
    w.read_like_an_operator();
    w.barrier().await;
    assert_eq!(
        w.config_version().await,
        2,
        "reading the file re-applied it"
    );
    assert_eq!(canary().await, 50.0);

    // So does a controller decision.
    let to: abgate::store::Weights =
        [("stable".to_string(), 2000), ("canary".to_string(), 8000)].into();
    w.server
        .control
        .controller_decide(
            "exp",
            abgate::control::DecisionKind::Hold,
            to,
            serde_json::json!({"summary": "held by the test"}),
        )
        .await
        .unwrap();
    w.read_like_an_operator();
    w.barrier().await;
    assert_eq!(
        canary().await,
        80.0,
        "a reload of the unchanged file undid a decision"
    );

    // So does a manual action.
    let rolled = admin_call(
        "POST",
        &format!("http://{admin}/v1/experiments/exp/rollback"),
        None,
        &[],
        "",
    )
    .await;
    assert_eq!(rolled.status, 200);
    w.read_like_an_operator();
    w.barrier().await;
    let e = experiment_json(admin, "exp").await;
    assert_eq!(e["state"], "rolled_back", "{e}");
    assert_eq!(canary().await, 0.0);
    assert_eq!(w.config_version().await, 2);

    // The file wins again once its own content changes.
    w.write(&two_arm(&v1, &v2, 25));
    eventually(
        Duration::from_secs(10),
        "the edited file applied",
        || async { canary().await == 25.0 },
    )
    .await;
    assert_eq!(w.config_version().await, 3);
    let m = metrics(admin).await;
    assert_eq!(
        metric_value(
            &m,
            "abgate_config_reload_total",
            &[("result", "applied"), ("source", "file")]
        ),
        1.0,
        "{m}"
    );
    w.server.shutdown().await;
}

/// An A/B/n experiment over four backends: the baseline `base` and the
/// treatments `t1`, `t2`, `t3`, with weights in percent.
fn four_arm(b: &[FakeBackend], w: [u32; 4]) -> String {
    format!(
        r#"
backends:
  b0: {{ url: "{}" }}
  b1: {{ url: "{}" }}
  b2: {{ url: "{}" }}
  b3: {{ url: "{}" }}
experiments:
  - name: exp
    unit: {{ header: x-user-id }}
    arms:
      - {{ name: base, backend: b0, weight: {} }}
      - {{ name: t1, backend: b1, weight: {} }}
      - {{ name: t2, backend: b2, weight: {} }}
      - {{ name: t3, backend: b3, weight: {} }}
"#,
        b[0].url(),
        b[1].url(),
        b[2].url(),
        b[3].url(),
        w[0],
        w[1],
        w[2],
        w[3]
    )
}

/// The arm that serves each of `users` users, asked over the data plane.
async fn arms_of_users(data: std::net::SocketAddr, users: usize) -> Vec<String> {
    let c = client();
    let mut arms = Vec::with_capacity(users);
    for i in 0..users {
        let a = get(
            &c,
            &format!("http://{data}/p"),
            &[("x-user-id", &format!("user-{i}"))],
        )
        .await;
        assert_eq!(a.status, 200);
        arms.push(a.header("x-abgate-arm").unwrap().to_string());
    }
    arms
}

/// Asserts that every user who moved left an arm in `fell` for an arm in
/// `rose`; returns how many moved.
fn moved_only(before: &[String], after: &[String], fell: &[&str], rose: &[&str]) -> usize {
    let mut moved = 0;
    for (i, (b, a)) in before.iter().zip(after).enumerate() {
        if b != a {
            assert!(
                fell.contains(&b.as_str()) && rose.contains(&a.as_str()),
                "user-{i} moved from {b} to {a}; only {fell:?} -> {rose:?} may move"
            );
            moved += 1;
        }
    }
    moved
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zeroing_a_non_adjacent_treatment_moves_only_its_users_and_a_restart_moves_nobody() {
    let mut backends = Vec::new();
    for name in ["b0", "b1", "b2", "b3"] {
        backends.push(FakeBackend::start(name, Behaviour::Ok).await);
    }
    let dir = temp_state_dir();
    let yaml = four_arm(&backends, [25, 25, 25, 25]);
    let server = start_abgate_opts(&yaml, None, None, &dir).await;
    const USERS: usize = 400;
    let start = arms_of_users(server.data_addr, USERS).await;
    let t2_users = start.iter().filter(|a| *a == "t2").count();
    assert!(
        (60..=140).contains(&t2_users),
        "{t2_users} of {USERS} on t2"
    );

    // The controller stops the harmed t2, which is not next to the baseline:
    // its share goes to the baseline, and no user of t1 or t3 may move.
    let to: abgate::store::Weights = [("base", 5000), ("t1", 2500), ("t2", 0), ("t3", 2500)]
        .into_iter()
        .map(|(a, w)| (a.to_string(), w))
        .collect();
    server
        .control
        .controller_decide(
            "exp",
            abgate::control::DecisionKind::RollbackArm,
            to,
            serde_json::json!({"arm": "t2", "summary": "t2 harms the error rate"}),
        )
        .await
        .unwrap();
    let after_rollback = arms_of_users(server.data_addr, USERS).await;
    assert_eq!(
        moved_only(&start, &after_rollback, &["t2"], &["base"]),
        t2_users
    );

    // A config edit of weights only is a weight change like any other: the
    // baseline falls 50 -> 40, t1 rises 25 -> 35; only baseline users move, into t1.
    let url = format!("http://{}/v1/config", server.admin_addr);
    let version = admin_call("GET", &url, None, &[], "").await.json()["version"].clone();
    let edit = admin_call(
        "PUT",
        &url,
        None,
        &[("if-match", &format!("\"{version}\""))],
        &with_prefix(&four_arm(&backends, [40, 35, 0, 25])),
    )
    .await;
    assert_eq!(edit.status, 200, "{:?}", edit.body);
    let after_edit = arms_of_users(server.data_addr, USERS).await;
    let moved = moved_only(&after_rollback, &after_edit, &["base"], &["t1"]);
    // About 10% of 400 users move; none or all would be a broken layout.
    assert!((15..=70).contains(&moved), "{moved} moved");
    server.shutdown().await;

    // A restart replays the recorded weight history: everyone keeps their arm.
    let server = start_abgate_opts(&yaml, None, None, &dir).await;
    let after_restart = arms_of_users(server.data_addr, USERS).await;
    assert_eq!(moved_only(&after_edit, &after_restart, &[], &[]), 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_history_is_listed_shown_redacted_reverted_and_told_per_experiment() {
    let (v1, v2) = (
        FakeBackend::start("v1", Behaviour::Ok).await,
        FakeBackend::start("v2", Behaviour::Ok).await,
    );
    let tok = Some("tok");
    // A header match on a credential: its value must never be shown.
    let with_secret = |canary| {
        two_arm(&v1, &v2, canary).replace(
            "    unit:",
            "    match: { headers: [ { name: x-api-key, exact: live-123 } ] }\n    unit:",
        )
    };
    let server = start_abgate_with(&with_secret(10), tok).await;
    let admin = server.admin_addr;
    let base = format!("http://{admin}/v1/config/versions");
    assert_eq!(
        put_config(admin, tok, &with_prefix(&with_secret(30))).await,
        2
    );
    assert_eq!(
        put_config(admin, tok, &with_prefix(&with_secret(40))).await,
        3
    );
    let call = |method: &'static str, url: String, headers: Vec<(&'static str, String)>| async move {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        admin_call(method, &url, tok, &h, "").await
    };

    // The list: newest first, paginated; a page past the end is empty.
    assert_eq!(admin_call("GET", &base, None, &[], "").await.status, 401);
    let page = call("GET", base.clone(), vec![]).await;
    assert_eq!(page.status, 200);
    let page = page.json();
    let versions: Vec<u64> = page["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, vec![3, 2, 1]);
    assert_eq!(page["versions"][2]["actor"], "startup");
    let current = call("GET", format!("http://{admin}/v1/config"), vec![])
        .await
        .json();
    assert_eq!(page["versions"][0]["hash"], current["hash"]);
    assert!(page["versions"][0]["applied_at_ms"].as_u64().unwrap() > 0);
    assert!(page["versions"][0]["source"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    let first = call("GET", format!("{base}?limit=2"), vec![]).await.json();
    assert_eq!(first["versions"].as_array().unwrap().len(), 2);
    assert_eq!(first["next_before"], 2);
    let second = call("GET", format!("{base}?limit=2&before=2"), vec![])
        .await
        .json();
    assert_eq!(second["versions"][0]["version"], 1);
    assert_eq!(second["next_before"], serde_json::Value::Null);
    for past_the_end in ["?before=1", "?offset=10", "?before=1&limit=5"] {
        let a = call("GET", format!("{base}{past_the_end}"), vec![]).await;
        assert_eq!(a.status, 200, "{past_the_end}");
        assert_eq!(
            a.json()["versions"],
            serde_json::json!([]),
            "{past_the_end}"
        );
        assert_eq!(a.json()["newest"], 3);
    }
    for bad in ["?limit=x", "?bogus=1", "?before=-1"] {
        assert_eq!(
            call("GET", format!("{base}{bad}"), vec![]).await.status,
            400,
            "{bad}"
        );
    }

    // One version: its text with the secret redacted.
    let v2_text = call("GET", format!("{base}/2"), vec![]).await;
    assert_eq!(v2_text.status, 200);
    let text = v2_text.json()["text"].as_str().unwrap().to_string();
    assert!(text.contains("weight: 30"), "{text}");
    assert!(text.contains("exact: REDACTED"), "{text}");
    assert!(!text.contains("live-123"), "{text}");
    let unknown = call("GET", format!("{base}/99"), vec![]).await;
    assert_eq!(unknown.status, 404);
    assert!(unknown.json()["detail"]
        .as_str()
        .unwrap()
        .contains("versions 1 to 3 are kept"));

    // Revert: If-Match guarded, applied as a new version, through the validator.
    let revert = format!("{base}/1/revert");
    assert_eq!(call("POST", revert.clone(), vec![]).await.status, 428);
    let stale = call("POST", revert.clone(), vec![("if-match", "\"2\"".into())]).await;
    assert_eq!(stale.status, 412);
    let done = call("POST", revert.clone(), vec![("if-match", "\"3\"".into())]).await;
    assert_eq!(done.status, 200, "{:?}", done.body);
    assert_eq!(done.json()["version"], 4);
    assert_eq!(done.header("etag"), Some("\"4\""));
    assert_eq!(
        arm_of(&experiment_json(admin, "exp").await, "canary")["weight"],
        10.0
    );
    let listed = call("GET", format!("{base}?limit=1"), vec![]).await.json();
    let v4 = &listed["versions"][0];
    assert!(
        v4["source"]
            .as_str()
            .unwrap()
            .contains("revert of version 1"),
        "{v4}"
    );
    let v1_hash =
        call("GET", format!("{base}?before=2"), vec![]).await.json()["versions"][0]["hash"].clone();
    assert_eq!(v4["hash"], v1_hash);
    let gone = call(
        "POST",
        format!("{base}/42/revert"),
        vec![("if-match", "\"4\"".into())],
    )
    .await;
    assert_eq!(gone.status, 404);
    let g = gone.json();
    assert!(
        g["detail"]
            .as_str()
            .unwrap()
            .contains("versions 1 to 4 are kept"),
        "{g}"
    );
    assert_eq!(
        (g["oldest"].clone(), g["newest"].clone()),
        (1.into(), 4.into())
    );

    // The experiment's lineage: each version that changed it, then the rollback.
    let rolled = admin_call(
        "POST",
        &format!("http://{admin}/v1/experiments/exp/rollback"),
        tok,
        &[],
        "",
    )
    .await;
    assert_eq!(rolled.status, 200);
    let h = get(
        &client(),
        &format!("http://{admin}/v1/experiments/exp/history"),
        &[],
    )
    .await;
    assert_eq!(h.status, 200);
    let lineage = h.json()["lineage"].as_array().unwrap().clone();
    let causes: Vec<(String, serde_json::Value)> = lineage
        .iter()
        .map(|e| {
            let id = if e["cause"] == "config" {
                e["config_version"].clone()
            } else {
                e["kind"].clone()
            };
            (e["cause"].as_str().unwrap().to_string(), id)
        })
        .collect();
    assert_eq!(
        causes,
        vec![
            ("config".into(), 1.into()),
            ("config".into(), 2.into()),
            ("config".into(), 3.into()),
            ("config".into(), 4.into()),
            ("decision".into(), "rollback".into()),
        ]
    );
    assert_eq!(lineage[0]["change"], "added");
    assert_eq!(
        lineage[0]["baseline"],
        serde_json::json!({"arm": "stable", "backend": "v1"})
    );
    assert_eq!(lineage[4]["serving_all"], "stable");
    assert_eq!(lineage[4]["baseline"]["backend"], "v1");
    let none = get(
        &client(),
        &format!("http://{admin}/v1/experiments/nope/history"),
        &[],
    )
    .await;
    assert_eq!(none.status, 404);
    server.shutdown().await;
}

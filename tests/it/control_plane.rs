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

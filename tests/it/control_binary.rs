//! The real binary: durability across kill -9, SIGHUP reloads, refusing an
//! unauthenticated public admin listener, and the CLI against a running server.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_abgate");

fn write_config(dir: &Path, body: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("abgate.yaml");
    let text = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nstate_dir: {}\n{body}",
        dir.join("state").display()
    );
    let tmp = dir.join("abgate.yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

async fn experiment(admin: std::net::SocketAddr) -> serde_json::Value {
    get(
        &client(),
        &format!("http://{admin}/v1/experiments/exp"),
        &[],
    )
    .await
    .json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_survives_kill_9_and_restart() {
    let (v1, v2) = two_backends().await;
    let dir = temp_state_dir();
    let cfg = write_config(&dir, &two_arm(&v1, &v2, 50));
    let mut p = Proc::start(&cfg, &["--no-watch"], &[("ABGATE_ADMIN_TOKEN", "tok")]);
    let rolled = admin_call(
        "POST",
        &format!("http://{}/v1/experiments/exp/rollback", p.admin_addr),
        Some("tok"),
        &[],
        "",
    )
    .await;
    assert_eq!(rolled.status, 200, "{:?}", rolled.body);
    p.kill9();

    // Same file, same state_dir: the recorded rollback wins over the file's 50/50.
    let p = Proc::start(&cfg, &["--no-watch"], &[("ABGATE_ADMIN_TOKEN", "tok")]);
    let e = experiment(p.admin_addr).await;
    assert_eq!(e["state"], "rolled_back", "{e}");
    assert_eq!(e["arms"][1]["weight"], 0.0);
    let c = client();
    for i in 0..50 {
        let a = get(
            &c,
            &format!("http://{}/p", p.data_addr),
            &[("x-user-id", &format!("u{i}"))],
        )
        .await;
        assert_eq!(a.header("x-abgate-arm"), Some("stable"));
    }
    let d = get(
        &c,
        &format!("http://{}/v1/decisions?experiment=exp", p.admin_addr),
        &[],
    )
    .await
    .json();
    assert_eq!(d["decisions"][0]["kind"], "rollback");
    assert_eq!(d["decisions"][0]["applied"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_valid_file_and_keeps_serving_on_an_invalid_one() {
    let (v1, v2) = two_backends().await;
    let dir = temp_state_dir();
    let cfg = write_config(&dir, &two_arm(&v1, &v2, 10));
    let p = Proc::start(&cfg, &["--no-watch"], &[]);
    write_config(&dir, &two_arm(&v1, &v2, 40));
    p.signal("-HUP");
    let admin = p.admin_addr;
    eventually(
        Duration::from_secs(10),
        "SIGHUP applied the new weights",
        || async move { experiment(admin).await["arms"][1]["weight"] == 40.0 },
    )
    .await;
    write_config(
        &dir,
        &two_arm(&v1, &v2, 40).replace("name: canary", "name: stable"),
    );
    p.signal("-HUP");
    eventually(
        Duration::from_secs(10),
        "SIGHUP rejection counted",
        || async move {
            metric_value(
                &metrics(admin).await,
                "abgate_config_reload_total",
                &[("result", "rejected"), ("source", "sighup")],
            ) == 1.0
        },
    )
    .await;
    assert_eq!(experiment(admin).await["arms"][1]["weight"], 40.0);
    let a = get(
        &client(),
        &format!("http://{}/p", p.data_addr),
        &[("x-user-id", "u")],
    )
    .await;
    assert_eq!(a.status, 200);
}

#[test]
fn a_public_admin_listener_without_a_token_refuses_to_start() {
    let dir = temp_state_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("abgate.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:0\nadmin: {{ listen: 0.0.0.0:0 }}\nstate_dir: {}\n",
            dir.join("s").display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .env_remove("ABGATE_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not loopback and no admin token"), "{err}");
}

fn cli(admin: std::net::SocketAddr, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .args(["--admin", &format!("http://{admin}"), "--token", "tok"])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_drives_a_running_server() {
    let (v1, v2) = two_backends().await;
    let dir = temp_state_dir();
    let cfg = write_config(&dir, &two_arm(&v1, &v2, 10));
    let p = Proc::start(&cfg, &["--no-watch"], &[("ABGATE_ADMIN_TOKEN", "tok")]);
    let c = client();
    for i in 0..20 {
        get(
            &c,
            &format!("http://{}/p", p.data_addr),
            &[("x-user-id", &format!("u{i}"))],
        )
        .await;
    }
    let admin = p.admin_addr;
    let (code, out, err) = tokio::task::spawn_blocking(move || cli(admin, &["status"]))
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("exp  state=running"), "{out}");
    assert!(
        out.contains("stable (baseline)") && out.contains("90%"),
        "{out}"
    );

    let (code, out, _) = tokio::task::spawn_blocking(move || cli(admin, &["pause", "exp"]))
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert!(out.contains("now paused"), "{out}");
    let (code, _, err) = tokio::task::spawn_blocking(move || cli(admin, &["pause", "exp"]))
        .await
        .unwrap();
    assert_eq!(code, 1, "pausing twice is refused");
    assert!(err.starts_with("409"), "{err}");

    let (code, out, _) = tokio::task::spawn_blocking(move || cli(admin, &["rollback", "exp"]))
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert!(out.contains("rolled_back"), "{out}");

    // A bad file: errors printed with lines, nothing sent, nothing changed.
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        two_arm(&v1, &v2, 10).replace("weight: 10", "weight: 11"),
    )
    .unwrap();
    let bad_arg = bad.display().to_string();
    let (code, _, err) =
        tokio::task::spawn_blocking(move || cli(admin, &["config", "apply", &bad_arg]))
            .await
            .unwrap();
    assert_eq!(code, 1);
    assert!(
        err.contains("arm weights must sum to 100, got 101"),
        "{err}"
    );
    assert!(err.contains("nothing was sent"), "{err}");
    let v = admin_call(
        "GET",
        &format!("http://{admin}/v1/config"),
        Some("tok"),
        &[],
        "",
    )
    .await
    .json();
    assert_eq!(v["version"], 1);

    // A good file goes through with If-Match.
    let good = dir.join("good.yaml");
    std::fs::write(&good, two_arm(&v1, &v2, 20)).unwrap();
    let good_arg = good.display().to_string();
    let (code, out, err) =
        tokio::task::spawn_blocking(move || cli(admin, &["config", "apply", &good_arg]))
            .await
            .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("config version 2"), "{out}");

    // Unreachable admin API → exit 3.
    let gone = closed_port().await;
    let (code, _, err) = tokio::task::spawn_blocking(move || cli(gone, &["status"]))
        .await
        .unwrap();
    assert_eq!(code, 3, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_recorded_before_a_crash_is_applied_exactly_once_on_restart() {
    let (v1, v2) = two_backends().await;
    let dir = temp_state_dir();
    let cfg = write_config(&dir, &two_arm(&v1, &v2, 50));
    // A first run creates the state; then the store is left exactly as a
    // crash between the write-ahead record and the table swap leaves it: the
    // rollback recorded, its state not saved, the decision not marked applied.
    Proc::start(&cfg, &["--no-watch"], &[]).terminate();
    {
        use abgate::store::{NewDecision, SqliteStore, Store};
        let store = SqliteStore::open(&dir.join("state")).unwrap();
        store
            .record_decision(&NewDecision {
                experiment: "exp".into(),
                kind: "rollback".into(),
                from_weights: [("stable".to_string(), 5000), ("canary".to_string(), 5000)].into(),
                to_weights: [("stable".to_string(), 10000), ("canary".to_string(), 0)].into(),
                reason: serde_json::json!({"manual": true, "summary": "rollback by test"}),
                actor: "admin".into(),
            })
            .unwrap();
        assert_eq!(store.unapplied_decisions().unwrap().len(), 1);
    }

    let p = Proc::start(&cfg, &["--no-watch"], &[]);
    let e = experiment(p.admin_addr).await;
    assert_eq!(e["state"], "rolled_back", "{e}");
    assert_eq!(e["arms"][1]["weight"], 0.0);
    let d = get(
        &client(),
        &format!("http://{}/v1/decisions?experiment=exp", p.admin_addr),
        &[],
    )
    .await
    .json();
    let decisions = d["decisions"].as_array().unwrap();
    assert_eq!(
        decisions.len(),
        1,
        "applied once, not re-recorded: {decisions:?}"
    );
    assert_eq!(decisions[0]["applied"], true);
    drop(p);
    // A second restart changes nothing.
    let p = Proc::start(&cfg, &["--no-watch"], &[]);
    let d = get(
        &client(),
        &format!("http://{}/v1/decisions?experiment=exp", p.admin_addr),
        &[],
    )
    .await
    .json();
    assert_eq!(d["decisions"].as_array().unwrap().len(), 1);
    assert_eq!(experiment(p.admin_addr).await["state"], "rolled_back");
}

/// Requests the arms of `exp` saw, summed over arms, from the admin API.
async fn arm_requests(admin: std::net::SocketAddr) -> (u64, u64) {
    let e = experiment(admin).await;
    let arms = e["arms"].as_array().unwrap();
    let requests = arms
        .iter()
        .map(|a| a["assigned"]["requests"].as_u64().unwrap_or(0))
        .sum();
    let latency_n = arms
        .iter()
        .map(|a| a["metrics"]["latency_ms"]["n"].as_u64().unwrap_or(0))
        .sum();
    (requests, latency_n)
}

/// Requests recorded in the saved snapshot, read straight from the state database.
fn saved_requests(state: &Path) -> u64 {
    let Ok(conn) = rusqlite::Connection::open(state.join("abgate.db")) else {
        return 0;
    };
    let Ok(mut st) = conn.prepare("SELECT stats FROM arm_stats WHERE experiment = 'exp'") else {
        return 0;
    };
    let rows: Vec<String> = st
        .query_map([], |r| r.get(0))
        .map(|rows| rows.filter_map(Result::ok).collect())
        .unwrap_or_default();
    rows.iter()
        .map(|j| {
            let v: serde_json::Value = serde_json::from_str(j).unwrap();
            v["assigned"]["classes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_u64().unwrap())
                .sum::<u64>()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_arm_statistics_survive_restarts() {
    let (v1, v2) = two_backends().await;
    let dir = temp_state_dir();
    let cfg = write_config(&dir, &two_arm(&v1, &v2, 50));
    // A clean stop saves a last snapshot: nothing is lost.
    let p = Proc::start(&cfg, &["--no-watch"], &[]);
    send_users(p.data_addr, 0, 20).await;
    p.terminate();
    let p = Proc::start(&cfg, &["--no-watch"], &[]);
    assert_eq!(arm_requests(p.admin_addr).await, (20, 20));

    // A crash loses at most what the last one-second snapshot had not saved.
    send_users(p.data_addr, 20, 10).await;
    let state = dir.join("state");
    eventually(
        Duration::from_secs(10),
        "the periodic snapshot holds all 30",
        || {
            let state = state.clone();
            async move { saved_requests(&state) == 30 }
        },
    )
    .await;
    let mut p = p;
    p.kill9();
    let p = Proc::start(&cfg, &["--no-watch"], &[]);
    assert_eq!(arm_requests(p.admin_addr).await, (30, 30));
}

/// A canary that stays on its first step, looked at every 100 ms.
fn canary_on_first_step(v1: &FakeBackend, v2: &FakeBackend) -> String {
    format!(
        r#"
backends: {{ v1: {{ url: "{}" }}, v2: {{ url: "{}" }} }}
experiments:
  - name: exp
    unit: {{ header: x-user-id }}
    kind: canary
    baseline: stable
    steps: [10, 50, 100]
    step: {{ min_samples: 1000000, min_duration: 0s }}
    analysis:
      interval: 100ms
      min_units_per_arm: 20
      guardrails:
        - {{ metric: latency_ms, max_relative_increase: 0.5 }}
    arms:
      - {{ name: stable, backend: v1, weight: 100 }}
      - {{ name: canary, backend: v2, weight: 0 }}
"#,
        v1.url(),
        v2.url()
    )
}

/// The controller's analysis once it has looked again after every request
/// sent so far: (looks, samples per arm).
async fn settled_analysis(admin: std::net::SocketAddr) -> (u64, serde_json::Value) {
    let looks = |v: &serde_json::Value| v["analysis"]["looks"].as_u64().unwrap_or(0);
    let from = looks(&experiment(admin).await);
    eventually(Duration::from_secs(10), "two more looks", || async move {
        looks(&experiment(admin).await) >= from + 2
    })
    .await;
    let v = experiment(admin).await;
    (looks(&v), v["analysis"]["samples"].clone())
}

/// Waits until the canary has started and the controller took its first look
/// (its comparison window begins there).
async fn canary_started(admin: std::net::SocketAddr) {
    eventually(
        Duration::from_secs(10),
        "the canary started",
        || async move {
            let v = experiment(admin).await;
            v["arms"][1]["weight"] == 10.0 && v["analysis"]["looks"].as_u64().unwrap_or(0) > 0
        },
    )
    .await;
}

/// The controller run saved in the store: (looks, samples per arm).
fn saved_run(state: &Path) -> Option<(u64, serde_json::Value)> {
    let conn = rusqlite::Connection::open(state.join("abgate.db")).ok()?;
    let json: String = conn
        .query_row(
            "SELECT run FROM controller_runs WHERE experiment = 'exp'",
            [],
            |r| r.get(0),
        )
        .ok()?;
    let v: serde_json::Value = serde_json::from_str(&json).ok()?;
    let samples: serde_json::Map<String, serde_json::Value> = v["evidence"]["arms"]
        .as_array()?
        .iter()
        .map(|a| (a["name"].as_str().unwrap().to_string(), a["units"].clone()))
        .collect();
    Some((v["evidence"]["looks"].as_u64()?, samples.into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_resumes_with_its_evidence_after_a_restart() {
    let (v1, v2) = two_backends().await;
    let dir = temp_state_dir();
    let cfg = write_config(&dir, &canary_on_first_step(&v1, &v2));
    let p = Proc::start(&cfg, &["--no-watch"], &[]);
    let admin = p.admin_addr;
    canary_started(admin).await;
    send_users(p.data_addr, 0, 300).await;
    let (looks, samples) = settled_analysis(admin).await;
    let canary_requests = experiment(admin).await["arms"][1]["assigned"]["requests"].clone();
    assert_eq!(samples["canary"], canary_requests);

    // A clean stop saves the run; the restarted controller continues it: its
    // looks go on counting and its samples are the ones from before (a fresh
    // run would start at zero samples, comparing only what comes next).
    p.terminate();
    let p = Proc::start(&cfg, &["--no-watch"], &[]);
    let admin = p.admin_addr;
    let (looks_after, samples_after) = settled_analysis(admin).await;
    assert!(looks_after > looks, "{looks_after} looks after {looks}");
    assert_eq!(samples_after, samples);
    assert_eq!(experiment(admin).await["analysis"]["step"], 1);

    // A crash loses at most the last snapshot's second.
    send_users(p.data_addr, 300, 100).await;
    let (_, samples) = settled_analysis(admin).await;
    let state = dir.join("state");
    let expected = samples.clone();
    eventually(
        Duration::from_secs(10),
        "the periodic snapshot holds the run",
        || {
            let (state, expected) = (state.clone(), expected.clone());
            async move { saved_run(&state).is_some_and(|(_, s)| s == expected) }
        },
    )
    .await;
    let (saved_looks, _) = saved_run(&state).unwrap();
    let mut p = p;
    p.kill9();
    let p = Proc::start(&cfg, &["--no-watch"], &[]);
    let (looks_after, samples_after) = settled_analysis(p.admin_addr).await;
    assert!(
        looks_after > saved_looks,
        "{looks_after} after {saved_looks}"
    );
    assert_eq!(samples_after, samples);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redefined_experiment_starts_afresh_and_a_removed_one_leaves_no_evidence() {
    let (v1, v2) = two_backends().await;
    let dir = temp_state_dir();
    let cfg = write_config(&dir, &canary_on_first_step(&v1, &v2));
    let p = Proc::start(&cfg, &["--no-watch"], &[("ABGATE_ADMIN_TOKEN", "tok")]);
    let admin = p.admin_addr;
    canary_started(admin).await;
    send_users(p.data_addr, 0, 200).await;
    let (_, samples) = settled_analysis(admin).await;
    assert!(samples["canary"].as_u64().unwrap() > 0);
    // Same arms, a stricter guardrail: the evidence gathered for the old
    // question does not answer the new one.
    write_config(
        &dir,
        &canary_on_first_step(&v1, &v2)
            .replace("max_relative_increase: 0.5", "max_relative_increase: 0.2"),
    );
    let (code, _, stderr) = cli(admin, &["config", "apply", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    eventually(Duration::from_secs(10), "a fresh run", || async move {
        let v = experiment(admin).await;
        v["analysis"]["samples"]["canary"] == 0 && v["analysis"]["looks"].as_u64().unwrap_or(0) > 0
    })
    .await;
    // Without the experiment, its saved run is deleted with the next snapshot.
    let state = dir.join("state");
    eventually(Duration::from_secs(10), "the run is saved", || {
        let state = state.clone();
        async move { saved_run(&state).is_some_and(|(looks, _)| looks > 0) }
    })
    .await;
    write_config(&dir, &default_backend_config(&v1.url(), ""));
    let (code, _, stderr) = cli(admin, &["config", "apply", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    eventually(Duration::from_secs(10), "the saved run is gone", || {
        let state = state.clone();
        async move { saved_run(&state).is_none() }
    })
    .await;
}

/// File and SIGHUP reloads counted so far, whatever their result.
async fn reloads(admin: std::net::SocketAddr, source: &str) -> f64 {
    metric_value(
        &metrics(admin).await,
        "abgate_config_reload_total",
        &[("source", source)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cat_and_sighup_of_an_unchanged_file_keep_what_the_operator_set() {
    let (v1, v2) = two_backends().await;
    let dir = temp_state_dir();
    let cfg = write_config(&dir, &two_arm(&v1, &v2, 10));
    // Watching the file, as `abgate serve` does by default.
    let p = Proc::start(&cfg, &[], &[("ABGATE_ADMIN_TOKEN", "tok")]);
    let admin = p.admin_addr;
    let file_text = std::fs::read_to_string(&cfg).unwrap();
    let put = file_text
        .replace("weight: 90", "weight: 50")
        .replace("weight: 10", "weight: 50");
    assert_eq!(put_config(admin, Some("tok"), &put).await, 2);

    // The operator looks at the file, then asks for a re-read.
    let out = Command::new("cat").arg(&cfg).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), file_text);
    p.signal("-HUP");
    eventually(
        Duration::from_secs(10),
        "the SIGHUP was handled",
        || async move { reloads(admin, "sighup").await >= 1.0 },
    )
    .await;
    let e = experiment(admin).await;
    assert_eq!(e["config_version"], 2, "{e}");
    assert_eq!(e["arms"][1]["weight"], 50.0, "{e}");

    // A manual pause survives the same.
    let paused = admin_call(
        "POST",
        &format!("http://{admin}/v1/experiments/exp/pause"),
        Some("tok"),
        &[],
        "",
    )
    .await;
    assert_eq!(paused.status, 200);
    Command::new("cat").arg(&cfg).output().unwrap();
    p.signal("-HUP");
    eventually(
        Duration::from_secs(10),
        "the second SIGHUP was handled",
        || async move { reloads(admin, "sighup").await >= 2.0 },
    )
    .await;
    let e = experiment(admin).await;
    assert_eq!(e["state"], "paused", "{e}");
    assert_eq!(e["config_version"], 2, "{e}");
    assert_eq!(
        reloads(admin, "file").await,
        0.0,
        "reading the file is not a change"
    );

    // An edited file is the newer intent: SIGHUP applies it.
    write_config(&dir, &two_arm(&v1, &v2, 30));
    p.signal("-HUP");
    eventually(
        Duration::from_secs(10),
        "the edited file applied",
        || async move { experiment(admin).await["arms"][1]["weight"] == 30.0 },
    )
    .await;
    assert_eq!(experiment(admin).await["config_version"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_history_diff_and_revert_from_the_cli() {
    let (v1, v2) = two_backends().await;
    let dir = temp_state_dir();
    let cfg = write_config(&dir, &two_arm(&v1, &v2, 10));
    let p = Proc::start(&cfg, &["--no-watch"], &[("ABGATE_ADMIN_TOKEN", "tok")]);
    let admin = p.admin_addr;
    let good = dir.join("good.yaml");
    std::fs::write(
        &good,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("weight: 90", "weight: 80")
            .replace("weight: 10", "weight: 20"),
    )
    .unwrap();
    let run = move |args: Vec<String>| async move {
        tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            cli(admin, &a)
        })
        .await
        .unwrap()
    };
    let args = |s: &str| s.split(' ').map(str::to_string).collect::<Vec<_>>();
    let (code, _, err) = run(vec![
        "config".into(),
        "apply".into(),
        good.display().to_string(),
    ])
    .await;
    assert_eq!(code, 0, "{err}");

    let (code, out, err) = run(args("config history")).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].trim_start().starts_with("2  "), "{out}");
    assert!(
        lines[1].trim_start().starts_with("1  ") && lines[1].contains("startup"),
        "{out}"
    );

    let (code, out, err) = run(args("config diff 1 2")).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("--- version 1\n+++ version 2\n@@ "),
        "{out}"
    );
    assert!(
        out.contains("\n-      - { name: canary, backend: v2, weight: 10 }\n"),
        "{out}"
    );
    assert!(
        out.contains("\n+      - { name: canary, backend: v2, weight: 20 }\n"),
        "{out}"
    );
    let (code, out, _) = run(args("config diff 2 2")).await;
    assert_eq!(
        (code, out.as_str()),
        (0, ""),
        "equal versions: an empty diff"
    );

    let (code, out, err) = run(args("config revert 1")).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("applied as config version 3"), "{out}");
    assert_eq!(experiment(admin).await["arms"][1]["weight"], 10.0);
    let (code, _, err) = run(args("config revert 42")).await;
    assert_eq!(code, 1);
    assert!(
        err.starts_with("404") && err.contains("versions 1 to 3 are kept"),
        "{err}"
    );
    let (code, out, _) = run(args("config history --before 1")).await;
    assert_eq!(code, 0);
    assert!(out.contains("no versions on this page"), "{out}");

    // A restart keeps who applied each version (it records no version of its own).
    drop(p);
    let p = Proc::start(&cfg, &["--no-watch"], &[("ABGATE_ADMIN_TOKEN", "tok")]);
    let admin = p.admin_addr;
    let page = admin_call(
        "GET",
        &format!("http://{admin}/v1/config/versions"),
        Some("tok"),
        &[],
        "",
    )
    .await
    .json();
    assert_eq!(page["newest"], 3);
    assert_ne!(page["versions"][0]["actor"], "startup", "{page}");
}

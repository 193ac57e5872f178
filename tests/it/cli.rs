//! The real `abgate` binary: `check`, `analyze`, and `serve` with a graceful stop.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;
use http_body_util::{BodyExt, Empty};

const BIN: &str = env!("CARGO_BIN_EXE_abgate");

#[test]
fn check_accepts_every_shipped_config() {
    let mut files: Vec<_> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/config"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    let out = Command::new(BIN)
        .arg("check")
        .args(&files)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.contains(": ok: ")).count(),
        files.len(),
        "{stdout}"
    );
}

#[test]
fn check_reports_every_error_with_file_and_line_and_exits_1() {
    let dir = std::env::temp_dir().join(format!("abgate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "backends:\n  a: { url: \"http://127.0.0.1:1\" }\nexperiments:\n  - name: e\n    typo: 1\n    arms:\n      - { name: x, backend: a, weight: 40 }\n",
    )
    .unwrap();
    let out = Command::new(BIN).arg("check").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let f = bad.display();
    assert!(
        err.contains(&format!("{f}:5: experiments[0].typo: unknown field")),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{f}:6: experiments[0].arms: arm weights must sum to 100, got 40"
        )),
        "{err}"
    );
    assert!(err.contains("2 error(s)"), "{err}");
    let missing = Command::new(BIN)
        .args(["check", "/nonexistent/abgate.yaml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
}

#[test]
fn check_refuses_what_the_controller_would_refuse_naming_file_line_and_field() {
    // Valid to the schema's own checks, but the statistics engine needs
    // min_effect >= 0: `check` must fail rather than `serve` run no controller.
    let dir = std::env::temp_dir().join(format!("abgate-cli-stats-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("negative-min-effect.yaml");
    std::fs::write(
        &bad,
        "backends:\n  a: { url: \"http://127.0.0.1:1\" }\nexperiments:\n  - name: e\n    kind: ab\n    metrics: [ { name: accepted, source: feedback, type: binary } ]\n    analysis:\n      primary: { metric: accepted, direction: increase, min_effect: -0.1 }\n    arms:\n      - { name: x, backend: a, weight: 50 }\n      - { name: y, backend: a, weight: 50 }\n",
    )
    .unwrap();
    let out = Command::new(BIN).arg("check").arg(&bad).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let f = bad.display();
    assert!(
        err.contains(&format!(
            "{f}:8: experiments[0].analysis.primary.min_effect: must be >= 0, got -0.1"
        )),
        "{err}"
    );
    assert!(err.contains("1 error(s)"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn analyze(input: &str, args: &[&str]) -> std::process::Output {
    let mut child = Command::new(BIN)
        .arg("analyze")
        .arg("-")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn analyze_reproduces_the_reference_numbers_and_names_bad_fields() {
    let input = r#"{ "alpha": 0.05, "design_samples": 5000, "baseline": "control",
      "arms": { "control": {"weight": 0.5, "assigned": 10000}, "treatment": {"weight": 0.5, "assigned": 10000} },
      "metrics": { "accepted": { "type": "binary", "arms": {
          "control": {"n": 10000, "successes": 1000}, "treatment": {"n": 10000, "successes": 1100} } } } }"#;
    let out = analyze(input, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let abs = &v["metrics"]["accepted"]["treatment"]["absolute"];
    let close =
        |x: &serde_json::Value, want: f64| (x.as_f64().unwrap() - want).abs() <= 1e-5 * want.abs();
    assert!(close(&abs["ci"][0], -0.00355524), "{abs}");
    assert!(close(&abs["ci"][1], 0.0235552), "{abs}");
    assert!(close(&abs["p_value"], 0.43372), "{abs}");
    let table = analyze(input, &["--format", "table"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("accepted"));

    let bad = input.replace("\"successes\": 1100", "\"successes\": 12000");
    let out = analyze(&bad, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("metrics.accepted.arms.treatment.successes"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_streams_finish_then_exits_0() {
    let sse = FakeBackend::start(
        "sse",
        Behaviour::Sse {
            events: 6,
            every: Duration::from_millis(100),
        },
    )
    .await;
    let dir = std::env::temp_dir().join(format!("abgate-sigterm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("abgate.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nstate_dir: {}\nbackends: {{ s: {{ url: \"{}\" }} }}\ndefault_backend: s\n",
            dir.join("state").display(),
            sse.url()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = loop {
        let line = rx
            .recv_timeout(deadline - Instant::now())
            .expect("abgate printed its address");
        if let Some(rest) = line.strip_prefix("abgate listening on ") {
            break rest.split(' ').next().unwrap().to_string();
        }
    };
    let c = client();
    let resp = c
        .request(
            http::Request::get(format!("http://{addr}/stream"))
                .body(Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = resp.into_body();
    body.frame().await.unwrap().unwrap();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The stream that was in flight still completes.
    let rest = body
        .collect()
        .await
        .expect("in-flight stream completes")
        .to_bytes();
    let text = String::from_utf8_lossy(&rest);
    assert!(text.contains("event-5"), "{text}");
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(0));
    assert!(
        tokio::net::TcpStream::connect(&addr).await.is_err(),
        "still accepting after exit"
    );
}

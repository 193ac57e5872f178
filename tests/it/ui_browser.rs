//! The web page in a real browser: headless Chromium driven over WebDriver
//! (chromedriver, started here on a free port), against a real abgate with
//! mock backends and load.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them).
//! Without them the test is skipped with a note, unless `CI` is set, where it
//! fails: CI must run it. With `ABGATE_SCREENSHOT=path` it saves a PNG of the
//! page there (the README's `docs/ui.png` is made so).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::support::*;
use crate::ui::{background_load, error_canary};

const CHROMIUM: &str = "/usr/bin/chromium";
const TOKEN: &str = "ui-test-token";

/// chromedriver, killed when dropped.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chromedriver() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("chromedriver"))
            .find(|p| p.is_file())
    })
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

async fn start_browser(driver: &Path) -> (Driver, Client, PathBuf) {
    let port = free_port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let driver = Driver(child);
    eventually(
        Duration::from_secs(20),
        "chromedriver listens",
        || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        },
    )
    .await;
    let profile = temp_state_dir();
    std::fs::create_dir_all(&profile).unwrap();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--window-size=1400,2600",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a WebDriver session");
    (driver, client, profile)
}

/// Runs `script` (a function body returning a value) until it returns true.
async fn until(c: &Client, within: Duration, what: &str, script: &str) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let v = c.execute(script, vec![]).await.expect("script runs");
        if v == Value::Bool(true) {
            return;
        }
        if std::time::Instant::now() > deadline {
            let errors = c
                .execute("return window.__abgateErrors || null", vec![])
                .await
                .ok();
            panic!("timed out waiting for: {what} (last: {v}; page errors: {errors:?})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn text_of(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_browser_shows_the_run_its_decisions_and_acts_only_with_the_token() {
    let Some(driver_bin) = chromedriver().filter(|_| Path::new(CHROMIUM).is_file()) else {
        if std::env::var_os("CI").is_some() {
            panic!(
                "the browser test needs {CHROMIUM} and chromedriver: \
                 apt-get install chromium chromium-driver (.ci/run does)"
            );
        }
        eprintln!(
            "skipping the browser test: {CHROMIUM} or chromedriver is missing \
             (apt-get install chromium chromium-driver)"
        );
        return;
    };
    let _load = decision_load().await;
    let stable = mock("name=stable,error_rate=0.01,latency=fixed:1,seed=1").await;
    let canary = mock("name=canary,error_rate=0.10,latency=fixed:1,seed=2").await;
    let yaml = error_canary(&stable, &canary)
        + "  - name: other\n    match: { path_prefix: /other }\n    arms:\n      - { name: stable, backend: v1, weight: 90 }\n      - { name: canary, backend: v2, weight: 10 }\n";
    let server = start_abgate_with(&yaml, Some(TOKEN)).await;
    let admin = server.admin_addr;
    let (_driver, c, profile) = start_browser(&driver_bin).await;

    c.goto(&format!("http://{admin}/ui#exp")).await.unwrap();
    until(
        &c,
        Duration::from_secs(10),
        "both experiments are listed",
        "return document.querySelectorAll('#list tr[data-experiment]').length === 2",
    )
    .await;
    let traffic = background_load(server.data_addr, 400.0, 60);
    eventually(
        Duration::from_secs(45),
        "the controller rolls back",
        || async move { experiment_json(admin, "exp").await["state"] == "rolled_back" },
    )
    .await;
    traffic.abort();

    // The run is charted, and the rollback arrives live and is annotated
    // with its reason and evidence.
    until(
        &c,
        Duration::from_secs(10),
        "the rollback marker on the weights chart",
        "return !!document.querySelector('#weights .marker.kind-rollback')",
    )
    .await;
    for chart in ["weights", "rps", "errors", "latency"] {
        until(
            &c,
            Duration::from_secs(10),
            &format!("points on the {chart} chart"),
            &format!("return Number(document.getElementById('{chart}').dataset.points) > 1"),
        )
        .await;
    }
    until(
        &c,
        Duration::from_secs(10),
        "a guardrail chart with points",
        "const c = document.querySelector('[id^=\"cmp-guardrail_error_canary\"]'); return !!c && Number(c.dataset.points) > 1",
    )
    .await;
    let tip = c
        .execute(
            "return document.querySelector('#weights .marker.kind-rollback').dataset.tip",
            vec![],
        )
        .await
        .unwrap();
    let tip = tip.as_str().unwrap_or_default().to_string();
    assert!(tip.contains("rollback by controller"), "{tip}");
    assert!(
        tip.contains("evidence:") && tip.contains("error on canary"),
        "{tip}"
    );
    let logged = text_of(&c, "#decisions tr.kind-rollback td.evidence").await;
    assert!(logged.contains("error on canary"), "{logged}");
    assert_eq!(
        text_of(&c, "#list tr[data-experiment=exp] td.state").await,
        "rolled back"
    );

    // A pause without the token is refused; with it, it works.
    c.execute("location.hash = '#other'", vec![]).await.unwrap();
    until(
        &c,
        Duration::from_secs(10),
        "the other experiment is shown",
        "return document.getElementById('detail-name').textContent === 'other'",
    )
    .await;
    c.find(Locator::Css("button[data-action=pause]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &c,
        Duration::from_secs(10),
        "the pause is refused",
        "return document.getElementById('action-result').textContent.includes('refused (401)')",
    )
    .await;
    assert_eq!(experiment_json(admin, "other").await["state"], "running");
    c.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    c.find(Locator::Id("token-save"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.find(Locator::Css("button[data-action=pause]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &c,
        Duration::from_secs(10),
        "the pause is done",
        "return document.getElementById('action-result').textContent.startsWith('pause done')",
    )
    .await;
    assert_eq!(experiment_json(admin, "other").await["state"], "paused");
    let kept = c
        .execute(
            "return sessionStorage.getItem('abgate.admin_token')",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(kept, json!(TOKEN), "the token is kept for the tab");
    let cookies = c.execute("return document.cookie", vec![]).await.unwrap();
    assert_eq!(cookies, json!(""), "never a cookie");

    if let Some(path) = std::env::var_os("ABGATE_SCREENSHOT") {
        c.execute("location.hash = '#exp'", vec![]).await.unwrap();
        until(
            &c,
            Duration::from_secs(10),
            "the canary's charts are back",
            "return !!document.querySelector('#weights .marker.kind-rollback')",
        )
        .await;
        // Show the rollback's reason and evidence as hovering does.
        c.execute(
            "const m = document.querySelector('#weights .marker.kind-rollback'); const r = m.getBoundingClientRect(); m.dispatchEvent(new MouseEvent('mouseenter', {clientX: r.left + 4, clientY: r.top + 40})); window.scrollTo(0, 0);",
            vec![],
        )
        .await
        .unwrap();
        let png = c.screenshot().await.unwrap();
        std::fs::write(&path, png).unwrap();
        eprintln!(
            "saved a screenshot of the page to {}",
            Path::new(&path).display()
        );
    }

    let errors = c
        .execute("return window.__abgateErrors", vec![])
        .await
        .unwrap();
    assert_eq!(errors, json!([]), "the page logged errors");
    c.close().await.unwrap();
    let _ = std::fs::remove_dir_all(profile);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_browser_stays_responsive_with_fifty_experiments() {
    let Some(driver_bin) = chromedriver().filter(|_| Path::new(CHROMIUM).is_file()) else {
        if std::env::var_os("CI").is_some() {
            panic!("the browser test needs {CHROMIUM} and chromedriver (.ci/run installs them)");
        }
        eprintln!("skipping the browser test: {CHROMIUM} or chromedriver is missing");
        return;
    };
    let (a, b) = two_backends().await;
    let mut yaml = format!(
        "backends:\n  v1: {{ url: \"{}\" }}\n  v2: {{ url: \"{}\" }}\nexperiments:\n",
        a.url(),
        b.url()
    );
    for i in 0..50 {
        // The one shown is watched for drift; the page shows its watch.
        let watch = if i == 49 {
            "    watch: { metrics: [error], reference: 1h }\n    capture: { percent: 5, max_total: 1MiB }\n"
        } else {
            ""
        };
        yaml.push_str(&format!(
            "  - name: e{i:02}\n    match: {{ path_prefix: /e{i:02} }}\n{watch}    arms:\n      - {{ name: stable, backend: v1, weight: 90 }}\n      - {{ name: canary, backend: v2, weight: 10 }}\n"
        ));
    }
    let server = start_abgate(&yaml).await;
    let (_driver, c, profile) = start_browser(&driver_bin).await;
    c.goto(&format!("http://{}/ui#e49", server.admin_addr))
        .await
        .unwrap();
    until(
        &c,
        Duration::from_secs(15),
        "fifty rows and three live updates",
        "return document.querySelectorAll('#list tr[data-experiment]').length === 50 && window.__abgateRenders.count >= 4",
    )
    .await;
    let r = c
        .execute("return window.__abgateRenders", vec![])
        .await
        .unwrap();
    eprintln!("fifty experiments: list redraws {r}");
    until(
        &c,
        Duration::from_secs(10),
        "the watch is shown",
        "const w = document.getElementById('detail-watch'); return !w.hidden && w.textContent.startsWith('Drift watch: collecting reference on stable') && w.textContent.includes('error: pending');",
    )
    .await;
    until(
        &c,
        Duration::from_secs(10),
        "the capture is shown",
        "const p = document.getElementById('detail-capture'); return !p.hidden && p.textContent.startsWith('Capture: 5% of requests, 0 examples written (0.0 MiB of 1.0 MiB), 0 evicted, 0 dropped');",
    )
    .await;
    // A generous bound (a loaded CI machine): a redraw a second must never
    // take the page's whole second.
    assert!(r["maxMs"].as_f64().unwrap() < 500.0, "{r}");
    let errors = c
        .execute("return window.__abgateErrors", vec![])
        .await
        .unwrap();
    assert_eq!(errors, json!([]), "the page logged errors");
    c.close().await.unwrap();
    let _ = std::fs::remove_dir_all(profile);
    server.shutdown().await;
}

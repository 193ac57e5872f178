//! Memory stays bounded: the real `abgate` binary holding 1,000 idle keep-alive
//! client connections stays under 50 MiB resident. Prints the measurement.
//!
//! The target is for a release build. Test builds are unoptimised (async state
//! machines are much larger), so they get a looser budget; to measure a release
//! binary, run with `ABGATE_RSS_BIN=target/release/abgate ... -- --nocapture`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

const CONNECTIONS: usize = 1_000;
/// The target for a release binary.
const RSS_TARGET_KIB: u64 = 50 * 1024;
/// The ceiling for the unoptimised test build of the same code.
const RSS_DEBUG_BUDGET_KIB: u64 = 72 * 1024;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Kills the child on every exit path, including a failed assertion.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_stay_under_50_mib() {
    if !std::path::Path::new("/proc/self/status").exists() {
        eprintln!("no /proc: RSS cannot be measured here");
        return;
    }
    let (bin, budget) = match std::env::var("ABGATE_RSS_BIN") {
        Ok(b) => (b, RSS_TARGET_KIB),
        Err(_) if cfg!(debug_assertions) => (
            env!("CARGO_BIN_EXE_abgate").to_string(),
            RSS_DEBUG_BUDGET_KIB,
        ),
        Err(_) => (env!("CARGO_BIN_EXE_abgate").to_string(), RSS_TARGET_KIB),
    };
    let rec = RecordingBackend::start().await;
    let dir = std::env::temp_dir().join(format!("abgate-rss-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("abgate.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nstate_dir: {}\n\
             timeouts: {{ header_read: 60s }}\n{}",
            dir.join("state").display(),
            default_backend_config(&rec.url(), "")
        ),
    )
    .unwrap();
    let mut child = Child(
        Command::new(&bin)
            .args(["serve", "--config"])
            .arg(&cfg)
            .env("ABGATE_LOG", "warn")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();
    let stderr = child.0.stderr.take().unwrap();
    let addr: std::net::SocketAddr = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stderr).lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("abgate listening on ") {
                let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
                // Keep draining so the child never blocks on a full pipe.
                std::thread::spawn(move || lines.for_each(drop));
                return addr;
            }
        }
        panic!("abgate exited before listening");
    })
    .await
    .unwrap();

    // Warm up the one upstream connection path before the baseline.
    assert_still_serving(addr, "/warm").await;
    let baseline = rss_kib(pid);

    let started = Instant::now();
    let mut held = Vec::with_capacity(CONNECTIONS);
    for chunk in 0..CONNECTIONS / 50 {
        let mut batch = Vec::new();
        for i in 0..50 {
            batch.push(tokio::spawn(async move {
                let tcp = TcpStream::connect(addr).await.unwrap();
                let (mut send, conn) =
                    hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
                        .await
                        .unwrap();
                let task = tokio::spawn(conn);
                let resp = send
                    .send_request(
                        http::Request::get(format!("/idle/{}", chunk * 50 + i))
                            .header("host", "x")
                            .body(Empty::new())
                            .unwrap(),
                    )
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200);
                resp.into_body().collect().await.unwrap();
                (send, task)
            }));
        }
        for t in batch {
            held.push(t.await.unwrap());
        }
    }
    assert_eq!(rec.seen.lock().unwrap().len(), CONNECTIONS + 1);
    // Every connection is now an idle keep-alive connection on abgate's side.
    let loaded = rss_kib(pid);
    println!(
        "abgate ({bin}) RSS: baseline {baseline} KiB, with {CONNECTIONS} idle keep-alive connections \
         {loaded} KiB ({:.1} KiB per connection); opened in {:?}",
        (loaded.saturating_sub(baseline)) as f64 / CONNECTIONS as f64,
        started.elapsed()
    );
    assert!(
        loaded < budget,
        "RSS {loaded} KiB with {CONNECTIONS} idle connections exceeds {budget} KiB"
    );
    drop(held);
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
}

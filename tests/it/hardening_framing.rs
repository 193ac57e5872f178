//! Framing hygiene over raw sockets: Transfer-Encoding, Content-Length,
//! forbidden bytes in headers, CL+TE smuggling and Upgrade. After every bad
//! request a normal one succeeds.

use std::time::Duration;

use crate::support::*;

const LIMIT: Duration = Duration::from_secs(5);

async fn setup() -> (RecordingBackend, abgate::server::RunningServer) {
    let rec = RecordingBackend::start().await;
    let s = start_abgate(&default_backend_config(&rec.url(), "")).await;
    (rec, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_encoding_other_than_a_single_chunked_is_400() {
    let (rec, s) = setup().await;
    // These reach the handler (hyper accepts a final `chunked`): JSON problem.
    for te in [
        "transfer-encoding: chunked, chunked\r\n",
        "transfer-encoding: gzip, chunked\r\n",
        "transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n",
    ] {
        let req = format!("POST /te HTTP/1.1\r\nhost: x\r\n{te}\r\n0\r\n\r\n");
        let (resp, _) = raw_until_close(s.data_addr, req.as_bytes(), LIMIT).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{te}: {resp}");
        assert!(resp.contains("bad-transfer-encoding"), "{te}: {resp}");
        assert_still_serving(s.data_addr, "/ok").await;
    }
    // These hyper refuses itself (bare 400, connection closed).
    for te in [
        "transfer-encoding: gzip\r\n",
        "transfer-encoding: chunked, gzip\r\n",
    ] {
        let req = format!("POST /te HTTP/1.1\r\nhost: x\r\n{te}\r\n0\r\n\r\n");
        let (resp, _) = raw_until_close(s.data_addr, req.as_bytes(), LIMIT).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{te}: {resp}");
        assert_still_serving(s.data_addr, "/ok").await;
    }
    // HTTP/1.0 with Transfer-Encoding: refused.
    let (resp, _) = raw_until_close(
        s.data_addr,
        b"POST /te HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        LIMIT,
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert_still_serving(s.data_addr, "/ok").await;
    expect_rejected(s.admin_addr, "bad-transfer-encoding", 3.0).await;
    expect_rejected(s.admin_addr, "malformed-request", 3.0).await;
    assert!(rec.paths().iter().all(|p| p == "/ok"), "{:?}", rec.paths());
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_content_lengths_and_bad_header_bytes_are_400() {
    let (rec, s) = setup().await;
    let cases: [&[u8]; 6] = [
        b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
        b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: 3, 4\r\n\r\nabcd",
        b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: -1\r\n\r\n",
        b"GET /x HTTP/1.1\r\nhost: x\r\nx-a: a\0b\r\n\r\n",
        b"GET /x HTTP/1.1\r\nhost: x\r\nx-a: a\rb\r\n\r\n",
        // Obsolete line folding: a continuation line could hide a header.
        b"GET /x HTTP/1.1\r\nhost: x\r\nx-a: a\r\n x-b: b\r\n\r\n",
    ];
    for (i, bytes) in cases.iter().enumerate() {
        let (resp, _) = raw_until_close(s.data_addr, bytes, LIMIT).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "case {i}: {resp}");
        assert_still_serving(s.data_addr, "/ok").await;
    }
    // Identical duplicates are folded into one, as RFC 9110 allows.
    let (resp, _) = raw_until_close(
        s.data_addr,
        b"POST /dup HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\nabc",
        LIMIT,
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    expect_rejected(s.admin_addr, "malformed-request", cases.len() as f64).await;
    let paths = rec.paths();
    assert!(paths.iter().all(|p| p == "/ok" || p == "/dup"), "{paths:?}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cl_te_smuggling_never_delivers_the_hidden_request() {
    let (rec, s) = setup().await;
    let smuggle = b"POST /front HTTP/1.1\r\nhost: x\r\ncontent-length: 52\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: x\r\nx-pad: aaaa\r\n\r\n";
    let (resp, _) = raw_until_close(s.data_addr, smuggle, LIMIT).await;
    // The front request may be served (decoded as chunked), but the connection
    // is closed right after it, so the tail is never parsed as a request.
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(resp.matches("HTTP/1.1").count(), 1, "{resp}");
    // TE first, then CL: same outcome.
    let smuggle2 = b"POST /front HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 52\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: x\r\nx-pad: aaaa\r\n\r\n";
    let (resp, _) = raw_until_close(s.data_addr, smuggle2, LIMIT).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_still_serving(s.data_addr, "/ok").await;
    let seen = rec.seen.lock().unwrap().clone();
    let paths: Vec<&str> = seen.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, vec!["/front", "/front", "/ok"]);
    for r in &seen {
        assert!(
            !(r.headers.contains_key("content-length")
                && r.headers.contains_key("transfer-encoding")),
            "forwarded both CL and TE: {:?}",
            r.headers
        );
        assert_eq!(r.body_len, 0, "the smuggled bytes were forwarded as body");
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_requests_are_not_upgraded() {
    let (rec, s) = setup().await;
    let (resp, _) = raw_until_close(
        s.data_addr,
        b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: upgrade, close\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        LIMIT,
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let seen = rec.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert!(!seen[0].headers.contains_key("upgrade"));
    assert!(!seen[0].headers.contains_key("connection"));
    assert_still_serving(s.data_addr, "/ok").await;
    s.shutdown().await;
}

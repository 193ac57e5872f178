//! The reference abgate's CPU per request is judged against: a bare reverse
//! proxy on the same hyper 1.x server and hyper-util legacy client abgate
//! uses, with the same sticky 90/10 split on `x-user-id` and keep-alive
//! upstreams, and nothing else: no recording, no tokens, no limits, no
//! table. Kept this small on purpose; `load/bench-overhead.sh` runs it as
//! the `bare` leg (`cargo build --release --example bare-proxy`).
//!
//! Usage: bare-proxy LISTEN STABLE CANARY (loopback addresses only).

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

type Upstream = Client<HttpConnector, Incoming>;
type Answer = Response<Either<Incoming, Empty<Bytes>>>;

#[tokio::main]
async fn main() {
    let addrs: Vec<SocketAddr> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("an address like 127.0.0.1:8080"))
        .collect();
    let [listen, stable, canary] = addrs[..] else {
        eprintln!("usage: bare-proxy LISTEN STABLE CANARY");
        std::process::exit(2);
    };
    assert!(
        addrs.iter().all(|a| a.ip().is_loopback()),
        "loopback addresses only"
    );
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Upstream = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(connector);
    let listener = TcpListener::bind(listen).await.expect("bind");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| proxy(client.clone(), stable, canary, req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn proxy(
    client: Upstream,
    stable: SocketAddr,
    canary: SocketAddr,
    mut req: Request<Incoming>,
) -> Result<Answer, Infallible> {
    // The same sticky split abgate makes: a hash of the unit key, 10 % canary.
    let key = req
        .headers()
        .get("x-user-id")
        .map_or(&b""[..], |v| v.as_bytes());
    let to_canary = xxhash_rust::xxh3::xxh3_64(key) % 100 < 10;
    let (upstream, arm) = if to_canary {
        (canary, "canary")
    } else {
        (stable, "stable")
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = format!("http://{upstream}{path}").parse() else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    *req.uri_mut() = uri;
    match client.request(req).await {
        Ok(resp) => {
            let mut resp = resp.map(Either::Left);
            resp.headers_mut()
                .insert("x-abgate-arm", HeaderValue::from_static(arm));
            Ok(resp)
        }
        Err(_) => Ok(status(StatusCode::BAD_GATEWAY)),
    }
}

fn status(code: StatusCode) -> Answer {
    let mut resp = Response::new(Either::Right(Empty::new()));
    *resp.status_mut() = code;
    resp
}

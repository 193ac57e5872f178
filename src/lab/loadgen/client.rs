//! The hyper-util client used for load and feedback requests.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::spec::Protocol;

/// HTTP client for the target (HTTP/1.1 keep-alive pool or one h2c connection).
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Builds a client keeping up to `pool_size` idle connections per host (HTTP/1), or speaking
/// h2 with prior knowledge, with TCP_NODELAY and a `connect_timeout`.
pub fn build(protocol: Protocol, pool_size: usize, connect_timeout: Duration) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_max_idle_per_host(pool_size)
        .pool_idle_timeout(Duration::from_secs(30));
    if protocol == Protocol::H2 {
        builder.http2_only(true);
    }
    builder.build(connector)
}

//! Upstream connection pools, one per backend, kept across routing-table swaps.
//!
//! Owns: the pooled HTTP client for each backend URL and how a request URI is
//! rewritten onto it. The upstream address always comes from config: the
//! client's Host or URI never choose where abgate connects.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use http::uri::{PathAndQuery, Uri};
use http::HeaderValue;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::BackendUrl;

/// The body type abgate sends upstream: the client's body, streamed.
pub type UpstreamRequestBody = Incoming;

type HttpClient = Client<HttpConnector, UpstreamRequestBody>;

/// One backend's connection pool.
pub struct Upstream {
    pub url: BackendUrl,
    /// The `Host` header sent upstream (the backend's own authority).
    pub host_header: HeaderValue,
    client: HttpClient,
}

impl Upstream {
    fn new(url: BackendUrl, connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            // Backends close idle keep-alive connections too; 90s like Go's
            // http.Transport keeps warm connections without hoarding them.
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        let host_header = HeaderValue::from_str(url.authority.as_str())
            .expect("an http::uri::Authority is a valid header value");
        Upstream {
            url,
            host_header,
            client,
        }
    }

    /// The absolute URI of `path_and_query` on this backend.
    pub fn uri_for(&self, path_and_query: Option<&PathAndQuery>) -> Uri {
        let pq = path_and_query.map_or("/", |p| p.as_str());
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.url.scheme.clone());
        parts.authority = Some(self.url.authority.clone());
        parts.path_and_query = Some(if self.url.base_path.is_empty() {
            path_and_query
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"))
        } else {
            // The base path was validated at config time and pq came from a
            // parsed request, so their concatenation is a valid path.
            format!("{}{}", self.url.base_path, pq)
                .parse()
                .unwrap_or_else(|_| PathAndQuery::from_static("/"))
        });
        Uri::from_parts(parts).expect("scheme, authority and path are all set")
    }

    pub fn request(
        &self,
        req: http::Request<UpstreamRequestBody>,
    ) -> hyper_util::client::legacy::ResponseFuture {
        self.client.request(req)
    }
}

/// Every backend's pool, keyed by (URL, connect timeout). A table rebuild asks for
/// its backends here, so unchanged backends keep their warm connections.
#[derive(Default)]
pub struct UpstreamPool {
    pools: DashMap<(String, Duration), Arc<Upstream>>,
}

impl UpstreamPool {
    pub fn get(&self, url: &BackendUrl, connect_timeout: Duration) -> Arc<Upstream> {
        self.pools
            .entry((url.text.clone(), connect_timeout))
            .or_insert_with(|| Arc::new(Upstream::new(url.clone(), connect_timeout)))
            .clone()
    }

    /// Drops pools no routing table references any more (call after a swap).
    pub fn prune(&self) {
        self.pools.retain(|_, u| Arc::strong_count(u) > 1);
    }

    pub fn len(&self) -> usize {
        self.pools.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pools.is_empty()
    }
}

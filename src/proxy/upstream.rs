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
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::guarded_body::RequestBody;
use crate::config::{Backend, BackendUrl, UpstreamProtocol, UpstreamTls};

/// The body type abgate sends upstream: the client's body, streamed through
/// its size and idle limits.
pub type UpstreamRequestBody = RequestBody;

/// One connector type for every backend: plain TCP for `http://`, rustls for
/// `https://` (the scheme of the request URI decides).
type HttpClient = Client<HttpsConnector<HttpConnector>, UpstreamRequestBody>;

/// One backend's connection pool.
pub struct Upstream {
    pub url: BackendUrl,
    /// The `Host` header sent upstream (the backend's own authority).
    pub host_header: HeaderValue,
    pub protocol: UpstreamProtocol,
    client: HttpClient,
}

impl Upstream {
    fn new(
        url: BackendUrl,
        protocol: UpstreamProtocol,
        tls: &UpstreamTls,
        connect_timeout: Duration,
    ) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        // The TLS layer above needs https URIs passed down.
        http.enforce_http(false);
        // The files were checked when the config was validated; if they broke
        // since, every connection to this backend fails (502) with the reason
        // logged here, rather than the whole table failing to build.
        let tls_config = if url.scheme == http::uri::Scheme::HTTPS {
            super::tls::client_config(tls).unwrap_or_else(|e| {
                tracing::error!(backend = %url.text, error = %e, "TLS settings unusable; https requests will fail");
                super::tls::plain_client_config()
            })
        } else {
            super::tls::plain_client_config()
        };
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config)
            .https_or_http();
        let connector = match protocol {
            UpstreamProtocol::Http1 => builder.enable_http1().wrap_connector(http),
            UpstreamProtocol::Http2 => builder.enable_http2().wrap_connector(http),
        };
        let mut client = Client::builder(TokioExecutor::new());
        client
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            // Backends close idle keep-alive connections too; 90s like Go's
            // http.Transport keeps warm connections without hoarding them.
            .pool_idle_timeout(Duration::from_secs(90))
            // hyper-util's default is unbounded; 64 idle connections per backend
            // covers bursts without pinning sockets after them.
            .pool_max_idle_per_host(64);
        if protocol == UpstreamProtocol::Http2 {
            // Prior knowledge on http:// (h2c); on https:// ALPN offers only h2.
            client.http2_only(true);
        }
        let client = client.build(connector);
        let host_header = HeaderValue::from_str(url.authority.as_str())
            .expect("an http::uri::Authority is a valid header value");
        Upstream {
            url,
            host_header,
            protocol,
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

/// What makes two backends share a pool: same URL, protocol, TLS files and
/// connect timeout.
type PoolKey = (String, UpstreamProtocol, UpstreamTls, Duration);

/// Every backend's pool, keyed by [`PoolKey`]. A table rebuild asks for its
/// backends here, so unchanged backends keep their warm connections.
#[derive(Default)]
pub struct UpstreamPool {
    pools: DashMap<PoolKey, Arc<Upstream>>,
}

impl UpstreamPool {
    pub fn get(&self, backend: &Backend, connect_timeout: Duration) -> Arc<Upstream> {
        let key = (
            backend.url.text.clone(),
            backend.protocol,
            backend.tls.clone(),
            connect_timeout,
        );
        self.pools
            .entry(key)
            .or_insert_with(|| {
                Arc::new(Upstream::new(
                    backend.url.clone(),
                    backend.protocol,
                    &backend.tls,
                    connect_timeout,
                ))
            })
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

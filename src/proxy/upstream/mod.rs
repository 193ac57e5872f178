//! Upstream connection pools, one per backend, kept across routing-table swaps.
//!
//! Owns: the pooled connections for each backend URL, how a request URI is
//! rewritten onto it, and what sending one can fail with. HTTP/1 backends use
//! [`h1`], whose connections are driven by the request's own task; h2
//! backends (gRPC) use hyper-util's client, which multiplexes many requests
//! on one connection that needs a task of its own anyway. The upstream
//! address always comes from config: the client's Host or URI never choose
//! where abgate connects.

pub mod h1;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use http::uri::{PathAndQuery, Uri};
use http::HeaderValue;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
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

/// How requests reach one backend.
enum Transport {
    H1(Arc<h1::H1Pool>),
    /// Boxed: hyper-util's client is large, and this is one per backend.
    H2(Box<HttpClient>),
}

/// One backend's connection pool.
pub struct Upstream {
    pub url: BackendUrl,
    /// The `Host` header sent upstream (the backend's own authority).
    pub host_header: HeaderValue,
    pub protocol: UpstreamProtocol,
    client: Transport,
}

/// Why a request got no response head from its backend.
#[derive(Debug)]
pub enum UpstreamError {
    /// Dialing (TCP or TLS) failed or timed out.
    Connect(BoxError),
    /// The connection failed while sending or reading the head.
    Hyper(hyper::Error),
    /// The connection ended without an answer and without an error.
    Closed,
    /// hyper-util's client (h2 backends) failed.
    Pooled(hyper_util::client::legacy::Error),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Connect(e) => write!(f, "connect: {e}"),
            UpstreamError::Hyper(e) => write!(f, "{e}"),
            UpstreamError::Closed => f.write_str("connection closed before a response"),
            UpstreamError::Pooled(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UpstreamError::Connect(e) => Some(e.as_ref()),
            UpstreamError::Hyper(e) => Some(e),
            UpstreamError::Closed => None,
            UpstreamError::Pooled(e) => Some(e),
        }
    }
}

/// A request on its way to its backend, until the response head.
///
/// Not an `async fn`: one would keep the request beside the pool's future
/// that holds it too, in every request's state. The HTTP/1 send is boxed:
/// a request's future is moved whole at each level of the call (hyper's
/// connection task, the handler, forwarding), so a pointer here keeps ~1 KiB
/// out of every one of those moves for one allocation.
pub enum Sending<'u> {
    H1(
        Pin<
            Box<
                dyn Future<Output = Result<http::Response<h1::PooledBody>, UpstreamError>>
                    + Send
                    + 'u,
            >,
        >,
    ),
    H2(hyper_util::client::legacy::ResponseFuture),
}

impl Future for Sending<'_> {
    type Output = Result<http::Response<UpstreamBody>, UpstreamError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Sending::H1(f) => f
                .as_mut()
                .poll(cx)
                .map(|r| r.map(|resp| resp.map(UpstreamBody::H1))),
            Sending::H2(f) => Pin::new(f).poll(cx).map(|r| {
                r.map(|resp| resp.map(UpstreamBody::H2))
                    .map_err(UpstreamError::Pooled)
            }),
        }
    }
}

/// A backend's response body.
pub enum UpstreamBody {
    /// From a pooled HTTP/1 connection, which polling this body drives.
    H1(h1::PooledBody),
    /// From hyper-util's client (h2).
    H2(Incoming),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpstreamBody::H1(b) => std::pin::Pin::new(b).poll_frame(cx),
            UpstreamBody::H2(b) => std::pin::Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::H1(b) => b.is_end_stream(),
            UpstreamBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::H1(b) => b.size_hint(),
            UpstreamBody::H2(b) => b.size_hint(),
        }
    }
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
        let host_header = HeaderValue::from_str(url.authority.as_str())
            .expect("an http::uri::Authority is a valid header value");
        if protocol == UpstreamProtocol::Http1 {
            let connector = builder.enable_http1().wrap_connector(http);
            let dial = Uri::builder()
                .scheme(url.scheme.clone())
                .authority(url.authority.clone())
                .path_and_query("/")
                .build()
                .expect("scheme and authority come from a parsed URL");
            let pool = h1::H1Pool::new(connector, dial, h1::PoolLimits::default());
            return Upstream {
                url,
                host_header,
                protocol,
                client: Transport::H1(Arc::new(pool)),
            };
        }
        let connector = builder.enable_http2().wrap_connector(http);
        let mut client = Client::builder(TokioExecutor::new());
        client
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            // Backends close idle keep-alive connections too; 90s like Go's
            // http.Transport keeps warm connections without hoarding them.
            .pool_idle_timeout(Duration::from_secs(90))
            // hyper-util's default is unbounded; 64 idle connections per backend
            // covers bursts without pinning sockets after them.
            .pool_max_idle_per_host(h1::MAX_IDLE)
            // Prior knowledge on http:// (h2c); on https:// ALPN offers only h2.
            .http2_only(true);
        Upstream {
            url,
            host_header,
            protocol,
            client: Transport::H2(Box::new(client.build(connector))),
        }
    }

    /// The URI of `path_and_query` on this backend: origin form for HTTP/1
    /// (`/v1/chat?x`, what an origin server expects on the request line),
    /// absolute for h2 (hyper sends it as `:scheme` and `:authority`).
    pub fn uri_for(&self, path_and_query: Option<&PathAndQuery>) -> Uri {
        let mut parts = http::uri::Parts::default();
        if self.protocol == UpstreamProtocol::Http2 {
            parts.scheme = Some(self.url.scheme.clone());
            parts.authority = Some(self.url.authority.clone());
        }
        parts.path_and_query = Some(if self.url.base_path.is_empty() {
            path_and_query
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"))
        } else {
            // The base path was validated at config time and pq came from a
            // parsed request, so their concatenation is a valid path.
            let pq = path_and_query.map_or("/", |p| p.as_str());
            format!("{}{}", self.url.base_path, pq)
                .parse()
                .unwrap_or_else(|_| PathAndQuery::from_static("/"))
        });
        Uri::from_parts(parts).expect("a path, with scheme and authority or neither")
    }

    /// Sends `req` (its URI from [`Self::uri_for`]) and waits for the head.
    pub fn request(&self, req: http::Request<UpstreamRequestBody>) -> Sending<'_> {
        match &self.client {
            Transport::H1(pool) => Sending::H1(Box::pin(pool.send(req))),
            Transport::H2(client) => Sending::H2(client.request(req)),
        }
    }

    /// Idle HTTP/1 connections pooled now (0 for h2 backends).
    pub fn idle_connections(&self) -> usize {
        match &self.client {
            Transport::H1(pool) => pool.idle_count(),
            Transport::H2(_) => 0,
        }
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

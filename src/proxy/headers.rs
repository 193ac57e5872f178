//! Header hygiene between client and backend.
//!
//! Owns: removing hop-by-hop headers (RFC 9110 §7.6.1) in both directions and
//! adding the `x-forwarded-*` headers.

use std::net::IpAddr;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
];

/// Removes hop-by-hop headers: the fixed set, every `proxy-*` header, and every
/// header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names (standard ones
    // compare by tag) instead of a hashed removal per hop-by-hop name.
    let any = headers
        .keys()
        .any(|k| HOP_BY_HOP.contains(k) || k.as_str().starts_with("proxy-"));
    if !any {
        return;
    }
    // Names listed in Connection must go too; collecting them only allocates when
    // a client actually lists custom hop-by-hop headers.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    if headers.keys().any(|k| k.as_str().starts_with("proxy-")) {
        let proxy: Vec<HeaderName> = headers
            .keys()
            .filter(|k| k.as_str().starts_with("proxy-"))
            .cloned()
            .collect();
        for name in proxy {
            headers.remove(name);
        }
    }
}

/// The client's address as an `x-forwarded-for` element, built once per
/// connection so a request without a forwarded chain reuses it (a reference
/// count, no allocation).
pub fn peer_value(peer: IpAddr) -> HeaderValue {
    HeaderValue::from_maybe_shared(Bytes::from(peer.to_string()))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Adds `x-forwarded-for` (appending the peer to any existing chain, as nginx's
/// `$proxy_add_x_forwarded_for` does), `x-forwarded-proto` and `x-forwarded-host`.
/// `peer` comes from [`peer_value`].
pub fn add_forwarded(
    headers: &mut HeaderMap,
    peer: &HeaderValue,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    static XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
    static XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
    static XFH: HeaderName = HeaderName::from_static("x-forwarded-host");
    // A previous chain that is not visible ASCII is replaced, not extended.
    let chain = match headers.get(&XFF).filter(|v| v.to_str().is_ok()) {
        Some(prev) => {
            let mut v = Vec::with_capacity(prev.len() + 2 + peer.len());
            v.extend_from_slice(prev.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(peer.as_bytes());
            HeaderValue::from_maybe_shared(Bytes::from(v)).unwrap_or_else(|_| peer.clone())
        }
        None => peer.clone(),
    };
    headers.insert(XFF.clone(), chain);
    headers.insert(XFP.clone(), HeaderValue::from_static(proto));
    match host {
        Some(h) => {
            headers.insert(XFH.clone(), h.clone());
        }
        None => {
            headers.remove(&XFH);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("x-secret", "1"),
            ("x-kept", "1"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["x-kept"]);
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        let host = HeaderValue::from_static("api.example.com");
        let peer = peer_value("127.0.0.1".parse().unwrap());
        add_forwarded(&mut h, &peer, "http", Some(&host));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "api.example.com");
        // Without a chain the peer alone; the per-connection value is reused.
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, &peer, "https", None);
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert!(h.get("x-forwarded-host").is_none());
        // A chain that is not visible ASCII is replaced by the peer.
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"10.0.0.1\xff").unwrap(),
        );
        add_forwarded(&mut h, &peer, "http", None);
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    }
}

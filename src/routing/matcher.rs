//! Request matching: does a request belong to an experiment?
//!
//! Pure functions over borrowed request parts; no allocation. The head
//! (host, path, headers) is matched first; a rule on the body's `model` is
//! looked at only once the head matches, so only such requests are peeked.

use http::HeaderMap;

use super::body::BodyFields;
use crate::config::{HeaderRule, Match};

/// The parts of a request that routing looks at.
pub struct RequestView<'a> {
    /// Lower-case host without port, if the request named one.
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    /// What a peek of the body found; `None` while the body is unread.
    pub body: Option<&'a BodyFields<'a>>,
}

/// Strips the port from a Host value and checks it is plausibly a host.
pub fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        // IPv6 literal: "[::1]:8080"
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// Whether the request matches `m`, given its body (see [`matches_head`]
/// and [`matches_body`]); a body rule never matches an unread body.
pub fn matches(m: &Match, req: &RequestView<'_>) -> bool {
    matches_head(m, req) && (!m.needs_body() || req.body.is_some_and(|b| matches_body(m, b)))
}

/// The body half of a match: the `model` read from a body no larger than the
/// rule's `max_peek`.
pub fn matches_body(m: &Match, body: &BodyFields<'_>) -> bool {
    match &m.model {
        None => true,
        Some(rule) => {
            body.len <= m.max_peek && body.model.as_deref().is_some_and(|x| rule.matches(x))
        }
    }
}

/// The head half of a match: host, path and headers.
pub fn matches_head(m: &Match, req: &RequestView<'_>) -> bool {
    if let Some(host) = &m.host {
        match req.host {
            Some(h) if h.eq_ignore_ascii_case(host) => {}
            _ => return false,
        }
    }
    if let Some(prefix) = &m.path_prefix {
        if !path_has_prefix(req.path, prefix) {
            return false;
        }
    }
    m.headers.iter().all(|hm| {
        req.headers.get_all(&hm.name).iter().any(|v| {
            let Ok(v) = v.to_str() else { return false };
            match &hm.rule {
                HeaderRule::Exact(x) => v == x,
                HeaderRule::Prefix(p) => v.starts_with(p.as_str()),
                HeaderRule::Regex(r) => r.is_match(v),
            }
        })
    })
}

/// Segment-aware prefix: `/v1/models/a` matches `/v1/models/a` and
/// `/v1/models/a/predict` but not `/v1/models/ab` (a prefix ending in `/`
/// matches anything below it).
fn path_has_prefix(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with(['/', '?']),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HeaderMatch;

    fn view<'a>(host: Option<&'a str>, path: &'a str, headers: &'a HeaderMap) -> RequestView<'a> {
        RequestView {
            host,
            path,
            headers,
            body: None,
        }
    }

    #[test]
    fn path_prefix_respects_segments() {
        assert!(path_has_prefix("/v1/models/a", "/v1/models/a"));
        assert!(path_has_prefix("/v1/models/a/infer", "/v1/models/a"));
        assert!(!path_has_prefix("/v1/models/ab", "/v1/models/a"));
        assert!(path_has_prefix("/v1/models/ab", "/v1/models/"));
        assert!(path_has_prefix("/anything", "/"));
    }

    #[test]
    fn host_port_is_ignored() {
        assert_eq!(host_without_port("api.example.com:8080"), "api.example.com");
        assert_eq!(host_without_port("api.example.com"), "api.example.com");
        assert_eq!(host_without_port("[::1]:8080"), "[::1]");
    }

    #[test]
    fn all_conditions_must_hold() {
        let m = Match {
            host: Some("api.example.com".into()),
            path_prefix: Some("/v1".into()),
            headers: vec![
                HeaderMatch {
                    name: "x-tenant".parse().unwrap(),
                    rule: HeaderRule::Exact("acme".into()),
                },
                HeaderMatch {
                    name: "x-model".parse().unwrap(),
                    rule: HeaderRule::Regex(regex::Regex::new("^gpt-[0-9]+$").unwrap()),
                },
            ],
            ..Default::default()
        };
        let mut h = HeaderMap::new();
        h.insert("x-tenant", "acme".parse().unwrap());
        h.insert("x-model", "gpt-4".parse().unwrap());
        assert!(matches(&m, &view(Some("API.example.com"), "/v1/chat", &h)));
        assert!(!matches(&m, &view(Some("other"), "/v1/chat", &h)));
        assert!(!matches(&m, &view(None, "/v1/chat", &h)));
        assert!(!matches(&m, &view(Some("api.example.com"), "/v2", &h)));
        h.insert("x-model", "gpt-four".parse().unwrap());
        assert!(!matches(&m, &view(Some("api.example.com"), "/v1/chat", &h)));
        h.insert("x-model", "gpt-4".parse().unwrap());
        h.insert("x-tenant", "acme-corp".parse().unwrap());
        assert!(!matches(&m, &view(Some("api.example.com"), "/v1/chat", &h)));
    }

    #[test]
    fn a_model_rule_needs_a_read_body_within_its_peek() {
        use crate::config::ModelRule;
        let m = Match {
            model: Some(ModelRule::Prefix("gpt-".into())),
            max_peek: 100,
            ..Default::default()
        };
        let h = HeaderMap::new();
        let mut v = view(None, "/", &h);
        assert!(matches_head(&m, &v));
        assert!(!matches(&m, &v));
        let read = |model: &'static str, len| BodyFields {
            model: Some(model.into()),
            unit: None,
            len,
        };
        let gpt = read("gpt-x", 50);
        v.body = Some(&gpt);
        assert!(matches(&m, &v));
        let llama = read("llama-x", 50);
        v.body = Some(&llama);
        assert!(!matches(&m, &v));
        let large = read("gpt-x", 101);
        v.body = Some(&large);
        assert!(!matches(&m, &v));
    }
}

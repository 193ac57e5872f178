//! Decoding an experiment's `capture:` key.
//!
//! `capture: { percent: 1, max_body: 64KiB, max_total: 1GiB,
//! redact_headers: [x-user-email], drop_fields: [user, email] }`; only
//! `percent` is required.

use super::decode::{Decoder, Fields};
use super::model::*;
use super::yaml::Node;

const CAPTURE: &[&str] = &[
    "percent",
    "max_body",
    "max_total",
    "redact_headers",
    "drop_fields",
];

/// The capture an experiment declares. `None`: an error was recorded.
pub(super) fn decode(d: &mut Decoder, node: &Node, path: &str) -> Option<Capture> {
    let f = d.fields(node, path, CAPTURE)?;
    let percent = match f.get("percent") {
        Some(n) => {
            let p = super::schema::weight(d, n, &f.path_of("percent"))?;
            if p == 0 {
                d.error(
                    f.path_of("percent"),
                    n.line,
                    "a capture keeps more than 0% of the requests (remove `capture:` to keep none)",
                );
                return None;
            }
            Some(p)
        }
        None => {
            d.error(path, node.line, "missing field `percent`");
            None
        }
    };
    let max_body = bounded(d, &f, "max_body", DEFAULT_CAPTURE_MAX_BODY, 1, 64 << 20);
    let max_total = bounded(
        d,
        &f,
        "max_total",
        DEFAULT_CAPTURE_MAX_TOTAL,
        64 << 10,
        1 << 50,
    );
    let redact_headers = match f.get("redact_headers") {
        Some(n) => names(d, n, &f.path_of("redact_headers"), true),
        None => Some(Vec::new()),
    };
    let drop_fields = match f.get("drop_fields") {
        Some(n) => names(d, n, &f.path_of("drop_fields"), false),
        None => Some(Vec::new()),
    };
    let (max_body, max_total) = (max_body?, max_total?);
    if max_body > max_total {
        d.error(
            f.path_of("max_body"),
            f.line,
            format!("max_body ({max_body} bytes) is larger than max_total ({max_total} bytes)"),
        );
        return None;
    }
    Some(Capture {
        percent: percent?,
        max_body,
        max_total,
        redact_headers: redact_headers?,
        drop_fields: drop_fields?,
    })
}

/// A byte size in `min..=max`, or its default.
fn bounded(
    d: &mut Decoder,
    f: &Fields,
    key: &str,
    default: u64,
    min: u64,
    max: u64,
) -> Option<u64> {
    let Some(n) = f.get(key) else {
        return Some(default);
    };
    let path = f.path_of(key);
    let v = d.size(n, &path)?;
    if !(min..=max).contains(&v) {
        d.error(
            path,
            n.line,
            format!("must be in {min}..={max} bytes, got {v}"),
        );
        return None;
    }
    Some(v)
}

/// A list of header names (lower-cased) or JSON keys, each non-empty.
fn names(d: &mut Decoder, node: &Node, path: &str, headers: bool) -> Option<Vec<String>> {
    let items = d.seq(node, path)?;
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let Some(name) = d.name(item, &p) else {
            ok = false;
            continue;
        };
        if headers {
            match http::HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) => out.push(h.as_str().to_string()),
                Err(_) => {
                    d.error(p, item.line, format!("{name:?} is not a valid header name"));
                    ok = false;
                }
            }
        } else {
            out.push(name);
        }
    }
    ok.then_some(out)
}

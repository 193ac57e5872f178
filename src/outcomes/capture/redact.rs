//! Redaction of a captured example: what is removed before anything is
//! written. Pure: bytes and names in, JSON out.
//!
//! Headers: the value of every header in [`ALWAYS_REDACTED_HEADERS`] or
//! `redact_headers` becomes `"[redacted]"` (the name stays, so a reader
//! knows it was sent). Bodies: every object key named in `drop_fields` is
//! removed at any depth, in a JSON body and in each SSE event's JSON data.
//! A body that cannot be read as JSON (or SSE of JSON) while `drop_fields`
//! is set is left out whole: a field the redaction cannot find must not be
//! written by accident.

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::config::ALWAYS_REDACTED_HEADERS;

/// Placeholder for a redacted header value.
pub const REDACTED: &str = "[redacted]";

/// What an experiment's capture removes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Redaction {
    /// Lower-case header names whose values are replaced (the defaults included).
    headers: Vec<String>,
    /// JSON keys removed at any depth.
    fields: Vec<String>,
}

/// How a captured body went into its example.
#[derive(Debug, Clone, PartialEq)]
pub enum BodyOut {
    /// JSON (redacted) or text (SSE with its events redacted, or plain text).
    Kept(Value),
    /// Bytes that are not UTF-8, kept as base64 (only without `drop_fields`).
    Binary(String),
    /// Left out, and why.
    Omitted(&'static str),
}

impl Redaction {
    pub fn new(redact_headers: &[String], drop_fields: &[String]) -> Redaction {
        let mut headers: Vec<String> = ALWAYS_REDACTED_HEADERS
            .iter()
            .map(|h| h.to_string())
            .collect();
        for h in redact_headers {
            let h = h.to_ascii_lowercase();
            if !headers.contains(&h) {
                headers.push(h);
            }
        }
        Redaction {
            headers,
            fields: drop_fields.to_vec(),
        }
    }

    /// Headers as a JSON object (a repeated header becomes a list), values
    /// of redacted ones replaced.
    pub fn headers(&self, headers: &http::HeaderMap) -> Value {
        let mut out = Map::new();
        for name in headers.keys() {
            let redacted = self.headers.iter().any(|h| h == name.as_str());
            let mut values: Vec<Value> = headers
                .get_all(name)
                .iter()
                .map(|v| {
                    Value::String(if redacted {
                        REDACTED.to_string()
                    } else {
                        String::from_utf8_lossy(v.as_bytes()).into_owned()
                    })
                })
                .collect();
            let v = if values.len() == 1 {
                values.pop().unwrap_or(Value::Null)
            } else {
                Value::Array(values)
            };
            out.insert(name.as_str().to_string(), v);
        }
        Value::Object(out)
    }

    /// A body, given its message's headers (content type and encoding).
    pub fn body(&self, headers: &http::HeaderMap, frames: &[Bytes]) -> BodyOut {
        let bytes: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
        if bytes.is_empty() {
            return BodyOut::Kept(Value::String(String::new()));
        }
        let encoded = headers
            .get(http::header::CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        let content_type = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if !encoded {
            if let Ok(mut v) = serde_json::from_slice::<Value>(&bytes) {
                self.drop_fields(&mut v);
                return BodyOut::Kept(v);
            }
            if let Ok(text) = std::str::from_utf8(&bytes) {
                if content_type.starts_with("text/event-stream") {
                    return BodyOut::Kept(Value::String(self.sse(text)));
                }
                if self.fields.is_empty() {
                    return BodyOut::Kept(Value::String(text.to_string()));
                }
            }
        }
        if !self.fields.is_empty() {
            return BodyOut::Omitted(if encoded {
                "compressed: drop_fields cannot be applied"
            } else {
                "not JSON: drop_fields cannot be applied"
            });
        }
        use base64::Engine;
        BodyOut::Binary(base64::engine::general_purpose::STANDARD.encode(&bytes))
    }

    /// An SSE stream with each `data:` line's JSON redacted. A data line
    /// that is not JSON (and not `[DONE]`) is replaced while `drop_fields`
    /// is set: a multi-line event's pieces cannot be redacted one by one.
    fn sse(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for line in text.split_inclusive('\n') {
            let (body, end) = match line.strip_suffix('\n') {
                Some(b) => match b.strip_suffix('\r') {
                    Some(b) => (b, "\r\n"),
                    None => (b, "\n"),
                },
                None => (line, ""),
            };
            let Some(data) = body.strip_prefix("data:") else {
                out.push_str(line);
                continue;
            };
            let payload = data.strip_prefix(' ').unwrap_or(data);
            match serde_json::from_str::<Value>(payload) {
                Ok(mut v) => {
                    self.drop_fields(&mut v);
                    out.push_str("data: ");
                    out.push_str(&v.to_string());
                }
                Err(_) if self.fields.is_empty() || payload.trim() == "[DONE]" => {
                    out.push_str(body);
                }
                Err(_) => out.push_str("data: [omitted: not JSON]"),
            }
            out.push_str(end);
        }
        out
    }

    fn drop_fields(&self, v: &mut Value) {
        if self.fields.is_empty() {
            return;
        }
        match v {
            Value::Object(m) => {
                m.retain(|k, _| !self.fields.iter().any(|f| f == k));
                for child in m.values_mut() {
                    self.drop_fields(child);
                }
            }
            Value::Array(items) => {
                for child in items {
                    self.drop_fields(child);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn credentials_and_named_headers_are_redacted_by_name() {
        let r = Redaction::new(&["X-User-Email".into()], &[]);
        let h = headers(&[
            ("authorization", "Bearer sk-secret"),
            ("cookie", "a=1"),
            ("cookie", "b=2"),
            ("x-user-email", "ann@example.com"),
            ("content-type", "application/json"),
        ]);
        let v = r.headers(&h);
        assert_eq!(v["authorization"], REDACTED);
        assert_eq!(v["cookie"], serde_json::json!([REDACTED, REDACTED]));
        assert_eq!(v["x-user-email"], REDACTED);
        assert_eq!(v["content-type"], "application/json");
        assert!(!v.to_string().contains("secret"));
    }

    #[test]
    fn fields_are_dropped_at_any_depth_in_json_and_sse() {
        let r = Redaction::new(&[], &["email".into(), "user".into()]);
        let json = headers(&[("content-type", "application/json")]);
        let body =
            br#"{"user":"u1","messages":[{"role":"user","content":"hi","meta":{"email":"a@b"}}]}"#;
        let BodyOut::Kept(v) = r.body(&json, &[Bytes::from_static(body)]) else {
            panic!("kept");
        };
        assert_eq!(
            v,
            serde_json::json!({"messages":[{"role":"user","content":"hi","meta":{}}]})
        );
        let sse = headers(&[("content-type", "text/event-stream")]);
        let stream = "data: {\"choices\":[],\"user\":\"u1\"}\n\n: keep-alive\ndata: not json\n\ndata: [DONE]\n\n";
        let BodyOut::Kept(Value::String(s)) = r.body(&sse, &[Bytes::from(stream)]) else {
            panic!("kept");
        };
        assert_eq!(
            s,
            "data: {\"choices\":[]}\n\n: keep-alive\ndata: [omitted: not JSON]\n\ndata: [DONE]\n\n"
        );
        // Text that cannot be redacted is left out; without drop_fields it is kept.
        let text = headers(&[("content-type", "text/plain")]);
        let plain = [Bytes::from_static(b"email: a@b")];
        assert!(matches!(r.body(&text, &plain), BodyOut::Omitted(_)));
        let none = Redaction::new(&[], &[]);
        assert_eq!(
            none.body(&text, &plain),
            BodyOut::Kept(Value::String("email: a@b".into()))
        );
        let gz = headers(&[("content-encoding", "gzip")]);
        assert!(matches!(
            r.body(&gz, &[Bytes::from_static(b"{}")]),
            BodyOut::Omitted(_)
        ));
        assert!(matches!(
            none.body(&gz, &[Bytes::from_static(b"\x1f\x8b")]),
            BodyOut::Binary(_)
        ));
    }
}

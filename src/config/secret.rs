//! Backend header values with secret references: `"Bearer ${file:/run/secrets/key}"`
//! or `"${env:OPENAI_API_KEY}"`, literal text around the reference allowed.
//!
//! Owns: reading `backends.*.headers`, resolving its references when a config
//! is loaded or reloaded (so a secret file rotated on disk is picked up by the
//! next reload), and turning the result into a sensitive header value.
//! Never: puts a resolved value (or any part of one) into an error, a log line
//! or a `Debug` string. Errors name the key and the reference, which are not
//! secret; `config::redact` hides every value of these headers in shown texts.

use super::decode::{Decoder, Fields};
use super::model::SecretHeader;
use super::yaml::Node;

/// Headers abgate owns on the way up; a backend may not set them.
const RESERVED: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
];

/// Reads `headers: { name: "value with ${file:...} or ${env:...}" }`.
pub(super) fn headers(d: &mut Decoder, node: &Node, path: &str) -> Option<Vec<SecretHeader>> {
    let f: Fields = d.fields(node, path, &[])?;
    let mut out = Vec::new();
    let mut ok = true;
    for e in f.entries() {
        let hpath = f.path_of(&e.key);
        let name = match http::HeaderName::from_bytes(e.key.as_bytes()) {
            Ok(n) if RESERVED.contains(&n.as_str()) => {
                d.error(&hpath, e.key_line, "abgate sets this header itself");
                ok = false;
                continue;
            }
            Ok(n) => n,
            Err(_) => {
                d.error(&hpath, e.key_line, "not a valid header name");
                ok = false;
                continue;
            }
        };
        let Some(template) = d.string(&e.value, &hpath) else {
            ok = false;
            continue;
        };
        if template.contains(super::redact::REDACTED) {
            // A shown config applied back: the secret it hid is not in it.
            d.error(
                &hpath,
                e.value.line,
                "is the placeholder abgate shows in place of a secret; write the value, or better a ${file:PATH} or ${env:NAME} reference (shown as written)",
            );
            ok = false;
            continue;
        }
        match resolve(&template, d.resolve_secrets) {
            Ok(None) => out.push(SecretHeader { name, value: None }),
            Ok(Some(text)) => match http::HeaderValue::from_bytes(text.as_bytes()) {
                Ok(mut v) => {
                    v.set_sensitive(true);
                    out.push(SecretHeader {
                        name,
                        value: Some(v),
                    });
                }
                Err(_) => {
                    // The value itself is never shown.
                    d.error(
                        &hpath,
                        e.value.line,
                        "the resolved value is not a valid header value (control characters or a line break inside)",
                    );
                    ok = false;
                }
            },
            Err(msg) => {
                d.error(&hpath, e.value.line, msg);
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

/// Whether a header template shows no secret: only `${file:...}` /
/// `${env:...}` references, optionally after an auth scheme word.
pub(super) fn references_only(template: &str) -> bool {
    let mut rest = template;
    for scheme in ["Bearer ", "Basic "] {
        if let Some(r) = rest.strip_prefix(scheme) {
            rest = r;
            break;
        }
    }
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let Some(after) = rest.strip_prefix("${") else {
            return false;
        };
        let Some(end) = after.find('}') else {
            return false;
        };
        match after[..end].split_once(':') {
            Some(("file" | "env", v)) if !v.is_empty() => {}
            _ => return false,
        }
        rest = &after[end + 1..];
    }
    true
}

/// The template with its references replaced; `Ok(None)` when `read` is
/// false (syntax checked only). Errors name the reference, never a value.
pub(super) fn resolve(template: &str, read: bool) -> Result<Option<String>, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let Some(end) = after.find('}') else {
            return Err("unterminated `${`; write ${file:PATH} or ${env:NAME}".into());
        };
        let reference = &after[..end];
        match reference.split_once(':') {
            Some(("file", file)) if !file.is_empty() => {
                if read {
                    let text = std::fs::read_to_string(file).map_err(|e| {
                        format!("cannot read secret file {file}: {}", io_reason(&e))
                    })?;
                    // Secret files usually end with a newline the value lacks.
                    out.push_str(text.trim_end_matches(['\n', '\r']));
                }
            }
            Some(("env", var)) if !var.is_empty() => {
                if read {
                    let value = std::env::var(var).map_err(|_| {
                        format!("environment variable {var} is not set (or not UTF-8)")
                    })?;
                    out.push_str(&value);
                }
            }
            _ => {
                return Err(format!(
                    "unknown reference ${{{reference}}}; write ${{file:PATH}} or ${{env:NAME}}"
                ))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(read.then_some(out))
}

/// The kind of an I/O error without its OS-specific text.
fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        std::io::ErrorKind::InvalidData => "not UTF-8 text".into(),
        k => k.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_references_show_no_secret() {
        for shown in [
            "${file:/run/k}",
            "Bearer ${file:/run/k}",
            "Basic ${env:B}",
            "${env:A}${env:B}",
        ] {
            assert!(references_only(shown), "{shown}");
        }
        for hidden in [
            "sk-literal",
            "Bearer sk-literal",
            "Bearer ",
            "",
            "x${env:A}",
            "${env:A}-suffix",
            "${other:A}",
            "${env:A",
        ] {
            assert!(!references_only(hidden), "{hidden}");
        }
    }

    #[test]
    fn references_resolve_with_literal_text_around_them() {
        let dir = std::env::temp_dir().join(format!("abgate-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("key");
        std::fs::write(&file, "sk-123\n").unwrap();
        let t = format!("Bearer ${{file:{}}}", file.display());
        assert_eq!(resolve(&t, true).unwrap().as_deref(), Some("Bearer sk-123"));
        assert_eq!(resolve(&t, false).unwrap(), None);
        assert_eq!(resolve("plain", true).unwrap().as_deref(), Some("plain"));
        std::env::set_var("ABGATE_SECRET_TEST_VAR", "v1");
        assert_eq!(
            resolve("a ${env:ABGATE_SECRET_TEST_VAR} b", true)
                .unwrap()
                .as_deref(),
            Some("a v1 b")
        );
        let missing = resolve("${file:/nonexistent/abgate/key}", true).unwrap_err();
        assert!(missing.contains("/nonexistent/abgate/key"), "{missing}");
        assert!(resolve("${env:ABGATE_SURELY_UNSET_VAR}", true).is_err());
        assert!(resolve("${vault:x}", false).is_err());
        assert!(resolve("${file:x", false).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn debug_never_prints_the_value() {
        let mut v = http::HeaderValue::from_static("Bearer sk-live-999");
        v.set_sensitive(true);
        let h = SecretHeader {
            name: http::header::AUTHORIZATION,
            value: Some(v),
        };
        let s = format!("{h:?}");
        assert!(!s.contains("sk-live"), "{s}");
        assert!(s.contains("REDACTED"), "{s}");
    }
}

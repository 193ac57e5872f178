//! Redaction: a config text with its secrets replaced, for people to read
//! (the config history and its diffs).
//!
//! Owns: what counts as a secret in a config. Files hold key material, so the
//! config names only paths; what can still carry a secret in the text is:
//! - credentials in any URL (`https://user:pass@host` → `https://REDACTED@host`)
//!   and URL query strings (`?token=...` → `?REDACTED`);
//! - a webhook URL's path (`notify.url`: webhook services put their secret there);
//! - the values a header match compares for a credential-bearing header
//!   (`authorization`, `cookie`, or a name with `token`, `key`, `secret`,
//!   `password` or `auth` in it);
//! - every value of a backend's injected `headers`, except one made only of
//!   `${file:...}` / `${env:...}` references (optionally after `Bearer ` or
//!   `Basic `): a reference names where the secret is, not what it is, and
//!   showing it lets `config get` → edit → `config apply` keep the header.
//!   The placeholder itself is refused on apply (see `config::secret`), so a
//!   literal secret shown as `REDACTED` can never be applied by mistake.
//!
//! Everything else is kept byte for byte, so a diff of two redacted versions
//! shows exactly what changed. A line holding a secret that cannot be found
//! verbatim (an escaped scalar) is replaced whole by a comment.
//!
//! Never: changes what is applied (a revert applies the stored text itself).

use super::yaml::{self, Node, Value};

/// What a secret is replaced with.
pub const REDACTED: &str = "REDACTED";

/// `text` with every secret replaced (see the module doc). Text that is not
/// YAML at all (never the case for an applied version) is not shown.
pub fn redact(text: &str) -> String {
    let Ok(root) = yaml::parse(text) else {
        return format!("# {REDACTED}: this text is not YAML, so it is not shown\n");
    };
    let mut secrets = Vec::new();
    walk(&root, &mut Vec::new(), &mut secrets);
    if secrets.is_empty() {
        return text.to_string();
    }
    let mut lines: Vec<String> = text.split_inclusive('\n').map(str::to_string).collect();
    for s in secrets {
        let Some(line) = s.line.checked_sub(1).and_then(|i| lines.get_mut(i)) else {
            continue;
        };
        if line.contains(&s.text) {
            *line = line.replace(&s.text, &s.replacement);
        } else {
            let indent: String = line.chars().take_while(|c| *c == ' ').collect();
            let newline = if line.ends_with('\n') { "\n" } else { "" };
            *line = format!("{indent}# {REDACTED}: this line holds a secret{newline}");
        }
    }
    lines.concat()
}

struct Secret {
    line: usize,
    text: String,
    replacement: String,
}

/// Collects the secrets under `node`; `path` holds the keys leading to it.
fn walk(node: &Node, path: &mut Vec<String>, out: &mut Vec<Secret>) {
    match &node.value {
        Value::Scalar(s) => {
            let injected = path.len() == 4 && path[0] == "backends" && path[2] == "headers";
            if injected {
                if !s.text.is_empty() && !super::secret::references_only(&s.text) {
                    out.push(Secret {
                        line: node.line,
                        text: s.text.clone(),
                        replacement: REDACTED.into(),
                    });
                }
                return;
            }
            let webhook = path.len() >= 2
                && path[path.len() - 1] == "url"
                && path[path.len() - 2] == "notify";
            if let Some(r) = redact_url(&s.text, webhook) {
                out.push(Secret {
                    line: node.line,
                    text: s.text.clone(),
                    replacement: r,
                });
            }
        }
        Value::Seq(items) => {
            for item in items {
                path.push("[]".into());
                walk(item, path, out);
                path.pop();
            }
        }
        Value::Map(entries) => {
            let sensitive_header = path.last().is_some_and(|k| k == "[]")
                && path.iter().rev().nth(1).is_some_and(|k| k == "headers")
                && entries.iter().any(|e| {
                    e.key == "name"
                        && matches!(&e.value.value, Value::Scalar(s) if credential_header(&s.text))
                });
            for e in entries {
                if sensitive_header && matches!(e.key.as_str(), "exact" | "prefix" | "regex") {
                    if let Value::Scalar(s) = &e.value.value {
                        if !s.text.is_empty() {
                            out.push(Secret {
                                line: e.value.line,
                                text: s.text.clone(),
                                replacement: REDACTED.into(),
                            });
                        }
                    }
                    continue;
                }
                path.push(e.key.clone());
                walk(&e.value, path, out);
                path.pop();
            }
        }
        Value::Null => {}
    }
}

/// Whether a header's values are credentials.
fn credential_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(
        n.as_str(),
        "authorization" | "proxy-authorization" | "cookie"
    ) || ["token", "key", "secret", "password", "auth"]
        .iter()
        .any(|w| n.contains(w))
}

/// Where a URL's authority ends (at `/`, `?` or `#`), not counting those
/// inside a `${file:/path}` reference.
fn authority_end(rest: &str) -> usize {
    let mut in_reference = false;
    let bytes = rest.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'$' if bytes.get(i + 1) == Some(&b'{') => in_reference = true,
            b'}' if in_reference => in_reference = false,
            b'/' | b'?' | b'#' if !in_reference => return i,
            _ => {}
        }
    }
    rest.len()
}

/// `user:${file:...}` or `user:${env:...}`: a password given by reference only.
fn userinfo_is_references(userinfo: &str) -> bool {
    userinfo
        .split_once(':')
        .is_some_and(|(user, pw)| !user.contains("${") && super::secret::references_only(pw))
}

/// The URL with its credentials and query (and, for a webhook, its path)
/// redacted; `None` when it is not a URL or holds nothing to redact.
fn redact_url(u: &str, webhook: bool) -> Option<String> {
    let (scheme, rest) = u.split_once("://")?;
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        return None;
    }
    let end = authority_end(rest);
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        // `user:${file:/run/pw}` names where the password is, not what it
        // is: shown, so `config get` -> edit -> `config apply` keeps it.
        Some((userinfo, _)) if userinfo_is_references(userinfo) => authority.to_string(),
        Some((_, host)) => format!("{REDACTED}@{host}"),
        None => authority.to_string(),
    };
    let (before_fragment, fragment) = match tail.split_once('#') {
        Some((t, f)) => (t, Some(f)),
        None => (tail, None),
    };
    let (path, query) = match before_fragment.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (before_fragment, None),
    };
    let path = if webhook && !path.is_empty() && path != "/" {
        format!("/{REDACTED}")
    } else {
        path.to_string()
    };
    let mut out = format!("{scheme}://{authority}{path}");
    if query.is_some() {
        out.push('?');
        out.push_str(REDACTED);
    }
    if let Some(f) = fragment.filter(|_| !webhook) {
        out.push('#');
        out.push_str(f);
    }
    (out != u).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials_and_queries_only() {
        assert_eq!(redact_url("http://127.0.0.1:9001", false), None);
        // A password given by reference is kept; a literal one is not.
        for kept in [
            "postgres://abgate:${file:/run/secrets/pg}@db:5432/abgate",
            "postgres://abgate:${env:PGPASSWORD}@db/abgate",
        ] {
            assert_eq!(redact_url(kept, false), None, "{kept}");
        }
        assert_eq!(
            redact_url("postgres://abgate:pw${env:X}@db/abgate", false).as_deref(),
            Some("postgres://REDACTED@db/abgate")
        );
        assert_eq!(redact_url("http://h:1/prefix", false), None);
        assert_eq!(
            redact_url("https://bob:hunter2@h:1/p?token=x#f", false).as_deref(),
            Some("https://REDACTED@h:1/p?REDACTED#f")
        );
        assert_eq!(
            redact_url("https://hooks.example.com/services/T0/B0/XYZ", true).as_deref(),
            Some("https://hooks.example.com/REDACTED")
        );
        assert_eq!(redact_url("not a url", false), None);
    }

    #[test]
    fn secrets_are_replaced_and_everything_else_is_kept() {
        let text = r#"# the team's config
backends:
  a: { url: "https://svc:s3cret@10.0.0.1:9001/v1?api_key=k" }
  b:
    url: http://127.0.0.1:9002
    headers:
      authorization: Bearer sk-literal
  c: { url: "http://127.0.0.1:9003", headers: { x-org: "${file:/run/org}" } }
experiments:
  - name: e
    notify: { url: "https://hooks.example.com/services/T0/B0/XYZ" }
    match:
      headers:
        - { name: x-api-key, exact: live-123 }
        - { name: x-tenant, exact: acme }
    arms:
      - { name: x, backend: a, weight: 100 }
"#;
        let r = redact(text);
        for secret in ["s3cret", "svc:", "api_key", "XYZ", "services", "live-123"] {
            assert!(!r.contains(secret), "{secret} left in:\n{r}");
        }
        assert!(
            r.contains(r#"url: "https://REDACTED@10.0.0.1:9001/v1?REDACTED""#),
            "{r}"
        );
        assert!(
            r.contains(r#"url: "https://hooks.example.com/REDACTED""#),
            "{r}"
        );
        assert!(r.contains("{ name: x-api-key, exact: REDACTED }"), "{r}");
        assert!(r.contains("{ name: x-tenant, exact: acme }"), "{r}");
        assert!(r.contains("url: http://127.0.0.1:9002\n"), "{r}");
        assert!(!r.contains("sk-literal"), "{r}");
        assert!(r.contains("authorization: REDACTED\n"), "{r}");
        // Only references: nothing secret, and a round trip keeps them.
        assert!(r.contains(r#"{ x-org: "${file:/run/org}" }"#), "{r}");
        assert_eq!(r.lines().count(), text.lines().count());
        assert!(r.starts_with("# the team's config\n"));
        // Nothing to redact: the text comes back as it was.
        let plain = "backends: { a: { url: \"http://127.0.0.1:1\" } }\n";
        assert_eq!(redact(plain), plain);
    }

    #[test]
    fn a_secret_not_written_verbatim_takes_its_line() {
        // "\x40" is "@": the parsed URL holds credentials the text spells differently.
        let text = "backends:\n  a: { url: \"http://u:p\\x40h:1\" }\n";
        assert_eq!(
            redact(text),
            "backends:\n  # REDACTED: this line holds a secret\n"
        );
    }
}

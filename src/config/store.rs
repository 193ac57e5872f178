//! Decoding the top-level `store:` key: where durable state lives.
//!
//! `store: { kind: sqlite }` (the default: `state_dir`'s embedded SQLite) or
//! `store: { kind: postgres, url: "postgres://abgate:${file:/run/secrets/pg}@db/abgate?sslmode=require",
//! pool: 8, ca_file: /etc/abgate/db-ca.pem }`. The URL may hold `${file:PATH}` and `${env:NAME}`
//! references (the password from a secret file, or the whole URL from the
//! environment); they are read when the config is loaded, and the shown
//! config keeps the reference, never the value.
//!
//! Read at startup only: the store holds the recorded config itself, so a
//! later config version cannot move it (see `control::apply`).

use super::decode::Decoder;
use super::model::{PostgresConfig, StoreConfig, DEFAULT_LEASE_TTL, DEFAULT_STORE_POOL};
use super::yaml::Node;

const STORE: &[&str] = &["kind", "url", "pool", "ca_file", "lease_ttl"];

pub(super) fn decode(d: &mut Decoder, node: &Node) -> Option<StoreConfig> {
    let f = d.fields(node, "store", STORE)?;
    let kind = match f.get("kind") {
        Some(n) => d.name(n, "store.kind")?,
        None => {
            d.error(
                "store",
                node.line,
                "missing field `kind` (sqlite or postgres)",
            );
            return None;
        }
    };
    let only_postgres = ["url", "pool", "ca_file", "lease_ttl"];
    match kind.as_str() {
        "sqlite" => {
            let mut ok = true;
            for key in only_postgres {
                if let Some(n) = f.get(key) {
                    d.error(
                        f.path_of(key),
                        n.line,
                        "only a postgres store has this key (kind: sqlite keeps its state in state_dir)",
                    );
                    ok = false;
                }
            }
            ok.then_some(StoreConfig::Sqlite)
        }
        "postgres" => {
            let url = match f.get("url") {
                Some(n) => url(d, n),
                None => {
                    d.error(
                        "store",
                        node.line,
                        "missing field `url` (postgres://user@host:port/db; the password as ${file:PATH} or ${env:NAME})",
                    );
                    None
                }
            };
            let pool = match f.get("pool") {
                Some(n) => d.integer(n, "store.pool", 1, 256).map(|p| p as usize),
                None => Some(DEFAULT_STORE_POOL),
            };
            let ca_file = match f.get("ca_file") {
                Some(_) => super::schema::pem_file(d, &f, "ca_file", super::schema::PemKind::Certs)
                    .map(Some),
                None => Some(None),
            };
            let lease_ttl = match f.get("lease_ttl") {
                Some(n) => d.duration(n, "store.lease_ttl").and_then(|t| {
                    if (std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(300))
                        .contains(&t)
                    {
                        Some(t)
                    } else {
                        d.error(
                            "store.lease_ttl",
                            n.line,
                            "must be from 1s to 5m (how long a silent leader keeps the lease)",
                        );
                        None
                    }
                }),
                None => Some(DEFAULT_LEASE_TTL),
            };
            Some(StoreConfig::Postgres(PostgresConfig {
                url: url?,
                pool: pool?,
                ca_file: ca_file?,
                lease_ttl: lease_ttl?,
            }))
        }
        other => {
            d.error(
                "store.kind",
                f.get("kind").map_or(node.line, |n| n.line),
                format!("unknown store kind {other:?}; expected sqlite or postgres"),
            );
            None
        }
    }
}

/// The URL, references resolved (when the decoder reads secrets), checked
/// for its scheme. Errors name the reference, never a resolved value.
fn url(d: &mut Decoder, n: &Node) -> Option<String> {
    let template = d.string(n, "store.url")?;
    if template.contains(super::redact::REDACTED) {
        d.error(
            "store.url",
            n.line,
            "is the placeholder abgate shows in place of a secret; write the password, or better a ${file:PATH} or ${env:NAME} reference",
        );
        return None;
    }
    let resolved = match super::secret::resolve(&template, d.resolve_secrets) {
        Ok(r) => r,
        Err(msg) => {
            d.error("store.url", n.line, msg);
            return None;
        }
    };
    // Without reading secrets only the written text can be checked: a URL
    // that is one reference (from the environment) is checked once resolved.
    let checked = resolved.as_deref().unwrap_or(&template);
    let postgres = checked.starts_with("postgres://") || checked.starts_with("postgresql://");
    let unchecked = resolved.is_none() && template.starts_with("${");
    if !postgres && !unchecked {
        d.error(
            "store.url",
            n.line,
            "must be a postgres:// or postgresql:// URL",
        );
        return None;
    }
    Some(resolved.unwrap_or(template))
}

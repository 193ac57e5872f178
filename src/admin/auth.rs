//! Admin authentication: bearer tokens compared in constant time, and the
//! DNS-rebinding guard on the Host header.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use subtle::ConstantTimeEq;

/// Named bearer tokens. Empty means "no token configured", which is only
/// allowed on a loopback admin listener.
#[derive(Clone, Default)]
pub struct AdminAuth {
    tokens: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read admin.token_file {path}: {source}")]
    TokenFile {
        path: String,
        source: std::io::Error,
    },
    #[error("admin.token_file {0} holds no token")]
    EmptyTokenFile(String),
}

impl AdminAuth {
    /// Tokens from `ABGATE_ADMIN_TOKEN` (named `admin`) and from the token file:
    /// one token per line, either `NAME:TOKEN` or a bare token (named `admin`).
    pub fn load(
        env_token: Option<&str>,
        token_file: Option<&Path>,
    ) -> Result<AdminAuth, AuthError> {
        let mut tokens = Vec::new();
        if let Some(t) = env_token.map(str::trim).filter(|t| !t.is_empty()) {
            tokens.push(("admin".to_string(), t.as_bytes().to_vec()));
        }
        if let Some(path) = token_file {
            let text = std::fs::read_to_string(path).map_err(|source| AuthError::TokenFile {
                path: path.display().to_string(),
                source,
            })?;
            let before = tokens.len();
            for line in text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
            {
                match line.split_once(':') {
                    Some((name, token)) if !name.trim().is_empty() && !token.trim().is_empty() => {
                        tokens.push((name.trim().to_string(), token.trim().as_bytes().to_vec()))
                    }
                    _ => tokens.push(("admin".to_string(), line.as_bytes().to_vec())),
                }
            }
            if tokens.len() == before {
                return Err(AuthError::EmptyTokenFile(path.display().to_string()));
            }
        }
        Ok(AdminAuth { tokens })
    }

    pub fn is_configured(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The token's name if `authorization` carries a valid bearer token. Every
    /// configured token is compared, in constant time, so timing reveals nothing.
    pub fn check(&self, authorization: Option<&[u8]>) -> Option<String> {
        let presented = authorization?.strip_prefix(b"Bearer ")?;
        let mut found = None;
        for (name, token) in &self.tokens {
            if bool::from(token.as_slice().ct_eq(presented)) && found.is_none() {
                found = Some(name.clone());
            }
        }
        found
    }
}

/// Whether `host` (a Host header value) names this admin listener rather than a
/// foreign site: a browser tricked by DNS rebinding sends the attacker's name.
pub fn host_is_local(host: &str, listen: SocketAddr) -> bool {
    let name = crate::routing::matcher::host_without_port(host);
    let name = name.trim_start_matches('[').trim_end_matches(']');
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match name.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback() || ip == listen.ip(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_checked() {
        let auth = AdminAuth::load(Some("s3cret"), None).unwrap();
        assert_eq!(auth.check(Some(b"Bearer s3cret")), Some("admin".into()));
        assert_eq!(auth.check(Some(b"Bearer s3cre")), None);
        assert_eq!(auth.check(Some(b"s3cret")), None);
        assert_eq!(auth.check(None), None);
        assert!(!AdminAuth::load(None, None).unwrap().is_configured());
    }

    #[test]
    fn hosts_are_checked_against_loopback_and_the_listener() {
        let l: SocketAddr = "127.0.0.1:9901".parse().unwrap();
        assert!(host_is_local("127.0.0.1:9901", l));
        assert!(host_is_local("localhost:9901", l));
        assert!(host_is_local("[::1]:9901", l));
        assert!(!host_is_local("evil.example.com", l));
        let public: SocketAddr = "10.0.0.5:9901".parse().unwrap();
        assert!(host_is_local("10.0.0.5:9901", public));
        assert!(!host_is_local("10.0.0.6", public));
    }
}

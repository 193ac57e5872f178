//! TLS on both sides of the proxy, with rustls and the `ring` provider.
//!
//! Owns: the listener's `ServerConfig` (swapped whole on certificate reload)
//! and the `ClientConfig` of `https://` backends, built from the PEM files that
//! [`crate::config::pem`] reads, and [`TlsError`], why one cannot be built.
//! Never: accepts protocol versions below TLS 1.2 or loads keys from anywhere
//! but the configured files.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::pem::{load_certs, load_key, PemError};
use crate::config::{ListenerTls, UpstreamTls};

/// TLS 1.3 and 1.2 only: rustls implements nothing older, and saying so here
/// keeps the promise visible if that ever changes.
static VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why a TLS config could not be built or swapped. On reload the previous
/// certificate stays in use, so every variant is reported, never fatal to a
/// running listener.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A configured PEM file is unreadable or holds the wrong thing.
    #[error(transparent)]
    Pem(#[from] PemError),
    /// The provider does not support the protocol versions asked for.
    #[error(transparent)]
    Versions(rustls::Error),
    /// The listener's certificate and key do not belong together.
    #[error("certificate and key do not form a usable pair: {0}")]
    ServerPair(rustls::Error),
    /// A certificate of `ca_file` cannot be used as a trust anchor.
    #[error("{}: unusable CA certificate: {source}", path.display())]
    BadCa {
        /// The configured `ca_file`.
        path: PathBuf,
        /// Why webpki refused it.
        source: rustls::Error,
    },
    /// A backend's client certificate and key do not belong together.
    #[error("client certificate and key do not form a usable pair: {0}")]
    ClientPair(rustls::Error),
    /// The listener's mode (TLS or plain) is fixed when it binds.
    #[error("enabling or disabling TLS on the listener needs a restart")]
    ModeChange,
}

/// Builds the listener's server config: ALPN `h2` then `http/1.1`.
pub fn server_config(files: &ListenerTls) -> Result<ServerConfig, TlsError> {
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(TlsError::Versions)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::ServerPair)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The listener's TLS state. The current `ServerConfig` sits behind an
/// `ArcSwap`, so a reload affects new handshakes only and never blocks one.
pub struct TlsTerminator {
    files: ArcSwap<ListenerTls>,
    config: ArcSwap<ServerConfig>,
}

impl TlsTerminator {
    pub fn new(files: &ListenerTls) -> Result<Self, TlsError> {
        Ok(TlsTerminator {
            files: ArcSwap::from_pointee(files.clone()),
            config: ArcSwap::from_pointee(server_config(files)?),
        })
    }

    /// Re-reads the certificate and key (possibly from new paths). On error the
    /// old certificate stays in use and the error is returned for the caller to report.
    pub fn reload(&self, files: &ListenerTls) -> Result<(), TlsError> {
        let cfg = server_config(files)?;
        self.config.store(Arc::new(cfg));
        self.files.store(Arc::new(files.clone()));
        Ok(())
    }

    /// The acceptor for one new connection.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.load_full())
    }

    /// The files the current certificate came from.
    pub fn files(&self) -> Arc<ListenerTls> {
        self.files.load_full()
    }
}

/// The platform trust store, read once per process: it is ~150 KiB of parsed
/// certificates and a directory scan, not something to repeat per backend.
fn native_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            // Certificates the platform store holds but webpki cannot parse are
            // skipped, as every rustls-based client does.
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            Arc::new(roots)
        })
        .clone()
}

/// The client config of an `http://` backend: never used for a handshake (the
/// scheme decides), so it trusts nothing and costs nothing to build.
pub fn plain_client_config() -> ClientConfig {
    ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth()
}

/// Builds the client config for an `https://` backend: trust `ca_file` when
/// given, the system store otherwise; present a client certificate if configured;
/// ALPN is left empty: the connector builder sets exactly the configured protocol.
pub fn client_config(tls: &UpstreamTls) -> Result<ClientConfig, TlsError> {
    let roots = match &tls.ca_file {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in load_certs(ca)? {
                roots.add(cert).map_err(|source| TlsError::BadCa {
                    path: ca.clone(),
                    source,
                })?;
            }
            Arc::new(roots)
        }
        None => native_roots(),
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(TlsError::Versions)?
        .with_root_certificates(roots);
    let cfg = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(TlsError::ClientPair)?,
        _ => builder.with_no_client_auth(),
    };
    Ok(cfg)
}

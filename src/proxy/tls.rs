//! TLS on both sides of the proxy, with rustls and the `ring` provider.
//!
//! Owns: reading PEM files, the listener's `ServerConfig` (swapped whole on
//! certificate reload) and the `ClientConfig` of `https://` backends.
//! Never: accepts protocol versions below TLS 1.2 or loads keys from anywhere
//! but the configured files.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::{ListenerTls, UpstreamTls};

/// TLS 1.3 and 1.2 only: rustls implements nothing older, and saying so here
/// keeps the promise visible if that ever changes.
static VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate in a PEM file; an empty file is an error.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("cannot read a private key from {}: {e}", path.display()))
}

/// Builds the listener's server config: ALPN `h2` then `http/1.1`.
pub fn server_config(files: &ListenerTls) -> Result<ServerConfig, String> {
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not form a usable pair: {e}"))?;
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
    pub fn new(files: &ListenerTls) -> Result<Self, String> {
        Ok(TlsTerminator {
            files: ArcSwap::from_pointee(files.clone()),
            config: ArcSwap::from_pointee(server_config(files)?),
        })
    }

    /// Re-reads the certificate and key (possibly from new paths). On error the
    /// old certificate stays in use and the error is returned for the caller to report.
    pub fn reload(&self, files: &ListenerTls) -> Result<(), String> {
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
pub fn client_config(tls: &UpstreamTls) -> Result<ClientConfig, String> {
    let roots = match &tls.ca_file {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in load_certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: unusable CA certificate: {e}", ca.display()))?;
            }
            Arc::new(roots)
        }
        None => native_roots(),
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let cfg = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| format!("client certificate and key do not form a usable pair: {e}"))?,
        _ => builder.with_no_client_auth(),
    };
    Ok(cfg)
}

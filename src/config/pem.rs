//! `config::pem`: certificates and private keys read from PEM files.
//!
//! Owns: turning a configured path into rustls certificate and key values, with
//! an error that names the file. The schema reads every configured file with it
//! (so a typo is a config error with a line, not a failure at first request)
//! and `proxy::tls` builds its TLS configs from what it returns.
//! Never: builds TLS configs or names the proxy: it sits below both, so the
//! config does not depend on the data plane.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A PEM file that does not hold what it should.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// The file cannot be read, or a certificate in it cannot be parsed.
    #[error("cannot read certificates from {}: {source}", path.display())]
    Certs {
        /// The configured file.
        path: PathBuf,
        /// What went wrong.
        source: pem::Error,
    },
    /// The file parses but holds no certificate (e.g. a key file given as `cert`).
    #[error("{} holds no PEM certificate", path.display())]
    NoCerts {
        /// The configured file.
        path: PathBuf,
    },
    /// The file cannot be read or holds no private key.
    #[error("cannot read a private key from {}: {source}", path.display())]
    Key {
        /// The configured file.
        path: PathBuf,
        /// What went wrong.
        source: pem::Error,
    },
}

/// Reads every certificate in a PEM file; an empty file is an error.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| PemError::Certs {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(PemError::NoCerts {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| PemError::Key {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file_and_what_it_lacks() {
        let dir = std::env::temp_dir().join(format!("abgate-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let err = load_certs(&missing).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "cannot read certificates from {}: ",
                missing.display()
            )),
            "{err}"
        );
        let err = load_key(&missing).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "cannot read a private key from {}: ",
                missing.display()
            )),
            "{err}"
        );
        // A file with no PEM section at all: readable, but no certificate.
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        assert_eq!(
            load_certs(&empty).unwrap_err().to_string(),
            format!("{} holds no PEM certificate", empty.display())
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

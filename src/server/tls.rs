//! TLS termination (rustls with the ring provider): TLS 1.2 and 1.3, AEAD suites only, ALPN
//! `http/1.1`, certificate chain and key from PEM files, and reload on SIGHUP that keeps the
//! old certificate when the new one is broken. Established connections are never touched by a
//! reload: each handshake takes the configuration current at that moment.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate/key pair could not be loaded.
#[derive(Debug)]
pub enum TlsError {
    Read { path: PathBuf, error: String },
    NoCertificate { path: PathBuf },
    BadKey { path: PathBuf, error: String },
    Mismatch { cert: PathBuf, key: PathBuf },
    Rustls(String),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Read { path, error } => write!(f, "{}: cannot read the PEM file ({error})", path.display()),
            TlsError::NoCertificate { path } => write!(f, "{}: no CERTIFICATE block found: expected a PEM certificate chain (leaf first)", path.display()),
            TlsError::BadKey { path, error } => write!(f, "{}: no usable private key ({error}): expected a PEM PKCS#8, PKCS#1 or SEC1 key", path.display()),
            TlsError::Mismatch { cert, key } => write!(f, "{} does not belong to the certificate {}: use the key the certificate was issued for", key.display(), cert.display()),
            TlsError::Rustls(e) => write!(f, "TLS configuration refused: {e}"),
        }
    }
}

impl std::error::Error for TlsError {}

/// Reads the chain and key and builds a server configuration.
pub fn load(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let cert_pem = std::fs::read(cert).map_err(|e| TlsError::Read {
        path: cert.into(),
        error: e.to_string(),
    })?;
    let key_pem = std::fs::read(key).map_err(|e| TlsError::Read {
        path: key.into(),
        error: e.to_string(),
    })?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: cert.into() });
    }
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::BadKey {
        path: key.into(),
        error: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let signing_key = provider
        .key_provider
        .load_private_key(key_der.clone_key())
        .map_err(|e| TlsError::BadKey {
            path: key.into(),
            error: e.to_string(),
        })?;
    let certified = rustls::sign::CertifiedKey::new(chain.clone(), signing_key);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(TlsError::Mismatch {
                cert: cert.into(),
                key: key.into(),
            })
        }
        // Unknown: the key type can't tell us its public key; the handshake will fail if wrong.
        Err(_) => {}
    }
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The current TLS configuration, swapped on reload.
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl Tls {
    pub fn new(cert: &Path, key: &Path) -> Result<Tls, TlsError> {
        let config = load(cert, key)?;
        Ok(Tls {
            cert: cert.into(),
            key: key.into(),
            current: RwLock::new(config),
        })
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let cfg = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        tokio_rustls::TlsAcceptor::from(cfg)
    }

    /// Re-reads the files; on error the old certificate keeps serving.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = load(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
        Ok(())
    }

    pub fn cert_path(&self) -> &Path {
        &self.cert
    }
}

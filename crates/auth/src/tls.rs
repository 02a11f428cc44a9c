//! rustls configurations (ring provider) for the client-facing listener and backend connections.

use std::fmt;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// ALPN protocol id PostgreSQL uses for TLS (PostgreSQL 17+ direct TLS requires it).
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// A TLS configuration could not be built. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// A PEM file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// "certificate", "private key" or "CA bundle".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The PEM data is not parseable.
    #[error("invalid PEM in {what}: {reason}")]
    Pem {
        /// Which input.
        what: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// The PEM data holds no certificate.
    #[error("no certificate found in {0}")]
    NoCertificate(&'static str),
    /// The PEM data holds no private key.
    #[error("no private key found in the private key PEM")]
    NoPrivateKey,
    /// Full verification was asked for without a CA bundle (no built-in roots are compiled in).
    #[error(
        "backend TLS verification needs ca_pem_path: no built-in root certificates are available"
    )]
    MissingCa,
    /// rustls refused the configuration (e.g. key does not match the certificate).
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_file(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsConfigError> {
    std::fs::read(path).map_err(|source| TlsConfigError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn parse_certs(
    pem: &[u8],
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let certs = rustls_pemfile::certs(&mut BufReader::new(pem))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsConfigError::Pem {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsConfigError::NoCertificate(what));
    }
    Ok(certs)
}

fn parse_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    rustls_pemfile::private_key(&mut BufReader::new(pem))
        .map_err(|e| TlsConfigError::Pem {
            what: "private key",
            reason: e.to_string(),
        })?
        .ok_or(TlsConfigError::NoPrivateKey)
}

/// Server (client-facing) configuration from PEM files: certificate chain and private key.
/// No client certificates; ALPN `postgresql` is offered but clients need not use ALPN.
pub fn server_config(
    cert_pem_path: &Path,
    key_pem_path: &Path,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let cert = read_file(cert_pem_path, "certificate")?;
    let key = read_file(key_pem_path, "private key")?;
    server_config_from_pem(&cert, &key)
}

/// Server configuration from in-memory PEM (see [`server_config`]).
pub fn server_config_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let certs = parse_certs(cert_pem, "certificate")?;
    let key = parse_key(key_pem)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Arc::new(config))
}

/// How the gateway checks a backend's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendTlsVerify {
    /// Verify the chain against a CA bundle and the host name (like `sslmode=verify-full`).
    Full {
        /// PEM CA bundle. Required: no built-in (webpki) roots are compiled in, so `None` is
        /// a configuration error.
        ca_pem_path: Option<PathBuf>,
    },
    /// Encrypt but accept any certificate (like `sslmode=require`). Handshake signatures are
    /// still checked, so the peer must hold the certificate's key, but anyone can be that peer.
    Insecure,
}

/// Client configuration for backend connections.
pub fn client_config(verify: &BackendTlsVerify) -> Result<Arc<ClientConfig>, TlsConfigError> {
    match verify {
        BackendTlsVerify::Full { ca_pem_path } => {
            let path = ca_pem_path.as_deref().ok_or(TlsConfigError::MissingCa)?;
            client_config_with_ca_pem(&read_file(path, "CA bundle")?)
        }
        BackendTlsVerify::Insecure => {
            let provider = provider();
            let verifier = Arc::new(AcceptAnyServerCert {
                provider: provider.clone(),
            });
            let mut config = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth();
            config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
            Ok(Arc::new(config))
        }
    }
}

/// Fully verifying client configuration trusting the CA certificates in `ca_pem`.
pub fn client_config_with_ca_pem(ca_pem: &[u8]) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(ca_pem, "CA bundle")? {
        roots.add(cert)?;
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Arc::new(config))
}

/// Accepts any server certificate, but still verifies the handshake signatures with the
/// provider's algorithms (encryption without authentication, like libpq `sslmode=require`).
struct AcceptAnyServerCert {
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for AcceptAnyServerCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AcceptAnyServerCert")
    }
}

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests;

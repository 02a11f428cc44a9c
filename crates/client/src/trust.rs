//! Which certificates a client of the control plane trusts over `https://` (the CA bundle a
//! configuration or `--ca` names, else the webpki roots), and the one agent every client uses.
//! rustls 0.23 with ring, as the gateway's own TLS.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig, TlsProvider};

/// Which certificates a client accepts from an `https://` control plane. Cheap to clone: the
/// parsed bundle is shared.
#[derive(Clone, Default)]
pub struct Trust {
    ca: Option<Arc<Vec<Certificate<'static>>>>,
    source: Option<PathBuf>,
}

impl fmt::Debug for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.ca, &self.source) {
            (None, _) => f.write_str("Trust(webpki roots)"),
            (Some(ca), Some(path)) => {
                write!(f, "Trust({} CA cert(s) from {})", ca.len(), path.display())
            }
            (Some(ca), None) => write!(f, "Trust({} CA cert(s))", ca.len()),
        }
    }
}

/// A CA bundle that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The file could not be read.
    #[error("cannot read CA bundle {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not PEM, no certificate in it, or a certificate rustls cannot parse.
    #[error("CA bundle: {0}")]
    Invalid(String),
}

impl Trust {
    /// The webpki (Mozilla) roots compiled into the binary: for a control plane whose
    /// certificate a public CA issued.
    pub fn webpki() -> Trust {
        Trust::default()
    }

    /// Only the CA certificates in `pem` (one or more `CERTIFICATE` blocks).
    pub fn from_ca_pem(pem: &[u8]) -> Result<Trust, TrustError> {
        let mut certs = Vec::new();
        for item in ureq::tls::parse_pem(pem) {
            // A key next to the certificates does no harm; it is not kept.
            if let PemItem::Certificate(c) = item.map_err(|e| TrustError::Invalid(e.to_string()))? {
                certs.push(c);
            }
        }
        if certs.is_empty() {
            return Err(TrustError::Invalid("no certificate in it".into()));
        }
        // Checked now so that a bad bundle is a configuration error, not a handshake that
        // fails later (ureq would skip what rustls cannot parse).
        let mut store = rustls::RootCertStore::empty();
        for c in &certs {
            store
                .add(rustls::pki_types::CertificateDer::from(c.der()))
                .map_err(|e| TrustError::Invalid(e.to_string()))?;
        }
        Ok(Trust {
            ca: Some(Arc::new(certs)),
            source: None,
        })
    }

    /// [`Trust::from_ca_pem`] of a file.
    pub fn from_ca_file(path: &Path) -> Result<Trust, TrustError> {
        let pem = std::fs::read(path).map_err(|source| TrustError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut trust = Trust::from_ca_pem(&pem)?;
        trust.source = Some(path.to_owned());
        Ok(trust)
    }

    /// True when a CA bundle was given (not the webpki roots).
    pub fn has_ca(&self) -> bool {
        self.ca.is_some()
    }

    /// The ureq TLS configuration: rustls trusting this bundle, else the webpki roots.
    pub fn tls_config(&self) -> TlsConfig {
        let roots = match &self.ca {
            Some(ca) => RootCerts::Specific(ca.clone()),
            None => RootCerts::WebPki,
        };
        TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .root_certs(roots)
            .build()
    }
}

/// The agent a control-plane client uses: non-2xx answers are responses (not errors), and
/// `timeout` bounds both the connect (TLS handshake included) and the whole request; a
/// long-poll sets its own longer timeout per request.
pub fn agent(trust: &Trust, timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(timeout))
        .timeout_global(Some(timeout))
        .tls_config(trust.tls_config())
        .build()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_are_checked_when_read() {
        assert!(matches!(
            Trust::from_ca_pem(b"not pem"),
            Err(TrustError::Invalid(_))
        ));
        let garbage = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(Trust::from_ca_pem(garbage).is_err());
        let e = Trust::from_ca_file(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        assert_eq!(format!("{:?}", Trust::webpki()), "Trust(webpki roots)");
        assert!(!Trust::webpki().has_ca());
    }
}

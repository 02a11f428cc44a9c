use super::*;

use std::io::{Read as _, Write as _};

use rustls::{ClientConnection, ServerConnection};

struct TestCert {
    cert_pem: String,
    key_pem: String,
}

fn self_signed(name: &str) -> TestCert {
    let ck = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    TestCert {
        cert_pem: ck.cert.pem(),
        key_pem: ck.key_pair.serialize_pem(),
    }
}

fn write_temp(dir: &tempfile::TempDir, name: &str, contents: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// Moves all pending TLS bytes from `from` to `to` through a Vec, like a socket would.
fn pump(
    from: &mut impl std::ops::DerefMut<Target = rustls::ConnectionCommon<impl rustls::SideData>>,
    to: &mut impl std::ops::DerefMut<Target = rustls::ConnectionCommon<impl rustls::SideData>>,
) -> Result<(), rustls::Error> {
    let mut wire = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut wire).unwrap();
    }
    let mut rd = &wire[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).unwrap();
        to.process_new_packets()?;
    }
    Ok(())
}

/// Runs a full in-memory handshake, then echoes one application message each way.
fn handshake(
    client_cfg: Arc<ClientConfig>,
    server_cfg: Arc<ServerConfig>,
    server_name: &str,
) -> Result<(ClientConnection, ServerConnection), rustls::Error> {
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    let mut client = ClientConnection::new(client_cfg, name)?;
    let mut server = ServerConnection::new(server_cfg)?;
    for _ in 0..16 {
        if !client.is_handshaking() && !server.is_handshaking() {
            break;
        }
        pump(&mut client, &mut server)?;
        pump(&mut server, &mut client)?;
    }
    assert!(!client.is_handshaking() && !server.is_handshaking());

    client.writer().write_all(b"SELECT 1").unwrap();
    pump(&mut client, &mut server)?;
    let mut got = [0u8; 8];
    server.reader().read_exact(&mut got).unwrap();
    assert_eq!(&got, b"SELECT 1");
    server.writer().write_all(b"ok").unwrap();
    pump(&mut server, &mut client)?;
    let mut got = [0u8; 2];
    client.reader().read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ok");
    Ok((client, server))
}

#[test]
fn full_verification_handshake() {
    let server_cert = self_signed("localhost");
    let dir = tempfile::tempdir().unwrap();
    let cert_path = write_temp(&dir, "server.crt", &server_cert.cert_pem);
    let key_path = write_temp(&dir, "server.key", &server_cert.key_pem);
    let server_cfg = server_config(&cert_path, &key_path).unwrap();
    let client_cfg = client_config(&BackendTlsVerify::Full {
        ca_pem_path: Some(cert_path),
    })
    .unwrap();
    let (client, server) = handshake(client_cfg.clone(), server_cfg.clone(), "localhost").unwrap();
    assert_eq!(client.alpn_protocol(), Some(ALPN_POSTGRESQL));
    assert_eq!(server.alpn_protocol(), Some(ALPN_POSTGRESQL));

    // Full verification checks the name too.
    let err = handshake(client_cfg, server_cfg, "db.example").unwrap_err();
    assert!(
        matches!(err, rustls::Error::InvalidCertificate(_)),
        "{err:?}"
    );
}

#[test]
fn full_verification_with_wrong_ca_fails() {
    let server_cert = self_signed("localhost");
    let other = self_signed("localhost");
    let server_cfg = server_config_from_pem(
        server_cert.cert_pem.as_bytes(),
        server_cert.key_pem.as_bytes(),
    )
    .unwrap();
    let client_cfg = client_config_with_ca_pem(other.cert_pem.as_bytes()).unwrap();
    let err = handshake(client_cfg, server_cfg, "localhost").unwrap_err();
    // rcgen gives every self-signed certificate the same subject DN, so webpki finds the
    // wrong CA by name and then rejects its signature; a CA of another name is UnknownIssuer.
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadSignature | rustls::CertificateError::UnknownIssuer
            )
        ),
        "{err:?}"
    );
}

#[test]
fn insecure_accepts_any_certificate() {
    let server_cert = self_signed("some-other-name.example");
    let server_cfg = server_config_from_pem(
        server_cert.cert_pem.as_bytes(),
        server_cert.key_pem.as_bytes(),
    )
    .unwrap();
    let client_cfg = client_config(&BackendTlsVerify::Insecure).unwrap();
    let (client, _server) = handshake(client_cfg, server_cfg, "localhost").unwrap();
    assert!(client.negotiated_cipher_suite().is_some());
}

#[test]
fn alpn_is_not_required() {
    let server_cert = self_signed("localhost");
    let server_cfg = server_config_from_pem(
        server_cert.cert_pem.as_bytes(),
        server_cert.key_pem.as_bytes(),
    )
    .unwrap();
    // An older libpq offers no ALPN at all.
    let mut client_cfg =
        (*client_config_with_ca_pem(server_cert.cert_pem.as_bytes()).unwrap()).clone();
    client_cfg.alpn_protocols.clear();
    let (client, _server) = handshake(Arc::new(client_cfg), server_cfg, "localhost").unwrap();
    assert_eq!(client.alpn_protocol(), None);
}

#[test]
fn config_errors() {
    let c = self_signed("localhost");
    assert!(matches!(
        server_config_from_pem(b"not pem", c.key_pem.as_bytes()),
        Err(TlsConfigError::NoCertificate(_))
    ));
    assert!(matches!(
        server_config_from_pem(c.cert_pem.as_bytes(), b""),
        Err(TlsConfigError::NoPrivateKey)
    ));
    // The key of another certificate.
    let other = self_signed("localhost");
    let err = server_config_from_pem(c.cert_pem.as_bytes(), other.key_pem.as_bytes());
    assert!(matches!(err, Err(TlsConfigError::Rustls(_))), "{err:?}");

    assert!(matches!(
        client_config(&BackendTlsVerify::Full { ca_pem_path: None }),
        Err(TlsConfigError::MissingCa)
    ));
    let missing = Path::new("/nonexistent/sluice/ca.pem");
    let err = client_config(&BackendTlsVerify::Full {
        ca_pem_path: Some(missing.to_owned()),
    })
    .unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/sluice/ca.pem"),
        "{err}"
    );
    let err = server_config(missing, missing).unwrap_err();
    assert!(matches!(
        err,
        TlsConfigError::Read {
            what: "certificate",
            ..
        }
    ));

    // Errors never echo key material.
    let err = server_config_from_pem(c.cert_pem.as_bytes(), other.key_pem.as_bytes()).unwrap_err();
    let key_body: String = other.key_pem.lines().nth(1).unwrap().to_owned();
    assert!(!format!("{err} {err:?}").contains(&key_body));
}

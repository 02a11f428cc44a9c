use super::*;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use md5::Digest as _;
use sha2::{Digest as _, Sha256};

const USER: &str = "sluice_backend";
const PASSWORD: &str = "correct horse battery staple";

fn creds(password: Option<&str>) -> BackendCredentials {
    BackendCredentials {
        user: USER.to_owned(),
        password: password.map(str::to_owned),
    }
}

fn auth() -> BackendAuthenticator {
    BackendAuthenticator::new(creds(Some(PASSWORD)))
}

/// Splits one frontend `'p'` message off `buf`, checking tag and length; returns the body.
fn take_p_message(buf: &mut BytesMut) -> Vec<u8> {
    assert!(buf.len() >= 5, "short message");
    assert_eq!(buf[0], b'p');
    let len = u32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize;
    assert!(len >= 4 && buf.len() > len, "length covers the buffer");
    let msg = buf.split_to(1 + len);
    msg[5..].to_vec()
}

/// Body of a PasswordMessage: the NUL-terminated password.
fn password_body(body: &[u8]) -> &str {
    assert_eq!(body.last(), Some(&0));
    std::str::from_utf8(&body[..body.len() - 1]).unwrap()
}

fn assert_no_secret(e: &BackendAuthError) {
    let text = format!("{e} {e:?}");
    assert!(!text.contains(PASSWORD), "{text}");
    assert!(!text.contains("horse"), "{text}");
}

#[test]
fn trust_auth_is_done_immediately() {
    let mut a = auth();
    let mut out = BytesMut::new();
    assert_eq!(
        a.on_request(codes::OK, &[], &mut out),
        Ok(AuthProgress::Done)
    );
    assert!(out.is_empty());
    assert!(a.is_done());
    let e = a.on_request(codes::OK, &[], &mut out).unwrap_err();
    assert!(
        matches!(e, BackendAuthError::Unexpected { code: 0, .. }),
        "{e:?}"
    );
}

#[test]
fn cleartext_password() {
    let mut a = auth();
    let mut out = BytesMut::new();
    assert_eq!(
        a.on_request(codes::CLEARTEXT_PASSWORD, &[], &mut out),
        Ok(AuthProgress::Continue)
    );
    let body = take_p_message(&mut out);
    assert_eq!(password_body(&body), PASSWORD);
    assert!(out.is_empty());
    assert_eq!(
        a.on_request(codes::OK, &[], &mut out),
        Ok(AuthProgress::Done)
    );
}

#[test]
fn cleartext_refused_when_disabled() {
    let mut a = auth().allow_cleartext(false);
    let mut out = BytesMut::new();
    let e = a
        .on_request(codes::CLEARTEXT_PASSWORD, &[], &mut out)
        .unwrap_err();
    assert_eq!(e, BackendAuthError::CleartextRefused);
    assert!(out.is_empty(), "nothing sent");
    assert_no_secret(&e);
}

#[test]
fn password_required() {
    for (code, data) in [
        (codes::CLEARTEXT_PASSWORD, &[][..]),
        (codes::MD5_PASSWORD, &[1, 2, 3, 4][..]),
        (codes::SASL, &b"SCRAM-SHA-256\0\0"[..]),
    ] {
        let mut a = BackendAuthenticator::new(creds(None));
        let mut out = BytesMut::new();
        let e = a.on_request(code, data, &mut out).unwrap_err();
        assert_eq!(e, BackendAuthError::PasswordRequired);
        assert_eq!(e.to_string(), "backend requires a password");
        assert!(out.is_empty());
    }
}

/// `"md5" + hex(md5(hex(md5(password + user)) + salt))`, computed with an independent MD5.
fn expected_md5(user: &str, password: &str, salt: [u8; 4]) -> String {
    let inner = hex::encode(md5::Md5::digest(format!("{password}{user}").as_bytes()));
    let mut outer = md5::Md5::new();
    outer.update(inner.as_bytes());
    outer.update(salt);
    format!("md5{}", hex::encode(outer.finalize()))
}

#[test]
fn md5_password() {
    // Known vector: user "postgres", password "postgres": md5(password || user) is the
    // value PostgreSQL stores in pg_authid for MD5 roles.
    assert_eq!(
        hex::encode(md5::Md5::digest(b"postgrespostgres")),
        "3175bce1d3201d16594cebf9d7eb3f9d"
    );
    let salt = [0x01, 0x02, 0x03, 0x04];
    let mut a = auth();
    let mut out = BytesMut::new();
    assert_eq!(
        a.on_request(codes::MD5_PASSWORD, &salt, &mut out),
        Ok(AuthProgress::Continue)
    );
    let body = take_p_message(&mut out);
    let sent = password_body(&body);
    assert_eq!(sent, expected_md5(USER, PASSWORD, salt));
    assert_eq!(sent.len(), 35);
    assert!(!sent.contains(PASSWORD));
    assert_eq!(
        a.on_request(codes::OK, &[], &mut out),
        Ok(AuthProgress::Done)
    );
}

#[test]
fn md5_bad_salt() {
    let mut a = auth();
    let mut out = BytesMut::new();
    let e = a
        .on_request(codes::MD5_PASSWORD, &[1, 2, 3], &mut out)
        .unwrap_err();
    assert!(matches!(e, BackendAuthError::Malformed(_)));
}

#[test]
fn unsupported_methods() {
    for code in [
        codes::KERBEROS_V5,
        codes::GSS,
        codes::GSS_CONTINUE,
        codes::SSPI,
        99,
        -1,
    ] {
        let mut out = BytesMut::new();
        let e = auth().on_request(code, &[], &mut out).unwrap_err();
        assert_eq!(e, BackendAuthError::UnsupportedMethod(code));
    }
}

#[test]
fn sasl_mechanism_selection() {
    let mut out = BytesMut::new();
    let e = auth()
        .on_request(codes::SASL, b"SCRAM-SHA-256-PLUS\0\0", &mut out)
        .unwrap_err();
    assert_eq!(e, BackendAuthError::ChannelBindingRequired);
    assert!(e.to_string().contains("SCRAM-SHA-256-PLUS"));

    let e = auth()
        .on_request(codes::SASL, b"OAUTHBEARER\0\0", &mut out)
        .unwrap_err();
    assert_eq!(
        e,
        BackendAuthError::UnsupportedMechanism("OAUTHBEARER".into())
    );

    for bad in [
        &b""[..],
        b"SCRAM-SHA-256",
        b"SCRAM-SHA-256\0",
        b"SCRAM-SHA-256\0\0x",
    ] {
        let e = auth().on_request(codes::SASL, bad, &mut out).unwrap_err();
        assert!(
            matches!(e, BackendAuthError::Malformed(_)),
            "{bad:?}: {e:?}"
        );
    }
    assert!(out.is_empty());

    // Both offered (PostgreSQL over TLS): plain SCRAM-SHA-256 is chosen.
    let mut a = auth();
    a.on_request(
        codes::SASL,
        b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0",
        &mut out,
    )
    .unwrap();
    let body = take_p_message(&mut out);
    assert!(body.starts_with(b"SCRAM-SHA-256\0"));
}

#[test]
fn out_of_order_messages() {
    let mut out = BytesMut::new();
    for code in [codes::SASL_CONTINUE, codes::SASL_FINAL] {
        let e = auth().on_request(code, b"r=x", &mut out).unwrap_err();
        assert!(matches!(e, BackendAuthError::Unexpected { .. }), "{e:?}");
    }
    // A second password request after the first one.
    let mut a = auth();
    a.on_request(codes::CLEARTEXT_PASSWORD, &[], &mut out)
        .unwrap();
    let e = a
        .on_request(codes::MD5_PASSWORD, &[1, 2, 3, 4], &mut out)
        .unwrap_err();
    assert!(matches!(e, BackendAuthError::Unexpected { code: 5, .. }));
    // After an error every message is refused.
    let e = a.on_request(codes::OK, &[], &mut out).unwrap_err();
    assert!(matches!(e, BackendAuthError::Unexpected { code: 0, .. }));
}

#[test]
fn credentials_debug_redacts_password() {
    let text = format!("{:?} {:?}", creds(Some(PASSWORD)), auth());
    assert!(text.contains(USER));
    assert!(!text.contains("horse"), "{text}");
    assert!(text.contains("redacted"));
}

/// A minimal SCRAM-SHA-256 server (RFC 5802 / 7677), independent of postgres-protocol.
mod scram_server {
    use super::*;

    type HmacSha256 = Hmac<Sha256>;

    pub fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
        let mut mac = HmacSha256::new_from_slice(key).unwrap();
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    /// PBKDF2-HMAC-SHA-256 with one output block (RFC 5802 `Hi`).
    pub fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
        let mut block = salt.to_vec();
        block.extend_from_slice(&1u32.to_be_bytes());
        let mut u = hmac(password, &block);
        let mut out = u;
        for _ in 1..iterations {
            u = hmac(password, &u);
            for (o, b) in out.iter_mut().zip(u) {
                *o ^= b;
            }
        }
        out
    }

    pub struct Server {
        password: Vec<u8>,
        salt: Vec<u8>,
        iterations: u32,
        client_first_bare: String,
        server_first: String,
        pub nonce: String,
    }

    impl Server {
        pub fn new(password: &str) -> Self {
            Self {
                password: password.as_bytes().to_vec(),
                salt: b"sluice-test-salt".to_vec(),
                iterations: 4096,
                client_first_bare: String::new(),
                server_first: String::new(),
                nonce: String::new(),
            }
        }

        /// Handles the SASLInitialResponse body; returns server-first-message.
        pub fn first(&mut self, body: &[u8]) -> String {
            let nul = body.iter().position(|b| *b == 0).unwrap();
            assert_eq!(&body[..nul], b"SCRAM-SHA-256");
            let rest = &body[nul + 1..];
            let len = i32::from_be_bytes(rest[..4].try_into().unwrap());
            let data = std::str::from_utf8(&rest[4..]).unwrap();
            assert_eq!(usize::try_from(len).unwrap(), data.len());
            // No channel binding: the gs2 header says the client does not support it ("n").
            let bare = data.strip_prefix("n,,").expect("gs2 header `n,,`");
            let client_nonce = bare.strip_prefix("n=,r=").expect("empty user, nonce");
            self.client_first_bare = bare.to_owned();
            self.nonce = format!("{client_nonce}SERVERNONCE0123");
            self.server_first = format!(
                "r={},s={},i={}",
                self.nonce,
                STANDARD.encode(&self.salt),
                self.iterations
            );
            self.server_first.clone()
        }

        /// Handles the SASLResponse body (client-final-message); checks the proof and returns
        /// the server-final-message, or `Err` if the client does not know the password.
        pub fn last(&self, body: &[u8]) -> Result<String, &'static str> {
            let data = std::str::from_utf8(body).unwrap();
            let (without_proof, proof) = data.rsplit_once(",p=").unwrap();
            assert_eq!(without_proof, format!("c=biws,r={}", self.nonce));
            let auth_message = format!(
                "{},{},{}",
                self.client_first_bare, self.server_first, without_proof
            );
            let salted = hi(&self.password, &self.salt, self.iterations);
            let client_key = hmac(&salted, b"Client Key");
            let stored_key: [u8; 32] = Sha256::digest(client_key).into();
            let client_signature = hmac(&stored_key, auth_message.as_bytes());
            let proof = STANDARD.decode(proof).unwrap();
            let recovered: Vec<u8> = proof
                .iter()
                .zip(client_signature)
                .map(|(p, s)| p ^ s)
                .collect();
            let recovered_stored: [u8; 32] = Sha256::digest(&recovered).into();
            if recovered_stored != stored_key {
                return Err("invalid-proof");
            }
            let server_key = hmac(&salted, b"Server Key");
            let server_signature = hmac(&server_key, auth_message.as_bytes());
            Ok(format!("v={}", STANDARD.encode(server_signature)))
        }
    }
}

/// Runs SASL up to the client-final-message; returns the server's would-be final message.
fn scram_until_final(
    a: &mut BackendAuthenticator,
    server: &mut scram_server::Server,
) -> Result<String, &'static str> {
    let mut out = BytesMut::new();
    assert_eq!(
        a.on_request(codes::SASL, b"SCRAM-SHA-256\0\0", &mut out),
        Ok(AuthProgress::Continue)
    );
    let server_first = server.first(&take_p_message(&mut out));
    assert!(out.is_empty());
    assert_eq!(
        a.on_request(codes::SASL_CONTINUE, server_first.as_bytes(), &mut out),
        Ok(AuthProgress::Continue)
    );
    let body = take_p_message(&mut out);
    assert!(out.is_empty());
    assert!(!String::from_utf8_lossy(&body).contains(PASSWORD));
    server.last(&body)
}

#[test]
fn scram_full_exchange() {
    let mut a = auth();
    let mut server = scram_server::Server::new(PASSWORD);
    let server_final = scram_until_final(&mut a, &mut server).expect("server accepts proof");
    let mut out = BytesMut::new();
    assert_eq!(
        a.on_request(codes::SASL_FINAL, server_final.as_bytes(), &mut out),
        Ok(AuthProgress::Continue)
    );
    assert!(out.is_empty(), "nothing to send after SASLFinal");
    assert_eq!(
        a.on_request(codes::OK, &[], &mut out),
        Ok(AuthProgress::Done)
    );
    assert!(a.is_done());
}

#[test]
fn scram_wrong_password_is_rejected_by_server() {
    let mut a = BackendAuthenticator::new(creds(Some("wrong password")));
    let mut server = scram_server::Server::new(PASSWORD);
    assert_eq!(scram_until_final(&mut a, &mut server), Err("invalid-proof"));
    // A server that reports the failure inside SASLFinal.
    let mut out = BytesMut::new();
    let e = a
        .on_request(codes::SASL_FINAL, b"e=invalid-proof", &mut out)
        .unwrap_err();
    assert!(matches!(e, BackendAuthError::Scram(_)), "{e:?}");
    assert_no_secret(&e);
}

#[test]
fn scram_tampered_server_signature_fails() {
    let mut a = auth();
    let mut server = scram_server::Server::new(PASSWORD);
    let server_final = scram_until_final(&mut a, &mut server).unwrap();
    let mut sig = STANDARD
        .decode(server_final.strip_prefix("v=").unwrap())
        .unwrap();
    sig[0] ^= 0x01;
    let tampered = format!("v={}", STANDARD.encode(sig));
    let mut out = BytesMut::new();
    let e = a
        .on_request(codes::SASL_FINAL, tampered.as_bytes(), &mut out)
        .unwrap_err();
    assert_eq!(e, BackendAuthError::ServerVerificationFailed);
    assert_no_secret(&e);
    // The exchange is over: a following AuthenticationOk is not accepted.
    assert!(a.on_request(codes::OK, &[], &mut out).is_err());
    assert!(!a.is_done());
}

#[test]
fn scram_server_that_does_not_know_the_password_fails() {
    // An impostor that never learned the password computes its signature from another one.
    let mut a = auth();
    let mut impostor = scram_server::Server::new("guess");
    let mut out = BytesMut::new();
    a.on_request(codes::SASL, b"SCRAM-SHA-256\0\0", &mut out)
        .unwrap();
    let first = impostor.first(&take_p_message(&mut out));
    a.on_request(codes::SASL_CONTINUE, first.as_bytes(), &mut out)
        .unwrap();
    let body = take_p_message(&mut out);
    // Build the final message the impostor would send (its proof check fails, but it lies).
    let data = std::str::from_utf8(&body).unwrap();
    let (without_proof, _) = data.rsplit_once(",p=").unwrap();
    let salted = scram_server::hi(b"guess", b"sluice-test-salt", 4096);
    let server_key = scram_server::hmac(&salted, b"Server Key");
    let bare = format!("n=,r={}", &impostor.nonce[..impostor.nonce.len() - 15]);
    let auth_message = format!("{bare},{first},{without_proof}");
    let sig = scram_server::hmac(&server_key, auth_message.as_bytes());
    let e = a
        .on_request(
            codes::SASL_FINAL,
            format!("v={}", STANDARD.encode(sig)).as_bytes(),
            &mut out,
        )
        .unwrap_err();
    assert_eq!(e, BackendAuthError::ServerVerificationFailed);
}

#[test]
fn scram_ok_without_final_is_refused() {
    // A server (or man in the middle) that skips SASLFinal must not be trusted.
    let mut a = auth();
    let mut server = scram_server::Server::new(PASSWORD);
    let _ = scram_until_final(&mut a, &mut server).unwrap();
    let mut out = BytesMut::new();
    let e = a.on_request(codes::OK, &[], &mut out).unwrap_err();
    assert!(
        matches!(e, BackendAuthError::Unexpected { code: 0, .. }),
        "{e:?}"
    );

    let mut a = auth();
    a.on_request(codes::SASL, b"SCRAM-SHA-256\0\0", &mut out)
        .unwrap();
    let e = a.on_request(codes::OK, &[], &mut out).unwrap_err();
    assert!(
        matches!(e, BackendAuthError::Unexpected { code: 0, .. }),
        "{e:?}"
    );
}

#[test]
fn scram_bad_server_first_message() {
    let mut out = BytesMut::new();
    // Nonce that does not extend ours.
    let mut a = auth();
    a.on_request(codes::SASL, b"SCRAM-SHA-256\0\0", &mut out)
        .unwrap();
    out.clear();
    let e = a
        .on_request(
            codes::SASL_CONTINUE,
            b"r=someone-elses-nonce,s=c2FsdA==,i=4096",
            &mut out,
        )
        .unwrap_err();
    assert!(matches!(e, BackendAuthError::Scram(_)), "{e:?}");
    assert!(out.is_empty());

    // Garbage.
    let mut a = auth();
    a.on_request(codes::SASL, b"SCRAM-SHA-256\0\0", &mut out)
        .unwrap();
    out.clear();
    let e = a
        .on_request(codes::SASL_CONTINUE, b"\xff\xfe", &mut out)
        .unwrap_err();
    assert!(matches!(e, BackendAuthError::Scram(_)), "{e:?}");
    assert_no_secret(&e);
}

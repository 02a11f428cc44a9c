//! The server side of SCRAM-SHA-256 (RFC 5802, RFC 7677) towards clients, for static tokens:
//! a stored verifier and a two-step exchange, pure (the caller does the I/O and supplies the
//! nonce).
//!
//! Only `SCRAM-SHA-256` is offered, without channel binding (`-PLUS`): a client's GS2 header
//! must be `n,,` or `y,,` (the client could bind but sees that the server does not offer it).
//! Proofs are compared in constant time.

use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The one mechanism offered.
pub const MECHANISM: &str = "SCRAM-SHA-256";

/// What the server keeps of a secret: never the secret itself.
#[derive(Clone)]
pub struct ScramVerifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramVerifier {
    /// Derives a verifier from `secret` with a random salt and PostgreSQL's 4096 iterations
    /// (SASLprep applied as libpq and PostgreSQL apply it).
    pub fn new(secret: &str) -> Self {
        let text = postgres_protocol::password::scram_sha_256(secret.as_bytes());
        Self::parse(&text).expect("postgres-protocol writes valid SCRAM verifiers")
    }

    /// Parses PostgreSQL's `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn parse(text: &str) -> Option<Self> {
        let rest = text.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        Some(Self {
            iterations: iterations.parse().ok().filter(|&i| i > 0)?,
            salt: B64.decode(salt).ok()?,
            stored_key: B64.decode(stored).ok()?.try_into().ok()?,
            server_key: B64.decode(server).ok()?.try_into().ok()?,
        })
    }
}

/// Why an exchange failed. The client is told only that authentication failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// A message that is not what RFC 5802 says it should be.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// Channel binding (`p=`) asked for, which is not offered.
    #[error("channel binding is not supported")]
    ChannelBinding,
    /// The nonce or the channel-binding echo does not match.
    #[error("SCRAM exchange does not match")]
    Mismatch,
    /// The proof is wrong: the client does not know the secret.
    #[error("wrong password")]
    WrongProof,
}

/// An exchange after the server-first-message was sent.
pub struct ScramExchange<'v> {
    verifier: &'v ScramVerifier,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl<'v> ScramExchange<'v> {
    /// Takes the client-first-message (the SASLInitialResponse data) and returns the
    /// exchange and the server-first-message to send. `server_nonce` must be fresh random
    /// printable ASCII (no `,`).
    pub fn start(
        verifier: &'v ScramVerifier,
        client_first: &[u8],
        server_nonce: &str,
    ) -> Result<(Self, String), ScramError> {
        let text = std::str::from_utf8(client_first)
            .map_err(|_| ScramError::Malformed("client-first-message is not UTF-8"))?;
        let (cb_flag, rest) = text
            .split_once(',')
            .ok_or(ScramError::Malformed("no GS2 header"))?;
        match cb_flag {
            "n" | "y" => {}
            f if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("bad channel-binding flag")),
        }
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("no GS2 header"))?;
        if !authzid.is_empty() {
            return Err(ScramError::Malformed(
                "authorization identity not supported",
            ));
        }
        // `n=` (the user name: PostgreSQL ignores it in favour of the startup packet's), then
        // `r=` (the client nonce); extensions are not supported.
        let mut attrs = bare.split(',');
        let user = attrs.next().unwrap_or("");
        if !user.starts_with("n=") {
            return Err(ScramError::Malformed("no user name attribute"));
        }
        let client_nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b)))
            .ok_or(ScramError::Malformed("no client nonce"))?;
        if attrs.next().is_some() {
            return Err(ScramError::Malformed("unsupported extension"));
        }
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&verifier.salt),
            verifier.iterations
        );
        let exchange = Self {
            verifier,
            gs2_header: format!("{cb_flag},{authzid},"),
            client_first_bare: bare.to_owned(),
            server_first: server_first.clone(),
            nonce,
        };
        Ok((exchange, server_first))
    }

    /// Checks the client-final-message (the SASLResponse data) and returns the
    /// server-final-message (`v=...`) to send in AuthenticationSASLFinal.
    pub fn finish(self, client_final: &[u8]) -> Result<String, ScramError> {
        let text = std::str::from_utf8(client_final)
            .map_err(|_| ScramError::Malformed("client-final-message is not UTF-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut attrs = without_proof.split(',');
        let binding = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(ScramError::Malformed("no channel binding attribute"))?;
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("no nonce"))?;
        if attrs.next().is_some() {
            return Err(ScramError::Malformed("unsupported extension"));
        }
        let binding_ok = B64.decode(binding).ok().as_deref() == Some(self.gs2_header.as_bytes());
        if !binding_ok || nonce != self.nonce {
            return Err(ScramError::Mismatch);
        }
        let proof: [u8; 32] = B64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(ScramError::Malformed("bad proof"))?;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let signature = hmac(&self.verifier.stored_key, auth_message.as_bytes());
        let mut client_key = proof;
        for (k, s) in client_key.iter_mut().zip(signature) {
            *k ^= s;
        }
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        if !bool::from(stored.ct_eq(&self.verifier.stored_key)) {
            return Err(ScramError::WrongProof);
        }
        let server_signature = hmac(&self.verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any size");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// A whole exchange with rust-postgres' client as the other side.
    fn exchange(secret: &str, typed: &str, binding: ChannelBinding) -> Result<(), ScramError> {
        let verifier = ScramVerifier::new(secret);
        let mut client = ScramSha256::new(typed.as_bytes(), binding);
        let (server, first) = ScramExchange::start(&verifier, client.message(), "srvnonce+/=")?;
        client
            .update(first.as_bytes())
            .expect("client takes server-first");
        let last = server.finish(client.message())?;
        client
            .finish(last.as_bytes())
            .expect("client verifies the server's signature");
        Ok(())
    }

    #[test]
    fn the_right_secret_passes_both_ways() {
        exchange(
            "agent-token-9f8e7d6c",
            "agent-token-9f8e7d6c",
            ChannelBinding::unrequested(),
        )
        .unwrap();
        // A client that could bind but sees no -PLUS offered sends `y,,`.
        exchange(
            "s3cr\u{e9}t token",
            "s3cr\u{e9}t token",
            ChannelBinding::unsupported(),
        )
        .unwrap();
    }

    #[test]
    fn a_wrong_secret_fails() {
        assert_eq!(
            exchange(
                "agent-token-9f8e7d6c",
                "agent-token-9f8e7d6d",
                ChannelBinding::unrequested()
            ),
            Err(ScramError::WrongProof)
        );
    }

    #[test]
    fn channel_binding_and_tampering_are_refused() {
        let v = ScramVerifier::new("secret-secret-secret");
        assert_eq!(
            ScramExchange::start(&v, b"p=tls-server-end-point,,n=,r=abc", "x").err(),
            Some(ScramError::ChannelBinding)
        );
        for bad in [
            &b"n,a=admin,n=,r=abc"[..],
            b"n,,r=abc",
            b"n,,n=,r=",
            b"x,,n=,r=a",
            b"\xff",
        ] {
            assert!(ScramExchange::start(&v, bad, "x").is_err(), "{bad:?}");
        }
        // A replayed or altered nonce, or a GS2 echo that differs from the header sent.
        let mut client = ScramSha256::new(b"secret-secret-secret", ChannelBinding::unrequested());
        let (server, first) = ScramExchange::start(&v, client.message(), "srv").unwrap();
        client.update(first.as_bytes()).unwrap();
        let last = String::from_utf8(client.message().to_vec()).unwrap();
        let tampered = last.replacen("srv,", "srw,", 1);
        assert_eq!(
            server.finish(tampered.as_bytes()),
            Err(ScramError::Mismatch)
        );
        let (server, _) = ScramExchange::start(&v, b"n,,n=,r=abc", "srv").unwrap();
        let echo_y = format!(
            "c={},r=abcsrv,p={}",
            B64.encode("y,,"),
            B64.encode([0u8; 32])
        );
        assert_eq!(server.finish(echo_y.as_bytes()), Err(ScramError::Mismatch));
    }

    #[test]
    fn verifier_text_round_trip_and_debug_hides_keys() {
        let v = ScramVerifier::new("secret-secret-secret");
        assert_eq!(v.iterations, 4096);
        assert_eq!(v.salt.len(), 16);
        assert!(ScramVerifier::parse("SCRAM-SHA-256$0:AAAA$AAAA:AAAA").is_none());
        assert!(ScramVerifier::parse("md5abc").is_none());
        let shown = format!("{v:?}");
        assert!(!shown.contains(&B64.encode(v.stored_key)), "{shown}");
    }
}

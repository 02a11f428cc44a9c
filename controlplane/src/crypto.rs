//! Secrets at rest: XChaCha20-Poly1305 under the master key, token digests, random tokens.
//!
//! Every sealed value is `nonce (24 bytes) || ciphertext+tag`, and carries an associated-data
//! label (`"connection:app"`, `"snapshot:7"`, ...) so a ciphertext copied into another row
//! does not decrypt there.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Name of the environment variable holding the base64 master key (32 bytes).
pub const MASTER_KEY_ENV: &str = "SLUICE_MASTER_KEY";

const NONCE_LEN: usize = 24;

/// A problem with the master key or a sealed value.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The master key is missing or not base64 of 32 bytes.
    #[error("master key: {0}")]
    BadKey(&'static str),
    /// A sealed value did not authenticate (wrong key, tampered, or moved to another row).
    #[error("a value stored encrypted could not be decrypted (wrong SLUICE_MASTER_KEY?)")]
    Open,
}

/// The key that seals credentials, the signing key and compiled snapshots in the store.
#[derive(Clone)]
pub struct MasterKey(XChaCha20Poly1305);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    /// Parses base64 (standard alphabet) of exactly 32 bytes.
    pub fn from_base64(text: &str) -> Result<Self, CryptoError> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| CryptoError::BadKey("not base64"))?;
        Self::from_bytes(&bytes)
    }

    /// Uses 32 raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.len() != 32 {
            return Err(CryptoError::BadKey("must be 32 bytes"));
        }
        Ok(Self(XChaCha20Poly1305::new(bytes.into())))
    }

    /// Reads [`MASTER_KEY_ENV`].
    pub fn from_env() -> Result<Self, CryptoError> {
        let v = std::env::var(MASTER_KEY_ENV)
            .map_err(|_| CryptoError::BadKey("SLUICE_MASTER_KEY is not set"))?;
        Self::from_base64(&v)
    }

    /// A fresh random key, base64-encoded (for `sluice up` on a new data directory).
    pub fn generate_base64() -> String {
        let mut k = [0u8; 32];
        OsRng.fill_bytes(&mut k);
        STANDARD.encode(k)
    }

    /// Encrypts `plain`, bound to `label`.
    pub fn seal(&self, label: &str, plain: &[u8]) -> Vec<u8> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ct = self
            .0
            .encrypt(
                &nonce,
                Payload {
                    msg: plain,
                    aad: label.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 encryption does not fail for in-memory buffers");
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Decrypts what [`MasterKey::seal`] produced under the same `label`.
    pub fn open(&self, label: &str, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < NONCE_LEN {
            return Err(CryptoError::Open);
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| CryptoError::Open)?;
        self.0
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: ct,
                    aad: label.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Open)
    }
}

/// SHA-256 of a bearer token, hex; what the store keeps instead of the token.
pub fn token_digest(token: &str) -> String {
    let d = Sha256::digest(token.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new random bearer token (32 random bytes, base64url) with a readable prefix.
pub fn new_token(prefix: &str) -> String {
    let mut b = [0u8; 32];
    OsRng.fill_bytes(&mut b);
    format!("{prefix}_{}", URL_SAFE_NO_PAD.encode(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_label_binding() {
        let k = MasterKey::from_base64(&MasterKey::generate_base64()).unwrap();
        let s = k.seal("connection:app", b"secret");
        assert_eq!(k.open("connection:app", &s).unwrap(), b"secret");
        assert!(k.open("connection:other", &s).is_err());
        let other = MasterKey::from_base64(&MasterKey::generate_base64()).unwrap();
        assert!(other.open("connection:app", &s).is_err());
        assert!(MasterKey::from_base64("c2hvcnQ=").is_err());
    }
}

//! Just-in-time grants: Ed25519-signed JWTs (alg EdDSA) that data planes verify offline with
//! the public JWK carried in every snapshot.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The control plane's grant-signing key.
pub struct GrantSigner {
    key: SigningKey,
    kid: String,
    issuer: String,
}

impl std::fmt::Debug for GrantSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantSigner")
            .field("kid", &self.kid)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// The claims of a grant token.
#[derive(Debug, Serialize)]
pub struct GrantClaims<'a> {
    pub iss: &'a str,
    pub sub: &'a str,
    pub iat: u64,
    pub exp: u64,
    /// The grant id, what `DELETE /v1/grants/{id}` revokes.
    pub jti: &'a str,
    pub connection: &'a str,
    pub role: &'a str,
}

impl GrantSigner {
    /// A new random key.
    pub fn generate(issuer: String) -> Self {
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        Self::from_secret(&key.to_bytes(), issuer)
    }

    /// From the 32-byte secret.
    pub fn from_secret(secret: &[u8; 32], issuer: String) -> Self {
        let key = SigningKey::from_bytes(secret);
        let x = URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes());
        // RFC 7638 thumbprint: SHA-256 over the required members in lexicographic order.
        let thumb = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(thumb.as_bytes()));
        Self { key, kid, issuer }
    }

    /// The 32-byte secret, to be sealed in the store.
    pub fn secret(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The public key as a JWK.
    pub fn public_jwk(&self) -> Value {
        json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(self.key.verifying_key().as_bytes()),
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        })
    }

    /// Signs a compact JWS over `claims`.
    pub fn sign(&self, claims: &GrantClaims<'_>) -> String {
        let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": self.kid});
        let h = URL_SAFE_NO_PAD.encode(header.to_string());
        let p = URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(claims).expect("grant claims always serialize"));
        let signing_input = format!("{h}.{p}");
        let sig = self.key.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
    }
}

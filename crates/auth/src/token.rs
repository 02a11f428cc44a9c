//! Client token verification: JWTs from configured issuers and static tokens, pure and synchronous.
//!
//! A [`TokenVerifier`] is built once from [`TokenConfig`] (all key material is loaded and
//! checked then) and shared behind an `Arc`; [`TokenVerifier::verify`] does no I/O and reads
//! no clock: the caller passes `now_unix`, which keeps verification deterministic in tests.
//!
//! Security rules enforced here:
//! - every key carries exactly one algorithm, fixed at build time from the key itself
//!   (`hs256_secret` → HS256, JWKS `kty`/`crv`/`alg` → RS*/PS*/ES256/ES384/EdDSA); the token's
//!   `alg` header only selects among keys whose algorithm equals it, so `alg: none` and
//!   HS256-against-a-public-key (algorithm confusion) can never verify;
//! - the unverified `iss` claim is used only to pick the issuer's keys; every claim is checked
//!   after the signature verifies;
//! - static tokens are compared by SHA-256 digest in constant time, and every configured token
//!   is compared on every attempt.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::scram::ScramVerifier;

/// Longest token accepted, in bytes; longer ones are rejected before any parsing.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Issuer name reported in [`Identity::issuer`] for static tokens.
pub const STATIC_ISSUER: &str = "static";

/// Smallest RSA modulus accepted from a JWKS, in bits.
const MIN_RSA_BITS: usize = 2048;

fn default_groups_claim() -> String {
    "groups".to_owned()
}

fn default_leeway() -> u64 {
    30
}

/// Token sources accepted by the data plane (part of its YAML configuration).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Trusted JWT issuers.
    #[serde(default)]
    pub jwt: Vec<JwtIssuerConfig>,
    /// Fixed bearer tokens (for tests, bootstrap and break-glass use); they never expire.
    #[serde(default)]
    pub static_tokens: Vec<StaticTokenConfig>,
}

/// One trusted JWT issuer and its verification keys.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtIssuerConfig {
    /// Must equal the token's `iss` claim exactly.
    pub issuer: String,
    /// If non-empty, the token's `aud` (string or array) must contain one of these.
    #[serde(default)]
    pub audience: Vec<String>,
    /// HS256 shared secret (`${ENV}` substitution happens before this type sees it).
    #[serde(default)]
    pub hs256_secret: Option<String>,
    /// Inline JWKS document (`{"keys": [...]}`).
    #[serde(default)]
    pub jwks: Option<Value>,
    /// JWKS file, read once when the verifier is built.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Claim holding the caller's groups: an array of strings or a single string.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
}

impl fmt::Debug for JwtIssuerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtIssuerConfig")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field(
                "hs256_secret",
                &self.hs256_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("jwks", &self.jwks.as_ref().map(|_| "[inline]"))
            .field("jwks_file", &self.jwks_file)
            .field("groups_claim", &self.groups_claim)
            .field("leeway_secs", &self.leeway_secs)
            .finish()
    }
}

/// A fixed bearer token and the identity it stands for.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticTokenConfig {
    /// The secret token itself.
    pub token: String,
    /// Reported as [`Identity::subject`].
    pub subject: String,
    /// Reported as [`Identity::groups`].
    #[serde(default)]
    pub groups: Vec<String>,
    /// A login name that selects this token: a client whose startup packet names this `user`
    /// is asked for SCRAM-SHA-256 with the token as its password (the gateway keeps only a
    /// SCRAM verifier of it), instead of a cleartext password. Unset: cleartext, as for JWTs.
    #[serde(default)]
    pub user: Option<String>,
}

impl fmt::Debug for StaticTokenConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticTokenConfig")
            .field("token", &fingerprint(&self.token))
            .field("subject", &self.subject)
            .field("groups", &self.groups)
            .field("user", &self.user)
            .finish()
    }
}

/// Who a verified token says the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The `sub` claim (or the static token's configured subject).
    pub subject: String,
    /// Groups from the issuer's `groups_claim` (empty if absent).
    pub groups: Vec<String>,
    /// The `iss` claim, or [`STATIC_ISSUER`] for static tokens.
    pub issuer: String,
    /// The `jti` claim if present, else [`fingerprint`] of the token.
    pub token_id: String,
    /// The `exp` claim in unix seconds; `None` for static tokens.
    pub expires_at: Option<u64>,
    /// The `connection` claim, if any: just-in-time grant tokens are scoped to one connection.
    pub connection: Option<String>,
}

/// Why a token was refused. Display texts are short, safe to send to the client and to log,
/// and never contain any part of the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a well-formed JWT (bad segments, base64, JSON or claim types).
    #[error("malformed token")]
    Malformed,
    /// `exp` (plus leeway) has passed.
    #[error("token has expired")]
    Expired,
    /// `nbf` or `iat` lies in the future (beyond leeway).
    #[error("token is not yet valid")]
    NotYetValid,
    /// No configured key of the token's algorithm verifies its signature.
    #[error("token signature is invalid")]
    BadSignature,
    /// The header's `alg` is `none`, unknown, or not one any key of the issuer uses.
    #[error("token algorithm is not accepted")]
    UnsupportedAlgorithm,
    /// The `iss` claim names no configured issuer.
    #[error("token issuer is not trusted")]
    UnknownIssuer,
    /// `aud` does not name any configured audience.
    #[error("token audience is not accepted")]
    WrongAudience,
    /// A required claim is absent.
    #[error("token lacks the required `{0}` claim")]
    MissingClaim(&'static str),
    /// Not a JWT and not one of the static tokens.
    #[error("unknown token")]
    UnknownToken,
    /// Longer than [`MAX_TOKEN_LEN`].
    #[error("token is too long")]
    TooLong,
}

impl TokenError {
    /// SQLSTATE for the `ErrorResponse` sent to the client: always `28P01`
    /// (invalid_password), since the token travels in the password field.
    pub fn sqlstate(&self) -> &'static str {
        "28P01"
    }
}

/// The token configuration cannot be used; names the issuer and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A problem with one issuer's configuration.
    #[error("jwt issuer {issuer:?}: {reason}")]
    Issuer {
        /// The issuer as configured.
        issuer: String,
        /// What is wrong.
        reason: String,
    },
    /// The JWKS file of an issuer could not be read.
    #[error("jwt issuer {issuer:?}: cannot read jwks_file {path}: {source}")]
    JwksFile {
        /// The issuer as configured.
        issuer: String,
        /// The file that failed.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A problem with one static token entry (identified by position and subject, never the token).
    #[error("static_tokens[{index}] (subject {subject:?}): {reason}")]
    StaticToken {
        /// Position in `static_tokens`.
        index: usize,
        /// The configured subject.
        subject: String,
        /// What is wrong.
        reason: String,
    },
}

/// SHA-256 of the token, hex, first 12 characters: safe to log. Never log the token itself.
pub fn fingerprint(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let mut hex = hex::encode(&digest[..6]);
    hex.truncate(12);
    hex
}

/// One verification key with the single algorithm it may be used with.
#[derive(Clone)]
struct VerifyingKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

struct Issuer {
    name: String,
    audience: Vec<String>,
    groups_claim: String,
    leeway: u64,
    keys: Vec<VerifyingKey>,
}

struct StaticEntry {
    digest: [u8; 32],
    subject: String,
    groups: Vec<String>,
    /// [`fingerprint`] of the token, computed at load (a SCRAM login never sees the token).
    token_id: String,
    /// The login name that asks for SCRAM, and the verifier derived from the token.
    scram: Option<(String, ScramVerifier)>,
}

impl StaticEntry {
    fn identity(&self) -> Identity {
        Identity {
            subject: self.subject.clone(),
            groups: self.groups.clone(),
            issuer: STATIC_ISSUER.to_owned(),
            token_id: self.token_id.clone(),
            expires_at: None,
            connection: None,
        }
    }
}

/// A static token a client logs in to with SCRAM-SHA-256 (see [`TokenVerifier::scram_login`]).
pub struct ScramLogin<'a> {
    entry: &'a StaticEntry,
}

impl ScramLogin<'_> {
    /// What the exchange is checked against.
    pub fn verifier(&self) -> &ScramVerifier {
        &self.entry.scram.as_ref().expect("only SCRAM entries").1
    }

    /// Who the client is once the exchange succeeded.
    pub fn identity(&self) -> Identity {
        self.entry.identity()
    }
}

/// Verifies client tokens against the configured issuers and static tokens.
/// Built once; `Send + Sync`, shared across cores behind an `Arc`.
pub struct TokenVerifier {
    issuers: HashMap<String, Issuer>,
    statics: Vec<StaticEntry>,
}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut issuers: Vec<&str> = self.issuers.keys().map(String::as_str).collect();
        issuers.sort_unstable();
        f.debug_struct("TokenVerifier")
            .field("issuers", &issuers)
            .field("static_tokens", &self.statics.len())
            .finish()
    }
}

impl TokenVerifier {
    /// Builds the verifier: reads `jwks_file`s, parses every key, and rejects issuers without
    /// keys, unsupported key types or algorithms, duplicate issuers and bad static tokens.
    pub fn new(cfg: &TokenConfig) -> Result<Self, ConfigError> {
        let mut issuers = HashMap::with_capacity(cfg.jwt.len());
        for icfg in &cfg.jwt {
            let issuer = build_issuer(icfg)?;
            if issuers.contains_key(&issuer.name) {
                return Err(issuer_err(&icfg.issuer, "configured more than once"));
            }
            issuers.insert(issuer.name.clone(), issuer);
        }

        let mut statics: Vec<StaticEntry> = Vec::with_capacity(cfg.static_tokens.len());
        for (index, st) in cfg.static_tokens.iter().enumerate() {
            let err = |reason: &str| ConfigError::StaticToken {
                index,
                subject: st.subject.clone(),
                reason: reason.to_owned(),
            };
            if st.token.is_empty() {
                return Err(err("token is empty"));
            }
            if st.token.len() > MAX_TOKEN_LEN {
                return Err(err("token is longer than 16 KiB"));
            }
            if st.subject.is_empty() {
                return Err(err("subject is empty"));
            }
            let digest: [u8; 32] = Sha256::digest(st.token.as_bytes()).into();
            if statics.iter().any(|s| s.digest == digest) {
                return Err(err("token duplicates an earlier static token"));
            }
            if st.token.len() < 16 {
                tracing::warn!(
                    index,
                    subject = %st.subject,
                    "static token is shorter than 16 characters; use a long random value"
                );
            }
            let scram = match &st.user {
                None => None,
                Some(u) if u.is_empty() => return Err(err("user is empty")),
                Some(u)
                    if statics
                        .iter()
                        .any(|s| s.scram.as_ref().is_some_and(|x| &x.0 == u)) =>
                {
                    return Err(err(
                        "user is also the login name of an earlier static token",
                    ));
                }
                Some(u) => Some((u.clone(), ScramVerifier::new(&st.token))),
            };
            statics.push(StaticEntry {
                digest,
                subject: st.subject.clone(),
                groups: st.groups.clone(),
                token_id: fingerprint(&st.token),
                scram,
            });
        }
        Ok(Self { issuers, statics })
    }

    /// True when no issuer and no static token is configured (every token is refused).
    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty() && self.statics.is_empty()
    }

    /// The static token whose login name is `user`, if one is configured: that client is asked
    /// for SCRAM-SHA-256 instead of a cleartext token.
    pub fn scram_login(&self, user: &str) -> Option<ScramLogin<'_>> {
        self.statics
            .iter()
            .find(|s| s.scram.as_ref().is_some_and(|(u, _)| u == user))
            .map(|entry| ScramLogin { entry })
    }

    /// Verifies `token` at time `now_unix` (seconds) and returns who it identifies.
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<Identity, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        if let Some(identity) = self.verify_static(token) {
            return Ok(identity);
        }
        let Some(parts) = JwtParts::split(token) else {
            return Err(if self.statics.is_empty() {
                TokenError::Malformed
            } else {
                TokenError::UnknownToken
            });
        };
        self.verify_jwt(token, &parts, now_unix)
    }

    /// Compares the token's digest with every static token's digest in constant time.
    fn verify_static(&self, token: &str) -> Option<Identity> {
        if self.statics.is_empty() {
            return None;
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // No early exit: every entry is compared so timing does not reveal which one matched.
        let mut found: Option<&StaticEntry> = None;
        for entry in &self.statics {
            if bool::from(entry.digest.ct_eq(&digest)) {
                found = Some(entry);
            }
        }
        found.map(StaticEntry::identity)
    }

    fn verify_jwt(
        &self,
        token: &str,
        parts: &JwtParts<'_>,
        now: u64,
    ) -> Result<Identity, TokenError> {
        let header: JwtHeader = decode_json_segment(parts.header)?;
        if header.crit.is_some() {
            // We understand no JWS extensions, so a token that marks one critical is refused.
            return Err(TokenError::UnsupportedAlgorithm);
        }
        let alg: Algorithm = header
            .alg
            .parse()
            .map_err(|_| TokenError::UnsupportedAlgorithm)?;
        let claims: Map<String, Value> = decode_json_segment(parts.payload)?;

        // The unverified issuer only selects which keys to try.
        let iss = match claims.get("iss") {
            Some(Value::String(iss)) => iss.as_str(),
            Some(_) => return Err(TokenError::Malformed),
            None => return Err(TokenError::MissingClaim("iss")),
        };
        let issuer = self.issuers.get(iss).ok_or(TokenError::UnknownIssuer)?;

        let signature = URL_SAFE_NO_PAD
            .decode(parts.signature)
            .map_err(|_| TokenError::Malformed)?;
        issuer.verify_signature(alg, header.kid.as_deref(), parts.signed, &signature)?;

        issuer.check_claims(token, &claims, now)
    }
}

impl Issuer {
    /// Tries the issuer's keys whose algorithm equals the header's `alg`: with a `kid`, the key
    /// of that id (or, if none has it, the keys that carry no id, such as the HS256 secret);
    /// without a `kid`, all of them.
    fn verify_signature(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
        signed: &[u8],
        signature: &Vec<u8>,
    ) -> Result<(), TokenError> {
        let by_kid = |k: &&VerifyingKey| match kid {
            None => true,
            Some(kid) => k.kid.as_deref() == Some(kid),
        };
        let mut candidates: Vec<&VerifyingKey> = self.keys.iter().filter(by_kid).collect();
        if candidates.is_empty() {
            // A `kid` we do not know: only keys that have no `kid` of their own (such as the
            // HS256 secret) may still be tried.
            candidates = self.keys.iter().filter(|k| k.kid.is_none()).collect();
        }
        let mut any_alg_match = false;
        for key in candidates.into_iter().filter(|k| k.alg == alg) {
            any_alg_match = true;
            // The verifier is built for the key's own algorithm, never one chosen by the token.
            let Ok(verifier) = (DEFAULT_PROVIDER.verifier_factory)(&key.alg, &key.key) else {
                continue;
            };
            if verifier.verify(signed, signature).is_ok() {
                return Ok(());
            }
        }
        if any_alg_match || self.keys.iter().any(|k| k.alg == alg) {
            Err(TokenError::BadSignature)
        } else {
            Err(TokenError::UnsupportedAlgorithm)
        }
    }

    fn check_claims(
        &self,
        token: &str,
        claims: &Map<String, Value>,
        now: u64,
    ) -> Result<Identity, TokenError> {
        let exp = numeric_date(claims, "exp")?.ok_or(TokenError::MissingClaim("exp"))?;
        if now >= exp.saturating_add(self.leeway) {
            return Err(TokenError::Expired);
        }
        let latest_start = now.saturating_add(self.leeway);
        if let Some(nbf) = numeric_date(claims, "nbf")? {
            if nbf > latest_start {
                return Err(TokenError::NotYetValid);
            }
        }
        if let Some(iat) = numeric_date(claims, "iat")? {
            if iat > latest_start {
                return Err(TokenError::NotYetValid);
            }
        }

        if !self.audience.is_empty() {
            let ok = match claims.get("aud") {
                Some(Value::String(aud)) => self.audience.iter().any(|a| a == aud),
                Some(Value::Array(auds)) => auds.iter().any(|aud| {
                    aud.as_str()
                        .is_some_and(|aud| self.audience.iter().any(|a| a == aud))
                }),
                Some(Value::Null) | None => false,
                Some(_) => return Err(TokenError::Malformed),
            };
            if !ok {
                return Err(TokenError::WrongAudience);
            }
        }

        let subject = match claims.get("sub") {
            Some(Value::String(sub)) if !sub.is_empty() => sub.clone(),
            Some(Value::String(_)) | Some(Value::Null) | None => {
                return Err(TokenError::MissingClaim("sub"))
            }
            Some(_) => return Err(TokenError::Malformed),
        };

        let groups = match claims.get(&self.groups_claim) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(g)) => vec![g.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|g| g.as_str().map(str::to_owned).ok_or(TokenError::Malformed))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(TokenError::Malformed),
        };

        let token_id = match claims.get("jti") {
            Some(Value::String(jti)) if !jti.is_empty() => jti.clone(),
            None | Some(Value::Null) | Some(Value::String(_)) => fingerprint(token),
            Some(_) => return Err(TokenError::Malformed),
        };

        let connection = match claims.get("connection") {
            None | Some(Value::Null) => None,
            Some(Value::String(c)) => Some(c.clone()),
            Some(_) => return Err(TokenError::Malformed),
        };

        Ok(Identity {
            subject,
            groups,
            issuer: self.name.clone(),
            token_id,
            expires_at: Some(exp),
            connection,
        })
    }
}

/// Reads a NumericDate claim: a non-negative JSON number, fractions truncated.
fn numeric_date(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<u64>, TokenError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(v) = n.as_u64() {
                Ok(Some(v))
            } else {
                match n.as_f64() {
                    // Truncating a fractional NumericDate is intended; the range is checked.
                    Some(f) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => {
                        Ok(Some(f as u64))
                    }
                    _ => Err(TokenError::Malformed),
                }
            }
        }
        Some(_) => Err(TokenError::Malformed),
    }
}

/// The three dot-separated segments of a compact JWS.
struct JwtParts<'a> {
    header: &'a str,
    payload: &'a str,
    signature: &'a str,
    /// `header.payload`, the bytes the signature covers.
    signed: &'a [u8],
}

impl<'a> JwtParts<'a> {
    fn split(token: &'a str) -> Option<Self> {
        let mut it = token.split('.');
        let (header, payload, signature) = (it.next()?, it.next()?, it.next()?);
        if it.next().is_some() || header.is_empty() || payload.is_empty() {
            return None;
        }
        let signed = &token.as_bytes()[..header.len() + 1 + payload.len()];
        Some(Self {
            header,
            payload,
            signature,
            signed,
        })
    }
}

#[derive(Deserialize)]
struct JwtHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

fn decode_json_segment<T: serde::de::DeserializeOwned>(segment: &str) -> Result<T, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)
}

fn issuer_err(issuer: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Issuer {
        issuer: issuer.to_owned(),
        reason: reason.into(),
    }
}

fn build_issuer(cfg: &JwtIssuerConfig) -> Result<Issuer, ConfigError> {
    let name = &cfg.issuer;
    if name.is_empty() {
        return Err(issuer_err(name, "issuer is empty"));
    }
    if cfg.groups_claim.is_empty() {
        return Err(issuer_err(name, "groups_claim is empty"));
    }
    if cfg.audience.iter().any(String::is_empty) {
        return Err(issuer_err(name, "audience contains an empty string"));
    }

    let mut keys = Vec::new();
    if let Some(secret) = &cfg.hs256_secret {
        if secret.is_empty() {
            return Err(issuer_err(name, "hs256_secret is empty"));
        }
        if secret.len() < 32 {
            tracing::warn!(issuer = %name, "hs256_secret is shorter than 32 bytes");
        }
        keys.push(VerifyingKey {
            kid: None,
            alg: Algorithm::HS256,
            key: DecodingKey::from_secret(secret.as_bytes()),
        });
    }
    if let Some(jwks) = &cfg.jwks {
        keys.extend(parse_jwks(name, jwks, "jwks")?);
    }
    if let Some(path) = &cfg.jwks_file {
        let doc = read_jwks_file(name, path)?;
        keys.extend(parse_jwks(name, &doc, "jwks_file")?);
    }
    if keys.is_empty() {
        return Err(issuer_err(
            name,
            "no verification key: set hs256_secret, jwks or jwks_file",
        ));
    }
    Ok(Issuer {
        name: name.clone(),
        audience: cfg.audience.clone(),
        groups_claim: cfg.groups_claim.clone(),
        leeway: cfg.leeway_secs,
        keys,
    })
}

fn read_jwks_file(issuer: &str, path: &Path) -> Result<Value, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::JwksFile {
        issuer: issuer.to_owned(),
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        issuer_err(
            issuer,
            format!("jwks_file {} is not valid JSON: {e}", path.display()),
        )
    })
}

fn parse_jwks(issuer: &str, doc: &Value, what: &str) -> Result<Vec<VerifyingKey>, ConfigError> {
    let keys = doc.get("keys").and_then(Value::as_array).ok_or_else(|| {
        issuer_err(
            issuer,
            format!("{what}: expected an object with a `keys` array"),
        )
    })?;
    let mut out = Vec::with_capacity(keys.len());
    for (i, raw) in keys.iter().enumerate() {
        let fail = |reason: String| issuer_err(issuer, format!("{what}: keys[{i}]: {reason}"));
        let kty = raw.get("kty").and_then(Value::as_str).unwrap_or("");
        if !matches!(kty, "RSA" | "EC" | "OKP") {
            return Err(fail(if kty == "oct" {
                "symmetric (kty \"oct\") keys are not accepted in a JWKS; use hs256_secret".into()
            } else {
                format!("unsupported kty {kty:?}")
            }));
        }
        let jwk: Jwk = serde_json::from_value(raw.clone())
            .map_err(|e| fail(format!("invalid {kty} key: {e}")))?;
        if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
            // Encryption keys in a shared JWKS are legitimate but never verify signatures.
            continue;
        }
        let alg = key_algorithm(&jwk).map_err(fail)?;
        let key =
            DecodingKey::from_jwk(&jwk).map_err(|e| fail(format!("invalid key material: {e}")))?;
        check_key_size(&jwk).map_err(fail)?;
        let kid = jwk.common.key_id.clone();
        if let Some(kid) = &kid {
            if out
                .iter()
                .any(|k: &VerifyingKey| k.kid.as_deref() == Some(kid))
            {
                return Err(fail(format!("duplicate kid {kid:?}")));
            }
        }
        out.push(VerifyingKey { kid, alg, key });
    }
    Ok(out)
}

/// The one algorithm a JWK may verify, from its type and curve; a stated `alg` must agree.
fn key_algorithm(jwk: &Jwk) -> Result<Algorithm, String> {
    let stated = jwk.common.key_algorithm;
    let allowed: &[(KeyAlgorithm, Algorithm)] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => &[
            (KeyAlgorithm::RS256, Algorithm::RS256),
            (KeyAlgorithm::RS384, Algorithm::RS384),
            (KeyAlgorithm::RS512, Algorithm::RS512),
            (KeyAlgorithm::PS256, Algorithm::PS256),
            (KeyAlgorithm::PS384, Algorithm::PS384),
            (KeyAlgorithm::PS512, Algorithm::PS512),
        ],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => &[(KeyAlgorithm::ES256, Algorithm::ES256)],
            EllipticCurve::P384 => &[(KeyAlgorithm::ES384, Algorithm::ES384)],
            ref other => return Err(format!("unsupported EC curve {other:?}")),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => &[(KeyAlgorithm::EdDSA, Algorithm::EdDSA)],
            ref other => return Err(format!("unsupported OKP curve {other:?}")),
        },
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric keys are not accepted in a JWKS".into())
        }
    };
    match stated {
        // Without `alg`, an RSA key is taken to be RS256 (the OIDC default), others by curve.
        None => Ok(allowed[0].1),
        Some(stated) => allowed
            .iter()
            .find(|(k, _)| *k == stated)
            .map(|(_, a)| *a)
            .ok_or_else(|| format!("alg {stated:?} does not fit this key type")),
    }
}

fn check_key_size(jwk: &Jwk) -> Result<(), String> {
    let decode = |s: &str| {
        URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| "bad base64url".to_owned())
    };
    match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            let n = decode(&p.n)?;
            let bits = n
                .iter()
                .position(|b| *b != 0)
                .map_or(0, |i| (n.len() - i) * 8 - n[i].leading_zeros() as usize);
            if bits < MIN_RSA_BITS {
                return Err(format!(
                    "RSA modulus has {bits} bits; at least {MIN_RSA_BITS} required"
                ));
            }
            if decode(&p.e)?.is_empty() {
                return Err("RSA exponent is empty".into());
            }
        }
        AlgorithmParameters::EllipticCurve(p) => {
            let want = if p.curve == EllipticCurve::P384 {
                48
            } else {
                32
            };
            if decode(&p.x)?.len() != want || decode(&p.y)?.len() != want {
                return Err("EC coordinates have the wrong length".into());
            }
        }
        AlgorithmParameters::OctetKeyPair(p) => {
            if decode(&p.x)?.len() != 32 {
                return Err("Ed25519 public key must be 32 bytes".into());
            }
        }
        AlgorithmParameters::OctetKey(_) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests;

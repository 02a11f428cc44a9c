use super::*;

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

const NOW: u64 = 1_700_000_000;
const HS_ISS: &str = "https://hs.example";
const HS_SECRET: &str = "0123456789abcdef0123456789abcdef";
const RSA_ISS: &str = "https://rsa.example";
const EC_ISS: &str = "https://ec.example";
const ED_ISS: &str = "https://ed.example";

const RSA_PRIVATE_PEM: &[u8] = include_bytes!("../../tests/fixtures/rsa1_private.pem");
const RSA_PUBLIC_PEM: &[u8] = include_bytes!("../../tests/fixtures/rsa1_public.pem");

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A generated signing key with its public JWK.
struct TestKey {
    encoding: EncodingKey,
    jwk: Value,
    alg: Algorithm,
}

fn ec_key(kid: &str) -> TestKey {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = kp.public_key_raw();
    assert_eq!(raw.len(), 65, "uncompressed P-256 point");
    TestKey {
        encoding: EncodingKey::from_ec_der(&kp.serialize_der()),
        jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
                    "x": b64(&raw[1..33]), "y": b64(&raw[33..])}),
        alg: Algorithm::ES256,
    }
}

fn ed_key(kid: &str) -> TestKey {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    TestKey {
        encoding: EncodingKey::from_ed_der(&kp.serialize_der()),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA",
                    "x": b64(kp.public_key_raw())}),
        alg: Algorithm::EdDSA,
    }
}

fn rsa_encoding() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM).unwrap()
}

fn issuer(iss: &str) -> JwtIssuerConfig {
    JwtIssuerConfig {
        issuer: iss.to_owned(),
        audience: Vec::new(),
        hs256_secret: None,
        jwks: None,
        jwks_file: None,
        groups_claim: default_groups_claim(),
        leeway_secs: default_leeway(),
    }
}

struct Fixture {
    verifier: TokenVerifier,
    ec1: TestKey,
    ec2: TestKey,
    ed: TestKey,
}

fn fixture_verifier() -> Fixture {
    let ec1 = ec_key("ec-1");
    let ec2 = ec_key("ec-2");
    let ed = ed_key("ed-1");
    let cfg = TokenConfig {
        jwt: vec![
            JwtIssuerConfig {
                hs256_secret: Some(HS_SECRET.to_owned()),
                audience: vec!["sluice".to_owned(), "other".to_owned()],
                ..issuer(HS_ISS)
            },
            JwtIssuerConfig {
                jwks_file: Some(fixture("rsa_jwks.json")),
                ..issuer(RSA_ISS)
            },
            JwtIssuerConfig {
                jwks: Some(json!({"keys": [ec1.jwk.clone(), ec2.jwk.clone()]})),
                groups_claim: "roles".to_owned(),
                ..issuer(EC_ISS)
            },
            JwtIssuerConfig {
                jwks: Some(json!({"keys": [ed.jwk.clone()]})),
                ..issuer(ED_ISS)
            },
        ],
        static_tokens: vec![StaticTokenConfig {
            token: "static-token-for-ci-0123456789".to_owned(),
            subject: "ci-bot".to_owned(),
            groups: vec!["ci".to_owned()],
            user: None,
        }],
    };
    Fixture {
        verifier: TokenVerifier::new(&cfg).unwrap(),
        ec1,
        ec2,
        ed,
    }
}

fn claims(iss: &str) -> Value {
    json!({
        "iss": iss,
        "sub": "agent-7",
        "aud": "sluice",
        "exp": NOW + 300,
        "iat": NOW - 10,
        "groups": ["readers", "analysts"],
    })
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, key).unwrap()
}

fn hs(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        None,
        claims,
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
    )
}

/// Builds a token from raw header/claims JSON and raw signature bytes.
fn raw_token(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        b64(signature)
    )
}

fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn verifier_is_send_and_sync() {
    assert_send_sync::<TokenVerifier>();
}

#[test]
fn hs256_valid() {
    let f = fixture_verifier();
    let mut c = claims(HS_ISS);
    c["jti"] = json!("grant-42");
    let id = f.verifier.verify(&hs(&c), NOW).unwrap();
    assert_eq!(
        id,
        Identity {
            subject: "agent-7".into(),
            groups: vec!["readers".into(), "analysts".into()],
            issuer: HS_ISS.into(),
            token_id: "grant-42".into(),
            expires_at: Some(NOW + 300),
            connection: None,
        }
    );
}

#[test]
fn token_id_falls_back_to_fingerprint() {
    let f = fixture_verifier();
    let token = hs(&claims(HS_ISS));
    let id = f.verifier.verify(&token, NOW).unwrap();
    assert_eq!(id.token_id, fingerprint(&token));
    assert_eq!(id.token_id.len(), 12);
}

#[test]
fn rs256_valid_from_jwks_file() {
    let f = fixture_verifier();
    let token = sign(
        Algorithm::RS256,
        Some("rsa-1"),
        &claims(RSA_ISS),
        &rsa_encoding(),
    );
    let id = f.verifier.verify(&token, NOW).unwrap();
    assert_eq!(id.subject, "agent-7");
    assert_eq!(id.issuer, RSA_ISS);
    // Without kid the issuer's RS256 keys are tried.
    let token = sign(Algorithm::RS256, None, &claims(RSA_ISS), &rsa_encoding());
    assert!(f.verifier.verify(&token, NOW).is_ok());
}

#[test]
fn es256_valid_and_kid_selects_key() {
    let f = fixture_verifier();
    let mut c = claims(EC_ISS);
    c["roles"] = json!(["dba"]);
    for key in [&f.ec1, &f.ec2] {
        let kid = key.jwk["kid"].as_str().unwrap();
        let token = sign(key.alg, Some(kid), &c, &key.encoding);
        let id = f.verifier.verify(&token, NOW).unwrap();
        assert_eq!(id.groups, vec!["dba".to_owned()], "groups_claim is `roles`");
        // Without kid both keys are tried.
        let token = sign(key.alg, None, &c, &key.encoding);
        assert!(f.verifier.verify(&token, NOW).is_ok());
    }
    // kid names the other key: the signature does not verify with it.
    let token = sign(Algorithm::ES256, Some("ec-2"), &c, &f.ec1.encoding);
    assert_eq!(
        f.verifier.verify(&token, NOW),
        Err(TokenError::BadSignature)
    );
    // kid names no key at all (and every key has a kid).
    let token = sign(Algorithm::ES256, Some("ec-9"), &c, &f.ec1.encoding);
    assert_eq!(
        f.verifier.verify(&token, NOW),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn eddsa_valid() {
    let f = fixture_verifier();
    let token = sign(f.ed.alg, Some("ed-1"), &claims(ED_ISS), &f.ed.encoding);
    assert_eq!(f.verifier.verify(&token, NOW).unwrap().subject, "agent-7");
}

#[test]
fn expired() {
    let f = fixture_verifier();
    let mut c = claims(HS_ISS);
    c["exp"] = json!(NOW - 31);
    assert_eq!(f.verifier.verify(&hs(&c), NOW), Err(TokenError::Expired));
    // Within leeway (30 s) it still passes.
    c["exp"] = json!(NOW - 29);
    assert!(f.verifier.verify(&hs(&c), NOW).is_ok());
}

#[test]
fn exp_is_required() {
    let f = fixture_verifier();
    let mut c = claims(HS_ISS);
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        f.verifier.verify(&hs(&c), NOW),
        Err(TokenError::MissingClaim("exp"))
    );
    c["exp"] = json!("tomorrow");
    assert_eq!(f.verifier.verify(&hs(&c), NOW), Err(TokenError::Malformed));
}

#[test]
fn nbf_and_iat_in_future() {
    let f = fixture_verifier();
    let mut c = claims(HS_ISS);
    c["nbf"] = json!(NOW + 60);
    assert_eq!(
        f.verifier.verify(&hs(&c), NOW),
        Err(TokenError::NotYetValid)
    );
    c["nbf"] = json!(NOW + 20);
    assert!(f.verifier.verify(&hs(&c), NOW).is_ok(), "within leeway");

    let mut c = claims(HS_ISS);
    c["iat"] = json!(NOW + 120);
    assert_eq!(
        f.verifier.verify(&hs(&c), NOW),
        Err(TokenError::NotYetValid)
    );
}

#[test]
fn unknown_issuer() {
    let f = fixture_verifier();
    let c = claims("https://evil.example");
    assert_eq!(
        f.verifier.verify(&hs(&c), NOW),
        Err(TokenError::UnknownIssuer)
    );
    let mut c = claims(HS_ISS);
    c.as_object_mut().unwrap().remove("iss");
    assert_eq!(
        f.verifier.verify(&hs(&c), NOW),
        Err(TokenError::MissingClaim("iss"))
    );
}

#[test]
fn audience() {
    let f = fixture_verifier();
    let mut c = claims(HS_ISS);
    c["aud"] = json!("someone-else");
    assert_eq!(
        f.verifier.verify(&hs(&c), NOW),
        Err(TokenError::WrongAudience)
    );
    c["aud"] = json!(["x", "other"]);
    assert!(f.verifier.verify(&hs(&c), NOW).is_ok());
    c["aud"] = json!(["x", "y"]);
    assert_eq!(
        f.verifier.verify(&hs(&c), NOW),
        Err(TokenError::WrongAudience)
    );
    c.as_object_mut().unwrap().remove("aud");
    assert_eq!(
        f.verifier.verify(&hs(&c), NOW),
        Err(TokenError::WrongAudience)
    );
}

#[test]
fn forged_signature() {
    let f = fixture_verifier();
    let forged = sign(
        Algorithm::HS256,
        None,
        &claims(HS_ISS),
        &EncodingKey::from_secret(b"not-the-secret-not-the-secret-xx"),
    );
    assert_eq!(
        f.verifier.verify(&forged, NOW),
        Err(TokenError::BadSignature)
    );

    // Signed by a fresh EC key the issuer does not know.
    let stranger = ec_key("ec-1");
    let forged = sign(
        Algorithm::ES256,
        Some("ec-1"),
        &claims(EC_ISS),
        &stranger.encoding,
    );
    assert_eq!(
        f.verifier.verify(&forged, NOW),
        Err(TokenError::BadSignature)
    );

    // Claims altered after signing.
    let token = hs(&claims(HS_ISS));
    let mut parts: Vec<&str> = token.split('.').collect();
    let mut c = claims(HS_ISS);
    c["sub"] = json!("admin");
    let payload = b64(c.to_string().as_bytes());
    parts[1] = &payload;
    assert_eq!(
        f.verifier.verify(&parts.join("."), NOW),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn algorithm_confusion_hs256_with_rsa_public_key() {
    let f = fixture_verifier();
    // The classic attack: HS256 keyed with the issuer's public key bytes.
    let secret = EncodingKey::from_secret(RSA_PUBLIC_PEM);
    let token = sign(Algorithm::HS256, Some("rsa-1"), &claims(RSA_ISS), &secret);
    assert_eq!(
        f.verifier.verify(&token, NOW),
        Err(TokenError::UnsupportedAlgorithm)
    );
    let token = sign(Algorithm::HS256, None, &claims(RSA_ISS), &secret);
    assert_eq!(
        f.verifier.verify(&token, NOW),
        Err(TokenError::UnsupportedAlgorithm)
    );

    // Even for an issuer that has both an HS256 secret and an RSA key, the RSA key is never
    // used as an HMAC secret.
    let cfg = TokenConfig {
        jwt: vec![JwtIssuerConfig {
            hs256_secret: Some(HS_SECRET.to_owned()),
            jwks_file: Some(fixture("rsa_jwks.json")),
            ..issuer(RSA_ISS)
        }],
        ..Default::default()
    };
    let v = TokenVerifier::new(&cfg).unwrap();
    for kid in [Some("rsa-1"), None] {
        let token = sign(Algorithm::HS256, kid, &claims(RSA_ISS), &secret);
        assert_eq!(v.verify(&token, NOW), Err(TokenError::BadSignature));
    }
    // And an RS256 token is not checked against the HS256 secret either way round.
    let token = sign(
        Algorithm::RS256,
        Some("rsa-1"),
        &claims(RSA_ISS),
        &rsa_encoding(),
    );
    assert!(v.verify(&token, NOW).is_ok());
}

#[test]
fn alg_none_is_refused() {
    let f = fixture_verifier();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let token = raw_token(&json!({"alg": alg, "typ": "JWT"}), &claims(HS_ISS), b"");
        assert_eq!(
            f.verifier.verify(&token, NOW),
            Err(TokenError::UnsupportedAlgorithm),
            "{alg}"
        );
        // A trailing signature does not help.
        let token = raw_token(&json!({"alg": alg}), &claims(HS_ISS), b"sig");
        assert_eq!(
            f.verifier.verify(&token, NOW),
            Err(TokenError::UnsupportedAlgorithm)
        );
    }
    // Unsigned form without the trailing dot.
    let token = format!(
        "{}.{}",
        b64(br#"{"alg":"none"}"#),
        b64(claims(HS_ISS).to_string().as_bytes())
    );
    assert!(f.verifier.verify(&token, NOW).is_err());
}

#[test]
fn crit_header_is_refused() {
    let f = fixture_verifier();
    let good = hs(&claims(HS_ISS));
    let sig = good.rsplit('.').next().unwrap();
    let token = format!(
        "{}.{}.{}",
        b64(br#"{"alg":"HS256","crit":["exp"],"exp":1}"#),
        b64(claims(HS_ISS).to_string().as_bytes()),
        sig
    );
    assert_eq!(
        f.verifier.verify(&token, NOW),
        Err(TokenError::UnsupportedAlgorithm)
    );
}

#[test]
fn missing_sub() {
    let f = fixture_verifier();
    let mut c = claims(HS_ISS);
    c.as_object_mut().unwrap().remove("sub");
    assert_eq!(
        f.verifier.verify(&hs(&c), NOW),
        Err(TokenError::MissingClaim("sub"))
    );
    c["sub"] = json!("");
    assert_eq!(
        f.verifier.verify(&hs(&c), NOW),
        Err(TokenError::MissingClaim("sub"))
    );
}

#[test]
fn groups_shapes() {
    let f = fixture_verifier();
    let mut c = claims(HS_ISS);
    c["groups"] = json!("single");
    assert_eq!(
        f.verifier.verify(&hs(&c), NOW).unwrap().groups,
        vec!["single".to_owned()]
    );
    c.as_object_mut().unwrap().remove("groups");
    assert!(f.verifier.verify(&hs(&c), NOW).unwrap().groups.is_empty());
    c["groups"] = json!(null);
    assert!(f.verifier.verify(&hs(&c), NOW).unwrap().groups.is_empty());
    c["groups"] = json!(["ok", 3]);
    assert_eq!(f.verifier.verify(&hs(&c), NOW), Err(TokenError::Malformed));
    c["groups"] = json!({"a": 1});
    assert_eq!(f.verifier.verify(&hs(&c), NOW), Err(TokenError::Malformed));
}

#[test]
fn oversize_token() {
    let f = fixture_verifier();
    let token = "a".repeat(MAX_TOKEN_LEN + 1);
    assert_eq!(f.verifier.verify(&token, NOW), Err(TokenError::TooLong));
    // A well-formed JWT that is merely large is rejected the same way.
    let mut c = claims(HS_ISS);
    c["pad"] = json!("x".repeat(MAX_TOKEN_LEN));
    assert_eq!(f.verifier.verify(&hs(&c), NOW), Err(TokenError::TooLong));
}

#[test]
fn malformed_tokens() {
    let f = fixture_verifier();
    let v_no_static = TokenVerifier::new(&TokenConfig {
        jwt: vec![JwtIssuerConfig {
            hs256_secret: Some(HS_SECRET.into()),
            ..issuer(HS_ISS)
        }],
        ..Default::default()
    })
    .unwrap();
    for bad in ["", "abc", "a.b", "a.b.c.d", "!!!.???.***", "..", "e30.e30."] {
        assert_eq!(
            v_no_static.verify(bad, NOW),
            Err(TokenError::Malformed),
            "{bad:?}"
        );
        let err = f.verifier.verify(bad, NOW).unwrap_err();
        assert!(
            matches!(err, TokenError::Malformed | TokenError::UnknownToken),
            "{bad:?}: {err:?}"
        );
    }
    // Header says HS256 but payload is not an object.
    let token = raw_token(&json!({"alg": "HS256"}), &json!([1, 2]), b"x");
    assert_eq!(f.verifier.verify(&token, NOW), Err(TokenError::Malformed));
}

#[test]
fn static_tokens() {
    let f = fixture_verifier();
    let id = f
        .verifier
        .verify("static-token-for-ci-0123456789", u64::MAX)
        .unwrap();
    assert_eq!(
        id,
        Identity {
            subject: "ci-bot".into(),
            groups: vec!["ci".into()],
            issuer: STATIC_ISSUER.into(),
            token_id: fingerprint("static-token-for-ci-0123456789"),
            expires_at: None,
            connection: None,
        }
    );
    for miss in [
        "static-token-for-ci-012345678",
        "static-token-for-ci-01234567890",
        "Static-token-for-ci-0123456789",
        "",
    ] {
        assert_eq!(f.verifier.verify(miss, NOW), Err(TokenError::UnknownToken));
    }
}

#[test]
fn error_display_never_contains_the_token() {
    let token = hs(&claims(HS_ISS));
    let all = [
        TokenError::Malformed,
        TokenError::Expired,
        TokenError::NotYetValid,
        TokenError::BadSignature,
        TokenError::UnsupportedAlgorithm,
        TokenError::UnknownIssuer,
        TokenError::WrongAudience,
        TokenError::MissingClaim("sub"),
        TokenError::UnknownToken,
        TokenError::TooLong,
    ];
    // Every variant, and every error a real run of bad tokens produces.
    let f = fixture_verifier();
    let mut produced = Vec::new();
    for t in [
        token.clone(),
        format!("{token}x"),
        token.replace('.', ""),
        "secret-static-guess".to_owned(),
    ] {
        if let Err(e) = f.verifier.verify(&t, NOW + 10_000) {
            produced.push((t, e));
        }
    }
    assert!(!produced.is_empty());
    let pieces: Vec<&str> = token.split('.').collect();
    for e in all.iter().chain(produced.iter().map(|(_, e)| e)) {
        let text = e.to_string();
        let debug = format!("{e:?}");
        assert!(!text.is_empty() && text.len() < 64, "{text}");
        assert_eq!(e.sqlstate(), "28P01");
        for piece in &pieces {
            for window in piece.as_bytes().windows(8) {
                let w = std::str::from_utf8(window).unwrap();
                assert!(!text.contains(w) && !debug.contains(w), "{text} / {debug}");
            }
        }
    }
    for (t, e) in &produced {
        assert!(!e.to_string().contains(t.as_str()));
    }
}

#[test]
fn fingerprint_is_short_sha256_prefix() {
    // sha256("abc") = ba7816bf8f01cfea414140de5dae2223...
    assert_eq!(fingerprint("abc"), "ba7816bf8f01");
}

#[test]
fn empty_verifier() {
    let v = TokenVerifier::new(&TokenConfig::default()).unwrap();
    assert!(v.is_empty());
    assert!(v.verify("anything", NOW).is_err());
    assert!(!fixture_verifier().verifier.is_empty());
}

fn config_err(cfg: JwtIssuerConfig) -> String {
    TokenVerifier::new(&TokenConfig {
        jwt: vec![cfg],
        ..Default::default()
    })
    .unwrap_err()
    .to_string()
}

#[test]
fn config_errors_name_issuer_and_problem() {
    let e = config_err(issuer("https://nokey.example"));
    assert!(
        e.contains("https://nokey.example") && e.contains("no verification key"),
        "{e}"
    );

    let e = config_err(JwtIssuerConfig {
        jwks: Some(json!({"keys": [{"kty": "XYZ"}]})),
        ..issuer("i1")
    });
    assert!(e.contains("\"i1\"") && e.contains("unsupported kty"), "{e}");

    let e = config_err(JwtIssuerConfig {
        jwks: Some(json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]})),
        ..issuer("i2")
    });
    assert!(e.contains("hs256_secret"), "{e}");

    // An RSA key claiming to be ES256.
    let mut rsa: Value =
        serde_json::from_slice(&std::fs::read(fixture("rsa_jwks.json")).unwrap()).unwrap();
    rsa["keys"][0]["alg"] = json!("ES256");
    let e = config_err(JwtIssuerConfig {
        jwks: Some(rsa.clone()),
        ..issuer("i3")
    });
    assert!(e.contains("does not fit"), "{e}");
    rsa["keys"][0]["alg"] = json!("HS256");
    assert!(config_err(JwtIssuerConfig {
        jwks: Some(rsa.clone()),
        ..issuer("i3")
    })
    .contains("does not fit"));
    rsa["keys"][0]["alg"] = json!("XX999");
    assert!(config_err(JwtIssuerConfig {
        jwks: Some(rsa),
        ..issuer("i3")
    })
    .contains("does not fit"));

    // A weak RSA key.
    let e = config_err(JwtIssuerConfig {
        jwks: Some(json!({"keys": [{"kty": "RSA", "n": b64(&[0xc5; 128]), "e": "AQAB"}]})),
        ..issuer("i4")
    });
    assert!(e.contains("1024 bits"), "{e}");

    let e = config_err(JwtIssuerConfig {
        jwks_file: Some(fixture("does-not-exist.json")),
        ..issuer("i5")
    });
    assert!(
        e.contains("\"i5\"") && e.contains("does-not-exist.json"),
        "{e}"
    );

    let e = config_err(JwtIssuerConfig {
        jwks: Some(json!([])),
        ..issuer("i6")
    });
    assert!(e.contains("keys"), "{e}");

    let e = config_err(JwtIssuerConfig {
        hs256_secret: Some(String::new()),
        ..issuer("i7")
    });
    assert!(e.contains("hs256_secret is empty"), "{e}");

    let dup = JwtIssuerConfig {
        hs256_secret: Some(HS_SECRET.into()),
        ..issuer("i8")
    };
    let e = TokenVerifier::new(&TokenConfig {
        jwt: vec![dup.clone(), dup],
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("more than once"), "{e}");

    let st = |token: &str| StaticTokenConfig {
        token: token.into(),
        subject: "bot".into(),
        groups: vec![],
        user: None,
    };
    let e = TokenVerifier::new(&TokenConfig {
        static_tokens: vec![st("same-token-value-123"), st("same-token-value-123")],
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("static_tokens[1]") && !e.contains("same-token"),
        "{e}"
    );
}

#[test]
fn encryption_keys_are_skipped() {
    let ec = ec_key("enc");
    let mut jwk = ec.jwk.clone();
    jwk["use"] = json!("enc");
    let e = config_err(JwtIssuerConfig {
        jwks: Some(json!({"keys": [jwk]})),
        ..issuer("only-enc")
    });
    assert!(e.contains("no verification key"), "{e}");
}

#[test]
fn config_deserializes_with_defaults_and_rejects_unknown_fields() {
    let cfg: TokenConfig = serde_json::from_value(json!({
        "jwt": [{"issuer": "https://idp.example", "hs256_secret": "s3cret-s3cret-s3cret-s3cret-s3cr"}],
        "static_tokens": [{"token": "t0k3n-t0k3n-t0k3n", "subject": "bot"}]
    }))
    .unwrap();
    assert_eq!(cfg.jwt[0].groups_claim, "groups");
    assert_eq!(cfg.jwt[0].leeway_secs, 30);
    assert!(cfg.jwt[0].audience.is_empty());
    assert!(cfg.static_tokens[0].groups.is_empty());
    let debug = format!("{cfg:?}");
    assert!(
        !debug.contains("s3cret") && !debug.contains("t0k3n"),
        "{debug}"
    );

    assert!(serde_json::from_value::<TokenConfig>(json!({"jwts": []})).is_err());
    assert!(serde_json::from_value::<TokenConfig>(
        json!({"jwt": [{"issuer": "x", "hs256_secret": "y", "algorithm": "none"}]})
    )
    .is_err());
}

#[test]
fn a_static_token_with_a_login_name_is_offered_scram() {
    use crate::scram::ScramExchange;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    let st = |token: &str, user: Option<&str>| StaticTokenConfig {
        token: token.into(),
        subject: format!("bot-{}", user.unwrap_or("plain")),
        groups: vec!["g".into()],
        user: user.map(Into::into),
    };
    let v = TokenVerifier::new(&TokenConfig {
        static_tokens: vec![
            st("scram-token-0123456789", Some("ci")),
            st("plain-token-0123456789", None),
        ],
        ..Default::default()
    })
    .unwrap();
    assert!(v.scram_login("bot-plain").is_none());
    assert!(v.scram_login("other").is_none());
    let login = v.scram_login("ci").expect("ci logs in with SCRAM");
    let mut client = ScramSha256::new(b"scram-token-0123456789", ChannelBinding::unrequested());
    let (ex, first) = ScramExchange::start(login.verifier(), client.message(), "n0nce").unwrap();
    client.update(first.as_bytes()).unwrap();
    let last = ex.finish(client.message()).unwrap();
    client.finish(last.as_bytes()).unwrap();
    let id = login.identity();
    assert_eq!(id.subject, "bot-ci");
    assert_eq!(id.token_id, fingerprint("scram-token-0123456789"));
    // The cleartext path still takes the same token, under any user name.
    assert_eq!(v.verify("scram-token-0123456789", 0).unwrap(), id);
    // Two tokens with one login name are refused.
    let e = TokenVerifier::new(&TokenConfig {
        static_tokens: vec![
            st("scram-token-0123456789", Some("ci")),
            st("other-token-0123456789", Some("ci")),
        ],
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("static_tokens[1]") && !e.contains("token-0123"),
        "{e}"
    );
}

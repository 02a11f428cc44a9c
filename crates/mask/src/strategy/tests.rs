use super::number::read_int;
use super::uuid::{format_uuid, parse_uuid_text};
use super::*;
use crate::types::oid;

fn key() -> Arc<HashKey> {
    Arc::new(HashKey::new(b"0123456789abcdef-test-key").unwrap())
}

fn all_strategies() -> Vec<Strategy> {
    vec![
        Strategy::redact("[REDACTED]").unwrap(),
        Strategy::redact_fill(b'*').unwrap(),
        Strategy::partial(2, 4, '•').unwrap(),
        Strategy::keep_last(4),
        Strategy::keyed_hash(key(), 16).unwrap(),
        Strategy::tokenize(key()),
        Strategy::null(),
    ]
}

fn m(ty: ColumnType, s: Strategy) -> ColumnMask {
    ColumnMask::new(ty, s)
}

fn text(s: &Strategy, v: &str) -> Option<String> {
    m(ColumnType::text(oid::TEXT), s.clone())
        .mask(Some(v.as_bytes()))
        .map(|b| String::from_utf8(b).unwrap())
}

/// Masks `v` through both paths (in place when it fits, and by copy) and checks they agree.
fn both(cm: &ColumnMask, v: &[u8]) -> Option<Vec<u8>> {
    let copied = {
        let mut out = BytesMut::new();
        cm.write(v, &mut out).then(|| out.to_vec())
    };
    let mut buf = v.to_vec();
    if cm.apply_in_place(&mut buf) {
        assert_eq!(
            Some(&buf),
            copied.as_ref(),
            "in place and copy differ for {v:?}"
        );
    }
    copied
}

#[test]
fn constructors_validate() {
    assert!(HashKey::new(b"short").is_err());
    assert!(Strategy::redact("a\0b").is_err());
    assert!(Strategy::redact_fill(b'"').is_err());
    assert!(Strategy::redact_fill(b'\t').is_err());
    assert!(Strategy::partial(0, 4, '\\').is_err());
    assert!(Strategy::keyed_hash(key(), 0).is_err());
    assert!(Strategy::keyed_hash(key(), 65).is_err());
    assert!(format!("{:?}", key()).contains("HashKey(..)"));
    assert_eq!(Strategy::null().name(), "null");
    assert_eq!(Strategy::keep_last(4).name(), "partial");
}

#[test]
fn text_strategies() {
    let s = all_strategies();
    assert_eq!(text(&s[0], "alice@example.com").unwrap(), "[REDACTED]");
    assert_eq!(text(&s[1], "secret").unwrap(), "******");
    assert_eq!(text(&s[2], "4111111111111111").unwrap(), "41••••••••••1111");
    assert_eq!(text(&s[3], "123-45-6789").unwrap(), "*******6789");
    let h = text(&s[4], "alice").unwrap();
    assert_eq!(h.len(), 16);
    assert!(h
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert_eq!(text(&s[4], "alice").unwrap(), h, "deterministic");
    assert_ne!(text(&s[4], "alicf").unwrap(), h);
    assert_eq!(text(&s[6], "x"), None);
}

#[test]
fn hash_depends_on_key() {
    let other = Arc::new(HashKey::new(b"another key of 16+ bytes").unwrap());
    let a = text(&Strategy::keyed_hash(key(), 64).unwrap(), "v").unwrap();
    let b = text(&Strategy::keyed_hash(other, 64).unwrap(), "v").unwrap();
    assert_eq!(a.len(), 64);
    assert_ne!(a, b);
}

#[test]
fn tokenize_preserves_format() {
    let t = Strategy::tokenize(key());
    for v in [
        "4111-1111-1111-1111",
        "123-45-6789",
        "AB12 cd34",
        "+1 (555) 234-5678",
    ] {
        let out = text(&t, v).unwrap();
        assert_eq!(out.len(), v.len());
        assert_ne!(out, v);
        for (a, b) in v.bytes().zip(out.bytes()) {
            assert_eq!(a.is_ascii_digit(), b.is_ascii_digit(), "{v} -> {out}");
            assert_eq!(a.is_ascii_lowercase(), b.is_ascii_lowercase());
            assert_eq!(a.is_ascii_uppercase(), b.is_ascii_uppercase());
            if !a.is_ascii_alphanumeric() {
                assert_eq!(a, b);
            }
        }
        assert_eq!(text(&t, v).unwrap(), out, "deterministic");
    }
    // Non-ASCII characters become one ASCII letter each; long values use several blocks.
    let out = text(&t, "Zoë Ångström").unwrap();
    assert_eq!(out.chars().count(), "Zoë Ångström".chars().count());
    assert!(out.is_ascii());
    let long = "9".repeat(200);
    let out = text(&t, &long).unwrap();
    assert_eq!(out.len(), 200);
    assert!(out.bytes().all(|b| b.is_ascii_digit()));
    assert!(out.bytes().skip(32).any(|b| b != b'9'));
}

#[test]
fn partial_utf8_boundaries() {
    let p = Strategy::keep_last(2);
    assert_eq!(text(&p, "héllo wörld").unwrap(), "*********ld");
    assert_eq!(text(&p, "日本語テキスト").unwrap(), "*****スト");
    let p = Strategy::partial(1, 1, '#').unwrap();
    assert_eq!(text(&p, "éxyzü").unwrap(), "é###ü");
    assert_eq!(text(&p, "😀ab😀").unwrap(), "😀##😀");
    // No more characters than kept: masked entirely (never fully revealed).
    assert_eq!(text(&p, "éü").unwrap(), "##");
    assert_eq!(text(&Strategy::keep_last(4), "abcd").unwrap(), "****");
    assert_eq!(text(&Strategy::keep_last(4), "").unwrap(), "");
    // Multi-byte fill over ASCII and ASCII fill over multi-byte: copy path, valid UTF-8.
    let cm = m(
        ColumnType::text(oid::TEXT),
        Strategy::partial(0, 1, '•').unwrap(),
    );
    assert!(!cm.fits_in_place(b"abc"));
    assert_eq!(both(&cm, b"abc").unwrap(), "••c".as_bytes());
    let cm = m(ColumnType::text(oid::TEXT), Strategy::keep_last(1));
    assert!(!cm.fits_in_place("äbc".as_bytes()));
    assert_eq!(both(&cm, "äbc".as_bytes()).unwrap(), b"**c");
    assert!(cm.fits_in_place(b"abc"));
}

#[test]
fn zero_length_values() {
    for s in all_strategies() {
        for ty in [
            ColumnType::text(oid::TEXT),
            ColumnType::text(oid::BPCHAR),
            ColumnType::binary(oid::VARCHAR),
        ] {
            let out = both(&m(ty, s.clone()), b"");
            if s.name() == "null" {
                assert_eq!(out, None);
            } else {
                assert!(std::str::from_utf8(&out.unwrap()).is_ok());
            }
        }
    }
}

#[test]
fn bpchar_is_padded() {
    let cm = m(
        ColumnType::text(oid::BPCHAR),
        Strategy::redact("X").unwrap(),
    );
    assert_eq!(both(&cm, b"abcde").unwrap(), b"X    ");
    let cm = m(
        ColumnType::text(oid::BPCHAR),
        Strategy::keyed_hash(key(), 4).unwrap(),
    );
    assert_eq!(both(&cm, b"abcdefgh").unwrap().len(), 8);
    assert!(both(&cm, b"abcd")
        .unwrap()
        .iter()
        .all(u8::is_ascii_hexdigit));
}

fn valid_json(v: &[u8]) -> bool {
    // A JSON string literal or a run of zeros is all the masker emits for json.
    let s = std::str::from_utf8(v).unwrap();
    if s.bytes().all(|b| b == b'0') {
        return !s.is_empty();
    }
    let Some(inner) = s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) else {
        return false;
    };
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return false,
            c if (c as u32) < 0x20 => return false,
            '\\' => match chars.next() {
                Some('"' | '\\' | '/' | 'b' | 'f' | 'n' | 'r' | 't') => {}
                Some('u') => {
                    if !(0..4).all(|_| chars.next().is_some_and(|c| c.is_ascii_hexdigit())) {
                        return false;
                    }
                }
                _ => return false,
            },
            _ => {}
        }
    }
    true
}

#[test]
fn json_values_stay_json() {
    let values: [&[u8]; 5] = [
        br#"{"ssn": "123-45-6789", "n": 1}"#,
        b"1",
        b"\"x\"",
        br#"["a\"b", "c\\d", "\n"]"#,
        "{\"name\": \"Zoë\"}".as_bytes(),
    ];
    for s in all_strategies() {
        for v in values {
            let cm = m(ColumnType::text(oid::JSON), s.clone());
            match both(&cm, v) {
                None => assert_eq!(s.name(), "null"),
                Some(out) => assert!(
                    valid_json(&out),
                    "{} {:?}",
                    s.name(),
                    String::from_utf8_lossy(&out)
                ),
            }
            // jsonb binary: version byte kept.
            let mut bin = vec![1u8];
            bin.extend_from_slice(v);
            let cm = m(ColumnType::binary(oid::JSONB), s.clone());
            if let Some(out) = both(&cm, &bin) {
                assert_eq!(out[0], 1);
                assert!(valid_json(&out[1..]));
            }
        }
    }
    // Control characters in a redaction text are escaped.
    let cm = m(
        ColumnType::text(oid::JSON),
        Strategy::redact("a\"b\n").unwrap(),
    );
    assert_eq!(both(&cm, b"{}").unwrap(), br#""a\"b\u000a""#);
    // jsonb binary with an unknown version: NULL.
    let cm = m(
        ColumnType::binary(oid::JSONB),
        Strategy::redact("x").unwrap(),
    );
    assert_eq!(both(&cm, b"\x02{}"), None);
}

fn parse_int(v: &[u8]) -> i64 {
    std::str::from_utf8(v).unwrap().parse().unwrap()
}

#[test]
fn integers_text() {
    for (o, max) in [
        (oid::INT2, i64::from(i16::MAX)),
        (oid::INT4, i64::from(i32::MAX)),
        (oid::INT8, i64::MAX),
    ] {
        for s in all_strategies() {
            for v in [&b"0"[..], b"-32768", b"12345", b"7"] {
                let cm = m(ColumnType::text(o), s.clone());
                match both(&cm, v) {
                    None => assert_eq!(s.name(), "null"),
                    Some(out) => {
                        let n = parse_int(&out);
                        assert!((0..=max).contains(&n), "{o} {} {out:?}", s.name());
                    }
                }
            }
        }
    }
    let cm = m(ColumnType::text(oid::INT4), Strategy::keep_last(2));
    assert_eq!(both(&cm, b"-12345").unwrap(), b"000045");
    let cm = m(
        ColumnType::text(oid::INT4),
        Strategy::partial(2, 0, '*').unwrap(),
    );
    assert_eq!(both(&cm, b"12345").unwrap(), b"12000");
    let cm = m(
        ColumnType::text(oid::INT4),
        Strategy::redact_fill(b'*').unwrap(),
    );
    assert_eq!(both(&cm, b"12345").unwrap(), b"00000");
    let cm = m(
        ColumnType::text(oid::INT4),
        Strategy::redact("gone").unwrap(),
    );
    assert_eq!(both(&cm, b"12345").unwrap(), b"0");
    // Not an integer: fail closed.
    assert_eq!(both(&cm, b"12a"), None);
}

#[test]
fn integers_binary() {
    for (o, w) in [(oid::INT2, 2usize), (oid::INT4, 4), (oid::INT8, 8)] {
        for s in all_strategies() {
            let cm = m(ColumnType::binary(o), s.clone());
            let v = vec![0x12u8; w];
            match both(&cm, &v) {
                None => assert_eq!(s.name(), "null"),
                Some(out) => {
                    assert_eq!(out.len(), w);
                    assert!(read_int(&out) >= 0);
                    assert!(cm.fits_in_place(&v));
                }
            }
            // Wrong width: NULL.
            assert_eq!(both(&cm, &vec![1u8; w + 1]), None);
        }
    }
    // Binary and text hash agree on the value.
    let h = Strategy::keyed_hash(key(), 16).unwrap();
    let t = both(&m(ColumnType::text(oid::INT4), h.clone()), b"-42").unwrap();
    let b = both(
        &m(ColumnType::binary(oid::INT4), h),
        &(-42i32).to_be_bytes(),
    )
    .unwrap();
    assert_eq!(
        parse_int(&t),
        i64::from(i32::from_be_bytes(b[..].try_into().unwrap()))
    );
    // Partial on binary keeps the last digits.
    let cm = m(ColumnType::binary(oid::INT8), Strategy::keep_last(3));
    let out = both(&cm, &123_456_789i64.to_be_bytes()).unwrap();
    assert_eq!(i64::from_be_bytes(out[..].try_into().unwrap()), 789);
}

#[test]
fn numeric_and_float() {
    let numeric_ok = |v: &[u8]| numeric_text(v).is_some();
    for s in all_strategies() {
        for v in [
            &b"-12.50"[..],
            b"0",
            b"NaN",
            b"123456789012345678901234567890.5",
        ] {
            if let Some(out) = both(&m(ColumnType::text(oid::NUMERIC), s.clone()), v) {
                assert!(
                    numeric_ok(&out),
                    "{} {:?}",
                    s.name(),
                    String::from_utf8_lossy(&out)
                );
            }
        }
        for v in [&b"-1.5e-10"[..], b"3.14", b"Infinity", b"NaN", b"1e+30"] {
            for o in [oid::FLOAT4, oid::FLOAT8] {
                if let Some(out) = both(&m(ColumnType::text(o), s.clone()), v) {
                    let t = std::str::from_utf8(&out).unwrap();
                    assert!(t.parse::<f64>().is_ok(), "{} {t}", s.name());
                }
            }
        }
        let out = both(
            &m(ColumnType::binary(oid::FLOAT8), s.clone()),
            &2.5f64.to_be_bytes(),
        );
        if let Some(out) = out {
            assert_eq!(out.len(), 8);
            assert!(f64::from_be_bytes(out[..].try_into().unwrap()).is_finite());
        }
    }
    let cm = m(ColumnType::text(oid::NUMERIC), Strategy::keep_last(2));
    assert_eq!(both(&cm, b"-123.45").unwrap(), b"0000.45");
    let cm = m(ColumnType::text(oid::NUMERIC), Strategy::tokenize(key()));
    let out = both(&cm, b"98765.43").unwrap();
    assert_eq!(out.len(), 8);
    assert_eq!(out[5], b'.');
    assert_ne!(out[0], b'0');
    // Binary numeric: zero is 8 bytes; a hash decodes to digits < 10000.
    let zero = [0u8; 8];
    let cm = m(
        ColumnType::binary(oid::NUMERIC),
        Strategy::keyed_hash(key(), 8).unwrap(),
    );
    let out = both(&cm, &zero).unwrap();
    let ndigits = usize::try_from(i16::from_be_bytes([out[0], out[1]])).unwrap();
    assert_eq!(out.len(), 8 + 2 * ndigits);
    assert!(out[8..]
        .chunks(2)
        .all(|d| u16::from_be_bytes([d[0], d[1]]) < 10_000));
    let cm = m(
        ColumnType::binary(oid::NUMERIC),
        Strategy::redact("x").unwrap(),
    );
    assert_eq!(both(&cm, &[0, 1, 0, 0, 0, 0, 0, 0, 0, 42]).unwrap(), zero);
}

#[test]
fn uuid_values() {
    let u = b"550e8400-e29b-41d4-a716-446655440000";
    let cm = m(ColumnType::text(oid::UUID), Strategy::redact("x").unwrap());
    assert_eq!(
        both(&cm, u).unwrap(),
        b"00000000-0000-0000-0000-000000000000"
    );
    let cm = m(ColumnType::text(oid::UUID), Strategy::keep_last(4));
    assert_eq!(
        both(&cm, b"550e8400-e29b-41d4-a716-446655441234").unwrap(),
        b"00000000-0000-0000-0000-000000001234"
    );
    let cm = m(
        ColumnType::text(oid::UUID),
        Strategy::partial(0, 4, '*').unwrap(),
    );
    assert_eq!(
        both(&cm, b"550e8400-e29b-41d4-a716-44665544abcd").unwrap(),
        b"00000000-0000-0000-0000-00000000abcd"
    );
    let h = Strategy::keyed_hash(key(), 16).unwrap();
    let t = both(&m(ColumnType::text(oid::UUID), h.clone()), u).unwrap();
    assert!(is_uuid_text(&t));
    assert_eq!(t[14], b'8', "version 8");
    assert!(matches!(t[19], b'8' | b'9' | b'a' | b'b'), "RFC variant");
    let mut raw = [0u8; 16];
    parse_uuid_text(u, &mut raw);
    let b = both(&m(ColumnType::binary(oid::UUID), h), &raw).unwrap();
    let mut text = [0u8; 36];
    format_uuid(b[..].try_into().unwrap(), &mut text);
    assert_eq!(&text[..], &t[..], "text and binary hash agree");
    // Not a UUID: NULL.
    assert_eq!(
        both(
            &m(ColumnType::text(oid::UUID), Strategy::keep_last(4)),
            b"nope"
        ),
        None
    );
}

#[test]
fn bytea_values() {
    let cm = m(
        ColumnType::text(oid::BYTEA),
        Strategy::redact_fill(b'*').unwrap(),
    );
    assert_eq!(both(&cm, b"\\xdeadbeef").unwrap(), b"\\x00000000");
    assert_eq!(
        both(&cm, b"abc\\000").unwrap(),
        b"\\x",
        "escape format: empty bytea"
    );
    let cm = m(
        ColumnType::text(oid::BYTEA),
        Strategy::redact("hi").unwrap(),
    );
    assert_eq!(both(&cm, b"\\x00").unwrap(), b"\\x6869");
    let cm = m(
        ColumnType::text(oid::BYTEA),
        Strategy::keyed_hash(key(), 7).unwrap(),
    );
    let out = both(&cm, b"\\x00").unwrap();
    assert_eq!(out.len(), 2 + 8);
    let cm = m(ColumnType::binary(oid::BYTEA), Strategy::keep_last(1));
    assert_eq!(both(&cm, &[1, 2, 3]).unwrap(), [0, 0, 3]);
    let cm = m(ColumnType::binary(oid::BYTEA), Strategy::tokenize(key()));
    assert_eq!(both(&cm, &[1, 2, 3]).unwrap().len(), 16);
}

#[test]
fn other_types_are_null() {
    for o in [
        oid::BOOL,
        oid::DATE,
        oid::TIMESTAMP,
        oid::TIMESTAMPTZ,
        oid::XML,
        1009,
        99_999,
    ] {
        for s in all_strategies() {
            for ty in [ColumnType::text(o), ColumnType::binary(o)] {
                assert_eq!(both(&m(ty, s.clone()), b"2024-01-01"), None);
            }
        }
    }
}

#[test]
fn null_input_stays_null() {
    for s in all_strategies() {
        assert_eq!(m(ColumnType::text(oid::TEXT), s).mask(None), None);
    }
}

#[test]
fn non_utf8_client_values_stay_ascii_and_whole() {
    // "café" and "Müller 1234" in LATIN1, and a two-byte EUC-JP character before "12".
    let values: [&[u8]; 3] = [b"caf\xe9", b"M\xfcller 1234", b"\xb0\xa1\x31\x32"];
    let types = [
        ColumnType::text(oid::TEXT),
        ColumnType::text(oid::BPCHAR),
        ColumnType::text(oid::JSON),
    ];
    for s in all_strategies() {
        let s = s.for_non_utf8_client();
        for ty in types {
            for v in values {
                let v: Vec<u8> = if ty.kind() == TypeKind::Json {
                    [&b"\""[..], v, b"\""].concat()
                } else {
                    v.to_vec()
                };
                if let Some(out) = both(&m(ty, s.clone()), &v) {
                    assert!(out.is_ascii(), "{} {:?}: {out:?}", s.name(), ty);
                    assert_ne!(out, v, "{} {:?}", s.name(), ty);
                }
            }
        }
    }
    // A partial mask keeps nothing of a non-ASCII value, and keeps as usual in an ASCII one.
    let p = Strategy::partial(0, 2, '•').unwrap().for_non_utf8_client();
    let cm = m(ColumnType::text(oid::TEXT), p);
    assert_eq!(both(&cm, b"\xb0\xa1\x31\x32").unwrap(), b"****");
    assert_eq!(both(&cm, b"1234").unwrap(), b"**34");
    let r = Strategy::redact("«masqué»").unwrap().for_non_utf8_client();
    assert_eq!(text(&r, "x").unwrap(), "*masqu**");
}

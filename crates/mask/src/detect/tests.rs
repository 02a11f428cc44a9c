use super::numeric::next_digit;
use super::*;

/// `kind` alone, balanced: the tests below pin down the checks balanced applies.
fn only(kind: DetectorKind) -> Detectors {
    Detectors::NONE
        .with(kind)
        .with_sensitivity(Sensitivity::Balanced)
}

/// The texts `kind` finds in `hay`, balanced.
fn found(kind: DetectorKind, hay: &str) -> Vec<String> {
    found_with(only(kind), hay)
}

fn found_with(set: Detectors, hay: &str) -> Vec<String> {
    set.find_all(hay.as_bytes())
        .into_iter()
        .map(|s| hay[s.range].to_string())
        .collect()
}

#[test]
fn sensitivity_flag() {
    assert_eq!(Detectors::ALL.sensitivity(), Sensitivity::Strict);
    assert_eq!(Detectors::default().sensitivity(), Sensitivity::Strict);
    let b = Detectors::ALL.with_sensitivity(Sensitivity::Balanced);
    assert_eq!(b.sensitivity(), Sensitivity::Balanced);
    assert!(DetectorKind::ALL.iter().all(|&k| b.contains(k)));
    assert!(Detectors::NONE
        .with_sensitivity(Sensitivity::Balanced)
        .is_empty());
    assert_eq!(b.with_sensitivity(Sensitivity::Strict), Detectors::ALL);
    for s in Sensitivity::ALL {
        assert_eq!(Sensitivity::from_name(s.name()), Some(s));
    }
}

/// What strict takes that balanced leaves: look-alikes that fail a validity check.
#[test]
fn strict_masks_look_alikes() {
    use DetectorKind::*;
    let cases: [(DetectorKind, &str, &str); 14] = [
        (Ssn, "itin 912-70-1234 filed", "912-70-1234"),
        (Ssn, "ssn 000-12-3456", "000-12-3456"),
        (Ssn, "ssn 666-12-3456", "666-12-3456"),
        (Ssn, "ssn 123-00-4567 and", "123-00-4567"),
        (Ssn, "ssn 123 45 6789.", "123 45 6789"),
        (Card, "card 1234567812345670", "1234567812345670"),
        (Phone, "call 123-456-7890", "123-456-7890"),
        (Phone, "call (015) 555-2671", "(015) 555-2671"),
        (
            Iban,
            "iban NI45BAPR00000013000003558124",
            "NI45BAPR00000013000003558124",
        ),
        (Email, "mail root@localhost now", "root@localhost"),
        (Email, "mail a@b.xn--p1ai", "a@b.xn--p1ai"),
        (
            ApiKey,
            "sk_test_4eC39HqLyjWDarjtT1zdp7dc",
            "sk_test_4eC39HqLyjWDarjtT1zdp7dc",
        ),
        (ApiKey, "DB_PASSWORD=hunter2hunter2 next", "hunter2hunter2"),
        (ApiKey, r#"{"apiKey": "abc123def456"}"#, "abc123def456"),
    ];
    for (kind, hay, want) in cases {
        let strict = Detectors::NONE.with(kind);
        assert_eq!(
            found_with(strict, hay),
            [want],
            "{kind:?} strict in {hay:?}"
        );
        assert_eq!(
            found(kind, hay),
            Vec::<String>::new(),
            "{kind:?} balanced in {hay:?}"
        );
    }
}

/// Token shapes with a specific prefix are found at either sensitivity.
#[test]
fn prefixed_tokens() {
    let keys = [
        "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv",
        "AIzaSyD-1234567890abcdefghijklmnopqrstu",
        "glpat-xYz123AbC456dEf789gH",
    ];
    for k in keys {
        let hay = format!("key {k} end");
        for s in Sensitivity::ALL {
            let set = Detectors::NONE
                .with(DetectorKind::ApiKey)
                .with_sensitivity(s);
            assert_eq!(found_with(set, &hay), [k], "{s:?}");
        }
    }
    // Not a token: prose with the prefix inside a word, or a short body.
    assert_none(
        DetectorKind::ApiKey,
        &["task-force-of-many-people-here", "sk-learn"],
    );
    assert_eq!(
        found_with(Detectors::ALL, "the password is long enough; token: null"),
        Vec::<String>::new()
    );
}

fn assert_none(kind: DetectorKind, hays: &[&str]) {
    for h in hays {
        assert_eq!(
            found(kind, h),
            Vec::<String>::new(),
            "{kind:?} flagged {h:?}"
        );
    }
}

#[test]
fn set_flags() {
    let d = Detectors::NONE
        .with(DetectorKind::Email)
        .with(DetectorKind::Ssn);
    assert!(d.contains(DetectorKind::Email) && d.contains(DetectorKind::Ssn));
    assert!(!d.contains(DetectorKind::Card));
    assert!(!d.without(DetectorKind::Email).contains(DetectorKind::Email));
    assert!(DetectorKind::ALL
        .iter()
        .all(|&k| Detectors::ALL.contains(k)));
    assert!(Detectors::NONE.is_empty());
    for k in DetectorKind::ALL {
        assert_eq!(DetectorKind::from_name(k.name()), Some(k));
    }
}

#[test]
fn emails() {
    use DetectorKind::Email;
    assert_eq!(
        found(Email, "mail alice.b+tag@mail.example.com now"),
        ["alice.b+tag@mail.example.com"]
    );
    assert_eq!(
        found(Email, "<bob@x.io>, carol_1@y-z.org."),
        ["bob@x.io", "carol_1@y-z.org"]
    );
    assert_eq!(found(Email, "\"dave@corp.co.uk\""), ["dave@corp.co.uk"]);
    assert_none(
        Email,
        &[
            "@handle",
            "a@b",
            "user@localhost",
            "x@.com",
            "a@b.c",
            "@@",
            "foo@bar.123",
            "@",
            "a.@",
        ],
    );
}

#[test]
fn luhn_and_iban_checks() {
    assert!(luhn(&[4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]));
    assert!(!luhn(&[4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2]));
    assert!(iban_mod97(b"DE89370400440532013000"));
    assert!(iban_mod97(b"GB82WEST12345698765432"));
    assert!(!iban_mod97(b"DE89370400440532013001"));
    assert!(!iban_mod97(b"DE8"));
}

#[test]
fn cards() {
    use DetectorKind::Card;
    let valid = [
        "4111111111111111",
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "5500 0000 0000 0004",
        "3782 822463 10005",
        "371449635398431",
        "6011111111111117",
        "2223000048400011",
        "4222222222222",
        "3530111333300000",
        "30569309025904",
    ];
    for c in valid {
        assert_eq!(found(Card, &format!("card: {c}.")), [c], "{c}");
    }
    assert_eq!(
        found(Card, "{\"pan\":4111111111111111}"),
        ["4111111111111111"]
    );
    assert_eq!(
        found(Card, "4111 1111 1111 1111 12"),
        ["4111 1111 1111 1111"]
    );
    assert_none(
        Card,
        &[
            "4111111111111112",                     // bad check digit
            "4111-1111 1111-1111",                  // mixed separators
            "order 1234567812345670 shipped",       // Luhn-valid, no issuer prefix
            "order #900000000000000001",            // too long
            "ORD-2024-000123-4567",                 // order reference
            "2024-01-15 12:30:45.123456+00",        // timestamp
            "1700000000123",                        // epoch millis
            "192.168.100.200",                      // IP
            "550e8400-e29b-41d4-a716-446655440000", // UUID
            "12345678-1234-1234-1234-123456789012", // all-digit UUID shape
            "41111111111111110",                    // 17 digits, Visa lengths are 13/16/19
            "x4111111111111111",                    // glued to a word
            "4111111111111111x",
            "1.4111111111111111",
            "4111111111111111.5",
        ],
    );
}

#[test]
fn ssns() {
    use DetectorKind::Ssn;
    assert_eq!(
        found(Ssn, "ssn 123-45-6789, other 078-05-1120"),
        ["123-45-6789", "078-05-1120"]
    );
    assert_eq!(
        found(
            Ssn,
            "invalid input syntax for type integer: \"123-45-6789\""
        ),
        ["123-45-6789"]
    );
    assert_none(
        Ssn,
        &[
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "999-12-3456",
            "123-00-4567",
            "123-45-0000",
            "123456789",
            "1123-45-6789",
            "123-45-67890",
            "2024-12-3456",
            "a123-45-6789",
            "123-45-6789-1",
        ],
    );
}

#[test]
fn phones() {
    use DetectorKind::Phone;
    for p in [
        "+14155552671",
        "+44 20 7946 0958",
        "+1 (415) 555-2671",
        "(415) 555-2671",
        "(415)555-2671",
        "415-555-2671",
        "415.555.2671",
        "415 555 2671",
        "1-415-555-2671",
    ] {
        assert_eq!(found(Phone, &format!("call {p} now")), [p], "{p}");
    }
    // A whole number in parentheses is not an `(AAA)` area code but still a phone number.
    for p in ["415-555-2671", "415.555.2671", "1-415-555-2671"] {
        assert_eq!(found(Phone, &format!("call ({p}) now")), [p], "({p})");
    }
    assert_none(
        Phone,
        &[
            "4155552671",      // bare digits: too ambiguous
            "192.168.100.200", // IP
            "10.123.456.7890",
            "2024-01-15", // date
            "12:30:45",
            "+0123456789",  // no country code starts with 0
            "+123",         // too short
            "115-555-2671", // area code starting with 1
            "415-155-2671", // exchange starting with 1
            "415-555-26712",
            "415-555.2671", // mixed separators
            "a+14155552671",
            "v1.415.555.2671",
            "550e8400-e29b-41d4-a716-446655440000",
        ],
    );
}

#[test]
fn ibans() {
    use DetectorKind::Iban;
    for i in [
        "DE89370400440532013000",
        "DE89 3704 0044 0532 0130 00",
        "GB82WEST12345698765432",
        "GB82 WEST 1234 5698 7654 32",
        "NO9386011117947",
    ] {
        assert_eq!(found(Iban, &format!("iban: {i}, ok")), [i], "{i}");
    }
    assert_eq!(
        found(Iban, "DE89 3704 0044 0532 0130 00 EUR"),
        ["DE89 3704 0044 0532 0130 00"]
    );
    assert_none(
        Iban,
        &[
            "DE89370400440532013001", // bad check
            "DE8937040044053201300",  // wrong length for DE
            "ZZ89370400440532013000", // unknown country
            "de89370400440532013000", // lowercase
            "XDE89370400440532013000",
            "DE89 37040044 0532013000", // broken grouping
        ],
    );
}

#[test]
fn api_keys() {
    use DetectorKind::ApiKey;
    let gh = format!("ghp_{}", "a1B2".repeat(9));
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
    let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----";
    for k in [
        "AKIAIOSFODNN7EXAMPLE",
        "ASIAIOSFODNN7EXAMPLE",
        gh.as_str(),
        "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
        "rk_live_4eC39HqLyjWDarjtT1zdp7dc",
        "xoxb-123456789012-abcdefABCDEF",
        jwt,
        pem,
    ] {
        assert_eq!(found(ApiKey, &format!("key={k} ")), [k], "{k}");
    }
    // An unterminated private key is masked to the end.
    let open = "x -----BEGIN PRIVATE KEY-----\nMIIEv";
    assert_eq!(found(ApiKey, open), [&open[2..]]);
    assert_none(
        ApiKey,
        &[
            "AKIA1234",
            "XAKIAIOSFODNN7EXAMPLE",
            "sk_test_4eC39HqLyjWDarjtT1zdp7dc",
            "ghp_short",
            "high_value",
            "xoxz-123456789012",
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
            "eyJhbGciOiJIUzI1NiJ9",
        ],
    );
}

#[test]
fn scrub_keeps_length_and_punctuation() {
    let mut buf = b"to alice@example.com, card 4111-1111-1111-1111, ssn 123-45-6789.".to_vec();
    let len = buf.len();
    assert_eq!(Detectors::ALL.scrub(&mut buf, Replace::Text), 3);
    assert_eq!(buf.len(), len);
    assert_eq!(
        &buf[..],
        &b"to *****@*******.***, card ****-****-****-****, ssn ***-**-****."[..]
    );
    // Numeric style keeps a number a number; escapes survive.
    let mut buf = br#"{"pan":4111111111111111,"k":"AKIAIOSFODNN7EXAMPLE\n"}"#.to_vec();
    Detectors::ALL.scrub(&mut buf, Replace::Numeric);
    assert_eq!(
        &buf[..],
        &br#"{"pan":1000000000000000,"k":"************1*******\n"}"#[..]
    );
    let mut pem = b"-----BEGIN PRIVATE KEY-----\\nMIIEvQ\\n-----END PRIVATE KEY-----".to_vec();
    Detectors::ALL.scrub(&mut pem, Replace::Numeric);
    assert!(pem.windows(2).filter(|w| w == b"\\n").count() == 2);
    assert!(!pem.windows(4).any(|w| w == b"MIIE"));
}

#[test]
fn ordinary_text_is_untouched() {
    let text = "On 2024-01-15 at 12:30:45 order ORD-2024-000123 (qty 3, $1,234.56) shipped to \
                10.0.0.1 for user 550e8400-e29b-41d4-a716-446655440000; version 1.2.3, build 20240115.1, \
                ticket #4521, call ext. 1234, zip 94107, ratio 3.14159, id 1234567890123456.";
    let mut buf = text.as_bytes().to_vec();
    assert_eq!(Detectors::ALL.find_all(&buf), vec![]);
    assert_eq!(Detectors::ALL.scrub(&mut buf, Replace::Text), 0);
}

#[test]
fn next_digit_matches_scalar() {
    let hay: Vec<u8> = (0u8..=255).chain(b"abc9".iter().copied()).collect();
    for from in 0..hay.len() {
        assert_eq!(
            next_digit(&hay, from),
            (from..hay.len()).find(|&i| hay[i].is_ascii_digit())
        );
    }
}

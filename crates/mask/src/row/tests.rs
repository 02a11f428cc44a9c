use std::sync::Arc;

use sluice_pgwire::encode;

use super::*;
use crate::detect::DetectorKind;
use crate::strategy::HashKey;
use crate::types::oid;

fn data_row(cols: &[Option<&[u8]>]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u8(b'D');
    b.put_i32(0);
    b.put_i16(i16::try_from(cols.len()).unwrap());
    for c in cols {
        match c {
            Some(v) => {
                b.put_i32(i32::try_from(v.len()).unwrap());
                b.put_slice(v);
            }
            None => b.put_i32(-1),
        }
    }
    let len = i32::try_from(b.len() - 1).unwrap();
    b[1..5].copy_from_slice(&len.to_be_bytes());
    b
}

/// Decodes a DataRow through the codec (proving it is a valid message) into owned columns.
fn columns(frame: &[u8]) -> Vec<Option<Vec<u8>>> {
    backend::parse(frame).expect("valid message");
    data_row_ranges(frame)
        .unwrap()
        .map(|r| r.expect("well-formed row").map(|r| frame[r].to_vec()))
        .collect()
}

fn row_description(fields: &[(&str, u32, i16)]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u8(b'T');
    b.put_i32(0);
    b.put_i16(i16::try_from(fields.len()).unwrap());
    for (i, (name, type_oid, format)) in fields.iter().enumerate() {
        b.put_slice(name.as_bytes());
        b.put_u8(0);
        b.put_u32(16_384);
        b.put_i16(i16::try_from(i + 1).unwrap());
        b.put_u32(*type_oid);
        b.put_i16(-1);
        b.put_i32(-1);
        b.put_i16(*format);
    }
    let len = i32::try_from(b.len() - 1).unwrap();
    b[1..5].copy_from_slice(&len.to_be_bytes());
    b
}

fn key() -> Arc<HashKey> {
    Arc::new(HashKey::new(b"row-tests-key-0123456789").unwrap())
}

fn plan(cols: Vec<(ColumnType, Option<Strategy>)>) -> RowPlan {
    RowPlan::new(cols, Detectors::NONE)
}

#[test]
fn in_place_when_lengths_keep() {
    let p = plan(vec![
        (ColumnType::text(oid::INT4), None),
        (
            ColumnType::text(oid::TEXT),
            Some(Strategy::redact_fill(b'*').unwrap()),
        ),
        (
            ColumnType::binary(oid::INT8),
            Some(Strategy::keyed_hash(key(), 8).unwrap()),
        ),
        (ColumnType::text(oid::TEXT), None),
    ]);
    assert!(!p.is_noop());
    assert_eq!(p.masked_columns().collect::<Vec<_>>(), [1, 2]);
    let mut row = data_row(&[
        Some(b"1"),
        Some(b"secret"),
        Some(&7i64.to_be_bytes()),
        Some(b"tail"),
    ]);
    let before = row.clone();
    assert!(mask_row_in_place(&mut row, &p).unwrap());
    let cols = columns(&row);
    assert_eq!(cols[0].as_deref(), Some(&b"1"[..]));
    assert_eq!(cols[1].as_deref(), Some(&b"******"[..]));
    assert_ne!(cols[2].as_deref(), Some(&7i64.to_be_bytes()[..]));
    assert_eq!(cols[3].as_deref(), Some(&b"tail"[..]));
    // The copy path gives the same bytes.
    let mut out = BytesMut::new();
    mask_row_into(&before, &p, &mut out).unwrap();
    assert_eq!(out, row);
}

#[test]
fn copy_when_lengths_change() {
    let p = plan(vec![
        (
            ColumnType::text(oid::TEXT),
            Some(Strategy::redact_fill(b'#').unwrap()),
        ),
        (
            ColumnType::text(oid::TEXT),
            Some(Strategy::redact("[REDACTED]").unwrap()),
        ),
        (ColumnType::text(oid::INT4), None),
        (ColumnType::text(oid::TEXT), Some(Strategy::null())),
        (ColumnType::text(oid::TEXT), None),
    ]);
    let mut row = data_row(&[Some(b"abc"), Some(b"x"), Some(b"42"), Some(b"gone"), None]);
    let orig = row.clone();
    assert!(!mask_row_in_place(&mut row, &p).unwrap());
    assert_eq!(row, orig, "untouched when it cannot be done in place");
    let mut out = BytesMut::from(&b"prefix"[..]);
    assert_eq!(mask_row(&mut row, &p, &mut out).unwrap(), Rewrite::Copied);
    assert_eq!(&out[..6], b"prefix");
    let cols = columns(&out[6..]);
    assert_eq!(
        cols,
        vec![
            Some(b"###".to_vec()),
            Some(b"[REDACTED]".to_vec()),
            Some(b"42".to_vec()),
            None,
            None
        ]
    );
}

#[test]
fn null_and_empty_values() {
    let p = plan(vec![
        (
            ColumnType::text(oid::TEXT),
            Some(Strategy::redact("R").unwrap()),
        ),
        (ColumnType::text(oid::TEXT), Some(Strategy::keep_last(4))),
        (
            ColumnType::binary(oid::INT4),
            Some(Strategy::redact("R").unwrap()),
        ),
    ]);
    let mut row = data_row(&[None, Some(b""), None]);
    assert!(mask_row_in_place(&mut row, &p).unwrap());
    assert_eq!(columns(&row), vec![None, Some(vec![]), None]);
    let mut row = data_row(&[Some(b""), None, None]);
    let mut out = BytesMut::new();
    assert_eq!(mask_row(&mut row, &p, &mut out).unwrap(), Rewrite::Copied);
    assert_eq!(columns(&out), vec![Some(b"R".to_vec()), None, None]);
}

#[test]
fn errors_fail_closed() {
    let p = plan(vec![(
        ColumnType::text(oid::TEXT),
        Some(Strategy::keep_last(1)),
    )]);
    let mut out = BytesMut::from(&b"keep"[..]);
    let mut two = data_row(&[Some(b"a"), Some(b"b")]);
    assert_eq!(
        mask_row_in_place(&mut two, &p),
        Err(MaskError::ColumnCount {
            expected: 1,
            got: 2
        })
    );
    assert!(mask_row_into(&two, &p, &mut out).is_err());
    // A value running past the frame.
    let mut bad = data_row(&[Some(b"abc")]);
    bad[10] = 9;
    assert!(matches!(
        mask_row_in_place(&mut bad, &p),
        Err(MaskError::Protocol(_))
    ));
    assert!(mask_row_into(&bad, &p, &mut out).is_err());
    assert!(mask_row_into(b"Z\0\0\0\x05I", &p, &mut out).is_err());
    assert_eq!(&out[..], b"keep", "nothing appended on error");
    // A no-op plan still checks the column count.
    let noop = plan(vec![(ColumnType::text(oid::TEXT), None)]);
    assert!(noop.is_noop());
    assert!(mask_row_in_place(&mut two, &noop).is_err());
}

#[test]
fn detectors_scan_unmasked_text_columns() {
    let p = RowPlan::new(
        [
            (ColumnType::text(oid::TEXT), None),
            (ColumnType::text(oid::INT4), None),
            (ColumnType::text(oid::JSONB), None),
            (
                ColumnType::text(oid::TEXT),
                Some(Strategy::redact("R").unwrap()),
            ),
            (ColumnType::text(oid::INT8), None),
        ],
        Detectors::ALL,
    );
    let cells: [Option<&[u8]>; 5] = [
        Some(b"mail bob@example.com"),
        Some(b"123"),
        Some(br#"{"ssn":"123-45-6789","n":4111111111111111}"#),
        Some(b"x"),
        Some(b"4111111111111111"),
    ];
    let row = data_row(&cells);
    let mut out = BytesMut::new();
    mask_row_into(&row, &p, &mut out).unwrap();
    let cols = columns(&out);
    assert_eq!(cols[0].as_deref(), Some(&b"mail ***@*******.***"[..]));
    assert_eq!(cols[1].as_deref(), Some(&b"123"[..]));
    assert_eq!(
        cols[2].as_deref(),
        Some(&br#"{"ssn":"100-00-0000","n":1000000000000000}"#[..])
    );
    assert_eq!(cols[3].as_deref(), Some(&b"R"[..]));
    assert_eq!(cols[4].as_deref(), Some(&b"1000000000000000"[..]));
    // In place with a same-length mask gives the same scan results.
    let p2 = RowPlan::new(
        [
            (ColumnType::text(oid::TEXT), None),
            (ColumnType::text(oid::INT4), None),
            (ColumnType::text(oid::JSONB), None),
            (
                ColumnType::text(oid::TEXT),
                Some(Strategy::redact_fill(b'R').unwrap()),
            ),
            (ColumnType::text(oid::INT8), None),
        ],
        Detectors::NONE
            .with(DetectorKind::Email)
            .with(DetectorKind::Card)
            .with(DetectorKind::Ssn),
    );
    let mut row = data_row(&cells);
    assert!(mask_row_in_place(&mut row, &p2).unwrap());
    assert_eq!(columns(&row), cols);
}

#[test]
fn many_masked_columns_in_batches() {
    let n = BATCH * 2 + 5;
    let p = plan(
        (0..n)
            .map(|_| {
                (
                    ColumnType::text(oid::TEXT),
                    Some(Strategy::redact_fill(b'*').unwrap()),
                )
            })
            .collect(),
    );
    let vals: Vec<Vec<u8>> = (0..n).map(|i| format!("v{i}").into_bytes()).collect();
    let cells: Vec<Option<&[u8]>> = vals.iter().map(|v| Some(&v[..])).collect();
    let mut row = data_row(&cells);
    assert!(mask_row_in_place(&mut row, &p).unwrap());
    for (c, v) in columns(&row).iter().zip(&vals) {
        assert_eq!(c.as_deref().unwrap(), &vec![b'*'; v.len()][..]);
    }
    // A late column that does not fit: nothing written at all.
    let mut cols: Vec<_> = (0..n)
        .map(|_| {
            (
                ColumnType::text(oid::TEXT),
                Some(Strategy::redact_fill(b'*').unwrap()),
            )
        })
        .collect();
    cols[n - 1].1 = Some(Strategy::redact("long replacement").unwrap());
    let p = plan(cols);
    let mut row = data_row(&cells);
    let orig = row.clone();
    assert!(!mask_row_in_place(&mut row, &p).unwrap());
    assert_eq!(row, orig);
}

#[test]
fn plan_from_row_description() {
    let rd = row_description(&[
        ("id", oid::INT4, 0),
        ("ssn", oid::TEXT, 0),
        ("amount", oid::NUMERIC, 0),
    ]);
    let fields: Vec<_> = row_description_fields(&rd)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(fields.len(), 3);
    assert_eq!(fields[1].name, b"ssn");
    assert_eq!(fields[1].table_oid, 16_384);
    assert_eq!(fields[1].column_id, 2);
    assert_eq!(fields[2].type_oid, oid::NUMERIC);
    let rule =
        |_: usize, f: &FieldDescription<'_>| (f.column_id == 2).then(|| Strategy::keep_last(4));
    let p = RowPlan::from_row_description(&rd, None, Detectors::NONE, rule).unwrap();
    assert_eq!(p.len(), 3);
    assert_eq!(p.column_type(1), Some(ColumnType::text(oid::TEXT)));
    assert!(p.column_mask(1).is_some() && p.column_mask(0).is_none());
    // Bind result formats: one code for all, or one per column.
    let p = RowPlan::from_row_description(&rd, Some(&[1]), Detectors::NONE, rule).unwrap();
    assert_eq!(p.column_type(0), Some(ColumnType::binary(oid::INT4)));
    let p = RowPlan::from_row_description(&rd, Some(&[0, 1, 0]), Detectors::NONE, rule).unwrap();
    assert_eq!(p.column_type(1), Some(ColumnType::binary(oid::TEXT)));
    assert!(RowPlan::from_row_description(&rd, Some(&[0, 1]), Detectors::NONE, rule).is_err());
    assert_eq!(
        RowPlan::from_row_description(&rd, Some(&[2]), Detectors::NONE, rule).unwrap_err(),
        MaskError::FormatCode(2)
    );
    // Malformed descriptions.
    let mut short = rd.clone();
    short.truncate(short.len() - 1);
    let len = i32::try_from(short.len() - 1).unwrap();
    short[1..5].copy_from_slice(&len.to_be_bytes());
    assert!(RowPlan::from_row_description(&short, None, Detectors::NONE, rule).is_err());
    assert!(row_description_fields(&data_row(&[])).is_err());
}

fn copy_data(body: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u8(b'd');
    b.put_i32(i32::try_from(body.len() + 4).unwrap());
    b.put_slice(body);
    b
}

fn copy_body(frame: &[u8]) -> &[u8] {
    assert!(matches!(
        backend::parse(frame).unwrap(),
        BackendMessage::Other { tag: b'd', .. }
    ));
    &frame[5..]
}

#[test]
fn copy_text_rows() {
    let p = RowPlan::new(
        [
            (ColumnType::text(oid::INT4), None),
            (ColumnType::text(oid::TEXT), Some(Strategy::keep_last(2))),
            (ColumnType::text(oid::TEXT), None),
            (
                ColumnType::text(oid::TEXT),
                Some(Strategy::redact("a\tb\\c").unwrap()),
            ),
        ],
        Detectors::ALL,
    );
    let frame = copy_data(b"1\tsec\\tret\tbob@example.com\tx\n2\t\\N\tplain\t\\N\n");
    let mut out = BytesMut::new();
    mask_copy_data(&frame, &p, &CopyText::default(), &mut out).unwrap();
    assert_eq!(
        copy_body(&out),
        &b"1\t*****et\t***@*******.***\ta\\tb\\\\c\n2\t\\N\tplain\t\\N\n"[..]
    );
    // Wrong field count, a partial row, binary plans: errors, nothing appended.
    let mut out = BytesMut::new();
    assert!(mask_copy_data(&copy_data(b"1\t2\n"), &p, &CopyText::default(), &mut out).is_err());
    assert!(mask_copy_data(
        &copy_data(b"1\ta\tb\tc"),
        &p,
        &CopyText::default(),
        &mut out
    )
    .is_err());
    let bin = plan(vec![(
        ColumnType::binary(oid::TEXT),
        Some(Strategy::null()),
    )]);
    assert!(mask_copy_data(&copy_data(b"a\n"), &bin, &CopyText::default(), &mut out).is_err());
    assert!(out.is_empty());
    // Custom delimiter and NULL marker; a NULL strategy writes the marker.
    let p = plan(vec![
        (ColumnType::text(oid::TEXT), Some(Strategy::null())),
        (ColumnType::text(oid::TEXT), None),
    ]);
    let opts = CopyText {
        delimiter: b'|',
        null: (*b"NULL").into(),
    };
    mask_copy_data(&copy_data(b"secret|ok\n"), &p, &opts, &mut out).unwrap();
    assert_eq!(copy_body(&out), b"NULL|ok\n");
    // A delimiter inside a value arrives escaped (`\|`) and stays inside its field.
    out.clear();
    mask_copy_data(&copy_data(b"a\\|b|c\\|d\n"), &p, &opts, &mut out).unwrap();
    assert_eq!(copy_body(&out), b"NULL|c\\|d\n");
    let fields: Vec<&[u8]> = copy_fields(b"x\\|y|\\\\|z|", b'|').collect();
    assert_eq!(fields, [&b"x\\|y"[..], b"\\\\", b"z", b""]);
    // Octal and hex escapes are decoded before masking.
    assert_eq!(&unescape(b"a\\101\\x42\\\\").unwrap()[..], b"aAB\\");
}

#[test]
fn error_fields_scrubbed() {
    let mut buf = BytesMut::new();
    encode::error_response(
        &mut buf,
        &encode::ErrorResponse {
            detail: Some("Key (email)=(alice@example.com) already exists."),
            hint: Some("card 4111 1111 1111 1111"),
            ..encode::ErrorResponse::error(
                "23505",
                "duplicate key value violates unique constraint \"users_email_key\"",
            )
        },
    );
    let len = buf.len();
    let n = scrub_error_response(&mut buf, &ScrubOptions::default()).unwrap();
    assert!(n >= 3);
    assert_eq!(buf.len(), len);
    let BackendMessage::ErrorResponse(f) = backend::parse(&buf).unwrap() else {
        panic!("not an error")
    };
    assert_eq!(f.code(), Some("23505"));
    assert_eq!(
        f.get(b'D'),
        Some("Key (email)=(*****************) already exists.")
    );
    assert_eq!(f.get(b'H'), Some("card **** **** **** ****"));

    let mut buf = BytesMut::new();
    encode::error_response(
        &mut buf,
        &encode::ErrorResponse::error(
            "22P02",
            "invalid input syntax for type integer: \"Jöhn Smith 123-45-6789\"",
        ),
    );
    scrub_error_response(&mut buf, &ScrubOptions::default()).unwrap();
    let BackendMessage::ErrorResponse(f) = backend::parse(&buf).unwrap() else {
        panic!("not an error")
    };
    let m = f.message().unwrap();
    assert!(
        m.starts_with("invalid input syntax for type integer: \"*"),
        "{m}"
    );
    assert!(!m.contains("Smith") && !m.contains("6789"));

    // Detectors only, other SQLSTATE classes keep quoted identifiers.
    let mut buf = BytesMut::new();
    encode::notice_response(
        &mut buf,
        &encode::ErrorResponse {
            severity: "NOTICE",
            ..encode::ErrorResponse::error(
                "42P07",
                "relation \"users\" exists, mail bob@example.com",
            )
        },
    );
    scrub_error_response(&mut buf, &ScrubOptions::default()).unwrap();
    let BackendMessage::NoticeResponse(f) = backend::parse(&buf).unwrap() else {
        panic!("not a notice")
    };
    assert_eq!(
        f.message(),
        Some("relation \"users\" exists, mail ***@*******.***")
    );
    assert_eq!(f.severity(), Some("NOTICE"));
    assert!(scrub_error_response(&mut data_row(&[]), &ScrubOptions::default()).is_err());
}

#[test]
fn notification_payload_scrubbed() {
    let mut b = BytesMut::new();
    b.put_u8(b'A');
    b.put_i32(0);
    b.put_i32(1234);
    b.put_slice(b"chan\0user 123-45-6789 updated\0");
    let len = i32::try_from(b.len() - 1).unwrap();
    b[1..5].copy_from_slice(&len.to_be_bytes());
    assert_eq!(scrub_notification(&mut b, Detectors::ALL).unwrap(), 1);
    assert!(b.ends_with(b"chan\0user ***-**-**** updated\0"));
    let last = b.len() - 1;
    b[last] = b'x';
    assert!(scrub_notification(&mut b, Detectors::ALL).is_err());
}

/// xorshift64*: deterministic pseudo-random numbers without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n).unwrap()).unwrap()
    }
}

#[test]
fn random_rows_and_plans_never_panic() {
    let oids = [
        oid::TEXT,
        oid::BPCHAR,
        oid::JSON,
        oid::JSONB,
        oid::INT2,
        oid::INT4,
        oid::INT8,
        oid::NUMERIC,
        oid::FLOAT4,
        oid::FLOAT8,
        oid::UUID,
        oid::BYTEA,
        oid::BOOL,
        oid::DATE,
    ];
    let alphabet = b"0123456789-+.eE@ abcxyzAKIA\\x\"{}\t\n\xc3\xa9\xff\x80";
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..4_000 {
        let ncols = rng.below(8);
        let strategies = |rng: &mut Rng| match rng.below(8) {
            0 => Some(Strategy::redact("R").unwrap()),
            1 => Some(Strategy::redact_fill(b'*').unwrap()),
            2 => Some(
                Strategy::partial(
                    u16::try_from(rng.below(3)).unwrap(),
                    u16::try_from(rng.below(5)).unwrap(),
                    'é',
                )
                .unwrap(),
            ),
            3 => Some(Strategy::keep_last(2)),
            4 => {
                Some(Strategy::keyed_hash(key(), u8::try_from(1 + rng.below(64)).unwrap()).unwrap())
            }
            5 => Some(Strategy::tokenize(key())),
            6 => Some(Strategy::null()),
            _ => None,
        };
        let cols: Vec<_> = (0..ncols)
            .map(|_| {
                let o = oids[rng.below(oids.len())];
                let ty = if rng.below(2) == 0 {
                    ColumnType::text(o)
                } else {
                    ColumnType::binary(o)
                };
                (ty, strategies(&mut rng))
            })
            .collect();
        let dets = if rng.below(2) == 0 {
            Detectors::ALL
        } else {
            Detectors::NONE
        };
        let p = RowPlan::new(cols, dets);
        let vals: Vec<Option<Vec<u8>>> = (0..ncols)
            .map(|_| {
                (rng.below(5) != 0).then(|| {
                    let len = rng.below(40);
                    (0..len)
                        .map(|_| alphabet[rng.below(alphabet.len())])
                        .collect()
                })
            })
            .collect();
        let cells: Vec<Option<&[u8]>> = vals.iter().map(|v| v.as_deref()).collect();
        let mut row = data_row(&cells);
        // Occasionally corrupt a byte of the frame.
        let corrupt = rng.below(6) == 0 && row.len() > 5;
        if corrupt {
            let i = 5 + rng.below(row.len() - 5);
            row[i] = u8::try_from(rng.below(256)).unwrap();
        }
        let orig = row.clone();
        let mut out = BytesMut::new();
        if let Ok(how) = mask_row(&mut row, &p, &mut out) {
            let masked: &[u8] = if how == Rewrite::InPlace { &row } else { &out };
            // Columns after the last one needing work are forwarded unvalidated, so only
            // intact rows are checked whole.
            if !corrupt {
                assert_eq!(columns(masked).len(), ncols);
            }
            let mut copy = BytesMut::new();
            mask_row_into(&orig, &p, &mut copy).unwrap();
            assert_eq!(&copy[..], masked, "in place and copy agree");
        }
        // The other entry points on the same random bytes.
        let _ = mask_copy_data(&copy_data(&orig[5..]), &p, &CopyText::default(), &mut out);
        let _ = scrub_error_response(&mut orig.clone(), &ScrubOptions::default());
        let _ = scrub_notification(&mut orig.clone(), Detectors::ALL);
        let mut text = orig.to_vec();
        Detectors::ALL.scrub(&mut text, Replace::Numeric);
        assert_eq!(text.len(), orig.len());
    }
}

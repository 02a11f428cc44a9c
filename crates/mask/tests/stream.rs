//! The masker driven as the data plane drives it: a server byte stream framed with the codec,
//! each message dispatched by tag, and the bytes the client would receive checked for the seeded
//! secrets (in clear, upper-cased, hex) and for validity.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use sluice_mask::{
    mask_copy_data, mask_row, oid, scrub_error_response, scrub_notification, CopyText, Detectors,
    FieldDescription, HashKey, Rewrite, RowPlan, ScrubOptions, Strategy,
};
use sluice_pgwire::backend::{self, BackendMessage};
use sluice_pgwire::{encode, Frames, DEFAULT_MAX_MESSAGE_LEN};

const SSN: &str = "219-09-9999";
const EMAIL: &str = "grace.hopper@navy.example.com";
const CARD: &str = "4111 1111 1111 1111";
const SECRET_NOTE: &str = "Zoë's password is hunter2";

fn put_message(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    let start = buf.len();
    buf.put_u8(tag);
    buf.put_i32(0);
    body(buf);
    let len = i32::try_from(buf.len() - start - 1).unwrap();
    buf[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

/// `SELECT id, ssn, email, note, card_on_file FROM customers` as the server answers it.
fn server_stream(rows: usize) -> BytesMut {
    let mut s = BytesMut::new();
    let fields: [(&str, u32, i16, i16); 5] = [
        ("id", oid::INT4, 1, 0),
        ("x", oid::TEXT, 2, 0), // aliased ssn: resolved by attribute number, not name
        ("email", oid::VARCHAR, 3, 0),
        ("note", oid::TEXT, 4, 0),
        ("card_on_file", oid::TEXT, 5, 0),
    ];
    put_message(&mut s, backend::ROW_DESCRIPTION, |b| {
        b.put_i16(5);
        for (name, type_oid, attnum, format) in fields {
            b.put_slice(name.as_bytes());
            b.put_u8(0);
            b.put_u32(16_400);
            b.put_i16(attnum);
            b.put_u32(type_oid);
            b.put_i16(-1);
            b.put_i32(-1);
            b.put_i16(format);
        }
    });
    for i in 0..rows {
        let id = i.to_string();
        let values: [Option<&str>; 5] = [
            Some(&id),
            Some(SSN),
            if i % 3 == 0 { None } else { Some(EMAIL) },
            Some(SECRET_NOTE),
            Some(CARD),
        ];
        put_message(&mut s, backend::DATA_ROW, |b| {
            b.put_i16(5);
            for v in values {
                match v {
                    Some(v) => {
                        b.put_i32(i32::try_from(v.len()).unwrap());
                        b.put_slice(v.as_bytes());
                    }
                    None => b.put_i32(-1),
                }
            }
        });
    }
    encode::command_complete(&mut s, &format!("SELECT {rows}"));
    encode::error_response(
        &mut s,
        &encode::ErrorResponse::error(
            "22P02",
            &format!("invalid input syntax for type integer: \"{SSN}\""),
        ),
    );
    put_message(&mut s, backend::NOTIFICATION, |b| {
        b.put_i32(7);
        b.put_slice(b"audit\0");
        b.put_slice(format!("changed {EMAIL}").as_bytes());
        b.put_u8(0);
    });
    put_message(&mut s, backend::COPY_DATA, |b| {
        b.put_slice(format!("1\t{SSN}\t{EMAIL}\t{SECRET_NOTE}\t{CARD}\n").as_bytes());
    });
    encode::ready_for_query(&mut s, backend::STATUS_IDLE);
    s
}

/// The policy: ssn (attnum 2) tokenised, note (attnum 4) redacted, email hashed; detectors on
/// the rest.
fn rule(key: &Arc<HashKey>) -> impl FnMut(usize, &FieldDescription<'_>) -> Option<Strategy> + '_ {
    move |_, f| match (f.table_oid, f.column_id) {
        (16_400, 2) => Some(Strategy::tokenize(key.clone())),
        (16_400, 3) => Some(Strategy::keyed_hash(key.clone(), 12).unwrap()),
        (16_400, 4) => Some(Strategy::redact("[redacted]").unwrap()),
        _ => None,
    }
}

/// Relays `stream` through the masker; returns what the client receives.
fn relay(stream: &mut BytesMut) -> BytesMut {
    let key = Arc::new(HashKey::new(b"integration-test-key-32-bytes!!!").unwrap());
    let mut client = BytesMut::new();
    let mut plan: Option<RowPlan> = None;
    let mut scratch = BytesMut::new();
    while let Some(n) = sluice_pgwire::frame_len(stream, DEFAULT_MAX_MESSAGE_LEN).unwrap() {
        let mut frame = stream.split_to(n);
        match frame[0] {
            backend::ROW_DESCRIPTION => {
                plan = Some(
                    RowPlan::from_row_description(&frame, None, Detectors::ALL, rule(&key))
                        .unwrap(),
                );
                client.extend_from_slice(&frame);
            }
            backend::DATA_ROW => {
                let plan = plan.as_ref().expect("RowDescription first");
                scratch.clear();
                match mask_row(&mut frame, plan, &mut scratch).unwrap() {
                    Rewrite::InPlace => client.extend_from_slice(&frame),
                    Rewrite::Copied => client.extend_from_slice(&scratch),
                }
            }
            backend::COPY_DATA => {
                let plan = plan.as_ref().expect("plan for COPY");
                mask_copy_data(&frame, plan, &CopyText::default(), &mut client).unwrap();
            }
            backend::ERROR_RESPONSE | backend::NOTICE_RESPONSE => {
                scrub_error_response(&mut frame, &ScrubOptions::default()).unwrap();
                client.extend_from_slice(&frame);
            }
            backend::NOTIFICATION => {
                scrub_notification(&mut frame, Detectors::ALL).unwrap();
                client.extend_from_slice(&frame);
            }
            _ => client.extend_from_slice(&frame),
        }
    }
    assert!(stream.is_empty());
    client
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn client_sees_no_seeded_secret() {
    let mut stream = server_stream(50);
    let client = relay(&mut stream);
    for secret in [SSN, EMAIL, CARD, "hunter2", "9999", "navy.example"] {
        for form in [secret.to_string(), secret.to_uppercase(), hex(secret)] {
            assert!(
                !contains(&client, form.as_bytes()),
                "{form:?} reached the client"
            );
        }
    }
    // Every message is still valid, the row count and shapes unchanged.
    let mut rows = 0;
    for frame in Frames::new(&client, DEFAULT_MAX_MESSAGE_LEN) {
        let frame = frame.unwrap();
        let msg = backend::parse(frame).unwrap();
        if msg.tag() == backend::DATA_ROW {
            rows += 1;
            let cols: Vec<_> = backend::data_row_ranges(frame)
                .unwrap()
                .map(|c| c.unwrap().map(|r| frame[r].to_vec()))
                .collect();
            assert_eq!(cols.len(), 5);
            let ssn = cols[1].as_ref().unwrap();
            assert_eq!(ssn.len(), SSN.len());
            assert_eq!(ssn[3], b'-', "tokenised SSN keeps its format");
            assert_eq!(cols[3].as_deref(), Some(&b"[redacted]"[..]));
            assert_eq!(cols[4].as_deref(), Some(&b"**** **** **** ****"[..]));
            if let Some(email) = &cols[2] {
                assert_eq!(email.len(), 12);
            }
        }
        if let BackendMessage::ErrorResponse(f) = msg {
            assert!(f.message().unwrap().ends_with("\"***********\""));
        }
    }
    assert_eq!(rows, 50);
}

#[test]
fn tokens_are_deterministic_across_rows() {
    let mut stream = server_stream(3);
    let client = relay(&mut stream);
    let ssns: Vec<Vec<u8>> = Frames::new(&client, DEFAULT_MAX_MESSAGE_LEN)
        .map(Result::unwrap)
        .filter(|f| f[0] == backend::DATA_ROW)
        .map(|f| {
            let r = backend::data_row_ranges(f)
                .unwrap()
                .nth(1)
                .unwrap()
                .unwrap()
                .unwrap();
            f[r].to_vec()
        })
        .collect();
    assert_eq!(ssns.len(), 3);
    assert!(
        ssns.windows(2).all(|w| w[0] == w[1]),
        "same value, same token: joins work"
    );
}

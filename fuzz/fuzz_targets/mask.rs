//! Fuzz target: the masker (`mask_row`, `mask_copy_data`, `scrub_error_response`) over plans and
//! messages decoded from the input. Nothing may panic; every output is a well-formed message
//! whose declared length matches; unmasked columns pass through; a redacting strategy (redact,
//! fill, NULL, partial) never hands a value back unchanged unless it already looked masked.
#![no_main]

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use libfuzzer_sys::fuzz_target;
use sluice_mask::{
    mask_copy_data, mask_row, oid, scrub_error_response, ColumnType, CopyText, DetectorKind,
    Detectors, Format, HashKey, RowPlan, ScrubOptions, Strategy, TypeKind,
};
use sluice_pgwire::backend::{self, data_row_ranges, BackendMessage};

/// Reads the fuzz input front to back; past the end every read is zero / empty.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        let Some((b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        *b
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }

    /// A value: NULL, or up to 63 bytes.
    fn value(&mut self) -> Option<&'a [u8]> {
        let b = self.byte();
        (b & 0x40 == 0).then(|| self.take(usize::from(b & 0x3f)))
    }
}

const OIDS: [u32; 16] = [
    oid::TEXT,
    oid::VARCHAR,
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
    oid::NAME,
];

/// What the fuzz target knows of a strategy, to check its output.
#[derive(Clone, Copy, Debug)]
enum Shape {
    Fill(u8),
    Text(&'static str),
    Partial(u16, u16, char),
    Null,
    Keyed,
}

const REDACT: [&str; 4] = ["", "*", "[REDACTED]", "é"];
const FILLS: [char; 4] = ['*', '#', 'x', '•'];

fn strategy(inp: &mut Input<'_>, key: &Arc<HashKey>) -> Option<(Strategy, Shape)> {
    let b = inp.byte();
    let arg = inp.byte();
    Some(match b % 8 {
        0 | 1 => return None,
        2 => {
            let t = REDACT[usize::from(arg % 4)];
            (Strategy::redact(t).ok()?, Shape::Text(t))
        }
        3 => {
            let f = arg.clamp(0x21, 0x7e);
            (Strategy::redact_fill(f).ok()?, Shape::Fill(f))
        }
        4 => {
            let (first, last) = (u16::from(arg & 7), u16::from(arg >> 3 & 7));
            let fill = FILLS[usize::from(arg >> 6)];
            (
                Strategy::partial(first, last, fill).ok()?,
                Shape::Partial(first, last, fill),
            )
        }
        5 => (
            Strategy::keyed_hash(key.clone(), arg % 64 + 1).ok()?,
            Shape::Keyed,
        ),
        6 => (Strategy::tokenize(key.clone()), Shape::Keyed),
        _ => (Strategy::null(), Shape::Null),
    })
}

struct Column {
    ty: ColumnType,
    shape: Option<Shape>,
}

fn plan(inp: &mut Input<'_>, key: &Arc<HashKey>, text_only: bool) -> (RowPlan, Vec<Column>) {
    let n = usize::from(inp.byte() % 6) + 1;
    let detectors = detectors(inp.byte());
    let mut cols = Vec::new();
    let mut spec = Vec::new();
    for _ in 0..n {
        let b = inp.byte();
        let oid = OIDS[usize::from(b & 15)];
        let ty = if b & 16 != 0 && !text_only {
            ColumnType::binary(oid)
        } else {
            ColumnType::text(oid)
        };
        let s = strategy(inp, key);
        spec.push(Column {
            ty,
            shape: s.as_ref().map(|s| s.1),
        });
        cols.push((ty, s.map(|s| s.0)));
    }
    (RowPlan::new(cols, detectors), spec)
}

fn detectors(b: u8) -> Detectors {
    DetectorKind::ALL
        .into_iter()
        .enumerate()
        .filter(|(i, _)| b & (1 << i) != 0)
        .fold(Detectors::NONE, |d, (_, k)| d.with(k))
}

fn data_row(values: &[Option<&[u8]>]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u8(b'D');
    b.put_i32(0);
    b.put_i16(values.len() as i16);
    for v in values {
        match v {
            Some(v) => {
                b.put_i32(v.len() as i32);
                b.put_slice(v);
            }
            None => b.put_i32(-1),
        }
    }
    patch(&mut b);
    b
}

fn patch(b: &mut BytesMut) {
    let len = (b.len() - 1) as i32;
    b[1..5].copy_from_slice(&len.to_be_bytes());
}

/// A whole, well-formed message: declared length matches, the codec accepts it.
fn check_frame(frame: &[u8], tag: u8) {
    assert_eq!(frame[0], tag);
    let declared = i32::from_be_bytes(frame[1..5].try_into().unwrap());
    assert_eq!(declared as usize, frame.len() - 1, "declared length");
    backend::parse(frame).expect("masked message parses");
}

fn row_values(frame: &[u8]) -> Vec<Option<Vec<u8>>> {
    data_row_ranges(frame)
        .expect("DataRow")
        .map(|r| r.expect("well-formed column").map(|r| frame[r].to_vec()))
        .collect()
}

/// Whether `out`, the mask of `v` under a value-independent strategy, may equal `v`: only when
/// `v` already looks like a mask (every byte the strategy would write is already there).
fn may_equal(col: &Column, shape: Shape, v: &[u8]) -> bool {
    let kind = col.ty.kind();
    let text = col.ty.format == Format::Text;
    match kind {
        TypeKind::Text | TypeKind::Bpchar => match shape {
            Shape::Fill(f) => v.iter().all(|&b| b == f),
            Shape::Text(t) => {
                v.starts_with(t.as_bytes()) && v[t.len()..].iter().all(|&b| b == b' ')
            }
            Shape::Partial(first, last, fill) => match std::str::from_utf8(v) {
                Ok(s) => {
                    let chars: Vec<char> = s.chars().collect();
                    let (first, last) = (usize::from(first), usize::from(last));
                    let middle = if first + last >= chars.len() {
                        &chars[..]
                    } else {
                        &chars[first..chars.len() - last]
                    };
                    middle.iter().all(|&c| c == fill)
                }
                Err(_) => true,
            },
            Shape::Null | Shape::Keyed => true,
        },
        // Numbers, UUIDs and bytea in text: masks are made of zeros (and punctuation).
        TypeKind::Int2
        | TypeKind::Int4
        | TypeKind::Int8
        | TypeKind::Numeric
        | TypeKind::Float4
        | TypeKind::Float8
        | TypeKind::Uuid
        | TypeKind::Bytea
            if text =>
        {
            !matches!(shape, Shape::Fill(_) | Shape::Partial(0, 0, _))
                || !v.iter().any(|b| (b'1'..=b'9').contains(b))
        }
        TypeKind::Int2 | TypeKind::Int4 | TypeKind::Int8 | TypeKind::Float4 | TypeKind::Float8 => {
            !matches!(shape, Shape::Fill(_) | Shape::Text(_)) || v.iter().all(|&b| b == 0)
        }
        _ => true,
    }
}

fn check_row(
    spec: &[Column],
    before: &[Option<Vec<u8>>],
    after: &[Option<Vec<u8>>],
    plan: &RowPlan,
) {
    assert_eq!(before.len(), after.len());
    for (i, col) in spec.iter().enumerate() {
        let (b, a) = (&before[i], &after[i]);
        match col.shape {
            None => {
                let scanned = !plan.detectors().is_empty() && col.ty.kind().scanned(col.ty.format);
                if !scanned {
                    assert_eq!(a, b, "column {i} is not masked");
                } else {
                    assert_eq!(a.as_ref().map(Vec::len), b.as_ref().map(Vec::len));
                }
            }
            Some(shape) => match b {
                None => assert!(a.is_none(), "NULL stays NULL"),
                Some(v) => {
                    if matches!(shape, Shape::Null) || col.ty.kind() == TypeKind::Other {
                        assert!(a.is_none(), "column {i} must be NULL");
                    }
                    if a.as_deref() == Some(v) {
                        assert!(
                            may_equal(col, shape, v),
                            "column {i} ({:?}, {shape:?}) came back unmasked: {v:?}",
                            col.ty
                        );
                    }
                }
            },
        }
    }
}

fn fuzz_data_row(inp: &mut Input<'_>, key: &Arc<HashKey>) {
    let (plan, spec) = plan(inp, key, false);
    let values: Vec<Option<&[u8]>> = (0..plan.len()).map(|_| inp.value()).collect();
    let mut frame = data_row(&values);
    let original = frame.clone();
    let before = row_values(&original);
    let mut out = BytesMut::new();
    match mask_row(&mut frame, &plan, &mut out) {
        Ok(sluice_mask::Rewrite::InPlace) => {
            assert!(out.is_empty());
            assert_eq!(frame.len(), original.len());
            check_frame(&frame, b'D');
            check_row(&spec, &before, &row_values(&frame), &plan);
        }
        Ok(sluice_mask::Rewrite::Copied) => {
            assert_eq!(frame, original, "frame untouched when copied");
            check_frame(&out, b'D');
            check_row(&spec, &before, &row_values(&out), &plan);
        }
        Err(e) => panic!("a well-formed row of the plan's width failed: {e}"),
    }
    // The same plan over arbitrary bytes as a DataRow: errors are fine, output must be whole.
    let mut raw = BytesMut::from(inp.take(256));
    if raw.len() >= 5 {
        raw[0] = b'D';
        if inp.byte() & 1 == 0 {
            patch(&mut raw);
        }
    }
    let raw_before = raw.clone();
    out.clear();
    match mask_row(&mut raw, &plan, &mut out) {
        Ok(sluice_mask::Rewrite::InPlace) => assert_eq!(raw.len(), raw_before.len()),
        Ok(sluice_mask::Rewrite::Copied) => {
            assert_eq!(raw, raw_before);
            check_frame(&out, b'D');
        }
        Err(e) => {
            assert!(out.is_empty(), "nothing appended on error");
            let _ = (e.to_string(), e.sqlstate());
        }
    }
}

const DELIMITERS: [u8; 4] = [b'\t', b',', b'|', b';'];

/// COPY text encoding of one value, as PostgreSQL's `COPY TO` writes it.
fn copy_escape(v: &[u8], delimiter: u8, out: &mut Vec<u8>) {
    for &b in v {
        let esc = match b {
            b'\\' => b'\\',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            8 => b'b',
            11 => b'v',
            12 => b'f',
            _ if b == delimiter => b,
            _ => {
                out.push(b);
                continue;
            }
        };
        out.push(b'\\');
        out.push(esc);
    }
}

/// Splits a COPY text line into raw fields, honouring backslash escapes.
fn copy_fields(line: &[u8], delimiter: u8) -> Vec<&[u8]> {
    let mut fields = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < line.len() {
        if line[i] == b'\\' {
            i += 2;
            continue;
        }
        if line[i] == delimiter {
            fields.push(&line[start..i]);
            start = i + 1;
        }
        i += 1;
    }
    fields.push(&line[start.min(line.len())..]);
    fields
}

fn fuzz_copy(inp: &mut Input<'_>, key: &Arc<HashKey>) {
    let (plan, spec) = plan(inp, key, true);
    let delimiter = DELIMITERS[usize::from(inp.byte() % 4)];
    let opts = CopyText {
        delimiter,
        ..CopyText::default()
    };
    let rows = usize::from(inp.byte() % 4);
    let mut body = Vec::new();
    let mut input_rows = Vec::new();
    for _ in 0..rows {
        let mut line = Vec::new();
        let mut vals = Vec::new();
        for i in 0..plan.len() {
            if i > 0 {
                line.push(delimiter);
            }
            let v = inp.value();
            match v {
                Some(v) => copy_escape(v, delimiter, &mut line),
                None => line.extend_from_slice(b"\\N"),
            }
            vals.push(v);
        }
        body.extend_from_slice(&line);
        body.push(b'\n');
        input_rows.push(line);
    }
    let mut frame = BytesMut::new();
    frame.put_u8(b'd');
    frame.put_i32(0);
    frame.put_slice(&body);
    patch(&mut frame);
    let mut out = BytesMut::new();
    if let Err(e) = mask_copy_data(&frame, &plan, &opts, &mut out) {
        panic!("well-formed COPY rows failed: {e}");
    }
    check_frame(&out, b'd');
    let out_body = &out[5..];
    assert!(out_body.is_empty() || out_body.ends_with(b"\n"));
    let lines: Vec<&[u8]> = out_body
        .split_inclusive(|&b| b == b'\n')
        .map(|l| &l[..l.len() - 1])
        .collect();
    assert_eq!(lines.len(), rows, "row count");
    for (line, input) in lines.iter().zip(&input_rows) {
        let got = copy_fields(line, delimiter);
        let want = copy_fields(input, delimiter);
        assert_eq!(got.len(), plan.len(), "field count of {line:?}");
        for (i, col) in spec.iter().enumerate() {
            if want[i] == b"\\N" {
                assert_eq!(got[i], b"\\N", "NULL stays NULL");
            } else if col.shape.is_none() && plan.detectors().is_empty() {
                assert_eq!(got[i], want[i], "column {i} is not masked");
            } else if matches!(col.shape, Some(Shape::Null)) {
                assert_eq!(got[i], b"\\N");
            }
        }
    }
    // Arbitrary bytes as one CopyData message: errors are fine, output must be whole.
    let mut raw = BytesMut::new();
    raw.put_u8(b'd');
    raw.put_i32(0);
    raw.put_slice(inp.take(256));
    patch(&mut raw);
    out.clear();
    match mask_copy_data(&raw, &plan, &opts, &mut out) {
        Ok(()) => check_frame(&out, b'd'),
        Err(_) => assert!(out.is_empty(), "nothing appended on error"),
    }
}

const CODES: [u8; 10] = [b'S', b'V', b'C', b'M', b'D', b'H', b'P', b'W', b's', b'n'];
const SQLSTATES: [&[u8]; 4] = [b"22P02", b"23505", b"42501", b"XX000"];

fn fuzz_error(inp: &mut Input<'_>) {
    let tag = if inp.byte() & 1 == 0 { b'E' } else { b'N' };
    let opts = ScrubOptions {
        detectors: detectors(inp.byte()),
        redact_data_values: inp.byte() & 1 == 0,
    };
    let mut frame = BytesMut::new();
    frame.put_u8(tag);
    frame.put_i32(0);
    let fields = usize::from(inp.byte() % 6);
    let mut codes = Vec::new();
    for _ in 0..fields {
        let code = CODES[usize::from(inp.byte() % 10)];
        frame.put_u8(code);
        if code == b'C' {
            frame.put_slice(SQLSTATES[usize::from(inp.byte() % 4)]);
        } else {
            let v = inp.value().unwrap_or(b"");
            let v = String::from_utf8_lossy(v).replace('\0', " ");
            frame.put_slice(v.as_bytes());
        }
        frame.put_u8(0);
        codes.push(code);
    }
    frame.put_u8(0);
    patch(&mut frame);
    let original = frame.clone();
    let Ok(n) = scrub_error_response(&mut frame, &opts) else {
        return; // e.g. a message the codec rejects; nothing to check
    };
    assert_eq!(frame.len(), original.len());
    assert_eq!(n == 0, frame == original, "count matches what changed");
    check_frame(&frame, tag);
    match backend::parse(&frame).unwrap() {
        BackendMessage::ErrorResponse(f) | BackendMessage::NoticeResponse(f) => {
            let got: Vec<u8> = f.iter().map(|(c, _)| c).collect();
            assert_eq!(got, codes, "field codes kept");
        }
        _ => unreachable!(),
    }
    // Scrubbing what the detectors already scrubbed finds nothing more.
    let again = ScrubOptions {
        redact_data_values: false,
        ..opts
    };
    let mut twice = frame.clone();
    assert_eq!(
        scrub_error_response(&mut twice, &again).unwrap(),
        0,
        "a detector finding left behind in {:?}",
        String::from_utf8_lossy(&frame)
    );
}

fuzz_target!(|data: &[u8]| {
    let key = Arc::new(HashKey::new(b"fuzz-key-0123456789abcdef").unwrap());
    let mut inp = Input(data);
    match inp.byte() % 3 {
        0 => fuzz_data_row(&mut inp, &key),
        1 => fuzz_copy(&mut inp, &key),
        _ => fuzz_error(&mut inp),
    }
});

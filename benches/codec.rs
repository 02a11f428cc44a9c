//! Codec benchmarks for `sluice-pgwire`: framing throughput over a captured PostgreSQL result
//! stream, per-message decode cost, and the DataRow column walk the masking layer uses.
//!
//! Quick run: `cargo bench --bench codec -- --warm-up-time 1 --measurement-time 3`.
//! Before measuring, each routine runs once under a counting allocator and the bench fails if any
//! of them allocates: the codec is meant to be allocation-free on these paths.

use std::hint::black_box;

use bytes::{BufMut, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice_pgwire::{backend, encode, frame_len, frontend, parse_header, DEFAULT_MAX_MESSAGE_LEN};

#[path = "support/alloc_count.rs"]
mod alloc_count;
use alloc_count::allocations;

/// 1000-row `SELECT * FROM pgbench_accounts` session captured from PostgreSQL 15 (112 KiB).
const STREAM: &[u8] = include_bytes!("../crates/pgwire/tests/fixtures/pgbench_select_1000.s2c.bin");
const MAX: usize = DEFAULT_MAX_MESSAGE_LEN;

fn walk_frame_len(stream: &[u8]) -> usize {
    let (mut pos, mut frames) = (0, 0);
    while let Ok(Some(n)) = frame_len(&stream[pos..], MAX) {
        pos += n;
        frames += 1;
    }
    assert_eq!(pos, stream.len());
    frames
}

fn walk_parse_header(stream: &[u8]) -> usize {
    let (mut pos, mut frames) = (0, 0);
    while let Ok(Some(h)) = parse_header(&stream[pos..], MAX) {
        pos += h.total_len();
        frames += 1;
    }
    assert_eq!(pos, stream.len());
    frames
}

/// Walks every DataRow's columns; returns the number of value bytes seen.
fn walk_data_rows(stream: &[u8]) -> usize {
    let (mut pos, mut bytes) = (0, 0);
    while let Ok(Some(n)) = frame_len(&stream[pos..], MAX) {
        let frame = &stream[pos..pos + n];
        if frame[0] == backend::DATA_ROW {
            for col in backend::data_row_ranges(frame).unwrap() {
                bytes += col.unwrap().map_or(0, |r| r.len());
            }
        }
        pos += n;
    }
    bytes
}

fn extended_batch() -> BytesMut {
    let mut buf = BytesMut::new();
    encode::parse(
        &mut buf,
        "s1",
        b"SELECT abalance FROM pgbench_accounts WHERE aid = $1",
        &[0, 1, 0, 0, 0, 23],
    );
    let mut rest = BytesMut::new();
    rest.put_i16(0);
    rest.put_i16(1);
    rest.put_i32(5);
    rest.put_slice(b"12345");
    rest.put_i16(0);
    encode::bind_with_statement(&mut buf, "", "s1", &rest);
    encode::execute(&mut buf, "", 0);
    encode::sync(&mut buf);
    buf
}

fn parse_batch(batch: &[u8]) -> usize {
    let (mut pos, mut n) = (0, 0);
    while let Ok(Some(len)) = frame_len(&batch[pos..], MAX) {
        black_box(frontend::parse(&batch[pos..pos + len]).unwrap());
        pos += len;
        n += 1;
    }
    n
}

fn codec(c: &mut Criterion) {
    let mut query = BytesMut::new();
    encode::query(
        &mut query,
        "SELECT * FROM pgbench_accounts ORDER BY aid LIMIT 1000",
    );
    let batch = extended_batch();
    let mut rfq = BytesMut::new();
    encode::ready_for_query(&mut rfq, b'I');

    for (name, allocs) in [
        ("frame_len walk", allocations(|| walk_frame_len(STREAM))),
        (
            "parse_header walk",
            allocations(|| walk_parse_header(STREAM)),
        ),
        (
            "data_row_ranges walk",
            allocations(|| walk_data_rows(STREAM)),
        ),
        (
            "frontend::parse Query",
            allocations(|| frontend::parse(&query).is_ok()),
        ),
        (
            "frontend::parse P/B/E/S",
            allocations(|| parse_batch(&batch)),
        ),
        (
            "backend::parse ReadyForQuery",
            allocations(|| backend::parse(&rfq).is_ok()),
        ),
    ] {
        println!("allocations per call: {name}: {allocs}");
        assert_eq!(allocs, 0, "{name} allocated");
    }

    let bytes = u64::try_from(STREAM.len()).unwrap();
    let mut g = c.benchmark_group("framing");
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("frame_len", |b| {
        b.iter(|| walk_frame_len(black_box(STREAM)))
    });
    g.bench_function("parse_header", |b| {
        b.iter(|| walk_parse_header(black_box(STREAM)))
    });
    g.finish();

    let mut g = c.benchmark_group("message");
    g.bench_function("frontend_query", |b| {
        b.iter(|| frontend::parse(black_box(&query)).unwrap())
    });
    g.bench_function("frontend_parse_bind_execute_sync", |b| {
        b.iter(|| parse_batch(black_box(&batch)))
    });
    g.bench_function("backend_ready_for_query", |b| {
        b.iter(|| backend::parse(black_box(&rfq)).unwrap())
    });
    g.finish();

    let mut g = c.benchmark_group("data_row_ranges");
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("walk_1000_rows", |b| {
        b.iter(|| walk_data_rows(black_box(STREAM)))
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);

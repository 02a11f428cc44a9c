//! Masking throughput over a synthetic result stream (10k DataRows of 10 columns, ~100 bytes
//! each, 1 column masked), and content-detector throughput over ordinary text.
//!
//! Also the captured 1000-row `SELECT * FROM pgbench_accounts` stream of the codec bench, with
//! its 84-byte `filler` column masked. Before measuring, each row routine runs once under a
//! counting allocator and the bench fails if masking a row allocated.
//!
//! `cargo bench -p sluice-mask --bench mask -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::ops::Range;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice_mask::{
    mask_row_in_place, mask_row_into, oid, ColumnType, Detectors, HashKey, Replace, RowPlan,
    Strategy,
};

#[path = "../../../benches/support/alloc_count.rs"]
mod alloc_count;
use alloc_count::allocations;

/// 1000-row `SELECT * FROM pgbench_accounts` session captured from PostgreSQL 15.
const CAPTURED: &[u8] = include_bytes!("../../pgwire/tests/fixtures/pgbench_select_1000.s2c.bin");

const ROWS: usize = 10_000;

/// Column types of the synthetic `customers` result: id, name, email, ssn, city, balance,
/// created_on, status, visits, note.
const TYPES: [u32; 10] = [
    oid::INT4,
    oid::TEXT,
    oid::TEXT,
    oid::TEXT,
    oid::TEXT,
    oid::NUMERIC,
    oid::DATE,
    oid::TEXT,
    oid::INT4,
    oid::TEXT,
];
/// The masked column (ssn).
const MASKED: usize = 3;

const NAMES: [&str; 4] = [
    "Ada Lovelace",
    "Alan Turing",
    "Grace Hopper",
    "Edsger Dijkstra",
];
const CITIES: [&str; 4] = ["London", "Zürich", "New York", "Amsterdam"];

/// A stream of DataRow frames as the server sends them, and each frame's range.
fn stream() -> (Vec<u8>, Vec<Range<usize>>) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::with_capacity(ROWS);
    for i in 0..ROWS {
        let values = [
            format!("{}", 100_000 + i),
            NAMES[i % 4].to_string(),
            format!("u{i}@ex.io"),
            format!(
                "{:03}-{:02}-{:04}",
                100 + i % 800,
                10 + i % 89,
                1000 + i % 8999
            ),
            CITIES[i % 4].to_string(),
            format!("{}.{:02}", i * 7 % 100_000, i % 100),
            "2024-01-15".to_string(),
            "active".to_string(),
            format!("{}", i % 1000),
            "ok".to_string(),
        ];
        let start = buf.len();
        buf.put_u8(b'D');
        buf.put_i32(0);
        buf.put_i16(10);
        for v in &values {
            buf.put_i32(i32::try_from(v.len()).unwrap());
            buf.put_slice(v.as_bytes());
        }
        let len = i32::try_from(buf.len() - start - 1).unwrap();
        buf[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
        frames.push(start..buf.len());
    }
    (buf.to_vec(), frames)
}

fn plan(strategy: Option<Strategy>, detectors: Detectors) -> RowPlan {
    RowPlan::new(
        TYPES.iter().enumerate().map(|(i, &o)| {
            let s = if i == MASKED { strategy.clone() } else { None };
            (ColumnType::text(o), s)
        }),
        detectors,
    )
}

fn rows(c: &mut Criterion) {
    let (mut data, frames) = stream();
    let total = data.len();
    eprintln!(
        "stream: {ROWS} rows, {total} bytes, {:.1} bytes/row",
        total as f64 / ROWS as f64
    );
    let key = Arc::new(HashKey::new(b"bench-key-0123456789abcdef").unwrap());
    let mut g = c.benchmark_group("mask_rows");
    g.throughput(Throughput::Bytes(u64::try_from(total).unwrap()));

    let in_place = [
        (
            "in_place/redact_fill",
            plan(Some(Strategy::redact_fill(b'*').unwrap()), Detectors::NONE),
        ),
        (
            "in_place/keep_last_4",
            plan(Some(Strategy::keep_last(4)), Detectors::NONE),
        ),
        (
            "in_place/tokenize",
            plan(Some(Strategy::tokenize(key.clone())), Detectors::NONE),
        ),
        (
            "in_place/redact_fill+detectors",
            plan(Some(Strategy::redact_fill(b'*').unwrap()), Detectors::ALL),
        ),
    ];
    for (name, p) in &in_place {
        let r = frames[0].clone();
        let allocs = allocations(|| mask_row_in_place(&mut data[r], p).unwrap());
        assert_eq!(allocs, 0, "{name} allocated");
        g.bench_function(*name, |b| {
            b.iter(|| {
                for r in &frames {
                    let done = mask_row_in_place(&mut data[r.clone()], p).unwrap();
                    debug_assert!(done);
                }
                black_box(&data);
            })
        });
    }

    g.bench_function("baseline/walk_4_columns", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for r in &frames {
                for c in sluice_pgwire::backend::data_row_ranges(&data[r.clone()])
                    .unwrap()
                    .take(MASKED + 1)
                {
                    n += c.unwrap().map_or(0, |r| r.len());
                }
            }
            black_box(n)
        })
    });

    let copies = [
        (
            "copy/redact_text",
            plan(
                Some(Strategy::redact("[REDACTED]").unwrap()),
                Detectors::NONE,
            ),
        ),
        (
            "copy/keyed_hash_16",
            plan(
                Some(Strategy::keyed_hash(key.clone(), 16).unwrap()),
                Detectors::NONE,
            ),
        ),
        ("copy/null", plan(Some(Strategy::null()), Detectors::NONE)),
    ];
    let mut out = BytesMut::with_capacity(total * 2);
    for (name, p) in &copies {
        let allocs = allocations(|| mask_row_into(&data[frames[0].clone()], p, &mut out).unwrap());
        assert_eq!(allocs, 0, "{name} allocated");
        g.bench_function(*name, |b| {
            b.iter(|| {
                out.clear();
                for r in &frames {
                    mask_row_into(&data[r.clone()], p, &mut out).unwrap();
                }
                black_box(&out);
            })
        });
    }
    g.finish();
}

/// The captured pgbench stream: mask `filler` (bpchar(84), column 4 of 4) in place and by copy.
fn captured(c: &mut Criterion) {
    let mut data = CAPTURED.to_vec();
    let mut frames = Vec::new();
    let mut plans = Vec::new();
    let mut pos = 0;
    while let Ok(Some(n)) =
        sluice_pgwire::frame_len(&data[pos..], sluice_pgwire::DEFAULT_MAX_MESSAGE_LEN)
    {
        let frame = &data[pos..pos + n];
        match frame[0] {
            b'T' => {
                let rule = |_: usize, f: &sluice_mask::FieldDescription<'_>| {
                    (f.name == b"filler").then(|| Strategy::redact_fill(b'*').unwrap())
                };
                let fill =
                    RowPlan::from_row_description(frame, None, Detectors::NONE, rule).unwrap();
                let rule = |_: usize, f: &sluice_mask::FieldDescription<'_>| {
                    (f.name == b"filler").then(|| Strategy::redact("[REDACTED]").unwrap())
                };
                let text =
                    RowPlan::from_row_description(frame, None, Detectors::NONE, rule).unwrap();
                plans = vec![fill, text];
            }
            b'D' => frames.push(pos..pos + n),
            _ => {}
        }
        pos += n;
    }
    assert!(frames.len() == 1000 && plans.len() == 2);
    let bytes: usize = frames.iter().map(|r| r.len()).sum();
    let mut g = c.benchmark_group("captured_pgbench");
    g.throughput(Throughput::Bytes(u64::try_from(bytes).unwrap()));
    g.bench_function("in_place/redact_fill", |b| {
        b.iter(|| {
            for r in &frames {
                mask_row_in_place(&mut data[r.clone()], &plans[0]).unwrap();
            }
        })
    });
    let mut out = BytesMut::with_capacity(bytes * 2);
    g.bench_function("copy/redact_text", |b| {
        b.iter(|| {
            out.clear();
            for r in &frames {
                mask_row_into(&data[r.clone()], &plans[1], &mut out).unwrap();
            }
            black_box(&out);
        })
    });
    g.finish();
}

/// Ordinary application text: log lines, addresses, order numbers, timestamps, a few values the
/// detectors must find.
fn text_corpus() -> Vec<u8> {
    let lines = [
        "2024-01-15 12:30:45.123 INFO order ORD-2024-000123 shipped to 221B Baker Street, London (qty 3, total $1,234.56)\n",
        "The quick brown fox jumps over the lazy dog; version 1.2.3 build 20240115.1 on host 10.0.0.17\n",
        "customer note: please deliver after 5pm, ring twice, parcel id 550e8400-e29b-41d4-a716-446655440000\n",
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore\n",
        "{\"event\":\"login\",\"user_id\":48213,\"ip\":\"192.168.1.20\",\"ua\":\"Mozilla/5.0 (X11; Linux x86_64)\"}\n",
        "contact jane.doe@example.com or call (415) 555-2671 about card 4111 1111 1111 1111\n",
        "et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi\n",
        "metrics: p50=1.2ms p99=8.7ms rps=12034 errors=0 window=60s region=eu-west-1 shard=7\n",
    ];
    let mut v = Vec::new();
    while v.len() < 1 << 20 {
        for l in lines {
            v.extend_from_slice(l.as_bytes());
        }
    }
    v
}

fn detectors(c: &mut Criterion) {
    let corpus = text_corpus();
    let mut g = c.benchmark_group("detectors");
    g.throughput(Throughput::Bytes(u64::try_from(corpus.len()).unwrap()));
    g.bench_function("scrub/all", |b| {
        let mut buf = corpus.clone();
        b.iter(|| {
            buf.copy_from_slice(&corpus);
            black_box(Detectors::ALL.scrub(&mut buf, Replace::Text))
        })
    });
    for s in sluice_mask::Sensitivity::ALL {
        let set = Detectors::ALL.with_sensitivity(s);
        let name = match s {
            sluice_mask::Sensitivity::Strict => "find/all".to_owned(),
            _ => format!("find/all_{}", s.name()),
        };
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut n = 0usize;
                set.find(black_box(&corpus), |_| n += 1);
                n
            })
        });
    }
    for kind in sluice_mask::DetectorKind::ALL {
        for s in sluice_mask::Sensitivity::ALL {
            let set = Detectors::NONE.with(kind).with_sensitivity(s);
            let name = match s {
                sluice_mask::Sensitivity::Strict => format!("find/{}", kind.name()),
                _ => format!("find/{}_{}", kind.name(), s.name()),
            };
            g.bench_function(name, |b| {
                b.iter(|| {
                    let mut n = 0usize;
                    set.find(black_box(&corpus), |_| n += 1);
                    n
                })
            });
        }
    }
    g.bench_function("memcpy_baseline", |b| {
        let mut buf = corpus.clone();
        b.iter(|| {
            buf.copy_from_slice(black_box(&corpus));
            black_box(&buf);
        })
    });
    g.finish();
}

criterion_group!(benches, rows, captured, detectors);
criterion_main!(benches);

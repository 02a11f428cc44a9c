//! Fuzz target: a server byte stream through `frame_len`, `backend::parse` and `data_row_ranges`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_pgwire::backend::{self, BackendMessage};
use sluice_pgwire::{frame_len, HEADER_LEN};

/// Small cap so huge declared lengths are rejected rather than waited for.
const MAX: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some(n)) = frame_len(rest, MAX) {
        let (frame, tail) = rest.split_at(n);
        match backend::parse(frame) {
            Ok(BackendMessage::ErrorResponse(f) | BackendMessage::NoticeResponse(f)) => {
                for (code, _) in f.iter() {
                    assert_ne!(code, 0);
                }
            }
            Ok(BackendMessage::Authentication(a)) => {
                if let Some(m) = a.mechanisms() {
                    assert!(m.count() >= 1);
                }
            }
            Ok(msg) => assert_eq!(msg.tag(), frame[0]),
            Err(e) => {
                let _ = (e.to_string(), e.sqlstate());
            }
        }
        if let Ok(cols) = backend::data_row_ranges(frame) {
            let mut last = HEADER_LEN + 2;
            for c in cols {
                if let Ok(Some(r)) = c {
                    assert!(last <= r.start && r.start <= r.end && r.end <= frame.len());
                    last = r.end;
                }
            }
        }
        rest = tail;
    }
});

//! Fuzz target: a client byte stream through `frame_len` and `frontend::parse`, frame by frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_pgwire::frame_len;
use sluice_pgwire::frontend::{self, FrontendMessage};

/// Small cap so huge declared lengths are rejected rather than waited for.
const MAX: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some(n)) = frame_len(rest, MAX) {
        let (frame, tail) = rest.split_at(n);
        match frontend::parse(frame) {
            Ok(msg) => {
                assert_eq!(msg.tag(), frame[0]);
                match msg {
                    FrontendMessage::Parse { param_types, .. } => {
                        assert_eq!(
                            frontend::param_oids(param_types).len() * 4 + 2,
                            param_types.len()
                        );
                    }
                    FrontendMessage::Password(body) => {
                        let _ = frontend::sasl_initial_response(body);
                        let _ = frontend::password_cleartext(body);
                    }
                    _ => {}
                }
            }
            Err(e) => {
                let _ = (e.to_string(), e.sqlstate());
            }
        }
        rest = tail;
    }
});

//! Fuzz target: startup-phase packets through `startup_frame_len` and `parse_startup`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_pgwire::startup::{self, StartupPacket};

fuzz_target!(|data: &[u8]| {
    // Both the framed path and the raw packet (length word possibly lying).
    if let Ok(Some(n)) = startup::startup_frame_len(data) {
        check(&data[..n]);
    }
    check(data);
});

fn check(packet: &[u8]) {
    match startup::parse_startup(packet) {
        Ok(StartupPacket::Startup(p)) => {
            for (k, _v) in p.iter() {
                assert!(!k.is_empty());
            }
            let _ = (p.user(), p.database(), p.minor);
        }
        Ok(_) => {}
        Err(e) => {
            let _ = (e.to_string(), e.sqlstate());
        }
    }
}

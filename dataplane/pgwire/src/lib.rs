//! PostgreSQL wire protocol (3.0) codec for a proxy: framing and messages over borrowed bytes, no I/O.
#![forbid(unsafe_code)]

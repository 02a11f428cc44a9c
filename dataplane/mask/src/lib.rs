//! Streaming column masking and content detectors for PostgreSQL result messages.
#![forbid(unsafe_code)]

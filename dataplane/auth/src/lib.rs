//! Client token verification, backend authentication and TLS configuration for the data plane.
#![forbid(unsafe_code)]

pub mod backend;
pub mod tls;
pub mod token;

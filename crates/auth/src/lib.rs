//! Client token verification, backend authentication and TLS configuration for the data plane.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backend;
pub mod scram;
pub mod tls;
pub mod token;

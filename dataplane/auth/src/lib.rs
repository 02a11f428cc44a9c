//! Client token verification, backend authentication and TLS configuration for the data plane.
#![forbid(unsafe_code)]

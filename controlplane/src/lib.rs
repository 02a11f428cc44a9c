//! The Sluice control plane. Its HTTP API, policy compiler and audit store arrive with issue 3;
//! until then the data plane runs from a local configuration file.
#![forbid(unsafe_code)]

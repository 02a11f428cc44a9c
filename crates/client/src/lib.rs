//! The client side of the Sluice control plane's API: its wire types ([`wire`], the bodies
//! both planes exchange), which certificates to trust ([`Trust`]), and one blocking HTTP
//! client ([`Client`]) that the data plane's snapshot, review and audit clients and the CLI
//! all use.
#![forbid(unsafe_code)]

pub mod client;
pub mod time;
pub mod trust;
pub mod wire;

pub use client::{encode_path_segment, Answer, Client, ClientError};
pub use time::Utc;
pub use trust::{agent, Trust, TrustError};

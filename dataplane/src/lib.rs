//! The Sluice data plane: a thread-per-core PostgreSQL gateway.
//!
//! Clients authenticate with a token in the password field; the gateway logs in to the
//! backend with credentials only it holds, and relays the PostgreSQL protocol through
//! per-core pools of server connections (session or transaction pooling).
//!
//! The entry point is [`Dataplane::start`] with a validated [`config::Config`].

pub mod audit;
pub mod backend;
pub mod cancel;
pub mod catalog;
pub mod client_encoding;
pub mod config;
pub mod ctx;
pub mod error;
pub mod io;
mod login;
pub mod loglimit;
mod masking;
pub mod metrics;
pub mod pool;
pub mod prepared;
pub mod review;
pub mod runtime;
mod session;
pub mod shape;
pub mod shared;
pub mod snapshot;
pub mod stream;
pub mod tracker;

pub use config::Config;
pub use runtime::Dataplane;

//! A throwaway PostgreSQL cluster: initdb into a temp dir, start on a free port, stop and remove.
//!
//! Used by `sluice demo` and by the end-to-end tests, which always start their own server from
//! the machine's PostgreSQL binaries (see [`find_binaries`]). When run as root, the server runs
//! as the `postgres` account (else `nobody`), since initdb and postgres refuse root.
//!
//! ```no_run
//! use sluice_pgcluster::{ClusterOptions, PgCluster};
//! let pg = PgCluster::start(ClusterOptions::default())?;
//! pg.create_role("app", "secret")?;
//! assert_eq!(pg.psql_as("app", "secret", "postgres", "SELECT 1")?.trim(), "1");
//! # anyhow::Ok(())
//! ```
#![forbid(unsafe_code)]

mod account;
mod binaries;
mod cluster;
pub mod sql;
mod sweep;

use std::net::{Ipv4Addr, TcpListener};

pub use binaries::{find_binaries, PgBinaries, BINDIR_ENV};
pub use cluster::{AuthMethod, ClusterOptions, PgCluster};

/// A TCP port that was free a moment ago: binds 127.0.0.1:0, reads the port, drops the listener.
///
/// Someone else may take it before you bind it; [`PgCluster::start`] retries with another port.
/// Panics only if the loopback interface cannot be bound at all.
pub fn free_port() -> u16 {
    try_free_port().expect("binding 127.0.0.1:0 to find a free port")
}

/// Like [`free_port`], returning the error instead of panicking.
pub fn try_free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

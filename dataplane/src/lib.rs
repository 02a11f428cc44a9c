//! The Sluice data plane: a thread-per-core PostgreSQL gateway.

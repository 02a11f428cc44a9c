//! The `sluice` command's subcommands. The binary (`main.rs`) only installs the allocator and
//! calls [`cli::main`].

pub mod cli;
pub mod demo;
pub mod signals;
pub mod up;

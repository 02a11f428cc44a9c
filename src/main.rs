//! The `sluice` command: a thin binary over the data-plane library.

use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() -> std::process::ExitCode {
    sluice::cli::main()
}

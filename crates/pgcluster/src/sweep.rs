//! Cleaning up clusters left behind by test processes that died without running `Drop`.
//!
//! `pg_ctl` detaches the server into its own session, so a Ctrl-C'd or killed test run leaves
//! servers (and their ports and memory) behind. Each cluster dir records its owner's pid; a
//! new cluster stops and removes the dirs whose owner is gone.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result};

use crate::account::{self, Account};
use crate::binaries::PgBinaries;
use crate::cluster::{output, scrub_pg_env};

/// File in each cluster dir holding the pid of the process that owns it.
const OWNER_FILE: &str = "owner.pid";

/// Records this process as the owner of cluster dir `root`.
pub(crate) fn mark_owner(root: &Path) -> Result<()> {
    let path = root.join(OWNER_FILE);
    fs::write(&path, format!("{}\n", std::process::id()))
        .with_context(|| format!("writing {}", path.display()))
}

/// Stops and removes the clusters under `parent` whose owner process no longer exists.
///
/// Best effort and silent on failure: another process may be sweeping the same dir. Only
/// where `/proc` tells us which processes exist (Linux).
pub(crate) fn remove_orphans(parent: &Path, bins: &PgBinaries, account: Option<&Account>) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let root = entry.path();
        if !entry.file_name().to_string_lossy().starts_with("cluster-") {
            continue;
        }
        // No owner file yet: the dir is being created right now, or is empty anyway.
        let Ok(owner) = fs::read_to_string(root.join(OWNER_FILE)) else {
            continue;
        };
        let Ok(pid) = owner.trim().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let data = root.join("data");
        if data.join("postmaster.pid").exists() {
            let mut cmd = Command::new(bins.bindir.join("pg_ctl"));
            scrub_pg_env(&mut cmd);
            cmd.current_dir(&root)
                .args(["stop", "-w", "-t", "30", "-s", "-m", "immediate", "-D"])
                .arg(&data);
            account::run_as(&mut cmd, account);
            let _ = output(cmd, "pg_ctl stop (orphan)");
        }
        if fs::remove_dir_all(&root).is_ok() {
            tracing::info!(
                "removed orphaned cluster {} (owner pid {pid} is gone)",
                root.display()
            );
        }
    }
}

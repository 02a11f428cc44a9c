//! Which OS account runs the server: ourselves, or an unprivileged account when we are root.

use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Context as _, Result};

/// Accounts tried, in order, when we run as root (initdb and postgres refuse to run as root).
const UNPRIVILEGED: [&str; 2] = ["postgres", "nobody"];

/// An account the server processes are switched to with `setuid`/`setgid`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// `None`: run the server as ourselves. `Some`: we are root; switch to this account.
pub(crate) fn server_account() -> Result<Option<Account>> {
    if effective_uid()? != 0 {
        return Ok(None);
    }
    for name in UNPRIVILEGED {
        if let Some(account) = lookup(name) {
            return Ok(Some(account));
        }
    }
    bail!(
        "running as root, but none of the accounts {UNPRIVILEGED:?} exists to run the server \
         (initdb and postgres refuse root); `apt-get install -y postgresql` creates `postgres`"
    )
}

/// Our effective uid, read from the owner of a file we create (no `unsafe` FFI needed).
pub(crate) fn effective_uid() -> Result<u32> {
    static EUID: OnceLock<u32> = OnceLock::new();
    if let Some(uid) = EUID.get() {
        return Ok(*uid);
    }
    let probe = tempfile::NamedTempFile::new_in("/tmp").context("creating a file in /tmp")?;
    let uid = probe
        .as_file()
        .metadata()
        .context("stat of a temp file")?
        .uid();
    Ok(*EUID.get_or_init(|| uid))
}

/// Looks `name` up through NSS (`getent passwd`), falling back to reading `/etc/passwd`.
fn lookup(name: &str) -> Option<Account> {
    let from_getent = Command::new("getent")
        .args(["passwd", name])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok());
    let text = match from_getent {
        Some(text) => text,
        None => std::fs::read_to_string("/etc/passwd").ok()?,
    };
    text.lines().find_map(|line| parse_passwd_line(line, name))
}

/// `postgres:x:101:104:PostgreSQL administrator,,,:/var/lib/postgresql:/bin/bash` for `name`.
fn parse_passwd_line(line: &str, name: &str) -> Option<Account> {
    let mut fields = line.split(':');
    if fields.next()? != name {
        return None;
    }
    let _password = fields.next()?;
    let uid = fields.next()?.parse().ok()?;
    let gid = fields.next()?.parse().ok()?;
    Some(Account {
        name: name.to_string(),
        uid,
        gid,
    })
}

/// Gives `path` to the server account (no-op when the server runs as ourselves).
pub(crate) fn give(path: &Path, account: Option<&Account>) -> Result<()> {
    if let Some(a) = account {
        std::os::unix::fs::chown(path, Some(a.uid), Some(a.gid))
            .with_context(|| format!("chown {} to {}", path.display(), a.name))?;
    }
    Ok(())
}

/// Makes `cmd` run as the server account, if any.
pub(crate) fn run_as(cmd: &mut Command, account: Option<&Account>) {
    if let Some(a) = account {
        cmd.uid(a.uid).gid(a.gid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_passwd_lines() {
        let line = "postgres:x:101:104:PostgreSQL administrator,,,:/var/lib/postgresql:/bin/bash";
        assert_eq!(
            parse_passwd_line(line, "postgres"),
            Some(Account {
                name: "postgres".into(),
                uid: 101,
                gid: 104
            })
        );
        assert_eq!(parse_passwd_line(line, "post"), None);
        assert_eq!(
            parse_passwd_line("postgres:x:abc:1::/:/bin/sh", "postgres"),
            None
        );
    }
}

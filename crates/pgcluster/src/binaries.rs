//! Locating the machine's PostgreSQL server binaries (initdb, pg_ctl, postgres) and client tools.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

/// Environment variable that, when set, names the bin directory to use and skips discovery.
pub const BINDIR_ENV: &str = "SLUICE_PG_BINDIR";

/// The fix we suggest whenever the server binaries cannot be found.
const INSTALL_HINT: &str =
    "install PostgreSQL server binaries, e.g. `apt-get install -y postgresql` \
     (or point SLUICE_PG_BINDIR at a directory holding initdb, pg_ctl and postgres)";

/// The server programs a cluster needs; a bin directory without all of them is skipped.
const SERVER_PROGRAMS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

/// A directory holding PostgreSQL server binaries, and the server's version.
#[derive(Clone, Debug)]
pub struct PgBinaries {
    /// Directory with `initdb`, `pg_ctl`, `postgres` (and usually `psql`, `pgbench`, `pg_isready`).
    pub bindir: PathBuf,
    /// Server version as printed by `postgres --version`, e.g. `"15.14"`.
    pub version: String,
}

impl PgBinaries {
    /// Path of a program of this installation: `bindir/name` if it exists, else `name` for a PATH lookup.
    ///
    /// Client tools (psql, pgbench) of the same version as the server live here on Debian,
    /// where only the newest version's wrappers are on PATH.
    pub fn tool(&self, name: &str) -> PathBuf {
        let candidate = self.bindir.join(name);
        if candidate.is_file() {
            candidate
        } else {
            PathBuf::from(name)
        }
    }

    /// Major version (`15` for `"15.14"`), if the version string starts with a number.
    pub fn major(&self) -> Option<u32> {
        self.version.split('.').next()?.parse().ok()
    }

    /// Checks `bindir` holds the server programs and reads the version from `postgres --version`.
    pub fn from_bindir(bindir: impl Into<PathBuf>) -> Result<PgBinaries> {
        let bindir = bindir.into();
        if let Some(missing) = SERVER_PROGRAMS.iter().find(|p| !bindir.join(p).is_file()) {
            bail!("{} has no `{missing}`; {INSTALL_HINT}", bindir.display());
        }
        let postgres = bindir.join("postgres");
        // `--version` is answered before the server's refusal to run as root, so this works as root.
        let out = Command::new(&postgres)
            .arg("--version")
            .output()
            .with_context(|| format!("running {} --version", postgres.display()))?;
        if !out.status.success() {
            bail!(
                "{} --version failed: {}",
                postgres.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let version = parse_version(&text)
            .with_context(|| format!("unexpected `postgres --version` output: {text:?}"))?;
        Ok(PgBinaries { bindir, version })
    }
}

/// Finds the server binaries: `$SLUICE_PG_BINDIR`, then `pg_config --bindir`, then the highest
/// `/usr/lib/postgresql/*/bin` (Debian/Ubuntu), then the directory of `initdb` on PATH.
///
/// The error names the fix: install the server package.
pub fn find_binaries() -> Result<PgBinaries> {
    if let Some(dir) = std::env::var_os(BINDIR_ENV) {
        return PgBinaries::from_bindir(PathBuf::from(dir))
            .with_context(|| format!("{BINDIR_ENV} does not point at PostgreSQL server binaries"));
    }
    let candidates = pg_config_bindir()
        .into_iter()
        .chain(debian_bindirs())
        .chain(path_bindir());
    for dir in candidates {
        if has_server_programs(&dir) {
            return PgBinaries::from_bindir(dir);
        }
    }
    bail!("no PostgreSQL server binaries (initdb, pg_ctl, postgres) found; {INSTALL_HINT}")
}

fn has_server_programs(dir: &Path) -> bool {
    SERVER_PROGRAMS.iter().all(|p| dir.join(p).is_file())
}

/// `pg_config --bindir`; on Debian pg_config may come from libpq-dev without a server next to it.
fn pg_config_bindir() -> Option<PathBuf> {
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = String::from_utf8(out.stdout).ok()?;
    let dir = dir.trim();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

/// `/usr/lib/postgresql/<major>/bin`, highest major first.
fn debian_bindirs() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") else {
        return Vec::new();
    };
    let mut versions: Vec<(Vec<u32>, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let key = name
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<Vec<u32>>>()?;
            Some((key, e.path().join("bin")))
        })
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    versions.into_iter().map(|(_, dir)| dir).collect()
}

/// The directory of the first `initdb` on PATH (Fedora, Arch, Homebrew put it there).
fn path_bindir() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|dir| dir.join("initdb").is_file())
}

/// `"postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)"` -> `"15.14"`.
fn parse_version(text: &str) -> Option<String> {
    let rest = text.split_once("(PostgreSQL)")?.1;
    let version = rest.split_whitespace().next()?;
    version
        .starts_with(|c: char| c.is_ascii_digit())
        .then(|| version.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_version_lines() {
        assert_eq!(
            parse_version("postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)\n").as_deref(),
            Some("15.14")
        );
        assert_eq!(
            parse_version("postgres (PostgreSQL) 17beta1\n").as_deref(),
            Some("17beta1")
        );
        assert_eq!(parse_version("something else"), None);
    }

    #[test]
    fn major_version() {
        let b = PgBinaries {
            bindir: PathBuf::from("/x"),
            version: "15.14".into(),
        };
        assert_eq!(b.major(), Some(15));
    }
}

//! Snapshots from the control plane: turned into a [`Config`], fetched by long-poll, kept on disk.
//!
//! [`config_from_snapshot`] merges a snapshot with the local file: the process-level settings
//! (listen, cores, client TLS, limits, metrics, static break-glass tokens) stay local; the
//! connections, JWT issuers (identity providers and the control plane's grant key), roles and
//! their statement policies come from the snapshot and go through the same validation as a
//! configuration file, so a bad snapshot is refused with the field at fault and the one in
//! force stays. Policies are loaded from their compiled form (`compiled_policies`, checked for
//! structure only: the control plane validated them and the content hash vouches for them),
//! or built from source, validation included, when a snapshot has no compiled form.
//!
//! [`SnapshotClient`] runs on its own thread: it registers the node, long-polls
//! `GET /v1/nodes/{id}/snapshot?after=V` with `V` the version it runs (which is also how the
//! control plane learns what the node applied), verifies each answer's content hash, hands it
//! to a callback and persists it atomically. While the control plane is away it retries with
//! capped exponential backoff and the last snapshot stays in force (fail-static);
//! [`SnapshotClient::load_persisted`] reads it back at start so a restart needs no control plane.

use std::collections::HashSet;
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};
use sluice_client::wire::node::NodeRegistration;
use sluice_client::{Answer, Client, ClientError};
use sluice_policy::snapshot::Snapshot;
use sluice_policy::{PolicyError, PolicySet};

use crate::config::{Config, ConfigError};

/// Largest snapshot accepted, from the control plane or from disk.
pub const MAX_SNAPSHOT_BYTES: u64 = 64 << 20;

pub use crate::config::GRANT_ROLE_CLAIM;

/// Why a snapshot was refused or could not be fetched or stored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The content does not hash to `content_hash`: corrupted or tampered with.
    #[error("snapshot version {version}: content hash mismatch (claims {claimed}, content hashes to {actual}); refused")]
    HashMismatch {
        /// The version the snapshot claims.
        version: u64,
        /// The `content_hash` it carries.
        claimed: String,
        /// The hash of its content.
        actual: String,
    },
    /// The content does not make a valid configuration.
    #[error("snapshot version {version} is invalid: {field}: {message}")]
    Invalid {
        /// The version the snapshot claims.
        version: u64,
        /// Path of the offending field in the snapshot content, e.g. `roles[0].connections.app`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// Not a snapshot document at all.
    #[error("{origin}: not a snapshot: {source}")]
    Malformed {
        /// Where it came from (a file, or the control plane).
        origin: String,
        /// The decoding error.
        source: serde_json::Error,
    },
    /// Larger than [`MAX_SNAPSHOT_BYTES`] (or the client's cap).
    #[error("{origin}: snapshot larger than {limit} bytes; refused")]
    TooLarge {
        /// Where it came from.
        origin: String,
        /// The cap.
        limit: u64,
    },
    /// Reading or writing the persisted snapshot failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The callback could not put the snapshot in force (e.g. a backend host does not
    /// resolve); the snapshot is asked for again after a backoff.
    #[error("snapshot version {version} could not be put in force: {message}")]
    Refused {
        /// The version the snapshot claims.
        version: u64,
        /// The callback's reason.
        message: String,
    },
    /// The control plane is unreachable or answered with an error.
    #[error("control plane{}: {message}", status.map(|s| format!(" answered {s}")).unwrap_or_default())]
    ControlPlane {
        /// HTTP status, when it answered.
        status: Option<u16>,
        /// What went wrong (never contains the node token).
        message: String,
    },
}

impl SnapshotError {
    /// True for faults of the transport or the disk, which a retry may cure; false for a
    /// snapshot that is wrong in itself (a retry gets the same bytes).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            SnapshotError::Io { .. } | SnapshotError::ControlPlane { .. }
        )
    }

    fn invalid(version: u64, e: ConfigError) -> Self {
        // serde positions inside the generated document mean nothing to the reader; the
        // message names the field.
        let field = if e.field.starts_with("line ") {
            String::new()
        } else {
            e.field
        };
        SnapshotError::Invalid {
            version,
            field,
            message: e.message,
        }
    }
}

/// What the cores need about just-in-time grants beyond the token configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GrantRules {
    /// The `iss` of grant tokens (also one of `config.auth.jwt`); `None` when the snapshot
    /// carries no grant key, so no grant verifies.
    pub issuer: Option<String>,
    /// Ids (`jti`) of revoked grants that have not expired yet.
    pub revoked: HashSet<String>,
}

impl GrantRules {
    /// The grant rules of a snapshot.
    pub fn from_snapshot(snap: &Snapshot) -> Self {
        let g = &snap.content.grants;
        GrantRules {
            issuer: (!g.issuer.is_empty()).then(|| g.issuer.clone()),
            revoked: snap.content.revoked_grants.iter().cloned().collect(),
        }
    }

    /// True when a token from `issuer` is a grant (its role comes from its `role` claim,
    /// never from its subject or groups).
    pub fn is_grant_issuer(&self, issuer: &str) -> bool {
        self.issuer.as_deref() == Some(issuer)
    }

    /// True when the grant with this id (`jti`, [`Identity::token_id`]) was revoked.
    ///
    /// [`Identity::token_id`]: sluice_auth::token::Identity::token_id
    pub fn is_revoked(&self, jti: &str) -> bool {
        self.revoked.contains(jti)
    }
}

/// A snapshot accepted and turned into what the cores run.
#[derive(Clone, Debug)]
pub struct Applied {
    /// The snapshot version.
    pub version: u64,
    /// Its content hash.
    pub content_hash: String,
    /// The merged, validated configuration.
    pub config: Arc<Config>,
    /// Grant issuer and revocations (the configuration has no place for them yet).
    pub grants: Arc<GrantRules>,
}

/// Verifies the hash and merges the snapshot with the local configuration; see the module
/// documentation for which settings come from where.
pub fn apply_snapshot(local: &Config, snap: &Snapshot) -> Result<Applied, SnapshotError> {
    let config = config_from_snapshot(local, snap)?;
    Ok(Applied {
        version: snap.version,
        content_hash: snap.content_hash.clone(),
        config: Arc::new(config),
        grants: Arc::new(GrantRules::from_snapshot(snap)),
    })
}

/// Checks that the snapshot's content hashes to its `content_hash`.
pub fn verify_hash(snap: &Snapshot) -> Result<(), SnapshotError> {
    let actual = snap.content.content_hash();
    if actual == snap.content_hash {
        Ok(())
    } else {
        Err(SnapshotError::HashMismatch {
            version: snap.version,
            claimed: snap.content_hash.clone(),
            actual,
        })
    }
}

/// The configuration the data plane runs with this snapshot.
///
/// From `local`: `listen`, `cores`, `metrics_listen`, `tls`, `require_tls_for_non_loopback`,
/// `limits`, `control_plane` and `auth.static_tokens` (break-glass access that must not depend on the control
/// plane). From the snapshot: `connections`, `roles`, and `auth.jwt`: one issuer per identity
/// provider with an inline JWKS, plus the grant issuer (its Ed25519 JWKS, `groups_claim`
/// [`GRANT_ROLE_CLAIM`]), and `policies` with each role's `policy` (a role without one
/// denies every statement; cache keys carry the snapshot version). Identity providers with
/// only a `jwks_url` are left out with a warning (nothing fetches JWKS URLs yet), so their
/// tokens are refused. The hash is verified first.
pub fn config_from_snapshot(local: &Config, snap: &Snapshot) -> Result<Config, SnapshotError> {
    verify_hash(snap)?;
    merge(local, snap)
}

/// [`config_from_snapshot`] after the hash was checked.
fn merge(local: &Config, snap: &Snapshot) -> Result<Config, SnapshotError> {
    // The snapshot version goes into every policy's verdict-cache key, so no core serves a
    // verdict cached under an older version of a policy with the same name.
    let policies = if snap.content.compiled_policies.is_empty() {
        policies_from_source(snap)?
    } else {
        policies_from_compiled(snap)?
    };
    local
        .with_snapshot(snap, policies)
        .map_err(|e| SnapshotError::invalid(snap.version, e))
}

/// The fast path: the policies the control plane compiled, checked for structure and for
/// matching the source people read (same count, same names, same order).
fn policies_from_compiled(snap: &Snapshot) -> Result<PolicySet, SnapshotError> {
    let version = snap.version;
    let c = &snap.content;
    let invalid = |field: String, message: String| SnapshotError::Invalid {
        version,
        field,
        message,
    };
    if c.compiled_policies.len() != c.policies.len() {
        return Err(invalid(
            "compiled_policies".into(),
            format!(
                "{} compiled policies for {} in `policies`",
                c.compiled_policies.len(),
                c.policies.len()
            ),
        ));
    }
    for (i, (compiled, source)) in c.compiled_policies.iter().zip(&c.policies).enumerate() {
        let name = source.get("name").and_then(Value::as_str);
        if name != Some(compiled.name()) {
            return Err(invalid(
                format!("compiled_policies[{i}].name"),
                format!("`{}` where policies[{i}] is {name:?}", compiled.name()),
            ));
        }
    }
    // Cloned: the caller keeps the snapshot (to persist it, to compare the next one).
    PolicySet::from_compiled(c.compiled_policies.clone(), version).map_err(|e| match e {
        PolicyError::Invalid { path, message } => invalid(path, message),
        PolicyError::Syntax(message) => invalid("compiled_policies".into(), message),
    })
}

/// The fallback for snapshots without compiled policies (from a control plane before them):
/// the source, parsed and validated as a configuration file's policies are.
fn policies_from_source(snap: &Snapshot) -> Result<PolicySet, SnapshotError> {
    let src = json!({ "policies": snap.content.policies }).to_string();
    PolicySet::from_yaml(&src, snap.version).map_err(|e| {
        let (field, message) = match e {
            PolicyError::Invalid { path, message } => (path, message),
            PolicyError::Syntax(message) => ("policies".into(), message),
        };
        SnapshotError::Invalid {
            version: snap.version,
            field,
            message,
        }
    })
}

/// Decodes and verifies a snapshot from bytes (`origin` names where they came from).
pub fn decode(bytes: &[u8], origin: &str) -> Result<Snapshot, SnapshotError> {
    let snap: Snapshot =
        serde_json::from_slice(bytes).map_err(|source| SnapshotError::Malformed {
            origin: origin.to_owned(),
            source,
        })?;
    verify_hash(&snap)?;
    Ok(snap)
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory (mode 0600,
/// since snapshots carry backend passwords), fsync, rename, fsync of the directory.
pub fn persist(path: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let io_err = |source| SnapshotError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io_err(io::Error::new(io::ErrorKind::InvalidInput, "no file name")))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let write = || -> io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_err(e)
    })
}

/// Where the client finds the control plane, who it is, and its bounds.
#[derive(Clone)]
pub struct ClientSettings {
    /// Base URL of the control plane, e.g. `http://127.0.0.1:7070`.
    pub server: String,
    /// A node token (API role `node`).
    pub token: String,
    /// This data plane's stable id.
    pub node_id: String,
    /// Where its listener is, for operators (`GET /v1/nodes`).
    pub address: String,
    /// I/O driver of each core, for operators.
    pub drivers: Vec<String>,
    /// Where the last accepted snapshot is kept.
    pub state_file: PathBuf,
    /// How long one long-poll may wait for a new version (the control plane caps it at its own
    /// timeout, ~30 s). Also bounds how long [`SnapshotClient::stop`] takes.
    pub poll_wait: Duration,
    /// Connect timeout, and the whole-request timeout on top of `poll_wait`.
    pub request_timeout: Duration,
    /// First retry delay after a failure; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Largest snapshot accepted.
    pub max_snapshot_bytes: u64,
    /// Which certificates an `https://` server must present (default: the webpki roots).
    pub trust: sluice_client::Trust,
}

impl std::fmt::Debug for ClientSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSettings")
            .field("server", &self.server)
            .field("token", &sluice_auth::token::fingerprint(&self.token))
            .field("node_id", &self.node_id)
            .field("state_file", &self.state_file)
            .field("poll_wait", &self.poll_wait)
            .field("trust", &self.trust)
            .finish_non_exhaustive()
    }
}

impl ClientSettings {
    /// Settings with the default bounds: 10 s long-polls, 5 s request timeout, backoff from
    /// 100 ms to 10 s, 64 MiB snapshots.
    pub fn new(server: &str, token: &str, node_id: &str, state_file: PathBuf) -> Self {
        ClientSettings {
            server: server.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            node_id: node_id.to_owned(),
            address: String::new(),
            drivers: Vec::new(),
            state_file,
            poll_wait: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            max_snapshot_bytes: MAX_SNAPSHOT_BYTES,
            trust: sluice_client::Trust::default(),
        }
    }
}

/// Counters of a running client, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// The snapshot version in force (0 for none).
    pub version: u64,
    /// Snapshots accepted and handed to the callback.
    pub applied: u64,
    /// Snapshots refused (hash mismatch, invalid, malformed, too large, or by the callback).
    pub rejected: u64,
    /// Failed requests (control plane away, errors).
    pub failures: u64,
    /// Accepted snapshots that could not be written to disk.
    pub persist_failures: u64,
}

#[derive(Default)]
struct Counters {
    version: AtomicU64,
    applied: AtomicU64,
    rejected: AtomicU64,
    failures: AtomicU64,
    persist_failures: AtomicU64,
}

struct Control {
    stopped: Mutex<bool>,
    wake: Condvar,
    counters: Counters,
}

impl Control {
    /// Sleeps for `d` unless stopped first; returns false once stopped.
    fn sleep(&self, d: Duration) -> bool {
        let guard = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = self
            .wake
            .wait_timeout_while(guard, d, |stopped| !*stopped)
            .unwrap_or_else(|p| p.into_inner());
        !*guard
    }

    fn is_stopped(&self) -> bool {
        *self.stopped.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why the callback could not put a snapshot in force.
pub type SwapError = Box<dyn std::error::Error + Send + Sync>;

/// Fetches snapshots from the control plane on its own thread; see the module documentation.
pub struct SnapshotClient {
    control: Arc<Control>,
    thread: Option<JoinHandle<()>>,
}

impl SnapshotClient {
    /// Starts the client thread. `running` is the version already in force (from
    /// [`SnapshotClient::load_persisted`]), or `None`. `on_update` runs on the client thread
    /// for every accepted snapshot and should only build what the cores need and swap it in;
    /// when it returns an error the version in force does not change, nothing is written, and
    /// the snapshot is asked for again after a backoff. Accepted snapshots are then persisted.
    pub fn start<F>(
        settings: ClientSettings,
        local: Config,
        running: Option<u64>,
        on_update: F,
    ) -> io::Result<SnapshotClient>
    where
        F: Fn(Applied) -> Result<(), SwapError> + Send + 'static,
    {
        let control = Arc::new(Control {
            stopped: Mutex::new(false),
            wake: Condvar::new(),
            counters: Counters::default(),
        });
        control
            .counters
            .version
            .store(running.unwrap_or(0), Ordering::Relaxed);
        let worker = Worker {
            client: Client::new(
                &settings.server,
                &settings.token,
                &settings.trust,
                settings.request_timeout,
            ),
            settings,
            local,
            control: control.clone(),
            on_update: Box::new(on_update),
        };
        let thread = std::thread::Builder::new()
            .name("sluice-snapshots".into())
            .spawn(move || worker.run())?;
        Ok(SnapshotClient {
            control,
            thread: Some(thread),
        })
    }

    /// The snapshot version in force (0 for none).
    pub fn version(&self) -> u64 {
        self.control.counters.version.load(Ordering::Relaxed)
    }

    /// The client's counters.
    pub fn stats(&self) -> ClientStats {
        let c = &self.control.counters;
        ClientStats {
            version: c.version.load(Ordering::Relaxed),
            applied: c.applied.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            persist_failures: c.persist_failures.load(Ordering::Relaxed),
        }
    }

    /// Stops the thread and waits for it: at once between requests, within the request
    /// timeout plus `poll_wait` when a long-poll is in flight (it is not cut short).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        *self
            .control
            .stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = true;
        self.control.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// The last snapshot persisted at `path`, verified; `None` when there is no file.
    /// A file that is not a snapshot, too large, or whose hash does not match is an error:
    /// the caller starts from its local configuration instead of trusting it.
    pub fn load_persisted(path: &Path) -> Result<Option<Snapshot>, SnapshotError> {
        let io_err = |source| SnapshotError::Io {
            path: path.to_owned(),
            source,
        };
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(e)),
        };
        let mut bytes = Vec::new();
        file.take(MAX_SNAPSHOT_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err)?;
        let origin = path.display().to_string();
        if bytes.len() as u64 > MAX_SNAPSHOT_BYTES {
            return Err(SnapshotError::TooLarge {
                origin,
                limit: MAX_SNAPSHOT_BYTES,
            });
        }
        decode(&bytes, &origin).map(Some)
    }
}

impl Drop for SnapshotClient {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The client thread's state.
struct Worker {
    client: Client,
    settings: ClientSettings,
    local: Config,
    control: Arc<Control>,
    on_update: Box<dyn Fn(Applied) -> Result<(), SwapError> + Send>,
}

/// What one long-poll brought.
enum Poll {
    /// A snapshot newer than asked for (raw bytes, kept as received for the file).
    Snapshot(Vec<u8>),
    /// Nothing newer before the timeout.
    NothingNew,
    /// The control plane does not know this node (e.g. its store was replaced): register again.
    UnknownNode,
}

impl Worker {
    fn run(self) {
        let s = &self.settings;
        let c = &self.control.counters;
        let mut backoff = s.backoff_min;
        let mut registered = false;
        tracing::info!(server = %s.server, node = %s.node_id, "snapshot client started");
        while !self.control.is_stopped() {
            let step = if registered {
                self.poll_once()
            } else {
                self.register().map(|()| {
                    registered = true;
                    true
                })
            };
            match step {
                Ok(true) => backoff = s.backoff_min,
                Ok(false) => {
                    registered = false;
                    self.control.sleep(s.backoff_min);
                }
                Err(e) => {
                    if e.is_retryable() {
                        c.failures.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, retry_in = ?backoff, version = c.version.load(Ordering::Relaxed),
                            "control plane unavailable; keeping the snapshot in force");
                    } else {
                        c.rejected.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(error = %e, retry_in = ?backoff, version = c.version.load(Ordering::Relaxed),
                            "snapshot refused; keeping the snapshot in force");
                    }
                    if !self.control.sleep(backoff) {
                        break;
                    }
                    backoff = (backoff * 2).min(s.backoff_max);
                }
            }
        }
        tracing::info!(node = %s.node_id, "snapshot client stopped");
    }

    /// One long-poll; `Ok(false)` when the node must register again.
    fn poll_once(&self) -> Result<bool, SnapshotError> {
        let c = &self.control.counters;
        let running = c.version.load(Ordering::Relaxed);
        let asked = std::time::Instant::now();
        let bytes = match self.poll(running)? {
            Poll::NothingNew => {
                // A long-poll ends with 204 after `poll_wait`; something in between that
                // answers at once must not turn this loop into a busy one.
                let quick = self.settings.backoff_min.saturating_sub(asked.elapsed());
                self.control.sleep(quick);
                return Ok(true);
            }
            Poll::UnknownNode => return Ok(false),
            Poll::Snapshot(b) => b,
        };
        let snap = decode(&bytes, "control plane")?;
        if snap.version <= running {
            // Only a control plane restored from an older store answers this; keep ours.
            return Err(SnapshotError::Invalid {
                version: snap.version,
                field: "version".into(),
                message: format!("not newer than the version in force ({running})"),
            });
        }
        let applied = Applied {
            version: snap.version,
            content_hash: snap.content_hash.clone(),
            config: Arc::new(merge(&self.local, &snap)?),
            grants: Arc::new(GrantRules::from_snapshot(&snap)),
        };
        let version = applied.version;
        // Swap first, then persist: the fsyncs stay off the delivery latency, and a crash in
        // between only means a restart runs the previous file until the control plane answers.
        (self.on_update)(applied).map_err(|e| SnapshotError::Refused {
            version,
            message: e.to_string(),
        })?;
        c.version.store(version, Ordering::Relaxed);
        c.applied.fetch_add(1, Ordering::Relaxed);
        tracing::info!(version, "snapshot applied");
        if let Err(e) = persist(&self.settings.state_file, &bytes) {
            // Serving the newest snapshot matters more than having it on disk.
            c.persist_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, version, "cannot persist the snapshot");
        }
        Ok(true)
    }

    fn register(&self) -> Result<(), SnapshotError> {
        let s = &self.settings;
        let reg = NodeRegistration {
            id: Some(s.node_id.clone()),
            address: s.address.clone(),
            drivers: s.drivers.clone(),
        };
        let answer = self.client.register_node(&reg).map_err(transport_err)?;
        match answer.status {
            200 => {
                tracing::info!(node = %s.node_id, "registered with the control plane");
                Ok(())
            }
            _ => Err(status_err(&answer)),
        }
    }

    fn poll(&self, after: u64) -> Result<Poll, SnapshotError> {
        let s = &self.settings;
        let answer = self
            .client
            .poll_snapshot(
                &s.node_id,
                after,
                s.poll_wait,
                s.request_timeout,
                s.max_snapshot_bytes,
            )
            .map_err(|e| match e {
                ClientError::TooLarge { limit } => SnapshotError::TooLarge {
                    origin: "control plane".into(),
                    limit,
                },
                e => transport_err(e),
            })?;
        match answer.status {
            200 => Ok(Poll::Snapshot(answer.body)),
            204 => Ok(Poll::NothingNew),
            404 => {
                tracing::warn!(node = %s.node_id, "the control plane does not know this node; registering again");
                Ok(Poll::UnknownNode)
            }
            _ => Err(status_err(&answer)),
        }
    }
}

fn transport_err(e: ClientError) -> SnapshotError {
    SnapshotError::ControlPlane {
        status: None,
        message: e.to_string(),
    }
}

/// An error answer: the control plane's JSON `error.message`, or the status alone.
fn status_err(answer: &Answer) -> SnapshotError {
    SnapshotError::ControlPlane {
        status: Some(answer.status),
        message: answer.error_message(usize::MAX),
    }
}

#[cfg(test)]
mod tests;

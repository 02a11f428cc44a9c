//! What the cores share: process settings, the cancel registry, metrics, and the [`Live`]
//! configuration version in force.
//!
//! Cores share only [`Shared`] (process settings, cancel registry, metrics and the [`Live`]
//! state in force), behind an `Arc`, and never touch each other's pools or sessions.
//!
//! What a control-plane snapshot changes (connections, roles, policies, token issuers, grant
//! revocations) lives in a [`Live`], built off the cores and swapped in whole
//! ([`Shared::install`]): a mutex holds the current `Arc<Live>` and an atomic generation says
//! when it changed, so a core reads one relaxed atomic per check and takes the lock only after
//! a swap. Each core picks the new `Live` up at a message boundary (logins use the newest;
//! running sessions keep their server connections and look their policy up again), and a
//! watcher task per core, woken by the swap, closes the sessions whose access the snapshot
//! withdrew (a revoked grant, a removed role or connection).

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use sluice_auth::tls::BackendTlsVerify;
use sluice_auth::token::TokenVerifier;

use crate::cancel::CancelRegistry;
use crate::config::{BackendTls, Config, Connection};
use crate::masking::MaskingKey;
use crate::metrics::{self, CoreMetrics};
use crate::snapshot::{Applied, GrantRules, SnapshotClient};

/// What one configuration version puts in force: built whole off the cores, then swapped in.
pub struct Live {
    /// Snapshot version (0: the local configuration file, before any snapshot).
    pub version: u64,
    /// The configuration: local process settings merged with the snapshot's content.
    pub config: Arc<Config>,
    /// Client token verification with this version's issuers and keys.
    pub verifier: TokenVerifier,
    /// Which issuer signs grants, and which grants are revoked.
    pub grants: Arc<GrantRules>,
    pub(crate) backends: HashMap<String, BackendInfo>,
}

/// A connection's backend as a version resolved it.
#[derive(Clone)]
pub(crate) struct BackendInfo {
    pub(crate) addr: SocketAddr,
    pub(crate) tls_config: Option<Arc<rustls::ClientConfig>>,
    /// Pool id per backend user: kept from the previous version while the connection's
    /// address, database, TLS and pool settings and that user's credentials are unchanged, so
    /// unchanged connections keep their pools across swaps and changed ones get new pools.
    pub(crate) pool_ids: HashMap<String, u64>,
}

impl Live {
    /// Builds a version: loads keys and certificates and resolves backend addresses, so errors
    /// surface before anything is swapped. Connections unchanged since `previous` keep its
    /// resolved address, TLS configuration and pool ids.
    fn build(
        version: u64,
        config: Arc<Config>,
        grants: Arc<GrantRules>,
        previous: Option<&Live>,
        next_pool_id: &AtomicU64,
    ) -> anyhow::Result<Live> {
        let verifier = TokenVerifier::new(&config.auth).context("auth")?;
        if verifier.is_empty() {
            tracing::warn!(
                version,
                "no token issuers or static tokens are configured: every client will be refused"
            );
        }
        let mut backends = HashMap::new();
        for c in &config.connections {
            let before = previous.and_then(|p| {
                let old = p.config.connection(&c.name)?;
                Some((old, p.backends.get(&c.name)?))
            });
            let same_endpoint = |old: &Connection| {
                old.host == c.host
                    && old.port == c.port
                    && old.database == c.database
                    && old.tls == c.tls
                    && old.pool == c.pool
            };
            let info = match before {
                Some((old, info)) if same_endpoint(old) => {
                    let mut pool_ids = HashMap::with_capacity(c.users.len());
                    for (name, user) in &c.users {
                        let id = match (old.users.get(name), info.pool_ids.get(name)) {
                            (Some(u), Some(&id)) if u == user => id,
                            _ => next_pool_id.fetch_add(1, Ordering::Relaxed),
                        };
                        pool_ids.insert(name.clone(), id);
                    }
                    BackendInfo {
                        addr: info.addr,
                        tls_config: info.tls_config.clone(),
                        pool_ids,
                    }
                }
                _ => BackendInfo {
                    addr: resolve(c)?,
                    tls_config: backend_tls(c)?,
                    pool_ids: c
                        .users
                        .keys()
                        .map(|u| (u.clone(), next_pool_id.fetch_add(1, Ordering::Relaxed)))
                        .collect(),
                },
            };
            backends.insert(c.name.clone(), info);
        }
        Ok(Live {
            version,
            config,
            verifier,
            grants,
            backends,
        })
    }

    /// Why a session of `role` on `connection` (with grant `grant_id`, if any) may no longer
    /// run under this version, if it may not.
    pub(crate) fn withdrawn(
        &self,
        grant_id: Option<&str>,
        role: &str,
        connection: &str,
    ) -> Option<String> {
        if let Some(g) = grant_id {
            if self.grants.is_revoked(g) {
                return Some(format!("grant {g} was revoked"));
            }
        }
        let Some(r) = self.config.roles.iter().find(|r| r.name == role) else {
            return Some(format!("role \"{role}\" was removed"));
        };
        if self.config.connection(connection).is_none() {
            return Some(format!("connection \"{connection}\" was removed"));
        }
        if !r.connections.contains_key(connection) {
            return Some(format!(
                "role \"{role}\" may no longer use connection \"{connection}\""
            ));
        }
        None
    }
}

fn resolve(c: &Connection) -> anyhow::Result<SocketAddr> {
    (c.host.as_str(), c.port)
        .to_socket_addrs()
        .with_context(|| {
            format!(
                "connection {}: cannot resolve {}:{}",
                c.name, c.host, c.port
            )
        })?
        .next()
        .with_context(|| format!("connection {}: {} has no address", c.name, c.host))
}

fn backend_tls(c: &Connection) -> anyhow::Result<Option<Arc<rustls::ClientConfig>>> {
    Ok(match &c.tls {
        BackendTls::Disable => None,
        BackendTls::Prefer | BackendTls::Require => Some(sluice_auth::tls::client_config(
            &BackendTlsVerify::Insecure,
        )?),
        BackendTls::VerifyFull { ca } => Some(
            sluice_auth::tls::client_config(&BackendTlsVerify::Full {
                ca_pem_path: Some(ca.clone()),
            })
            .with_context(|| format!("connection {}: tls_ca", c.name))?,
        ),
    })
}

/// Counters of snapshot handling, for `/metrics`.
#[derive(Default)]
pub(crate) struct SnapshotCounters {
    swaps: AtomicU64,
    /// Snapshots the data plane itself refused (a persisted file that does not verify, a
    /// snapshot whose backends do not resolve); the client counts the rest.
    pub(crate) refused: AtomicU64,
    pub(crate) sessions_closed: AtomicU64,
}

/// How far a graceful shutdown has gone: draining (no new clients; sessions end at their
/// next idle point), then expired (the drain timeout ran out: every session ends now).
#[derive(Default)]
pub(crate) struct Drain {
    started: AtomicBool,
    expired: AtomicBool,
}

/// What all cores share, read-only on the hot path.
pub struct Shared {
    /// The configuration the process started with. Its process-level settings (listen,
    /// cores, TLS, limits, metrics) hold for the whole run; connections, roles, policies and
    /// issuers may be replaced by snapshots: read those from `CoreCtx::live` or
    /// [`Shared::live`].
    pub config: Arc<Config>,
    /// Cancel keys of all clients.
    pub cancel: CancelRegistry,
    /// Every core's counters.
    pub metrics: Vec<Arc<CoreMetrics>>,
    pub(crate) client_tls: Option<Arc<rustls::ServerConfig>>,
    live: Mutex<Arc<Live>>,
    /// Bumped after each swap of `live`; cores compare it with the one they run.
    generation: AtomicU64,
    next_pool_id: AtomicU64,
    /// Wakes each core's watcher after a swap.
    pub(crate) wake_cores: Mutex<Vec<futures::channel::mpsc::Sender<()>>>,
    pub(crate) counters: SnapshotCounters,
    drain: Drain,
    pub(crate) client: Mutex<Option<SnapshotClient>>,
    /// Audit records go here (each session clones the sink) when there is a control plane.
    pub(crate) audit_sink: std::sync::OnceLock<crate::audit::AuditSink>,
    pub(crate) audit_shipper: Mutex<Option<crate::audit::AuditShipper>>,
    /// The control plane's review API, when there is one.
    pub(crate) reviews: std::sync::OnceLock<crate::review::ReviewClient>,
    /// The key of keyed-hash and tokenised masking, the same on every core.
    pub(crate) masking_key: MaskingKey,
}

impl Shared {
    /// Builds what the cores share from a validated configuration: loads keys and
    /// certificates and resolves backend addresses, so that errors surface at start.
    pub fn new(config: Config) -> anyhow::Result<Self> {
        Self::with_live(config, None)
    }

    /// Like [`Shared::new`], with `initial` (a snapshot) in force instead of the file's
    /// connections, roles, policies and issuers.
    pub(crate) fn with_live(config: Config, initial: Option<Applied>) -> anyhow::Result<Self> {
        if config.tls.is_some() && !config.require_tls_for_non_loopback {
            tracing::warn!("tls.require_for_non_loopback is false: tokens from the network may travel in clear text");
        }
        let client_tls = match &config.tls {
            Some(t) => Some(sluice_auth::tls::server_config(&t.cert, &t.key).context("tls")?),
            None => None,
        };
        let config = Arc::new(config);
        let next_pool_id = AtomicU64::new(1);
        let live = match initial {
            Some(a) => Live::build(a.version, a.config, a.grants, None, &next_pool_id)
                .with_context(|| format!("snapshot version {}", a.version))?,
            None => Live::build(
                0,
                config.clone(),
                Arc::new(GrantRules::default()),
                None,
                &next_pool_id,
            )?,
        };
        let cores = config.cores;
        Ok(Self {
            cancel: CancelRegistry::new(cores),
            metrics: (0..cores)
                .map(|_| Arc::new(CoreMetrics::default()))
                .collect(),
            client_tls,
            live: Mutex::new(Arc::new(live)),
            generation: AtomicU64::new(1),
            next_pool_id,
            wake_cores: Mutex::new(Vec::new()),
            counters: SnapshotCounters::default(),
            drain: Drain::default(),
            client: Mutex::new(None),
            audit_sink: std::sync::OnceLock::new(),
            audit_shipper: Mutex::new(None),
            reviews: std::sync::OnceLock::new(),
            masking_key: MaskingKey::from_env(),
            config,
        })
    }

    /// The configuration generation in force: bumped whenever a new snapshot is swapped in.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Where sessions send audit records (`None` without a control plane).
    pub fn audit_sink(&self) -> Option<crate::audit::AuditSink> {
        self.audit_sink.get().cloned()
    }

    /// The control plane's review API (`None` without a control plane).
    pub fn review_client(&self) -> Option<crate::review::ReviewClient> {
        self.reviews.get().cloned()
    }

    /// Ships what the audit shipper holds, waiting up to `timeout`; true when nothing is
    /// left unacknowledged (or there is no shipper).
    pub fn flush_audit(&self, timeout: Duration) -> bool {
        self.audit_shipper
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_none_or(|s| s.flush(timeout))
    }

    /// The version in force now (off the cores; a core uses `CoreCtx::live`).
    pub fn live(&self) -> Arc<Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The snapshot version in force (0: the local configuration).
    pub fn snapshot_version(&self) -> u64 {
        self.live().version
    }

    /// Builds the [`Live`] of an accepted snapshot and swaps it in; each core takes it at its
    /// next message boundary, and its watcher closes the sessions the snapshot withdraws.
    /// On error (e.g. a new backend host does not resolve) the version in force stays.
    pub fn install(&self, applied: Applied) -> anyhow::Result<()> {
        let version = applied.version;
        // One swap at a time: the next version is built against the one it replaces.
        let mut slot = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let live = Live::build(
            version,
            applied.config,
            applied.grants,
            Some(&slot),
            &self.next_pool_id,
        )
        .inspect_err(|e| {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            tracing::error!(version, error = %format!("{e:#}"), "snapshot cannot be put in force; keeping version {}", slot.version);
        })?;
        *slot = Arc::new(live);
        self.generation.fetch_add(1, Ordering::Release);
        drop(slot);
        self.counters.swaps.fetch_add(1, Ordering::Relaxed);
        self.wake_cores();
        tracing::info!(version, "snapshot in force");
        Ok(())
    }

    /// Wakes each core's watcher (after a swap, or a step of a drain).
    fn wake_cores(&self) {
        for tx in self
            .wake_cores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter_mut()
        {
            // A full channel already holds a wake-up.
            let _ = tx.try_send(());
        }
    }

    /// Whether the data plane is draining: it takes no new clients, and each session ends
    /// at its next idle point.
    pub fn draining(&self) -> bool {
        self.drain.started.load(Ordering::Acquire)
    }

    /// Whether the drain timeout ran out: every session still open ends now.
    pub(crate) fn drain_expired(&self) -> bool {
        self.drain.expired.load(Ordering::Acquire)
    }

    /// Starts draining: each core closes its idle sessions, and the others at their next
    /// idle point.
    pub(crate) fn start_drain(&self) {
        self.drain.started.store(true, Ordering::Release);
        self.wake_cores();
    }

    /// The drain timeout ran out: each core closes every session it still runs.
    pub(crate) fn expire_drain(&self) {
        self.drain.expired.store(true, Ordering::Release);
        self.wake_cores();
    }

    /// Client connections open on all cores (logging in or in a session).
    pub fn clients_open(&self) -> i64 {
        self.metrics.iter().map(|m| m.clients_active.get()).sum()
    }

    /// Prometheus text of all cores' metrics and of snapshot handling.
    pub fn render_metrics(&self) -> String {
        use std::fmt::Write as _;
        let mut out = metrics::render(&self.metrics);
        let stats = self
            .client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(SnapshotClient::stats)
            .unwrap_or_default();
        let c = &self.counters;
        let lines: [(&str, &str, &str, u64); 6] = [
            (
                "snapshot_version",
                "gauge",
                "Snapshot version in force (0: the local configuration file)",
                self.snapshot_version(),
            ),
            (
                "snapshot_swaps_total",
                "counter",
                "Snapshots swapped in since start",
                c.swaps.load(Ordering::Relaxed),
            ),
            (
                "snapshot_refused_total",
                "counter",
                "Snapshots refused (invalid, tampered, oversized, unusable); the previous one stayed in force",
                stats.rejected + c.refused.load(Ordering::Relaxed),
            ),
            (
                "snapshot_fetch_failures_total",
                "counter",
                "Failed requests to the control plane (it was away or answered an error)",
                stats.failures,
            ),
            (
                "snapshot_persist_failures_total",
                "counter",
                "Snapshots in force that could not be written to the state directory",
                stats.persist_failures,
            ),
            (
                "sessions_closed_by_snapshot_total",
                "counter",
                "Sessions closed because a snapshot revoked their grant or removed their role or connection",
                c.sessions_closed.load(Ordering::Relaxed),
            ),
        ];
        let audit = self.audit_sink.get().map(|s| s.stats().snapshot());
        let audit_lines = audit.iter().flat_map(|a| {
            [
                (
                    "audit_records_shipped_total",
                    "counter",
                    "Audit records acknowledged by the control plane",
                    a.records_shipped,
                ),
                (
                    "audit_records_dropped_total",
                    "counter",
                    "Audit records lost (channel or spool full, or after shutdown); loss markers report them in the audit trail once records flow again",
                    a.dropped_channel_full + a.dropped_spool_full + a.dropped_after_shutdown,
                ),
                (
                    "audit_spool_bytes",
                    "gauge",
                    "Bytes of audit batches spooled while the control plane is away",
                    a.spool_bytes,
                ),
            ]
        });
        for (name, kind, help, value) in lines.into_iter().chain(audit_lines) {
            let _ = writeln!(out, "# HELP sluice_{name} {help}");
            let _ = writeln!(out, "# TYPE sluice_{name} {kind}");
            let _ = writeln!(out, "sluice_{name} {value}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(port: u16, password: &str) -> Arc<Config> {
        let yaml = format!(
            "listen: 127.0.0.1:0\nconnections:\n  - {{ name: a, port: {port}, database: d, users: [{{ name: r, password: {password} }}, {{ name: w, password: w }}] }}\n  - {{ name: b, port: 2, database: d, users: [{{ name: r }}] }}\nroles:\n  - {{ name: x, subjects: [s], connections: {{ a: r, b: r }} }}\n"
        );
        Arc::new(Config::from_yaml(&yaml, Path::new("."), &|_| None).unwrap())
    }

    fn build(c: Arc<Config>, previous: Option<&Live>, ids: &AtomicU64) -> Live {
        Live::build(1, c, Arc::new(GrantRules::default()), previous, ids).unwrap()
    }

    #[test]
    fn pools_are_kept_for_unchanged_backends_only() {
        let ids = AtomicU64::new(1);
        let v1 = build(config(1, "p"), None, &ids);
        let id = |l: &Live, c: &str, u: &str| l.backends[c].pool_ids[u];
        let same = build(config(1, "p"), Some(&v1), &ids);
        for (c, u) in [("a", "r"), ("a", "w"), ("b", "r")] {
            assert_eq!(id(&v1, c, u), id(&same, c, u), "{c}/{u} unchanged");
        }
        let password = build(config(1, "q"), Some(&same), &ids);
        assert_ne!(
            id(&same, "a", "r"),
            id(&password, "a", "r"),
            "new credentials"
        );
        assert_eq!(id(&same, "a", "w"), id(&password, "a", "w"));
        assert_eq!(id(&same, "b", "r"), id(&password, "b", "r"));
        let moved = build(config(3, "q"), Some(&password), &ids);
        assert_ne!(id(&password, "a", "w"), id(&moved, "a", "w"), "new address");
        assert_eq!(id(&password, "b", "r"), id(&moved, "b", "r"));
    }

    #[test]
    fn withdrawn_sessions() {
        let ids = AtomicU64::new(1);
        let mut grants = GrantRules::default();
        grants.revoked.insert("g1".into());
        let live = Live::build(2, config(1, "p"), Arc::new(grants), None, &ids).unwrap();
        assert_eq!(live.withdrawn(Some("g2"), "x", "a"), None);
        assert_eq!(live.withdrawn(None, "x", "b"), None);
        assert!(live
            .withdrawn(Some("g1"), "x", "a")
            .unwrap()
            .contains("revoked"));
        assert!(live
            .withdrawn(None, "gone", "a")
            .unwrap()
            .contains("removed"));
        assert!(live
            .withdrawn(None, "x", "c")
            .unwrap()
            .contains("connection \"c\""));
    }
}

//! `sluice up`: the control plane (embedded SQLite store by default) and a data plane in one
//! process. The data plane takes its snapshots from the in-process control plane over HTTP
//! (HTTPS when the API has a certificate, trusting the certificates in that file), exactly as
//! a remote one would, with a node token created at first start and kept in the data
//! directory.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sluice_client::Trust;
use sluice_controlplane::up::{ApiTls, Served, UpArgs};
use sluice_dataplane::config::ControlPlaneSettings;
use sluice_dataplane::{Config, Dataplane};

use crate::signals::{Signal, Signals};

/// The data plane's settings when `sluice up` gets no `--config`.
pub const DEFAULT_DATAPLANE_CONFIG: &str = "listen: 127.0.0.1:6432\n";

/// Both planes, running.
pub struct Up {
    /// The control plane and its API.
    pub served: Served,
    /// The data plane.
    pub dataplane: Dataplane,
}

impl Up {
    /// Starts the control plane from `args`, then a data plane with `dataplane_yaml` (its
    /// relative paths resolve against `base_dir`; `${NAME}` through `env`) whose
    /// `control_plane` section points at it; its state (the persisted snapshot, its node id)
    /// goes to `<data_dir>/dataplane`.
    pub fn start(
        args: &UpArgs,
        dataplane_yaml: &str,
        base_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Up> {
        Up::start_with_tls(args, &ApiTls::default(), dataplane_yaml, base_dir, env)
    }

    /// [`Up::start`] with the API over HTTPS when `tls` names a certificate: the data plane
    /// then trusts the certificates in that file (a full chain names its CA; a self-signed
    /// certificate is its own).
    pub fn start_with_tls(
        args: &UpArgs,
        tls: &ApiTls,
        dataplane_yaml: &str,
        base_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Up> {
        let trust = match &tls.tls_cert {
            Some(cert) => Trust::from_ca_file(cert).context("the API certificate as CA")?,
            None => Trust::webpki(),
        };
        let served = Served::start_with_tls(args, tls)?;
        let node_token = served
            .local_node_token()
            .context("creating the data plane's node token")?;
        let control_plane = ControlPlaneSettings {
            url: served.url.clone(),
            node_token,
            node_id: None,
            state_dir: args.data_dir.join("dataplane"),
        };
        let mut config =
            Config::from_yaml_with_control_plane(dataplane_yaml, base_dir, env, control_plane)?;
        config.control_plane_trust = trust;
        let dataplane = Dataplane::start(config).context("starting the data plane")?;
        Ok(Up { served, dataplane })
    }

    /// Waits until the data plane runs snapshot `version` (or a newer one); false on timeout.
    pub fn wait_for_version(&self, version: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.dataplane.shared().snapshot_version() < version {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// Graceful shutdown: the data plane drains (see [`Dataplane::shutdown`]) and ships its
    /// audit records to the control plane, which then stops, and so does the data plane's
    /// snapshot client.
    pub fn shutdown(self, drain_timeout: Duration) -> sluice_dataplane::runtime::Drained {
        let drained = self
            .dataplane
            .shutdown(drain_timeout, crate::cli::AUDIT_GRACE);
        self.stop();
        drained
    }

    /// Stops the control plane, then the data plane's snapshot client (whose long-poll the
    /// first step cut short). The data plane's cores run until the process ends.
    pub fn stop(self) {
        self.served.stop();
        self.dataplane.stop_snapshot_client();
    }
}

/// `sluice up [--config FILE] [--tls-cert FILE --tls-key FILE]` until SIGTERM or SIGINT, then
/// a graceful shutdown.
pub fn run(args: UpArgs, tls: ApiTls) -> anyhow::Result<()> {
    let (text, base) = match &args.config {
        Some(path) => (
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
            path.parent().unwrap_or(Path::new(".")).to_owned(),
        ),
        None => (DEFAULT_DATAPLANE_CONFIG.to_owned(), ".".into()),
    };
    let signals = Signals::block().context("blocking signals")?;
    let up = Up::start_with_tls(&args, &tls, &text, &base, &|k| std::env::var(k).ok())?;
    eprintln!(
        "sluice data plane on {} (snapshot v{}); `sluice apply -f configs/policy.yaml` configures both",
        up.dataplane.local_addr(),
        up.dataplane.shared().snapshot_version()
    );
    while signals.wait() == Signal::Reload {
        tracing::info!(
            "SIGHUP ignored: `sluice up` takes its policy from its control plane (`sluice apply`)"
        );
    }
    eprintln!("stopping: draining the data plane ...");
    let drain_timeout = up.dataplane.shared().config.limits.drain_timeout;
    up.shutdown(drain_timeout);
    Ok(())
}

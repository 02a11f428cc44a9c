//! A control plane served from this process on a tokio runtime of its own, for tests (of both
//! planes), examples and embedding next to a data plane. The caller's threads stay free: the
//! API runs on the runtime's two worker threads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::crypto::MasterKey;
use crate::service::{ControlPlane, Principal, Role, ServiceError, Settings, TokenRequest};
use crate::store::{Store, StoreError};

/// Why an in-process control plane did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("runtime or listener: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A running control plane; stopped when dropped.
pub struct InProcess {
    base: String,
    cp: Arc<ControlPlane>,
    rt: Option<tokio::runtime::Runtime>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl std::fmt::Debug for InProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcess")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl InProcess {
    /// Opens the store at `store_url` (`sqlite://PATH?mode=rwc` or `postgres://...`), starts
    /// the control plane and serves its API on `listen` (port 0 for a free one).
    pub fn start(
        store_url: &str,
        key: MasterKey,
        settings: Settings,
        listen: SocketAddr,
    ) -> Result<InProcess, StartError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sluice-cp")
            .enable_all()
            .build()?;
        let (cp, listener) = rt.block_on(async {
            let store = Store::open(store_url).await?;
            let cp = ControlPlane::start(store, key, settings).await?;
            let listener = tokio::net::TcpListener::bind(listen).await?;
            Ok::<_, StartError>((cp, listener))
        })?;
        let base = format!("http://{}", listener.local_addr()?);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        rt.spawn(crate::api::serve(listener, cp.clone(), async {
            let _ = rx.await;
        }));
        Ok(InProcess {
            base,
            cp,
            rt: Some(rt),
            stop: Some(tx),
        })
    }

    /// `http://ADDR` of the API.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The control plane itself, for calls that bypass HTTP.
    pub fn control_plane(&self) -> &Arc<ControlPlane> {
        &self.cp
    }

    /// Runs `f` on the control plane's runtime and waits for it.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt
            .as_ref()
            .expect("the runtime lives until stop")
            .block_on(f)
    }

    /// Creates an API token with `role` named `name` (as the bootstrap admin would) and
    /// returns it.
    pub fn create_token(&self, name: &str, role: Role) -> Result<String, ServiceError> {
        let admin = Principal {
            name: "bootstrap-admin".into(),
            role: Role::Admin,
        };
        let req = TokenRequest {
            name: name.into(),
            role,
        };
        Ok(self.block_on(self.cp.create_token(&admin, req))?.token)
    }

    /// Stops serving, closes the store and the runtime (requests in flight are cut short).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(rt) = self.rt.take() {
            let cp = self.cp.clone();
            rt.block_on(async move { cp.store().close().await });
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.shutdown();
    }
}

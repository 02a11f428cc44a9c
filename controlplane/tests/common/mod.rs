//! Test harness: the control plane in-process on port 0, and a small blocking HTTP client.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sluice_controlplane::crypto::MasterKey;
use sluice_controlplane::inprocess::InProcess;
use sluice_controlplane::service::{ControlPlane, Role, Settings};

pub const ADMIN: &str = "test-admin-token-0123456789abcdef";

pub struct Server {
    pub base: String,
    pub cp: Arc<ControlPlane>,
    inner: InProcess,
    agent: ureq::Agent,
}

pub fn settings() -> Settings {
    Settings {
        admin_token: Some(ADMIN.into()),
        max_body_bytes: 256 * 1024,
        ..Settings::default()
    }
}

impl Server {
    pub fn start(store_url: &str, key: &MasterKey) -> Server {
        Self::try_start(store_url, key, settings()).expect("control plane starts")
    }

    pub fn try_start(
        store_url: &str,
        key: &MasterKey,
        settings: Settings,
    ) -> anyhow::Result<Server> {
        let inner = InProcess::start(
            store_url,
            key.clone(),
            settings,
            "127.0.0.1:0".parse().unwrap(),
        )?;
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        Ok(Server {
            base: inner.base_url().to_owned(),
            cp: inner.control_plane().clone(),
            inner,
            agent,
        })
    }

    /// A new API token with `role`.
    pub fn token(&self, name: &str, role: Role) -> String {
        self.inner.create_token(name, role).expect("token created")
    }

    /// Sends a request; returns the status and the body as JSON (Null when empty or not JSON).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, &[u8])>,
    ) -> (u16, Value) {
        let (s, text) = self.call_text(method, path, token, body);
        (s, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub fn call_text(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, &[u8])>,
    ) -> (u16, String) {
        let url = format!("{}{path}", self.base);
        let auth = token.map(|t| format!("Bearer {t}"));
        let resp = match method {
            "GET" => {
                let mut r = self.agent.get(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            "DELETE" => {
                let mut r = self.agent.delete(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            _ => {
                let mut r = self.agent.post(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                match body {
                    Some((ct, b)) => r.header("Content-Type", ct).send(b),
                    None => r.send_empty(),
                }
            }
        };
        let mut resp = resp.expect("HTTP request");
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .unwrap_or_default();
        (status, text)
    }

    pub fn get(&self, path: &str) -> Value {
        let (s, v) = self.call("GET", path, Some(ADMIN), None);
        assert_eq!(s, 200, "GET {path}: {v}");
        v
    }

    pub fn post_json(&self, path: &str, token: &str, body: &Value) -> (u16, Value) {
        self.call(
            "POST",
            path,
            Some(token),
            Some(("application/json", body.to_string().as_bytes())),
        )
    }

    pub fn apply_yaml(&self, yaml: &str) -> (u16, Value) {
        self.call(
            "POST",
            "/v1/apply",
            Some(ADMIN),
            Some(("application/yaml", yaml.as_bytes())),
        )
    }

    pub fn stop(self) {
        self.inner.stop();
    }
}

pub fn test_key() -> MasterKey {
    MasterKey::from_base64(&MasterKey::generate_base64()).unwrap()
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

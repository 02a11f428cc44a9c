//! A data plane's registration with the control plane.

use serde::{Deserialize, Serialize};

/// `POST /v1/nodes` body.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NodeRegistration {
    /// Stable id of the data plane (generated when absent).
    #[serde(default)]
    pub id: Option<String>,
    /// Where its listener is, for operators.
    pub address: String,
    #[serde(default)]
    pub drivers: Vec<String>,
}

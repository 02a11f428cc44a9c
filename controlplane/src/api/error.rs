//! The API's error body: `{"error": {"code", "message", "details": [{path, message}]}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::document::FieldError;
use crate::service::ServiceError;
use crate::store::StoreError;

/// The error body is a wire type, shared with the API's clients.
pub use sluice_client::wire::error::{ErrorBody, ErrorDetail};

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Vec<FieldError>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
        }
    }

    pub fn unauthorized(message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: String) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn malformed(e: FieldError) -> Self {
        let message = if e.path.is_empty() {
            format!("malformed document: {}", e.message)
        } else {
            format!("malformed document at {}: {}", e.path, e.message)
        };
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "malformed_document",
            message,
            details: vec![e],
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                details: self.details,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("a concurrent change won, retry: {m}"),
            ),
            other => {
                tracing::error!(error = %other, "store error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "store_error",
                    "the store failed; see the control plane's log",
                )
            }
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Invalid(details) => ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: "invalid_document",
                message: format!(
                    "rejected whole, nothing applied: {} problem(s), first at {}: {}",
                    details.len(),
                    details.first().map_or("", |d| d.path.as_str()),
                    details.first().map_or("", |d| d.message.as_str())
                ),
                details,
            },
            ServiceError::BadRequest(m) => ApiError::bad_request(m),
            ServiceError::Forbidden(m) => ApiError::forbidden(m),
            ServiceError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "not_found", m),
            ServiceError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            ServiceError::Store(s) => s.into(),
        }
    }
}

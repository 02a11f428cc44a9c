//! The body of every error answer, `{"error": {"code", "message", "details": [{path, message}]}}`,
//! and the one parser clients read it with.

use serde::{Deserialize, Serialize};

/// The JSON body of every error answer.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `invalid_document`, `unauthorized`.
    pub code: String,
    pub message: String,
    /// Problems by path in the submitted document.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldError>,
}

/// One problem in a document, at a path like `roles[2].connections.app`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl FieldError {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// The `error` object of an error answer, as the server sent it (every field, in order);
/// `None` when the body is not JSON.
pub fn error_object(body: &[u8]) -> Option<serde_json::Value> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .map(|mut v| v["error"].take())
}

/// The `error.message` of an error answer, cut at `max` bytes (on a character boundary);
/// `None` when the body has none.
pub fn error_message(body: &[u8], max: usize) -> Option<String> {
    let mut m = error_object(body)?["message"].as_str()?.to_owned();
    if m.len() > max {
        let mut end = max;
        while !m.is_char_boundary(end) {
            end -= 1;
        }
        m.truncate(end);
    }
    Some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_read_and_cut_on_a_character_boundary() {
        let body = br#"{"error": {"code": "x", "message": "caf\u00e9 au lait"}}"#;
        assert_eq!(error_message(body, 100).as_deref(), Some("café au lait"));
        assert_eq!(error_message(body, 4).as_deref(), Some("caf"));
        assert_eq!(error_message(b"not json", 100), None);
        assert_eq!(error_message(br#"{"error": {}}"#, 100), None);
        assert_eq!(
            error_object(br#"{"other": 1}"#),
            Some(serde_json::Value::Null)
        );
    }
}

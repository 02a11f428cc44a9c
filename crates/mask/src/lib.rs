//! Streaming column masking and content detectors for PostgreSQL result messages.
//!
//! Pure and synchronous: no I/O, no locks, no allocation per row on the hot path. The data plane
//! builds a [`RowPlan`] once per RowDescription (which columns are masked, with which
//! [`Strategy`], and which [`Detectors`] run over the rest), then hands each DataRow frame to
//! [`mask_row`] (in place when every masked value keeps its length, else a copy that forwards the
//! untouched spans as whole slices). COPY text rows, ErrorResponse/NoticeResponse fields and
//! NotificationResponse payloads have their own functions in [`row`].
//!
//! Per message type, the data plane calls:
//! - RowDescription: [`RowPlan::from_row_description`] (with Bind's result format codes when the
//!   description came from a Describe of a statement), then keeps the plan for the portal.
//! - DataRow: [`mask_row`], or [`mask_row_in_place`] / [`mask_row_into`] directly; skip both when
//!   [`RowPlan::is_noop`].
//! - CopyData of a text-format COPY TO STDOUT: [`mask_copy_data`] with a text-format plan.
//! - ErrorResponse / NoticeResponse: [`scrub_error_response`]; NotificationResponse:
//!   [`scrub_notification`]. Both in place.
//!
//! Any [`MaskError`] means the message must not be forwarded: fail the statement instead.
//! Which value each strategy produces for each type is tabled on [`ColumnMask`].
//!
//! Known limits, by design or not yet done:
//! - Text is assumed to be UTF-8 (`client_encoding = UTF8`); partial masking counts UTF-8
//!   characters.
//! - Binary-format COPY and CSV COPY are not rewritten ([`mask_copy_data`] takes text format
//!   only); the data plane must refuse them when a plan masks anything.
//! - Arrays, composites, ranges, enums, dates and times are masked to NULL; domains and extension
//!   types are NULL unless the caller maps them to a base type OID.
//! - A row is validated up to the last column that needs work; the bytes after it are forwarded
//!   as the server sent them.
//! - Detector findings are overwritten in place (letters and digits → `*`, or digits → `1000…`
//!   inside JSON and numbers), so the separators of a found value stay visible.
//!
//! ```
//! use bytes::{BufMut, BytesMut};
//! use sluice_mask::{mask_row, ColumnType, Detectors, RowPlan, Strategy, oid};
//!
//! // SELECT id, email FROM customers: mask the email (text) column with a same-length fill.
//! let plan = RowPlan::new(
//!     [
//!         (ColumnType::text(oid::INT4), None),
//!         (ColumnType::text(oid::TEXT), Some(Strategy::redact_fill(b'*').unwrap())),
//!     ],
//!     Detectors::NONE,
//! );
//! let mut row = BytesMut::new();
//! row.put_u8(b'D');
//! row.put_i32(4 + 2 + 4 + 2 + 4 + 11);
//! row.put_i16(2);
//! row.put_i32(2);
//! row.put_slice(b"42");
//! row.put_i32(11);
//! row.put_slice(b"a@example.c");
//!
//! let mut out = BytesMut::new();
//! let how = mask_row(&mut row, &plan, &mut out).unwrap();
//! assert_eq!(how, sluice_mask::Rewrite::InPlace);
//! assert!(row.ends_with(b"42\0\0\0\x0b***********"));
//! ```
#![forbid(unsafe_code)]

pub mod detect;
pub mod row;
pub mod strategy;
pub mod types;

pub use detect::{DetectorKind, Detectors, Replace, Sensitivity, Span};
pub use row::{
    mask_copy_data, mask_row, mask_row_in_place, mask_row_into, row_description_fields,
    scrub_error_response, scrub_notification, CopyText, FieldDescription, Rewrite, RowPlan,
    ScrubOptions,
};
pub use strategy::{ColumnMask, HashKey, Strategy};
pub use types::{oid, ColumnType, Format, TypeKind};

use sluice_pgwire::{sqlstate, ProtocolError};

/// Why a message could not be masked. Every error means the message must not be forwarded as
/// is: the data plane drops it and fails the statement (fail closed).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MaskError {
    /// The message itself is malformed (from the codec).
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// A DataRow or COPY row has a different number of columns than the plan.
    #[error("row has {got} columns, the masking plan has {expected}")]
    ColumnCount {
        /// Columns in the plan.
        expected: usize,
        /// Columns in the row.
        got: usize,
    },
    /// A format code other than 0 (text) or 1 (binary).
    #[error("unsupported result format code {0}")]
    FormatCode(i16),
    /// A strategy or key was configured with invalid parameters.
    #[error("invalid masking strategy: {0}")]
    InvalidStrategy(&'static str),
    /// COPY data the masker cannot rewrite (not text format, a partial row, bad escapes).
    #[error("cannot mask COPY data: {0}")]
    Copy(&'static str),
    /// The masked message would exceed the protocol's length limit.
    #[error("masked message too large")]
    TooLarge,
}

impl MaskError {
    /// SQLSTATE for the client: the codec's for protocol errors, `22023` for bad configuration,
    /// `XX000` (internal error) for the rest: the gateway could not vouch for the result.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            MaskError::Protocol(e) => e.sqlstate(),
            MaskError::InvalidStrategy(_) => "22023",
            MaskError::ColumnCount { .. }
            | MaskError::FormatCode(_)
            | MaskError::Copy(_)
            | MaskError::TooLarge => sqlstate::INTERNAL_ERROR,
        }
    }
}

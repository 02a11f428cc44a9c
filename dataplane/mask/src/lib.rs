//! Streaming column masking and content detectors for PostgreSQL result messages.
//!
//! Pure and synchronous: no I/O, no locks, no allocation per row on the hot path. The data plane
//! builds a [`RowPlan`] once per RowDescription (which columns are masked, with which
//! [`Strategy`], and which [`Detectors`] run over the rest), then hands each DataRow frame to
//! [`mask_row`] (in place when every masked value keeps its length, else a copy that forwards the
//! untouched spans as whole slices). COPY text rows, ErrorResponse/NoticeResponse fields and
//! NotificationResponse payloads have their own functions in [`row`].
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

pub use detect::{DetectorKind, Detectors, Replace, Span};
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

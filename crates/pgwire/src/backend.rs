//! Server-to-client messages of protocol 3.0: tag constants, a borrowing decoder, and a DataRow walker.

use std::iter::FusedIterator;
use std::ops::Range;

use crate::read::{split_frame, Reader};
use crate::{ProtocolError, HEADER_LEN};

/// Authentication request or result (all `AuthenticationXxx` messages).
pub const AUTHENTICATION: u8 = b'R';
/// BackendKeyData: pid and secret for CancelRequest.
pub const BACKEND_KEY_DATA: u8 = b'K';
/// BindComplete.
pub const BIND_COMPLETE: u8 = b'2';
/// CloseComplete.
pub const CLOSE_COMPLETE: u8 = b'3';
/// CommandComplete with its command tag.
pub const COMMAND_COMPLETE: u8 = b'C';
/// CopyBothResponse (replication).
pub const COPY_BOTH: u8 = b'W';
/// CopyData during COPY TO STDOUT.
pub const COPY_DATA: u8 = b'd';
/// CopyDone.
pub const COPY_DONE: u8 = b'c';
/// CopyInResponse: the server is ready for COPY FROM STDIN data.
pub const COPY_IN: u8 = b'G';
/// CopyOutResponse: COPY TO STDOUT data follows.
pub const COPY_OUT: u8 = b'H';
/// DataRow: one result row.
pub const DATA_ROW: u8 = b'D';
/// EmptyQueryResponse.
pub const EMPTY_QUERY: u8 = b'I';
/// ErrorResponse.
pub const ERROR_RESPONSE: u8 = b'E';
/// FunctionCallResponse.
pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
/// NegotiateProtocolVersion.
pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
/// NoData: the statement returns no rows.
pub const NO_DATA: u8 = b'n';
/// NoticeResponse.
pub const NOTICE_RESPONSE: u8 = b'N';
/// NotificationResponse (LISTEN/NOTIFY).
pub const NOTIFICATION: u8 = b'A';
/// ParameterDescription.
pub const PARAMETER_DESCRIPTION: u8 = b't';
/// ParameterStatus: a run-time parameter's current value.
pub const PARAMETER_STATUS: u8 = b'S';
/// ParseComplete.
pub const PARSE_COMPLETE: u8 = b'1';
/// PortalSuspended: Execute's row limit was reached.
pub const PORTAL_SUSPENDED: u8 = b's';
/// ReadyForQuery with the transaction status.
pub const READY_FOR_QUERY: u8 = b'Z';
/// RowDescription.
pub const ROW_DESCRIPTION: u8 = b'T';

/// ReadyForQuery status: idle, not in a transaction block.
pub const STATUS_IDLE: u8 = b'I';
/// ReadyForQuery status: in a transaction block.
pub const STATUS_IN_TRANSACTION: u8 = b'T';
/// ReadyForQuery status: in a failed transaction block.
pub const STATUS_FAILED: u8 = b'E';

/// `AuthenticationOk` code.
pub const AUTH_OK: i32 = 0;
/// `AuthenticationCleartextPassword` code.
pub const AUTH_CLEARTEXT_PASSWORD: i32 = 3;
/// `AuthenticationMD5Password` code.
pub const AUTH_MD5_PASSWORD: i32 = 5;
/// `AuthenticationSASL` code.
pub const AUTH_SASL: i32 = 10;
/// `AuthenticationSASLContinue` code.
pub const AUTH_SASL_CONTINUE: i32 = 11;
/// `AuthenticationSASLFinal` code.
pub const AUTH_SASL_FINAL: i32 = 12;

/// Error and notice field codes (PostgreSQL "Error and Notice Message Fields").
pub mod field {
    /// Severity, possibly localized.
    pub const SEVERITY: u8 = b'S';
    /// Severity, never localized (PostgreSQL 9.6+).
    pub const SEVERITY_NONLOCALIZED: u8 = b'V';
    /// SQLSTATE code.
    pub const CODE: u8 = b'C';
    /// Primary message.
    pub const MESSAGE: u8 = b'M';
    /// Detail.
    pub const DETAIL: u8 = b'D';
    /// Hint.
    pub const HINT: u8 = b'H';
    /// Cursor position in the query string.
    pub const POSITION: u8 = b'P';
    /// Context (call stack).
    pub const WHERE: u8 = b'W';
    /// Schema name.
    pub const SCHEMA: u8 = b's';
    /// Table name.
    pub const TABLE: u8 = b't';
    /// Column name.
    pub const COLUMN: u8 = b'c';
    /// Constraint name.
    pub const CONSTRAINT: u8 = b'n';
    /// Source file.
    pub const FILE: u8 = b'F';
    /// Source line.
    pub const LINE: u8 = b'L';
    /// Source routine.
    pub const ROUTINE: u8 = b'R';
}

/// A decoded `'R'` message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Authentication<'a> {
    /// AuthenticationOk.
    Ok,
    /// AuthenticationCleartextPassword.
    CleartextPassword,
    /// AuthenticationMD5Password.
    Md5Password {
        /// Salt to hash with.
        salt: [u8; 4],
    },
    /// AuthenticationSASL.
    Sasl {
        /// Raw mechanism list as on the wire (`name\0...name\0\0`), validated; see [`sasl_mechanisms`].
        mechanisms: &'a [u8],
    },
    /// AuthenticationSASLContinue with its challenge data.
    SaslContinue(&'a [u8]),
    /// AuthenticationSASLFinal with its outcome data.
    SaslFinal(&'a [u8]),
    /// Any other code (Kerberos, GSS, SSPI, ...), unparsed.
    Other {
        /// Authentication code.
        code: i32,
        /// Bytes after the code.
        data: &'a [u8],
    },
}

impl<'a> Authentication<'a> {
    /// The mechanism names of an [`Authentication::Sasl`], `None` for other variants.
    pub fn mechanisms(&self) -> Option<SaslMechanisms<'a>> {
        match *self {
            Authentication::Sasl { mechanisms } => Some(sasl_mechanisms(mechanisms)),
            _ => None,
        }
    }
}

/// Iterates the names in an AuthenticationSASL mechanism list; stops at the empty terminator
/// (or at anything invalid, so it is safe on unvalidated bytes too).
pub fn sasl_mechanisms(raw: &[u8]) -> SaslMechanisms<'_> {
    SaslMechanisms {
        rest: Reader::new(raw, AUTHENTICATION),
    }
}

/// Iterator returned by [`sasl_mechanisms`].
#[derive(Clone)]
pub struct SaslMechanisms<'a> {
    rest: Reader<'a>,
}

impl<'a> Iterator for SaslMechanisms<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let name = self.rest.cstr().ok().filter(|n| !n.is_empty());
        if name.is_none() {
            self.rest.rest();
        }
        name
    }
}

impl FusedIterator for SaslMechanisms<'_> {}

/// A decoded server message, borrowing from the frame. Only what the proxy inspects is decoded;
/// everything else is [`BackendMessage::Other`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendMessage<'a> {
    /// `'R'`.
    Authentication(Authentication<'a>),
    /// BackendKeyData (protocol 3.0: 4-byte secret).
    BackendKeyData {
        /// Backend process id.
        pid: i32,
        /// Cancel secret.
        secret: i32,
    },
    /// ParameterStatus.
    ParameterStatus {
        /// Parameter name.
        name: &'a str,
        /// Current value.
        value: &'a str,
    },
    /// ReadyForQuery.
    ReadyForQuery {
        /// [`STATUS_IDLE`], [`STATUS_IN_TRANSACTION`] or [`STATUS_FAILED`].
        status: u8,
    },
    /// ErrorResponse.
    ErrorResponse(ErrorFields<'a>),
    /// NoticeResponse.
    NoticeResponse(ErrorFields<'a>),
    /// CommandComplete.
    CommandComplete {
        /// Command tag, e.g. `SELECT 1000`.
        tag: &'a str,
    },
    /// Anything else, unparsed (the proxy passes it through).
    Other {
        /// Message type.
        tag: u8,
        /// Body after the header.
        body: &'a [u8],
    },
}

/// The fields of an ErrorResponse or NoticeResponse, validated at parse time.
///
/// Each field is a non-zero code byte and a NUL-terminated value; a zero byte ends the list
/// and is the last byte of the body. Values are in the client's encoding, which need not be
/// UTF-8 (a message quoting the client's LATIN1 text is LATIN1): [`ErrorFields::iter`] and
/// the getters give only the values that are UTF-8, [`ErrorFields::raw`] has them all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorFields<'a> {
    raw: &'a [u8],
}

impl<'a> ErrorFields<'a> {
    /// Validates an ErrorResponse/NoticeResponse body (after the header, terminator included).
    pub fn from_body(body: &'a [u8]) -> Result<Self, ProtocolError> {
        Self::parse(body, ERROR_RESPONSE)
    }

    fn parse(body: &'a [u8], tag: u8) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body, tag);
        loop {
            if r.u8("missing field list terminator")? == 0 {
                r.finish()?;
                return Ok(ErrorFields { raw: body });
            }
            r.cstr_bytes()?;
        }
    }

    /// `(code, value)` pairs in wire order, leaving out values that are not UTF-8.
    pub fn iter(&self) -> Fields<'a> {
        Fields {
            rest: Reader::new(self.raw, ERROR_RESPONSE),
        }
    }

    /// The value of the first field with this code (see [`field`]).
    pub fn get(&self, code: u8) -> Option<&'a str> {
        self.iter().find(|&(c, _)| c == code).map(|(_, v)| v)
    }

    /// `S`: severity (possibly localized).
    pub fn severity(&self) -> Option<&'a str> {
        self.get(field::SEVERITY)
    }

    /// `V`: severity, never localized (falls back to nothing on servers before 9.6).
    pub fn severity_nonlocalized(&self) -> Option<&'a str> {
        self.get(field::SEVERITY_NONLOCALIZED)
    }

    /// `C`: SQLSTATE.
    pub fn code(&self) -> Option<&'a str> {
        self.get(field::CODE)
    }

    /// `M`: primary message.
    pub fn message(&self) -> Option<&'a str> {
        self.get(field::MESSAGE)
    }

    /// The body as on the wire, terminator included.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }
}

impl<'a> IntoIterator for &ErrorFields<'a> {
    type Item = (u8, &'a str);
    type IntoIter = Fields<'a>;

    fn into_iter(self) -> Fields<'a> {
        self.iter()
    }
}

/// Iterator over [`ErrorFields`].
#[derive(Clone)]
pub struct Fields<'a> {
    rest: Reader<'a>,
}

impl<'a> Iterator for Fields<'a> {
    type Item = (u8, &'a str);

    fn next(&mut self) -> Option<(u8, &'a str)> {
        loop {
            let code = self.rest.u8("").ok().filter(|&c| c != 0)?;
            match self.rest.cstr_bytes() {
                Ok(value) => match std::str::from_utf8(value) {
                    Ok(value) => return Some((code, value)),
                    Err(_) => continue,
                },
                Err(_) => {
                    self.rest.rest();
                    return None;
                }
            }
        }
    }
}

impl FusedIterator for Fields<'_> {}

impl BackendMessage<'_> {
    /// The wire tag of this message.
    pub fn tag(&self) -> u8 {
        match self {
            BackendMessage::Authentication(_) => AUTHENTICATION,
            BackendMessage::BackendKeyData { .. } => BACKEND_KEY_DATA,
            BackendMessage::ParameterStatus { .. } => PARAMETER_STATUS,
            BackendMessage::ReadyForQuery { .. } => READY_FOR_QUERY,
            BackendMessage::ErrorResponse(_) => ERROR_RESPONSE,
            BackendMessage::NoticeResponse(_) => NOTICE_RESPONSE,
            BackendMessage::CommandComplete { .. } => COMMAND_COMPLETE,
            BackendMessage::Other { tag, .. } => *tag,
        }
    }
}

/// Decodes one whole server message; `frame` includes the 5-byte header, as delimited by
/// [`crate::frame_len`], and its length word must match `frame.len()`.
pub fn parse(frame: &[u8]) -> Result<BackendMessage<'_>, ProtocolError> {
    let (tag, body) = split_frame(frame)?;
    let mut r = Reader::new(body, tag);
    let msg = match tag {
        AUTHENTICATION => BackendMessage::Authentication(match r.i32("truncated code")? {
            AUTH_OK => Authentication::Ok,
            AUTH_CLEARTEXT_PASSWORD => Authentication::CleartextPassword,
            AUTH_MD5_PASSWORD => Authentication::Md5Password {
                salt: r.array("truncated MD5 salt")?,
            },
            AUTH_SASL => {
                let mechanisms = r.rest();
                validate_mechanisms(mechanisms)?;
                Authentication::Sasl { mechanisms }
            }
            AUTH_SASL_CONTINUE => Authentication::SaslContinue(r.rest()),
            AUTH_SASL_FINAL => Authentication::SaslFinal(r.rest()),
            code => Authentication::Other {
                code,
                data: r.rest(),
            },
        }),
        BACKEND_KEY_DATA => {
            if r.len() != 8 {
                // Protocol 3.2 allows longer keys; this codec speaks 3.0 upstream.
                return Err(r.malformed("BackendKeyData secret must be 4 bytes"));
            }
            BackendMessage::BackendKeyData {
                pid: r.i32("truncated pid")?,
                secret: r.i32("truncated secret")?,
            }
        }
        PARAMETER_STATUS => BackendMessage::ParameterStatus {
            name: r.cstr()?,
            value: r.cstr()?,
        },
        READY_FOR_QUERY => {
            let status = r.u8("missing status")?;
            if !matches!(status, STATUS_IDLE | STATUS_IN_TRANSACTION | STATUS_FAILED) {
                return Err(r.malformed("status must be 'I', 'T' or 'E'"));
            }
            BackendMessage::ReadyForQuery { status }
        }
        ERROR_RESPONSE => BackendMessage::ErrorResponse(ErrorFields::parse(r.rest(), tag)?),
        NOTICE_RESPONSE => BackendMessage::NoticeResponse(ErrorFields::parse(r.rest(), tag)?),
        COMMAND_COMPLETE => BackendMessage::CommandComplete { tag: r.cstr()? },
        _ => BackendMessage::Other {
            tag,
            body: r.rest(),
        },
    };
    r.finish()?;
    Ok(msg)
}

/// AuthenticationSASL list: one or more non-empty UTF-8 names, each NUL-terminated, then a final NUL.
fn validate_mechanisms(raw: &[u8]) -> Result<(), ProtocolError> {
    let mut r = Reader::new(raw, AUTHENTICATION);
    let mut count = 0usize;
    loop {
        if r.cstr()?.is_empty() {
            if count == 0 {
                return Err(r.malformed("empty SASL mechanism list"));
            }
            return r.finish();
        }
        count += 1;
    }
}

/// Walks the columns of a DataRow as byte ranges into the frame, without allocating.
///
/// Yields one item per column: `Ok(Some(range))` for a value (`frame[range]`), `Ok(None)` for SQL
/// NULL, or one `Err` (then ends) if the body is inconsistent. After the last column, any trailing
/// bytes are reported as an error too, so a fully consumed walk means the row was well-formed.
#[derive(Clone, Debug)]
pub struct DataRowRanges<'a> {
    frame: &'a [u8],
    pos: usize,
    columns: u16,
    remaining: u16,
    done: bool,
}

impl DataRowRanges<'_> {
    /// Number of columns the row declares.
    pub fn columns(&self) -> u16 {
        self.columns
    }
}

/// Starts a [`DataRowRanges`] walk; `frame` is a whole DataRow including its header.
///
/// Fails if the frame is not a DataRow, its length word does not match, or the column count is
/// missing.
pub fn data_row_ranges(frame: &[u8]) -> Result<DataRowRanges<'_>, ProtocolError> {
    let (tag, body) = split_frame(frame)?;
    if tag != DATA_ROW {
        return Err(ProtocolError::UnexpectedMessage {
            tag,
            phase: "DataRow walk",
        });
    }
    let mut r = Reader::new(body, tag);
    // Unsigned, as libpq reads it (the server never sends more than 1664 columns).
    let columns = r.u16("truncated column count")?;
    Ok(DataRowRanges {
        frame,
        pos: HEADER_LEN + 2,
        columns,
        remaining: columns,
        done: false,
    })
}

impl DataRowRanges<'_> {
    fn fail(&mut self, what: &'static str) -> Option<<Self as Iterator>::Item> {
        self.done = true;
        Some(Err(ProtocolError::Malformed {
            tag: DATA_ROW,
            what,
        }))
    }
}

impl Iterator for DataRowRanges<'_> {
    type Item = Result<Option<Range<usize>>, ProtocolError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.remaining == 0 {
            self.done = true;
            return (self.pos != self.frame.len())
                .then(|| self.fail("trailing bytes after last column"))
                .flatten();
        }
        self.remaining -= 1;
        let Some(&word) = self
            .frame
            .get(self.pos..)
            .and_then(|rest| rest.first_chunk::<4>())
        else {
            return self.fail("truncated column length");
        };
        let start = self.pos + 4;
        match i32::from_be_bytes(word) {
            -1 => {
                self.pos = start;
                Some(Ok(None))
            }
            len => {
                let Ok(len) = usize::try_from(len) else {
                    return self.fail("negative column length");
                };
                match start.checked_add(len) {
                    Some(end) if end <= self.frame.len() => {
                        self.pos = end;
                        Some(Ok(Some(start..end)))
                    }
                    _ => self.fail("column value exceeds message"),
                }
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.done {
            (0, Some(0))
        } else {
            (0, Some(usize::from(self.remaining) + 1))
        }
    }
}

impl FusedIterator for DataRowRanges<'_> {}

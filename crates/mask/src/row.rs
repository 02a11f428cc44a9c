//! Rewriting whole result messages: DataRow (in place or by copy), COPY text rows, and the
//! free-text fields of ErrorResponse/NoticeResponse and NotificationResponse.
//!
//! Every function takes exactly one whole message, as the proxy framed it, and never buffers more:
//! memory stays bounded by the message size whatever the result size.

use std::ops::Range;

use bytes::{BufMut, BytesMut};
use sluice_pgwire::backend::{self, data_row_ranges, BackendMessage};
use sluice_pgwire::{ProtocolError, HEADER_LEN};

use crate::detect::{Detectors, Replace};
use crate::strategy::{ColumnMask, Strategy};
use crate::types::{ColumnType, Format};
use crate::MaskError;

/// One field of a RowDescription, borrowed from the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldDescription<'a> {
    /// Output name (an alias: never trust it for policy), in the client's encoding, which
    /// need not be UTF-8 (see [`FieldDescription::name_lossy`]).
    pub name: &'a [u8],
    /// Source table OID, 0 if the column is not a plain table column.
    pub table_oid: u32,
    /// Source attribute number, 0 if none.
    pub column_id: i16,
    /// Type OID.
    pub type_oid: u32,
    /// `pg_type.typlen`.
    pub type_size: i16,
    /// Type modifier (`atttypmod`).
    pub type_modifier: i32,
    /// Format code: 0 text, 1 binary (always 0 in a Describe of a statement).
    pub format: i16,
}

impl FieldDescription<'_> {
    /// The output name for messages and audit records (bytes not valid UTF-8 replaced).
    pub fn name_lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(self.name)
    }
}

/// Iterates the fields of a RowDescription frame (header included). Each item is checked; a
/// malformed body yields one error and ends.
pub fn row_description_fields(
    frame: &[u8],
) -> Result<impl Iterator<Item = Result<FieldDescription<'_>, MaskError>> + '_, MaskError> {
    let body = match backend::parse(frame)? {
        BackendMessage::Other {
            tag: backend::ROW_DESCRIPTION,
            body,
        } => body,
        other => {
            return Err(ProtocolError::UnexpectedMessage {
                tag: other.tag(),
                phase: "RowDescription walk",
            }
            .into())
        }
    };
    let malformed = |what| {
        MaskError::Protocol(ProtocolError::Malformed {
            tag: backend::ROW_DESCRIPTION,
            what,
        })
    };
    // Unsigned, as libpq reads it (the server never sends more than 1664 fields).
    let (count, mut rest) = match body.split_first_chunk::<2>() {
        Some((c, rest)) => (u16::from_be_bytes(*c), rest),
        None => return Err(malformed("truncated field count")),
    };
    let mut remaining = count;
    let mut failed = false;
    Ok(std::iter::from_fn(move || {
        if failed {
            return None;
        }
        if remaining == 0 {
            if rest.is_empty() {
                return None;
            }
            failed = true;
            return Some(Err(malformed("trailing bytes after last field")));
        }
        remaining -= 1;
        let parsed = (|| {
            let nul = memchr::memchr(0, rest).ok_or(malformed("missing NUL terminator"))?;
            let name = &rest[..nul];
            let f = rest
                .get(nul + 1..nul + 19)
                .ok_or(malformed("truncated field"))?;
            let u32_at = |i: usize| u32::from_be_bytes([f[i], f[i + 1], f[i + 2], f[i + 3]]);
            let i16_at = |i: usize| i16::from_be_bytes([f[i], f[i + 1]]);
            let field = FieldDescription {
                name,
                table_oid: u32_at(0),
                column_id: i16_at(4),
                type_oid: u32_at(6),
                type_size: i16_at(10),
                type_modifier: i32::from_be_bytes([f[12], f[13], f[14], f[15]]),
                format: i16_at(16),
            };
            rest = &rest[nul + 19..];
            Ok(field)
        })();
        failed = parsed.is_err();
        Some(parsed)
    }))
}

#[derive(Clone, Debug)]
struct ColumnPlan {
    ty: ColumnType,
    mask: Option<ColumnMask>,
    /// Detectors run over this column's values (not masked, scanned type).
    scan: bool,
}

/// What to do with each column of a result set: built once per RowDescription (and result
/// formats), then applied to every row. Immutable; share it by reference.
#[derive(Clone, Debug)]
pub struct RowPlan {
    columns: Box<[ColumnPlan]>,
    /// One past the last column that needs work; rows are walked no further.
    work_end: usize,
    /// Every masked column rewrites any value in place, so no fit check is needed.
    always_in_place: bool,
    /// The only column needing work, when there is exactly one (the common case: a fast path).
    single: Option<usize>,
    detectors: Detectors,
}

impl RowPlan {
    /// A plan from each column's type and strategy (`None` = untouched), in column order.
    /// `detectors` run over every unmasked column whose type is scanned
    /// ([`TypeKind::scanned`](crate::TypeKind::scanned)); pass [`Detectors::NONE`] to skip them.
    pub fn new(
        columns: impl IntoIterator<Item = (ColumnType, Option<Strategy>)>,
        detectors: Detectors,
    ) -> RowPlan {
        let columns: Box<[ColumnPlan]> = columns
            .into_iter()
            .map(|(ty, strategy)| {
                let mask = strategy.map(|s| ColumnMask::new(ty, s));
                let scan = mask.is_none() && !detectors.is_empty() && ty.kind().scanned(ty.format);
                ColumnPlan { ty, mask, scan }
            })
            .collect();
        let work_end = columns
            .iter()
            .rposition(|c| c.mask.is_some() || c.scan)
            .map_or(0, |i| i + 1);
        let always_in_place = columns
            .iter()
            .filter_map(|c| c.mask.as_ref())
            .all(ColumnMask::always_in_place);
        let mut work = columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.mask.is_some() || c.scan);
        let single = match (work.next(), work.next()) {
            (Some((i, _)), None) => Some(i),
            _ => None,
        };
        RowPlan {
            columns,
            work_end,
            always_in_place,
            single,
            detectors,
        }
    }

    /// A plan from a RowDescription frame. `result_formats` are the Bind message's result
    /// format codes when the description came from a Describe of a *statement* (whose format
    /// codes are all 0): none means all text, one applies to every column, otherwise one per
    /// column. `None` takes the codes from the RowDescription itself (a portal's Describe or a
    /// simple Query). `rule` picks each column's strategy from its description and index.
    pub fn from_row_description(
        frame: &[u8],
        result_formats: Option<&[i16]>,
        detectors: Detectors,
        mut rule: impl FnMut(usize, &FieldDescription<'_>) -> Option<Strategy>,
    ) -> Result<RowPlan, MaskError> {
        let mut columns = Vec::new();
        for (i, field) in row_description_fields(frame)?.enumerate() {
            let field = field?;
            let code = match result_formats {
                None => field.format,
                Some([]) => 0,
                Some([one]) => *one,
                Some(codes) => *codes.get(i).ok_or(MaskError::ColumnCount {
                    expected: codes.len(),
                    got: i + 1,
                })?,
            };
            let format = Format::from_code(code).ok_or(MaskError::FormatCode(code))?;
            let ty = ColumnType {
                oid: field.type_oid,
                format,
            };
            columns.push((ty, rule(i, &field)));
        }
        if let Some(codes) = result_formats {
            if codes.len() > 1 && codes.len() != columns.len() {
                return Err(MaskError::ColumnCount {
                    expected: codes.len(),
                    got: columns.len(),
                });
            }
        }
        Ok(RowPlan::new(columns, detectors))
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        self.columns.len()
    }

    /// Whether the plan has no columns.
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// Whether rows pass through untouched (nothing masked, nothing scanned): the data plane can
    /// skip the call.
    pub fn is_noop(&self) -> bool {
        self.work_end == 0
    }

    /// Column `i`'s type.
    pub fn column_type(&self, i: usize) -> Option<ColumnType> {
        self.columns.get(i).map(|c| c.ty)
    }

    /// Column `i`'s mask, if it is masked.
    pub fn column_mask(&self, i: usize) -> Option<&ColumnMask> {
        self.columns.get(i)?.mask.as_ref()
    }

    /// Indexes of the masked columns (for the audit record).
    pub fn masked_columns(&self) -> impl Iterator<Item = usize> + '_ {
        self.columns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.mask.as_ref().map(|_| i))
    }

    /// The detectors this plan runs.
    pub fn detectors(&self) -> Detectors {
        self.detectors
    }

    fn check_count(&self, got: u16) -> Result<(), MaskError> {
        if usize::from(got) != self.columns.len() {
            return Err(MaskError::ColumnCount {
                expected: self.columns.len(),
                got: usize::from(got),
            });
        }
        Ok(())
    }
}

/// How [`mask_row`] produced its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rewrite {
    /// The frame was rewritten where it lies (or needed no change): forward it.
    InPlace,
    /// The masked row was appended to `out`: forward that instead of the frame.
    Copied,
}

/// Masks one DataRow: in place when possible, else into `out`. The frame is left unmodified
/// when the result is [`Rewrite::Copied`].
pub fn mask_row(
    frame: &mut [u8],
    plan: &RowPlan,
    out: &mut BytesMut,
) -> Result<Rewrite, MaskError> {
    if mask_row_in_place(frame, plan)? {
        Ok(Rewrite::InPlace)
    } else {
        mask_row_into(frame, plan, out)?;
        Ok(Rewrite::Copied)
    }
}

/// Work items gathered per walk of a row in [`mask_row_in_place`].
const BATCH: usize = 8;

/// Masks a DataRow frame (header included) where it lies, if every masked value keeps its
/// length. The row is walked (and validated) up to the last column that needs work; the bytes
/// after it are forwarded as they are. Returns `Ok(false)`, with the frame untouched, when some value would change length:
/// call [`mask_row_into`] then. Detector findings are always overwritten in place.
pub fn mask_row_in_place(frame: &mut [u8], plan: &RowPlan) -> Result<bool, MaskError> {
    if plan.is_noop() {
        let walk = data_row_ranges(frame)?;
        plan.check_count(walk.columns())?;
        return Ok(true);
    }
    if let Some(i) = plan.single {
        return rewrite_single(frame, plan, i);
    }
    // Walk with the codec's validating iterator, gathering (column, range) for the columns that
    // need work; then rewrite them. The first walk also checks every masked value fits, so
    // nothing is written unless all of them do.
    let mut done = 0; // work items already rewritten
    loop {
        let mut batch = [(0usize, 0usize, 0usize); BATCH];
        let mut n = 0;
        let mut more = false;
        {
            let walk = data_row_ranges(frame)?;
            plan.check_count(walk.columns())?;
            let mut seen = 0;
            for (i, r) in walk.take(plan.work_end).enumerate() {
                let Some(r) = r? else { continue };
                let col = &plan.columns[i];
                if let Some(m) = &col.mask {
                    if done == 0 && !plan.always_in_place && !m.fits_in_place(&frame[r.clone()]) {
                        return Ok(false);
                    }
                } else if !col.scan {
                    continue;
                }
                if seen < done {
                    seen += 1;
                    continue;
                }
                if n == BATCH {
                    more = true;
                    if plan.always_in_place || done > 0 {
                        break;
                    }
                    continue; // keep checking fits on the first walk
                }
                batch[n] = (i, r.start, r.end);
                n += 1;
                seen += 1;
            }
        }
        for &(i, start, end) in &batch[..n] {
            let col = &plan.columns[i];
            let v = &mut frame[start..end];
            match &col.mask {
                Some(m) => m.apply_fitting(v),
                None => {
                    plan.detectors.scrub(v, col.ty.kind().replace_style());
                }
            }
        }
        done += n;
        if !more {
            return Ok(true);
        }
    }
}

/// [`mask_row_in_place`] for a plan with one column needing work, `i` (the last one walked).
fn rewrite_single(frame: &mut [u8], plan: &RowPlan, i: usize) -> Result<bool, MaskError> {
    let range = {
        let walk = data_row_ranges(frame)?;
        plan.check_count(walk.columns())?;
        let mut last = None;
        for r in walk.take(i + 1) {
            last = r?;
        }
        last
    };
    let Some(r) = range else {
        return Ok(true); // NULL stays NULL
    };
    let col = &plan.columns[i];
    let v = &mut frame[r];
    match &col.mask {
        Some(m) => {
            if !plan.always_in_place && !m.fits_in_place(v) {
                return Ok(false);
            }
            m.apply_fitting(v);
        }
        None => {
            plan.detectors.scrub(v, col.ty.kind().replace_style());
        }
    }
    Ok(true)
}

/// Appends the masked form of a DataRow frame to `out`: untouched spans are copied as whole
/// slices, masked values and their length words rewritten, the message length patched. On
/// error nothing is left appended.
pub fn mask_row_into(frame: &[u8], plan: &RowPlan, out: &mut BytesMut) -> Result<(), MaskError> {
    let start = out.len();
    let result = write_row(frame, plan, out);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn write_row(frame: &[u8], plan: &RowPlan, out: &mut BytesMut) -> Result<(), MaskError> {
    let walk = data_row_ranges(frame)?;
    plan.check_count(walk.columns())?;
    let msg_start = out.len();
    out.reserve(frame.len());
    let mut copied = 0; // frame bytes already appended
    for (i, r) in walk.take(plan.work_end).enumerate() {
        let Some(r) = r? else { continue };
        let col = &plan.columns[i];
        if let Some(m) = &col.mask {
            let len_word = r.start - 4;
            out.put_slice(&frame[copied..len_word]);
            let len_pos = out.len();
            out.put_i32(0);
            if m.write(&frame[r.clone()], out) {
                let len =
                    i32::try_from(out.len() - len_pos - 4).map_err(|_| MaskError::TooLarge)?;
                out[len_pos..len_pos + 4].copy_from_slice(&len.to_be_bytes());
            } else {
                out.truncate(len_pos);
                out.put_i32(-1);
            }
            copied = r.end;
        } else if col.scan {
            out.put_slice(&frame[copied..r.end]);
            let at = out.len() - r.len();
            plan.detectors
                .scrub(&mut out[at..], col.ty.kind().replace_style());
            copied = r.end;
        }
    }
    out.put_slice(&frame[copied..]);
    patch_len(out, msg_start)
}

/// Writes the length word of the message starting at `msg_start` from what follows it.
fn patch_len(out: &mut BytesMut, msg_start: usize) -> Result<(), MaskError> {
    let len = i32::try_from(out.len() - msg_start - 1).map_err(|_| MaskError::TooLarge)?;
    out[msg_start + 1..msg_start + HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// COPY ... TO STDOUT, text format
// ---------------------------------------------------------------------------------------------

/// Options of a text-format COPY (`DELIMITER`, `NULL`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyText {
    /// Field delimiter, tab by default.
    pub delimiter: u8,
    /// The NULL marker, `\N` by default.
    pub null: Box<[u8]>,
}

impl Default for CopyText {
    fn default() -> Self {
        CopyText {
            delimiter: b'\t',
            null: (*b"\\N").into(),
        }
    }
}

/// Masks a CopyData frame of a text-format COPY TO STDOUT: one or more whole rows, each ending
/// in a newline, fields split by the delimiter. The plan's columns must be in
/// [`Format::Text`] (COPY text is each type's text output). Values with backslash escapes are
/// unescaped before masking (the one case that allocates), and masked output is escaped again.
pub fn mask_copy_data(
    frame: &[u8],
    plan: &RowPlan,
    opts: &CopyText,
    out: &mut BytesMut,
) -> Result<(), MaskError> {
    let start = out.len();
    let result = write_copy(frame, plan, opts, out);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn write_copy(
    frame: &[u8],
    plan: &RowPlan,
    opts: &CopyText,
    out: &mut BytesMut,
) -> Result<(), MaskError> {
    let body = match backend::parse(frame)? {
        BackendMessage::Other {
            tag: backend::COPY_DATA,
            body,
        } => body,
        other => {
            return Err(ProtocolError::UnexpectedMessage {
                tag: other.tag(),
                phase: "COPY data masking",
            }
            .into())
        }
    };
    if plan.columns.iter().any(|c| c.ty.format != Format::Text) {
        return Err(MaskError::Copy("plan is not in text format"));
    }
    if !body.is_empty() && body.last() != Some(&b'\n') {
        return Err(MaskError::Copy("CopyData does not end at a row boundary"));
    }
    let msg_start = out.len();
    out.put_u8(backend::COPY_DATA);
    out.put_i32(0);
    out.reserve(body.len());
    for line in body.split_inclusive(|&b| b == b'\n') {
        let line = &line[..line.len() - 1];
        let mut fields = 0;
        for (i, field) in copy_fields(line, opts.delimiter).enumerate() {
            fields += 1;
            if i > 0 {
                out.put_u8(opts.delimiter);
            }
            let Some(col) = plan.columns.get(i) else {
                continue; // counted, reported below
            };
            if *field == *opts.null {
                out.put_slice(field);
                continue;
            }
            if let Some(m) = &col.mask {
                let value = unescape(field)?;
                let at = out.len();
                if m.write(&value, out) {
                    escape_tail(out, at, opts.delimiter);
                } else {
                    out.put_slice(&opts.null);
                }
            } else if col.scan {
                let at = out.len();
                out.put_slice(field);
                plan.detectors
                    .scrub(&mut out[at..], col.ty.kind().replace_style());
            } else {
                out.put_slice(field);
            }
        }
        if fields != plan.columns.len() {
            return Err(MaskError::ColumnCount {
                expected: plan.columns.len(),
                got: fields,
            });
        }
        out.put_u8(b'\n');
    }
    patch_len(out, msg_start)
}

/// The fields of one COPY text line (without its newline): split at each delimiter that is not
/// escaped. `COPY TO` writes a delimiter inside a value as backslash + delimiter (`\|`), so a
/// plain split would cut such a value in two.
fn copy_fields(line: &[u8], delimiter: u8) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(line);
    std::iter::from_fn(move || {
        let s = rest?;
        let mut i = 0;
        while let Some(k) = memchr::memchr2(delimiter, b'\\', &s[i..]) {
            let k = i + k;
            if s[k] == delimiter {
                rest = Some(&s[k + 1..]);
                return Some(&s[..k]);
            }
            i = (k + 2).min(s.len()); // skip the escaped byte
        }
        rest = None;
        Some(s)
    })
}

/// A COPY text field's value: borrowed when it has no backslash, else decoded.
fn unescape(field: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, MaskError> {
    if memchr::memchr(b'\\', field).is_none() {
        return Ok(field.into());
    }
    let mut v = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let b = field[i];
        if b != b'\\' {
            v.push(b);
            i += 1;
            continue;
        }
        let Some(&c) = field.get(i + 1) else {
            return Err(MaskError::Copy("backslash at end of field"));
        };
        i += 2;
        match c {
            b'b' => v.push(8),
            b'f' => v.push(12),
            b'n' => v.push(b'\n'),
            b'r' => v.push(b'\r'),
            b't' => v.push(b'\t'),
            b'v' => v.push(11),
            b'0'..=b'7' => {
                let mut n = u32::from(c - b'0');
                for _ in 0..2 {
                    match field.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            n = n * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                v.push((n & 0xff) as u8);
            }
            b'x' if field.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                let mut n = 0u8;
                for _ in 0..2 {
                    match field.get(i) {
                        Some(&d) if d.is_ascii_hexdigit() => {
                            n = n * 16 + (d as char).to_digit(16).unwrap_or(0) as u8;
                            i += 1;
                        }
                        _ => break,
                    }
                }
                v.push(n);
            }
            other => v.push(other),
        }
    }
    Ok(v.into())
}

/// Escapes, in COPY text form, what was appended to `out` since `at` (rarely needed).
fn escape_tail(out: &mut BytesMut, at: usize, delimiter: u8) {
    let special =
        |b: u8| matches!(b, b'\\' | b'\n' | b'\r' | b'\t' | 8 | 11 | 12) || b == delimiter;
    if !out[at..].iter().any(|&b| special(b)) {
        return;
    }
    let raw = out.split_off(at);
    for &b in raw.iter() {
        let esc = match b {
            b'\\' => b'\\',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            8 => b'b',
            11 => b'v',
            12 => b'f',
            _ if b == delimiter => b,
            _ => {
                out.put_u8(b);
                continue;
            }
        };
        out.put_u8(b'\\');
        out.put_u8(esc);
    }
}

// ---------------------------------------------------------------------------------------------
// ErrorResponse / NoticeResponse / NotificationResponse
// ---------------------------------------------------------------------------------------------

/// What to scrub from error and notice messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScrubOptions {
    /// Detectors run over every free-text field (all but severity, SQLSTATE, position, file,
    /// line and routine).
    pub detectors: Detectors,
    /// For data exceptions (SQLSTATE class 22) and integrity violations (class 23), also blank
    /// the values the server quotes: `"..."` in the message, `Key (..)=(...)` and
    /// `Failing row contains (...)` in the detail. These echo column values verbatim
    /// (`invalid input syntax for type integer: "John Smith"`), which detectors cannot
    /// recognise in general.
    pub redact_data_values: bool,
}

impl Default for ScrubOptions {
    fn default() -> Self {
        ScrubOptions {
            detectors: Detectors::ALL,
            redact_data_values: true,
        }
    }
}

/// Scrubs an ErrorResponse or NoticeResponse frame in place (same length, still valid UTF-8);
/// returns how many spans were overwritten.
pub fn scrub_error_response(frame: &mut [u8], opts: &ScrubOptions) -> Result<usize, MaskError> {
    let data_class = match backend::parse(frame)? {
        BackendMessage::ErrorResponse(f) | BackendMessage::NoticeResponse(f) => f
            .code()
            .is_some_and(|c| c.starts_with("22") || c.starts_with("23")),
        other => {
            return Err(ProtocolError::UnexpectedMessage {
                tag: other.tag(),
                phase: "error scrubbing",
            }
            .into())
        }
    };
    // Validated above: code byte, NUL-terminated value, ..., final NUL.
    let mut count = 0;
    let mut i = HEADER_LEN;
    while i < frame.len() && frame[i] != 0 {
        let code = frame[i];
        let value_start = i + 1;
        let Some(len) = memchr::memchr(0, &frame[value_start..]) else {
            break;
        };
        let value = value_start..value_start + len;
        let value_bytes = &mut frame[value.clone()];
        if !matches!(code, b'S' | b'V' | b'C' | b'P' | b'p' | b'F' | b'L' | b'R') {
            count += opts.detectors.scrub(value_bytes, Replace::Text);
        }
        if opts.redact_data_values && data_class {
            count += match code {
                b'M' => blank_quoted(value_bytes),
                b'D' => blank_row_values(value_bytes),
                _ => 0,
            };
        }
        i = value.end + 1;
    }
    Ok(count)
}

/// Blanks the inside of every `"..."` pair with `*`.
fn blank_quoted(v: &mut [u8]) -> usize {
    let mut count = 0;
    let mut open: Option<usize> = None;
    for i in 0..v.len() {
        if v[i] == b'"' {
            match open.take() {
                Some(s) => {
                    v[s + 1..i].fill(b'*');
                    count += 1;
                }
                None => open = Some(i),
            }
        }
    }
    count
}

/// Blanks `(...)` after `)=(` or `contains (`, to the last `)`.
fn blank_row_values(v: &mut [u8]) -> usize {
    let start = memchr::memmem::find(v, b")=(")
        .map(|i| i + 3)
        .or_else(|| memchr::memmem::find(v, b"contains (").map(|i| i + 10));
    let end = memchr::memrchr(b')', v);
    match (start, end) {
        (Some(s), Some(e)) if s <= e => {
            v[s..e].fill(b'*');
            1
        }
        (Some(s), _) => {
            v[s..].fill(b'*');
            1
        }
        _ => 0,
    }
}

/// Scrubs a NotificationResponse frame's payload in place; returns how many spans were
/// overwritten.
pub fn scrub_notification(frame: &mut [u8], detectors: Detectors) -> Result<usize, MaskError> {
    let payload = notification_payload(frame)?;
    Ok(detectors.scrub(&mut frame[payload], Replace::Text))
}

fn notification_payload(frame: &[u8]) -> Result<Range<usize>, MaskError> {
    let malformed = |what| {
        MaskError::Protocol(ProtocolError::Malformed {
            tag: backend::NOTIFICATION,
            what,
        })
    };
    match backend::parse(frame)? {
        BackendMessage::Other {
            tag: backend::NOTIFICATION,
            body,
        } => {
            let channel = body.get(4..).ok_or(malformed("truncated pid"))?;
            let c = memchr::memchr(0, channel).ok_or(malformed("missing NUL terminator"))?;
            let payload = &channel[c + 1..];
            let p = memchr::memchr(0, payload).ok_or(malformed("missing NUL terminator"))?;
            if p + 1 != payload.len() {
                return Err(malformed("trailing bytes"));
            }
            let start = HEADER_LEN + 4 + c + 1;
            Ok(start..start + p)
        }
        other => Err(ProtocolError::UnexpectedMessage {
            tag: other.tag(),
            phase: "notification scrubbing",
        }
        .into()),
    }
}

#[cfg(test)]
mod tests;

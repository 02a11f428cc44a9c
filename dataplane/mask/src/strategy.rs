//! Masking strategies, and how each one produces a valid value for each type family and format.
//!
//! A [`Strategy`] is what a policy says ("redact", "keep the last 4", "keyed hash"...); a
//! [`ColumnMask`] is a strategy bound to one result column's [`ColumnType`], built once per
//! RowDescription. Its output always parses as the column's declared type in the column's format,
//! or is SQL NULL; never the original value. The rules per family are on [`ColumnMask`].

use std::fmt;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::types::{ColumnType, Format, TypeKind};
use crate::MaskError;

/// Domain-separation bytes so a hash and a token of the same value are unrelated.
const DOMAIN_HASH: u8 = b'h';
const DOMAIN_TOKEN: u8 = b't';

/// Raw bytes produced by a keyed hash of a `bytea` value under [`Strategy::tokenize`].
const BYTEA_TOKEN_BYTES: usize = 16;

/// A secret key for keyed hashing and tokenising (HMAC-SHA-256), keyed once at construction.
///
/// Its `Debug` output never shows the key.
#[derive(Clone)]
pub struct HashKey {
    mac: Hmac<Sha256>,
}

impl HashKey {
    /// Shortest key accepted: 16 bytes (128 bits).
    pub const MIN_LEN: usize = 16;

    /// Keys an HMAC-SHA-256 with `key` (at least [`HashKey::MIN_LEN`] bytes).
    pub fn new(key: &[u8]) -> Result<HashKey, MaskError> {
        if key.len() < Self::MIN_LEN {
            return Err(MaskError::InvalidStrategy(
                "hash key must be at least 16 bytes",
            ));
        }
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
            .map_err(|_| MaskError::InvalidStrategy("invalid hash key"))?;
        Ok(HashKey { mac })
    }

    /// HMAC-SHA-256 of `domain || value`.
    fn digest(&self, domain: u8, value: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(&[domain]);
        mac.update(value);
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Debug for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HashKey(..)")
    }
}

/// How a column's values are masked. Build with the constructors, which validate their inputs.
#[derive(Clone, Debug)]
pub struct Strategy(Kind);

#[derive(Clone, Debug)]
enum Kind {
    /// Fixed replacement text.
    RedactText(Box<[u8]>),
    /// Every byte replaced by one ASCII byte: same length, rewritten in place.
    RedactFill(u8),
    Partial {
        keep_first: usize,
        keep_last: usize,
        fill: char,
    },
    Hash {
        key: Arc<HashKey>,
        hex_len: usize,
    },
    Tokenize {
        key: Arc<HashKey>,
    },
    Null,
}

impl Strategy {
    /// Replaces text values with `text` (no NUL). Non-text families get their own fixed
    /// value (0, the nil UUID, ...; see [`ColumnMask`]).
    pub fn redact(text: &str) -> Result<Strategy, MaskError> {
        if text.contains('\0') {
            return Err(MaskError::InvalidStrategy("redaction text contains NUL"));
        }
        Ok(Strategy(Kind::RedactText(text.as_bytes().into())))
    }

    /// Replaces every byte of a text value with `fill` (printable ASCII, not `"` or `\`), so the
    /// value keeps its length and is rewritten in place. Non-text families get zeros.
    pub fn redact_fill(fill: u8) -> Result<Strategy, MaskError> {
        if !fill.is_ascii_graphic() || fill == b'"' || fill == b'\\' {
            return Err(MaskError::InvalidStrategy(
                "fill must be printable ASCII other than '\"' and '\\'",
            ));
        }
        Ok(Strategy(Kind::RedactFill(fill)))
    }

    /// Keeps the first `keep_first` and last `keep_last` characters (UTF-8 characters; hex digits
    /// for `uuid`/`bytea`, digits for numbers) and replaces each other character with `fill`
    /// (`0` for numbers). A value no longer than `keep_first + keep_last` is masked entirely.
    pub fn partial(keep_first: u16, keep_last: u16, fill: char) -> Result<Strategy, MaskError> {
        if fill.is_control() || fill == '"' || fill == '\\' {
            return Err(MaskError::InvalidStrategy(
                "fill must be printable and not '\"' or '\\'",
            ));
        }
        Ok(Strategy(Kind::Partial {
            keep_first: usize::from(keep_first),
            keep_last: usize::from(keep_last),
            fill,
        }))
    }

    /// Keeps the last `n` characters, masking the rest with `*`.
    pub fn keep_last(n: u16) -> Strategy {
        Strategy(Kind::Partial {
            keep_first: 0,
            keep_last: usize::from(n),
            fill: '*',
        })
    }

    /// Keyed hash: text becomes the first `hex_len` (1..=64) lowercase hex digits of
    /// HMAC-SHA-256(key, value); other families a value derived from the same digest.
    /// Deterministic, so equal values still join.
    pub fn keyed_hash(key: Arc<HashKey>, hex_len: u8) -> Result<Strategy, MaskError> {
        if !(1..=64).contains(&hex_len) {
            return Err(MaskError::InvalidStrategy("hex_len must be 1..=64"));
        }
        Ok(Strategy(Kind::Hash {
            key,
            hex_len: usize::from(hex_len),
        }))
    }

    /// Deterministic, format-preserving token: in text, ASCII digits stay digits and letters stay
    /// letters of the same case (from a keystream seeded by HMAC-SHA-256 of the value), other ASCII
    /// (separators) is kept and each non-ASCII character becomes one lowercase letter.
    pub fn tokenize(key: Arc<HashKey>) -> Strategy {
        Strategy(Kind::Tokenize { key })
    }

    /// SQL NULL, whatever the type.
    pub fn null() -> Strategy {
        Strategy(Kind::Null)
    }

    /// Short name for audit records: `redact`, `partial`, `hash`, `tokenize` or `null`.
    pub fn name(&self) -> &'static str {
        match self.0 {
            Kind::RedactText(_) | Kind::RedactFill(_) => "redact",
            Kind::Partial { .. } => "partial",
            Kind::Hash { .. } => "hash",
            Kind::Tokenize { .. } => "tokenize",
            Kind::Null => "null",
        }
    }
}

/// A [`Strategy`] bound to one column's type and format: what the row rewriter calls per value.
///
/// Validity rules (text format unless noted; NULL input always stays NULL):
///
/// | family | redact text | redact fill | partial | hash / tokenize | malformed input |
/// |---|---|---|---|---|---|
/// | text, varchar, name, `"char"`, unknown (both formats) | the text | fill per byte | masked chars → fill | hex / token | — |
/// | bpchar | as text, padded with spaces to the value's char count | | | | — |
/// | json, jsonb (binary: version byte 1 kept) | JSON string | `"***"` (or `0`s if shorter than 2) | JSON string | JSON string | NULL |
/// | int2/4/8 | `0` | `0` per char | masked digits → `0` | hash mod (max+1); tokenize = hash | NULL |
/// | int2/4/8 binary | 0 | 0 | masked decimal digits → 0 | as text, big-endian | NULL if width wrong |
/// | numeric | `0` | digits → `0` | masked digits → `0` | decimal u64; tokenize: digits → digits | NULL |
/// | numeric binary | 0 | 0 | 0 | u64 as numeric | NULL |
/// | float4/8 (both formats) | 0 | 0 | masked digits → `0` (text) / 0 | integer < 2^24 / 2^53 | NULL |
/// | uuid (both formats) | nil UUID | nil UUID | masked hex digits → 0 | version-8 UUID from the digest | NULL |
/// | bytea | `\x` + hex of the text | hex digits → `0` | masked hex digits → `0` | `\x` + digest hex | `\x` (empty) |
/// | bytea binary | the text's bytes | zero bytes | masked bytes → 0 | digest bytes | — |
/// | anything else (bool, date/time, xml, arrays, enums, ...) | NULL | NULL | NULL | NULL | NULL |
///
/// Dates and times are NULL rather than a fake date because their text form depends on the
/// session's `DateStyle`, and a plausible fake date is indistinguishable from a real one.
/// Hashes of integers and UUIDs are taken over their canonical text, so a value hashes the same
/// in text and binary format and across `int2`/`int4`/`int8` before the range reduction.
#[derive(Clone, Debug)]
pub struct ColumnMask {
    kind: TypeKind,
    binary: bool,
    strategy: Strategy,
}

impl ColumnMask {
    /// Binds `strategy` to a column of type `ty`.
    pub fn new(ty: ColumnType, strategy: Strategy) -> ColumnMask {
        ColumnMask {
            kind: ty.kind(),
            binary: ty.format == Format::Binary,
            strategy,
        }
    }

    /// The strategy.
    pub fn strategy(&self) -> &Strategy {
        &self.strategy
    }

    /// The type family.
    pub fn kind(&self) -> TypeKind {
        self.kind
    }

    /// Masks one value into a new vector (`None` = NULL). Convenience for tests and cold paths;
    /// the row rewriter uses [`ColumnMask::write`] and [`ColumnMask::apply_in_place`].
    pub fn mask(&self, value: Option<&[u8]>) -> Option<Vec<u8>> {
        let value = value?;
        let mut out = BytesMut::new();
        self.write(value, &mut out).then(|| out.to_vec())
    }

    /// Whether every non-NULL value can be rewritten in place, whatever its content and length
    /// (so the row rewriter can skip [`ColumnMask::fits_in_place`]).
    pub fn always_in_place(&self) -> bool {
        matches!(
            (&self.strategy.0, self.kind),
            (Kind::RedactFill(_), TypeKind::Text | TypeKind::Bpchar)
        )
    }

    /// Whether masking this non-NULL value keeps its length, so [`ColumnMask::apply_in_place`]
    /// can rewrite it where it lies.
    pub fn fits_in_place(&self, v: &[u8]) -> bool {
        use TypeKind as T;
        let s = &self.strategy.0;
        match self.kind {
            T::Other => false,
            _ if matches!(s, Kind::Null) => false,
            T::Text | T::Bpchar => match s {
                Kind::RedactText(t) => {
                    t.len() == v.len() && (self.kind == T::Text || char_count(t) >= char_count(v))
                }
                Kind::RedactFill(_) => true,
                Kind::Partial { fill, .. } => fill.is_ascii() && v.is_ascii(),
                Kind::Hash { hex_len, .. } => *hex_len == v.len() && v.is_ascii(),
                Kind::Tokenize { .. } => v.is_ascii(),
                Kind::Null => false,
            },
            T::Json | T::Jsonb => {
                matches!(s, Kind::RedactFill(_)) && self.json_text(v).is_some_and(|t| !t.is_empty())
            }
            T::Int2 | T::Int4 | T::Int8 => {
                if self.binary {
                    v.len() == int_width(self.kind)
                } else {
                    matches!(s, Kind::RedactFill(_) | Kind::Partial { .. }) && is_int_text(v)
                }
            }
            T::Numeric => {
                if self.binary {
                    v.len() == 8
                        && matches!(
                            s,
                            Kind::RedactText(_) | Kind::RedactFill(_) | Kind::Partial { .. }
                        )
                } else {
                    matches!(
                        s,
                        Kind::RedactFill(_) | Kind::Partial { .. } | Kind::Tokenize { .. }
                    ) && numeric_text(v).is_some()
                }
            }
            T::Float4 | T::Float8 => {
                if self.binary {
                    v.len() == float_width(self.kind)
                } else {
                    matches!(s, Kind::RedactFill(_) | Kind::Partial { .. }) && float_text_ok(v)
                }
            }
            T::Uuid => {
                if self.binary {
                    v.len() == 16
                } else {
                    is_uuid_text(v)
                }
            }
            T::Bytea => {
                matches!(s, Kind::RedactFill(_) | Kind::Partial { .. })
                    && (self.binary || is_hex_bytea(v))
            }
        }
    }

    /// Rewrites `v` where it lies. Call only after [`ColumnMask::fits_in_place`] returned true
    /// for these bytes; otherwise nothing is written and `false` is returned.
    pub fn apply_in_place(&self, v: &mut [u8]) -> bool {
        if !self.fits_in_place(v) {
            return false;
        }
        self.apply_fitting(v);
        true
    }

    /// [`ColumnMask::apply_in_place`] without the check (the row rewriter checked first).
    pub(crate) fn apply_fitting(&self, v: &mut [u8]) {
        use TypeKind as T;
        let s = &self.strategy.0;
        match self.kind {
            T::Text | T::Bpchar => match s {
                Kind::RedactText(t) => v.copy_from_slice(t),
                Kind::RedactFill(b) => v.fill(*b),
                Kind::Partial {
                    keep_first,
                    keep_last,
                    fill,
                } => {
                    let (a, b) = masked_char_range(v, *keep_first, *keep_last);
                    // ASCII fill over ASCII text (checked by fits_in_place).
                    v[a..b].fill(u8::try_from(u32::from(*fill)).unwrap_or(b'*'));
                }
                Kind::Hash { key, hex_len } => {
                    let d = key.digest(DOMAIN_HASH, v);
                    hex_into(&d, &mut v[..*hex_len]);
                }
                Kind::Tokenize { key } => {
                    let mut ks = Keystream::new(key, v);
                    for b in v.iter_mut() {
                        *b = ks.token_ascii(*b);
                    }
                }
                Kind::Null => {}
            },
            T::Json | T::Jsonb => {
                if let Kind::RedactFill(b) = s {
                    let t = if self.kind == T::Jsonb && self.binary {
                        &mut v[1..]
                    } else {
                        v
                    };
                    if t.len() >= 2 {
                        let n = t.len();
                        t[0] = b'"';
                        t[1..n - 1].fill(*b);
                        t[n - 1] = b'"';
                    } else {
                        t.fill(b'0');
                    }
                }
            }
            T::Int2 | T::Int4 | T::Int8 | T::Numeric | T::Float4 | T::Float8 if !self.binary => {
                match s {
                    Kind::Partial {
                        keep_first,
                        keep_last,
                        ..
                    } if self.kind != T::Numeric || numeric_text(v) == Some(true) => {
                        mask_digits(v, *keep_first, *keep_last)
                    }
                    Kind::Tokenize { key } if numeric_text(v) == Some(true) => {
                        tokenize_numeric(key, v)
                    }
                    _ => zero_number_text(v),
                }
            }
            T::Int2 | T::Int4 | T::Int8 => {
                let n = read_int(v);
                let out = match s {
                    Kind::Partial {
                        keep_first,
                        keep_last,
                        ..
                    } => {
                        let mut buf = [0u8; 20];
                        let len = write_i64(n, &mut buf);
                        mask_digits(&mut buf[..len], *keep_first, *keep_last);
                        parse_digits(&buf[..len])
                    }
                    Kind::Hash { key, .. } | Kind::Tokenize { key } => {
                        let mut buf = [0u8; 20];
                        let len = write_i64(n, &mut buf);
                        hash_in_range(key, &buf[..len], int_max(self.kind))
                    }
                    _ => 0,
                };
                write_int(v, out);
            }
            T::Numeric => v.copy_from_slice(&[0; 8]),
            T::Float4 | T::Float8 => {
                let bits = match s {
                    Kind::Hash { key, .. } | Kind::Tokenize { key } => {
                        let h = key.digest(DOMAIN_HASH, v);
                        let n = u64::from_be_bytes(first8(&h));
                        if self.kind == T::Float4 {
                            // Exact in f32: below 2^24.
                            u64::from(((n & 0xff_ffff) as f32).to_bits())
                        } else {
                            ((n & ((1 << 53) - 1)) as f64).to_bits()
                        }
                    }
                    _ => 0,
                };
                write_int(v, i64::from_ne_bytes(bits.to_ne_bytes()));
            }
            T::Uuid => {
                let mut raw = [0u8; 16];
                if self.binary {
                    raw.copy_from_slice(v);
                } else {
                    parse_uuid_text(v, &mut raw);
                }
                match s {
                    Kind::Partial {
                        keep_first,
                        keep_last,
                        ..
                    } => mask_nibbles(&mut raw, *keep_first, *keep_last),
                    Kind::Hash { key, .. } | Kind::Tokenize { key } => {
                        let mut text = [0u8; 36];
                        format_uuid(&raw, &mut text);
                        let d = key.digest(DOMAIN_HASH, &text);
                        raw.copy_from_slice(&d[..16]);
                        raw[6] = (raw[6] & 0x0f) | 0x80; // version 8: custom
                        raw[8] = (raw[8] & 0x3f) | 0x80; // RFC 4122 variant
                    }
                    _ => raw = [0; 16],
                }
                if self.binary {
                    v.copy_from_slice(&raw);
                } else {
                    let mut text = [0u8; 36];
                    format_uuid(&raw, &mut text);
                    v.copy_from_slice(&text);
                }
            }
            T::Bytea => {
                let (keep_first, keep_last) = match s {
                    Kind::Partial {
                        keep_first,
                        keep_last,
                        ..
                    } => (*keep_first, *keep_last),
                    _ => (0, 0),
                };
                if self.binary {
                    let (a, b) = window(v.len(), keep_first, keep_last);
                    v[a..b].fill(0);
                } else {
                    let hex = &mut v[2..];
                    let (a, b) = window(hex.len(), keep_first, keep_last);
                    hex[a..b].fill(b'0');
                }
            }
            T::Other => {}
        }
    }

    /// Appends the masked form of the non-NULL value `v` to `out`; returns `false` (and appends
    /// nothing) when the masked value is SQL NULL.
    pub fn write(&self, v: &[u8], out: &mut BytesMut) -> bool {
        if self.fits_in_place(v) {
            let start = out.len();
            out.put_slice(v);
            self.apply_fitting(&mut out[start..]);
            return true;
        }
        self.write_resized(v, out)
    }

    /// The cases where the masked value's length differs from the input's (or is NULL).
    fn write_resized(&self, v: &[u8], out: &mut BytesMut) -> bool {
        use TypeKind as T;
        let s = &self.strategy.0;
        if matches!(s, Kind::Null) {
            return false;
        }
        match self.kind {
            T::Other => false,
            T::Text | T::Bpchar => {
                let start = out.len();
                match s {
                    Kind::RedactText(t) => out.put_slice(t),
                    Kind::RedactFill(b) => out.put_bytes(*b, v.len()),
                    Kind::Partial {
                        keep_first,
                        keep_last,
                        fill,
                    } => write_partial(v, *keep_first, *keep_last, *fill, out),
                    Kind::Hash { key, hex_len } => {
                        put_hex(out, &key.digest(DOMAIN_HASH, v), *hex_len)
                    }
                    Kind::Tokenize { key } => write_token(key, v, out),
                    Kind::Null => {}
                }
                if self.kind == T::Bpchar {
                    let want = char_count(v);
                    let got = char_count(&out[start..]);
                    if got < want {
                        out.put_bytes(b' ', want - got);
                    }
                }
                true
            }
            T::Json | T::Jsonb => {
                let Some(text) = self.json_text(v) else {
                    return false;
                };
                if self.kind == T::Jsonb && self.binary {
                    out.put_u8(1);
                }
                match s {
                    Kind::RedactText(t) => json_string(out, |o| o.put_slice(t)),
                    // Only an empty (invalid) value gets here.
                    Kind::RedactFill(_) => out.put_u8(b'0'),
                    Kind::Partial {
                        keep_first,
                        keep_last,
                        fill,
                    } => json_string(out, |o| {
                        write_partial(text, *keep_first, *keep_last, *fill, o)
                    }),
                    Kind::Hash { key, hex_len } => {
                        let d = key.digest(DOMAIN_HASH, text);
                        json_string(out, |o| put_hex(o, &d, *hex_len))
                    }
                    Kind::Tokenize { key } => json_string(out, |o| write_token(key, text, o)),
                    Kind::Null => {}
                }
                true
            }
            T::Int2 | T::Int4 | T::Int8 => {
                if self.binary || !is_int_text(v) {
                    return false; // wrong width / not an integer: fail closed
                }
                match s {
                    Kind::Hash { key, .. } | Kind::Tokenize { key } => put_u64(
                        out,
                        hash_in_range(key, v, int_max(self.kind)).unsigned_abs(),
                    ),
                    _ => out.put_u8(b'0'),
                }
                true
            }
            T::Numeric => {
                if self.binary {
                    return match s {
                        Kind::Hash { key, .. } | Kind::Tokenize { key } => {
                            let d = key.digest(DOMAIN_HASH, v);
                            put_numeric_u64(out, u64::from_be_bytes(first8(&d)));
                            true
                        }
                        _ => {
                            out.put_slice(&[0; 8]);
                            true
                        }
                    };
                }
                if numeric_text(v).is_none() {
                    return false;
                }
                match s {
                    Kind::Hash { key, .. } | Kind::Tokenize { key } => {
                        let d = key.digest(DOMAIN_HASH, v);
                        put_u64(out, u64::from_be_bytes(first8(&d)));
                    }
                    _ => out.put_u8(b'0'),
                }
                true
            }
            T::Float4 | T::Float8 => {
                if self.binary || !float_text_ok(v) {
                    return false;
                }
                match s {
                    Kind::Hash { key, .. } | Kind::Tokenize { key } => {
                        let d = key.digest(DOMAIN_HASH, v);
                        let n = u64::from_be_bytes(first8(&d));
                        let bits = if self.kind == T::Float4 { 24 } else { 53 };
                        put_u64(out, n & ((1 << bits) - 1));
                    }
                    _ => out.put_u8(b'0'),
                }
                true
            }
            // Wrong length or shape: not a value we can vouch for.
            T::Uuid => false,
            T::Bytea => {
                if !self.binary {
                    out.put_slice(b"\\x");
                }
                let digest_len = |hex_len: usize| hex_len.div_ceil(2);
                let bytes: &[u8] = match s {
                    Kind::RedactText(t) => t,
                    Kind::Hash { key, hex_len } => {
                        let d = key.digest(DOMAIN_HASH, v);
                        put_bytea(out, &d[..digest_len(*hex_len)], self.binary);
                        return true;
                    }
                    Kind::Tokenize { key } => {
                        let d = key.digest(DOMAIN_TOKEN, v);
                        put_bytea(out, &d[..BYTEA_TOKEN_BYTES], self.binary);
                        return true;
                    }
                    // Escape-format (`bytea_output = escape`) input: the empty bytea.
                    _ => &[],
                };
                put_bytea(out, bytes, self.binary);
                true
            }
        }
    }

    /// The JSON text of a json/jsonb value (after jsonb's binary version byte), or `None` if a
    /// binary jsonb value does not start with version 1.
    fn json_text<'v>(&self, v: &'v [u8]) -> Option<&'v [u8]> {
        if self.kind == TypeKind::Jsonb && self.binary {
            match v.split_first() {
                Some((1, rest)) => Some(rest),
                _ => None,
            }
        } else {
            Some(v)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Text helpers
// ---------------------------------------------------------------------------------------------

#[inline]
fn is_char_start(b: u8) -> bool {
    (b & 0xC0) != 0x80
}

/// Number of UTF-8 characters (lead bytes) in `v`.
pub(crate) fn char_count(v: &[u8]) -> usize {
    v.iter().filter(|&&b| is_char_start(b)).count()
}

/// Byte range of the characters to mask when keeping `first` characters at the start and `last`
/// at the end; the whole value when it has no more than `first + last` characters.
fn masked_char_range(v: &[u8], first: usize, last: usize) -> (usize, usize) {
    let mut a = 0;
    let mut seen = 0;
    while a < v.len() && seen < first {
        a += 1;
        while a < v.len() && !is_char_start(v[a]) {
            a += 1;
        }
        seen += 1;
    }
    let mut b = v.len();
    seen = 0;
    while b > 0 && seen < last {
        b -= 1;
        while b > 0 && !is_char_start(v[b]) {
            b -= 1;
        }
        seen += 1;
    }
    if b <= a {
        (0, v.len())
    } else {
        (a, b)
    }
}

fn write_partial(v: &[u8], first: usize, last: usize, fill: char, out: &mut BytesMut) {
    let (a, b) = masked_char_range(v, first, last);
    out.put_slice(&v[..a]);
    let mut enc = [0u8; 4];
    let fill = fill.encode_utf8(&mut enc).as_bytes();
    for _ in 0..char_count(&v[a..b]) {
        out.put_slice(fill);
    }
    out.put_slice(&v[b..]);
}

/// `(start, end)` of the middle of `len` units when keeping `first` and `last`; everything when
/// they overlap.
fn window(len: usize, first: usize, last: usize) -> (usize, usize) {
    if first.saturating_add(last) >= len {
        (0, len)
    } else {
        (first, len - last)
    }
}

/// Keystream for tokens: block 0 is HMAC(key, 't' || value), block k is SHA-256(block 0 || k).
struct Keystream {
    seed: [u8; 32],
    block: [u8; 32],
    idx: usize,
    counter: u32,
}

impl Keystream {
    fn new(key: &HashKey, value: &[u8]) -> Keystream {
        let seed = key.digest(DOMAIN_TOKEN, value);
        Keystream {
            seed,
            block: seed,
            idx: 0,
            counter: 0,
        }
    }

    fn next_byte(&mut self) -> u8 {
        if self.idx == self.block.len() {
            self.counter = self.counter.wrapping_add(1);
            let mut h = Sha256::new();
            h.update(self.seed);
            h.update(self.counter.to_le_bytes());
            self.block = h.finalize().into();
            self.idx = 0;
        }
        let b = self.block[self.idx];
        self.idx += 1;
        b
    }

    fn digit(&mut self) -> u8 {
        b'0' + self.next_byte() % 10
    }

    fn letter(&mut self, base: u8) -> u8 {
        base + self.next_byte() % 26
    }

    /// Token for one ASCII byte: digit → digit, letter → letter (same case), else kept.
    fn token_ascii(&mut self, b: u8) -> u8 {
        match b {
            b'0'..=b'9' => self.digit(),
            b'a'..=b'z' => self.letter(b'a'),
            b'A'..=b'Z' => self.letter(b'A'),
            _ => b,
        }
    }
}

fn write_token(key: &HashKey, v: &[u8], out: &mut BytesMut) {
    let mut ks = Keystream::new(key, v);
    for &b in v {
        if b.is_ascii() {
            out.put_u8(ks.token_ascii(b));
        } else if is_char_start(b) {
            out.put_u8(ks.letter(b'a'));
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes lowercase hex of `digest` into all of `dst` (at most 64 characters).
fn hex_into(digest: &[u8; 32], dst: &mut [u8]) {
    for (i, d) in dst.iter_mut().enumerate() {
        let byte = digest[i / 2];
        *d = HEX[usize::from(if i % 2 == 0 { byte >> 4 } else { byte & 0xf })];
    }
}

fn put_hex(out: &mut BytesMut, digest: &[u8; 32], hex_len: usize) {
    let mut buf = [0u8; 64];
    hex_into(digest, &mut buf[..hex_len]);
    out.put_slice(&buf[..hex_len]);
}

fn put_bytea(out: &mut BytesMut, bytes: &[u8], binary: bool) {
    if binary {
        out.put_slice(bytes);
    } else {
        for &b in bytes {
            out.put_u8(HEX[usize::from(b >> 4)]);
            out.put_u8(HEX[usize::from(b & 0xf)]);
        }
    }
}

/// Writes a JSON string literal whose content is what `produce` appends, escaped if needed.
fn json_string(out: &mut BytesMut, produce: impl FnOnce(&mut BytesMut)) {
    out.put_u8(b'"');
    let start = out.len();
    produce(out);
    if out[start..]
        .iter()
        .any(|&b| b == b'"' || b == b'\\' || b < 0x20)
    {
        // Rare: copy the raw content aside and escape it back in.
        let raw = out.split_off(start);
        for &b in raw.iter() {
            match b {
                b'"' => out.put_slice(b"\\\""),
                b'\\' => out.put_slice(b"\\\\"),
                0..=0x1f => {
                    out.put_slice(b"\\u00");
                    out.put_u8(HEX[usize::from(b >> 4)]);
                    out.put_u8(HEX[usize::from(b & 0xf)]);
                }
                _ => out.put_u8(b),
            }
        }
    }
    out.put_u8(b'"');
}

// ---------------------------------------------------------------------------------------------
// Number helpers
// ---------------------------------------------------------------------------------------------

fn first8(d: &[u8; 32]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(&d[..8]);
    a
}

fn int_width(kind: TypeKind) -> usize {
    match kind {
        TypeKind::Int2 => 2,
        TypeKind::Int4 => 4,
        _ => 8,
    }
}

fn float_width(kind: TypeKind) -> usize {
    if kind == TypeKind::Float4 {
        4
    } else {
        8
    }
}

fn int_max(kind: TypeKind) -> u64 {
    match kind {
        TypeKind::Int2 => 0x7fff,
        TypeKind::Int4 => 0x7fff_ffff,
        _ => 0x7fff_ffff_ffff_ffff,
    }
}

/// HMAC of `canonical` reduced to `0..=max`.
fn hash_in_range(key: &HashKey, canonical: &[u8], max: u64) -> i64 {
    let d = key.digest(DOMAIN_HASH, canonical);
    let n = u64::from_be_bytes(first8(&d)) % (max + 1);
    i64::try_from(n).unwrap_or(0)
}

/// Big-endian signed integer of 2, 4 or 8 bytes.
fn read_int(v: &[u8]) -> i64 {
    match *v {
        [a, b] => i64::from(i16::from_be_bytes([a, b])),
        [a, b, c, d] => i64::from(i32::from_be_bytes([a, b, c, d])),
        [a, b, c, d, e, f, g, h] => i64::from_be_bytes([a, b, c, d, e, f, g, h]),
        _ => 0,
    }
}

/// Writes `n` big-endian into all of `v` (2, 4 or 8 bytes), truncating to the width; callers
/// only pass values already in range.
fn write_int(v: &mut [u8], n: i64) {
    let bytes = n.to_be_bytes();
    if let Some(tail) = bytes.get(8usize.saturating_sub(v.len())..) {
        if tail.len() == v.len() {
            v.copy_from_slice(tail);
        }
    }
}

/// Decimal text of `n` into `buf`; returns its length.
fn write_i64(n: i64, buf: &mut [u8; 20]) -> usize {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    let mut m = n.unsigned_abs();
    loop {
        i -= 1;
        tmp[i] = b'0' + (m % 10) as u8;
        m /= 10;
        if m == 0 {
            break;
        }
    }
    let mut len = 0;
    if n < 0 {
        buf[0] = b'-';
        len = 1;
    }
    let digits = &tmp[i..];
    buf[len..len + digits.len()].copy_from_slice(digits);
    len + digits.len()
}

fn put_u64(out: &mut BytesMut, n: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    let mut m = n;
    loop {
        i -= 1;
        tmp[i] = b'0' + (m % 10) as u8;
        m /= 10;
        if m == 0 {
            break;
        }
    }
    out.put_slice(&tmp[i..]);
}

/// Parses `-?[0-9]+` (possibly with zeros from masking); saturates, never panics.
fn parse_digits(v: &[u8]) -> i64 {
    let (neg, digits) = match v.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, v),
    };
    let mut n: i64 = 0;
    for &d in digits {
        n = n
            .saturating_mul(10)
            .saturating_add(i64::from(d.wrapping_sub(b'0') % 10));
    }
    if neg {
        -n
    } else {
        n
    }
}

/// `-?[0-9]+`.
fn is_int_text(v: &[u8]) -> bool {
    let digits = v.strip_prefix(b"-").unwrap_or(v);
    !digits.is_empty() && digits.iter().all(u8::is_ascii_digit)
}

/// `Some(true)` for `-?[0-9]+(\.[0-9]+)?`, `Some(false)` for `NaN`/`Infinity`/`-Infinity`,
/// `None` for anything else.
fn numeric_text(v: &[u8]) -> Option<bool> {
    if matches!(v, b"NaN" | b"Infinity" | b"-Infinity") {
        return Some(false);
    }
    let body = v.strip_prefix(b"-").unwrap_or(v);
    let (int, frac) = match memchr::memchr(b'.', body) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    (digits(int) && frac.is_none_or(digits)).then_some(true)
}

/// Float text as PostgreSQL prints it: digits, `-`, `.`, `e`/`E`, `+`, or `NaN`/`Infinity`.
fn float_text_ok(v: &[u8]) -> bool {
    matches!(v, b"NaN" | b"Infinity" | b"-Infinity")
        || (v.iter().any(u8::is_ascii_digit)
            && v.iter()
                .all(|b| matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')))
}

/// Zeroes a number's text in place, keeping it a valid number: every byte but `.`, `e`, `E`
/// and `+` becomes `0` (`-12.5e+3` → `00.0e+0`, `NaN` → `000`).
fn zero_number_text(v: &mut [u8]) {
    let special = v
        .iter()
        .any(|b| b.is_ascii_alphabetic() && !matches!(b, b'e' | b'E'));
    for b in v.iter_mut() {
        if special || !matches!(b, b'.' | b'e' | b'E' | b'+') {
            *b = b'0';
        }
    }
}

/// Keeps the first `first` and last `last` digits of a number's text; other digits and a minus
/// sign become `0`. `NaN`/`Infinity` are zeroed whole.
fn mask_digits(v: &mut [u8], first: usize, last: usize) {
    if v.iter()
        .any(|b| b.is_ascii_alphabetic() && !matches!(b, b'e' | b'E'))
    {
        zero_number_text(v);
        return;
    }
    let total = v.iter().filter(|b| b.is_ascii_digit()).count();
    let (a, b) = window(total, first, last);
    let mut i = 0;
    let mut in_exponent = false;
    for c in v.iter_mut() {
        match *c {
            b'0'..=b'9' => {
                if (a..b).contains(&i) {
                    *c = b'0';
                }
                i += 1;
            }
            b'e' | b'E' => in_exponent = true,
            // A leading minus sign is masked to a zero digit; one after the exponent is kept.
            b'-' if !in_exponent && (a..b).contains(&i) => *c = b'0',
            _ => {}
        }
    }
}

/// Numeric text tokenised in place: digits from the keystream, the leading digit of a
/// multi-digit integer part non-zero, `-` and `.` kept.
fn tokenize_numeric(key: &HashKey, v: &mut [u8]) {
    let mut ks = Keystream::new(key, v);
    let digits_start = usize::from(v.first() == Some(&b'-'));
    let int_len = v[digits_start..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    for (i, b) in v.iter_mut().enumerate() {
        if b.is_ascii_digit() {
            *b = if i == digits_start && int_len > 1 {
                b'1' + ks.next_byte() % 9
            } else {
                ks.digit()
            };
        }
    }
}

/// Binary `numeric` of a non-negative integer: ndigits, weight, sign, dscale, base-10000 digits.
fn put_numeric_u64(out: &mut BytesMut, n: u64) {
    let mut groups = [0u16; 5];
    let mut count = 0;
    let mut m = n;
    while m > 0 {
        groups[count] = (m % 10_000) as u16;
        m /= 10_000;
        count += 1;
    }
    let ndigits = i16::try_from(count).unwrap_or(0);
    out.put_i16(ndigits);
    out.put_i16(ndigits.saturating_sub(1).max(0));
    out.put_u16(0); // sign: positive
    out.put_i16(0); // dscale
    for g in groups[..count].iter().rev() {
        out.put_u16(*g);
    }
}

// ---------------------------------------------------------------------------------------------
// UUID and bytea helpers
// ---------------------------------------------------------------------------------------------

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, either case.
fn is_uuid_text(v: &[u8]) -> bool {
    v.len() == 36
        && v.iter().enumerate().all(|(i, b)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                *b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        })
}

fn hex_val(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => 0,
    }
}

fn parse_uuid_text(v: &[u8], raw: &mut [u8; 16]) {
    let mut nibbles = v.iter().filter(|b| **b != b'-').map(|&b| hex_val(b));
    for byte in raw.iter_mut() {
        let hi = nibbles.next().unwrap_or(0);
        let lo = nibbles.next().unwrap_or(0);
        *byte = (hi << 4) | lo;
    }
}

fn format_uuid(raw: &[u8; 16], text: &mut [u8; 36]) {
    let mut j = 0;
    for (i, b) in raw.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            text[j] = b'-';
            j += 1;
        }
        text[j] = HEX[usize::from(b >> 4)];
        text[j + 1] = HEX[usize::from(b & 0xf)];
        j += 2;
    }
}

/// Zeroes the nibbles of `raw` outside the first `first` and last `last` (of 32).
fn mask_nibbles(raw: &mut [u8; 16], first: usize, last: usize) {
    let (a, b) = window(32, first, last);
    for i in a..b {
        let shift = if i % 2 == 0 { 4 } else { 0 };
        raw[i / 2] &= !(0xf << shift);
    }
}

/// Hex-format bytea text: `\x` and an even number of hex digits.
fn is_hex_bytea(v: &[u8]) -> bool {
    v.starts_with(b"\\x") && v.len() % 2 == 0 && v[2..].iter().all(u8::is_ascii_hexdigit)
}

#[cfg(test)]
mod tests;

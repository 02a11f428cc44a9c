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
use sha2::Sha256;

use crate::types::{ColumnType, Format, TypeKind};
use crate::MaskError;

mod in_place;
mod number;
mod resized;
mod text;
mod uuid;

use number::{float_text_ok, float_width, int_width, is_int_text, numeric_text};
use text::char_count;
use uuid::{is_hex_bytea, is_uuid_text};

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
        /// The client's encoding is not UTF-8: its character boundaries are unknown here, so a
        /// value with any non-ASCII byte is masked whole (one fill byte per byte).
        whole_unless_ascii: bool,
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
            whole_unless_ascii: false,
        }))
    }

    /// Keeps the last `n` characters, masking the rest with `*`.
    pub fn keep_last(n: u16) -> Strategy {
        Strategy(Kind::Partial {
            keep_first: 0,
            keep_last: usize::from(n),
            fill: '*',
            whole_unless_ascii: false,
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

    /// This strategy for a client whose `client_encoding` is not UTF-8: whatever it writes into
    /// a value is ASCII (valid in every encoding PostgreSQL offers a client), and it never cuts
    /// a value between bytes of one character. Replacement text and fill characters outside
    /// ASCII become `*`; a partial mask of a non-ASCII value masks all of it. The other
    /// strategies write ASCII already (hex, tokens, zeros, NULL).
    pub fn for_non_utf8_client(&self) -> Strategy {
        let ascii = |c: char| if c.is_ascii() { c } else { '*' };
        Strategy(match &self.0 {
            Kind::RedactText(t) => {
                let text: String = String::from_utf8_lossy(t).chars().map(ascii).collect();
                Kind::RedactText(text.into_bytes().into())
            }
            Kind::Partial {
                keep_first,
                keep_last,
                fill,
                ..
            } => Kind::Partial {
                keep_first: *keep_first,
                keep_last: *keep_last,
                fill: ascii(*fill),
                whole_unless_ascii: true,
            },
            other => other.clone(),
        })
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

#[cfg(test)]
mod tests;

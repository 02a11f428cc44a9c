//! Rewrites that change a value's length: each type family's masked value appended to a buffer.

use bytes::{BufMut, BytesMut};

use super::number::{
    first8, float_text_ok, hash_in_range, int_max, is_int_text, numeric_text, put_numeric_u64,
    put_u64,
};
use super::text::{char_count, json_string, put_bytea, put_hex, write_partial, write_token};
use super::{ColumnMask, Kind, BYTEA_TOKEN_BYTES, DOMAIN_HASH, DOMAIN_TOKEN};
use crate::types::TypeKind as T;

impl ColumnMask {
    /// The cases where the masked value's length differs from the input's (or is NULL).
    pub(super) fn write_resized(&self, v: &[u8], out: &mut BytesMut) -> bool {
        if matches!(self.strategy.0, Kind::Null) {
            return false;
        }
        match self.kind {
            T::Other => false,
            T::Text | T::Bpchar => {
                self.write_text(v, out);
                true
            }
            T::Json | T::Jsonb => self.write_json(v, out),
            T::Int2 | T::Int4 | T::Int8 => self.write_int(v, out),
            T::Numeric => self.write_numeric(v, out),
            T::Float4 | T::Float8 => self.write_float(v, out),
            // Wrong length or shape: not a value we can vouch for.
            T::Uuid => false,
            T::Bytea => {
                self.write_bytea(v, out);
                true
            }
        }
    }

    fn write_text(&self, v: &[u8], out: &mut BytesMut) {
        let start = out.len();
        match &self.strategy.0 {
            Kind::RedactText(t) => out.put_slice(t),
            Kind::RedactFill(b) => out.put_bytes(*b, v.len()),
            Kind::Partial {
                keep_first,
                keep_last,
                fill,
                whole_unless_ascii,
            } => write_partial(
                v,
                (*keep_first, *keep_last),
                *fill,
                *whole_unless_ascii,
                out,
            ),
            Kind::Hash { key, hex_len } => put_hex(out, &key.digest(DOMAIN_HASH, v), *hex_len),
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
    }

    fn write_json(&self, v: &[u8], out: &mut BytesMut) -> bool {
        let Some(text) = self.json_text(v) else {
            return false;
        };
        if self.kind == T::Jsonb && self.binary {
            out.put_u8(1);
        }
        match &self.strategy.0 {
            Kind::RedactText(t) => json_string(out, |o| o.put_slice(t)),
            // Only an empty (invalid) value gets here.
            Kind::RedactFill(_) => out.put_u8(b'0'),
            Kind::Partial {
                keep_first,
                keep_last,
                fill,
                whole_unless_ascii,
            } => json_string(out, |o| {
                write_partial(
                    text,
                    (*keep_first, *keep_last),
                    *fill,
                    *whole_unless_ascii,
                    o,
                )
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

    fn write_int(&self, v: &[u8], out: &mut BytesMut) -> bool {
        if self.binary || !is_int_text(v) {
            return false; // wrong width / not an integer: fail closed
        }
        match &self.strategy.0 {
            Kind::Hash { key, .. } | Kind::Tokenize { key } => put_u64(
                out,
                hash_in_range(key, v, int_max(self.kind)).unsigned_abs(),
            ),
            _ => out.put_u8(b'0'),
        }
        true
    }

    fn write_numeric(&self, v: &[u8], out: &mut BytesMut) -> bool {
        let s = &self.strategy.0;
        if self.binary {
            match s {
                Kind::Hash { key, .. } | Kind::Tokenize { key } => {
                    let d = key.digest(DOMAIN_HASH, v);
                    put_numeric_u64(out, u64::from_be_bytes(first8(&d)));
                }
                _ => out.put_slice(&[0; 8]),
            }
            return true;
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

    fn write_float(&self, v: &[u8], out: &mut BytesMut) -> bool {
        if self.binary || !float_text_ok(v) {
            return false;
        }
        match &self.strategy.0 {
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

    fn write_bytea(&self, v: &[u8], out: &mut BytesMut) {
        if !self.binary {
            out.put_slice(b"\\x");
        }
        let bytes: &[u8] = match &self.strategy.0 {
            Kind::RedactText(t) => t,
            Kind::Hash { key, hex_len } => {
                let d = key.digest(DOMAIN_HASH, v);
                put_bytea(out, &d[..hex_len.div_ceil(2)], self.binary);
                return;
            }
            Kind::Tokenize { key } => {
                let d = key.digest(DOMAIN_TOKEN, v);
                put_bytea(out, &d[..BYTEA_TOKEN_BYTES], self.binary);
                return;
            }
            // Escape-format (`bytea_output = escape`) input: the empty bytea.
            _ => &[],
        };
        put_bytea(out, bytes, self.binary);
    }
}

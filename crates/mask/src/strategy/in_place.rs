//! Same-length rewrites: each type family's masked value written over the original bytes.

use super::number::{
    first8, hash_in_range, int_max, mask_digits, numeric_text, parse_digits, read_int,
    tokenize_numeric, write_i64, write_int, zero_number_text,
};
use super::text::{hex_into, masked_char_range, window, Keystream};
use super::uuid::{format_uuid, mask_nibbles, parse_uuid_text};
use super::{ColumnMask, Kind, DOMAIN_HASH};
use crate::types::TypeKind as T;

impl ColumnMask {
    /// [`ColumnMask::apply_in_place`] without the check (the row rewriter checked first).
    pub(crate) fn apply_fitting(&self, v: &mut [u8]) {
        match self.kind {
            T::Text | T::Bpchar => self.fit_text(v),
            T::Json | T::Jsonb => self.fit_json(v),
            T::Int2 | T::Int4 | T::Int8 | T::Numeric | T::Float4 | T::Float8 if !self.binary => {
                self.fit_number_text(v)
            }
            T::Int2 | T::Int4 | T::Int8 => self.fit_int_binary(v),
            T::Numeric => v.copy_from_slice(&[0; 8]),
            T::Float4 | T::Float8 => self.fit_float_binary(v),
            T::Uuid => self.fit_uuid(v),
            T::Bytea => self.fit_bytea(v),
            T::Other => {}
        }
    }

    fn fit_text(&self, v: &mut [u8]) {
        match &self.strategy.0 {
            Kind::RedactText(t) => v.copy_from_slice(t),
            Kind::RedactFill(b) => v.fill(*b),
            Kind::Partial {
                keep_first,
                keep_last,
                fill,
                ..
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
        }
    }

    fn fit_json(&self, v: &mut [u8]) {
        if let Kind::RedactFill(b) = &self.strategy.0 {
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

    /// Integer, numeric and float values in text format.
    fn fit_number_text(&self, v: &mut [u8]) {
        match &self.strategy.0 {
            Kind::Partial {
                keep_first,
                keep_last,
                ..
            } if self.kind != T::Numeric || numeric_text(v) == Some(true) => {
                mask_digits(v, *keep_first, *keep_last)
            }
            Kind::Tokenize { key } if numeric_text(v) == Some(true) => tokenize_numeric(key, v),
            _ => zero_number_text(v),
        }
    }

    fn fit_int_binary(&self, v: &mut [u8]) {
        let n = read_int(v);
        let out = match &self.strategy.0 {
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

    fn fit_float_binary(&self, v: &mut [u8]) {
        let bits = match &self.strategy.0 {
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

    fn fit_uuid(&self, v: &mut [u8]) {
        let mut raw = [0u8; 16];
        if self.binary {
            raw.copy_from_slice(v);
        } else {
            parse_uuid_text(v, &mut raw);
        }
        match &self.strategy.0 {
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

    fn fit_bytea(&self, v: &mut [u8]) {
        let (keep_first, keep_last) = match &self.strategy.0 {
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
}

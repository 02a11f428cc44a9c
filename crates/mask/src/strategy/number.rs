//! Number helpers: validating, zeroing, masking and tokenising integer, numeric and float
//! values in text, and the binary forms the strategies write.

use bytes::{BufMut, BytesMut};

use super::text::window;
use super::text::Keystream;
use super::{HashKey, DOMAIN_HASH};
use crate::types::TypeKind;

pub(super) fn first8(d: &[u8; 32]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(&d[..8]);
    a
}

pub(super) fn int_width(kind: TypeKind) -> usize {
    match kind {
        TypeKind::Int2 => 2,
        TypeKind::Int4 => 4,
        _ => 8,
    }
}

pub(super) fn float_width(kind: TypeKind) -> usize {
    if kind == TypeKind::Float4 {
        4
    } else {
        8
    }
}

pub(super) fn int_max(kind: TypeKind) -> u64 {
    match kind {
        TypeKind::Int2 => 0x7fff,
        TypeKind::Int4 => 0x7fff_ffff,
        _ => 0x7fff_ffff_ffff_ffff,
    }
}

/// HMAC of `canonical` reduced to `0..=max`.
pub(super) fn hash_in_range(key: &HashKey, canonical: &[u8], max: u64) -> i64 {
    let d = key.digest(DOMAIN_HASH, canonical);
    let n = u64::from_be_bytes(first8(&d)) % (max + 1);
    i64::try_from(n).unwrap_or(0)
}

/// Big-endian signed integer of 2, 4 or 8 bytes.
pub(super) fn read_int(v: &[u8]) -> i64 {
    match *v {
        [a, b] => i64::from(i16::from_be_bytes([a, b])),
        [a, b, c, d] => i64::from(i32::from_be_bytes([a, b, c, d])),
        [a, b, c, d, e, f, g, h] => i64::from_be_bytes([a, b, c, d, e, f, g, h]),
        _ => 0,
    }
}

/// Writes `n` big-endian into all of `v` (2, 4 or 8 bytes), truncating to the width; callers
/// only pass values already in range.
pub(super) fn write_int(v: &mut [u8], n: i64) {
    let bytes = n.to_be_bytes();
    if let Some(tail) = bytes.get(8usize.saturating_sub(v.len())..) {
        if tail.len() == v.len() {
            v.copy_from_slice(tail);
        }
    }
}

/// Decimal text of `n` into `buf`; returns its length.
pub(super) fn write_i64(n: i64, buf: &mut [u8; 20]) -> usize {
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

pub(super) fn put_u64(out: &mut BytesMut, n: u64) {
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
pub(super) fn parse_digits(v: &[u8]) -> i64 {
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
pub(super) fn is_int_text(v: &[u8]) -> bool {
    let digits = v.strip_prefix(b"-").unwrap_or(v);
    !digits.is_empty() && digits.iter().all(u8::is_ascii_digit)
}

/// `Some(true)` for `-?[0-9]+(\.[0-9]+)?`, `Some(false)` for `NaN`/`Infinity`/`-Infinity`,
/// `None` for anything else.
pub(super) fn numeric_text(v: &[u8]) -> Option<bool> {
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
pub(super) fn float_text_ok(v: &[u8]) -> bool {
    matches!(v, b"NaN" | b"Infinity" | b"-Infinity")
        || (v.iter().any(u8::is_ascii_digit)
            && v.iter()
                .all(|b| matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')))
}

/// Zeroes a number's text in place, keeping it a valid number: every byte but `.`, `e`, `E`
/// and `+` becomes `0` (`-12.5e+3` → `00.0e+0`, `NaN` → `000`).
pub(super) fn zero_number_text(v: &mut [u8]) {
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
pub(super) fn mask_digits(v: &mut [u8], first: usize, last: usize) {
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
pub(super) fn tokenize_numeric(key: &HashKey, v: &mut [u8]) {
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
pub(super) fn put_numeric_u64(out: &mut BytesMut, n: u64) {
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

//! UUID and bytea helpers: text shapes, parsing and formatting, nibble masking.

use super::text::{window, HEX};

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, either case.
pub(super) fn is_uuid_text(v: &[u8]) -> bool {
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

pub(super) fn parse_uuid_text(v: &[u8], raw: &mut [u8; 16]) {
    let mut nibbles = v.iter().filter(|b| **b != b'-').map(|&b| hex_val(b));
    for byte in raw.iter_mut() {
        let hi = nibbles.next().unwrap_or(0);
        let lo = nibbles.next().unwrap_or(0);
        *byte = (hi << 4) | lo;
    }
}

pub(super) fn format_uuid(raw: &[u8; 16], text: &mut [u8; 36]) {
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
pub(super) fn mask_nibbles(raw: &mut [u8; 16], first: usize, last: usize) {
    let (a, b) = window(32, first, last);
    for i in a..b {
        let shift = if i % 2 == 0 { 4 } else { 0 };
        raw[i / 2] &= !(0xf << shift);
    }
}

/// Hex-format bytea text: `\x` and an even number of hex digits.
pub(super) fn is_hex_bytea(v: &[u8]) -> bool {
    v.starts_with(b"\\x") && v.len() % 2 == 0 && v[2..].iter().all(u8::is_ascii_hexdigit)
}

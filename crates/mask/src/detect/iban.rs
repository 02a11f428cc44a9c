//! The IBAN detector: country code, check digits, the country's BBAN length, mod-97.

use std::ops::Range;

use super::numeric::number_end_ok;
use super::{at, before, is_alnum};

/// IBAN lengths by country (SWIFT IBAN registry).
const IBAN_LENGTHS: &[(&[u8; 2], usize)] = &[
    (b"AD", 24),
    (b"AE", 23),
    (b"AL", 28),
    (b"AT", 20),
    (b"AZ", 28),
    (b"BA", 20),
    (b"BE", 16),
    (b"BG", 22),
    (b"BH", 22),
    (b"BR", 29),
    (b"BY", 28),
    (b"CH", 21),
    (b"CR", 22),
    (b"CY", 28),
    (b"CZ", 24),
    (b"DE", 22),
    (b"DK", 18),
    (b"DO", 28),
    (b"EE", 20),
    (b"EG", 29),
    (b"ES", 24),
    (b"FI", 18),
    (b"FO", 18),
    (b"FR", 27),
    (b"GB", 22),
    (b"GE", 22),
    (b"GI", 23),
    (b"GL", 18),
    (b"GR", 27),
    (b"GT", 28),
    (b"HR", 21),
    (b"HU", 28),
    (b"IE", 22),
    (b"IL", 23),
    (b"IQ", 23),
    (b"IS", 26),
    (b"IT", 27),
    (b"JO", 30),
    (b"KW", 30),
    (b"KZ", 20),
    (b"LB", 28),
    (b"LC", 32),
    (b"LI", 21),
    (b"LT", 20),
    (b"LU", 20),
    (b"LV", 21),
    (b"MC", 27),
    (b"MD", 24),
    (b"ME", 22),
    (b"MK", 19),
    (b"MR", 27),
    (b"MT", 31),
    (b"MU", 30),
    (b"NL", 18),
    (b"NO", 15),
    (b"PK", 24),
    (b"PL", 28),
    (b"PS", 29),
    (b"PT", 25),
    (b"QA", 29),
    (b"RO", 24),
    (b"RS", 22),
    (b"SA", 24),
    (b"SC", 31),
    (b"SE", 24),
    (b"SI", 19),
    (b"SK", 24),
    (b"SM", 27),
    (b"ST", 25),
    (b"SV", 28),
    (b"TL", 23),
    (b"TN", 24),
    (b"TR", 26),
    (b"UA", 29),
    (b"VA", 22),
    (b"VG", 24),
    (b"XK", 20),
];

/// Lengths tried for a country code missing from [`IBAN_LENGTHS`] (strict only): every IBAN is
/// 15 to 34 characters.
const ANY_IBAN_LENGTH: std::ops::RangeInclusive<usize> = 15..=34;

/// An IBAN whose check digits start at the digit `i` (the country code is the two bytes before).
/// Strict also takes a mod-97-valid IBAN of a country code the registry table does not list
/// (registries grow; a new country's IBAN identifies an account just as well), longest first.
pub(super) fn iban_at(hay: &[u8], i: usize, strict: bool) -> Option<Range<usize>> {
    let start = i.checked_sub(2)?;
    let cc = [hay[start], hay[start + 1]];
    if !cc.iter().all(u8::is_ascii_uppercase)
        || is_alnum(before(hay, start))
        || !at(hay, i + 1).is_ascii_digit()
    {
        return None;
    }
    let known = IBAN_LENGTHS.iter().find(|(c, _)| **c == cc).map(|e| e.1);
    let lengths = match known {
        Some(len) => len..=len,
        None if strict => ANY_IBAN_LENGTH,
        None => return None,
    };
    let mut chars = [0u8; 34];
    for len in lengths.rev() {
        for spaced in [false, true] {
            if let Some(end) = iban_chars(hay, start, len, spaced, &mut chars) {
                if number_end_ok(hay, end) && iban_mod97(&chars[..len]) {
                    return Some(start..end);
                }
            }
        }
    }
    None
}

/// Collects `len` IBAN characters at `start`, either contiguous or in groups of four separated
/// by single spaces; returns the end.
fn iban_chars(
    hay: &[u8],
    start: usize,
    len: usize,
    spaced: bool,
    out: &mut [u8; 34],
) -> Option<usize> {
    let mut j = start;
    for (n, slot) in out.iter_mut().enumerate().take(len) {
        if spaced && n > 0 && n % 4 == 0 {
            if at(hay, j) != b' ' {
                return None;
            }
            j += 1;
        }
        let b = at(hay, j);
        if !(b.is_ascii_digit() || b.is_ascii_uppercase()) {
            return None;
        }
        *slot = b;
        j += 1;
    }
    Some(j)
}

/// ISO 13616 check: move the first four characters to the end, letters to 10..35, mod 97 == 1.
pub fn iban_mod97(iban: &[u8]) -> bool {
    if iban.len() < 5 {
        return false;
    }
    let mut rem = 0u32;
    for &b in iban[4..].iter().chain(&iban[..4]) {
        rem = match b {
            b'0'..=b'9' => (rem * 10 + u32::from(b - b'0')) % 97,
            b'A'..=b'Z' => (rem * 100 + u32::from(b - b'A') + 10) % 97,
            _ => return false,
        };
    }
    rem == 1
}

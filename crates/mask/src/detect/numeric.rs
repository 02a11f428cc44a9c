//! The numeric detectors: cards (issuer prefix and Luhn), SSNs and phone numbers, and the
//! number boundaries they share with IBANs.

use std::ops::Range;

use super::iban::iban_at;
use super::{at, before, is_alnum, DetectorKind, Detectors, Sensitivity, Span};

/// Index of the first ASCII digit at or after `from`, eight bytes at a time.
pub(super) fn next_digit(hay: &[u8], from: usize) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let mut i = from;
    while i + 8 <= hay.len() {
        let mut w = [0u8; 8];
        w.copy_from_slice(&hay[i..i + 8]);
        let x = u64::from_le_bytes(w);
        // Bytes in 0x30..=0x39 (Mycroft's "has between" for m = 0x2f, n = 0x3a).
        let low7 = x & !HI;
        let t = (LO * (127 + 0x3a)).wrapping_sub(low7) & !x & (low7 + LO * (127 - 0x2f)) & HI;
        if t != 0 {
            return Some(i + (t.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    (i..hay.len()).find(|&j| hay[j].is_ascii_digit())
}

/// Whether a number may start at `i`: the byte before is not a letter or digit, and not a
/// separator glued to a preceding digit (`12-`, `1.`, `10:`), so pieces of longer numbers,
/// dates, IPs and UUIDs are not matched.
fn number_start_ok(hay: &[u8], i: usize) -> bool {
    let p = before(hay, i);
    if is_alnum(p) {
        return false;
    }
    !(matches!(p, b'-' | b'.' | b':' | b'/' | b'_') && i >= 2 && is_alnum(hay[i - 2]))
}

/// Whether a number may end before `i`: the next byte is not a letter or digit, and not a
/// separator followed by one (`-5`, `.5`, `:30`).
pub(super) fn number_end_ok(hay: &[u8], i: usize) -> bool {
    let n = at(hay, i);
    if is_alnum(n) || n == b'_' {
        return false;
    }
    !(matches!(n, b'-' | b'.' | b':' | b'/' | b'_') && is_alnum(at(hay, i + 1)))
}

/// Length of the digit run at `i`.
fn digit_run(hay: &[u8], i: usize) -> usize {
    hay[i.min(hay.len())..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count()
}

/// A shape check at one position (strict or not): the span it matches there, if any.
type Shape = fn(&[u8], usize, bool) -> Option<Range<usize>>;

/// The next IBAN, card, SSN or phone number (tried in that order at each number) at or after
/// `from`.
pub(super) fn next_numeric(set: Detectors, hay: &[u8], from: usize) -> Option<Span> {
    let checks: [(DetectorKind, Shape); 4] = [
        (DetectorKind::Iban, iban_at),
        (DetectorKind::Card, card_at),
        (DetectorKind::Ssn, ssn_at),
        (DetectorKind::Phone, phone_at),
    ];
    let strict = set.sensitivity() == Sensitivity::Strict;
    let mut pos = from;
    while let Some(i) = next_digit(hay, pos) {
        for (kind, check) in checks {
            if set.contains(kind) {
                if let Some(range) = check(hay, i, strict) {
                    return Some(Span { kind, range });
                }
            }
        }
        pos = i + digit_run(hay, i).max(1);
    }
    None
}

/// A card number starting at the digit `i`: 13–19 digits passing Luhn, and (unless `strict`)
/// with a known issuer prefix and length.
fn card_at(hay: &[u8], i: usize, strict: bool) -> Option<Range<usize>> {
    if !number_start_ok(hay, i) {
        return None;
    }
    let mut digits = [0u8; 19];
    let mut n = 0;
    let mut sep = None;
    let mut j = i;
    loop {
        let run = digit_run(hay, j);
        // Grouped numbers are printed in groups of 3 to 6 (4-4-4-4, 4-6-5, 4-4-4-4-3); strict
        // also takes a last group of 1 or 2 (an 18-digit number as 4-4-4-4-2).
        let short_last = strict
            && (1..=2).contains(&run)
            && !(matches!(at(hay, j + run), b' ' | b'-') && at(hay, j + run + 1).is_ascii_digit());
        if n + run > digits.len() || (sep.is_some() && !(3..=6).contains(&run) && !short_last) {
            // Ungrouped and longer than any card: an id, a hash, a long number.
            sep?;
            j -= 1; // end before the separator and this group
            break;
        }
        for (k, b) in hay[j..j + run].iter().enumerate() {
            digits[n + k] = b - b'0';
        }
        n += run;
        j += run;
        let s = at(hay, j);
        if matches!(s, b' ' | b'-') && at(hay, j + 1).is_ascii_digit() && sep.is_none_or(|p| p == s)
        {
            if sep.is_none() && !(3..=6).contains(&run) {
                return None;
            }
            sep = Some(s);
            j += 1;
            continue;
        }
        break;
    }
    let digits = &digits[..n];
    (number_end_ok(hay, j)
        && (13..=19).contains(&digits.len())
        && (strict || card_prefix_ok(digits))
        && luhn(digits))
    .then_some(i..j)
}

/// Known issuer prefixes (IIN ranges) and their lengths: Visa, Mastercard, Amex, Discover, JCB,
/// Diners, UnionPay, Maestro, Mir.
fn card_prefix_ok(d: &[u8]) -> bool {
    let n = d.len();
    let p = |k: usize| d.iter().take(k).fold(0u32, |a, &x| a * 10 + u32::from(x));
    match d.first() {
        Some(4) => matches!(n, 13 | 16 | 19),
        Some(5) => (51..=55).contains(&p(2)) && n == 16,
        Some(2) => {
            ((2221..=2720).contains(&p(4)) && n == 16) || ((2200..=2204).contains(&p(4)) && n >= 16)
        }
        Some(3) => {
            matches!(p(2), 34 | 37) && n == 15
                || (3528..=3589).contains(&p(4)) && n >= 16
                || ((300..=305).contains(&p(3)) || matches!(p(2), 36 | 38 | 39)) && n >= 14
        }
        Some(6) => {
            (p(4) == 6011 || (644..=649).contains(&p(3)) || matches!(p(2), 62 | 65)) && n >= 16
                || matches!(p(2), 63 | 67) && n >= 13
        }
        _ => false,
    }
}

/// Luhn check over decimal digits.
pub fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (k, &d) in digits.iter().rev().enumerate() {
        let d = u32::from(d);
        sum += if k % 2 == 1 {
            let x = d * 2;
            if x > 9 {
                x - 9
            } else {
                x
            }
        } else {
            d
        };
    }
    sum % 10 == 0
}

fn three_digits(hay: &[u8], i: usize) -> Option<u32> {
    let d = hay.get(i..i + 3)?;
    d.iter()
        .all(u8::is_ascii_digit)
        .then(|| d.iter().fold(0, |a, &b| a * 10 + u32::from(b - b'0')))
}

fn digits_value(d: &[u8]) -> u32 {
    d.iter().fold(0, |a, &b| a * 10 + u32::from(b - b'0'))
}

/// `AAA-GG-SSSS` at `i`. Strict: any digits, and spaces as separators too (ITINs use areas
/// 900–999, and test or mistyped numbers the never-issued ones, but they identify a person just
/// as well). Balanced: dashes only, excluding area 000, 666 and 900–999, group 00 and serial
/// 0000.
fn ssn_at(hay: &[u8], i: usize, strict: bool) -> Option<Range<usize>> {
    let s = hay.get(i..i + 11)?;
    let sep = s[3];
    let sep_ok = sep == b'-' || (strict && sep == b' ');
    let shape = sep_ok
        && s.iter().enumerate().all(|(k, b)| {
            if k == 3 || k == 6 {
                *b == sep
            } else {
                b.is_ascii_digit()
            }
        });
    if !shape || !number_start_ok(hay, i) || !number_end_ok(hay, i + 11) {
        return None;
    }
    let area = digits_value(&s[0..3]);
    let group = digits_value(&s[4..6]);
    let serial = digits_value(&s[7..11]);
    if strict {
        return Some(i..i + 11);
    }
    (area != 0 && area != 666 && area < 900 && group != 0 && serial != 0).then_some(i..i + 11)
}

/// A phone number whose first digit is at `i`. Strict also takes NANP-shaped numbers whose
/// area or exchange code starts with 0 or 1 (placeholders such as `123-456-7890`, and other
/// countries' numbers printed in the same groups).
fn phone_at(hay: &[u8], i: usize, strict: bool) -> Option<Range<usize>> {
    let p = before(hay, i);
    if p == b'+' {
        return e164_at(hay, i);
    }
    if p == b'(' {
        // `(415) 555-2671`, or a whole number in parentheses: `(415-555-2671)`.
        let open = i - 1;
        if let Some(r) = number_start_ok(hay, open)
            .then(|| nanp_parens(hay, open, strict))
            .flatten()
        {
            return Some(r);
        }
    }
    if !number_start_ok(hay, i) {
        return None;
    }
    // Optional country code 1 and a separator before a NANP number.
    if hay[i] == b'1' && matches!(at(hay, i + 1), b' ' | b'-' | b'.') {
        let k = i + 2;
        let found = if at(hay, k) == b'(' {
            nanp_parens(hay, k, strict)
        } else {
            nanp_plain(hay, k, strict)
        };
        if let Some(r) = found {
            return Some(i..r.end);
        }
    }
    nanp_plain(hay, i, strict)
}

/// `+` then 8–15 digits, first non-zero, groups separated by one or two of ` -.()`.
fn e164_at(hay: &[u8], i: usize) -> Option<Range<usize>> {
    let plus = i - 1;
    if is_alnum(before(hay, plus)) || hay[i] == b'0' {
        return None;
    }
    let mut n = 0;
    let mut j = i;
    let mut end = i;
    while j < hay.len() {
        let b = hay[j];
        if b.is_ascii_digit() {
            n += 1;
            j += 1;
            end = j;
            if n > 15 {
                return None;
            }
        } else if matches!(b, b' ' | b'-' | b'.' | b'(' | b')') {
            // At most two separator characters in a row, and a digit after them.
            let k = if matches!(at(hay, j + 1), b' ' | b'-' | b'.' | b'(' | b')') {
                j + 2
            } else {
                j + 1
            };
            if !at(hay, k).is_ascii_digit() {
                break;
            }
            j = k;
        } else {
            break;
        }
    }
    ((8..=15).contains(&n) && number_end_ok(hay, end)).then_some(plus..end)
}

fn nanp_code_ok(hay: &[u8], i: usize, strict: bool) -> bool {
    three_digits(hay, i).is_some() && (strict || (b'2'..=b'9').contains(&hay[i]))
}

/// `(AAA) EEE-NNNN`, `(AAA)EEE-NNNN`, separators `-`, `.` or space before the last four.
fn nanp_parens(hay: &[u8], open: usize, strict: bool) -> Option<Range<usize>> {
    let a = open + 1;
    if !nanp_code_ok(hay, a, strict) || at(hay, a + 3) != b')' {
        return None;
    }
    let mut e = a + 4;
    if at(hay, e) == b' ' {
        e += 1;
    }
    nanp_tail(hay, e, None, strict).map(|end| open..end)
}

/// `AAA-EEE-NNNN` with one consistent separator (`-`, `.` or space).
fn nanp_plain(hay: &[u8], a: usize, strict: bool) -> Option<Range<usize>> {
    if !nanp_code_ok(hay, a, strict) {
        return None;
    }
    let sep = at(hay, a + 3);
    if !matches!(sep, b'-' | b'.' | b' ') {
        return None;
    }
    nanp_tail(hay, a + 4, Some(sep), strict).map(|end| a..end)
}

/// `EEE?NNNN` at `e` (exchange not starting with 0 or 1); returns the end.
fn nanp_tail(hay: &[u8], e: usize, sep: Option<u8>, strict: bool) -> Option<usize> {
    if !nanp_code_ok(hay, e, strict) {
        return None;
    }
    let s = at(hay, e + 3);
    let ok_sep = match sep {
        Some(sep) => s == sep,
        None => matches!(s, b'-' | b'.' | b' '),
    };
    let n = e + 4;
    let last = hay.get(n..n + 4)?;
    (ok_sep && last.iter().all(u8::is_ascii_digit) && number_end_ok(hay, n + 4)).then_some(n + 4)
}

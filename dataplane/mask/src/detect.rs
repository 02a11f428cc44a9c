//! Content detectors: find emails, card numbers, SSNs, phone numbers, IBANs and API keys in text,
//! and overwrite them in place (same length), as defence in depth behind column rules.
//!
//! Each detector is a hand-written scanner with cheap prefilters (one pass noting which byte
//! classes a value holds, so a value without `@` skips the email scan and one without digits the
//! numeric ones; `memchr` for `@`; `memmem` finders for key prefixes, built once and read-only
//! after; a word-at-a-time digit search) and a precise check behind it
//! (Luhn and issuer prefixes for cards, the SSA's invalid ranges for SSNs, mod-97 and the
//! country's length for IBANs, word boundaries everywhere), so ordinary numbers, dates, IPs and
//! UUIDs are left alone.

use std::ops::Range;

use memchr::memmem;

/// The kinds of content a detector finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DetectorKind {
    /// `local@domain.tld`.
    Email,
    /// Payment card number: 13–19 digits, optionally grouped by spaces or dashes, with a known
    /// issuer prefix and a valid Luhn check digit.
    Card,
    /// US social security number `AAA-GG-SSSS`, without the never-issued ranges.
    Ssn,
    /// Phone number: E.164 (`+` and 8–15 digits, groups allowed) or NANP with separators
    /// (`(555) 234-5678`, `555-234-5678`, `555.234.5678`, `1-555-234-5678`).
    Phone,
    /// IBAN: country code, check digits, BBAN of the country's length, mod-97 valid; plain or in
    /// groups of four.
    Iban,
    /// API keys and secrets: AWS access key ids, GitHub tokens, Stripe live keys, Slack tokens,
    /// PEM private keys, JWTs.
    ApiKey,
}

impl DetectorKind {
    /// Every kind.
    pub const ALL: [DetectorKind; 6] = [
        DetectorKind::ApiKey,
        DetectorKind::Email,
        DetectorKind::Iban,
        DetectorKind::Card,
        DetectorKind::Ssn,
        DetectorKind::Phone,
    ];

    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// Lowercase name for configuration and audit: `email`, `card`, `ssn`, `phone`, `iban`,
    /// `api_key`.
    pub fn name(self) -> &'static str {
        match self {
            DetectorKind::Email => "email",
            DetectorKind::Card => "card",
            DetectorKind::Ssn => "ssn",
            DetectorKind::Phone => "phone",
            DetectorKind::Iban => "iban",
            DetectorKind::ApiKey => "api_key",
        }
    }

    /// The kind named `name` (as [`DetectorKind::name`]).
    pub fn from_name(name: &str) -> Option<DetectorKind> {
        DetectorKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// One finding: what, and where in the scanned bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    /// Which detector found it.
    pub kind: DetectorKind,
    /// Byte range in the scanned buffer.
    pub range: Range<usize>,
}

/// How found spans are overwritten so the surrounding value stays valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replace {
    /// Letters and digits become `*`; punctuation is kept. For plain text.
    Text,
    /// Letters become `*`, the first digit `1` and other digits `0`, so a number stays a number
    /// of the same magnitude class (for JSON and numeric columns, e.g. a card stored in `int8`).
    Numeric,
}

/// A set of enabled detectors (per role). `Copy`, one byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Detectors(u8);

impl Detectors {
    /// No detectors.
    pub const NONE: Detectors = Detectors(0);
    /// All detectors.
    pub const ALL: Detectors = Detectors(0b11_1111);

    /// This set with `kind` enabled.
    pub const fn with(self, kind: DetectorKind) -> Detectors {
        Detectors(self.0 | (1 << kind as u8))
    }

    /// This set with `kind` disabled.
    pub const fn without(self, kind: DetectorKind) -> Detectors {
        Detectors(self.0 & !(1 << kind as u8))
    }

    /// Whether `kind` is enabled.
    pub fn contains(self, kind: DetectorKind) -> bool {
        self.0 & kind.bit() != 0
    }

    /// Whether no detector is enabled.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Calls `found` for each span the enabled detectors find in `hay`: API keys, then emails,
    /// then the numeric shapes (IBAN, card, SSN, phone, tried in that order at each number).
    /// Spans of different stages may overlap; each stage's spans are in order.
    pub fn find(self, hay: &[u8], mut found: impl FnMut(Span)) {
        let classes = classes(hay);
        for stage in Stage::ALL {
            let mut pos = 0;
            while let Some(span) = self.next_in_stage(stage, classes, hay, pos) {
                pos = span.range.end;
                found(span);
            }
        }
    }

    /// All spans, collected (allocates; for tests and cold paths).
    pub fn find_all(self, hay: &[u8]) -> Vec<Span> {
        let mut v = Vec::new();
        self.find(hay, |s| v.push(s));
        v
    }

    /// Overwrites every span found in `buf` (same length, see [`Replace`]); returns how many.
    /// Stages run as in [`Detectors::find`], each over the buffer the previous one scrubbed.
    pub fn scrub(self, buf: &mut [u8], style: Replace) -> usize {
        if self.is_empty() {
            return 0;
        }
        let classes = classes(buf);
        let mut count = 0;
        for stage in Stage::ALL {
            let mut pos = 0;
            while let Some(span) = self.next_in_stage(stage, classes, buf, pos) {
                pos = span.range.end;
                overwrite(&mut buf[span.range], style);
                count += 1;
            }
        }
        count
    }

    /// The next span of one stage at or after `from`, if the value's byte classes allow one.
    fn next_in_stage(self, stage: Stage, classes: u8, hay: &[u8], from: usize) -> Option<Span> {
        match stage {
            Stage::ApiKey => {
                if !self.contains(DetectorKind::ApiKey)
                    || hay.len() < MIN_KEY_LEN
                    || classes & (C_UNDERSCORE | C_DASH | C_UPPER) == 0
                {
                    return None;
                }
                next_api_key(hay, from, classes).map(|range| Span {
                    kind: DetectorKind::ApiKey,
                    range,
                })
            }
            Stage::Email => {
                if !self.contains(DetectorKind::Email) || classes & C_AT == 0 {
                    return None;
                }
                next_email(hay, from).map(|range| Span {
                    kind: DetectorKind::Email,
                    range,
                })
            }
            Stage::Numeric => {
                if self.0 & NUMERIC_KINDS == 0
                    || classes & C_DIGIT == 0
                    || hay.len() < MIN_NUMBER_LEN
                {
                    return None;
                }
                next_numeric(self, hay, from)
            }
        }
    }
}

/// Detector stages, in the order they run.
#[derive(Clone, Copy)]
enum Stage {
    ApiKey,
    Email,
    Numeric,
}

impl Stage {
    const ALL: [Stage; 3] = [Stage::ApiKey, Stage::Email, Stage::Numeric];
}

const NUMERIC_KINDS: u8 = (1 << DetectorKind::Card as u8)
    | (1 << DetectorKind::Ssn as u8)
    | (1 << DetectorKind::Phone as u8)
    | (1 << DetectorKind::Iban as u8);
/// Shortest API key shape (`xoxb-` + 10).
const MIN_KEY_LEN: usize = 15;
/// Shortest numeric shape (E.164: `+` and 8 digits).
const MIN_NUMBER_LEN: usize = 9;

const C_DIGIT: u8 = 1;
const C_AT: u8 = 2;
const C_UNDERSCORE: u8 = 4;
const C_DASH: u8 = 8;
const C_UPPER: u8 = 16;

/// Byte → the class bits it contributes.
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = match b as u8 {
            b'0'..=b'9' => C_DIGIT,
            b'@' => C_AT,
            b'_' => C_UNDERSCORE,
            b'-' => C_DASH,
            b'A'..=b'Z' => C_UPPER,
            _ => 0,
        };
        b += 1;
    }
    t
};

/// The classes of bytes present in `hay`, stopping early once all are seen.
fn classes(hay: &[u8]) -> u8 {
    const ALL: u8 = C_DIGIT | C_AT | C_UNDERSCORE | C_DASH | C_UPPER;
    let mut acc = 0;
    for chunk in hay.chunks(64) {
        acc |= chunk.iter().fold(0, |a, &b| a | CLASS[usize::from(b)]);
        if acc == ALL {
            break;
        }
    }
    acc
}

/// Overwrites letters and digits of a span, skipping backslash escapes (`\n`, `\u00e9`, COPY's
/// `\t`) so JSON strings and COPY text stay well-formed.
fn overwrite(span: &mut [u8], style: Replace) {
    let mut first_digit = true;
    let mut i = 0;
    while i < span.len() {
        let b = span[i];
        if b == b'\\' {
            i += if span.get(i + 1) == Some(&b'u') { 6 } else { 2 };
            continue;
        }
        if b.is_ascii_digit() {
            span[i] = match style {
                Replace::Text => b'*',
                Replace::Numeric if first_digit => b'1',
                Replace::Numeric => b'0',
            };
            first_digit = false;
        } else if b.is_ascii_alphabetic() {
            span[i] = b'*';
        }
        i += 1;
    }
}

#[inline]
fn is_alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

/// Byte at `i`, or a space (a boundary) outside the buffer.
#[inline]
fn at(hay: &[u8], i: usize) -> u8 {
    hay.get(i).copied().unwrap_or(b' ')
}

/// Byte before `i`, or a space at the start.
#[inline]
fn before(hay: &[u8], i: usize) -> u8 {
    if i == 0 {
        b' '
    } else {
        hay[i - 1]
    }
}

// ---------------------------------------------------------------------------------------------
// Email
// ---------------------------------------------------------------------------------------------

fn is_local_char(b: u8) -> bool {
    is_alnum(b) || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
}

fn next_email(hay: &[u8], from: usize) -> Option<Range<usize>> {
    for at_sign in memchr::memchr_iter(b'@', hay.get(from..)?).map(|i| i + from) {
        // Local part: up to 64 characters back, not starting or ending with '.'.
        let mut start = at_sign;
        while start > from && at_sign - start < 64 && is_local_char(hay[start - 1]) {
            start -= 1;
        }
        while start < at_sign && hay[start] == b'.' {
            start += 1;
        }
        if start == at_sign || hay[at_sign - 1] == b'.' {
            continue;
        }
        // Domain: labels of [A-Za-z0-9-], at least two, the last alphabetic and 2+ long.
        let mut end = at_sign + 1;
        let mut labels = 0;
        let mut last_label = end..end;
        loop {
            let label_start = end;
            while end < hay.len() && (is_alnum(hay[end]) || hay[end] == b'-') {
                end += 1;
            }
            if end == label_start || hay[label_start] == b'-' || hay[end - 1] == b'-' {
                break; // an empty or dash-edged label ends the domain before it
            }
            labels += 1;
            last_label = label_start..end;
            if at(hay, end) == b'.' && is_alnum(at(hay, end + 1)) {
                end += 1;
            } else {
                break;
            }
        }
        if labels >= 2
            && last_label.len() >= 2
            && hay[last_label.clone()].iter().all(u8::is_ascii_alphabetic)
        {
            return Some(start..last_label.end);
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Numbers: cards, SSNs, phones, IBANs
// ---------------------------------------------------------------------------------------------

/// Index of the first ASCII digit at or after `from`, eight bytes at a time.
fn next_digit(hay: &[u8], from: usize) -> Option<usize> {
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
fn number_end_ok(hay: &[u8], i: usize) -> bool {
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

/// A shape check at one position: the span it matches there, if any.
type Shape = fn(&[u8], usize) -> Option<Range<usize>>;

/// The next IBAN, card, SSN or phone number (tried in that order at each number) at or after
/// `from`.
fn next_numeric(set: Detectors, hay: &[u8], from: usize) -> Option<Span> {
    let checks: [(DetectorKind, Shape); 4] = [
        (DetectorKind::Iban, iban_at),
        (DetectorKind::Card, card_at),
        (DetectorKind::Ssn, ssn_at),
        (DetectorKind::Phone, phone_at),
    ];
    let mut pos = from;
    while let Some(i) = next_digit(hay, pos) {
        for (kind, check) in checks {
            if set.contains(kind) {
                if let Some(range) = check(hay, i) {
                    return Some(Span { kind, range });
                }
            }
        }
        pos = i + digit_run(hay, i).max(1);
    }
    None
}

/// A card number starting at the digit `i`.
fn card_at(hay: &[u8], i: usize) -> Option<Range<usize>> {
    if !number_start_ok(hay, i) {
        return None;
    }
    let mut digits = [0u8; 19];
    let mut n = 0;
    let mut sep = None;
    let mut j = i;
    loop {
        let run = digit_run(hay, j);
        // Grouped numbers are printed in groups of 3 to 6 (4-4-4-4, 4-6-5, 4-4-4-4-3).
        if n + run > digits.len() || (sep.is_some() && !(3..=6).contains(&run)) {
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
    (number_end_ok(hay, j) && card_prefix_ok(digits) && luhn(digits)).then_some(i..j)
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

/// `AAA-GG-SSSS` at `i`, excluding area 000, 666 and 900–999, group 00 and serial 0000.
fn ssn_at(hay: &[u8], i: usize) -> Option<Range<usize>> {
    let s = hay.get(i..i + 11)?;
    let shape = s.iter().enumerate().all(|(k, b)| {
        if k == 3 || k == 6 {
            *b == b'-'
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
    (area != 0 && area != 666 && area < 900 && group != 0 && serial != 0).then_some(i..i + 11)
}

/// A phone number whose first digit is at `i`.
fn phone_at(hay: &[u8], i: usize) -> Option<Range<usize>> {
    let p = before(hay, i);
    if p == b'+' {
        return e164_at(hay, i);
    }
    if p == b'(' {
        let open = i - 1;
        return number_start_ok(hay, open)
            .then(|| nanp_parens(hay, open))
            .flatten();
    }
    if !number_start_ok(hay, i) {
        return None;
    }
    // Optional country code 1 and a separator before a NANP number.
    if hay[i] == b'1' && matches!(at(hay, i + 1), b' ' | b'-' | b'.') {
        let k = i + 2;
        let found = if at(hay, k) == b'(' {
            nanp_parens(hay, k)
        } else {
            nanp_plain(hay, k)
        };
        if let Some(r) = found {
            return Some(i..r.end);
        }
    }
    nanp_plain(hay, i)
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

fn nanp_code_ok(hay: &[u8], i: usize) -> bool {
    three_digits(hay, i).is_some() && (b'2'..=b'9').contains(&hay[i])
}

/// `(AAA) EEE-NNNN`, `(AAA)EEE-NNNN`, separators `-`, `.` or space before the last four.
fn nanp_parens(hay: &[u8], open: usize) -> Option<Range<usize>> {
    let a = open + 1;
    if !nanp_code_ok(hay, a) || at(hay, a + 3) != b')' {
        return None;
    }
    let mut e = a + 4;
    if at(hay, e) == b' ' {
        e += 1;
    }
    nanp_tail(hay, e, None).map(|end| open..end)
}

/// `AAA-EEE-NNNN` with one consistent separator (`-`, `.` or space).
fn nanp_plain(hay: &[u8], a: usize) -> Option<Range<usize>> {
    if !nanp_code_ok(hay, a) {
        return None;
    }
    let sep = at(hay, a + 3);
    if !matches!(sep, b'-' | b'.' | b' ') {
        return None;
    }
    nanp_tail(hay, a + 4, Some(sep)).map(|end| a..end)
}

/// `EEE?NNNN` at `e` (exchange not starting with 0 or 1); returns the end.
fn nanp_tail(hay: &[u8], e: usize, sep: Option<u8>) -> Option<usize> {
    if !nanp_code_ok(hay, e) {
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

/// An IBAN whose check digits start at the digit `i` (the country code is the two bytes before).
fn iban_at(hay: &[u8], i: usize) -> Option<Range<usize>> {
    let start = i.checked_sub(2)?;
    let cc = [hay[start], hay[start + 1]];
    if !cc.iter().all(u8::is_ascii_uppercase)
        || is_alnum(before(hay, start))
        || !at(hay, i + 1).is_ascii_digit()
    {
        return None;
    }
    let len = IBAN_LENGTHS.iter().find(|(c, _)| **c == cc)?.1;
    let mut chars = [0u8; 34];
    for spaced in [false, true] {
        if let Some(end) = iban_chars(hay, start, len, spaced, &mut chars) {
            if number_end_ok(hay, end) && iban_mod97(&chars[..len]) {
                return Some(start..end);
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

// ---------------------------------------------------------------------------------------------
// API keys
// ---------------------------------------------------------------------------------------------

fn is_b64url(b: u8) -> bool {
    is_alnum(b) || b == b'-' || b == b'_'
}

/// Run of bytes matching `f` starting at `i`.
fn run(hay: &[u8], i: usize, f: impl Fn(u8) -> bool) -> usize {
    hay.get(i..)
        .map_or(0, |s| s.iter().take_while(|&&b| f(b)).count())
}

/// Substring searchers for the key prefixes, built once.
struct Finders {
    akia: memmem::Finder<'static>,
    asia: memmem::Finder<'static>,
    k_live: memmem::Finder<'static>,
    xox: memmem::Finder<'static>,
    begin: memmem::Finder<'static>,
    eyj: memmem::Finder<'static>,
}

fn finders() -> &'static Finders {
    static FINDERS: std::sync::OnceLock<Finders> = std::sync::OnceLock::new();
    FINDERS.get_or_init(|| Finders {
        akia: memmem::Finder::new(b"AKIA"),
        asia: memmem::Finder::new(b"ASIA"),
        k_live: memmem::Finder::new(b"k_live_"),
        xox: memmem::Finder::new(b"xox"),
        begin: memmem::Finder::new(b"-----BEGIN "),
        eyj: memmem::Finder::new(b"eyJ"),
    })
}

fn next_api_key(hay: &[u8], from: usize, classes: u8) -> Option<Range<usize>> {
    let rest = hay.get(from..)?;
    let f = finders();
    let upper = classes & C_UPPER != 0;
    let underscore = classes & C_UNDERSCORE != 0;
    let dash = classes & C_DASH != 0;
    // Each shape's earliest match; the earliest overall wins.
    let candidates = [
        upper.then(|| aws_key(f, hay, from, rest)).flatten(),
        underscore.then(|| github_token(hay, from, rest)).flatten(),
        underscore.then(|| stripe_key(f, hay, from, rest)).flatten(),
        dash.then(|| slack_token(f, hay, from, rest)).flatten(),
        dash.then(|| pem_private_key(f, hay, from, rest)).flatten(),
        upper.then(|| jwt(f, hay, from, rest)).flatten(),
    ];
    candidates.into_iter().flatten().min_by_key(|r| r.start)
}

/// `AKIA`/`ASIA` + 16 of `[0-9A-Z]`.
fn aws_key(f: &Finders, hay: &[u8], from: usize, rest: &[u8]) -> Option<Range<usize>> {
    [&f.akia, &f.asia]
        .into_iter()
        .filter_map(|finder| {
            finder.find_iter(rest).map(|k| k + from).find(|&s| {
                run(hay, s + 4, |b| b.is_ascii_digit() || b.is_ascii_uppercase()) == 16
                    && !is_alnum(before(hay, s))
            })
        })
        .min()
        .map(|s| s..s + 20)
}

/// `gh[pousr]_` + 36 alphanumerics, or `github_pat_` + 82 of `[A-Za-z0-9_]`.
fn github_token(hay: &[u8], from: usize, rest: &[u8]) -> Option<Range<usize>> {
    for u in memchr::memchr_iter(b'_', rest).map(|k| k + from) {
        if u >= 3 && &hay[u - 3..u - 1] == b"gh" && b"pousr".contains(&hay[u - 1]) {
            let s = u - 3;
            if !is_alnum(before(hay, s)) && run(hay, u + 1, is_alnum) >= 36 {
                return Some(s..u + 1 + run(hay, u + 1, is_alnum));
            }
        }
        if u >= 6 && &hay[u - 6..u] == b"github" && hay.get(u..u + 5) == Some(b"_pat_") {
            let s = u - 6;
            let body = run(hay, u + 5, |b| is_alnum(b) || b == b'_');
            if !is_alnum(before(hay, s)) && body >= 40 {
                return Some(s..u + 5 + body);
            }
        }
    }
    None
}

/// `sk_live_` / `rk_live_` + at least 10 alphanumerics.
fn stripe_key(f: &Finders, hay: &[u8], from: usize, rest: &[u8]) -> Option<Range<usize>> {
    for k in f.k_live.find_iter(rest).map(|k| k + from) {
        let Some(s) = k.checked_sub(1) else {
            continue;
        };
        let body = run(hay, k + 7, is_alnum);
        if matches!(hay[s], b's' | b'r') && !is_alnum(before(hay, s)) && body >= 10 {
            return Some(s..k + 7 + body);
        }
    }
    None
}

/// `xox[abpr]-` + at least 10 of `[A-Za-z0-9-]`.
fn slack_token(f: &Finders, hay: &[u8], from: usize, rest: &[u8]) -> Option<Range<usize>> {
    for s in f.xox.find_iter(rest).map(|k| k + from) {
        if b"abpr".contains(&at(hay, s + 3)) && at(hay, s + 4) == b'-' && !is_alnum(before(hay, s))
        {
            let body = run(hay, s + 5, |b| is_alnum(b) || b == b'-');
            if body >= 10 {
                return Some(s..s + 5 + body);
            }
        }
    }
    None
}

/// `-----BEGIN ... PRIVATE KEY-----` through its `-----END ...-----` line, or to the end of the
/// buffer if the end line is missing (fail closed).
fn pem_private_key(f: &Finders, hay: &[u8], from: usize, rest: &[u8]) -> Option<Range<usize>> {
    for s in f.begin.find_iter(rest).map(|k| k + from) {
        let label_start = s + 11;
        let label_len = memmem::find(&hay[label_start..], b"-----")?;
        let label = &hay[label_start..label_start + label_len];
        if label.len() > 40 || memmem::find(label, b"PRIVATE KEY").is_none() {
            continue;
        }
        let body = label_start + label_len + 5;
        let end = match memmem::find(&hay[body..], b"-----END ") {
            Some(e) => {
                let e = body + e + 9;
                memmem::find(&hay[e..], b"-----").map_or(hay.len(), |k| e + k + 5)
            }
            None => hay.len(),
        };
        return Some(s..end);
    }
    None
}

/// `eyJ<b64url>.eyJ<b64url>.<b64url>`: a JWT (header and payload are JSON objects).
fn jwt(f: &Finders, hay: &[u8], from: usize, rest: &[u8]) -> Option<Range<usize>> {
    for s in f.eyj.find_iter(rest).map(|k| k + from) {
        if is_b64url(before(hay, s)) {
            continue;
        }
        let h = run(hay, s, is_b64url);
        let p = s + h;
        if h < 10 || at(hay, p) != b'.' || hay.get(p + 1..p + 4) != Some(b"eyJ") {
            continue;
        }
        let pl = run(hay, p + 1, is_b64url);
        let q = p + 1 + pl;
        if pl < 10 || at(hay, q) != b'.' {
            continue;
        }
        let sig = run(hay, q + 1, is_b64url);
        return Some(s..q + 1 + sig);
    }
    None
}

#[cfg(test)]
mod tests;

//! Content detectors: find emails, card numbers, SSNs, phone numbers, IBANs and API keys in text,
//! and overwrite them in place (same length), as defence in depth behind column rules.
//!
//! Each detector is a hand-written scanner with cheap prefilters (one pass noting which byte
//! classes a value holds, so a value without `@` skips the email scan and one without digits the
//! numeric ones; `memchr` for `@`; `memmem` finders for key prefixes, built once and read-only
//! after; a word-at-a-time digit search) and a precise check behind it
//! (Luhn and issuer prefixes for cards, the SSA's invalid ranges for SSNs, mod-97 and the
//! country's length for IBANs, word boundaries everywhere), so ordinary numbers, dates, IPs and
//! UUIDs are left alone. How many of those checks a finding must pass is the [`Sensitivity`]:
//! strict (the default) masks look-alikes that fail them, balanced does not.

use std::ops::Range;

mod api_key;
mod email;
mod iban;
mod numeric;

pub use iban::iban_mod97;
pub use numeric::luhn;

use api_key::next_api_key;
use email::next_email;
use numeric::next_numeric;

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

/// How far the detectors lean toward masking: which side of the precision/recall trade-off a
/// value shaped like an identifier, but failing a check issued identifiers usually pass, falls
/// on. Detectors are a backstop behind column rules, so the default is [`Sensitivity::Strict`]:
/// a false positive costs a masked harmless value, a false negative leaks exactly the values
/// that slipped past the column rules.
///
/// | detector | balanced requires | strict also takes |
/// |---|---|---|
/// | `ssn` | `AAA-GG-SSSS`, area not 000/666/900–999, group not 00, serial not 0000 | any such digits (ITINs, test and mistyped numbers), `AAA GG SSSS` |
/// | `card` | a known issuer prefix and its lengths, Luhn | any 13–19 digits passing Luhn |
/// | `phone` | NANP area and exchange codes starting 2–9 | NANP-shaped groups starting 0 or 1 (`123-456-7890`) |
/// | `iban` | a country in the registry table, its length, mod-97 | any two-letter country, 15–34 characters, mod-97 |
/// | `email` | two or more domain labels, alphabetic top-level label | one label (`root@localhost`), a top-level label with digits |
/// | `api_key` | known token prefixes and shapes | Stripe test keys, the value of `password=`, `"token": "..."` and similar assignments |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Sensitivity {
    /// Err toward masking (the default).
    #[default]
    Strict,
    /// Mask only what also passes the checks that separate issued identifiers from look-alikes.
    Balanced,
}

impl Sensitivity {
    /// Both settings.
    pub const ALL: [Sensitivity; 2] = [Sensitivity::Strict, Sensitivity::Balanced];

    /// Lowercase name for configuration: `strict` or `balanced`.
    pub fn name(self) -> &'static str {
        match self {
            Sensitivity::Strict => "strict",
            Sensitivity::Balanced => "balanced",
        }
    }

    /// The setting named `name` (as [`Sensitivity::name`]).
    pub fn from_name(name: &str) -> Option<Sensitivity> {
        Sensitivity::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// A set of enabled detectors (per role) and their [`Sensitivity`]. `Copy`, one byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Detectors(u8);

/// The kind bits of [`Detectors`].
const KINDS: u8 = 0b11_1111;
/// Set when the sensitivity is [`Sensitivity::Balanced`]; clear (the default) for strict.
const BALANCED: u8 = 0b1000_0000;

impl Detectors {
    /// No detectors.
    pub const NONE: Detectors = Detectors(0);
    /// All detectors, strict.
    pub const ALL: Detectors = Detectors(KINDS);

    /// This set with sensitivity `s`.
    pub const fn with_sensitivity(self, s: Sensitivity) -> Detectors {
        match s {
            Sensitivity::Strict => Detectors(self.0 & !BALANCED),
            Sensitivity::Balanced => Detectors(self.0 | BALANCED),
        }
    }

    /// The sensitivity the detectors run at.
    pub fn sensitivity(self) -> Sensitivity {
        if self.0 & BALANCED != 0 {
            Sensitivity::Balanced
        } else {
            Sensitivity::Strict
        }
    }

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
        self.0 & KINDS == 0
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
                let strict = self.sensitivity() == Sensitivity::Strict;
                let shapes = if strict {
                    C_UNDERSCORE | C_DASH | C_UPPER | C_ASSIGN
                } else {
                    C_UNDERSCORE | C_DASH | C_UPPER
                };
                if !self.contains(DetectorKind::ApiKey)
                    || hay.len() < MIN_KEY_LEN
                    || classes & shapes == 0
                {
                    return None;
                }
                next_api_key(hay, from, classes, strict).map(|range| Span {
                    kind: DetectorKind::ApiKey,
                    range,
                })
            }
            Stage::Email => {
                if !self.contains(DetectorKind::Email) || classes & C_AT == 0 {
                    return None;
                }
                let strict = self.sensitivity() == Sensitivity::Strict;
                next_email(hay, from, strict).map(|range| Span {
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
/// Shortest API key shape (`xoxb-` + 10); a strict assignment (`pwd=` + 6) is shorter.
const MIN_KEY_LEN: usize = 10;
/// Shortest numeric shape (E.164: `+` and 8 digits).
const MIN_NUMBER_LEN: usize = 9;

const C_DIGIT: u8 = 1;
const C_AT: u8 = 2;
const C_UNDERSCORE: u8 = 4;
const C_DASH: u8 = 8;
const C_UPPER: u8 = 16;
/// `=` or `:`, which a strict secret assignment needs.
const C_ASSIGN: u8 = 32;

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
            b'=' | b':' => C_ASSIGN,
            _ => 0,
        };
        b += 1;
    }
    t
};

/// The classes of bytes present in `hay`, stopping early once all are seen.
fn classes(hay: &[u8]) -> u8 {
    const ALL: u8 = C_DIGIT | C_AT | C_UNDERSCORE | C_DASH | C_UPPER | C_ASSIGN;
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

#[cfg(test)]
mod tests;

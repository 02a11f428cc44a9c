//! Byte-level helpers the strategies share: UTF-8 character windows, the token keystream,
//! hex and JSON string output.

use bytes::{BufMut, BytesMut};
use sha2::{Digest, Sha256};

use super::{HashKey, DOMAIN_TOKEN};

#[inline]
fn is_char_start(b: u8) -> bool {
    (b & 0xC0) != 0x80
}

/// Number of UTF-8 characters (lead bytes) in `v`.
pub(super) fn char_count(v: &[u8]) -> usize {
    v.iter().filter(|&&b| is_char_start(b)).count()
}

/// Byte range of the characters to mask when keeping `first` characters at the start and `last`
/// at the end; the whole value when it has no more than `first + last` characters.
pub(super) fn masked_char_range(v: &[u8], first: usize, last: usize) -> (usize, usize) {
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

/// Keeps `kept.0` characters at the start and `kept.1` at the end of `v` and writes `fill` for
/// each other one; with `whole_unless_ascii`, a value with a non-ASCII byte (in an encoding
/// whose characters this does not know) is all fill, one per byte.
pub(super) fn write_partial(
    v: &[u8],
    (first, last): (usize, usize),
    fill: char,
    whole_unless_ascii: bool,
    out: &mut BytesMut,
) {
    if whole_unless_ascii && !v.is_ascii() {
        let fill = u8::try_from(u32::from(fill)).unwrap_or(b'*');
        out.put_bytes(fill, v.len());
        return;
    }
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
pub(super) fn window(len: usize, first: usize, last: usize) -> (usize, usize) {
    if first.saturating_add(last) >= len {
        (0, len)
    } else {
        (first, len - last)
    }
}

/// Keystream for tokens: block 0 is HMAC(key, 't' || value), block k is SHA-256(block 0 || k).
pub(super) struct Keystream {
    seed: [u8; 32],
    block: [u8; 32],
    idx: usize,
    counter: u32,
}

impl Keystream {
    pub(super) fn new(key: &HashKey, value: &[u8]) -> Keystream {
        let seed = key.digest(DOMAIN_TOKEN, value);
        Keystream {
            seed,
            block: seed,
            idx: 0,
            counter: 0,
        }
    }

    pub(super) fn next_byte(&mut self) -> u8 {
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

    pub(super) fn digit(&mut self) -> u8 {
        b'0' + self.next_byte() % 10
    }

    pub(super) fn letter(&mut self, base: u8) -> u8 {
        base + self.next_byte() % 26
    }

    /// Token for one ASCII byte: digit → digit, letter → letter (same case), else kept.
    pub(super) fn token_ascii(&mut self, b: u8) -> u8 {
        match b {
            b'0'..=b'9' => self.digit(),
            b'a'..=b'z' => self.letter(b'a'),
            b'A'..=b'Z' => self.letter(b'A'),
            _ => b,
        }
    }
}

pub(super) fn write_token(key: &HashKey, v: &[u8], out: &mut BytesMut) {
    let mut ks = Keystream::new(key, v);
    for &b in v {
        if b.is_ascii() {
            out.put_u8(ks.token_ascii(b));
        } else if is_char_start(b) {
            out.put_u8(ks.letter(b'a'));
        }
    }
}

pub(super) const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes lowercase hex of `digest` into all of `dst` (at most 64 characters).
pub(super) fn hex_into(digest: &[u8; 32], dst: &mut [u8]) {
    for (i, d) in dst.iter_mut().enumerate() {
        let byte = digest[i / 2];
        *d = HEX[usize::from(if i % 2 == 0 { byte >> 4 } else { byte & 0xf })];
    }
}

pub(super) fn put_hex(out: &mut BytesMut, digest: &[u8; 32], hex_len: usize) {
    let mut buf = [0u8; 64];
    hex_into(digest, &mut buf[..hex_len]);
    out.put_slice(&buf[..hex_len]);
}

pub(super) fn put_bytea(out: &mut BytesMut, bytes: &[u8], binary: bool) {
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
pub(super) fn json_string(out: &mut BytesMut, produce: impl FnOnce(&mut BytesMut)) {
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

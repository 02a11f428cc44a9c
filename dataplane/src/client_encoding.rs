//! Client encodings: statement text decoded for the analyser from the session's
//! `client_encoding`, while the bytes the server gets stay as the client sent them.
//!
//! PostgreSQL reads a client's text in its `client_encoding` (the startup answer says which,
//! and every change is confirmed by ParameterStatus). The analyser works on UTF-8, so text in
//! another encoding is decoded first; text that is not valid in it is judged as text that
//! does not parse (the policy's `allow_unparsed` decides), never refused as a protocol error.
//!
//! Only encodings in which every byte below 0x80 is an ASCII character are decoded: there the
//! quotes, backslashes, semicolons and comments the analyser sees are the ones the server
//! sees. In the client-only encodings (SJIS, BIG5, GBK, UHC, GB18030, JOHAB, SHIFT_JIS_2004) a
//! backslash can be the second byte of a character, and a few rare server encodings are not
//! known here: in those, only ASCII text decodes.

use std::borrow::Cow;

use encoding_rs::Encoding;

/// How a session's statement text is decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientEncoding {
    /// UTF8: the text is the analyser's as is.
    Utf8,
    /// LATIN1 (ISO 8859-1): each byte is the code point of that value.
    Latin1,
    /// LATIN5 (ISO 8859-9): LATIN1 with six Turkish letters in place of Icelandic ones.
    Latin5,
    /// SQL_ASCII: no conversion; the server reads the bytes in its own encoding.
    SqlAscii,
    /// A single- or multi-byte encoding decoded by `encoding_rs`, ASCII-transparent.
    Table(&'static Encoding),
    /// Any other: ASCII text only.
    AsciiOnly,
}

/// Why a text was not decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Undecodable {
    /// PostgreSQL's name of the encoding the text was read in.
    pub encoding: ClientEncoding,
}

impl std::fmt::Display for Undecodable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.encoding {
            ClientEncoding::AsciiOnly => f.write_str(
                "statement text outside ASCII in a client_encoding the gateway does not decode",
            ),
            e => write!(f, "statement text is not valid {}", e.name()),
        }
    }
}

impl ClientEncoding {
    /// The encoding PostgreSQL reports under `name` (ParameterStatus `client_encoding` or
    /// `server_encoding`; the server reports canonical names, matched here as written).
    pub fn from_name(name: &str) -> ClientEncoding {
        use ClientEncoding::*;
        let table = |e: &'static Encoding| Table(e);
        match name {
            "UTF8" => Utf8,
            "SQL_ASCII" => SqlAscii,
            "LATIN1" => Latin1,
            "LATIN5" => Latin5,
            "LATIN2" => table(encoding_rs::ISO_8859_2),
            "LATIN3" => table(encoding_rs::ISO_8859_3),
            "LATIN4" => table(encoding_rs::ISO_8859_4),
            "LATIN6" => table(encoding_rs::ISO_8859_10),
            "LATIN7" => table(encoding_rs::ISO_8859_13),
            "LATIN8" => table(encoding_rs::ISO_8859_14),
            "LATIN9" => table(encoding_rs::ISO_8859_15),
            "LATIN10" => table(encoding_rs::ISO_8859_16),
            "ISO_8859_5" => table(encoding_rs::ISO_8859_5),
            "ISO_8859_6" => table(encoding_rs::ISO_8859_6),
            "ISO_8859_7" => table(encoding_rs::ISO_8859_7),
            "ISO_8859_8" => table(encoding_rs::ISO_8859_8),
            "WIN866" => table(encoding_rs::IBM866),
            "WIN874" => table(encoding_rs::WINDOWS_874),
            "WIN1250" => table(encoding_rs::WINDOWS_1250),
            "WIN1251" => table(encoding_rs::WINDOWS_1251),
            "WIN1252" => table(encoding_rs::WINDOWS_1252),
            "WIN1253" => table(encoding_rs::WINDOWS_1253),
            "WIN1254" => table(encoding_rs::WINDOWS_1254),
            "WIN1255" => table(encoding_rs::WINDOWS_1255),
            "WIN1256" => table(encoding_rs::WINDOWS_1256),
            "WIN1257" => table(encoding_rs::WINDOWS_1257),
            "WIN1258" => table(encoding_rs::WINDOWS_1258),
            "KOI8R" => table(encoding_rs::KOI8_R),
            "KOI8U" => table(encoding_rs::KOI8_U),
            "EUC_JP" => table(encoding_rs::EUC_JP),
            "EUC_KR" => table(encoding_rs::EUC_KR),
            _ => AsciiOnly,
        }
    }

    /// PostgreSQL's name of this encoding, for messages.
    pub fn name(self) -> &'static str {
        match self {
            ClientEncoding::Utf8 => "UTF8",
            ClientEncoding::Latin1 => "LATIN1",
            ClientEncoding::Latin5 => "LATIN5",
            ClientEncoding::SqlAscii => "SQL_ASCII",
            ClientEncoding::Table(e) => e.name(),
            ClientEncoding::AsciiOnly => "ASCII",
        }
    }

    /// Whether result text the server sends this client is UTF-8.
    pub fn is_utf8(self) -> bool {
        self == ClientEncoding::Utf8
    }

    /// `bytes` as the server will read them, in UTF-8; `server` is the server's own encoding
    /// (what SQL_ASCII text is read in). ASCII text is borrowed, whatever the encoding.
    pub fn decode(self, bytes: &[u8], server: ClientEncoding) -> Result<Cow<'_, str>, Undecodable> {
        if bytes.is_ascii() {
            return Ok(Cow::Borrowed(ascii(bytes)));
        }
        let undecodable = Undecodable { encoding: self };
        match self {
            ClientEncoding::Utf8 => std::str::from_utf8(bytes)
                .map(Cow::Borrowed)
                .map_err(|_| undecodable),
            ClientEncoding::Latin1 => {
                Ok(Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect()))
            }
            ClientEncoding::Latin5 => Ok(Cow::Owned(bytes.iter().map(|&b| latin5(b)).collect())),
            ClientEncoding::SqlAscii => match server {
                // SQL_ASCII on both sides: bytes above 0x7F are opaque to the server too.
                ClientEncoding::SqlAscii => ClientEncoding::Latin1.decode(bytes, server),
                ClientEncoding::AsciiOnly => Err(undecodable),
                s => s.decode(bytes, s),
            },
            ClientEncoding::Table(e) => e
                .decode_without_bom_handling_and_without_replacement(bytes)
                .ok_or(undecodable),
            ClientEncoding::AsciiOnly => Err(undecodable),
        }
    }
}

/// ASCII bytes as `str`.
fn ascii(bytes: &[u8]) -> &str {
    // ASCII is valid UTF-8; checked by the caller, so this never falls back.
    std::str::from_utf8(bytes).unwrap_or_default()
}

/// One LATIN5 byte as a character.
fn latin5(b: u8) -> char {
    match b {
        0xD0 => 'Ğ',
        0xDD => 'İ',
        0xDE => 'Ş',
        0xF0 => 'ğ',
        0xFD => 'ı',
        0xFE => 'ş',
        _ => char::from(b),
    }
}

/// Whether a non-ASCII byte comes right before a backslash: text whose string literals end
/// where the analyser sees them only if the server does not read those two bytes as one
/// character, as a client-only encoding (SJIS, BIG5, GBK...) would. Text sent before the
/// server confirmed a change of `client_encoding` is checked for it.
pub fn backslash_after_non_ascii(bytes: &[u8]) -> bool {
    bytes.windows(2).any(|w| w[0] >= 0x80 && w[1] == b'\\')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_as_the_server_reads() {
        let utf8 = ClientEncoding::Utf8;
        let latin1 = ClientEncoding::from_name("LATIN1");
        let win1252 = ClientEncoding::from_name("WIN1252");
        assert_eq!(latin1.decode(b"caf\xe9", utf8).unwrap(), "café");
        assert_eq!(win1252.decode(b"\x80 caf\xe9", utf8).unwrap(), "€ café");
        // LATIN1 is ISO 8859-1, not the WHATWG label (windows-1252).
        assert_eq!(latin1.decode(b"\x80", utf8).unwrap(), "\u{80}");
        assert_eq!(
            ClientEncoding::from_name("LATIN5")
                .decode(b"\xfe", utf8)
                .unwrap(),
            "ş"
        );
        assert_eq!(
            ClientEncoding::from_name("EUC_JP")
                .decode(b"\xb0\xa1", utf8)
                .unwrap(),
            "亜"
        );
        assert_eq!(utf8.decode("café".as_bytes(), utf8).unwrap(), "café");
        assert!(utf8.decode(b"caf\xe9", utf8).is_err());
        // SQL_ASCII text is read in the server's encoding.
        let sql_ascii = ClientEncoding::from_name("SQL_ASCII");
        assert_eq!(sql_ascii.decode("café".as_bytes(), utf8).unwrap(), "café");
        assert!(sql_ascii.decode(b"caf\xe9", utf8).is_err());
        assert_eq!(sql_ascii.decode(b"caf\xe9", sql_ascii).unwrap(), "café");
    }

    #[test]
    fn client_only_encodings_decode_ascii_only() {
        for name in [
            "SJIS",
            "BIG5",
            "GBK",
            "UHC",
            "GB18030",
            "JOHAB",
            "MULE_INTERNAL",
            "x",
        ] {
            let e = ClientEncoding::from_name(name);
            assert_eq!(e, ClientEncoding::AsciiOnly, "{name}");
            assert_eq!(
                e.decode(b"select 1", ClientEncoding::Utf8).unwrap(),
                "select 1"
            );
            assert!(e.decode(b"select '\x95\\'", ClientEncoding::Utf8).is_err());
        }
    }

    #[test]
    fn backslash_after_non_ascii_byte() {
        assert!(backslash_after_non_ascii(b"E'\xc3\x95\\'"));
        assert!(!backslash_after_non_ascii(b"E'\\\\' '\xc3\xa9'"));
        assert!(!backslash_after_non_ascii(b"\\"));
    }
}

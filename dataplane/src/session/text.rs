//! Statement text as the analyser reads it: decoded from the client's current
//! `client_encoding` (followed in every ParameterStatus the client is sent), or undecodable.

use std::borrow::Cow;

use crate::client_encoding::{backslash_after_non_ascii, ClientEncoding};

use super::State;

/// The encodings a session's text is read in.
#[derive(Clone, Copy, Debug)]
pub(super) struct Encodings {
    /// The client's `client_encoding`, as it was last told.
    client: ClientEncoding,
    /// The server's `server_encoding` (what SQL_ASCII text is read in).
    server: ClientEncoding,
}

impl Encodings {
    /// From the parameters the client was told at startup.
    pub(super) fn from_view(view: &std::collections::HashMap<String, String>) -> Self {
        let of = |name: &str| {
            view.get(name)
                .map_or(ClientEncoding::Utf8, |v| ClientEncoding::from_name(v))
        };
        Self {
            client: of("client_encoding"),
            server: of("server_encoding"),
        }
    }

    /// The client was told a new `client_encoding`; whether result text is now UTF-8.
    pub(super) fn set_client(&mut self, name: &str) -> bool {
        self.client = ClientEncoding::from_name(name);
        self.client.is_utf8()
    }

    /// The client's `client_encoding`.
    pub(super) fn client(&self) -> ClientEncoding {
        self.client
    }

    /// Whether result text the client gets is UTF-8.
    pub(super) fn client_is_utf8(&self) -> bool {
        self.client.is_utf8()
    }
}

/// A statement text for the judge.
#[derive(Debug)]
pub(super) enum Text<'a> {
    /// As the server will read it.
    Decoded(Cow<'a, str>),
    /// Not decodable: judged as text that does not parse; `lossy` is for audit records and
    /// reviewers only.
    Undecodable {
        /// The bytes with what does not decode replaced (U+FFFD).
        lossy: String,
        /// Why, for the verdict's message.
        why: String,
    },
}

impl Text<'_> {
    /// The text, or its lossy rendering.
    pub(super) fn as_str(&self) -> &str {
        match self {
            Text::Decoded(t) => t,
            Text::Undecodable { lossy, .. } => lossy,
        }
    }

    /// A text that is (again) undecodable for the same reason, from its lossy rendering.
    pub(super) fn undecodable(lossy: &str, why: &str) -> Text<'static> {
        Text::Undecodable {
            lossy: lossy.to_owned(),
            why: why.to_owned(),
        }
    }
}

/// Statement text from the client, read in its encoding. Text with a backslash right after a
/// non-ASCII byte, sent while the server has not answered what came before it, is not
/// decoded: one of those statements may change `client_encoding` to one where the two bytes
/// are one character, so the string would end elsewhere for the server.
pub(super) fn decode<'a>(st: &State, bytes: &'a [u8]) -> Text<'a> {
    let enc = st.encodings;
    let why = if st.server.ready.is_none() && !bytes.is_ascii() && backslash_after_non_ascii(bytes)
    {
        "statement text with a backslash after a non-ASCII byte, sent before the server \
         answered the statements before it (which may change client_encoding)"
            .to_owned()
    } else {
        match enc.client.decode(bytes, enc.server) {
            Ok(t) => return Text::Decoded(t),
            Err(e) => e.to_string(),
        }
    };
    Text::Undecodable {
        lossy: String::from_utf8_lossy(bytes).into_owned(),
        why,
    }
}

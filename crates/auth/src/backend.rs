//! The gateway authenticating itself to PostgreSQL: a pure state machine over Authentication messages.
//!
//! The caller frames the backend's `'R'` messages and feeds each one to
//! [`BackendAuthenticator::on_request`]; replies (whole `'p'` messages) are appended to the
//! caller's buffer. SCRAM and MD5 are computed by `postgres-protocol`. Note that SCRAM runs
//! PBKDF2 (capped at 100 000 iterations by `postgres-protocol`) synchronously, on the calling
//! core, once per new backend connection.

use std::fmt;

use bytes::BytesMut;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{
    ChannelBinding, ScramSha256, SCRAM_SHA_256, SCRAM_SHA_256_PLUS,
};
use postgres_protocol::message::frontend;

/// Authentication subtype codes of the backend's `'R'` message.
pub mod codes {
    /// AuthenticationOk.
    pub const OK: i32 = 0;
    /// AuthenticationKerberosV5 (unsupported).
    pub const KERBEROS_V5: i32 = 2;
    /// AuthenticationCleartextPassword.
    pub const CLEARTEXT_PASSWORD: i32 = 3;
    /// AuthenticationMD5Password.
    pub const MD5_PASSWORD: i32 = 5;
    /// AuthenticationGSS (unsupported).
    pub const GSS: i32 = 7;
    /// AuthenticationGSSContinue (unsupported).
    pub const GSS_CONTINUE: i32 = 8;
    /// AuthenticationSSPI (unsupported).
    pub const SSPI: i32 = 9;
    /// AuthenticationSASL.
    pub const SASL: i32 = 10;
    /// AuthenticationSASLContinue.
    pub const SASL_CONTINUE: i32 = 11;
    /// AuthenticationSASLFinal.
    pub const SASL_FINAL: i32 = 12;
}

/// The credentials the gateway uses for a backend; only the gateway holds them.
#[derive(Clone)]
pub struct BackendCredentials {
    /// Backend role name (the startup `user`, also used in the MD5 hash).
    pub user: String,
    /// Password, if the backend asks for one.
    pub password: Option<String>,
}

impl fmt::Debug for BackendCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendCredentials")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

/// Where the exchange stands after one server message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthProgress {
    /// Keep reading `'R'` messages (a reply may have been written).
    Continue,
    /// AuthenticationOk received: the backend accepted us.
    Done,
}

/// Why backend authentication failed. Never contains the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendAuthError {
    /// The backend asked for a password and none is configured.
    #[error("backend requires a password")]
    PasswordRequired,
    /// The backend asked for a cleartext password and cleartext is disabled.
    #[error("backend requested a cleartext password, which is disabled")]
    CleartextRefused,
    /// The backend requested an authentication method Sluice does not implement.
    #[error("backend requested unsupported authentication method (code {0})")]
    UnsupportedMethod(i32),
    /// The backend offered only SASL mechanisms Sluice cannot use.
    #[error("backend offers no supported SASL mechanism (offered: {0})")]
    UnsupportedMechanism(String),
    /// The backend requires SCRAM-SHA-256-PLUS (channel binding), which is not supported.
    #[error("backend requires SCRAM-SHA-256-PLUS (channel binding), which is not supported")]
    ChannelBindingRequired,
    /// The SCRAM exchange failed (malformed server message, bad nonce, server error).
    #[error("SCRAM authentication failed: {0}")]
    Scram(String),
    /// The server's final SCRAM signature did not verify: it does not know our password.
    #[error("backend failed SCRAM server verification")]
    ServerVerificationFailed,
    /// A message arrived that does not fit the exchange so far.
    #[error("unexpected authentication message (code {code}) while {state}")]
    Unexpected {
        /// The subtype received.
        code: i32,
        /// What the state machine was waiting for.
        state: &'static str,
    },
    /// The message body is malformed.
    #[error("malformed authentication message: {0}")]
    Malformed(&'static str),
}

enum State {
    /// Nothing sent yet.
    Start,
    /// Cleartext or MD5 password sent; AuthenticationOk expected.
    PasswordSent,
    /// SASLInitialResponse sent; SASLContinue expected.
    ScramFirstSent(Box<ScramSha256>),
    /// SASLResponse sent; SASLFinal expected.
    ScramFinalSent(Box<ScramSha256>),
    /// Server signature verified; AuthenticationOk expected.
    ScramVerified,
    /// AuthenticationOk received.
    Done,
    /// An error ended the exchange.
    Failed,
}

impl State {
    fn describe(&self) -> &'static str {
        match self {
            State::Start => "waiting for an authentication request",
            State::PasswordSent => "waiting for AuthenticationOk after a password",
            State::ScramFirstSent(_) => "waiting for SASLContinue",
            State::ScramFinalSent(_) => "waiting for SASLFinal",
            State::ScramVerified => "waiting for AuthenticationOk after SASLFinal",
            State::Done => "already authenticated",
            State::Failed => "after a failed exchange",
        }
    }
}

/// Answers a PostgreSQL server's authentication requests with [`BackendCredentials`].
pub struct BackendAuthenticator {
    creds: BackendCredentials,
    allow_cleartext: bool,
    state: State,
}

impl fmt::Debug for BackendAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendAuthenticator")
            .field("creds", &self.creds)
            .field("allow_cleartext", &self.allow_cleartext)
            .field("state", &self.state.describe())
            .finish()
    }
}

impl BackendAuthenticator {
    /// A fresh exchange; cleartext passwords are allowed (we are the client) unless disabled.
    pub fn new(creds: BackendCredentials) -> Self {
        Self {
            creds,
            allow_cleartext: true,
            state: State::Start,
        }
    }

    /// Whether to answer AuthenticationCleartextPassword (default `true`). Disable it when the
    /// backend link is not encrypted and the backend should be using SCRAM anyway.
    #[must_use]
    pub fn allow_cleartext(mut self, allow: bool) -> Self {
        self.allow_cleartext = allow;
        self
    }

    /// True once AuthenticationOk has been received.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Handles one Authentication (`'R'`) message: `code` is its subtype, `data` the bytes after
    /// the code. Any reply (a whole `'p'` message) is appended to `out`. After an error the
    /// authenticator refuses every further message.
    pub fn on_request(
        &mut self,
        code: i32,
        data: &[u8],
        out: &mut BytesMut,
    ) -> Result<AuthProgress, BackendAuthError> {
        let state = std::mem::replace(&mut self.state, State::Failed);
        let (next, progress) = self.step(state, code, data, out)?;
        self.state = next;
        Ok(progress)
    }

    fn step(
        &self,
        state: State,
        code: i32,
        data: &[u8],
        out: &mut BytesMut,
    ) -> Result<(State, AuthProgress), BackendAuthError> {
        let unexpected = |state: &State| BackendAuthError::Unexpected {
            code,
            state: state.describe(),
        };
        match (state, code) {
            // A backend configured for `trust` says Ok straight away; after a password the Ok
            // confirms it. After SASL, Ok is only accepted once the server proved itself.
            (State::Start | State::PasswordSent | State::ScramVerified, codes::OK) => {
                Ok((State::Done, AuthProgress::Done))
            }
            (State::Start, codes::CLEARTEXT_PASSWORD) => {
                if !self.allow_cleartext {
                    return Err(BackendAuthError::CleartextRefused);
                }
                let password = self.password()?;
                frontend::password_message(password.as_bytes(), out)
                    .map_err(|_| BackendAuthError::Malformed("password contains a NUL byte"))?;
                Ok((State::PasswordSent, AuthProgress::Continue))
            }
            (State::Start, codes::MD5_PASSWORD) => {
                let salt: [u8; 4] = data
                    .try_into()
                    .map_err(|_| BackendAuthError::Malformed("MD5 salt is not 4 bytes"))?;
                let password = self.password()?;
                let hashed = md5_hash(self.creds.user.as_bytes(), password.as_bytes(), salt);
                frontend::password_message(hashed.as_bytes(), out)
                    .map_err(|_| BackendAuthError::Malformed("cannot encode password message"))?;
                Ok((State::PasswordSent, AuthProgress::Continue))
            }
            (State::Start, codes::SASL) => {
                choose_mechanism(data)?;
                let password = self.password()?;
                let scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                frontend::sasl_initial_response(SCRAM_SHA_256, scram.message(), out)
                    .map_err(|_| BackendAuthError::Malformed("cannot encode SASL response"))?;
                Ok((
                    State::ScramFirstSent(Box::new(scram)),
                    AuthProgress::Continue,
                ))
            }
            (State::ScramFirstSent(mut scram), codes::SASL_CONTINUE) => {
                scram
                    .update(data)
                    .map_err(|e| BackendAuthError::Scram(e.to_string()))?;
                frontend::sasl_response(scram.message(), out)
                    .map_err(|_| BackendAuthError::Malformed("cannot encode SASL response"))?;
                Ok((State::ScramFinalSent(scram), AuthProgress::Continue))
            }
            (State::ScramFinalSent(mut scram), codes::SASL_FINAL) => {
                // postgres-protocol reports a server-sent `e=` error as `Other` and a malformed
                // or wrong server signature as `InvalidInput`.
                scram.finish(data).map_err(|e| match e.kind() {
                    std::io::ErrorKind::InvalidInput => BackendAuthError::ServerVerificationFailed,
                    _ => BackendAuthError::Scram(e.to_string()),
                })?;
                Ok((State::ScramVerified, AuthProgress::Continue))
            }
            (_, code @ (codes::KERBEROS_V5 | codes::GSS | codes::GSS_CONTINUE | codes::SSPI)) => {
                Err(BackendAuthError::UnsupportedMethod(code))
            }
            (
                state,
                codes::OK
                | codes::CLEARTEXT_PASSWORD
                | codes::MD5_PASSWORD
                | codes::SASL
                | codes::SASL_CONTINUE
                | codes::SASL_FINAL,
            ) => Err(unexpected(&state)),
            (_, code) => Err(BackendAuthError::UnsupportedMethod(code)),
        }
    }

    fn password(&self) -> Result<&str, BackendAuthError> {
        self.creds
            .password
            .as_deref()
            .ok_or(BackendAuthError::PasswordRequired)
    }
}

/// Checks the AuthenticationSASL mechanism list (NUL-terminated names, then an empty name)
/// for SCRAM-SHA-256.
fn choose_mechanism(data: &[u8]) -> Result<(), BackendAuthError> {
    let mut offered = Vec::new();
    let mut rest = data;
    loop {
        let nul = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or(BackendAuthError::Malformed(
                "unterminated SASL mechanism list",
            ))?;
        let name = &rest[..nul];
        rest = &rest[nul + 1..];
        if name.is_empty() {
            break;
        }
        let name = std::str::from_utf8(name)
            .map_err(|_| BackendAuthError::Malformed("SASL mechanism name is not UTF-8"))?;
        offered.push(name);
    }
    if !rest.is_empty() {
        return Err(BackendAuthError::Malformed(
            "bytes after SASL mechanism list",
        ));
    }
    if offered.contains(&SCRAM_SHA_256) {
        Ok(())
    } else if offered.contains(&SCRAM_SHA_256_PLUS) {
        Err(BackendAuthError::ChannelBindingRequired)
    } else {
        let mut names = offered.join(", ");
        // The list comes from the server; keep what we echo into errors bounded.
        if names.len() > 128 {
            let mut cut = 128;
            while !names.is_char_boundary(cut) {
                cut -= 1;
            }
            names.truncate(cut);
        }
        Err(BackendAuthError::UnsupportedMechanism(names))
    }
}

#[cfg(test)]
mod tests;

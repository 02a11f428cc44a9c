//! Bounds-checked cursor over a message body; every read returns a [`ProtocolError`] instead of panicking.

use crate::{ProtocolError, HEADER_LEN};

/// Reads fields off the front of a body. `tag` is only used to label errors.
#[derive(Clone, Copy)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    tag: u8,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], tag: u8) -> Self {
        Reader { buf, tag }
    }

    pub(crate) fn malformed(&self, what: &'static str) -> ProtocolError {
        ProtocolError::Malformed {
            tag: self.tag,
            what,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn peek(&self) -> Option<u8> {
        self.buf.first().copied()
    }

    /// Everything not read yet; consumes it.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub(crate) fn bytes(
        &mut self,
        n: usize,
        what: &'static str,
    ) -> Result<&'a [u8], ProtocolError> {
        if n > self.buf.len() {
            return Err(self.malformed(what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, ProtocolError> {
        let (&b, tail) = self.buf.split_first().ok_or(self.malformed(what))?;
        self.buf = tail;
        Ok(b)
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u8; N], ProtocolError> {
        let (head, tail) = self
            .buf
            .split_first_chunk::<N>()
            .ok_or(self.malformed(what))?;
        self.buf = tail;
        Ok(*head)
    }

    pub(crate) fn i32(&mut self, what: &'static str) -> Result<i32, ProtocolError> {
        self.array(what).map(i32::from_be_bytes)
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, ProtocolError> {
        self.array(what).map(u16::from_be_bytes)
    }

    /// A 16-bit count, read as PostgreSQL reads it (`pq_getmsgint(msg, 2)`, libpq's
    /// `pqGetInt(.., 2)`): unsigned, so 0..=65535. The wire calls it Int16, but a Bind with
    /// 40,000 parameters is valid and the server accepts it.
    pub(crate) fn count16(&mut self, what: &'static str) -> Result<usize, ProtocolError> {
        self.u16(what).map(usize::from)
    }

    /// The bytes of a NUL-terminated string (without the NUL); consumes the NUL.
    pub(crate) fn cstr_bytes(&mut self) -> Result<&'a [u8], ProtocolError> {
        let nul = memchr::memchr(0, self.buf).ok_or(self.malformed("missing NUL terminator"))?;
        let s = &self.buf[..nul];
        self.buf = &self.buf[nul + 1..];
        Ok(s)
    }

    /// A NUL-terminated UTF-8 string; consumes the NUL.
    pub(crate) fn cstr(&mut self) -> Result<&'a str, ProtocolError> {
        let bytes = self.cstr_bytes()?;
        std::str::from_utf8(bytes).map_err(|_| ProtocolError::InvalidUtf8 { tag: self.tag })
    }

    /// Fails unless the whole body has been read.
    pub(crate) fn finish(&self) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.malformed("unexpected trailing bytes"))
        }
    }
}

/// Splits one whole tagged frame (as delimited by [`crate::frame_len`]) into tag and body.
///
/// The declared length must match `frame.len()` exactly: a frame that was not delimited by the
/// shared framing path is rejected rather than reinterpreted.
pub(crate) fn split_frame(frame: &[u8]) -> Result<(u8, &[u8]), ProtocolError> {
    let header = match crate::parse_header(frame, usize::MAX)? {
        Some(h) => h,
        None => {
            return Err(ProtocolError::Malformed {
                tag: frame.first().copied().unwrap_or(0),
                what: "truncated header",
            })
        }
    };
    if header.total_len() != frame.len() {
        return Err(ProtocolError::Malformed {
            tag: header.tag,
            what: "length word does not match frame size",
        });
    }
    Ok((header.tag, &frame[HEADER_LEN..]))
}

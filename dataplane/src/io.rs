//! Small I/O helpers over monoio's owned-buffer reads and writes.

use bytes::{Bytes, BytesMut};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use sluice_pgwire::ProtocolError;

/// Bytes asked of one read when the buffer has less room than this.
pub const READ_SIZE: usize = 16 * 1024;

/// Why reading a message failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer closed the connection.
    #[error("connection closed")]
    Closed,
    /// A socket error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The bytes are not a valid message.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// Bytes asked of the read an idle client's session waits on: the buffer stays posted to
/// the kernel for as long as the client is idle, so it is what an idle client costs. Most
/// requests fit; a larger one is read on with [`READ_SIZE`].
pub const IDLE_READ_SIZE: usize = 1024;

/// Reads more bytes into `buf` (appending). Returns the number read; 0 means end of stream.
pub async fn fill<R: AsyncReadRent>(r: &mut R, buf: &mut BytesMut) -> std::io::Result<usize> {
    fill_up_to(r, buf, READ_SIZE).await
}

/// Like [`fill`], reserving `size` bytes when the buffer has less room than a quarter of it.
pub async fn fill_up_to<R: AsyncReadRent>(
    r: &mut R,
    buf: &mut BytesMut,
    size: usize,
) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < size / 4 {
        buf.reserve(size);
    }
    // monoio reads into a buffer from its start: give it the spare capacity as a slice so
    // the read appends instead of overwriting what is buffered.
    let len = buf.len();
    let owned = std::mem::take(buf).slice_mut(len..);
    let (res, owned) = r.read(owned).await;
    *buf = owned.into_inner();
    res
}

/// Reads until `framer` finds a whole frame at the start of `buf`, then splits it off.
pub async fn read_frame<R: AsyncReadRent>(
    r: &mut R,
    buf: &mut BytesMut,
    framer: impl Fn(&[u8]) -> Result<Option<usize>, ProtocolError>,
) -> Result<Bytes, ReadError> {
    loop {
        if let Some(n) = framer(buf)? {
            return Ok(buf.split_to(n).freeze());
        }
        if fill(r, buf).await? == 0 {
            return Err(ReadError::Closed);
        }
    }
}

/// Writes all of `data`.
pub async fn write_all<W: AsyncWriteRent>(w: &mut W, data: Bytes) -> std::io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let (res, _) = w.write_all(data).await;
    res.map(|_| ())
}
